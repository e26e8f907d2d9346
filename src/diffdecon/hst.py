"""Comparison with HST: the HST F814W cutout of a target reprojected onto its HSC window,
and the agreement of a reconstruction with it.

HST images are in the file's units (electrons/s per pixel); :func:`hst_ab_zeropoint` turns
them into HSC coadd flux (:mod:`diffdecon.units`) for the flux ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .arrays import to_numpy
from .errors import InputValueError
from .units import HSC_ZEROPOINT, fwhm_to_sigma

if TYPE_CHECKING:
    from .data import HSCTarget
    from .problem import InverseProblem

__all__ = ["hst_ab_zeropoint", "hst_on_hsc_grid", "resample_flux", "HSTAgreement", "hst_agreement"]


def hst_ab_zeropoint(header) -> float | None:
    """AB zero point [mag] of an HST image in electrons/s, from PHOTFLAM and PHOTPLAM:
    ``ZP_AB = -2.5 log10(PHOTFLAM) - 21.10 - 5 log10(PHOTPLAM) + 18.692`` (STScI ACS
    zero points). None when the keywords are absent. ACS/WFC F814W: 25.94."""
    try:
        flam, plam = float(header["PHOTFLAM"]), float(header["PHOTPLAM"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (flam > 0 and plam > 0):
        return None
    return -2.5 * math.log10(flam) - 21.10 - 5.0 * math.log10(plam) + 18.692


def hst_on_hsc_grid(target: HSCTarget, window: InverseProblem | tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """The target's HST cutout resampled onto the window's HSC grid, conserving flux.

    ``reproject.reproject_exact`` computes, for each output pixel, the overlap-area-weighted
    mean of the input pixels (spherical polygon intersection), i.e. it conserves surface
    brightness; multiplying by the pixel-area ratio (HSC px area / HST px area, both from
    the WCSs) turns that into flux per HSC pixel, so the flux of the covered region is
    conserved. Units: the HST file's (electrons/s) per HSC pixel.

    Parameters
    ----------
    target : diffdecon.data.HSCTarget
    window : InverseProblem (its ``wcs`` and window side are used) or ``(wcs, (ny, nx))``.

    Returns
    -------
    (image, footprint) with ``image`` (ny, nx) [HST units per HSC px]: the HST flux falling
    in each HSC pixel (NaN where the HST cutout does not cover it at all; partly covered
    pixels hold the flux of the covered part) and ``footprint`` (ny, nx) the covered
    fraction of each pixel in [0, 1]; or None (with a message) when the target has no HST cutout.
    """
    if target.hst is None:
        print(f"[diffdecon] {target.name}: no HST cutout, no HST comparison for this target")
        return None
    if hasattr(window, "operator"):  # an InverseProblem
        if window.wcs is None:
            raise ValueError(f"{window.name}: the problem has no WCS; accepted: a problem made by prepare_target")
        wcs, shape = window.wcs, tuple(window.y.shape[-2:])
    else:
        wcs, shape = window
    return resample_flux(target.hst.image, target.hst.wcs, wcs, shape)


def resample_flux(image: np.ndarray, wcs_in, wcs_out, shape_out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving resampling of ``image`` (flux per input px) from ``wcs_in`` onto
    ``wcs_out`` / ``shape_out`` (flux per output px): ``reproject_exact`` times the pixel
    area ratio. Returns (image, footprint); see :func:`hst_on_hsc_grid`."""
    from astropy.wcs.utils import proj_plane_pixel_area
    from reproject import reproject_exact

    out, footprint = reproject_exact((np.asarray(image, dtype=np.float64), wcs_in.celestial), wcs_out.celestial,
                                     shape_out=tuple(shape_out))
    area_ratio = proj_plane_pixel_area(wcs_out.celestial) / proj_plane_pixel_area(wcs_in.celestial)
    # reproject_exact returns the mean over the covered part of each output pixel and the
    # covered fraction (footprint): flux = mean * covered area = out * area_ratio * footprint.
    out = np.where(footprint > 0, out * area_ratio * footprint, np.nan)
    return out, footprint


@dataclass
class HSTAgreement:
    """Agreement between a reconstruction's i band and HST F814W on the HSC window grid.

    Attributes
    ----------
    correlation : float
        Pearson correlation of the two images after both were convolved with the common
        Gaussian, over the pixels inside the model field and fully covered by HST.
    flux_ratio : float
        Reconstruction i-band flux / HST flux over those pixels, the HST flux converted to
        HSC coadd units with the header's AB zero point (i and F814W differ slightly in
        bandpass, so expect a ratio near, not at, 1). NaN if the header has no zero point.
    fwhm_arcsec : float
        FWHM of the common Gaussian [arcsec].
    n_pixels : int
    reconstruction, hst : ndarray (n, n)
        The two matched images [HSC coadd flux per HSC px].
    """

    correlation: float
    flux_ratio: float
    fwhm_arcsec: float
    n_pixels: int
    reconstruction: np.ndarray
    hst: np.ndarray


