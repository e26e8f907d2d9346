"""Mock HSC observations of idealized galaxies: the TNG-HSC analog.

An idealized image (linear flux per model pixel) is placed at a redshift, rebinned onto
the HSC grid, convolved with an HSC PSF and given Gaussian noise with the per-band sigma
measured on the real HSC cutouts. Where the real cutouts are absent, a documented
fallback is used (Gaussian PSFs, a typical HSC noise level) and the returned object says so:
every figure made from it must carry :attr:`MockSetup.source` on itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import data
from .config import BANDS, HSC_PIXEL_SCALE, Profile, get_profile
from .cosmology import WINDOW_MARGIN, observed_size, window_side
from .physics import ForwardModel, mock_observation
from .psf import gaussian_psf, validate_psf

FALLBACK_FWHM_ARCSEC: dict[str, float] = {"g": 0.79, "r": 0.75, "i": 0.62}
"""Gaussian PSF FWHM per band [arcsec] when no real PSF is present (HSC-SSP UltraDeep
median seeing is about 0.6-0.8 arcsec, best in i)."""

FALLBACK_SIGMA: float = 0.01
"""Per-band background sigma [HSC coadd flux units, mag = 27 - 2.5 log10 F] when no real
cutout is present: the middle of the 0.006-0.016 range of HSC UltraDeep coadds."""

PSF_SIZE: int = 43
"""Side of the HSC PSF images [obs px]."""


@dataclass(frozen=True)
class HSCReference:
    """A PSF per band and a noise sigma per band for mock observations.

    Attributes
    ----------
    psfs : ndarray (3, k, k)
        Normalised PSFs on the HSC grid (0.168 arcsec/px), bands g, r, i.
    sigma : ndarray (3,)
        Background noise sigma per band [HSC coadd flux units].
    source : str
        Where they come from: the real target's name, or ``"fallback: ..."``.
    real : bool
        True when measured on real HSC data.
    """

    psfs: np.ndarray
    sigma: np.ndarray
    source: str
    real: bool


def hsc_reference(target: str | None = None, root=None) -> HSCReference:
    """PSFs and noise sigma of a real HSC target, or the documented fallback.

    Parameters
    ----------
    target : str, optional
        A target name (see :func:`diffdecon.data.list_targets`); default: the first
        target present. If no real data is present, the fallback is returned and a message
        says so.
    """
    try:
        names = data.list_targets(root)
    except FileNotFoundError as err:
        names = []
        reason = str(err)
    else:
        reason = "no HSC target present"
    if target is not None and target not in names:
        raise ValueError(f"HSC target {target!r} not found; present: {names or 'none'}")
    if names:
        t = data.load_target(target or names[0], root)
        return HSCReference(validate_psf(t.psfs), np.asarray(t.noise_sigma, dtype=np.float64),
                            f"HSC PDR3 {t.name}", True)
    print(f"[diffdecon] real HSC data not found ({reason}); using Gaussian PSFs and sigma={FALLBACK_SIGMA}")
    psfs = np.stack([gaussian_psf(FALLBACK_FWHM_ARCSEC[b], PSF_SIZE, HSC_PIXEL_SCALE) for b in BANDS])
    return HSCReference(psfs, np.full(len(BANDS), FALLBACK_SIGMA), "fallback: Gaussian PSF, typical HSC sigma", False)


def gaussian_reference(fwhm_arcsec: float, sigma, size: int = PSF_SIZE) -> HSCReference:
    """A Gaussian PSF of ``fwhm_arcsec`` [arcsec] in every band with noise ``sigma``
    [flux units, scalar or per band] (the magnitude-sweep set-up)."""
    psf = gaussian_psf(fwhm_arcsec, size, HSC_PIXEL_SCALE)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(BANDS),)).copy()
    return HSCReference(np.stack([psf] * len(BANDS)), sig, f"Gaussian PSF FWHM {fwhm_arcsec}\"", False)


def mock_obs_size(z: float, profile: Profile | str, margin: int = WINDOW_MARGIN) -> int:
    """Side of a mock observation [obs px]: the observation window
    (:func:`diffdecon.cosmology.window_side`) around the model field m(z, p)."""
    P = get_profile(profile)
    return window_side(observed_size(z, P.image_size, P.pixel_scale_kpc, HSC_PIXEL_SCALE), margin)


@dataclass
class MockObservation:
    """One mock observation and everything needed to invert it.

    Attributes
    ----------
    truth : Tensor (C, H, W)
        The idealized image [flux per model pixel].
    y : Tensor (C, n, n)
        The observation [HSC flux per obs pixel].
    operator : ForwardModel
    sigma : Tensor (C,)
        Noise sigma per band [HSC flux units].
    z : float
    reference : HSCReference
        Where the PSF and noise come from (say it on every figure).
    """

    truth: torch.Tensor
    y: torch.Tensor
    operator: ForwardModel
    sigma: torch.Tensor
    z: float
    reference: HSCReference


def make_mock(
    flux,
    z: float,
    profile: Profile | str,
    reference: HSCReference,
    generator: torch.Generator,
    obs_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> MockObservation:
    """Observe the idealized image ``flux`` (C, H, W) [flux per model pixel] at redshift
    ``z`` through the HSC-like forward model of ``reference`` (Eq. 1: y = A(x) + sigma n)."""
    P = get_profile(profile)
    truth = torch.tensor(np.array(flux, dtype=np.float64), dtype=dtype)
    if truth.shape != (len(BANDS), P.image_size, P.image_size):
        raise ValueError(
            f"idealized image has shape {tuple(truth.shape)}; accepted: "
            f"({len(BANDS)}, {P.image_size}, {P.image_size}) for profile {P.name!r}"
        )
    op = ForwardModel(z, reference.psfs, obs_size or mock_obs_size(z, P), P.image_size, P.pixel_scale_kpc,
                      HSC_PIXEL_SCALE, dtype=dtype)
    sigma = torch.as_tensor(reference.sigma, dtype=dtype)
    y = mock_observation(truth, op, sigma, generator)
    return MockObservation(truth, y, op, sigma, float(z), reference)
