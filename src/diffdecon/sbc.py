"""Calibration where the answer is known: simulation-based calibration of a posterior sampler.

Truths are drawn from the prior itself (``prior_draws``) or taken from held-out synthetic
galaxies (``heldout``), set to a total magnitude, observed through the HSC-like forward model
and noise, and inverted. On prior draws the generative model of the test is exactly the one
the sampler assumes (the flux scale is given to the sampler, not estimated, and is the same
for every truth at one magnitude: :func:`make_cases`), so a correct sampler is calibrated
there whatever the prior's quality; on held-out galaxies the gap to that is the prior's
misspecification.

Statistics (:func:`summarise`):

* ``chi2_sample``: reduced chi^2 of every sample's ``A(x)`` against its ``y`` (~1 when the
  samples fit the data to the noise);
* interval coverage of the 68 % / 95 % central intervals per pixel, overall and per pixel
  class of the truth's surface brightness in units of the noise sigma (``sky`` < 1,
  ``faint`` 1-10, ``galaxy`` >= 10), against the *finite-sample* target: with ``n``
  samples a calibrated sampler's empirical quantile interval covers less than its nominal
  level (:func:`finite_sample_coverage`);
* TARP (Lemos et al. 2023) on prior-space pixels without min-max normalisation, so that
  near-empty sky pixels, whose range over the truths is tiny, cannot dominate the distance,
  and with reference points drawn from the prior: the reference of truth k is truth k - 1 of
  the same set (:func:`prior_references`), an independent draw of the truths' distribution,
  which TARP allows for any reference independent of the truth and its samples. ``tarp``'s
  default references, uniform in [0, 1]^d, lie far from prior-space images (sky at x ~ -1),
  so the difference of two squared distances to them reduces to one weighted sum of the
  pixels, dominated by the sky: TARP would test that single linear statistic. The maximum
  deviation from the diagonal is compared with ``tarp_null_95``, the 95th percentile of the
  same statistic, with the same reference scheme, for a perfectly calibrated sampler with
  the same numbers of truths and samples (:func:`tarp_null`); ``tarp_references`` in the
  output names the scheme;
* what drives TARP (``tarp_distance_excess``): per pixel class and over the whole image, the
  mean over truths of ``mean_j |x_j - r|^2 - |x_true - r|^2`` (prior space, summed over the
  class's pixels; ``r`` the truth's TARP reference), with its standard error and z-score. For a
  calibrated sampler truth and samples are exchangeable given ``y`` and ``r`` is independent of
  them, so its expectation is 0; it is positive where the samples scatter more than the truth
  about what they share (over-dispersed, or biased away from typical images), negative where
  they scatter less. The classes are taken here from the mean flux of the samples and the truth
  together, a symmetric function of the ``n + 1`` draws: classes of the truth alone select
  pixels where the truth happens to be bright and bias the comparison;
* where the samples miss the data's light (``flux_offset``, ``residual_annuli``): per band, the
  samples' total re-convolved flux ``sum A(x_j)`` minus the truth's ``sum A(x_true)``, in units
  of the noise of the data's summed flux ``sigma sqrt(n_obs)`` (mean over samples, then mean and
  standard error over truths, with the samples' own spread in the same units), and the summed
  residuals ``sum (y - A(x_j)) / sigma`` in annuli about the window centre
  (:data:`RESIDUAL_ANNULI_PX`; mean over samples and bands, then over truths). For a calibrated
  sampler the offset is 0 within its standard error and the residual sums are noise, 0 within
  about ``sqrt(pixels in the annulus)``;
* ranks of the truth among the samples (simulation-based calibration, Talts et al. 2018) for
  the total flux, the (continuous) half-light radius and the pixels of the galaxy class, ties
  broken at random with a seeded generator (:func:`rank_statistics`), with a chi^2 test of
  uniformity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import calibration, mock, problem as problem_mod, samplers
from .arrays import to_numpy
from .calibration import tarp_coverage
from .config import Profile
from .prior import normalise, stretch, unstretch
from .units import mag_to_flux

__all__ = ["PIXEL_CLASSES", "TRUTH_SETS", "TARP_REFERENCES", "CalibrationCase", "truth_images", "reference_total",
           "make_cases", "posterior_draws", "finite_sample_coverage", "prior_references", "tarp_prior", "tarp_null",
           "rank_statistics", "summarise", "run_calibration", "manuscript_variables", "mock_calibration"]

TRUTH_SETS: tuple[str, ...] = ("prior_draws", "heldout")
"""Accepted truth sets: draws of the prior itself, or held-out synthetic galaxies."""

PIXEL_CLASSES: dict[str, tuple[float, float]] = {"sky": (-math.inf, 1.0), "faint": (1.0, 10.0),
                                                 "galaxy": (10.0, math.inf)}
"""Pixel classes by the truth's surface brightness [noise sigma per obs px]."""


