"""The synthetic galaxy universe: idealized g, r, i images drawn with GalSim.

This is the embedded stand-in for the TNG100 idealized images of the paper (which cannot
be downloaded here). Every figure built from it must say so (``plotting.mark_synthetic``).

Each galaxy is a sum of up to four components, drawn on the profile's physical grid
(``profile.image_size`` px at ``profile.pixel_scale_kpc`` kpc/px), without noise and
without PSF (the pixel response is included: pixel-integrated flux):

* a **bulge**: a Sersic profile, an oblate spheroid of intrinsic axis ratio ``bulge_q0``
  seen at the disk's inclination (apparent ``q^2 = cos^2 i + q0^2 sin^2 i``);
* a **disk**: ``galsim.InclinedExponential`` (thickness ``h/r_s``), optionally modulated by
  **spiral arms**, a logarithmic spiral multiplied into the disk image in the disk plane,
  ``M = 1 + A T(r) [w(psi)/<w> - 1]``, ``w = ((1 + cos psi)/2)^s``,
  ``psi = m (phi - ln(r / r_in) / tan(pitch)) - phi_0`` and taper ``T = 1 - exp(-(r/r_in)^2)``,
  with the amplitude faded as ``A cos i`` (arms wash out edge-on), after which the disk
  image is rescaled to its unmodulated flux;
* **star-forming knots**: ``galsim.RandomKnots`` points following the disk's exponential
  profile, inclined and rotated with the disk, each convolved with a Gaussian of
  ``KNOT_SIGMA_PX`` = 0.25 px (well below a pixel; a point source cannot be drawn by FFT).
  The pixel-integrated Gaussians are evaluated in closed form (separable ``erf``s),
  which is what GalSim's FFT drawing of ``Convolve(knots, Gaussian)`` computes, without
  an FFT per knot (``tests/test_galaxies.py`` checks the two agree);
* a **bar**: an elongated Sersic (``n`` 0.5 or 1) in the disk plane, inclined with the disk.

Speed: each component is drawn once as a single-band (i) image and the three bands are
linear combinations with per-component colours; the bulge Sersic index is taken from a
grid of 6 values so that GalSim's Sersic tables are reused; the GalSim accuracy
parameters are relaxed (``GSPARAMS``: peak-relative pixel errors about 2e-3 for n = 4);
chunks of ``CHUNK_SIZE`` galaxies are drawn in parallel, chunk ``k`` seeded from
``(seed, split, k)``, so the result does not depend on the number of workers.

The parameters of each galaxy are drawn by :mod:`diffdecon.galaxy_catalog` (distributions
documented there). Fluxes are linear flux per model pixel in HSC coadd units
(:mod:`diffdecon.units`); an image's sum is the requested flux minus what falls outside
the field (small for the clipped sizes: below 1% for a 3 kpc disk in the 38.4 kpc field of
the smoke and quick profiles).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import galsim
import numpy as np
from scipy.special import erf, gammaln

from . import cache, paths
from .config import BANDS, Profile, get_profile
from .galaxy_catalog import CATALOG_DTYPE, band_weights, component_fluxes, sample_params

GENERATOR_VERSION = "galaxies-1"
"""Changes whenever the drawn images would change for the same seed (cache key)."""

CHUNK_SIZE = 100
"""Galaxies per parallel chunk; chunk ``k`` is seeded from ``(seed, split, k)``."""

KNOT_SIGMA_PX = 0.25
"""Gaussian sigma of a star-forming knot [model px] (well below a pixel)."""

SPLITS = {"train": 0, "test": 1}
"""Dataset splits and the id that separates their seed streams."""

GSPARAMS = galsim.GSParams(folding_threshold=2e-2, maxk_threshold=1e-2)
"""Relaxed GalSim accuracy (defaults 5e-3, 1e-3): peak-relative errors about 2e-3."""

def _pixel_coords(profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (x, y) [kpc] of the pixel centres from the image centre, shape (H, W)."""
    n, s = profile.image_size, profile.pixel_scale_kpc
    a = (np.arange(n) - (n - 1) / 2.0) * s
    return np.meshgrid(a, a)  # x along columns, y along rows (GalSim convention)


