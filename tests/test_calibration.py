"""Calibration tools, and the exactness test of the samplers on a Gaussian prior."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from diffdecon import cache, paths
from diffdecon.calibration import (
    GaussianPrior,
    blur_downsample_matrix,
    blurred_observation,
    exact_posterior,
    gaussian_w2,
    interval_coverage,
    posterior_moment_errors,
    reduced_chi2,
    se_covariance,
    tarp_coverage,
    whitened_chi2,
)
from diffdecon.samplers import dps, mmps


@pytest.fixture
def gprior():
    return GaussianPrior(0.1 * torch.ones(16, dtype=torch.float64), se_covariance(4, ell=1.5), shape=(1, 4, 4))


@pytest.mark.parametrize("t", [0, 500, 999])
def test_gaussian_prior_closed_forms(gprior, t):
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    tt = torch.full((2,), t)
    a = float(gprior.abar[t])
    # Tweedie: x0_hat = (x_t + (1 - abar) score) / sqrt(abar); eps = -sqrt(1 - abar) score
    torch.testing.assert_close(gprior.x0_hat(x_t, tt), (x_t + (1 - a) * gprior.score(x_t, tt)) / a**0.5)
    torch.testing.assert_close(gprior.eps(x_t, tt), -((1 - a) ** 0.5) * gprior.score(x_t, tt))
    # E[x0 | x_t] is the posterior mean for the observation x_t = sqrt(abar) x0 + sqrt(1-abar) n
    mp, _ = exact_posterior(gprior.mu, gprior.Sigma, a**0.5 * torch.eye(16, dtype=torch.float64), (1 - a) ** 0.5, x_t[0])
    torch.testing.assert_close(gprior.x0_hat(x_t, tt)[0].flatten(), mp)
    with pytest.raises(ValueError, match="t out of range"):
        gprior.x0_hat(x_t, torch.full((2,), 1000))


def test_gaussian_prior_draws_do_not_depend_on_the_eigenbasis():
    """The 8 x 8 squared-exponential covariance has repeated eigenvalues (the grid's symmetries),
    where any rotation of the eigenvectors is as valid: a draw for a given generator must not
    change with the basis LAPACK returns (tolerance 1e-10 in prior units)."""
    prior = GaussianPrior(torch.zeros(64, dtype=torch.float64), se_covariance(8, ell=2.0), shape=(1, 8, 8))
    lam, U = prior.lam, prior.U
    k = int(torch.nonzero(torch.diff(lam).abs() < 1e-10 * lam.max())[-1])  # a repeated pair (k, k + 1)
    c, s = math.cos(0.7), math.sin(0.7)
    U2 = U.clone()
    U2[:, k], U2[:, k + 1] = c * U[:, k] - s * U[:, k + 1], s * U[:, k] + c * U[:, k + 1]
    torch.testing.assert_close(U2 @ torch.diag(lam) @ U2.T, prior.Sigma, atol=1e-10, rtol=0)  # as valid a basis
    x = prior.sample(3, torch.Generator().manual_seed(0))
    prior.U = U2
    prior.sqrt = (U2 * lam.sqrt()) @ U2.T
    torch.testing.assert_close(prior.sample(3, torch.Generator().manual_seed(0)), x, atol=1e-10, rtol=0)
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(((z * lam.sqrt()) @ U.T - (z * lam.sqrt()) @ U2.T).abs().max()) > 1e-3  # the old draw did move


def test_gaussian_prior_validation():
    with pytest.raises(ValueError, match="expected \\(4, 4\\)"):
        GaussianPrior(torch.zeros(4), torch.eye(3))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianPrior(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))


def test_exact_posterior_matches_information_form():
    g = torch.Generator().manual_seed(0)
    Sigma = se_covariance(4, ell=1.0, nugget=1e-2)
    A = torch.randn(6, 16, generator=g, dtype=torch.float64)
    s = torch.linspace(0.1, 0.3, 6, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    mu = torch.randn(16, generator=g, dtype=torch.float64)
    mp, Sp = exact_posterior(mu, Sigma, A, s, y)
    P = torch.linalg.inv(Sigma) + A.T @ torch.diag(s**-2) @ A  # Sigma_post^-1
    torch.testing.assert_close(Sp, torch.linalg.inv(P), atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(mp, torch.linalg.solve(P, torch.linalg.solve(Sigma, mu) + A.T @ (y / s**2)), atol=1e-9, rtol=1e-6)
    with pytest.raises(ValueError, match="sigma_y"):
        exact_posterior(mu, Sigma, A, torch.ones(5), y)


def test_gaussian_w2_known_values():
    # 1-D: W2(N(0,1), N(1,4)) = sqrt(1^2 + (1-2)^2) = sqrt(2)
    assert gaussian_w2(torch.zeros(1), torch.eye(1), torch.ones(1), 4 * torch.eye(1)) == pytest.approx(math.sqrt(2))
    S = se_covariance(3)
    assert gaussian_w2(torch.zeros(9), S, torch.zeros(9), S) == pytest.approx(0.0, abs=1e-6)


def test_whitened_chi2_and_interval_coverage(gprior):
    x = gprior.sample(4000, torch.Generator().manual_seed(0))
    chi2 = whitened_chi2(x, gprior.mu, gprior.Sigma)
    # E = 1, std of the mean over 4000 draws = sqrt(2/16)/sqrt(4000) = 0.006
    assert abs(float(chi2.mean()) - 1) < 0.03
    truths = gprior.sample(1, torch.Generator().manual_seed(1))[0]
    # one truth, 16 correlated pixels: coverage is a noisy 0/1 average; check the API and
    # that a calibrated posterior over 200 truths gives ~ the nominal level instead
    assert set(interval_coverage(x, truths)) == {0.68, 0.95}
    xs = gprior.sample(200 * 400, torch.Generator().manual_seed(2)).reshape(400, 200, 1, 4, 4)
    th = gprior.sample(200, torch.Generator().manual_seed(3))
    cov = interval_coverage(xs, th)
    # 3200 pixel trials (correlated within an image: ~200 effective): binomial std <= 0.035
    assert abs(cov[0.68] - 0.68) < 0.1 and abs(cov[0.95] - 0.95) < 0.06


def test_tarp_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    n_sims, n_samples, d = 200, 300, 3
    theta = rng.standard_normal((n_sims, d))
    obs = theta + 0.5 * rng.standard_normal((n_sims, d))  # y = theta + noise 0.5
    # exact posterior of theta ~ N(0, 1): mean 0.8 y, variance 0.2
    good = 0.8 * obs[None] + math.sqrt(0.2) * rng.standard_normal((n_samples, n_sims, d))
    bad = 0.8 * obs[None] + 0.3 * math.sqrt(0.2) * rng.standard_normal((n_samples, n_sims, d))
    alpha, ecp, dev_good = tarp_coverage(good, theta)
    _, ecp_bad, dev_bad = tarp_coverage(bad, theta)
    assert alpha.shape == ecp.shape
    # 200 simulations: the ECP curve has binomial noise ~ sqrt(0.25/200) = 0.035; a calibrated
    # posterior stays within 0.15 of the diagonal; a 3x over-confident one falls well below
    # it (0.29 measured with seed 0; TARP's random references dilute the signal), > 0.2.
    assert dev_good < 0.15 and dev_bad > 0.2 and dev_bad > 2 * dev_good
    assert np.mean(ecp_bad - alpha) < 0  # below the diagonal: over-confident
    with pytest.raises(ValueError, match="n_sims"):
        tarp_coverage(good[:, 0], theta)


def test_tarp_coverage_with_given_references():
    """An (n_sims, n_dims) reference array is used as given (with norm=False the result is
    tarp's on the same arrays), normalised like the truths with norm=True (same result as
    normalising all three by hand), and refused with another shape or an unknown name."""
    from tarp import get_tarp_coverage

    rng = np.random.default_rng(2)
    theta = rng.normal(3.0, 2.0, size=(40, 5))
    samples = theta[None] + rng.normal(size=(30, 40, 5))
    refs = rng.normal(3.0, 2.0, size=(40, 5))
    ecp, alpha = get_tarp_coverage(samples, theta, references=refs, norm=False, num_alpha_bins=10)
    want = np.interp(np.linspace(0, 1, len(alpha)), alpha, ecp, left=0.0, right=1.0)
    assert np.allclose(tarp_coverage(samples, theta, references=refs, norm=False, num_alpha_bins=10)[1], want)
    low, span = theta.min(0), theta.max(0) - theta.min(0) + 1e-10
    by_hand = tarp_coverage((samples - low) / span, (theta - low) / span, references=(refs - low) / span,
                            norm=False, num_alpha_bins=10)
    assert np.allclose(tarp_coverage(samples, theta, references=refs, norm=True, num_alpha_bins=10)[1], by_hand[1])
    with pytest.raises(ValueError, match="references"):
        tarp_coverage(samples, theta, references=refs[:, :3])
    with pytest.raises(ValueError, match="references"):
        tarp_coverage(samples, theta, references="prior")


def test_reduced_chi2_wrapper():
    assert reduced_chi2(np.zeros((3, 2, 2)), np.ones((3, 2, 2)), [1.0, 1.0, 2.0]) == pytest.approx(0.75)


# ---------------------------------------------------------------- exactness of the samplers


def exact_test_problem(side: int = 16, sigma_y: float = 0.05, seed: int = 0):
    """Gaussian prior N(0, SE kernel ell = 2 px, amp 0.25, nugget 1e-3) on side x side,
    A = 1 px Gaussian blur + 2x2 binning (dense, 64 x 256), noise sigma_y."""
    Sigma = se_covariance(side, ell=2.0, amp=0.25, nugget=1e-3)
    prior = GaussianPrior(torch.zeros(side * side, dtype=torch.float64), Sigma, shape=(1, side, side))
    y, forward, mp, Sp = blurred_observation(prior, sigma_y, torch.Generator().manual_seed(seed))
    return prior, forward, y, sigma_y, mp, Sp


def test_blurred_observation_matches_its_operator_and_refuses_other_shapes():
    """y is A x_true + noise for the dense A of blur_downsample_matrix; forward is A on batches;
    a prior that is not one band of side x side, side even, is refused by name."""
    side, sigma_y = 8, 0.05
    prior = GaussianPrior(torch.zeros(side * side, dtype=torch.float64), se_covariance(side, ell=2.0),
                          shape=(1, side, side))
    y, forward, mp, Sp = blurred_observation(prior, sigma_y, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    x_true = prior.sample(1, g)
    A = blur_downsample_matrix(side, 1.0, 2)
    noise = sigma_y * torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    assert torch.allclose(y.flatten(), A @ x_true.flatten() + noise, atol=1e-12)  # float64 round-off
    x = torch.randn(3, 1, side, side, dtype=torch.float64)
    assert torch.allclose(forward(x).flatten(1), x.flatten(1) @ A.T, atol=1e-12)
    assert y.shape == (1, 4, 4) and Sp.shape == (side * side, side * side) and mp.numel() == side * side
    odd = GaussianPrior(torch.zeros(49, dtype=torch.float64), se_covariance(7, ell=2.0), shape=(1, 7, 7))
    with pytest.raises(ValueError, match=r"expected \(1, side, side\) with side even"):
        blurred_observation(odd, sigma_y, torch.Generator())


def record_exactness(key: str, entry: dict) -> None:
    """Merge ``entry`` into results/exactness.json under ``key`` (atomic write). Timings are
    printed but not recorded, so that a re-run with the same seeds leaves the file unchanged."""
    path = paths.RESULTS / "exactness.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {k: {a: b for a, b in v.items() if a != "seconds"} for k, v in entry.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_exactness(n_mmps: int, n_dps: int, mmps_steps: int, cg_iters: int, dps_steps: int, dps_settings, tag: str):
    prior, forward, y, sy, mp, Sp = exact_test_problem()
    results = {}
    # Monte-Carlo floor: exact posterior draws with the same n
    L = torch.linalg.cholesky(Sp + 1e-12 * torch.eye(Sp.shape[0], dtype=torch.float64))
    ex = mp + torch.randn(n_mmps, Sp.shape[0], generator=torch.Generator().manual_seed(9), dtype=torch.float64) @ L.T
    results["exact_draws"] = posterior_moment_errors(ex, mp, Sp)
    for key, cov in (("mmps", "tweedie"), ("mmps_isotropic", "isotropic")):
        t0 = time.perf_counter()
        x = mmps(prior, y, forward, sy, torch.Generator().manual_seed(1), n_mmps, steps=mmps_steps, cg_iters=cg_iters,
                 progress=False, covariance=cov)
        results[key] = {**posterior_moment_errors(x, mp, Sp), "steps": mmps_steps, "cg_iters": cg_iters,
                        "eta": 1.0, "seconds": round(time.perf_counter() - t0, 2)}
    for conv, zeta in dps_settings:
        t0 = time.perf_counter()
        out, valid = dps(prior, y, forward, sy, torch.Generator().manual_seed(1), n_dps, steps=dps_steps, zeta=zeta,
                         convention=conv, on_divergence="mask", progress=False)
        stats = posterior_moment_errors(out[valid], mp, Sp) if valid.sum() > 2 else {}
        results[f"dps_{conv}_zeta{zeta}"] = {**stats, "steps": dps_steps, "n_valid": int(valid.sum()),
                                            "seconds": round(time.perf_counter() - t0, 2)}
    print(f"\nexactness ({tag}): 16x16 SE-kernel Gaussian prior, blur 1 px + 2x binning, sigma_y = {sy}")
    for k, v in results.items():
        print(f"  {k:28s} " + ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))
    record_exactness(tag, results)
    return results


def test_exactness_mmps_vs_dps():
    """MMPS (100 steps, 5 CG iterations, 256 samples) against the closed-form posterior, with
    the Tweedie covariance (exact for a Gaussian prior) and the isotropic one (the default).

    Tolerances (posterior std units per pixel): the Monte-Carlo error of the mean of each
    pixel is 1/sqrt(256) = 0.0625, so its RMS over pixels is ~0.06 and the max over 256
    correlated pixels ~0.2; we allow 0.15 (RMS) and 0.45 (max) to leave room for the CG
    truncation. The 100-step eta=1 sampler under-disperses (variance ratio ~0.83; it is the
    same when the exact posterior denoiser replaces MMPS, see test_samplers), so the variance
    ratio must lie in [0.7, 1.05]. DPS's bias is measured, printed and recorded, not bounded;
    we only require it to be finite and MMPS to be closer in W2.
    """
    r = run_exactness(256, 128, 100, 5, 250, [("reference", 1.0), ("reference", 0.3), ("paper", 1.0)], "fast")
    m = r["mmps"]
    assert m["mean_err_rms"] < 0.15 and m["mean_err_max"] < 0.45
    assert 0.7 < m["var_ratio"] < 1.05
    # the empirical-covariance W2 has a Monte-Carlo floor: compare with exact draws (same n)
    assert m["w2"] < 1.25 * r["exact_draws"]["w2"]
    # The isotropic covariance ignores the prior's correlations (the SE kernel's small
    # eigenvalues): an approximation, bounded loosely here (twice the Tweedie errors' bounds
    # on the mean; spread within 50 %) and still closer than DPS in W2.
    iso = r["mmps_isotropic"]
    assert iso["mean_err_rms"] < 0.3 and 0.5 < iso["var_ratio"] < 1.5
    for k, v in r.items():
        if k.startswith("dps"):
            assert v["n_valid"] > 2 and math.isfinite(v["w2"]) and math.isfinite(v["mean_err_rms"])
            assert m["w2"] < v["w2"] and iso["w2"] < v["w2"]


@pytest.mark.slow
def test_exactness_full():
    """The published DPS setting (1000 steps) and 512 samples; MMPS with 5 and 20 CG steps."""
    run_exactness(512, 512, 100, 20, 1000, [("reference", 1.0), ("reference", 0.3), ("paper", 1.0)], "full_cg20")
    r = run_exactness(512, 512, 100, 5, 1000, [], "full_cg5")
    assert r["mmps"]["mean_err_rms"] < 0.12
