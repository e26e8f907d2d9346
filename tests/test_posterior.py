"""Posterior statistics: known values on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon.posterior import (
    DISPLAY_VAR_FLOOR,
    aperture_mask,
    aperture_mean,
    aperture_snr,
    display_space,
    pixel_mean_var,
    variance_ratio,
)


def test_pixel_mean_var_numpy_and_torch():
    s = np.array([[[[1.0]]], [[[3.0]]]])  # (2, 1, 1, 1)
    m, v = pixel_mean_var(s)
    assert isinstance(m, np.ndarray) and m.item() == 2.0 and v.item() == 2.0  # ddof = 1
    mt, vt = pixel_mean_var(torch.as_tensor(s))
    assert torch.is_tensor(mt) and vt.item() == 2.0
    with pytest.raises(ValueError, match="n >= 2"):
        pixel_mean_var(s[:1])


def test_display_space():
    x = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(display_space(x), torch.tensor([0.0, 0.5, 1.0]))
    # flux 1 (normalised) maps to 1, 0 to 0: same stretch as the prior, then to [0, 1]
    d = display_space(np.array([0.0, 1.0, 0.01]), space="flux", asinh_a=0.01)
    np.testing.assert_allclose(d, [0.0, 1.0, math.asinh(1.0) / math.asinh(100.0)])
    img = torch.ones(1, 2, 2, 2)  # total flux 8 -> normalised to 8 * 2 / 8 = 2 per pixel
    torch.testing.assert_close(display_space(img, "flux", flux_norm=16.0),
                               torch.full_like(img, math.asinh(200.0) / math.asinh(100.0)))
    with pytest.raises(ValueError, match="space"):
        display_space(x, space="log")


def test_variance_ratio_known_values():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(4000, 3, 4, 4, generator=g, dtype=torch.float64) * 0.2
    post = torch.randn(4000, 3, 4, 4, generator=g, dtype=torch.float64) * 0.1
    r = variance_ratio(post, prior)
    # exact ratio (0.1/0.2)^2 = 0.25 (the display map's factor 1/2 cancels); Monte-Carlo
    # error of a variance ratio with n = 4000 each: sqrt(2/4000 * 2) * 0.25 = 0.008 per band,
    # averaged over 3 bands ~0.005: 0.04 is > 8 std (max over 16 pixels).
    assert r.shape == (4, 4) and (r - 0.25).abs().max() < 0.04
    # a prior that never varies: the floor keeps the ratio finite
    const = torch.zeros(10, 3, 4, 4, dtype=torch.float64)
    r2 = variance_ratio(post[:10], const)
    assert torch.isfinite(r2).all()
    _, v = pixel_mean_var(display_space(post[:10]))
    torch.testing.assert_close(r2, v.mean(0) / DISPLAY_VAR_FLOOR)


def test_aperture_mean_and_mask():
    m = aperture_mask((5, 5), 1.0)
    assert m.sum() == 5 and m[2, 2] and m[1, 2] and not m[1, 1]  # centre + 4 neighbours
    img = torch.zeros(5, 5, dtype=torch.float64)
    img[2, 2] = 5.0
    assert aperture_mean(img, 1.0) == pytest.approx(1.0)
    assert aperture_mean(img, 1.0, center=(0.0, 0.0)) == pytest.approx(0.0)
    # even side: the centre is between pixels; radius 1 holds the 4 central pixels
    assert aperture_mask((4, 4), 1.0).sum() == 4
    stack = np.stack([np.full((5, 5), 2.0), np.full((5, 5), 4.0)])
    np.testing.assert_allclose(aperture_mean(stack, 2.0), [2.0, 4.0])
    with pytest.raises(ValueError, match="radius_px"):
        aperture_mean(img, 0.0)


def test_aperture_snr():
    img = np.full((3, 9, 9), 2.0)
    np.testing.assert_allclose(aperture_snr(img, [1.0, 2.0, 4.0], 3.0), [2.0, 1.0, 0.5])
    assert aperture_snr(img[0], 0.5, 3.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="sigma"):
        aperture_snr(img[0], -1.0, 3.0)