RESIDUAL_ANNULI_PX: tuple[float, ...] = (0.0, 3.0, 6.0, 9.0, 12.0, 16.0, 20.0, 25.0, math.inf)
"""Edges of the annuli of ``residual_annuli`` [observation px from the window centre]."""

TARP_BINS: int = 20
"""Credibility levels at which TARP's expected coverage is evaluated (the same for the
sampler and its null band; ``tarp``'s default of ``n_sims // 10`` is a single level for fewer
than 20 truths and hides any deviation)."""

TARP_REFERENCES: str = "prior (other truths)"
"""TARP's reference scheme, recorded with the results (:func:`prior_references`)."""


@dataclass
class CalibrationCase:
    """One truth and its observation.

    Attributes
    ----------
    x_true : Tensor (C, H, W) prior-space truth; flux_true : Tensor (C, H, W) [flux per model px].
    problem : problem.InverseProblem with the truth's flux scale.
    mag : float total i-band magnitude [AB]; z : float.
    """

    x_true: torch.Tensor
    flux_true: torch.Tensor
    problem: object
    mag: float
    z: float


def truth_images(prior, kind: str, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` prior-space truths (n, C, H, W): draws of ``prior`` from its sampling chain
    (cached, seed ``seed``; a closed-form prior with a ``sample`` method: its exact draws,
    e.g. :class:`diffdecon.mixture_prior.GalaxyMixturePrior`) or held-out synthetic galaxies
    normalised as the training images."""
    from . import galaxies, reference_samples

    if kind not in TRUTH_SETS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(TRUTH_SETS)}")
    P = prior.profile
    if kind == "prior_draws" and samplers.has_exact_draws(prior):
        return prior.sample(n, torch.Generator().manual_seed(seed)).float()
    if kind == "prior_draws":
        return reference_samples.prior_samples(prior, n, seed=seed, progress=False)[:n].float()
    ds = galaxies.build_dataset(P, split="test", n=max(n, 64))
    x, _ = normalise(torch.as_tensor(np.array(ds.images[:n], dtype=np.float64)), P)
    return x.float()


def reference_total(profile: Profile) -> float:
    """The i-band total of a typical image in normalised flux: the median over the training
    images of ``flux_norm`` times their i-band share of the total [normalised flux]. A
    constant of the profile, independent of any truth (:func:`make_cases`)."""
    from . import galaxies

    imgs = np.asarray(galaxies.build_dataset(profile, split="train").images[:N_REFERENCE], dtype=np.float64)
    share = imgs[:, -1].sum((-2, -1)) / imgs.sum((-3, -2, -1))
    return float(profile.flux_norm * np.median(share))


N_REFERENCE: int = 512
"""Training images :func:`reference_total` takes the median over."""


def make_cases(prior, x_true: torch.Tensor, mags: Sequence[float], redshifts: Sequence[float],
               reference: mock.HSCReference, seed: int = 0) -> list[CalibrationCase]:
    """Observe truth ``k`` at magnitude ``mags[k % len(mags)]`` and redshift
    ``redshifts[k % len(redshifts)]`` with noise from a generator seeded ``seed + k``.

    The truth's flux is ``s unstretch(x)`` with ``s = 10**(-0.4 (mag - 27)) / T_ref``, ``T_ref``
    from :func:`reference_total` [HSC coadd flux per normalised flux]: ``mag`` is the i-band
    magnitude of an image with the training set's median i-band total, and each truth's own
    magnitude differs by its normalised i-band total (prior draws: 5-95 % range 37-51 against
    the reference 45 on the quick prior, i.e. -0.2..+0.2 mag). ``s`` must not depend on the
    truth: the sampler is given ``s``, and an ``s`` set from the truth's own total would tell
    it that total exactly (the truths would then be draws of the prior conditioned on it, not
    of the prior the sampler assumes). The problem carries ``s``."""
    P: Profile = prior.profile
    t_ref = reference_total(P)
    cases = []
    for k, x in enumerate(x_true):
        mag, z = float(mags[k % len(mags)]), float(redshifts[k % len(redshifts)])
        u = unstretch(x.double(), P.asinh_a)
        s = float(mag_to_flux(mag)) / t_ref
        flux = s * u
        obs = mock.make_mock(flux.numpy(), z, P, reference, torch.Generator().manual_seed(seed + k),
                             dtype=torch.float32)
        prob = problem_mod.from_mock(obs, prior)
        prob.scale = s
        prob.name = f"{prob.name} mag={mag:g}"
        cases.append(CalibrationCase(x.float(), flux, prob, mag, z))
    return cases


def posterior_draws(case: CalibrationCase, prior, n: int, settings: dict, seed: int) -> torch.Tensor:
    """``n`` MMPS posterior samples (prior space) of ``case`` with ``settings`` (keyword
    arguments of :func:`samplers.mmps`: ``steps``, ``cg_iters``, ``covariance``, ...) over
    the profile's defaults (:meth:`diffdecon.problem.InverseProblem.mmps_kwargs`)."""
    kw = case.problem.mmps_kwargs(settings)
    gens = [torch.Generator().manual_seed(seed * 100_003 + j) for j in range(n)]
    p = case.problem
    return samplers.mmps(prior, p.y, p.forward, p.sigma, gens, n, progress=False, **kw).detach().cpu()


def finite_sample_coverage(n: int, levels: Sequence[float] = (0.68, 0.95)) -> dict[float, float]:
    """Expected coverage of the central interval between ``torch.quantile`` estimates (linear
    interpolation) from ``n`` samples when the truth is exchangeable with them (a calibrated
    sampler) [fraction]: ``level (n - 1) / (n + 1)``.

    The quantile at probability ``p`` sits at position ``h = p (n - 1)`` between order
    statistics, and for uniform draws ``E[U_(k)] = k / (n + 1)``, so its expected CDF value is
    ``(h + 1) / (n + 1)``; the truth falls between the two quantiles with probability
    ``(h_hi - h_lo) / (n + 1)`` (0.600 / 0.838 for n = 16)."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}; accepted: an int >= 2 (samples per truth)")
    return {float(level): float(level) * (n - 1) / (n + 1) for level in levels}


def prior_references(truths: np.ndarray) -> np.ndarray:
    """TARP reference points drawn from the prior: truth k - 1 for truth k (cyclically),
    ``np.roll(truths, 1, axis=0)``, (n_sims, n_dims) in the truths' units. Each is an
    independent draw of the truths' distribution, independent of truth k and its samples."""
    truths = np.asarray(truths)
    if truths.ndim != 2 or truths.shape[0] < 2:
        raise ValueError(f"truths with shape {truths.shape}; accepted: (n_sims >= 2, n_dims)")
    return np.roll(truths, 1, axis=0)


def tarp_prior(samples: np.ndarray, truths: np.ndarray, seed: int = 0):
    """TARP (:func:`calibration.tarp_coverage`, euclidean, not normalised, :data:`TARP_BINS`
    levels) of ``samples`` (n_samples, n_sims, n_dims) against ``truths`` (n_sims, n_dims)
    with :func:`prior_references`. Returns (alpha, ecp, max |ecp - alpha|)."""
    return tarp_coverage(samples, truths, references=prior_references(truths), norm=False, seed=seed,
                         num_alpha_bins=TARP_BINS)


def tarp_null(n_truths: int, n_samples: int, reps: int = 200, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Maximum TARP deviations of a perfectly calibrated sampler (truth and samples i.i.d.
    from one distribution per simulation) with ``n_truths`` and ``n_samples``, ``reps``
    replicates, with the references of :func:`summarise` and :func:`mock_calibration`
    (:func:`tarp_prior`): the null distribution of their ``tarp_max_dev``."""
    rng = np.random.default_rng(seed)
    devs = []
    for r in range(reps):
        centre = rng.normal(size=(n_truths, dim))  # each simulation has its own posterior
        th = centre + rng.normal(size=(n_truths, dim))
        s = centre[None] + rng.normal(size=(n_samples, n_truths, dim))
        devs.append(tarp_prior(s, th, seed=r)[2])
    return np.asarray(devs)


def _half_light_radius(flux: torch.Tensor) -> torch.Tensor:
    """Radius [model px] around the image centre holding half of the positive flux summed
    over bands (negative pixels count as 0), for (..., C, H, W) -> (...), float64.

    Continuous: with the distinct pixel-centre radii r_1 < r_2 < ... sorted, the flux F_j of
    the pixels with centre within r_j is taken as enclosed at the midpoint (r_j + r_{j+1}) / 2,
    where that ring of pixels is complete, with F = 0 at r = 0; the radius is where the
    piecewise-linear F(r) crosses half the total (within 0.1 px of the analytic value for
    pixel-integrated Gaussians and discs, tests/test_sbc.py). NaN where an image has no
    positive flux."""
    H, W = flux.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    r = torch.sqrt((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2).flatten()
    r_j, group = torch.unique(r, return_inverse=True)  # sorted distinct radii
    f = flux.double().clamp_min(0).sum(-3).flatten(-2)
    f_j = torch.zeros((*f.shape[:-1], r_j.numel()), dtype=torch.float64).index_add_(-1, group, f)
    F = torch.cat([torch.zeros_like(f_j[..., :1]), f_j.cumsum(-1)], -1)  # enclosed flux at the knots r_F
    r_next = torch.cat([r_j[1:], 2 * r_j[-1:] - r_j[-2:-1]])
    r_F = torch.cat([r_j.new_zeros(1), 0.5 * (r_j + r_next)])
    half = 0.5 * F[..., -1:]
    j = (F < half).sum(-1, keepdim=True).clamp(1, r_F.numel() - 1)  # first knot with F >= half
    F0, F1 = F.gather(-1, j - 1), F.gather(-1, j)
    r0, r1 = r_F[j - 1], r_F[j]
    r_half = r0 + (half - F0) / (F1 - F0) * (r1 - r0)  # linear interpolation of F(r) = half
    return torch.where(half > 0, r_half, torch.full_like(r_half, math.nan)).squeeze(-1)


def rank_statistics(truth: torch.Tensor, samples: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rank of each truth value among its samples, in ``{0, ..., n}`` (uniform for a
    calibrated sampler): the number of samples below it plus, for the ``m`` samples equal to
    it, a uniform integer in ``{0, ..., m}`` drawn with ``generator`` (ties broken at random,
    Talts et al. 2018; counting only samples strictly below puts every tie at the bottom).
    ``samples`` (n, ...), ``truth`` (...), same units; returns int64 (...)."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r}; accepted: a seeded torch.Generator")
    below = (samples < truth[None]).sum(0)
    ties = (samples == truth[None]).sum(0)
    u = torch.rand(ties.shape, generator=generator, dtype=torch.float64)
    return below + torch.minimum((u * (ties + 1)).floor().long(), ties)


def _uniformity_p(ranks: np.ndarray, n: int) -> float:
    """p-value of a chi^2 test that ranks are uniform on {0..n} (bins merged to >= 5 expected)."""
    from scipy import stats

    bins = max(1, min(n + 1, len(ranks) // 5))
    counts = np.histogram(ranks, bins=bins, range=(-0.5, n + 0.5))[0]
    return float(stats.chisquare(counts).pvalue) if bins > 1 else float("nan")


def _pixel_class(case: CalibrationCase) -> torch.Tensor:
    """Class index per pixel (C, H, W) of the truth: 0 sky, 1 faint, 2 galaxy (:data:`PIXEL_CLASSES`)."""
    return _class_of(case, case.flux_true)


def _class_of(case: CalibrationCase, flux: torch.Tensor) -> torch.Tensor:
    """Class index per pixel (C, H, W) of a flux image ``flux`` (C, H, W) [flux per model px]
    by its surface brightness in noise sigmas (:data:`PIXEL_CLASSES`): 0 sky, 1 faint, 2 galaxy."""
    p = case.problem
    sb = flux.double() / p.operator.model_pixel_width**2 / p.sigma.double().view(-1, 1, 1)
    out = torch.zeros(sb.shape, dtype=torch.long)
    for i, (lo, hi) in enumerate(PIXEL_CLASSES.values()):
        out[(sb >= lo) & (sb < hi)] = i
    return out


def _distance_excess(case: CalibrationCase, x: torch.Tensor, flux: torch.Tensor, reference: torch.Tensor) -> dict:
    """``mean_j |x_j - r|^2 - |x_true - r|^2`` per pixel class and over all pixels (``"all"``)
    [prior-space units^2], classes of the mean flux of the samples ``flux`` (n, C, H, W) and the
    truth together (module docstring)."""
    cls = _class_of(case, (flux.double().sum(0) + case.flux_true.double()) / (flux.shape[0] + 1))
    d_s = (x.double() - reference.double()[None]) ** 2
    d_t = (case.x_true.double() - reference.double()) ** 2
    out = {name: float(d_s[:, cls == i].sum(1).mean() - d_t[cls == i].sum()) for i, name in enumerate(PIXEL_CLASSES)}
    out["all"] = float(d_s.flatten(1).sum(1).mean() - d_t.sum())
    return out


def _light_offsets(case: CalibrationCase, flux: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offset, spread, annuli)`` of samples ``flux`` (n, C, H, W) [flux per model px]: per band
    the mean and standard deviation over samples of ``(sum A(flux_j) - sum A(flux_true)) /
    (sigma sqrt(n_obs))`` (C,), and ``sum (y - A(flux_j)) / sigma`` per annulus of
    :data:`RESIDUAL_ANNULI_PX`, mean over samples and bands (module docstring)."""
    p = case.problem
    with torch.no_grad():
        a_s = p.operator.A(flux.double())
        a_t = p.operator.A(case.flux_true.double()[None])
    sigma = p.sigma.double().view(1, -1, 1, 1)
    n_obs = a_s.shape[-2] * a_s.shape[-1]
    d = ((a_s - a_t).sum((-2, -1)) / (sigma.view(1, -1) * math.sqrt(n_obs))).cpu().numpy()  # (n, C)
    res = (p.y.double()[None] - a_s) / sigma
    rows = torch.arange(res.shape[-2], dtype=torch.float64).view(-1, 1)
    cols = torch.arange(res.shape[-1], dtype=torch.float64).view(1, -1)
    r = ((cols - p.center_xy[0]) ** 2 + (rows - p.center_xy[1]) ** 2).sqrt()
    edges = RESIDUAL_ANNULI_PX
    annuli = np.array([float(res[..., (r >= lo) & (r < hi)].sum(-1).mean()) for lo, hi in zip(edges[:-1], edges[1:])])
    return d.mean(0), d.std(0, ddof=1) if len(d) > 1 else np.zeros(d.shape[1]), annuli


def _per_case(case: CalibrationCase, x: torch.Tensor, generator: torch.Generator,
              reference: torch.Tensor | None = None) -> dict:
    """Per-truth statistics of samples ``x`` (n, C, H, W): chi^2 per sample, coverage flags
    per pixel, ranks of scalar summaries and of galaxy pixels (ties broken with ``generator``)
    and, with a TARP ``reference`` (C, H, W), the distance excess (:func:`_distance_excess`)."""
    p = case.problem
    with torch.no_grad():
        flux = p.to_flux(x.double().clamp(-20, 20))
    chi2 = p.sample_chi2(flux)
    inside = {}
    for level in (0.68, 0.95):
        q = torch.quantile(x.double().flatten(1), torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                               dtype=torch.float64), dim=0)
        t = case.x_true.double().flatten()
        inside[level] = ((t >= q[0]) & (t <= q[1])).reshape(case.x_true.shape)
    cls = _pixel_class(case)
    g = generator
    offset, spread, annuli = _light_offsets(case, flux)
    return {"chi2": chi2, "inside": inside, "cls": cls, "flux_offset": offset, "flux_spread": spread,
            "residual_annuli": annuli,
            "distance_excess": None if reference is None else _distance_excess(case, x, flux, reference),
            "rank_flux": int(rank_statistics(case.flux_true.sum(), flux.sum((1, 2, 3)), g)),
            "rank_radius": int(rank_statistics(_half_light_radius(case.flux_true), _half_light_radius(flux), g)),
            "rank_pixels": rank_statistics(case.x_true.double(), x.double(), g)[cls == 2].numpy()}


def summarise(cases: Sequence[CalibrationCase], draws: Sequence[torch.Tensor], null_reps: int = 200,
              seed: int = 0) -> dict:
    """Calibration statistics (module docstring) of ``draws[k]`` (n, C, H, W) for ``cases[k]``;
    rank ties of case k are broken with a generator seeded ``seed * 100_003 + k``."""
    n = int(draws[0].shape[0])
    truths = np.stack([to_numpy(c.x_true.flatten()) for c in cases])
    refs = prior_references(truths) if len(cases) >= 2 else None  # TARP's references, also of the distance excess
    per = [_per_case(c, x, torch.Generator().manual_seed(seed * 100_003 + k),
                     None if refs is None else torch.from_numpy(refs[k]).view(c.x_true.shape))
           for k, (c, x) in enumerate(zip(cases, draws))]
    chi2 = np.concatenate([r["chi2"] for r in per])
    target = finite_sample_coverage(n)
    out = {"n_truths": len(cases), "n_samples": n, "chi2_sample_median": float(np.median(chi2)),
           "chi2_sample_quantiles_5_95": [float(v) for v in np.quantile(chi2, [0.05, 0.95])],
           "coverage_target_68": target[0.68], "coverage_target_95": target[0.95]}
    for level, key in ((0.68, "coverage_68"), (0.95, "coverage_95")):
        flags = torch.cat([r["inside"][level].flatten() for r in per])
        cls = torch.cat([r["cls"].flatten() for r in per])
        out[key] = float(flags.double().mean())
        for i, name in enumerate(PIXEL_CLASSES):
            sel = cls == i
            out[f"{key}_{name}"] = float(flags[sel].double().mean()) if sel.any() else None
    cls = torch.cat([r["cls"].flatten() for r in per])
    out["pixel_fraction"] = {name: float((cls == i).double().mean()) for i, name in enumerate(PIXEL_CLASSES)}
    samples = np.stack([to_numpy(x.flatten(1)) for x in draws], axis=1)  # (n, n_truths, d)
    if len(cases) >= 2:
        alpha, ecp, dev = tarp_prior(samples, truths, seed=seed)
        out.update(tarp_max_dev=dev, tarp_alpha=alpha.tolist(), tarp_ecp=ecp.tolist(), tarp_references=TARP_REFERENCES,
                   tarp_null_95=float(np.quantile(tarp_null(len(cases), n, reps=null_reps, seed=seed), 0.95)),
                   tarp_distance_excess=_excess_summary([r["distance_excess"] for r in per]))
    off = np.stack([r["flux_offset"] for r in per])  # (truths, C)
    ann = np.stack([r["residual_annuli"] for r in per])
    out["flux_offset"] = {"mean": off.mean(0).tolist(), "sem": _sem(off),
                          "sample_spread": np.stack([r["flux_spread"] for r in per]).mean(0).tolist(),
                          "unit": "noise of the data's summed flux per band"}
    out["residual_annuli"] = {"edges_px": [e if math.isfinite(e) else None for e in RESIDUAL_ANNULI_PX],  # None: open
                              "mean": ann.mean(0).tolist(), "sem": _sem(ann), "unit": "summed residual / sigma"}
    for key in ("rank_flux", "rank_radius"):
        ranks = np.array([r[key] for r in per])
        out[key] = np.bincount(ranks, minlength=n + 1).tolist()
        out[f"{key}_uniform_p"] = _uniformity_p(ranks, n)
    pix = np.concatenate([r["rank_pixels"] for r in per])
    out["rank_pixels_galaxy"] = np.bincount(pix, minlength=n + 1).tolist() if pix.size else []
    return out


def _sem(v: np.ndarray) -> list:
    """Standard error of the mean over the first axis of ``v`` (truths, k), as a list (None with one truth)."""
    if len(v) < 2:
        return [None] * v.shape[1]
    return (v.std(0, ddof=1) / math.sqrt(len(v))).tolist()


def _excess_summary(rows: Sequence[dict]) -> dict:
    """Mean, standard error and z-score (mean / standard error; None where every truth gives
    0, e.g. a class without pixels) over truths of each key of :func:`_distance_excess`
    [prior-space units^2]."""
    out = {}
    for key in rows[0]:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        sem = float(v.std(ddof=1) / math.sqrt(len(v)))
        out[key] = {"mean": float(v.mean()), "sem": sem, "z": float(v.mean() / sem) if sem > 0 else None}
    return out


def run_calibration(prior, kind: str, n_truths: int, n_samples: int, settings: dict, mags: Sequence[float],
                    redshifts: Sequence[float], reference: mock.HSCReference, seed: int = 0,
                    progress: bool = True) -> dict:
    """Draw truths of ``kind``, observe them (:func:`make_cases`), sample each posterior with
    ``settings`` and summarise, overall and per magnitude. Returns a JSON-ready dict with the
    settings and the sampling wall time [s]."""
    x_true = truth_images(prior, kind, n_truths, seed=seed + 1)
    cases = make_cases(prior, x_true, mags, redshifts, reference, seed=seed)
    draws, t0 = [], time.perf_counter()
    for k, case in enumerate(tqdm(cases, desc=f"calibration {kind}", disable=not progress)):
        draws.append(posterior_draws(case, prior, n_samples, settings, seed=seed + k))
    wall = time.perf_counter() - t0
    record = {"settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str))},
              "mags": list(map(float, mags)), "redshifts": list(map(float, redshifts)), "wall_time_s": wall,
              "truth_source": kind, "reference": reference.source, **summarise(cases, draws, seed=seed)}
    if kind == "prior_draws" and samplers.has_exact_draws(prior):
        record["truth_chain"] = "exact draws of the closed-form prior"
    elif kind == "prior_draws":  # which chain drew the truths (reference_samples.prior_samples)
        P = prior.profile
        record["truth_chain"] = ("ancestral, x0 mean" if not P.x0_draw else
                                 "ancestral, x0 drawn" + (", the last step too" if P.last_draw else ""))
    record["by_mag"] = {}
    for mag in sorted(set(float(m) for m in mags)):
        idx = [k for k, c in enumerate(cases) if c.mag == mag]
        if idx:
            record["by_mag"][f"{mag:g}"] = summarise([cases[k] for k in idx], [draws[k] for k in idx], seed=seed)
    return record


_WORDS = {"18": "Eighteen", "20": "Twenty", "22": "TwentyTwo"}


def manuscript_variables(record: dict, prefix: str = "Cal") -> dict:
    """LaTeX variables (``\\CalPriorChi``, ``\\CalHeldCovGalaxy``, ...) of a calibration record
    (the JSON of ``bench/bench_calibration.py``); NaN where the record lacks them. Per
    magnitude, ``Cal<set>TarpExcessZ<mag>`` is the z-score of the whole-image distance excess
    behind TARP (``tarp_distance_excess``, module docstring). ``prefix`` replaces ``Cal``, e.g.
    ``CalMix`` for a run on the exact mixture prior (letters only: LaTeX command names)."""
    if not prefix.isalpha():
        raise ValueError(f"prefix={prefix!r}; accepted: letters only (it begins LaTeX command names)")
    out = {}
    for kind, word in (("prior_draws", "Prior"), ("heldout", "Held")):
        r = record.get(kind, {}).get("mmps", {})
        out[f"{prefix}{word}N"] = r.get("n_truths", float("nan"))
        out[f"{prefix}{word}Samples"] = r.get("n_samples", float("nan"))
        st = r.get("settings", {})  # the sampler's steps, CG budget and tolerance
        out[f"{prefix}{word}Steps"] = st.get("steps", float("nan"))
        out[f"{prefix}{word}CgIters"] = st.get("cg_iters", float("nan"))
        out[f"{prefix}{word}CgTol"] = st.get("cg_tol", "none" if st else float("nan"))  # none: all iterations run
        for key, name in (("chi2_sample_median", "Chi"), ("tarp_max_dev", "Tarp"), ("tarp_null_95", "TarpNull"),
                          ("coverage_68", "CovSixtyEight"), ("coverage_95", "CovNinetyFive"),
                          ("coverage_68_galaxy", "CovGalaxy"), ("coverage_68_sky", "CovSky"),
                          ("coverage_target_68", "CovTarget"), ("wall_time_s", "Wall")):
            v = r.get(key)
            out[f"{prefix}{word}{name}"] = round(float(v), 3) if v is not None else float("nan")
        for mag, b in r.get("by_mag", {}).items():
            m = _WORDS.get(mag, "")
            if m:
                out[f"{prefix}{word}Chi{m}"] = round(float(b["chi2_sample_median"]), 2)
                out[f"{prefix}{word}Cov{m}"] = round(float(b["coverage_68"]), 3)
                out[f"{prefix}{word}Tarp{m}"] = round(float(b.get("tarp_max_dev", float("nan"))), 3)
                out[f"{prefix}{word}TarpNull{m}"] = round(float(b.get("tarp_null_95", float("nan"))), 3)
                z = b.get("tarp_distance_excess", {}).get("all", {}).get("z")
                out[f"{prefix}{word}TarpExcessZ{m}"] = round(float(z), 1) if z is not None else float("nan")
    return out


def mock_calibration(results: Sequence, levels: Sequence[float] = (0.68, 0.95), seed: int = 0) -> dict[str, Any]:
    """Calibration of one sampler over a mock set.

    Parameters
    ----------
    results : sequence of deconvolution.PosteriorResult (mocks with ``problem.truth``), each with
        the same number of samples.

    Returns
    -------
    dict with ``alpha``, ``ecp`` (TARP expected coverage vs credibility level,
    :func:`tarp_prior` on the prior-space samples and truths, euclidean distance, *not* min-max
    normalised: normalising each pixel over the truths lets near-empty sky pixels dominate the
    distance; reference of mock k: the truth of mock k - 1, :func:`prior_references`),
    ``tarp_references`` (that scheme), ``tarp_max_dev`` (max |ecp - alpha|), ``tarp_null_95``
    (its 95th percentile for a calibrated sampler with the same numbers of mocks and samples
    and the same references, :func:`diffdecon.sbc.tarp_null`), ``coverage``
    {level: fraction of model pixels of all mocks inside the central credible interval},
    ``coverage_target`` {level: what a calibrated sampler with this many samples reaches,
    :func:`diffdecon.sbc.finite_sample_coverage`},
    ``chi2_samples`` (mean over samples and mocks of the reduced chi^2 of ``A(sample)``
    against ``y``) and ``chi2_samples_std`` (its std over mocks).
    """
    if len(results) < 2:
        raise ValueError(f"{len(results)} posterior(s); accepted: >= 2 mocks (TARP needs several)")
    ns = {r.flux_samples.shape[0] for r in results}
    if len(ns) != 1:
        raise ValueError(f"posteriors have different sample counts {sorted(ns)}; accepted: equal counts")
    if any(r.problem.truth is None for r in results):
        raise ValueError("a posterior's problem has no truth; accepted: mock problems (problem.from_mock)")
    S = torch.stack([r.samples.double() for r in results], 1)  # (n, sims, C, H, W), prior space
    T = torch.stack([stretch(r.problem.truth.double() / r.problem.scale, r.problem.profile.asinh_a)
                     for r in results])  # (sims, C, H, W)
    with np.errstate(over="ignore", invalid="ignore"):  # diverged samples: inf distances, flagged by the result
        alpha, ecp, dev = tarp_prior(to_numpy(S.flatten(2)), to_numpy(T.flatten(1)), seed=seed)
    null95 = float(np.quantile(tarp_null(S.shape[1], S.shape[0], reps=100, seed=seed), 0.95))
    cov = calibration.interval_coverage(S, T, levels)  # = flux-space coverage: the stretch is monotone
    with np.errstate(over="ignore", invalid="ignore"):  # diverged samples: inf chi^2
        chi = np.array([r.problem.sample_chi2(r.flux_samples).mean() for r in results])
    with np.errstate(over="ignore", invalid="ignore"):
        chi_std = float(chi.std(ddof=1)) if chi.size > 1 else 0.0
    return {"alpha": alpha, "ecp": ecp, "tarp_max_dev": dev, "tarp_null_95": null95,
            "tarp_references": TARP_REFERENCES, "coverage": cov,
            "coverage_target": finite_sample_coverage(int(S.shape[0]), levels),
            "chi2_samples": float(chi.mean()), "chi2_samples_std": chi_std}
