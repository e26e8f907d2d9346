"""The galaxy mixture prior: an exact Tweedie denoiser on galaxy-sized images."""

from __future__ import annotations

import math

import pytest
import torch

from diffdecon.errors import InputValueError
from diffdecon.mixture_prior import GalaxyMixturePrior

SHAPE = (3, 32, 32)  # the smoke profile's grid


def _prior(K: int, s0: float, seed: int = 0, spread: float = 0.3) -> GalaxyMixturePrior:
    g = torch.Generator().manual_seed(seed)
    centres = -0.5 + spread * torch.randn(K, *SHAPE, generator=g, dtype=torch.float64)
    return GalaxyMixturePrior(centres, s0, "smoke")


def _log_p_t(prior: GalaxyMixturePrior, x: torch.Tensor, a: float) -> torch.Tensor:
    """log p_t(x) summed over a batch, written directly from the mixture's densities."""
    v = a * prior.s0**2 + 1 - a
    d = prior.mu.shape[1]
    diff = x.reshape(x.shape[0], 1, -1) - math.sqrt(a) * prior.mu.unsqueeze(0)  # (B, K, d)
    logk = -(diff**2).sum(-1) / (2 * v) - 0.5 * d * math.log(2 * math.pi * v) - math.log(prior.K)
    return torch.logsumexp(logk, dim=1).sum()


def test_one_component_is_the_gaussian_denoiser():
    p = _prior(1, 0.2)
    t = torch.tensor([0, 200, 700])
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = p.abar[t].reshape(-1, 1, 1, 1)
    mu = p.mu.reshape(1, *SHAPE)
    expected = mu + a.sqrt() * 0.04 / (a * 0.04 + 1 - a) * (x - a.sqrt() * mu)  # N(mu, s0^2 I) Tweedie
    torch.testing.assert_close(p.x0_hat(x, t), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step", [10, 300, 900])
def test_score_is_the_gradient_of_the_noised_density(step):
    # overlapping components (the middle times mix them): the responsibilities matter
    p = _prior(5, 0.1, spread=0.02)
    t = torch.full((2,), step)
    a = float(p.abar[step])
    x = (math.sqrt(a) * p.mu[:2].reshape(2, *SHAPE) + math.sqrt(1 - a)
         * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_p_t(p, x, a), x)
    torch.testing.assert_close(p.score(x.detach(), t), grad, rtol=1e-7, atol=1e-9)
    w = p.responsibilities(x.detach(), t)
    assert bool(((w > 1e-3).sum(1) >= 2).any()) or step == 10  # the test does exercise the mixture


def test_denoiser_error_is_orthogonal_to_what_it_sees():
    # Tweedie's mean: E[x0 - D(x_t)] = 0 and E[(x0 - D) . h(x_t)] = 0 for any h (tolerance: 5 standard errors)
    p = _prior(4, 0.05, spread=0.05)
    g = torch.Generator().manual_seed(3)
    x0 = p.sample(4000, g).double()
    step = 400
    a = float(p.abar[step])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    err = (x0 - p.x0_hat(x_t, torch.full((4000,), step))).reshape(4000, -1)
    w = p.responsibilities(x_t, torch.full((4000,), step))
    for h in (torch.ones(4000, 1), w[:, :1], w[:, 1:2]):  # projections on functions of x_t
        proj = (err * h).sum(1)  # summed over pixels
        assert abs(float(proj.mean())) < 5 * float(proj.std()) / math.sqrt(4000)


@pytest.mark.parametrize("step", [300, 900])
def test_posterior_covariance_is_tweedies_second_moment(step):
    """Cov[x0 | x_t] = (sigma_t^2 / alpha_t) dD/dx_t (Tweedie's second order, exact for an
    exact denoiser): diag(c) + B^T B times random directions against the Jacobian-vector
    products of x0_hat, all K components kept (float64, relative tolerance 1e-8); the
    components do overlap at these times (the low-rank term is exercised)."""
    p = _prior(5, 0.1, spread=0.02)
    a = float(p.abar[step])
    g = torch.Generator().manual_seed(5)
    x = (math.sqrt(a) * p.mu[:2].reshape(2, *SHAPE)
         + math.sqrt(1 - a) * torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))
    c, B = p.posterior_covariance(x, step, rank=p.K)
    w = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    _, Jw = torch.autograd.functional.jvp(lambda z: p.x0_hat(z, torch.full((2,), step)), x, w)
    expected = (1 - a) / math.sqrt(a) * Jw
    wf = w.reshape(2, -1)
    Vw = c[:, None] * wf + torch.einsum("nrd,nr->nd", B, torch.einsum("nrd,nd->nr", B, wf))
    torch.testing.assert_close(Vw.reshape(expected.shape), expected, rtol=1e-8, atol=1e-12)
    assert float(torch.einsum("nrd,nd->n", B, wf).abs().max()) > 0  # not only the isotropic part
    assert float(B.abs().max()) > 0.1 * float(c.sqrt().max())


def test_posterior_covariance_of_one_component_is_isotropic_and_rank_is_checked():
    p = _prior(1, 0.2)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    c, B = p.posterior_covariance(x, 500)
    a = float(p.abar[500])
    torch.testing.assert_close(c, torch.full((2,), 0.04 * (1 - a) / (a * 0.04 + 1 - a), dtype=torch.float64))
    assert B.shape == (2, 1, math.prod(SHAPE)) and float(B.abs().max()) == 0.0
    with pytest.raises(InputValueError, match="rank"):
        p.posterior_covariance(x, 500, rank=0)


def test_draws_follow_the_mixture():
    p = _prior(3, 0.1)
    x = p.sample(3000, torch.Generator().manual_seed(4)).double().reshape(3000, -1)
    nearest = torch.cdist(x, p.mu).argmin(1)
    counts = torch.bincount(nearest, minlength=3).double()
    assert bool(((counts - 1000).abs() < 5 * math.sqrt(1000 * 2 / 3)).all())  # uniform over components
    resid = x - p.mu[nearest]
    assert abs(float(resid.std()) - 0.1) < 0.002  # s0, to 2 %


def test_bad_input_names_what_is_accepted():
    with pytest.raises(InputValueError, match="s0"):
        _prior(2, 0.0)
    with pytest.raises(InputValueError, match="centres shape"):
        GalaxyMixturePrior(torch.zeros(2, 3, 16, 16), 0.1, "smoke")
    p = _prior(2, 0.1)
    with pytest.raises(InputValueError, match="accepted: integers in"):
        p.x0_hat(torch.zeros(1, *SHAPE), torch.tensor([1000]))
