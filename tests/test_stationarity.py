"""The renoise-drift check of a prior's chain (diffdecon.stationarity) on exact Gaussian priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import calibration, samplers, stationarity


class BiasedPrior(calibration.GaussianPrior):
    """A Gaussian prior whose denoiser is biased by ``shift`` [prior-space units] at every time:
    a chain that is not stationary under its own noising."""

    shift = -0.02

    def x0_hat(self, x_t, t):
        return super().x0_hat(x_t, t) + self.shift


def gaussian(cls=calibration.GaussianPrior, side: int = 8):
    mu = torch.full((1, side, side), -0.5, dtype=torch.float64)
    return cls(mu, calibration.se_covariance(side, ell=2.0, amp=0.25, nugget=1e-3))


def test_exact_prior_is_stationary_within_four_standard_errors(generator):
    # Every step of the chain is linear in x and the exact denoiser is unbiased, so the expected
    # change of the prior-space mean per cycle is 0 on any time grid: |mean| < 4 sem per annulus
    # (4000 images; a wrong noising, e.g. x + sqrt(1 - abar) eps without sqrt(abar), biases D).
    prior = gaussian()
    x0 = prior.sample(4000, generator)
    out = stationarity.renoise_drift(prior, x0, t=100, cycles=2, generator=generator, steps=20,
                                     annuli_px=(0.0, 2.0, 4.0, np.inf))
    assert out["t"] == 100 and out["n_images"] == 4000
    for row in out["cycles"]:
        mean, sem = np.array(row["x_sum"]["mean"]), np.array(row["x_sum"]["sem"])
        assert (sem > 0).all()
        assert (np.abs(mean) < 4 * sem).all(), (mean, sem)


def test_biased_denoiser_drifts_and_is_detected(generator):
    # The bias of -0.02 per pixel enters D at each of the 4 steps from t = 25 (25, 11, 3, 0) and
    # the earlier ones carry into the later x_t: the images move by 1-8 times -0.02 per pixel per
    # cycle, tens of standard errors (64 pixels, 2000 images).
    prior = gaussian(BiasedPrior)
    x0 = gaussian().sample(2000, generator)
    out = stationarity.renoise_drift(prior, x0, t=25, cycles=2, generator=generator, steps=20,
                                     annuli_px=(0.0, np.inf))
    first, second = (np.array(r["x_sum"]["mean"])[0] for r in out["cycles"])
    sem = np.array(out["cycles"][0]["x_sum"]["sem"])[0]
    assert first < -20 * sem and second < first  # the drift accumulates over cycles
    assert -8 * 0.02 * 64 < first < -0.02 * 64


def test_flux_statistics_follow_to_flux(generator):
    # With an affine to_flux the flux sums change as the prior-space sums do (to rounding).
    prior = gaussian()
    x0 = prior.sample(50, generator)
    out = stationarity.renoise_drift(prior, x0, t=11, cycles=1, generator=generator, to_flux=lambda x: x + 2.0)
    row = out["cycles"][0]
    np.testing.assert_allclose(row["flux"]["mean"], row["x_sum"]["mean"], rtol=0, atol=1e-9)
    assert 0.5 < row["flux_total_ratio"] < 1.5
    assert out["annuli_px"][-1] is None  # infinity written as JSON null
    r = np.hypot(*np.meshgrid(np.arange(8) - 3.5, np.arange(8) - 3.5))  # radius from the centre [px]
    edges = stationarity.DRIFT_ANNULI_PX
    counts = np.array([((r >= lo) & (r < hi)).sum() for lo, hi in zip(edges[:-1], edges[1:])])
    np.testing.assert_allclose(out["flux_start"]["mean"], np.array(out["x_start"]["mean"]) + 2.0 * counts,
                               rtol=0, atol=1e-9)  # + 2 per pixel of each annulus


def test_chain_from_the_last_time_is_the_denoiser(generator):
    prior = gaussian()
    ts = samplers.timesteps(1000, 20, "quadratic")
    x_t = prior.sample(3, generator)
    out = stationarity.chain_from(prior, x_t, ts, len(ts) - 1, generator)
    torch.testing.assert_close(out, prior.x0_hat(x_t, torch.zeros(3, dtype=torch.long)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"x0": torch.zeros(1, 8, 8)}, "accepted: \\(N >= 2"),
    ({"cycles": 0}, "accepted: an int >= 1"),
    ({"spacing": "cubic"}, "accepted: linear"),
])
def test_bad_input_names_what_is_accepted(generator, kwargs, match):
    prior = gaussian()
    args = {"x0": prior.sample(4, generator), "t": 25, "cycles": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        stationarity.renoise_drift(prior, generator=generator, **args)
    with pytest.raises(ValueError, match="accepted: an index of ts"):
        stationarity.chain_from(prior, prior.sample(2, generator), samplers.timesteps(1000, 5), 5, generator)


def test_exact_denoiser_has_no_mean_error_and_a_biased_one_is_caught(generator):
    # Tweedie's exact D has E[x0 - D | x_t] = 0: |mean| < 4 sem by annulus (3000 images);
    # the denoiser biased by -0.02 per pixel shows +0.02 per pixel (64 pixels: +1.28 in all).
    x0 = gaussian().sample(3000, generator)
    for t in (11, 100):
        out = stationarity.denoiser_mean_error(gaussian(), x0, t, generator, annuli_px=(0.0, 2.0, 4.0, np.inf))
        mean, sem = np.array(out["x_sum"]["mean"]), np.array(out["x_sum"]["sem"])
        assert (np.abs(mean) < 4 * sem).all(), (t, mean, sem)
    out = stationarity.denoiser_mean_error(gaussian(BiasedPrior), x0, 11, generator, to_flux=lambda x: 3.0 * x,
                                           annuli_px=(0.0, np.inf))
    assert out["x_sum"]["mean"][0] == pytest.approx(0.02 * 64, rel=0.1)
    assert out["flux"]["mean"][0] == pytest.approx(3.0 * out["x_sum"]["mean"][0], rel=1e-9)
    with pytest.raises(ValueError, match="accepted: an integer time in"):
        stationarity.denoiser_mean_error(gaussian(), x0, 1000, generator)


def test_drift_and_mean_error_run_on_the_networks_device(generator, device, prior_on_device):
    # Images on the network's device, the noise from a CPU generator: the same figures as on the
    # CPU (1e-9). (On the CPU the devices agree; DIFFDECON_TEST_DEVICE=cuda tests the moves.)
    base = gaussian()
    x0 = base.sample(16, generator)
    kw = dict(t=25, steps=20, to_flux=lambda x: x + 2.0, annuli_px=(0.0, 3.0, np.inf))
    got = stationarity.renoise_drift(prior_on_device(base), x0.to(device), cycles=2,
                                     generator=torch.Generator().manual_seed(3), **kw)
    ref = stationarity.renoise_drift(base, x0, cycles=2, generator=torch.Generator().manual_seed(3), **kw)
    for a, b in zip(got["cycles"], ref["cycles"]):
        assert np.allclose(a["flux"]["mean"], b["flux"]["mean"], rtol=1e-9, atol=1e-12)
    m = stationarity.denoiser_mean_error(prior_on_device(base), x0.to(device), 11, torch.Generator().manual_seed(5))
    r = stationarity.denoiser_mean_error(base, x0, 11, torch.Generator().manual_seed(5))
    assert np.allclose(m["x_sum"]["mean"], r["x_sum"]["mean"], rtol=1e-9, atol=1e-12)
