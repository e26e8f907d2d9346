"""FITS reading shared by the loaders: HDU descriptions, finite checks, PSFs, pixel scales,
HST cutouts.

Images are returned as float64 arrays in the file's units; PSFs normalised to sum 1;
pixel scales in arcsec/px measured from the WCS. Every problem raises
:class:`diffdecon.errors.DataError` naming the file.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from .errors import DataError

__all__ = ["describe_hdus", "check_finite", "read_psf", "pixel_scale_arcsec", "HSTImage", "load_hst",
           "band_of", "read_band_image", "celestial_wcs"]

BAND_KEYS: tuple[str, ...] = ("FILTER", "BAND", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAME")
"""Header keywords that may name the band of an image."""


def describe_hdus(hdul: fits.HDUList) -> str:
    """One line listing the HDUs of a file: index, name and data shape of each."""
    parts = []
    for i, hdu in enumerate(hdul):
        shape = None if hdu.data is None else tuple(hdu.data.shape)
        parts.append(f"[{i}] {hdu.name or '(no name)'} shape={shape}")
    return "; ".join(parts)


def check_finite(data: np.ndarray, path: Path, what: str) -> None:
    """Raise :class:`DataError` naming ``path`` and ``what`` if ``data`` has NaN/inf pixels."""
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(
            f"{path}: {what} has {int(bad.sum())} non-finite pixel(s) (NaN/inf) out of {data.size}; "
            "masked pixels are not supported by the likelihood: use another cutout"
        )


def read_psf(path: Path) -> np.ndarray:
    """A PSF [dimensionless] normalised to sum 1 from the first 2-D HDU of ``path``."""
    with fits.open(path) as hdul:
        arrays = [h.data for h in hdul if h.data is not None and h.data.ndim == 2]
        if not arrays:
            raise DataError(f"{path}: no 2-D PSF array; extensions found: {describe_hdus(hdul)}")
        psf = np.asarray(arrays[0], dtype=np.float64)
    check_finite(psf, path, "PSF")
    if psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise DataError(f"{path}: PSF must be square with an odd side, got shape {psf.shape}")
    total = psf.sum()
    if not total > 0:
        raise DataError(f"{path}: PSF sums to {total}, cannot normalise")
    return psf / total


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Pixel scale [arcsec/px] measured from a celestial WCS (geometric mean of both axes)."""
    scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0  # deg -> arcsec
    return float(np.sqrt(scales[0] * scales[1]))


@dataclass
class HSTImage:
    """An HST cutout for visual comparison.

    Attributes
    ----------
    image : float64 (H, W), file units (ACS COSMOS mosaic: electrons/s per pixel).
    wcs : astropy WCS of the cutout.
    pixel_scale_arcsec : measured from the WCS [arcsec/px] (0.03 for COSMOS ACS).
    band : filter name from the header (``FILTER2``/``FILTER1``/``FILTER``), ``"F814W"`` if absent.
    path : the file.
    """

    image: np.ndarray
    wcs: WCS
    pixel_scale_arcsec: float
    band: str
    path: Path


def load_hst(path: str | Path) -> HSTImage:
    """Load an HST cutout (the first HDU holding a 2-D image).

    Raises :class:`DataError` naming the file if it has no 2-D image, no celestial WCS
    or non-finite pixels.
    """
    path = Path(path)
    with fits.open(path) as hdul:
        hdus = [h for h in hdul if h.data is not None and h.data.ndim == 2]
        if not hdus:
            raise DataError(f"{path}: no 2-D image in any HDU; extensions found: {describe_hdus(hdul)}")
        hdu = hdus[0]
        data = np.asarray(hdu.data, dtype=np.float64)
        header = hdu.header
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise DataError(f"{path}: the image HDU has no celestial WCS")
    check_finite(data, path, "HST image")
    band = "F814W"
    for key in ("FILTER2", "FILTER1", "FILTER"):
        value = str(header.get(key, "")).strip().upper()
        if value.startswith("F") and value[1:4].isdigit():
            band = value
            break
    return HSTImage(image=data, wcs=wcs, pixel_scale_arcsec=pixel_scale_arcsec(wcs), band=band, path=path)


# --------------------------------------------------------------------------- user images


def band_of(value: Any) -> str:
    """'HSC-G', 'g', 'HSC-I2', 'SDSS r' -> 'g', 'g', 'i', 'r'; anything else -> the raw string."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:.*[-_ ])?([grizyGRIZY])2?", text)
    return m.group(1).lower() if m else text


def read_band_image(path: Path, band: str, what: str, bands: tuple[str, ...] = ("g", "r", "i")):
    """``(array float64, header)`` of the first 2-D HDU of ``path``, given as band ``band``
    of ``bands``. Raises :class:`DataError` if the file is missing or unreadable, holds no
    2-D array, or a band keyword (:data:`BAND_KEYS`) names another band of ``bands``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} ({band}) {path}: no such file")
    try:
        hdul = fits.open(path)
    except OSError as err:
        raise DataError(f"{what} ({band}) {path}: not a readable FITS file ({err})") from None
    with hdul:
        hdus = [h for h in hdul if getattr(h, "data", None) is not None and np.ndim(h.data) == 2]
        if not hdus:
            raise DataError(f"{what} ({band}) {path}: no HDU holds a 2-D array; accepted: a FITS file with a 2-D image")
        arr = np.asarray(hdus[0].data, dtype=np.float64)
        header = hdus[0].header.copy()
        for h in (hdul[0].header, hdus[0].header):
            for k in BAND_KEYS:
                found = band_of(h[k]) if k in h and str(h[k]).strip() else None
                if found in bands and found != band:
                    raise DataError(f"{what} {path} is for band {found!r} ({k}={h[k]!r}) but was given in position "
                                    f"of band {band!r}; accepted: files in the order {' '.join(bands)}")
    return arr, header


def celestial_wcs(header):
    """The celestial part of the header's WCS, or None when it has none (or a broken one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header)
        except Exception:  # noqa: BLE001 - a broken WCS is reported as "no WCS"
            return None
    return w.celestial if w.has_celestial else None
