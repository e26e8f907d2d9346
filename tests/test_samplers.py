"""Samplers against a closed-form Gaussian prior (diffdecon.calibration.GaussianPrior)."""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F

from diffdecon.calibration import GaussianPrior, blur_downsample_matrix, exact_posterior, se_covariance
from diffdecon.samplers import (
    SamplerDivergenceError,
    ddim_sample,
    ddpm_sample,
    dps,
    dps_guidance,
    mmps,
    mmps_x0,
    timesteps,
)


@pytest.fixture
def small_prior():
    side = 4
    Sigma = se_covariance(side, ell=1.5)
    mu = 0.3 * torch.linspace(-1, 1, side * side).double()
    return GaussianPrior(mu, Sigma, shape=(1, side, side))


def test_timesteps():
    ts = timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 0 and ts.numel() == 50
    assert torch.all(ts[:-1] > ts[1:])
    assert torch.equal(timesteps(10, 10), torch.arange(9, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        timesteps(10, 11)


@pytest.mark.parametrize("T, steps", [(1000, 20), (1000, 200), (1000, 1000), (50, 49), (10, 2)])
def test_timesteps_quadratic(T, steps):
    ts = timesteps(T, steps, "quadratic")
    assert ts[0] == T - 1 and ts[-1] == 0 and torch.unique(ts).numel() == steps
    assert torch.all(ts[:-1] > ts[1:])
    # denser at small noise than the linear grid (exactly equal when steps == T)
    low = lambda t: int((t < T // 4).sum())  # noqa: E731
    assert low(ts) >= low(timesteps(T, steps))
    if 2 < steps < T // 2:
        assert low(ts) > low(timesteps(T, steps))
    with pytest.raises(ValueError, match="spacing"):
        timesteps(T, steps, "cubic")


@pytest.mark.parametrize(
    "sampler, kwargs",
    [(ddpm_sample, {"steps": 250}), (ddpm_sample, {"steps": 100, "variance": "small"}),
     (ddim_sample, {"steps": 50, "eta": 0.0}), (ddim_sample, {"steps": 50, "eta": 1.0})],
)
def test_unconditional_matches_gaussian_prior(small_prior, generator, sampler, kwargs):
    n = 1000
    x = sampler(small_prior, n, generator, progress=False, **kwargs).flatten(1)
    mu, Sigma = small_prior.mu, small_prior.Sigma
    # Monte-Carlo: the error of each mean entry has std sqrt(Sigma_ii / n) <= 0.5/sqrt(1000)
    # = 0.016; 0.07 is > 4 such std. Covariance entries: std ~ Sigma_ii*sqrt(2/n) = 0.011;
    # 0.05 allows 4 such std plus the discretisation error of 50-step DDIM.
    assert (x.mean(0) - mu).abs().max() < 0.07
    assert (torch.cov(x.T) - Sigma).abs().max() < 0.05


def test_per_sample_generators_reproducible(small_prior):
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    a = ddpm_sample(small_prior, 3, gens(), steps=20, progress=False)
    b = ddpm_sample(small_prior, 1, gens()[:1], steps=20, progress=False)
    torch.testing.assert_close(a[:1], b)


def test_bad_inputs(small_prior, generator):
    with pytest.raises(ValueError, match="n="):
        ddpm_sample(small_prior, 0, generator)
    with pytest.raises(TypeError, match="generator"):
        ddpm_sample(small_prior, 2, 42)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(small_prior, 2, generator, eta=2.0)


# ---------------------------------------------------------------- conditional samplers

SIDE, SIGMA_Y = 8, 0.05


@pytest.fixture
def problem():
    """8x8 Gaussian prior, blur (1 px) + 2x2 binning to 4x4, noise 0.05, one observation."""
    Sigma = se_covariance(SIDE, ell=2.0)
    mu = torch.zeros(SIDE * SIDE, dtype=torch.float64)
    prior = GaussianPrior(mu, Sigma, shape=(1, SIDE, SIDE))
    A = blur_downsample_matrix(SIDE, 1.0, 2)
    g = torch.Generator().manual_seed(123)
    x_true = prior.sample(1, g)
    y = (A @ x_true.flatten() + SIGMA_Y * torch.randn(A.shape[0], generator=g, dtype=torch.float64)).reshape(1, 4, 4)

    def forward(x):  # prior space (B, 1, 8, 8) -> observation (B, 1, 4, 4)
        return (A @ x.flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    return prior, A, y, forward


@pytest.mark.parametrize("t", [5, 300, 800])
def test_mmps_x0_is_exact_for_gaussian_prior(problem, t):
    """For a Gaussian prior and linear A, MMPS's moment matching is exact: its posterior
    denoiser equals E[x0 | x_t, y], the Gaussian posterior given both y and
    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, i.e. given the stacked observation
    [y; x_t] with operator [A; sqrt(abar) I] and noise stds [sigma_y; sqrt(1 - abar)]."""
    prior, A, y, forward = problem
    a = float(prior.abar[t])
    x_t = torch.randn(3, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    x0_post, D = mmps_x0(prior, x_t, t, y, forward, torch.tensor([SIGMA_Y]), cg_iters=40)
    d = SIDE * SIDE
    A_st = torch.cat([A, a**0.5 * torch.eye(d, dtype=torch.float64)])
    s_st = torch.cat([torch.full((A.shape[0],), SIGMA_Y, dtype=torch.float64), torch.full((d,), (1 - a) ** 0.5, dtype=torch.float64)])
    for i in range(3):
        mp, _ = exact_posterior(prior.mu, prior.Sigma, A_st, s_st, torch.cat([y.flatten(), x_t[i].flatten()]))
        # CG with 40 iterations on the 16-dim whitened system is exact up to round-off:
        # 1e-6 prior units is far below any sampling effect (prior std 0.5).
        torch.testing.assert_close(x0_post[i].flatten(), mp, atol=1e-6, rtol=0)
    torch.testing.assert_close(D, prior.x0_hat(x_t, torch.full((3,), t)))


def test_mmps_equals_ddim_on_exact_posterior(problem):
    """With enough CG iterations, MMPS on the prior reproduces, sample by sample (same
    noise), DDIM (eta=1) run on the closed-form posterior GaussianPrior(mu_post, Sigma_post):
    the only approximation left is the time discretisation shared by both."""
    prior, A, y, forward = problem
    mp, Sp = exact_posterior(prior.mu, prior.Sigma, A, SIGMA_Y, y)
    post = GaussianPrior(mp, Sp, shape=(1, SIDE, SIDE))
    a = mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(7), 4, steps=20, cg_iters=40, progress=False,
             covariance="tweedie")
    b = ddim_sample(post, 4, torch.Generator().manual_seed(7), steps=20, eta=1.0, progress=False)
    # float64 round-off accumulated over 20 steps and 40 CG iterations: 1e-6 prior units.
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_mmps_conv_forward_matches_dense(problem):
    """The JVP of a conv-based (autograd) forward gives the same step as the dense matrix."""
    prior, A, y, forward = problem
    k = torch.exp(-(torch.arange(-3, 4, dtype=torch.float64) ** 2) / 2)
    k2 = torch.outer(k, k)

    def conv_forward(x):
        return F.avg_pool2d(F.conv2d(F.pad(x, (3, 3, 3, 3)), (k2 / k2.sum())[None, None]), 2)

    eye = torch.eye(SIDE * SIDE, dtype=torch.float64).reshape(-1, 1, SIDE, SIDE)
    A_conv = conv_forward(eye).flatten(1).T  # dense matrix of the same operator

    def dense(x):
        return (A_conv @ x.flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, _ = mmps_x0(prior, x_t, 400, y, conv_forward, SIGMA_Y, cg_iters=5)
    b, _ = mmps_x0(prior, x_t, 400, y, dense, SIGMA_Y, cg_iters=5)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)  # same arithmetic up to round-off


@pytest.mark.parametrize("convention", ["reference", "paper"])
def test_dps_samples_are_independent_of_the_batch(problem, convention):
    """Per-sample norm: sample 0 is the same alone or next to samples with other data."""
    prior, A, y, forward = problem
    ys = torch.stack([y, 5 * y + 1.0, -y])  # wildly different observations for samples 1, 2
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13)]  # noqa: E731
    batch = dps(prior, ys, forward, SIGMA_Y, gens(), 3, steps=50, zeta=0.5, convention=convention, progress=False)
    alone = dps(prior, ys[:1], forward, SIGMA_Y, gens()[:1], 1, steps=50, zeta=0.5, convention=convention, progress=False)
    torch.testing.assert_close(batch[:1], alone, atol=1e-10, rtol=0)  # float64 round-off only


def test_dps_guidance_conventions(problem):
    """'paper' (zeta/||r|| on the squared norm) is exactly twice 'reference' (norm)."""
    prior, A, y, forward = problem
    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, g_ref, norm = dps_guidance(prior, x_t, 200, y, forward, torch.tensor([SIGMA_Y]), 0.7, "reference")
    _, g_pap, _ = dps_guidance(prior, x_t, 200, y, forward, torch.tensor([SIGMA_Y]), 0.7, "paper")
    torch.testing.assert_close(g_pap, 2 * g_ref)
    assert norm.shape == (2,) and torch.all(norm > 0)


def test_dps_divergence_is_reported(problem):
    prior, A, y, forward = problem
    with pytest.raises(SamplerDivergenceError, match="samples became non-finite"):
        dps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(0), 2, steps=20, zeta=1e8, progress=False)
    x, valid = dps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(0), 2, steps=20, zeta=1e8,
                   on_divergence="mask", progress=False)
    assert not valid.any() and torch.isnan(x).all()


def test_conditional_bad_inputs(problem, generator):
    prior, A, y, forward = problem
    with pytest.raises(ValueError, match="sigma_y"):
        dps(prior, y, forward, -1.0, generator, 2, steps=5)
    with pytest.raises(ValueError, match="y has shape"):
        mmps(prior, y[0], forward, SIGMA_Y, generator, 2, steps=5)
    with pytest.raises(ValueError, match="convention"):
        dps(prior, y, forward, SIGMA_Y, generator, 2, steps=5, convention="squared")
    with pytest.raises(ValueError, match="cg_iters"):
        mmps(prior, y, forward, SIGMA_Y, generator, 2, steps=5, cg_iters=0)
