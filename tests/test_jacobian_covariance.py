"""MMPS with ``covariance="jacobian"``: the low-rank term measured from the denoiser's
Jacobian (randomized range finder, vector-Jacobian products only) against priors whose
``Cov[x0 | x_t]`` is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from diffdecon import calibration, samplers
from diffdecon import denoiser_variance as dvm
from diffdecon.mixture_prior import GalaxyMixturePrior
from diffdecon.mmps import jacobian_lowrank, mmps, mmps_prior

SHAPE = (3, 32, 32)  # the smoke profile's grid


@pytest.mark.parametrize("step", [600, 900])
def test_jacobian_lowrank_recovers_the_mixture_covariance(step):
    """Five overlapping galaxy-sized components: ``Cov[x0 | x_t] = s_p^2 I + B^T B`` with ``B`` of
    rank 4 (:meth:`GalaxyMixturePrior.posterior_covariance`). The rank-8 term of
    :func:`jacobian_lowrank` has, as its four leading eigenvalues, those of the exact covariance
    (``w_k + s_p^2``), within 5 % (float64; measured within 1.1 %); the rest are the isotropic
    ``s_p^2`` (within 5 %; measured 1e-13): no eigenvalue is invented."""
    g = torch.Generator().manual_seed(0)
    p = GalaxyMixturePrior(-0.5 + 0.02 * torch.randn(5, *SHAPE, generator=g, dtype=torch.float64), 0.1, "smoke")
    a = float(p.abar[step])
    x = (math.sqrt(a) * p.mu[:2].reshape(2, *SHAPE)
         + math.sqrt(1 - a) * torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))
    c, B_exact = p.posterior_covariance(x, step, rank=p.K)
    B = jacobian_lowrank(p, x, step, 8, torch.Generator().manual_seed(1))
    assert B.shape == (2, 8, math.prod(SHAPE)) and B.dtype == torch.float64
    for n in range(2):
        exact = torch.linalg.eigvalsh(B_exact[n] @ B_exact[n].T).flip(0)[:4] + c[n]
        got = torch.linalg.eigvalsh(B[n] @ B[n].T).flip(0)
        torch.testing.assert_close(got[:4], exact, rtol=0.05, atol=0)
        torch.testing.assert_close(got[4:], torch.full((4,), float(c[n]), dtype=torch.float64), rtol=0.05, atol=0)


def _two_pattern_prior(v: float = 0.004, side: int = 8):
    """``N(-0.5, v I + B0^T B0)`` on ``side`` x ``side`` px, ``B0`` a centred exponential disc and a
    left-right gradient: correlations that neither a diagonal nor a uniform offset holds."""
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    c0 = (side - 1) / 2
    r = ((xx - c0) ** 2 + (yy - c0) ** 2).sqrt()
    B0 = torch.stack([0.3 * torch.exp(-r / 2.0), 0.15 * (xx - c0) / c0]).reshape(2, side * side)
    cov = v * torch.eye(side * side, dtype=torch.float64) + B0.T @ B0
    return calibration.GaussianPrior(torch.full((side * side,), -0.5, dtype=torch.float64), cov,
                                     shape=(1, side, side))


def _observed(n_table: int, n_times: int):
    """The prior of :func:`_two_pattern_prior`, an observation through the 1 px blur and 2 x 2
    binning with sigma_y = 0.3, its exact posterior (mean, covariance) and a denoiser-variance
    table measured on ``n_table`` draws at ``n_times`` times."""
    prior = _two_pattern_prior()
    g = torch.Generator().manual_seed(0)
    y, forward, mp, Sp = calibration.blurred_observation(prior, 0.3, g)
    dv = dvm.measure(prior, prior.sample(n_table, g), samplers.timesteps(1000, n_times, "quadratic"),
                     torch.Generator().manual_seed(2), progress=False)
    return prior, y, forward, mp, Sp, dv


def test_mmps_jacobian_is_exact_for_a_low_rank_gaussian_prior_where_the_empirical_one_is_biased():
    """For a Gaussian prior with two correlated patterns (:func:`_two_pattern_prior`), blurred,
    binned and noisy enough (sigma_y = 0.3) that the prior's correlations carry the posterior,
    the empirical covariance (diagonal plus offset) leaves the samples' mean 1.25 posterior sds
    off the exact one per pixel (rms) and their variance 1.28 times too wide (measured, 256
    samples, 20 steps); with the rank-2 Jacobian term at every step the mean is off by 0.07 sd
    (Monte-Carlo level 1/16), the variance ratio is 0.93 and the whitened chi^2 0.98.
    Tolerances: mean within 0.2 sd rms, variance ratio and chi^2 within 0.12 of 1; the
    empirical one's mean error above 0.8 sd."""
    prior, y, forward, mp, Sp, dv = _observed(512, 32)

    def errors(**kw):
        x = mmps(prior, y, forward, 0.3, torch.Generator().manual_seed(3), 256, steps=20, cg_iters=40, variance=dv,
                 spacing="quadratic", x0_draw=True, last_draw=True, progress=False, **kw)
        return calibration.posterior_moment_errors(x, mp, Sp)

    jac = errors(covariance="jacobian", jacobian_rank=2, jacobian_min_t=0)
    assert jac["mean_err_rms"] < 0.2 and abs(jac["var_ratio"] - 1) < 0.12 and abs(jac["chi2"] - 1) < 0.12, jac
    assert errors(covariance="empirical")["mean_err_rms"] > 0.8