def _arm_modulation(p, profile: Profile) -> np.ndarray:
    """Logarithmic-spiral modulation M(x, y) >= 0 of the disk image (see module docstring)."""
    x, y = _pixel_coords(profile)
    pa = math.radians(p["pa_deg"])
    # Deproject into the disk plane: rotate by -PA, stretch the minor axis by 1/cos i.
    u = x * math.cos(pa) + y * math.sin(pa)
    v = (-x * math.sin(pa) + y * math.cos(pa)) / max(float(p["cos_i"]), 0.05)
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    r_in = p["bar_re_kpc"] if p["has_bar"] else 0.5 * p["disk_re_kpc"]
    s = float(p["arm_sharpness"])
    # psi: phase of the log spiral r = r_in exp((phi - phi_0/m) tan(pitch)).
    psi = p["n_arms"] * (phi - np.log(np.maximum(r, 1e-3) / r_in) / math.tan(math.radians(p["arm_pitch_deg"])))
    psi -= math.radians(p["arm_phase_deg"])
    w = ((1.0 + np.cos(psi)) / 2.0) ** s
    mean_w = math.exp(gammaln(s + 0.5) - gammaln(s + 1.0)) / math.sqrt(math.pi)  # <w> over psi
    taper = 1.0 - np.exp(-((r / r_in) ** 2))
    # Seen edge-on the arms are averaged along the line of sight: amplitude A cos i.
    amp = float(p["arm_amp"]) * float(p["cos_i"])
    return 1.0 + amp * taper * (w / mean_w - 1.0)


def knot_positions(p) -> np.ndarray:
    """Positions (x, y) [kpc] of the knots of one catalog row, on the sky, shape (n_knots, 2).

    ``galsim.RandomKnots`` samples the points from the face-on exponential disk (seeded by
    ``knot_seed``); they are then inclined (y scaled by cos i) and rotated by the PA.
    """
    prof = galsim.Exponential(half_light_radius=float(p["disk_re_kpc"]), gsparams=GSPARAMS)
    knots = galsim.RandomKnots(int(p["n_knots"]), profile=prof, rng=galsim.BaseDeviate(int(p["knot_seed"])))
    pts = np.array(knots.points, dtype=np.float64)
    pa = math.radians(p["pa_deg"])
    xi, eta = pts[:, 0], pts[:, 1] * float(p["cos_i"])
    return np.stack([xi * math.cos(pa) - eta * math.sin(pa), xi * math.sin(pa) + eta * math.cos(pa)], axis=1)


def _draw_points(xy_kpc: np.ndarray, fluxes: np.ndarray, profile: Profile, sigma_px: float) -> np.ndarray:
    """Pixel-integrated Gaussians of sigma ``sigma_px`` [px] at ``xy_kpc`` [kpc], (H, W)."""
    n = profile.image_size
    centre = (n - 1) / 2.0
    cx = centre + xy_kpc[:, 0] / profile.pixel_scale_kpc  # column coordinate [px]
    cy = centre + xy_kpc[:, 1] / profile.pixel_scale_kpc  # row coordinate [px]
    edges = np.arange(n + 1) - 0.5
    k = 1.0 / (math.sqrt(2.0) * sigma_px)
    px = np.diff(0.5 * erf((edges[None, :] - cx[:, None]) * k), axis=1)  # (K, W)
    py = np.diff(0.5 * erf((edges[None, :] - cy[:, None]) * k), axis=1)  # (K, H)
    return np.einsum("kh,k,kw->hw", py, fluxes, px)


def draw_components(params, profile: str | Profile) -> dict[str, np.ndarray]:
    """Single-band (i) images of each component of one galaxy [flux per model px].

    Returns a dict ``{"bulge", "disk", "knots", "bar"} -> (H, W)`` float64 arrays, each
    holding that component's i-band flux (zeros when the component is absent).
    """
    profile = get_profile(profile)
    p = params
    n, scale = profile.image_size, profile.pixel_scale_kpc
    fl = component_fluxes(p)
    pa = float(p["pa_deg"]) * galsim.degrees
    cos_i = float(p["cos_i"])
    out = {k: np.zeros((n, n)) for k in ("bulge", "disk", "knots", "bar")}

    def draw(obj) -> np.ndarray:
        return obj.drawImage(nx=n, ny=n, scale=scale, method="auto").array.astype(np.float64)

    if fl["bulge"] > 0:
        q_b = math.sqrt(cos_i**2 + float(p["bulge_q0"]) ** 2 * (1.0 - cos_i**2))
        bulge = galsim.Sersic(float(p["bulge_n"]), half_light_radius=float(p["bulge_re_kpc"]),
                              flux=fl["bulge"], gsparams=GSPARAMS).shear(q=q_b, beta=pa)
        out["bulge"] = draw(bulge)
    if fl["disk"] > 0:
        disk = galsim.InclinedExponential(
            math.acos(min(cos_i, 1.0)) * galsim.radians, half_light_radius=float(p["disk_re_kpc"]),
            scale_h_over_r=float(p["disk_h_over_r"]), flux=fl["disk"], gsparams=GSPARAMS,
        ).rotate(pa)
        img = draw(disk)
        if p["has_arms"]:
            total = img.sum()
            img = img * _arm_modulation(p, profile)
            img *= total / img.sum()  # the arms redistribute, not add, disk light
        out["disk"] = img
    if fl["knots"] > 0 and p["n_knots"] > 0:
        xy = knot_positions(p)
        out["knots"] = _draw_points(xy, np.full(len(xy), fl["knots"] / len(xy)), profile, KNOT_SIGMA_PX)
    if fl["bar"] > 0:
        # The bar is a thin (vertical/length 0.1) structure in the disk plane, seen inclined.
        q_bar_incl = math.sqrt(cos_i**2 + 0.1**2 * (1.0 - cos_i**2))
        bar = (galsim.Sersic(float(p["bar_n"]), half_light_radius=float(p["bar_re_kpc"]), flux=fl["bar"],
                             gsparams=GSPARAMS)
               .shear(q=float(p["bar_q"]), beta=float(p["bar_angle_deg"]) * galsim.degrees)
               .transform(1.0, 0.0, 0.0, q_bar_incl).rotate(pa)
               .withFlux(fl["bar"]))  # transform() scales the flux by det J: restore it
        out["bar"] = draw(bar)
    return out


