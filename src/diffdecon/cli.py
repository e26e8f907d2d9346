"""Command line: ``diffdecon deconvolve``, ``diffdecon targets``, ``diffdecon deconvolve-target``.

Run ``diffdecon --help`` or ``diffdecon deconvolve --help``. Every failure caused by the
input prints one line ``diffdecon: error: <what is wrong and what is accepted>`` and exits
with status 2; no output file (not even a partial one) is left behind.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .config import BANDS, PROFILES

EXIT_INPUT_ERROR = 2

DESCRIPTION = """\
diffdecon: Bayesian deconvolution of galaxy images with a diffusion-model prior.

Given a galaxy observed in the g, r and i bands (one FITS image and one PSF per band) and
its redshift, `diffdecon deconvolve` draws samples of the idealized (PSF-free, finer-pixel)
galaxy image from the posterior and writes their mean, standard deviation and the
variance-ratio map (posterior / prior variance: near 0 where the data decide, near 1 where
the prior does) to one FITS file.
"""

DECONVOLVE_EPILOG = """\
example:
  diffdecon deconvolve \\
      --image cutout-HSC-G.fits cutout-HSC-R.fits cutout-HSC-I.fits \\
      --psf psf-HSC-G.fits psf-HSC-R.fits psf-HSC-I.fits \\
      --redshift 0.217 --samples 32 --seed 1 -o test1_posterior.fits

inputs:
  Images in linear flux per pixel (HSC coadd units: mag = 27 - 2.5 log10 flux), bands
  given in the order g r i; the image is read from the first HDU holding a 2-D array. If
  a header says FILTER/BAND (e.g. 'HSC-G' or 'g') it must match the position. PSFs: odd,
  square, on the image's pixel grid. The galaxy is taken at the image centre unless --ra
  and --dec are given (needs a celestial WCS). The pixel scale is read from the WCS;
  without one, give --pixel-scale.

output (one FITS file, written atomically):
  MEAN      (3, H, W) posterior mean [input flux per model pixel]
  STD       (3, H, W) posterior standard deviation [same units]
  VARRATIO  (H, W)    posterior / prior variance in the [0, 1] display space, band mean
  SAMPLES   (n, 3, H, W) the samples, with --save-samples
  The model grid has the profile's H = W pixels of pixel_scale_kpc proper kpc (a WCS centred
  on the galaxy is attached); the primary header records the checkpoint SHA-256, sampler,
  steps, seed, number of samples, package version, profile, redshift, pixel scale, flux
  scale, per-band reduced chi^2 and the aperture variance ratio.
"""

_BAND_KEYS = ("FILTER", "BAND", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAME")


class CLIError(Exception):
    """An input problem, reported as one line and exit status 2."""


# --------------------------------------------------------------------------- parsing


CHI2_WARNING: float = 10.0
"""A reduced chi^2 of A(posterior mean) against the data above this in any band is reported
as a warning (1 is a fit at the noise level)."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; accepted: a positive integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not positive; accepted: a positive integer")
    return v


