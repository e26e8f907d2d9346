"""A posterior result as one FITS file: summaries on the model grid with its WCS and a
primary header that records where every number came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .arrays import to_numpy
from .cache import atomic_path
from .errors import DiffdeconError

__all__ = ["OutputExistsError", "model_grid_wcs", "provenance_header", "write_result"]


class OutputExistsError(DiffdeconError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


def model_grid_wcs(problem) -> Any:
    """WCS of the model grid: centred on the galaxy, pixel scale
    ``pixel_scale_kpc * arcsec_per_kpc(z)`` [arcsec] (in degrees), the orientation of the
    input WCS; without an input WCS, linear offsets in arcsec from the galaxy."""
    from astropy.wcs import WCS

    from .cosmology import arcsec_per_kpc

    P = problem.profile
    scale_arcsec = P.pixel_scale_kpc * arcsec_per_kpc(problem.z)  # model pixel [arcsec]
    w = WCS(naxis=2)
    w.wcs.crpix = [(P.image_size + 1) / 2, (P.image_size + 1) / 2]  # FITS 1-based geometric centre
    if problem.wcs is not None and problem.ra is not None:
        src = problem.wcs.celestial
        psm = src.pixel_scale_matrix  # deg/px, with orientation and sign
        obs_deg = problem.pixel_scale_arcsec / 3600.0
        w.wcs.pc = psm / obs_deg
        w.wcs.cdelt = [scale_arcsec / 3600.0, scale_arcsec / 3600.0]
        w.wcs.ctype = list(src.wcs.ctype)
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crval = [problem.ra, problem.dec]
        if src.wcs.radesys:
            w.wcs.radesys = src.wcs.radesys
    else:
        w.wcs.ctype = ["OFFSET-X", "OFFSET-Y"]
        w.wcs.cunit = ["arcsec", "arcsec"]
        w.wcs.cdelt = [scale_arcsec, scale_arcsec]
        w.wcs.crval = [0.0, 0.0]
    return w


def write_result(path: Path, result, prior, overwrite: bool = False, save_samples: bool = False,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write a :class:`diffdecon.deconvolution.PosteriorResult` to one FITS file, atomically.

    HDUs: primary (provenance header, no data), MEAN, STD, VARRATIO [input flux per model px;
    VARRATIO dimensionless], and SAMPLES with ``save_samples``; each image HDU carries the
    model-grid WCS (:func:`model_grid_wcs`). ``extra``: more primary-header cards. Raises
    :class:`OutputExistsError` for an existing ``path`` unless ``overwrite``.
    """
    from astropy.io import fits

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    hdr = provenance_header(result, prior)
    for k, v in (extra or {}).items():
        hdr[k] = v
    wcs_hdr = model_grid_wcs(result.problem).to_header()
    bands_hdr = {f"BAND{c + 1}": b for c, b in enumerate(result.problem.profile.bands)}

    def image_hdu(arr, name, unit):
        h = fits.ImageHDU(np.asarray(arr, dtype=np.float32), name=name)
        h.header.update(wcs_hdr)
        h.header["BUNIT"] = unit
        if np.ndim(arr) >= 3:
            h.header.update(bands_hdr)
        return h

    unit = "input flux / model px"
    hdus = [fits.PrimaryHDU(header=hdr), image_hdu(to_numpy(result.mean), "MEAN", unit),
            image_hdu(to_numpy(result.std), "STD", unit),
            image_hdu(to_numpy(result.variance_ratio), "VARRATIO", "dimensionless")]
    if save_samples:
        hdus.append(image_hdu(to_numpy(result.flux_samples), "SAMPLES", unit))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        if path.exists() and not overwrite:  # appeared while we were sampling
            raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    return path


def provenance_header(result, prior):
    """Primary FITS header of a result: package, profile, checkpoint SHA-256, sampler and its
    settings, geometry (redshift, pixel scales, m(z, p)), flux scale, per-band chi^2, noise
    and background, aperture variance ratio, window and wall time."""
    from astropy.io import fits

    from . import __version__

    pb, P = result.problem, result.problem.profile
    hdr = fits.Header()
    hdr["ORIGIN"] = ("diffdecon", "Bayesian deconvolution with a diffusion prior")
    hdr["DDVERS"] = (__version__, "diffdecon package version")
    hdr["PROFILE"] = (P.name, "model profile")
    hdr["CKPTSHA"] = getattr(prior, "checkpoint_sha256", None) or "none"  # 64 hex digits: no room for a comment
    ckpt = getattr(prior, "checkpoint_path", None)
    hdr["CKPTFILE"] = (Path(ckpt).name if ckpt else "none", "prior weights file")
    hdr["SAMPLER"] = (result.sampler, "posterior sampler")
    hdr["STEPS"] = (result.steps, "sampling steps")
    if getattr(result, "covariance", None):
        hdr["MMPSCOV"] = (result.covariance, "MMPS covariance of p(x0 | x_t)")
        hdr["LOOKAHD"] = (bool(getattr(result, "lookahead", False)), "y fitted through the prior chain's lookahead")
    hdr["SEED"] = (-1 if result.seed is None else result.seed, "random seed (-1: external generator)")
    hdr["NSAMPLE"] = (result.n, "posterior samples")
    hdr["REDSHIFT"] = (pb.z, "redshift of the galaxy")
    hdr["PIXSCALE"] = (pb.pixel_scale_arcsec, "[arcsec/px] observation pixel scale")
    hdr["MPIXKPC"] = (P.pixel_scale_kpc, "[kpc/px] model pixel scale (proper)")
    hdr["MOBS"] = (pb.m, "[obs px] model field size m(z,p)")
    hdr["UPSAMP"] = (pb.upsampling_factor, "upsampling factor image_size / m")
    hdr["FLUXSCL"] = (pb.scale, "model flux = FLUXSCL * unstretch(x)")
    for c, b in enumerate(P.bands):
        hdr[f"CHI2_{b.upper()}"] = (float(result.chi2[c]), f"reduced chi2 of A(mean), band {b}")
        hdr[f"SIGMA_{b.upper()}"] = (float(pb.sigma[c]), f"[flux/px] noise sigma, band {b}")
        hdr[f"BKG_{b.upper()}"] = (float(pb.background[c]), f"background subtracted, band {b}")
    if result.chi2_samples is not None:
        hdr["CHI2SMED"] = (float(np.median(result.chi2_samples)), "median reduced chi2 of A(sample), all bands")
        hdr["CONVERGD"] = (bool(result.converged), "posterior samples fit the data (CHI2SMED small)")
    hdr["VRAPER"] = (result.variance_ratio_aperture, "mean variance ratio in the aperture")
    hdr["VRRAD"] = (P.aperture_radius_px, "[model px] aperture radius")
    if pb.ra is not None:
        hdr["RA_GAL"] = (pb.ra, "[deg] galaxy position")
        hdr["DEC_GAL"] = (pb.dec, "[deg] galaxy position")
    if pb.window is not None:
        hdr["WIN_ROW0"], hdr["WIN_COL0"], hdr["WIN_N"] = pb.window
    hdr["WALLTIME"] = (round(result.wall_time_s, 3), "[s] posterior sampling time")
    hdr["SOURCE"] = pb.source[:68]
    return hdr
