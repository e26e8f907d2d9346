"""Real data: HSC PDR3 COSMOS cutouts, their PSFs and catalogues, HST cutouts, TNG images.

Units
-----
* HSC images are in **HSC coadd flux units** per HSC pixel: ``mag_AB = 27 - 2.5 log10(flux)``
  (:data:`HSC_ZEROPOINT`); the headers' ``FLUXMAG0 = 10**(0.4 * 27)`` says the same.
* HSC pixel scale is measured from each cutout's WCS [arcsec/px] (0.168 for PDR3 coadds).
* PSFs are dimensionless kernels on the HSC pixel grid, normalised to sum 1.
* HST cutouts (ACS F814W, COSMOS) are in the file's own units (electrons/s per 0.03 arcsec
  pixel for the COSMOS mosaics); they are used for visual comparison only.
* TNG idealized images: AB magnitudes per pixel on disk, returned as linear flux in
  **Jy per pixel** (``flux = 10**((m - 8.9) / -2.5)``, 8.9 being the AB zero point in Jy).

Layout of the data folder (``paths.hsc_dir()``)::

    <target>/cutout-HSC-{G,R,I}-9813-pdr3_dud_rev[-N].fits   image in HDU 1
    <target>/psf-calexp-pdr3_dud_rev-HSC-{G,R,I}-9813[-N].fits  43x43 PSF in HDU 0
    <target>/<anything>.csv                                   one-row catalogue
    <target>/HST-channel-I[-N].fits                           optional HST cutout

A *target* is a sub-folder holding a catalogue CSV file: the names are discovered, never
hard-coded. Files are fetched from the public repository with :func:`download_targets`
and verified against the committed SHA-256 sums (``data/checksums/``).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage
from tqdm.auto import tqdm

from diffdecon import cache, config, paths

HSC_ZEROPOINT: float = 27.0
"""AB magnitude of one HSC coadd flux unit: ``mag = 27 - 2.5 log10(flux)``."""

AB_ZEROPOINT_JY: float = 8.9
"""AB magnitude zero point in Jy: ``m_AB = -2.5 log10(f / Jy) + 8.9``."""

REPOSITORY: str = "astrodeepnet/diffusion4astro"
COMMIT: str = "f2a96b38af909c06f04f3455ac07041b556dae5f"
DEFAULT_BASE_URL: str = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/HSC%20PDR3"
"""Public location of the target folders (``HSC PDR3/<target>/<file>``, space URL-encoded)."""

CHECKSUMS_FILE: Path = paths.CHECKSUMS / "SHA256SUMS-hsc_pdr3_cosmos"
"""Committed SHA-256 sums, paths relative to ``hsc_pdr3_cosmos/``."""

HSC_SUBDIR: str = "hsc_pdr3_cosmos"

TNG_EXTENSION: str = "SUBARU_HSC.{band}"
"""Extension name of one band in a TNG idealized FITS file (band upper-case)."""

_HSC_IMAGE_HDU = 1
_CUTOUT_RE = re.compile(r"^cutout-HSC-([GRIZY])-\d+-pdr3_dud_rev(-\d+)?\.fits$")
_PSF_RE = re.compile(r"^psf-calexp-pdr3_dud_rev-HSC-([GRIZY])-\d+(-\d+)?\.fits$")
_HST_GLOB = "HST-channel-I*.fits"


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent (the message names the file)."""


class DataDownloadError(RuntimeError):
    """A download failed (network, missing remote file or checksum); ``.report`` holds details."""

    def __init__(self, message: str, report: "DownloadReport | None" = None):
        super().__init__(message)
        self.report = report


class ChecksumError(DataDownloadError):
    """A file's SHA-256 differs from the committed checksum."""


class RemoteFileNotFound(FileNotFoundError):
    """The remote server answered that a file does not exist (HTTP 404 or missing file:// path)."""


# --------------------------------------------------------------------------- units


def flux_to_mag(flux: np.ndarray | float) -> np.ndarray | float:
    """AB magnitude of an HSC coadd flux [coadd units]: ``27 - 2.5 log10(flux)``."""
    return HSC_ZEROPOINT - 2.5 * np.log10(flux)