def hst_agreement(reconstruction, problem: InverseProblem, hst_resampled: tuple[np.ndarray, np.ndarray],
                  target: HSCTarget | None = None, psf_match: float = 0.35,
                  band: str = "i") -> HSTAgreement:
    """Compare a reconstruction with the HST image resampled by :func:`hst_on_hsc_grid`.

    How the resolutions are matched: the reconstruction (model grid, (C, H, W) [flux per
    model px]) is brought onto the HSC window grid by the forward model's flux-conserving
    resampling f_{z,p} *without* the HSC PSF; the HST image is already on that grid. Both
    are then pixel-limited at 0.168 arcsec (the HST PSF, about 0.1 arcsec, and the model
    pixels are finer), and both are convolved with the same circular Gaussian of FWHM
    ``psf_match`` [arcsec] (default 0.35, about 2 HSC px), which smooths residual
    registration and pixel-phase differences without reaching the HSC seeing (0.6-0.8).

    Parameters
    ----------
    reconstruction : Tensor or ndarray (C, H, W)
        E.g. the posterior mean [flux per model px].
    problem : InverseProblem of the same target (its operator and window).
    hst_resampled : (image, footprint) from :func:`hst_on_hsc_grid`.
    target : diffdecon.data.HSCTarget, optional
        For the HST zero point (flux ratio); without it the ratio is NaN.
    psf_match : float
        FWHM of the common Gaussian [arcsec], >= 0 (0: no smoothing).
    band : str
        Band of the reconstruction compared with HST (default i).
    """
    hst_img, footprint = hst_resampled
    rec = torch.as_tensor(to_numpy(reconstruction), dtype=torch.float64)
    P = problem.profile
    if band not in P.bands:
        raise InputValueError("band", band, f"one of {P.bands}")
    if rec.shape != (len(P.bands), P.image_size, P.image_size):
        raise ValueError(f"reconstruction has shape {tuple(rec.shape)}; accepted: the model grid "
                         f"({len(P.bands)}, {P.image_size}, {P.image_size})")
    if hst_img.shape != tuple(problem.y.shape[-2:]):
        raise ValueError(f"HST image has shape {hst_img.shape}; accepted: the window {tuple(problem.y.shape[-2:])}")
    if not psf_match >= 0:
        raise InputValueError("psf_match", psf_match, "a FWHM >= 0 [arcsec]")
    c = P.bands.index(band)
    rec_obs = problem.operator.resample(rec[c : c + 1][None].to(problem.operator.R_y.dtype))[0, 0]
    covered = footprint >= 1 - 1e-6
    rec_s, hst_s = _matched_smoothing(rec_obs.double().numpy(), hst_img, covered,
                                      fwhm_to_sigma(psf_match / problem.pixel_scale_arcsec))
    inside = covered & _model_field_mask(problem, rec_s.shape[0])
    if inside.sum() < 10:
        raise ValueError(f"{problem.name}: only {int(inside.sum())} window pixels are covered by HST; need >= 10")
    a, b = rec_s[inside], hst_s[inside]
    corr = float(np.corrcoef(a, b)[0, 1])
    zp = _hst_zeropoint_of(target)
    to_hsc = 10 ** (0.4 * (HSC_ZEROPOINT - zp)) if zp is not None else float("nan")  # e/s -> coadd flux
    ratio = float(a.sum() / (b.sum() * to_hsc)) if zp is not None else float("nan")
    return HSTAgreement(correlation=corr, flux_ratio=ratio, fwhm_arcsec=float(psf_match), n_pixels=int(inside.sum()),
                        reconstruction=rec_s, hst=hst_s * (to_hsc if zp is not None else 1.0))


def _matched_smoothing(rec: np.ndarray, hst: np.ndarray, covered: np.ndarray, sig_px: float):
    """Both images convolved with the Gaussian of ``sig_px`` [HSC px]; the HST image by
    normalised convolution over its covered pixels, so uncovered pixels do not dim it."""
    from scipy import ndimage

    filled = np.where(covered, hst, 0.0)
    if not sig_px > 0:
        return rec, filled
    rec_s = ndimage.gaussian_filter(rec, sig_px, mode="constant")
    hst_s = ndimage.gaussian_filter(filled, sig_px, mode="constant")
    wt = ndimage.gaussian_filter(covered.astype(float), sig_px, mode="constant")
    return rec_s, np.where(wt > 0, hst_s / np.maximum(wt, 1e-12), 0.0)


def _model_field_mask(problem: InverseProblem, n: int) -> np.ndarray:
    """Window pixels (n, n) whose centres lie inside the model field (m(z, p) obs px wide)."""
    yy, xx = np.indices((n, n))
    cx, cy = problem.center_xy
    half = problem.m / 2
    return (np.abs(xx - cx) < half) & (np.abs(yy - cy) < half)


def _hst_zeropoint_of(target: HSCTarget | None) -> float | None:
    """AB zero point of the target's HST file (first HDU with PHOTFLAM/PHOTPLAM), or None."""
    if target is None or target.hst is None:
        return None
    from astropy.io import fits

    with fits.open(target.hst.path) as hdul:
        for h in hdul:
            zp = hst_ab_zeropoint(h.header)
            if zp is not None:
                return zp
    return None
