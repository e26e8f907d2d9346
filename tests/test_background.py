"""Tests of diffdecon.background: source mask, noise sigma and background level."""

from __future__ import annotations

import numpy as np
import pytest

from diffdecon import background


def test_estimate_noise_sigma_masks_source():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 0.01, (128, 128))
    yy, xx = np.indices(image.shape)
    image += 0.05 * np.exp(-np.hypot(xx - 64, yy - 64) / 8.0)  # an exponential disk, wide wings
    plain = background.estimate_noise_sigma(image)
    masked = background.estimate_noise_sigma(image, mask_sources=True)
    # 16k pixels: statistical error ~0.6%, clipping bias -1.5%: 5% tolerance; clipping alone
    # keeps the disk's wings and overestimates.
    assert masked == pytest.approx(0.01, rel=0.05)
    assert plain > masked
    # Pure noise: source masking must not bias the estimate (a per-pixel 2-sigma mask did, by -14%).
    noise_only = rng.normal(0, 0.01, (128, 128))
    assert background.estimate_noise_sigma(noise_only, mask_sources=True) == pytest.approx(0.01, rel=0.05)
    assert background.source_mask(noise_only).mean() < 0.02
    with pytest.raises(ValueError, match="2-D"):
        background.estimate_noise_sigma(image[0])


def test_background_level_ignores_the_source():
    # A pedestal of 0.003 under noise of 0.01 and a bright source: the sigma-clipped median of
    # the unmasked pixels recovers the pedestal; 16k pixels, error ~1e-4 (sd/sqrt(N) x 1.25),
    # tolerance 5e-4. The plain median would be pulled up by the source's wings.
    rng = np.random.default_rng(2)
    image = 0.003 + rng.normal(0, 0.01, (128, 128))
    yy, xx = np.indices(image.shape)
    image += 0.5 * np.exp(-np.hypot(xx - 64, yy - 64) / 6.0)
    assert background.background_level(image) == pytest.approx(0.003, abs=5e-4)
