"""Real data on disk: HSC PDR3 COSMOS targets (cutouts, PSFs, catalogues), TNG images.

Units
-----
* HSC images are in **HSC coadd flux units** per HSC pixel (:mod:`diffdecon.units`,
  ``mag_AB = 27 - 2.5 log10(flux)``).
* HSC pixel scale is measured from each cutout's WCS [arcsec/px] (0.168 for PDR3 coadds).
* PSFs are dimensionless kernels on the HSC pixel grid, normalised to sum 1.
* HST cutouts (ACS F814W, COSMOS) are in the file's own units (electrons/s per 0.03 arcsec
  pixel for the COSMOS mosaics); they are read by :func:`diffdecon.fits_io.load_hst`.
* TNG idealized images: AB magnitudes per pixel on disk, returned as linear flux in
  **Jy per pixel** (:func:`diffdecon.units.mag_to_flux` with the Jy zero point).

Layout of the data folder (``paths.hsc_dir()``)::

    <target>/cutout-HSC-{G,R,I}-9813-pdr3_dud_rev[-N].fits   image in HDU 1
    <target>/psf-calexp-pdr3_dud_rev-HSC-{G,R,I}-9813[-N].fits  43x43 PSF in HDU 0
    <target>/<anything>.csv                                   one-row catalogue
    <target>/HST-channel-I[-N].fits                           optional HST cutout

A *target* is a sub-folder holding a catalogue CSV file: the names are discovered, never
hard-coded. The files are fetched by :func:`diffdecon.download.download_targets` and
verified against the committed SHA-256 sums (:data:`CHECKSUMS_FILE`). The noise of each
band is measured once, when a target is loaded (:attr:`HSCTarget.noise_sigma`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import config, paths
from .background import estimate_noise_sigma
from .errors import DataError
from .fits_io import HSTImage, check_finite, describe_hdus, load_hst, pixel_scale_arcsec, read_psf
from .units import AB_ZEROPOINT_JY, mag_to_flux

CHECKSUMS_FILE: Path = paths.CHECKSUMS / "SHA256SUMS-hsc_pdr3_cosmos"
"""Committed SHA-256 sums, paths relative to ``hsc_pdr3_cosmos/``."""

HSC_SUBDIR: str = "hsc_pdr3_cosmos"

TNG_EXTENSION: str = "SUBARU_HSC.{band}"
"""Extension name of one band in a TNG idealized FITS file (band upper-case)."""

_HSC_IMAGE_HDU = 1
CUTOUT_RE = re.compile(r"^cutout-HSC-([GRIZY])-\d+-pdr3_dud_rev(-\d+)?\.fits$")
"""File name of an HSC cutout: group 1 the band, group 2 the optional ``-N`` suffix."""
_PSF_RE = re.compile(r"^psf-calexp-pdr3_dud_rev-HSC-([GRIZY])-\d+(-\d+)?\.fits$")
HST_GLOB = "HST-channel-I*.fits"
"""File name pattern of a target's HST cutout."""


# --------------------------------------------------------------------------- targets


def _root(root: str | Path | None) -> Path:
    root = Path(root) if root is not None else paths.hsc_dir()
    return paths.require_dir(root, "HSC data folder (hsc_pdr3_cosmos)")


def _catalog_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if p.is_file())


def list_targets(root: str | Path | None = None) -> list[str]:
    """Names of the targets present under ``root`` (default ``paths.hsc_dir()``), sorted.

    A target is a sub-folder that holds a catalogue ``*.csv`` file.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist (the message names it and ``DIFFDECON_DATA``).
    """
    root = _root(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _catalog_files(p))