def _sampler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prior and sampler")
    g.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="size of the model: image side, kpc per pixel, network (default: quick)")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="prior weights (a .pt file or a folder holding ema_weights.pt); "
                        "default: the committed checkpoint models/<profile>/")
    g.add_argument("--sampler", default="mmps", choices=["mmps", "dps"],
                   help="posterior sampler: MMPS (moment matching, default) or DPS")
    g.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: the profile's sampling_steps)")
    g.add_argument("--samples", type=_positive_int, default=None,
                   help="number of posterior samples (default: the profile's n_posterior)")
    g.add_argument("--prior-samples", type=_positive_int, default=None,
                   help="unconditional prior samples for the variance ratio (default: the profile's "
                        "n_prior; cached per checkpoint)")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help="posterior samples drawn together (default: all); results do not depend on it")
    g.add_argument("--zeta", type=float, default=None, help="DPS guidance scale (default: the sampler's)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", type=Path, required=True, help="output FITS file")
    o.add_argument("--save-samples", action="store_true", help="also write the samples (SAMPLES HDU)")
    o.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    o.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffdecon`` (sub-commands deconvolve, targets, deconvolve-target)."""
    parser = argparse.ArgumentParser(prog="diffdecon", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run `diffdecon <command> --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"diffdecon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    d = sub.add_parser("deconvolve", help="deconvolve a galaxy from three FITS images and their PSFs",
                       description="Sample the posterior of the idealized galaxy image given g, r, i "
                                   "images, their PSFs and the redshift.",
                       epilog=DECONVOLVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    i = d.add_argument_group("observation")
    i.add_argument("--image", nargs="+", type=Path, required=True, metavar="FITS",
                   help="one image per band, in the order g r i")
    i.add_argument("--psf", nargs="+", type=Path, required=True, metavar="FITS",
                   help="one PSF per band, in the order g r i")
    i.add_argument("--redshift", "-z", type=float, required=True, help="redshift of the galaxy (> 0)")
    i.add_argument("--pixel-scale", type=float, default=None,
                   help="image pixel scale [arcsec/px]; read from the WCS when present")
    i.add_argument("--ra", type=float, default=None, help="galaxy right ascension [deg] (needs a WCS)")
    i.add_argument("--dec", type=float, default=None, help="galaxy declination [deg] (needs a WCS)")
    _sampler_options(d)

    t = sub.add_parser("targets", help="list the HSC targets present in the data folder",
                       description="List the HSC targets under $DIFFDECON_DATA/hsc_pdr3_cosmos/ "
                                   "(redshift, i magnitude, HST cutout, observed size m(z) per profile).")
    t.add_argument("--root", type=Path, default=None, help="folder holding the targets (default: paths.hsc_dir())")

    dt = sub.add_parser("deconvolve-target", help="deconvolve one of the HSC targets by name",
                        description="Deconvolve a target of the data folder (see `diffdecon targets`); "
                                    "adds the HST agreement to the header when an HST cutout exists.",
                        epilog="example:\n  diffdecon deconvolve-target test1 --profile quick -o test1.fits",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    dt.add_argument("name", help="target name (a folder of the data folder)")
    dt.add_argument("--root", type=Path, default=None, help="folder holding the targets (default: paths.hsc_dir())")
    _sampler_options(dt)
    return parser


# --------------------------------------------------------------------------- FITS input


def _band_of(value: Any) -> str | None:
    """'HSC-G', 'g', 'HSC-I2', 'SDSS r' -> 'g', 'g', 'i', 'r'; anything else -> the raw string."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:.*[-_ ])?([grizyGRIZY])2?", text)
    return m.group(1).lower() if m else text


def _read_2d(path: Path, what: str) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """(array, header of its HDU, band keywords found) of the first 2-D HDU of ``path``."""
    from astropy.io import fits

    if not path.is_file():
        raise CLIError(f"{what} {path}: no such file")
    try:
        hdul = fits.open(path)
    except OSError as err:
        raise CLIError(f"{what} {path}: not a readable FITS file ({err})") from None
    with hdul:
        hdus = [h for h in hdul if getattr(h, "data", None) is not None and np.ndim(h.data) == 2]
        if not hdus:
            raise CLIError(f"{what} {path}: no HDU holds a 2-D array; accepted: a FITS file with a 2-D image")
        hdu = hdus[0]
        arr = np.asarray(hdu.data, dtype=np.float64)
        header = hdu.header.copy()
        keys = {}
        for h in (hdul[0].header, hdu.header):
            for k in _BAND_KEYS:
                if k in h and str(h[k]).strip():
                    keys[k] = h[k]
    return arr, header, keys


def _check_band(path: Path, keys: dict[str, Any], band: str, what: str) -> None:
    for k, v in keys.items():
        found = _band_of(v)
        if found in BANDS and found != band:
            raise CLIError(f"{what} {path} is for band {found!r} ({k}={v!r}) but was given in position of band "
                           f"{band!r}; accepted: files in the order {' '.join(BANDS)}")


def _celestial_wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header)
        except Exception:  # noqa: BLE001 - a broken WCS is reported as "no WCS"
            return None
    return w.celestial if w.has_celestial else None


