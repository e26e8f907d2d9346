"""Samplers against a closed-form Gaussian prior (diffdecon.calibration.GaussianPrior)."""

from __future__ import annotations

import pytest
import torch

from diffdecon.calibration import GaussianPrior
from diffdecon.samplers import SamplerDivergenceError, ddim_sample, ddpm_sample, timesteps


def se_covariance(side: int, ell: float = 2.0, amp: float = 0.25, nugget: float = 1e-3, channels: int = 1):
    """Squared-exponential covariance on a side x side grid (per channel, independent
    channels) plus a small diagonal: a smooth, galaxy-like Gaussian prior [prior units^2]."""
    ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    p = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    K = amp * torch.exp(-torch.cdist(p, p) ** 2 / (2 * ell**2)) + nugget * torch.eye(side * side)
    return torch.block_diag(*[K] * channels)


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


@pytest.mark.parametrize(
    "sampler, kwargs",
    [(ddpm_sample, {"steps": None}), (ddpm_sample, {"steps": 100, "variance": "small"}),
     (ddim_sample, {"steps": 50, "eta": 0.0}), (ddim_sample, {"steps": 50, "eta": 1.0})],
)
def test_unconditional_matches_gaussian_prior(small_prior, generator, sampler, kwargs):
    n = 2000
    x = sampler(small_prior, n, generator, progress=False, **kwargs).flatten(1)
    mu, Sigma = small_prior.mu, small_prior.Sigma
    # Monte-Carlo: the error of each mean entry has std sqrt(Sigma_ii / n) <= 0.5/sqrt(2000)
    # = 0.011; 0.05 is > 4 such std. Covariance entries: std ~ Sigma_ii*sqrt(2/n) = 0.008;
    # 0.04 allows that plus the discretisation error of 50-step DDIM.
    assert (x.mean(0) - mu).abs().max() < 0.05
    assert (torch.cov(x.T) - Sigma).abs().max() < 0.04


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
