"""Simulation-based calibration helpers: finite-sample coverage, the TARP null band, ranks,
pixel classes and the half-light radius."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffdecon import sbc


def test_finite_sample_coverage_matches_simulation():
    """The closed form level (n - 1) / (n + 1) against a simulation of exchangeable draws
    (100k trials: Monte-Carlo error 0.0015, tolerance 0.006), for n = 4 and 16."""
    g = torch.Generator().manual_seed(0)
    for n in (4, 16):
        d = torch.rand(100_000, n + 1, generator=g, dtype=torch.float64)
        for level, want in sbc.finite_sample_coverage(n).items():
            q = torch.quantile(d[:, 1:], torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=1)
            got = float(((d[:, 0] >= q[0]) & (d[:, 0] <= q[1])).double().mean())
            assert abs(got - want) < 0.006
    assert sbc.finite_sample_coverage(16)[0.68] == pytest.approx(0.6)


def test_tarp_null_shrinks_and_detects_over_confidence():
    """The null band of a calibrated sampler narrows with the number of truths, and a sampler
    whose samples have half the posterior spread (over-confident) exceeds its 95th percentile."""
    null8, null64 = (np.quantile(sbc.tarp_null(k, 16, reps=60), 0.95) for k in (8, 64))
    assert 0 < null64 < null8 < 1
    rng = np.random.default_rng(1)
    centre = rng.normal(size=(64, 8))
    th = centre + rng.normal(size=(64, 8))
    s = centre[None] + 0.5 * rng.normal(size=(16, 64, 8))
    assert sbc.tarp_prior(s, th)[2] > null64


def _sky_toy(seed: int, K: int = 100, n: int = 16, d: int = 500, shift: float = 0.0, galaxy_spread: float = 1.0):
    """Prior-space-like toy: 85 % "sky" coordinates with prior mean -1 and std 0.02, the rest
    "galaxy" with mean 0.5 and std 0.5; posterior std 0.01 (sky) and 0.1 (galaxy). Truth and
    samples are exchangeable given the posterior centre; ``shift`` is added to every sample
    coordinate and ``galaxy_spread`` scales the samples' spread in the galaxy coordinates.
    Returns samples (n, K, d), truths (K, d)."""
    rng = np.random.default_rng(seed)
    sky = np.arange(d) < int(0.85 * d)
    mu, tau, sp = np.where(sky, -1.0, 0.5), np.where(sky, 0.02, 0.5), np.where(sky, 0.01, 0.1)
    centre = mu + np.sqrt(tau**2 - sp**2) * rng.normal(size=(K, d))
    truths = centre + sp * rng.normal(size=(K, d))
    samples = centre[None] + sp * np.where(sky, 1.0, galaxy_spread) * rng.normal(size=(n, K, d)) + shift
    return samples, truths


def test_tarp_with_prior_references_on_a_sky_dominated_toy():
    """100 truths x 16 samples in d = 500 (null 95th percentile 0.14 by :func:`sbc.tarp_null`,
    100 replicates). Calibrated: prior-reference TARP within the null band (0.08 measured). A
    shift of 0.1 posterior sigma of the sky in every coordinate: the uniform references of
    ``tarp`` see only the summed pixels and reject it (0.50 measured), the prior references
    do not (0.08). Galaxy coordinates with half the posterior spread: rejected (0.34)."""
    from diffdecon.calibration import tarp_coverage

    null95 = float(np.quantile(sbc.tarp_null(100, 16, reps=100), 0.95))
    assert 0.05 < null95 < 0.25
    s, th = _sky_toy(0)
    assert sbc.tarp_prior(s, th)[2] <= null95
    s, th = _sky_toy(0, shift=0.001)
    assert sbc.tarp_prior(s, th)[2] <= null95
    assert tarp_coverage(s, th, norm=False, num_alpha_bins=sbc.TARP_BINS)[2] > 2 * null95
    s, th = _sky_toy(0, galaxy_spread=0.5)
    alpha, ecp, dev = sbc.tarp_prior(s, th)
    assert dev > 1.5 * null95 and np.mean(ecp - alpha) < 0  # over-confident: below the diagonal


def test_prior_references_are_the_other_truths(monkeypatch):
    """tarp_prior, and through it tarp_null, use truth k - 1 as the reference of truth k."""
    th = np.arange(12.0).reshape(4, 3)
    assert np.array_equal(sbc.prior_references(th)[1:], th[:-1]) and np.array_equal(sbc.prior_references(th)[0], th[-1])
    with pytest.raises(ValueError, match="n_sims"):
        sbc.prior_references(th[:1])
    seen = []
    real = sbc.tarp_coverage

    def spy(samples, truths, **kw):
        seen.append(np.array_equal(kw["references"], np.roll(truths, 1, axis=0)) and kw["norm"] is False)
        return real(samples, truths, **kw)

    monkeypatch.setattr(sbc, "tarp_coverage", spy)
    sbc.tarp_null(6, 4, reps=3)
    assert seen == [True] * 3


def test_rank_statistics():
    """Without ties the rank is the number of samples below the truth; a truth equal to m
    samples gets a rank in [below, below + m], reproducible with the generator's seed."""
    g = torch.Generator().manual_seed(0)
    samples = torch.tensor([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    assert sbc.rank_statistics(torch.tensor([1.5, 10.0]), samples, g).tolist() == [2, 3]
    assert sbc.rank_statistics(torch.tensor([-1.0, 5.5]), samples, g).tolist() == [0, 1]
    tied = torch.tensor([[1.0], [1.0], [1.0], [0.0]])  # 1 below, 3 ties: rank in {1, 2, 3, 4}
    ranks = [int(sbc.rank_statistics(torch.tensor([1.0]), tied, g)) for _ in range(400)]
    assert set(ranks) == {1, 2, 3, 4}
    first = [sbc.rank_statistics(torch.tensor([1.0]), tied, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert first[0].tolist() == first[1].tolist()
    with pytest.raises(ValueError, match="Generator"):
        sbc.rank_statistics(torch.tensor([1.0]), tied, None)


def test_ranks_of_discrete_summaries_are_uniform():
    """A calibrated sampler of a discrete summary (truth and 8 samples i.i.d. Poisson(1.5):
    ties in most trials) gives uniform ranks once ties are broken at random (chi^2 p > 0.01,
    seeded, 2000 truths), while counting only samples strictly below piles them at low ranks
    (p < 1e-6; the rank is 0 whenever the truth is the minimum, ties included)."""
    g = torch.Generator().manual_seed(1)
    n = 8
    draws = torch.poisson(torch.full((n + 1, 2000), 1.5), generator=g)
    truth, samples = draws[0], draws[1:]
    ranks = sbc.rank_statistics(truth, samples, g).numpy()
    assert sbc._uniformity_p(ranks, n) > 0.01
    strict = (samples < truth[None]).sum(0).numpy()
    assert sbc._uniformity_p(strict, n) < 1e-6


def test_uniformity_p_flags_skewed_ranks():
    rng = np.random.default_rng(0)
    assert sbc._uniformity_p(rng.integers(0, 5, 400), 4) > 0.01
    assert sbc._uniformity_p(np.zeros(400, dtype=int), 4) < 1e-6


def test_half_light_radius_of_a_ring():
    """All the flux on a ring of radius 10 px about the centre: half-light radius ~10 px
    (within the 1 px width of the ring); negative sky is ignored."""
    H = 41
    yy, xx = np.mgrid[:H, :H] - (H - 1) / 2
    ring = (np.abs(np.hypot(yy, xx) - 10) < 0.5).astype(float)
    img = torch.as_tensor(np.stack([ring, ring, ring]) - 0.01)
    assert abs(float(sbc._half_light_radius(img)) - 10) <= 1.0


def _pixel_integrated(H: int, profile) -> np.ndarray:
    """``profile(r)`` [flux per px^2] integrated over each pixel of an H x H grid (8 x 8 subpixels)."""
    yy, xx = np.mgrid[:H, :H] - (H - 1) / 2
    o = (np.arange(8) + 0.5) / 8 - 0.5
    return sum(profile(np.hypot(yy + a, xx + b)) for a in o for b in o) / 64


@pytest.mark.parametrize("H", [48, 49])
def test_half_light_radius_of_gaussians_and_discs(H):
    """Analytic half-light radii: sigma sqrt(2 ln 2) for a circular Gaussian, R / sqrt(2) for a
    uniform disc of radius R. Within 0.1 px for Gaussian sigma 1.5-6 px and discs of radius
    3-15 px on even and odd grids (the knots at mid-ring radii leave up to 0.08 px; pixel-centre
    knots were off by up to 0.36 px)."""
    for s in (1.5, 2.0, 3.0, 4.0, 6.0):
        img = torch.as_tensor(_pixel_integrated(H, lambda r: np.exp(-r**2 / (2 * s**2))))[None].repeat(3, 1, 1)
        assert abs(float(sbc._half_light_radius(img)) - s * math.sqrt(2 * math.log(2))) < 0.1
    for R in (3.0, 5.0, 10.0, 15.0):
        img = torch.as_tensor(_pixel_integrated(H, lambda r: (r < R).astype(float)))[None]
        assert abs(float(sbc._half_light_radius(img)) - R / math.sqrt(2)) < 0.1


def test_half_light_radius_is_continuous():
    """The radius increases strictly with the width of a Gaussian over 201 widths 2-4 px (no two
    equal: no ties between truth and samples from a discrete radius), batches work, and an
    image without positive flux has no radius (NaN)."""
    yy, xx = np.mgrid[:40, :40] - 19.5
    imgs = torch.as_tensor(np.stack([np.exp(-(yy**2 + xx**2) / (2 * s**2)) for s in np.linspace(2, 4, 201)]))
    r = sbc._half_light_radius(imgs[:, None])
    assert r.shape == (201,) and bool((r.diff() > 0).all())
    assert torch.isnan(sbc._half_light_radius(torch.full((2, 1, 8, 8), -1.0))).all()


def test_half_light_radius_ranks_of_a_calibrated_sampler():
    """Truths and 8 samples drawn alike (Gaussian blobs of width uniform in 2-3 px, 16 x 16
    grid, where the pixel radii are coarse): half-light radius ranks are uniform (chi^2 p > 0.01,
    300 truths, seeded)."""
    rng = np.random.default_rng(3)
    g = torch.Generator().manual_seed(3)
    yy, xx = np.mgrid[:16, :16] - 7.5
    w = rng.uniform(2, 3, size=(9, 300))
    imgs = torch.as_tensor(np.exp(-(yy**2 + xx**2)[None, None] / (2 * w[..., None, None] ** 2)))
    radius = sbc._half_light_radius(imgs[:, :, None])  # (9, 300)
    ranks = sbc.rank_statistics(radius[0], radius[1:], g).numpy()
    assert sbc._uniformity_p(ranks, 8) > 0.01


def test_bad_truth_set():
    with pytest.raises(ValueError, match="prior_draws"):
        sbc.truth_images(None, "training", 4)


def _fake_problem(C: int = 1, y: torch.Tensor | None = None, sigma: float = 1.0):
    """Stand-in for problem.InverseProblem on 8 x 8 pixels: flux exp(x), identity operator, noise
    sigma ``sigma`` (1 by default) and unit pixel width, observation ``y`` (zeros by default),
    window centre at the middle, per-sample chi^2 of 1."""
    return SimpleNamespace(operator=SimpleNamespace(model_pixel_width=1.0, A=lambda f: f),
                           sigma=torch.full((C,), sigma, dtype=torch.float64),
                           y=torch.zeros(C, 8, 8, dtype=torch.float64) if y is None else y, center_xy=(3.5, 3.5),
                           to_flux=lambda x: x.exp(), sample_chi2=lambda f: np.ones(len(f)), scale=1.0,
                           profile=SimpleNamespace(asinh_a=0.1))


def test_light_offsets_of_samples_brighter_than_the_truth():
    """Samples 1 % and 3 % brighter than the truth, noise-free data, sigma 2 on 8 x 8 pixels: the
    total-flux offset is 0.02 sum(flux) / (2 sqrt(64)) with spread std(0.01, 0.03) sum(flux) / 16,
    and the residual annuli sum to -0.02 sum(flux) / 2 (to 1e-12), the inner one over r < 3 px."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 8, generator=g, dtype=torch.float64)
    f = x.exp()
    eps = torch.tensor([0.01, 0.03], dtype=torch.float64)
    draws = x[None] + torch.log1p(eps).view(-1, 1, 1, 1)
    case = sbc.CalibrationCase(x, f, _fake_problem(y=f.clone(), sigma=2.0), 20.0, 0.1)
    offset, spread, annuli = sbc._light_offsets(case, draws.exp())
    total = float(f.sum())
    assert offset[0] == pytest.approx(0.02 * total / 16, rel=1e-12)
    assert spread[0] == pytest.approx(float(eps.std()) * total / 16, rel=1e-12)
    assert annuli.sum() == pytest.approx(-0.02 * total / 2, rel=1e-12)
    r = ((torch.arange(8.0).view(1, -1) - 3.5) ** 2 + (torch.arange(8.0).view(-1, 1) - 3.5) ** 2).sqrt()
    assert annuli[0] == pytest.approx(-0.02 * float(f[0][r < 3].sum()) / 2, rel=1e-12)
    out = sbc.summarise([case, case], [draws, draws], null_reps=5)
    assert out["flux_offset"]["mean"][0] == pytest.approx(offset[0], rel=1e-12)
    assert out["flux_offset"]["sem"][0] == pytest.approx(0.0, abs=1e-12)
    assert len(out["residual_annuli"]["mean"]) == len(sbc.RESIDUAL_ANNULI_PX) - 1


def test_summarise_records_references_and_reproducible_ranks():
    """summarise on 6 exchangeable stand-in cases (4 samples of 1 x 8 x 8): TARP with the
    recorded reference scheme and its null band; the same seed gives the same ranks."""
    g = torch.Generator().manual_seed(4)
    centre = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    x_true = centre + 0.1 * torch.randn(centre.shape, generator=g, dtype=torch.float64)
    cases = [sbc.CalibrationCase(x, 30 * x.exp(), _fake_problem(), 20.0, 0.1) for x in x_true]
    draws = [c + 0.1 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64) for c in centre]
    a, b = (sbc.summarise(cases, draws, null_reps=20, seed=7) for _ in range(2))
    assert a["tarp_references"] == sbc.TARP_REFERENCES and 0 <= a["tarp_max_dev"] <= 1 and a["tarp_null_95"] > 0
    assert a["rank_flux"] == b["rank_flux"] and a["rank_radius"] == b["rank_radius"]
    assert sum(a["rank_radius"]) == 6 and len(a["rank_radius"]) == 5


def _toy_cases(n_truths: int, spread: float, seed: int):
    """Stand-in cases of 1 x 8 x 8 pixels with surface brightness exp(x) spanning all three
    classes: truth ``mu + 0.2 e``, 4 samples ``mu + spread 0.2 e_j`` (``spread`` 1: calibrated)."""
    g = torch.Generator().manual_seed(seed)
    mu = 4.5 * torch.rand(n_truths, 1, 8, 8, generator=g, dtype=torch.float64) - 1.0
    x_true = mu + 0.2 * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    cases = [sbc.CalibrationCase(x, x.exp(), _fake_problem(), 20.0, 0.1) for x in x_true]
    draws = [m + spread * 0.2 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64) for m in mu]
    return cases, draws


@pytest.mark.parametrize("spread, sign", [(1.0, 0), (1.5, 1), (0.5, -1)])
def test_tarp_distance_excess_detects_dispersion(spread, sign):
    """The distance excess behind TARP (300 stand-in truths, 4 samples, seeded): a calibrated
    sampler's z-score lies within 3.5 of 0 in every class and over the whole image; samples
    spread 1.5 (0.5) times the truth's scatter give z > 4 (< -4) over the whole image."""
    cases, draws = _toy_cases(300, spread, seed=11)
    ex = sbc.summarise(cases, draws, null_reps=10)["tarp_distance_excess"]
    assert set(ex) == {*sbc.PIXEL_CLASSES, "all"}
    if sign == 0:
        assert all(abs(v["z"]) < 3.5 for v in ex.values()), ex
    else:
        assert sign * ex["all"]["z"] > 4.0, ex


def test_tarp_distance_excess_classes_are_symmetric():
    """Classes taken from the truth alone select pixels where the truth is bright, and then a
    calibrated sampler looks biased in them (faint class, 300 stand-in truths: |z| > 4); the
    classes of the samples and the truth together do not (|z| < 3.5)."""
    cases, draws = _toy_cases(300, 1.0, seed=12)
    sym = sbc.summarise(cases, draws, null_reps=10)["tarp_distance_excess"]
    rows = []
    for k, (c, x) in enumerate(zip(cases, draws)):
        r, m = cases[k - 1].x_true, sbc._pixel_class(c) == 1
        rows.append(float(((x - r[None]) ** 2)[:, m].sum(1).mean() - ((c.x_true - r) ** 2)[m].sum()))
    z_truth = np.mean(rows) / (np.std(rows, ddof=1) / math.sqrt(len(rows)))
    assert abs(sym["faint"]["z"]) < 3.5 and abs(z_truth) > 4.0, (sym["faint"], z_truth)


def test_mock_calibration_uses_prior_references():
    """mock_calibration (the validation notebook's calibration) keeps its keys and records the
    reference scheme; its TARP equals tarp_prior on the prior-space samples and truths."""
    from diffdecon.prior import stretch

    g = torch.Generator().manual_seed(5)
    results = []
    for _ in range(5):
        truth = torch.rand(1, 6, 6, generator=g, dtype=torch.float64)
        samples = stretch(truth, 0.1)[None] + 0.05 * torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
        problem = _fake_problem()
        problem.truth = truth
        results.append(SimpleNamespace(samples=samples, flux_samples=samples.exp(), problem=problem))
    cal = sbc.mock_calibration(results)
    assert {"alpha", "ecp", "tarp_max_dev", "tarp_null_95", "coverage", "coverage_target", "chi2_samples",
            "chi2_samples_std"} <= set(cal) and cal["tarp_references"] == sbc.TARP_REFERENCES
    S = torch.stack([r.samples for r in results], 1).flatten(2).numpy()
    T = torch.stack([stretch(r.problem.truth, 0.1) for r in results]).flatten(1).numpy()
    assert cal["tarp_max_dev"] == pytest.approx(sbc.tarp_prior(S, T)[2])


def test_flux_scale_does_not_depend_on_the_truth():
    """make_cases gives every truth at one magnitude the same flux scale s (the sampler is told
    s; an s set from the truth's own total would tell it that total): a truth twice as bright
    in normalised flux is observed twice as bright; s is the magnitude's flux over
    reference_total (tolerance: float64 rounding)."""
    from diffdecon import config, mock
    from diffdecon.prior import stretch, unstretch
    from diffdecon.units import mag_to_flux

    P = config.get_profile("smoke")
    g = torch.Generator().manual_seed(2)
    u = 0.05 * torch.rand(len(P.bands), P.image_size, P.image_size, generator=g, dtype=torch.float64)
    x = stretch(torch.stack([u, 2 * u]), P.asinh_a).float()
    cases = sbc.make_cases(SimpleNamespace(profile=P), x, [21.0], [0.1], mock.hsc_reference(), seed=3)
    s_ref = float(mag_to_flux(21.0)) / sbc.reference_total(P)
    assert [c.problem.scale for c in cases] == pytest.approx([s_ref, s_ref], rel=1e-12)
    totals = [float(c.flux_true[-1].sum()) for c in cases]
    assert totals[1] / totals[0] == pytest.approx(2.0, rel=1e-4)
    assert totals[0] == pytest.approx(s_ref * float(unstretch(x[0].double(), P.asinh_a)[-1].sum()), rel=1e-9)
    assert 0 < sbc.reference_total(P) < P.flux_norm


def test_manuscript_variables_per_magnitude():
    """Per-magnitude variables of a calibration record, the distance excess's z-score rounded to
    0.1; NaN where the record lacks a figure."""
    b = {"chi2_sample_median": 1.004, "coverage_68": 0.4123, "tarp_max_dev": 0.2, "tarp_null_95": 0.33,
         "tarp_distance_excess": {"all": {"mean": 1.0, "sem": 0.3, "z": 3.14159}}}
    rec = {"prior_draws": {"mmps": {"n_truths": 3, "by_mag": {"18": b, "20": {**b, "tarp_distance_excess": {}}},
                                    "settings": {"steps": 20, "cg_iters": 240, "cg_tol": 1e-4}}}}
    v = sbc.manuscript_variables(rec)
    assert (v["CalPriorSteps"], v["CalPriorCgIters"], v["CalPriorCgTol"]) == (20, 240, 1e-4)
    assert v["CalPriorTarpExcessZEighteen"] == 3.1 and v["CalPriorChiEighteen"] == 1.0
    assert math.isnan(v["CalPriorTarpExcessZTwenty"]) and math.isnan(v["CalHeldN"])
    # another prefix names another run's variables (the exact mixture prior's), letters only
    mix = sbc.manuscript_variables(rec, prefix="CalMix")
    assert mix["CalMixPriorTarpExcessZEighteen"] == 3.1 and not any(k.startswith("CalPrior") for k in mix)
    with pytest.raises(ValueError, match="letters only"):
        sbc.manuscript_variables(rec, prefix="Cal_2")