def load_observation(args) -> Any:
    """Read and check the inputs of ``deconvolve`` and build the InverseProblem."""
    from . import physics, targets

    n_b = len(BANDS)
    if len(args.image) != n_b:
        raise CLIError(f"--image got {len(args.image)} file(s); accepted: {n_b}, one per band in the order {' '.join(BANDS)}")
    if len(args.psf) != n_b:
        raise CLIError(f"--psf got {len(args.psf)} file(s); accepted: {n_b}, one per band in the order {' '.join(BANDS)}")
    z = args.redshift
    if not (math.isfinite(z) and z > 0):
        raise CLIError(f"--redshift {z!r} is invalid; accepted: a finite redshift > 0")

    images, wcss = [], []
    for band, path in zip(BANDS, args.image):
        arr, header, keys = _read_2d(path, f"image ({band})")
        _check_band(path, keys, band, "image")
        bad = int((~np.isfinite(arr)).sum())
        if bad == arr.size:
            raise CLIError(f"image {path} holds no finite pixel (all {arr.size} are NaN/inf)")
        if bad:
            raise CLIError(f"image {path} has {bad} non-finite pixel(s) (NaN/inf) out of {arr.size}; "
                           "accepted: finite values (masked pixels are not supported)")
        images.append(arr)
        wcss.append(_celestial_wcs(header))
    shapes = {b: im.shape for b, im in zip(BANDS, images)}
    if len(set(shapes.values())) != 1:
        raise CLIError(f"images differ in shape: {', '.join(f'{b} {s}' for b, s in shapes.items())}; "
                       "accepted: the same pixel grid in every band")
    psfs = []
    for band, path in zip(BANDS, args.psf):
        arr, _, keys = _read_2d(path, f"PSF ({band})")
        _check_band(path, keys, band, "PSF")
        try:
            psfs.append(physics.validate_psf(arr, name=f"PSF {path}"))
        except ValueError as err:
            raise CLIError(str(err)) from None
    psf_shapes = {b: p.shape for b, p in zip(BANDS, psfs)}
    if len(set(psf_shapes.values())) != 1:
        raise CLIError(f"PSFs differ in shape: {', '.join(f'{b} {s}' for b, s in psf_shapes.items())}; "
                       "accepted: the same (k, k) size in every band")

    wcs = wcss[-1]
    if wcs is not None:
        from .data import pixel_scale_arcsec

        scale = pixel_scale_arcsec(wcs)
        if args.pixel_scale is not None and abs(args.pixel_scale - scale) > 0.01 * scale:
            raise CLIError(f"--pixel-scale {args.pixel_scale} arcsec/px disagrees with the WCS of {args.image[-1]} "
                           f"({scale:.5g} arcsec/px); omit --pixel-scale or fix the header")
    else:
        if args.pixel_scale is None:
            raise CLIError(f"{args.image[-1]} has no celestial WCS: give --pixel-scale [arcsec/px]")
        scale = args.pixel_scale
    if not (math.isfinite(scale) and scale > 0):
        raise CLIError(f"pixel scale {scale!r} arcsec/px is invalid; accepted: > 0")

    if (args.ra is None) != (args.dec is None):
        raise CLIError("give both --ra and --dec, or neither (the galaxy is then at the image centre)")
    n_y, n_x = images[0].shape
    ra = dec = None
    if args.ra is not None:
        if wcs is None:
            raise CLIError("--ra/--dec need a celestial WCS in the image header")
        x, y = (float(v) for v in wcs.world_to_pixel_values(args.ra, args.dec))
        ra, dec = args.ra, args.dec
        if not (0 <= x <= n_x - 1 and 0 <= y <= n_y - 1):
            raise CLIError(f"--ra {args.ra} --dec {args.dec} falls at pixel ({x:.1f}, {y:.1f}), outside the "
                           f"{n_x} x {n_y} image")
    else:
        x, y = (n_x - 1) / 2, (n_y - 1) / 2
        if wcs is not None:
            ra, dec = (float(v) for v in wcs.pixel_to_world_values(x, y))

    profile = PROFILES[args.profile]
    try:
        m = physics.observed_size(z, profile.image_size, profile.pixel_scale_kpc, scale)
    except ValueError as err:
        raise CLIError(f"--redshift {z}: {err}") from None
    try:
        return targets.prepare_observation(
            np.stack(images), np.stack(psfs), z, profile, (x, y), scale, wcs=wcs,
            name=Path(args.image[-1]).stem, source="files " + ", ".join(p.name for p in args.image), ra=ra, dec=dec)
    except ValueError as err:
        raise CLIError(f"{err} (m(z, p) = {m:.1f} px)") from None


# --------------------------------------------------------------------------- output