def read_checksums(path: str | Path) -> dict[str, str]:
    """Read a ``sha256sum``-style file into ``{relative path: hex digest}``.

    Lines are ``<64 hex digits><spaces>[*]<relative path>``; blank lines and ``#`` comments
    are ignored. Raises :class:`DataError` naming the file and line on anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checksum file not found: {path}")
    sums: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64})\s+\*?(.+)", line)
        if m is None:
            raise DataError(f"{path}:{lineno}: expected '<sha256> <path>', got {line!r}")
        sums[m.group(2).strip()] = m.group(1).lower()
    return sums


def missing_targets(root: str | Path | None = None, checksums: str | Path | None = None) -> list[str]:
    """Targets listed in the checksum file (default :data:`CHECKSUMS_FILE`) but absent under ``root``."""
    listed = sorted({rel.split("/", 1)[0] for rel in read_checksums(checksums or CHECKSUMS_FILE)})
    present = set(list_targets(root))
    return [t for t in listed if t not in present]


def read_catalog(path: str | Path) -> dict[str, float | int | str]:
    """Read a one-row target catalogue CSV (header line may start with ``#``).

    Returns the row as ``{column: value}`` with ``object_id`` an int and the other
    numeric columns floats (``ra``, ``dec`` [deg], ``*_kronflux_mag`` [AB mag],
    ``specz_redshift``).
    """
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise DataError(f"catalogue {path}: expected a header line and one row, found {len(lines)} line(s)")
    header = next(csv.reader([lines[0].lstrip("#").strip()]))
    rows = [next(csv.reader([ln])) for ln in lines[1:]]
    if len(rows) != 1:
        raise DataError(f"catalogue {path}: expected exactly one row, found {len(rows)}")
    row = rows[0]
    if len(row) != len(header):
        raise DataError(f"catalogue {path}: {len(header)} columns in the header but {len(row)} in the row")
    required = ("object_id", "ra", "dec", "i_kronflux_mag", "specz_redshift")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"catalogue {path}: missing columns {missing}; found {header}")
    out: dict[str, float | int | str] = {}
    for key, value in zip(header, row):
        key, value = key.strip(), value.strip()
        if key == "object_id":
            out[key] = int(value)
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


# --------------------------------------------------------------------------- FITS readers


def _read_hsc_cutout(path: Path, band: str) -> tuple[np.ndarray, WCS]:
    """Image [coadd flux/px] and WCS of an HSC cutout; the image lives in HDU 1."""
    with fits.open(path) as hdul:
        if len(hdul) <= _HSC_IMAGE_HDU or hdul[_HSC_IMAGE_HDU].data is None or hdul[_HSC_IMAGE_HDU].data.ndim != 2:
            raise DataError(
                f"{path}: expected the HSC image as a 2-D array in HDU {_HSC_IMAGE_HDU}; "
                f"extensions found: {describe_hdus(hdul)}"
            )
        filt = str(hdul[0].header.get("FILTER", band)).strip().lower()
        if filt != band.lower():
            raise DataError(f"{path}: header FILTER={filt!r} but the file was taken as band {band!r}")
        data = np.asarray(hdul[_HSC_IMAGE_HDU].data, dtype=np.float64)
        wcs = WCS(hdul[_HSC_IMAGE_HDU].header)
    check_finite(data, path, "image")
    return data, wcs


# --------------------------------------------------------------------------- HSC targets


@dataclass
class HSCTarget:
    """One HSC target: three-band cutout, PSFs, catalogue values, optional HST cutout.

    Attributes
    ----------
    name : folder name (e.g. ``"test1"``).
    object_id : HSC PDR3 object id.
    ra, dec : catalogue position [deg, ICRS].
    z : spectroscopic redshift.
    i_mag : i-band Kron magnitude [AB].
    images : float64 ``(3, N, N)`` [HSC coadd flux per pixel], bands ``config.BANDS`` (g, r, i).
    psfs : float64 ``(3, k, k)`` PSFs on the HSC pixel grid, each summing to 1.
    wcs : astropy WCS of ``images`` (after the square crop, if any).
    pixel_scale_arcsec : measured from the WCS [arcsec/px].
    noise_sigma : float64 ``(3,)`` background sigma per band [coadd flux per pixel].
    hst : :class:`HSTImage` or None (no HST comparison for this target).
    files : the files read, ``{"catalog", "image_g", ..., "psf_g", ..., "hst"}``.
    catalog : the full catalogue row.
    crop_offset : ``(row0, col0)`` of ``images[:, 0, 0]`` in the original cutout [px].
    """

    name: str
    object_id: int
    ra: float
    dec: float
    z: float
    i_mag: float
    images: np.ndarray
    psfs: np.ndarray
    wcs: WCS
    pixel_scale_arcsec: float
    noise_sigma: np.ndarray
    hst: HSTImage | None = None
    files: dict[str, Path] = field(default_factory=dict)
    catalog: dict = field(default_factory=dict)
    crop_offset: tuple[int, int] = (0, 0)

    @property
    def mags(self) -> dict[str, float]:
        """Kron magnitudes [AB] of the catalogue, by band (``{"i": ..., "y": ...}``)."""
        return {k.split("_", 1)[0]: float(v) for k, v in self.catalog.items() if k.endswith("_kronflux_mag")}


def _find_band_file(folder: Path, pattern: re.Pattern, band: str, what: str) -> Path:
    found = sorted(p for p in folder.iterdir() if (m := pattern.match(p.name)) and m.group(1) == band.upper())
    if len(found) != 1:
        names = sorted(p.name for p in folder.iterdir())
        raise DataError(f"{folder}: expected exactly one {what} file for band {band!r}, found {len(found)}; files: {names}")
    return found[0]


def _square_crop(shape: tuple[int, int], x: float, y: float) -> tuple[int, int, int]:
    """Largest square inside ``shape`` whose centre is nearest to pixel (x, y): (row0, col0, n)."""
    n = min(shape)

    def start(center: float, length: int) -> int:
        # Centre of pixels start..start+n-1 is start + (n - 1) / 2.
        return int(np.clip(round(center - (n - 1) / 2), 0, length - n))

    return start(y, shape[0]), start(x, shape[1]), n


def load_target(name: str, root: str | Path | None = None, *, square: bool = True) -> HSCTarget:
    """Load one HSC target from ``root/name`` (default root ``paths.hsc_dir()``).

    Images are read from HDU 1 of each ``cutout-HSC-<B>-*.fits`` (HDUs 2-3, mask and
    variance, are empty in these cutouts), PSFs from HDU 0 of ``psf-calexp-*-HSC-<B>-*.fits``.
    With ``square`` (default) the cutouts, which need not be square (e.g. 228 x 239 px),
    are cropped to the largest square whose centre is nearest to the catalogue position,
    and the WCS is sliced accordingly. The noise is :func:`estimate_noise_sigma` with
    sources masked.

    Raises
    ------
    FileNotFoundError : ``root`` missing (names it and DIFFDECON_DATA).
    DataError : unknown target, missing/duplicated files, missing image extension, NaNs,
        band shapes or WCS that differ (the message names the files and values).
    """
    root = _root(root)
    folder = root / name
    present = list_targets(root)
    if name not in present:
        raise DataError(f"unknown target {name!r} under {root}; present targets: {present}")
    catalogs = _catalog_files(folder)
    if len(catalogs) != 1:
        raise DataError(f"{folder}: expected one catalogue CSV, found {[p.name for p in catalogs]}")
    cat = read_catalog(catalogs[0])
    files: dict[str, Path] = {"catalog": catalogs[0]}
    stack, wcss, psfs = _read_bands(folder, files)
    ra, dec = float(cat["ra"]), float(cat["dec"])
    ref = _catalog_pixel(folder, wcss, ra, dec)
    wcs = wcss[-1]
    row0, col0 = 0, 0
    if square and stack.shape[1] != stack.shape[2]:
        row0, col0, n = _square_crop(stack.shape[1:], ref[0], ref[1])
        stack = stack[:, row0 : row0 + n, col0 : col0 + n]
        wcs = wcs.slice((slice(row0, row0 + n), slice(col0, col0 + n)))
    stack = np.ascontiguousarray(stack)
    hst = _read_hst(folder, files)
    noise = np.array([estimate_noise_sigma(im, mask_sources=True) for im in stack])
    return HSCTarget(name=name, object_id=int(cat["object_id"]), ra=ra, dec=dec, z=float(cat["specz_redshift"]),
                     i_mag=float(cat["i_kronflux_mag"]), images=stack, psfs=psfs, wcs=wcs,
                     pixel_scale_arcsec=pixel_scale_arcsec(wcs), noise_sigma=noise, hst=hst, files=files,
                     catalog=cat, crop_offset=(row0, col0))


def _read_bands(folder: Path, files: dict[str, Path]) -> tuple[np.ndarray, list[WCS], np.ndarray]:
    """Images ``(3, N, M)`` [coadd flux/px], their WCSs and PSFs ``(3, k, k)`` of the bands
    ``config.BANDS``; records the files read in ``files``."""
    images, wcss, psfs = [], [], []
    for band in config.BANDS:
        img_path = _find_band_file(folder, CUTOUT_RE, band, "cutout")
        psf_path = _find_band_file(folder, _PSF_RE, band, "PSF")
        files[f"image_{band}"], files[f"psf_{band}"] = img_path, psf_path
        image, wcs = _read_hsc_cutout(img_path, band)
        images.append(image)
        wcss.append(wcs)
        psfs.append(read_psf(psf_path))
    for what, arrays in (("image", images), ("PSF", psfs)):
        shapes = {b: a.shape for b, a in zip(config.BANDS, arrays)}
        if len(set(shapes.values())) != 1:
            raise DataError(f"{folder}: {what} shapes differ between bands: {shapes}")
    return np.stack(images), wcss, np.stack(psfs)


def _catalog_pixel(folder: Path, wcss: list[WCS], ra: float, dec: float) -> np.ndarray:
    """Pixel (x, y) of the catalogue position, checked to agree between the bands' WCSs."""
    positions = {b: np.array(w.world_to_pixel_values(ra, dec), float) for b, w in zip(config.BANDS, wcss)}
    ref = positions[config.BANDS[-1]]
    for b, pos in positions.items():
        if np.abs(pos - ref).max() > 0.01:  # the bands of a coadd share one pixel grid
            raise DataError(f"{folder}: WCS of band {b} puts the target at {pos}, band i at {ref}")
    return ref


def _read_hst(folder: Path, files: dict[str, Path]) -> HSTImage | None:
    """The target's HST cutout, or None when it has none."""
    hst_files = sorted(folder.glob(HST_GLOB))
    if len(hst_files) > 1:
        raise DataError(f"{folder}: more than one HST cutout: {[p.name for p in hst_files]}")
    if not hst_files:
        return None
    files["hst"] = hst_files[0]
    return load_hst(hst_files[0])


def catalog_position_pixel(target: HSCTarget) -> tuple[float, float]:
    """``(x, y)`` [px, 0-based, x = column] of the catalogue RA/Dec in ``target.images``."""
    x, y = target.wcs.world_to_pixel_values(target.ra, target.dec)
    return float(x), float(y)


def aperture_flux(image: np.ndarray, center_xy: tuple[float, float], radius_px: float) -> float:
    """Sum of ``image`` over pixels whose centres lie within ``radius_px`` of ``(x, y)`` [image units]."""
    yy, xx = np.indices(image.shape)
    inside = (xx - center_xy[0]) ** 2 + (yy - center_xy[1]) ** 2 < radius_px**2
    return float(image[inside].sum())


# --------------------------------------------------------------------------- TNG


def load_tng_idealized(
    path: str | Path,
    bands: Sequence[str] = ("g", "r", "i"),
    *,
    faint_mag: float = 40.0,
) -> np.ndarray:
    """Read a TNG idealized image and return linear flux [Jy per pixel], float64 ``(C, H, W)``.

    Each band is the extension ``SUBARU_HSC.<B>`` holding AB magnitudes per pixel; the flux
    is ``10**((m - 8.9) / -2.5)`` Jy. Pixels that are non-finite (empty pixels stored as
    inf/NaN) or fainter than ``faint_mag`` [AB mag/px] are set to zero flux: 40 mag/px is
    3.6e-13 Jy, about 1e-3 of the HSC background noise per pixel (0.01 coadd units,
    i.e. 32 mag/px), so nothing observable is lost.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TNG idealized image not found: {path}")
    out = []
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        for band in bands:
            ext = TNG_EXTENSION.format(band=band.upper())
            if ext not in names:
                raise DataError(f"{path}: no extension {ext!r} for band {band!r}; extensions found: {names}")
            data = hdul[ext].data
            if data is None or data.ndim != 2:
                raise DataError(f"{path}: extension {ext!r} is not a 2-D image (shape {None if data is None else data.shape})")
            mag = np.asarray(data, dtype=np.float64)
            usable = np.isfinite(mag) & (mag < faint_mag)
            flux = np.zeros_like(mag)
            flux[usable] = mag_to_flux(mag[usable], AB_ZEROPOINT_JY)  # AB mag -> Jy
            out.append(flux)
    shapes = {b: f.shape for b, f in zip(bands, out)}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{path}: band shapes differ: {shapes}")
    return np.stack(out)