def draw_galaxy(params, profile: str | Profile) -> np.ndarray:
    """The idealized image of one galaxy: float32 ``(3, H, W)`` in bands g, r, i.

    Parameters
    ----------
    params : one row of a catalog (:func:`sample_params`) or a dict with its fields.
    profile : :class:`~diffdecon.config.Profile` or its name (grid: ``image_size`` px at
        ``pixel_scale_kpc`` kpc/px).

    Returns
    -------
    numpy.ndarray, float32 ``(3, H, W)``: linear flux per model pixel [HSC coadd units],
    no noise, no PSF. Its i-band sum is ``10**(-0.4 (i_mag - 27))`` minus the flux outside
    the field.
    """
    profile = get_profile(profile)
    comps = draw_components(params, profile)
    image = np.zeros((len(BANDS),) + comps["disk"].shape)
    for name in comps:
        w = band_weights(params[f"{'knot' if name == 'knots' else name}_g_r"],
                          params[f"{'knot' if name == 'knots' else name}_r_i"])
        image += w[:, None, None] * comps[name][None]
    return np.maximum(image, 0.0).astype(np.float32)  # FFT ringing can leave ~1e-9 negatives


# ---------------------------------------------------------------------------------------
# Datasets


@dataclass
class GalaxyDataset:
    """A built synthetic dataset.

    Attributes
    ----------
    images : numpy.ndarray
        float32 ``(N, 3, H, W)``, bands g, r, i, linear flux per model pixel [HSC coadd
        units] (a read-only memory map of the cached ``.npy``).
    catalog : numpy structured array ``(N,)`` of :data:`CATALOG_DTYPE` (regenerated from
        the seed streams, which is cheap and exact).
    manifest : dict (the cache manifest: ``inputs`` and ``inputs_hash``).
    manifest_hash : str
    path : pathlib.Path of the cached images.
    """

    images: np.ndarray
    catalog: np.ndarray
    manifest: dict[str, Any]
    manifest_hash: str
    path: Path

    def __len__(self) -> int:
        return len(self.images)


def _chunk_rng(seed: int, split: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(chunk)]))


def _chunk_catalog(seed: int, split: str, chunk: int, n: int) -> np.ndarray:
    return sample_params(_chunk_rng(seed, split, chunk), n)


def catalog_for(n: int, seed: int, split: str = "train") -> np.ndarray:
    """The catalog of the first ``n`` galaxies of a split (as :func:`build_dataset` draws it)."""
    _check_split(split)
    sizes = _chunk_sizes(n)
    parts = [_chunk_catalog(seed, split, k, m) for k, m in enumerate(sizes)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=CATALOG_DTYPE)


def _chunk_sizes(n: int) -> list[int]:
    return [min(CHUNK_SIZE, n - s) for s in range(0, n, CHUNK_SIZE)]


def _draw_chunk(task: tuple) -> np.ndarray:
    """Worker: images of chunk ``k`` (float32 ``(m, 3, H, W)``)."""
    profile, seed, split, k, m = task
    cat = _chunk_catalog(seed, split, k, m)
    out = np.empty((m, len(BANDS), profile.image_size, profile.image_size), dtype=np.float32)
    for j in range(m):
        out[j] = draw_galaxy(cat[j], profile)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted values: {', '.join(SPLITS)}")