def mag_to_flux(mag: np.ndarray | float) -> np.ndarray | float:
    """HSC coadd flux [coadd units] of an AB magnitude: ``10**(-0.4 (mag - 27))``."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - HSC_ZEROPOINT))


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


def _describe_hdus(hdul: fits.HDUList) -> str:
    parts = []
    for i, hdu in enumerate(hdul):
        shape = None if hdu.data is None else tuple(hdu.data.shape)
        parts.append(f"[{i}] {hdu.name or '(no name)'} shape={shape}")
    return "; ".join(parts)


def _check_finite(data: np.ndarray, path: Path, what: str) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(
            f"{path}: {what} has {int(bad.sum())} non-finite pixel(s) (NaN/inf) out of {data.size}; "
            "masked pixels are not supported by the likelihood: use another cutout"
        )


def _read_hsc_cutout(path: Path, band: str) -> tuple[np.ndarray, WCS]:
    """Image [coadd flux/px] and WCS of an HSC cutout; the image lives in HDU 1."""
    with fits.open(path) as hdul:
        if len(hdul) <= _HSC_IMAGE_HDU or hdul[_HSC_IMAGE_HDU].data is None or hdul[_HSC_IMAGE_HDU].data.ndim != 2:
            raise DataError(
                f"{path}: expected the HSC image as a 2-D array in HDU {_HSC_IMAGE_HDU}; "
                f"extensions found: {_describe_hdus(hdul)}"
            )
        filt = str(hdul[0].header.get("FILTER", band)).strip().lower()
        if filt != band.lower():
            raise DataError(f"{path}: header FILTER={filt!r} but the file was taken as band {band!r}")
        data = np.asarray(hdul[_HSC_IMAGE_HDU].data, dtype=np.float64)
        wcs = WCS(hdul[_HSC_IMAGE_HDU].header)
    _check_finite(data, path, "image")
    return data, wcs


def _read_psf(path: Path) -> np.ndarray:
    """A PSF [dimensionless] normalised to sum 1 from the first 2-D HDU of ``path``."""
    with fits.open(path) as hdul:
        arrays = [h.data for h in hdul if h.data is not None and h.data.ndim == 2]
        if not arrays:
            raise DataError(f"{path}: no 2-D PSF array; extensions found: {_describe_hdus(hdul)}")
        psf = np.asarray(arrays[0], dtype=np.float64)
    _check_finite(psf, path, "PSF")
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
            raise DataError(f"{path}: no 2-D image in any HDU; extensions found: {_describe_hdus(hdul)}")
        hdu = hdus[0]
        data = np.asarray(hdu.data, dtype=np.float64)
        header = hdu.header
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise DataError(f"{path}: the image HDU has no celestial WCS")
    _check_finite(data, path, "HST image")
    band = "F814W"
    for key in ("FILTER2", "FILTER1", "FILTER"):
        value = str(header.get(key, "")).strip().upper()
        if value.startswith("F") and value[1:4].isdigit():
            band = value
            break
    return HSTImage(image=data, wcs=wcs, pixel_scale_arcsec=pixel_scale_arcsec(wcs), band=band, path=path)


# --------------------------------------------------------------------------- noise


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
    keeps the faint wings of sources and overestimates the noise (by 25-35% on the HSC
    targets). On pure Gaussian noise both estimates are low by about 1.5% (the 3-sigma
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

    images, wcss, psfs = [], [], []
    for band in config.BANDS:
        img_path = _find_band_file(folder, _CUTOUT_RE, band, "cutout")
        psf_path = _find_band_file(folder, _PSF_RE, band, "PSF")
        files[f"image_{band}"], files[f"psf_{band}"] = img_path, psf_path
        image, wcs = _read_hsc_cutout(img_path, band)
        images.append(image)
        wcss.append(wcs)
        psfs.append(_read_psf(psf_path))
    shapes = {b: im.shape for b, im in zip(config.BANDS, images)}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{folder}: image shapes differ between bands: {shapes}")
    psf_shapes = {b: p.shape for b, p in zip(config.BANDS, psfs)}
    if len(set(psf_shapes.values())) != 1:
        raise DataError(f"{folder}: PSF shapes differ between bands: {psf_shapes}")

    ra, dec = float(cat["ra"]), float(cat["dec"])
    positions = {b: np.array(w.world_to_pixel_values(ra, dec), float) for b, w in zip(config.BANDS, wcss)}
    ref = positions[config.BANDS[-1]]
    for b, pos in positions.items():
        if np.abs(pos - ref).max() > 0.01:  # the bands of a coadd share one pixel grid
            raise DataError(f"{folder}: WCS of band {b} puts the target at {pos}, band i at {ref}")
    wcs = wcss[-1]
    stack = np.stack(images)
    row0, col0 = 0, 0
    if square and stack.shape[1] != stack.shape[2]:
        row0, col0, n = _square_crop(stack.shape[1:], ref[0], ref[1])
        stack = stack[:, row0 : row0 + n, col0 : col0 + n]
        wcs = wcs.slice((slice(row0, row0 + n), slice(col0, col0 + n)))
    stack = np.ascontiguousarray(stack)

    hst = None
    hst_files = sorted(folder.glob(_HST_GLOB))
    if len(hst_files) > 1:
        raise DataError(f"{folder}: more than one HST cutout: {[p.name for p in hst_files]}")
    if hst_files:
        hst = load_hst(hst_files[0])
        files["hst"] = hst_files[0]

    noise = np.array([estimate_noise_sigma(im, mask_sources=True) for im in stack])
    return HSCTarget(
        name=name,
        object_id=int(cat["object_id"]),
        ra=ra,
        dec=dec,
        z=float(cat["specz_redshift"]),
        i_mag=float(cat["i_kronflux_mag"]),
        images=stack,
        psfs=np.stack(psfs),
        wcs=wcs,
        pixel_scale_arcsec=pixel_scale_arcsec(wcs),
        noise_sigma=noise,
        hst=hst,
        files=files,
        catalog=cat,
        crop_offset=(row0, col0),
    )


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
            flux[usable] = 10.0 ** ((mag[usable] - AB_ZEROPOINT_JY) / -2.5)  # AB mag -> Jy
            out.append(flux)
    shapes = {b: f.shape for b, f in zip(bands, out)}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{path}: band shapes differ: {shapes}")
    return np.stack(out)


# --------------------------------------------------------------------------- downloads


def sha256sum(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return cache.sha256_file(path)


def _default_fetch(url: str, out: BinaryIO, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``out``; a missing remote file raises :class:`RemoteFileNotFound`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 16):
                out.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise RemoteFileNotFound(f"{url}: HTTP 404 Not Found") from exc
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, FileNotFoundError) or getattr(reason, "errno", None) == errno.ENOENT:
            raise RemoteFileNotFound(f"{url}: no such file") from exc
        raise


def file_url(base_url: str, relpath: str) -> str:
    """URL of ``relpath`` (``<target>/<file>``) below ``base_url``, each component URL-encoded."""
    return base_url.rstrip("/") + "/" + "/".join(urllib.parse.quote(part) for part in relpath.split("/"))


def hst_candidates(target_files: Sequence[str]) -> list[str]:
    """HST file names to try for a target, from the suffix of its cutout names.

    ``cutout-HSC-G-9813-pdr3_dud_rev-3.fits`` gives ``["HST-channel-I-3.fits", "HST-channel-I.fits"]``;
    a cutout without suffix gives ``["HST-channel-I.fits"]``.
    """
    suffixes = {m.group(2) or "" for f in target_files if (m := _CUTOUT_RE.match(Path(f).name))}
    names = [f"HST-channel-I{s}.fits" for s in sorted(suffixes)]
    if "HST-channel-I.fits" not in names:
        names.append("HST-channel-I.fits")
    return names


@dataclass
class FileResult:
    """Outcome for one file: ``status`` is one of ``downloaded``, ``present``, ``unverified``,
    ``present_unverified``, ``no_hst``, ``mismatch_present``, ``checksum_failed``, ``failed``."""

    relpath: str
    status: str
    url: str = ""
    expected: str | None = None
    actual: str | None = None
    message: str = ""


FAILED_STATUSES = ("mismatch_present", "checksum_failed", "failed")


@dataclass
class DownloadReport:
    """What :func:`download_targets` did, file by file."""

    dest: Path
    results: list[FileResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failures(self) -> list[FileResult]:
        return [r for r in self.results if r.status in FAILED_STATUSES]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        lines = [f"data folder: {self.dest}", "  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]
        for r in self.results:
            if r.status in FAILED_STATUSES or r.status in ("unverified", "present_unverified", "no_hst"):
                lines.append(f"  {r.status:18s} {r.relpath}" + (f"  ({r.message})" if r.message else ""))
        return "\n".join(lines)


def _download_one(url: str, target: Path, expected: str | None, fetch: Callable[[str, BinaryIO], None]) -> str:
    """Fetch ``url`` into ``target`` atomically; verify ``expected``; return the actual hash."""
    with cache.atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            fetch(url, out)
        actual = sha256sum(tmp)
        if expected is not None and actual != expected:
            # Leaving the block with an exception discards the temporary file.
            raise ChecksumError(
                f"checksum mismatch for {target.name} from {url}: expected sha256 {expected}, got {actual}; "
                "the download was discarded"
            )
    return actual


def _network_error(url: str, exc: BaseException, report: DownloadReport) -> DataDownloadError:
    return DataDownloadError(
        f"could not download {url}: {exc}. Check the network connection, or set DIFFDECON_DATA "
        "to a folder that already holds 'hsc_pdr3_cosmos/' (e.g. export DIFFDECON_DATA=../shared/data).",
        report,
    )


def download_targets(
    dest: str | Path,
    checksums_file: str | Path = CHECKSUMS_FILE,
    base_url: str = DEFAULT_BASE_URL,
    targets: Sequence[str] | None = None,
    include_hst: bool = True,
    fetch: Callable[[str, BinaryIO], None] | None = None,
) -> DownloadReport:
    """Download the target files listed in ``checksums_file`` into ``dest/hsc_pdr3_cosmos/``.

    ``dest`` is the data folder (what ``DIFFDECON_DATA`` points at). Each file is fetched
    from ``<base_url>/<target>/<file>`` (URL-encoded), written to a temporary file, its
    SHA-256 compared with the committed one, and only then renamed into place: a failed
    or interrupted download never leaves a partial file. Files already present with the
    right checksum are skipped; a present file with a wrong checksum is reported
    (``mismatch_present``) and left untouched: delete it to download again. With
    ``include_hst`` the HST cutouts not in the checksum file are tried
    (:func:`hst_candidates`); they are kept but flagged ``unverified``, and a missing one is
    ``no_hst`` (no HST comparison for that target), not an error.

    ``fetch(url, binary_file)`` writes the bytes of ``url`` into the open file and raises
    :class:`RemoteFileNotFound` if the remote file does not exist (default: urllib with a
    60 s timeout; ``file://`` base URLs work too).

    Raises
    ------
    ChecksumError : after all files were tried, if any checksum failed (``.report`` attached).
    DataDownloadError : on the first network error, or if a checksummed file is missing
        remotely (the message names the URL and says to check the network or set DIFFDECON_DATA).
    """
    dest = Path(dest)
    out_dir = dest / HSC_SUBDIR
    sums = read_checksums(checksums_file)
    listed = sorted({rel.split("/", 1)[0] for rel in sums})
    if targets is not None:
        unknown = [t for t in targets if t not in listed]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; the checksum file {checksums_file} lists {listed}")
        chosen = list(targets)
    else:
        chosen = listed
    fetch = fetch or _default_fetch
    report = DownloadReport(dest=out_dir)

    jobs: list[tuple[str, str | None]] = [(rel, sha) for rel, sha in sums.items() if rel.split("/", 1)[0] in chosen]
    for rel, expected in tqdm(jobs, desc="HSC files", unit="file"):
        path = out_dir / rel
        url = file_url(base_url, rel)
        if path.exists():
            actual = sha256sum(path)
            if actual == expected:
                report.results.append(FileResult(rel, "present", url, expected, actual))
            else:
                report.results.append(
                    FileResult(rel, "mismatch_present", url, expected, actual,
                               f"{path} exists with sha256 {actual}, expected {expected}; not overwritten, delete it to re-download")
                )
            continue
        try:
            actual = _download_one(url, path, expected, fetch)
        except ChecksumError as exc:
            report.results.append(FileResult(rel, "checksum_failed", url, expected, None, str(exc)))
            continue
        except RemoteFileNotFound as exc:
            report.results.append(FileResult(rel, "failed", url, expected, None, str(exc)))
            raise DataDownloadError(
                f"{url} does not exist on the server ({exc}); the checksum file lists it. "
                "Check the base URL, or set DIFFDECON_DATA to a folder that already holds the data.",
                report,
            ) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            report.results.append(FileResult(rel, "failed", url, expected, None, str(exc)))
            raise _network_error(url, exc, report) from exc
        report.results.append(FileResult(rel, "downloaded", url, expected, actual))

    if include_hst:
        for target in tqdm(chosen, desc="HST cutouts", unit="target"):
            files = [rel.split("/", 1)[1] for rel in sums if rel.split("/", 1)[0] == target]
            if any(Path(f).name.startswith("HST-channel-I") for f in files):
                continue  # a checksummed HST file was handled above
            existing = sorted((out_dir / target).glob(_HST_GLOB)) if (out_dir / target).is_dir() else []
            if existing:
                rel = f"{target}/{existing[0].name}"
                report.results.append(FileResult(rel, "present_unverified", file_url(base_url, rel), None,
                                                 sha256sum(existing[0]), "no committed checksum"))
                continue
            tried = []
            for name in hst_candidates(files):
                rel = f"{target}/{name}"
                url = file_url(base_url, rel)
                tried.append(url)
                try:
                    actual = _download_one(url, out_dir / rel, None, fetch)
                except RemoteFileNotFound:
                    continue
                except (urllib.error.URLError, OSError, TimeoutError) as exc:
                    report.results.append(FileResult(rel, "failed", url, None, None, str(exc)))
                    raise _network_error(url, exc, report) from exc
                report.results.append(FileResult(rel, "unverified", url, None, actual,
                                                 f"no committed checksum; sha256 {actual}"))
                break
            else:
                report.results.append(FileResult(f"{target}/HST-channel-I*.fits", "no_hst", "", None, None,
                                                 "no HST cutout on the server: no HST comparison for this target"))

    failed = report.by_status("checksum_failed")
    if failed:
        raise ChecksumError("\n".join(r.message for r in failed) + "\n" + report.summary(), report)
    return report
