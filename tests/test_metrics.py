"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon.metrics import flux_error, psnr, reduced_chi2, ssim


def test_psnr_known_value():
    t = np.zeros((4, 4))
    t[0, 0] = 1.0  # data range 1
    e = t + 0.1  # MSE = 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    assert psnr(t, e) == pytest.approx(20.0)
    assert psnr(t, e, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    assert psnr(torch.as_tensor(t), torch.as_tensor(t)) == math.inf
    with pytest.raises(ValueError, match="shape"):
        psnr(t, e[:2])
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((4, 4)), e)


def test_ssim_identity_and_per_band_average():
    rng = np.random.default_rng(0)
    t = rng.random((3, 16, 16))
    assert ssim(t, t) == pytest.approx(1.0)
    e = t.copy()
    e[1] = rng.random((16, 16))  # one band replaced by independent noise
    from skimage.metrics import structural_similarity

    expected = (2 + structural_similarity(t[1], e[1], data_range=float(t.max() - t.min()))) / 3
    assert ssim(t, e) == pytest.approx(expected)
    assert ssim(t, e) < 0.9
    with pytest.raises(ValueError, match="win_size"):
        ssim(t[:, :5, :5], e[:, :5, :5])


def test_flux_error():
    t = np.ones((2, 3, 3))
    e = t.copy()
    e[0] *= 1.5
    assert flux_error(t, e) == pytest.approx(0.25)  # totals 18 -> 22.5: 22.5 / 18 - 1
    np.testing.assert_allclose(flux_error(t, e, per_band=True), [0.5, 0.0])
    with pytest.raises(ValueError, match="total truth flux"):
        flux_error(np.zeros((2, 2)), np.ones((2, 2)))


def test_reduced_chi2():
    y = np.zeros((2, 3, 3))
    Ax = np.ones((2, 3, 3))
    assert reduced_chi2(y, Ax, 1.0) == pytest.approx(1.0)
    # per band sigma: band 0 residual/sigma = 1/2, band 1 = 1/1 -> (0.25 + 1) / 2
    assert reduced_chi2(y, Ax, [2.0, 1.0]) == pytest.approx(0.625)
    assert reduced_chi2(y, Ax, 1.0, dof=9) == pytest.approx(2.0)
    # pure noise at the stated sigma gives chi2 ~ 1 within sqrt(2/N) (N = 30000: 0.008)
    rng = np.random.default_rng(1)
    assert abs(reduced_chi2(0.3 * rng.standard_normal((3, 100, 100)), np.zeros((3, 100, 100)), 0.3) - 1) < 0.04
    with pytest.raises(ValueError, match="sigma"):
        reduced_chi2(y, Ax, [1.0, 1.0, 1.0])