def dataset_path(profile: str | Profile, inputs: dict[str, Any], split: str) -> Path:
    """Cache path ``<cache>/galaxies/<profile>-<split>-<hash>.npy`` of a dataset."""
    profile = get_profile(profile)
    return paths.cache_dir() / "galaxies" / f"{profile.name}-{split}-{cache.hash_inputs(inputs)}.npy"


def dataset_inputs(profile: str | Profile, n: int, seed: int, split: str) -> dict[str, Any]:
    """The manifest inputs of a dataset (everything its pixels depend on)."""
    profile = get_profile(profile)
    return {
        "profile": profile.name,
        "image_size": profile.image_size,
        "pixel_scale_kpc": profile.pixel_scale_kpc,
        "bands": list(profile.bands),
        "n": int(n),
        "seed": int(seed),
        "split": split,
        "generator": GENERATOR_VERSION,
        "chunk_size": CHUNK_SIZE,
        "galsim": galsim.__version__,
    }


def build_dataset(profile: str | Profile, n: int | None = None, seed: int | None = None, split: str = "train",
                  force: bool = False, workers: int | None = None) -> GalaxyDataset:
    """Build (or load from the cache) a synthetic dataset of idealized galaxies.

    Parameters
    ----------
    profile : :class:`~diffdecon.config.Profile` or its name.
    n : int, optional
        Number of galaxies; default ``profile.dataset_size`` for ``train`` and
        ``max(64, 4 * profile.n_mock)`` for ``test``.
    seed : int, optional
        Master seed (default ``profile.seed``). The splits use separate seed streams.
    split : ``"train"`` or ``"test"``.
    force : bool
        Rebuild even if a matching cache exists.
    workers : int, optional
        Worker processes (default: all CPU cores, at most one per chunk). The images do
        not depend on it.

    Returns a :class:`GalaxyDataset`, cached as
    ``paths.cache_dir()/galaxies/<profile>-<split>-<hash>.npy`` with a manifest beside it
    (prints ``cache hit`` or ``recomputed``). Raises ``ValueError`` for an unknown profile or
    split or a non-positive ``n`` / ``workers``, ``cache.CacheMismatchError`` if the cached
    file's manifest records other inputs.
    """
    profile = get_profile(profile)
    _check_split(split)
    if n is None:
        n = profile.dataset_size if split == "train" else max(64, 4 * profile.n_mock)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    seed = profile.seed if seed is None else int(seed)
    sizes = _chunk_sizes(n)
    if workers is None:
        workers = os.cpu_count() or 1
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = min(int(workers), len(sizes))
    inputs = dataset_inputs(profile, n, seed, split)
    path = dataset_path(profile, inputs, split)

    def build(tmp: Path) -> None:
        _draw_dataset(tmp, profile, seed, split, sizes, workers)

    cache.cached(path, inputs, build, force=force, what=f"galaxies {profile.name}/{split} (n={n})")
    manifest = cache.read_manifest(path)
    images = np.load(path, mmap_mode="r")
    if images.shape != (n, len(BANDS), profile.image_size, profile.image_size) or images.dtype != np.float32:
        raise cache.CacheMismatchError(f"{path} holds {images.dtype} {images.shape}, not the dataset asked for")
    return GalaxyDataset(
        images=images,
        catalog=catalog_for(n, seed, split),
        manifest=manifest,
        manifest_hash=manifest["inputs_hash"],
        path=path,
    )


def _draw_dataset(tmp: Path, profile: Profile, seed: int, split: str, sizes: list[int], workers: int) -> None:
    """Draw the chunks of ``sizes`` galaxies into a float32 ``.npy`` memory map at ``tmp``,
    with ``workers`` processes (chunks are independent, so the result does not depend on it)."""
    from tqdm.auto import tqdm

    n = sum(sizes)
    shape = (n, len(BANDS), profile.image_size, profile.image_size)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    tasks = [(profile, seed, split, k, m) for k, m in enumerate(sizes)]
    bar = tqdm(total=n, desc=f"galaxies {profile.name}/{split}", unit="img")
    pool = None
    try:
        if workers == 1:
            results = map(_draw_chunk, tasks)
        else:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            pool = mp.get_context(method).Pool(workers)
            results = pool.imap(_draw_chunk, tasks)
        start = 0
        for chunk in results:
            out[start:start + len(chunk)] = chunk
            start += len(chunk)
            bar.update(len(chunk))
        out.flush()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        del out
