"""Tests of the classical baselines (diffdecon.baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from diffdecon.baselines import richardson_lucy, to_model_grid, unsupervised_wiener, wiener
from diffdecon.physics import ForwardModel, arcsec_per_kpc, gaussian_psf

N = 33


@pytest.fixture
def blurred_blob():
    """Two bands of a round Gaussian blob (sigma 1.5 and 2 px, flux 10 [obs flux units]),
    blurred by a 0.7" FWHM Gaussian PSF (sigma 1.77 px) and with noise of 1 % of the peak."""
    rng = np.random.default_rng(0)
    r = np.arange(N) - (N - 1) / 2
    truth = np.stack([np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / s**2) for s in (1.5, 2.0)])
    truth *= 10.0 / truth.sum(axis=(1, 2), keepdims=True)
    psf = gaussian_psf(0.7, 15)
    blurred = np.stack([fftconvolve(t, psf, mode="same") for t in truth])
    y = blurred + 0.01 * blurred.max() * rng.standard_normal(blurred.shape)
    return truth, y, psf


def mse(a, b):
    return float(np.mean((np.asarray(a) - b) ** 2))


# Measured on this fixture: raw 5.1e-4; RL(20, shift) 4.2e-5, RL(20, clip) 4.8e-6,
# Wiener(0.01) 7.7e-5, unsupervised Wiener 1.6e-4. Each method must at least halve the
# MSE of the raw observation (a factor 2 is far outside seed-to-seed scatter, yet leaves a
# margin of >1.5x to the measured values).


def test_richardson_lucy_improves_mse_and_keeps_flux(blurred_blob):
    truth, y, psf = blurred_blob
    for negative in ("shift", "clip"):
        out = richardson_lucy(y, psf, num_iter=20, negative=negative)
        assert out.shape == y.shape
        assert mse(out, truth) < 0.5 * mse(y, truth), negative
    # The shift keeps the observed total flux (RL conserves flux; edge losses of a centred
    # blob are negligible): relative 1e-6.
    shifted = richardson_lucy(y, psf, num_iter=20)
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), y.sum(axis=(1, 2)), rtol=1e-6)


def test_wiener_improves_mse(blurred_blob):
    truth, y, psf = blurred_blob
    out = wiener(y, psf, balance=0.01)
    assert out.shape == y.shape
    assert mse(out, truth) < 0.5 * mse(y, truth)
    # Linear filter: scaling the data scales the result (float64 rounding: 1e-10 relative).
    np.testing.assert_allclose(wiener(3.0 * y, psf, 0.01), 3.0 * out, rtol=1e-10, atol=1e-12)


def test_unsupervised_wiener_improves_mse(blurred_blob):
    truth, y, psf = blurred_blob
    out = unsupervised_wiener(y, psf, seed=1)
    assert out.shape == y.shape
    assert mse(out, truth) < 0.5 * mse(y, truth)


def test_tensor_in_tensor_out(blurred_blob):
    _, y, psf = blurred_blob
    t = torch.as_tensor(y, dtype=torch.float32)
    out = richardson_lucy(t, psf, num_iter=3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == t.shape


def test_to_model_grid_conserves_flux():
    # Observation field (24 obs px) inside the model field (m = 30 obs px): the rebinned
    # image keeps the flux to float64 rounding (1e-10 relative).
    z, image_size = 0.3, 64
    fm = ForwardModel(z, gaussian_psf(0.7, 9), 24, image_size, 30.0 * 0.168 / (image_size * arcsec_per_kpc(z)))
    y = np.random.default_rng(2).uniform(0.0, 1.0, size=(3, 24, 24))
    out = to_model_grid(y, fm)
    assert out.shape == (3, image_size, image_size)
    np.testing.assert_allclose(out.sum(dim=(1, 2)).numpy(), y.sum(axis=(1, 2)), rtol=1e-10)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda y, p: richardson_lucy(y, p, num_iter=0), r"num_iter=0.*positive integer"),
        (lambda y, p: richardson_lucy(y, p, 5, negative="abs"), r"'abs'.*'shift' or 'clip'"),
        (lambda y, p: wiener(y, p, balance=-1.0), r"balance=-1\.0.*> 0"),
        (lambda y, p: wiener(y, np.stack([p, p, p]), 0.1), r"2 band\(s\) but psf has 3"),
        (lambda y, p: wiener(y[0, :5], p, 0.1), r"\(5, 33\)"),
    ],
)
def test_bad_input(call, pattern, blurred_blob):
    _, y, psf = blurred_blob
    with pytest.raises(ValueError, match=pattern):
        call(y, psf)