def model_grid_wcs(problem) -> Any:
    """WCS of the model grid: centred on the galaxy, pixel scale
    ``pixel_scale_kpc * arcsec_per_kpc(z)`` [arcsec] (in degrees), the orientation of the
    input WCS; without an input WCS, linear offsets in arcsec from the galaxy."""
    from astropy.wcs import WCS

    from .physics import arcsec_per_kpc

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
    """Write a :class:`diffdecon.targets.PosteriorResult` to one FITS file, atomically.

    HDUs: primary (provenance header, no data), MEAN, STD, VARRATIO, and SAMPLES with
    ``save_samples``. Refuses an existing ``path`` unless ``overwrite``.
    """
    from astropy.io import fits

    from . import cache
    from .metrics import reduced_chi2  # noqa: F401  (chi2 already in result)

    path = Path(path)
    if path.exists() and not overwrite:
        raise CLIError(f"output {path} exists; pass --overwrite to replace it")
    pb = result.problem
    P = pb.profile
    hdr = fits.Header()
    hdr["ORIGIN"] = ("diffdecon", "Bayesian deconvolution with a diffusion prior")
    hdr["DDVERS"] = (__version__, "diffdecon package version")
    hdr["PROFILE"] = (P.name, "model profile")
    sha = getattr(prior, "checkpoint_sha256", None) or "none"
    hdr["CKPTSHA"] = sha  # SHA-256 of the prior weights (64 hex digits: no room for a comment)
    ckpt = getattr(prior, "checkpoint_path", None)
    hdr["CKPTFILE"] = (Path(ckpt).name if ckpt else "none", "prior weights file")
    hdr["SAMPLER"] = (result.sampler, "posterior sampler")
    hdr["STEPS"] = (result.steps, "sampling steps")
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
    hdr["VRAPER"] = (result.variance_ratio_aperture, "mean variance ratio in the aperture")
    hdr["VRRAD"] = (P.aperture_radius_px, "[model px] aperture radius")
    if pb.ra is not None:
        hdr["RA_GAL"] = (pb.ra, "[deg] galaxy position")
        hdr["DEC_GAL"] = (pb.dec, "[deg] galaxy position")
    if pb.window is not None:
        hdr["WIN_ROW0"], hdr["WIN_COL0"], hdr["WIN_N"] = pb.window
    hdr["WALLTIME"] = (round(result.wall_time_s, 3), "[s] posterior sampling time")
    hdr["SOURCE"] = pb.source[:68]
    for k, v in (extra or {}).items():
        hdr[k] = v
    wcs_hdr = model_grid_wcs(pb).to_header()
    bands_hdr = {f"BAND{c + 1}": b for c, b in enumerate(P.bands)}

    def image_hdu(arr, name, unit):
        h = fits.ImageHDU(np.asarray(arr, dtype=np.float32), name=name)
        h.header.update(wcs_hdr)
        h.header["BUNIT"] = unit
        if np.ndim(arr) >= 3:
            for k, v in bands_hdr.items():
                h.header[k] = v
        return h

    unit = "input flux / model px"
    hdus = [fits.PrimaryHDU(header=hdr),
            image_hdu(result.mean.cpu().numpy(), "MEAN", unit),
            image_hdu(result.std.cpu().numpy(), "STD", unit),
            image_hdu(result.variance_ratio.cpu().numpy(), "VARRATIO", "dimensionless")]
    if save_samples:
        hdus.append(image_hdu(result.flux_samples.cpu().numpy(), "SAMPLES", unit))
    with cache.atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        if path.exists() and not overwrite:  # appeared while we were sampling
            raise CLIError(f"output {path} exists; pass --overwrite to replace it")
    return path


# --------------------------------------------------------------------------- commands


def _sampler_kwargs(args) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.zeta is not None:
        if args.sampler != "dps":
            raise CLIError("--zeta applies to --sampler dps only")
        if not args.zeta > 0:
            raise CLIError(f"--zeta {args.zeta}: accepted: > 0")
        kw["zeta"] = args.zeta
    return kw


def _load_prior(args, prior):
    if prior is not None:
        if prior.profile.name != args.profile:
            raise CLIError(f"the given prior is of profile {prior.profile.name!r}, not --profile {args.profile!r}")
        return prior
    from .prior import load_prior

    try:
        return load_prior(args.profile, args.checkpoint)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise CLIError(f"cannot load the prior: {err}") from None


