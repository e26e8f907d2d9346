"""The chain's lookahead bias (diffdecon.lookahead) on exact and biased Gaussian priors, and
MMPS fitting the data through x0 + b."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import calibration, lookahead
from diffdecon.mmps import mmps, mmps_prior
from diffdecon.samplers import timesteps

SIDE = 8
CHAIN = {"steps": 6, "eta": 1.0, "spacing": "quadratic", "covariance": "isotropic", "x0_draw": True,
         "last_draw": True}


class BiasedPrior(calibration.GaussianPrior):
    """A Gaussian prior whose denoiser is biased by -0.02 [prior-space units] at every time: each
    step's D removes light that the chain's later steps remove again."""

    def x0_hat(self, x_t, t):
        return super().x0_hat(x_t, t) - 0.02


def gaussian(cls=calibration.GaussianPrior):
    mu = torch.full((1, SIDE, SIDE), -0.5, dtype=torch.float64)
    return cls(mu, calibration.se_covariance(SIDE, ell=2.0, amp=0.25, nugget=1e-3))


def _direct(prior, n, seed):
    """Per chain, the mean over pixels of x0_final - D at each step, from the chain itself: (K, n)."""
    rec = []
    final = mmps_prior(prior, torch.Generator().manual_seed(seed), n, progress=False,
                       on_step=lambda D, x0, t: rec.append(D.clone()), **CHAIN)
    return torch.stack([(final - D).mean((1, 2, 3)) for D in rec])


def _table_mean(la):
    w = la.count.double()
    return (la.table.double() * w).sum((1, 2, 3)) / w.sum((1, 2, 3))


def test_exact_prior_has_no_lookahead_and_the_table_adds_up():
    # The exact denoiser is linear in x_t and each step's x0 has mean D, so E[x0_final | x_t] =
    # D(x_t): |mean b| < 4 standard errors over 1500 chains at every step. The table's
    # count-weighted mean equals the chain's own mean of x0_final - D (same draws): 1e-10.
    prior, n, seed = gaussian(), 1500, 3
    la = lookahead.measure(prior, n, torch.Generator().manual_seed(seed), CHAIN, batch=n, progress=False)
    per_chain = _direct(prior, n, seed)
    mean, sem = per_chain.mean(1), per_chain.std(1) / n**0.5
    np.testing.assert_array_equal(la.times, timesteps(len(prior.abar), 6, "quadratic").numpy())
    torch.testing.assert_close(_table_mean(la)[:-1], mean[:-1], atol=1e-10, rtol=0)
    assert (mean[:-1].abs() < 4 * sem[:-1]).all(), (mean, sem)
    assert float(la.table[-1].abs().max()) == 0.0  # the last draw is the final image


def test_biased_denoiser_has_a_negative_lookahead():
    # Every later step's D is 0.02 lower than an exact one, so the chain's final image lies
    # below each step's D by about 0.02 per step still to come (measured -0.087 ... -0.020 over the
    # 5 steps before the last, 9-42 standard errors of 400 chains): b < -8 standard errors at
    # every step but the last, rising towards it, and -0.02 +- 0.005 one step before it.
    prior, n = gaussian(BiasedPrior), 400
    la = lookahead.measure(prior, n, torch.Generator().manual_seed(1), CHAIN, batch=200, progress=False)
    per_chain = _direct(prior, n, 1)
    sem = per_chain.std(1) / n**0.5
    m = _table_mean(la)
    assert (m[:-1] < -8 * sem[:-1]).all(), (m, sem)
    assert (torch.diff(m) > 0).all() and abs(float(m[-2]) + 0.02) < 0.005, m


def test_lookup_by_ring_and_value_and_refusals():
    la = lookahead.measure(gaussian(), 64, torch.Generator().manual_seed(2), CHAIN, batch=32, progress=False)
    k, t = 2, int(la.times[2])
    D = torch.full((1, 1, SIDE, SIDE), -0.5, dtype=torch.float64)
    b = la(D, t)
    ring = lookahead._rings(SIDE, SIDE)
    col = int(torch.bucketize(torch.tensor(-0.5, dtype=torch.float64), la.edges[k, 0]))
    torch.testing.assert_close(b[0, 0], la.table[k, 0][ring, col].double())
    with pytest.raises(ValueError, match="not a time of this lookahead table"):
        la(D, t + 1)
    with pytest.raises(ValueError, match="int >= 2"):
        lookahead.measure(gaussian(), 1, torch.Generator(), CHAIN)


class _Constant:
    """A lookahead of one value everywhere, on a given grid."""

    def __init__(self, b, times=None):
        self.b, self.times = b, times

    def __call__(self, D, t):
        return torch.full_like(D, self.b)


def test_mmps_with_a_lookahead_fits_the_data_through_x0_plus_b():
    # With a linear forward model, fitting y through A(x0 + b) is fitting y - A b through A x0:
    # the same samples, draw for draw (tolerance 1e-9 prior units), and b = 0 changes nothing.
    prior = gaussian()
    A = calibration.blur_downsample_matrix(SIDE, 1.0, 2)

    def forward(x):
        return (A @ x.flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    y = torch.linspace(-0.6, -0.2, 16, dtype=torch.float64).reshape(1, 4, 4)
    kw = {"steps": 6, "cg_iters": 64, "covariance": "isotropic", "x0_draw": True, "last_draw": True,
          "progress": False, "spacing": "quadratic"}

    def run(y_, la=None):
        gens = [torch.Generator().manual_seed(10 + j) for j in range(3)]
        return mmps(prior, y_, forward, 0.05, gens, 3, lookahead=la, **kw)

    b = 0.03
    shifted = y - forward(torch.full((1, 1, SIDE, SIDE), b, dtype=torch.float64))[0]
    torch.testing.assert_close(run(y, _Constant(b)), run(shifted), atol=1e-9, rtol=0)
    torch.testing.assert_close(run(y, _Constant(0.0)), run(y), atol=0, rtol=0)
    with pytest.raises(ValueError, match="measure it on this grid"):
        run(y, _Constant(b, times=np.arange(6)))
    with pytest.raises(ValueError, match="'chain' or a callable"):
        run(y, "table")
    with pytest.raises(ValueError, match="needs a prior with a profile"):
        run(y, "chain")
    with pytest.raises(ValueError, match="diagonal covariances only"):
        mmps(prior, y, forward, 0.05, torch.Generator(), 1, steps=2, covariance="tweedie", lookahead=_Constant(b),
             progress=False)


def test_chain_lookahead_of_a_prior_follows_the_samplers_grid():
    # lookahead="chain" takes the prior's own table for the sampler's steps and spacing, measured
    # once per grid and kept on the prior: the same samples as passing that table, bit for bit.
    import dataclasses

    from diffdecon.config import get_profile

    prior = gaussian()
    prior.profile = dataclasses.replace(get_profile("smoke"), mmps_covariance="isotropic", sampling_steps=6)
    A = calibration.blur_downsample_matrix(SIDE, 1.0, 2)

    def forward(x):
        return (A @ x.flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    y = torch.linspace(-0.6, -0.2, 16, dtype=torch.float64).reshape(1, 4, 4)

    def run(la, steps):
        return mmps(prior, y, forward, 0.05, torch.Generator().manual_seed(4), 2, steps=steps, cg_iters=16,
                    covariance="isotropic", x0_draw=True, last_draw=True, spacing="quadratic", progress=False,
                    lookahead=la)

    table = lookahead.of_prior(prior, steps=5, progress=False)
    assert lookahead.of_prior(prior, steps=5) is table and lookahead.of_prior(prior) is not table
    np.testing.assert_array_equal(table.times, timesteps(len(prior.abar), 5, "quadratic").numpy())
    torch.testing.assert_close(run("chain", 5), run(table, 5), atol=0, rtol=0)