def test_jacobian_term_only_from_its_time_and_its_probes_apart_from_the_samples_stream():
    """Below ``jacobian_min_t`` the sampler is the empirical one, sample for sample (the probes
    come from a generator of their own: float64, tolerance 1e-12); bad ranks, times and the
    data-free chain are refused by name."""
    prior, y, forward, _, _, dv = _observed(128, 8)

    def run(**kw):
        return mmps(prior, y, forward, 0.3, torch.Generator().manual_seed(3), 4, steps=5, cg_iters=10, variance=dv,
                    spacing="quadratic", x0_draw=True, progress=False, **kw)

    torch.testing.assert_close(run(covariance="jacobian", jacobian_min_t=1000), run(covariance="empirical"),
                               atol=1e-12, rtol=0)
    assert float((run(covariance="jacobian", jacobian_rank=2, jacobian_min_t=0)
                  - run(covariance="empirical")).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="jacobian_rank=0"):
        run(covariance="jacobian", jacobian_rank=0)
    with pytest.raises(ValueError, match="jacobian_min_t=-1"):
        run(covariance="jacobian", jacobian_min_t=-1)
    with pytest.raises(ValueError, match="exceed the 64 pixels"):
        run(covariance="jacobian", jacobian_rank=61, jacobian_min_t=0)
    with pytest.raises(ValueError, match="diagonal covariance"):
        mmps_prior(prior, torch.Generator().manual_seed(0), 2, steps=2, covariance="jacobian", progress=False)


def test_offset_term_as_rows_is_the_per_band_low_rank_term():
    """The table's per-band term ``G Lambda G^T`` (two annulus masks, ``Lambda`` per band) as
    rows ``B`` of ``B^T B``: the dense products agree (float64, 1e-12) and bands do not mix."""
    from diffdecon.mmps import _offset_rows

    g = torch.Generator().manual_seed(5)
    C, H, W = 2, 4, 4
    G = torch.zeros(2, H, W, dtype=torch.float64)
    G[0, 1:3, 1:3] = 1.0
    G[1] = 1.0 - G[0]
    A = torch.randn(C, 2, 2, generator=g, dtype=torch.float64)
    Lam = A @ A.transpose(1, 2)
    D = torch.zeros(3, C, H, W, dtype=torch.float64)
    rows = _offset_rows(0.1, lambda t, hw: (G, Lam), 0, D)
    assert rows.shape == (3, C * 2, C * H * W)
    dense = torch.zeros(C * H * W, C * H * W, dtype=torch.float64)
    Gf = G.reshape(2, -1)
    for b in range(C):
        sl = slice(b * H * W, (b + 1) * H * W)
        dense[sl, sl] = Gf.T @ Lam[b] @ Gf
    torch.testing.assert_close(rows[1].T @ rows[1], dense, atol=1e-12, rtol=0)
    assert _offset_rows(0.1, lambda t, hw: (G, torch.zeros_like(Lam)), 0, D) is None
    assert _offset_rows(0.1, None, 0, D) is None
