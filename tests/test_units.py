"""Tests of diffdecon.units (photometric and PSF-width conversions) and diffdecon.arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon import arrays, units


def test_magnitudes_and_fluxes_invert_each_other():
    # mag 27 is one HSC coadd flux unit; 5 mag is a factor 100 (exact in float64 to 1e-12)
    assert units.mag_to_flux(27.0) == pytest.approx(1.0, rel=1e-12)
    assert units.mag_to_flux(22.0) == pytest.approx(100.0, rel=1e-12)
    mags = np.array([17.5, 21.0, 30.0])
    np.testing.assert_allclose(units.flux_to_mag(units.mag_to_flux(mags)), mags, rtol=0, atol=1e-12)
    # the Jansky zero point: 8.9 mag is 1 Jy
    assert units.mag_to_flux(8.9, units.AB_ZEROPOINT_JY) == pytest.approx(1.0, rel=1e-12)


def test_fwhm_and_sigma():
    assert units.FWHM_PER_SIGMA == pytest.approx(2.0 * math.sqrt(2.0 * math.log(2.0)), rel=1e-15)
    assert units.sigma_to_fwhm(units.fwhm_to_sigma(0.7)) == pytest.approx(0.7, rel=1e-15)
    # a Gaussian of sigma s is at half maximum at FWHM / 2
    s = units.fwhm_to_sigma(2.0)
    assert math.exp(-0.5 * (1.0 / s) ** 2) == pytest.approx(0.5, rel=1e-12)


def test_numpy_torch_conversions():
    t = torch.arange(4.0, dtype=torch.float32, requires_grad=True)
    a = arrays.to_numpy(t)
    assert a.dtype == np.float64 and a.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="y contains non-finite"):
        arrays.to_numpy([1.0, np.nan], name="y")
    back, was = arrays.to_tensor(t)
    assert was and back is not t and not back.requires_grad
    from_np, was_np = arrays.to_tensor([1, 2])
    assert not was_np and from_np.dtype == torch.float64
    assert isinstance(arrays.like_input(from_np * 2, was_np), np.ndarray)
    assert torch.is_tensor(arrays.like_input(back, was))
