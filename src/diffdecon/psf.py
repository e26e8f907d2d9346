"""PSF images on the observation grid: validation and normalisation, circular Gaussians.

A PSF is a ``(k, k)`` or per-band ``(C, k, k)`` array with odd ``k`` (its centre on a pixel
centre) [relative flux per obs px], normalised to unit sum per band.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import HSC_PIXEL_SCALE
from .cosmology import check_positive, check_size
from .units import fwhm_to_sigma

__all__ = ["validate_psf", "gaussian_psf"]


def validate_psf(psf: Any, name: str = "psf") -> np.ndarray:
    """Check a PSF image and return it normalised to unit sum per band.

    Parameters
    ----------
    psf : array-like, shape (k, k) or (C, k, k)
        PSF image(s) on the observation pixel grid [relative flux per obs px]; ``k`` odd so
        that the PSF centre is a pixel centre.
    name : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray, float64, same shape, each band summing to 1.

    Raises
    ------
    ValueError
        Wrong number of dimensions, non-square or even size, non-finite values, or a band
        whose sum is not clearly positive.
    """
    if isinstance(psf, torch.Tensor):
        psf = psf.detach().cpu().numpy()
    try:
        arr = np.array(psf, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a numeric array; accepted: a (k, k) or (C, k, k) array") from None
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} has shape {arr.shape} ({arr.ndim}-D); accepted: (k, k) or (C, k, k)"
        )
    k_y, k_x = arr.shape[-2:]
    if k_y != k_x or k_y % 2 == 0:
        raise ValueError(
            f"{name} has shape {arr.shape}; accepted: square with an odd side k "
            f"(centre on a pixel)"
        )
    if arr.ndim == 3 and arr.shape[0] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; accepted: at least one band")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN/inf); accepted: finite values")
    bands = arr.reshape(-1, k_y, k_x)
    sums = bands.sum(axis=(1, 2))
    abs_sums = np.abs(bands).sum(axis=(1, 2))
    for c, (s, a) in enumerate(zip(sums, abs_sums)):
        if not s > 1e-8 * max(a, 1e-300):
            raise ValueError(
                f"{name} band {c} sums to {s:.3g} (sum of |values| {a:.3g}); accepted: a "
                f"clearly positive sum (it is normalised to 1)"
            )
    out = bands / sums[:, None, None]
    return out.reshape(arr.shape)


def gaussian_psf(fwhm_arcsec: float, size: int, pixel_scale_arcsec: float = HSC_PIXEL_SCALE) -> np.ndarray:
    """Circular Gaussian PSF image, sampled at pixel centres and normalised to unit sum.

    Sampling at pixel centres (no extra pixel-response integration) is the right effective
    PSF here: the rebinned model image already holds pixel-integrated flux.

    Parameters
    ----------
    fwhm_arcsec : float
        Full width at half maximum [arcsec] (HSC: about 0.6-0.8).
    size : int
        Odd side of the PSF image [obs px].
    pixel_scale_arcsec : float
        Observation pixel scale [arcsec/px].

    Returns
    -------
    numpy.ndarray, float64, shape (size, size).
    """
    fwhm = check_positive("fwhm_arcsec", fwhm_arcsec, "arcsec")
    p = check_positive("pixel_scale_arcsec", pixel_scale_arcsec, "arcsec/px")
    k = check_size("size", size)
    if k % 2 == 0:
        raise ValueError(f"invalid size={size!r}; accepted: an odd positive integer [px]")
    sigma_px = fwhm_to_sigma(fwhm / p)  # [obs px]
    r = np.arange(k) - (k - 1) / 2
    g = np.exp(-0.5 * (r / sigma_px) ** 2)
    img = np.outer(g, g)
    return img / img.sum()
