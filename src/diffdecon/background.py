"""The sky background of an image: source mask, noise standard deviation, residual level.

All in the image's own units per pixel (HSC coadd flux per HSC pixel for the targets).
"""

from __future__ import annotations

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

__all__ = ["source_mask", "estimate_noise_sigma", "background_level"]


def source_mask(
    image: np.ndarray,
    nsigma: float = 3.0,
    smooth_px: float = 1.5,
    min_pixels: int = 5,
    dilate_px: int = 3,
    sigma: float = 3.0,
    maxiters: int = 10,
) -> np.ndarray:
    """Boolean mask (True = source) of the sources in an image.

    The background-subtracted image is smoothed by a Gaussian of ``smooth_px`` [px]
    (about the HSC PSF sigma), thresholded at ``nsigma`` times the smoothed image's
    sigma-clipped std, connected regions of fewer than ``min_pixels`` pixels are dropped
    (noise peaks), and the rest dilated by ``dilate_px`` pixels to cover faint wings.
    A plain per-pixel threshold would also remove the positive tail of pure noise and
    bias the noise estimate low (by 14% at 2 sigma on a Gaussian field); this one does not.
    """
    _, median, _ = sigma_clipped_stats(image, sigma=sigma, maxiters=maxiters)
    smoothed = ndimage.gaussian_filter(image - median, smooth_px)
    _, s_median, s_std = sigma_clipped_stats(smoothed, sigma=sigma, maxiters=maxiters)
    detected = smoothed > s_median + nsigma * s_std
    labels, n = ndimage.label(detected)
    sizes = ndimage.sum(detected, labels, index=np.arange(1, n + 1))
    sources = np.isin(labels, 1 + np.flatnonzero(sizes >= min_pixels))
    if dilate_px > 0:
        sources = ndimage.binary_dilation(sources, iterations=dilate_px)
    return sources


def estimate_noise_sigma(
    image: np.ndarray,
    sigma: float = 3.0,
    maxiters: int = 10,
    *,
    mask: np.ndarray | None = None,
    mask_sources: bool = False,
) -> float:
    """Background noise standard deviation of an image [image units, e.g. coadd flux/px].

    ``astropy.stats.sigma_clipped_stats`` (``sigma``-clipping, ``maxiters`` iterations) on
    the pixels not in ``mask`` (True = excluded, e.g. a central source region). With
    ``mask_sources`` the pixels of :func:`source_mask` are excluded too: clipping alone
    keeps the faint wings of sources and overestimates the noise. On pure Gaussian noise both estimates are low by about 1.5% (the 3-sigma
    clipping truncates the tails).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"estimate_noise_sigma expects a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("estimate_noise_sigma: image has non-finite pixels")
    if sigma <= 0 or maxiters < 1:
        raise ValueError(f"sigma must be > 0 and maxiters >= 1, got sigma={sigma}, maxiters={maxiters}")
    excluded = np.zeros(image.shape, bool) if mask is None else np.asarray(mask, bool)
    if excluded.shape != image.shape:
        raise ValueError(f"mask shape {excluded.shape} differs from image shape {image.shape}")
    if mask_sources:
        excluded = excluded | source_mask(image, sigma=sigma, maxiters=maxiters)
    if (~excluded).sum() < 100:
        raise ValueError(f"estimate_noise_sigma: only {(~excluded).sum()} unmasked pixels; need at least 100")
    _, _, std = sigma_clipped_stats(image, mask=excluded, sigma=sigma, maxiters=maxiters)
    if not std > 0:
        raise ValueError(f"estimate_noise_sigma: non-positive background sigma {std}")
    return float(std)


def background_level(image: np.ndarray, sigma: float = 3.0, maxiters: int = 10) -> float:
    """Sky level of one band [image units]: the sigma-clipped (``sigma``, ``maxiters``)
    median of the pixels outside :func:`source_mask`. Coadds are sky subtracted, so this is a
    small residual; it is removed because the flux scale ``s`` of an inverse problem sums
    the window and any pedestal would enter it."""
    image = np.asarray(image, dtype=np.float64)
    mask = source_mask(image, sigma=sigma, maxiters=maxiters)
    _, median, _ = sigma_clipped_stats(image, mask=mask, sigma=sigma, maxiters=maxiters)
    return float(median)
