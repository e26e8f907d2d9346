"""Photometric and PSF unit conversions, each in one place.

* HSC coadd flux: ``mag_AB = 27 - 2.5 log10(F)`` (:data:`HSC_ZEROPOINT`; the coadd headers'
  ``FLUXMAG0 = 10**(0.4 * 27)`` says the same). Every image of the package (observations,
  model images, the synthetic galaxies) is in these units per pixel.
* Jansky: ``mag_AB = 8.9 - 2.5 log10(F / Jy)`` (:data:`AB_ZEROPOINT_JY`), the units of the
  TNG idealized images on disk.
* Gaussian PSF widths: ``FWHM = 2 sqrt(2 ln 2) sigma`` (:data:`FWHM_PER_SIGMA`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HSC_ZEROPOINT", "AB_ZEROPOINT_JY", "FWHM_PER_SIGMA", "mag_to_flux", "flux_to_mag",
           "fwhm_to_sigma", "sigma_to_fwhm"]

HSC_ZEROPOINT: float = 27.0
"""AB magnitude of one HSC coadd flux unit [AB mag]."""

AB_ZEROPOINT_JY: float = 8.9
"""AB magnitude of a flux of 1 Jy [AB mag]."""

FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM / sigma of a Gaussian, about 2.3548."""


def mag_to_flux(mag, zeropoint: float = HSC_ZEROPOINT):
    """Linear flux of an AB magnitude, ``10**(-0.4 (mag - zeropoint))`` [HSC coadd units by
    default; Jy with ``zeropoint=AB_ZEROPOINT_JY``]; float64, same shape as ``mag``."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - zeropoint))


def flux_to_mag(flux, zeropoint: float = HSC_ZEROPOINT):
    """AB magnitude of a linear flux, ``zeropoint - 2.5 log10(flux)`` [AB mag]; ``flux`` in
    HSC coadd units by default (Jy with ``zeropoint=AB_ZEROPOINT_JY``), > 0."""
    return zeropoint - 2.5 * np.log10(np.asarray(flux, dtype=np.float64))


def fwhm_to_sigma(fwhm: float) -> float:
    """Standard deviation of a Gaussian of full width at half maximum ``fwhm`` (same units)."""
    return fwhm / FWHM_PER_SIGMA


def sigma_to_fwhm(sigma: float) -> float:
    """Full width at half maximum of a Gaussian of standard deviation ``sigma`` (same units)."""
    return sigma * FWHM_PER_SIGMA