def _sample_and_write(args, problem, prior, extra_fn=None) -> int:
    import torch

    from . import targets

    kw = _sampler_kwargs(args)
    progress = not args.quiet
    print(f"[diffdecon] {problem.name}: z={problem.z:g}, window {tuple(problem.y.shape[-2:])} px, "
          f"m(z,p)={problem.m:.1f} px, upsampling {problem.upsampling_factor:.2f}, flux scale {problem.scale:.4g}",
          file=sys.stderr)
    ref = targets.cached_prior_samples(prior, n=args.prior_samples, seed=args.seed, progress=progress)
    result = targets.deconvolve(problem, prior, sampler=args.sampler, n=args.samples, steps=args.steps,
                                generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size,
                                prior_samples=ref, progress=progress, **kw)
    result.seed = args.seed
    extra = extra_fn(result) if extra_fn else None
    write_result(args.output, result, prior, overwrite=args.overwrite, save_samples=args.save_samples, extra=extra)
    chi2 = ", ".join(f"{b} {c:.2f}" for b, c in zip(problem.profile.bands, result.chi2))
    print(f"[diffdecon] wrote {args.output} ({result.n} samples, {result.wall_time_s:.1f} s; reduced chi2 {chi2}; "
          f"variance ratio in r={problem.profile.aperture_radius_px:g} px: {result.variance_ratio_aperture:.4f})",
          file=sys.stderr)
    if max(result.chi2) > CHI2_WARNING:
        print(f"[diffdecon] warning: reduced chi2 above {CHI2_WARNING:g}: the posterior mean does not explain the "
              "data (an untrained or mismatched checkpoint, a wrong redshift or PSF, or a neighbour in the window?)",
              file=sys.stderr)
    return 0


def cmd_deconvolve(args, prior=None) -> int:
    if args.output.exists() and not args.overwrite:
        raise CLIError(f"output {args.output} exists; pass --overwrite to replace it")
    problem = load_observation(args)
    return _sample_and_write(args, problem, _load_prior(args, prior))


def cmd_targets(args) -> int:
    from . import data, physics

    try:
        names = data.list_targets(args.root)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    print(f"{'target':14s} {'z':>7s} {'i mag':>6s} {'HST':>4s} " + " ".join(f"m({p})".rjust(9) for p in PROFILES))
    for name in names:
        try:
            t = data.load_target(name, args.root)
        except (data.DataError, ValueError) as err:
            print(f"{name:14s} unreadable: {err}")
            continue
        ms = []
        for P in PROFILES.values():
            try:
                ms.append(f"{physics.observed_size(t.z, P.image_size, P.pixel_scale_kpc, t.pixel_scale_arcsec):9.1f}")
            except ValueError:
                ms.append(f"{'too small':>9s}")
        print(f"{name:14s} {t.z:7.4f} {t.i_mag:6.2f} {'yes' if t.hst is not None else 'no':>4s} " + " ".join(ms))
    try:
        missing = data.missing_targets(args.root)
    except FileNotFoundError:
        missing = []
    if missing:
        print(f"missing (listed in the checksums, files absent; run `make data`): {', '.join(missing)}")
    return 0


def cmd_deconvolve_target(args, prior=None) -> int:
    from . import data, targets

    if args.output.exists() and not args.overwrite:
        raise CLIError(f"output {args.output} exists; pass --overwrite to replace it")
    try:
        present = data.list_targets(args.root)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    if args.name not in present:
        raise CLIError(f"unknown target {args.name!r}; present: {', '.join(present) or 'none'}")
    target = data.load_target(args.name, args.root)
    problem = targets.prepare_target(target, args.profile)

    def extra(result):
        hst = targets.hst_on_hsc_grid(target, problem)
        if hst is None:
            return {"HSTCMP": ("none", "no HST cutout for this target")}
        agr = targets.hst_agreement(result.mean, problem, hst, target=target)
        return {"HSTCORR": (agr.correlation, "corr. of mean(i) with HST"),
                "HSTFRAT": (agr.flux_ratio, "flux ratio mean(i) / HST (AB)"),
                "HSTFWHM": (agr.fwhm_arcsec, "[arcsec] common Gaussian FWHM")}

    return _sample_and_write(args, problem, _load_prior(args, prior), extra)


def main(argv: Sequence[str] | None = None, *, prior=None) -> int:
    """Entry point of ``diffdecon``; returns the exit status.

    ``prior``: an already loaded prior used instead of ``--checkpoint`` (to call the
    command from Python with a prior held in memory).
    """
    from . import data
    from .samplers import SamplerDivergenceError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT_ERROR
    try:
        if args.command == "deconvolve":
            return cmd_deconvolve(args, prior)
        if args.command == "targets":
            return cmd_targets(args)
        return cmd_deconvolve_target(args, prior)
    except (CLIError, data.DataError) as err:
        print(f"diffdecon: error: {err}", file=sys.stderr)
    except SamplerDivergenceError as err:
        print(f"diffdecon: error: sampling failed: {err}", file=sys.stderr)
    return EXIT_INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
