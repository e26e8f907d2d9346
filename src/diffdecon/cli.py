"""Command line: ``diffdecon deconvolve``, ``diffdecon targets``, ``diffdecon deconvolve-target``.

Run ``diffdecon --help`` or ``diffdecon deconvolve --help``. Every failure caused by the
input prints one line ``diffdecon: error: <what is wrong and what is accepted>`` and exits
with status 2; no output file (not even a partial one) is left behind.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import BANDS, MMPS_COVARIANCES, PROFILES
from .errors import DiffdeconError, DivergenceError

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
  scale, per-band reduced chi^2 and the aperture variance ratio, and where the posterior mean
  misses the data (diffdecon.diagnostics.residual_sources): the share of the excess chi^2 in
  residual sources on the galaxy, in neighbours and outside the model field (RESGAL, RESNEI,
  RESOUT, RESNSRC) and the reduced chi^2 outside them (CHI2O_G/R/I). Above a reduced chi^2
  of 1.5 the command prints that summary.
"""

class CLIError(DiffdeconError):
    """An input problem, reported as one line and exit status 2."""


# --------------------------------------------------------------------------- parsing


CHI2_WARNING: float = 10.0
"""A reduced chi^2 of A(posterior mean) against the data above this in any band is reported
as a warning (1 is a fit at the noise level)."""
CHI2_RESIDUALS: float = 1.5
"""Above this reduced chi^2 of A(posterior mean) in any band the command says where the model
misses the data (:func:`diffdecon.diagnostics.residual_sources`: neighbours, light outside the
model's field, structure on the galaxy)."""


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
    g.add_argument("--covariance", default=None, choices=list(MMPS_COVARIANCES),
                   help="covariance of p(x0 | x_t) in MMPS (default: the profile's mmps_covariance; see "
                        "diffdecon.mmps)")
    g.add_argument("--lookahead", default=None, choices=["on", "off"],
                   help="MMPS steps fit the data through the prior chain's lookahead, the mean change its own "
                        "later steps make (default: the profile's lookahead; see diffdecon.lookahead)")
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


def load_observation(args) -> Any:
    """Read the inputs of ``deconvolve`` and build the InverseProblem.

    The files are read band by band (:func:`diffdecon.fits_io.read_band_image`, which checks
    the band keywords); shapes, finite pixels, PSFs, the redshift's observed size and the
    window are checked by :func:`diffdecon.problem.prepare_observation`.
    """
    from .fits_io import celestial_wcs, read_band_image
    from .problem import prepare_observation

    for flag, files in (("--image", args.image), ("--psf", args.psf)):
        if len(files) != len(BANDS):
            raise CLIError(f"{flag} got {len(files)} file(s); accepted: {len(BANDS)}, one per band in the order "
                           f"{' '.join(BANDS)}")
    z = args.redshift
    if not (math.isfinite(z) and z > 0):
        raise CLIError(f"--redshift {z!r} is invalid; accepted: a finite redshift > 0")
    images, headers = zip(*(read_band_image(p, b, "image") for b, p in zip(BANDS, args.image)))
    psfs = [read_band_image(p, b, "PSF")[0] for b, p in zip(BANDS, args.psf)]
    wcs = celestial_wcs(headers[-1])
    scale = _pixel_scale(args, wcs)
    center, ra, dec = _galaxy_position(args, wcs, images[-1].shape)
    try:
        return prepare_observation(images, psfs, z, PROFILES[args.profile], center, scale, wcs=wcs,
                                   name=Path(args.image[-1]).stem, source="files " + ", ".join(p.name for p in args.image),
                                   ra=ra, dec=dec)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _pixel_scale(args, wcs) -> float:
    """Pixel scale [arcsec/px] from the WCS, checked against --pixel-scale; or --pixel-scale."""
    from .fits_io import pixel_scale_arcsec

    if wcs is not None:
        scale = pixel_scale_arcsec(wcs)
        if args.pixel_scale is not None and abs(args.pixel_scale - scale) > 0.01 * scale:
            raise CLIError(f"--pixel-scale {args.pixel_scale} arcsec/px disagrees with the WCS of {args.image[-1]} "
                           f"({scale:.5g} arcsec/px); omit --pixel-scale or fix the header")
    elif args.pixel_scale is None:
        raise CLIError(f"{args.image[-1]} has no celestial WCS: give --pixel-scale [arcsec/px]")
    else:
        scale = args.pixel_scale
    if not (math.isfinite(scale) and scale > 0):
        raise CLIError(f"pixel scale {scale!r} arcsec/px is invalid; accepted: > 0")
    return scale


def _galaxy_position(args, wcs, shape: tuple[int, int]):
    """``((x, y) [px], ra, dec [deg])`` of the galaxy: --ra/--dec through the WCS, else the
    image centre (ra, dec from the WCS when there is one, else None)."""
    if (args.ra is None) != (args.dec is None):
        raise CLIError("give both --ra and --dec, or neither (the galaxy is then at the image centre)")
    n_y, n_x = shape
    if args.ra is None:
        x, y = (n_x - 1) / 2, (n_y - 1) / 2
        ra = dec = None
        if wcs is not None:
            ra, dec = (float(v) for v in wcs.pixel_to_world_values(x, y))
        return (x, y), ra, dec
    if wcs is None:
        raise CLIError("--ra/--dec need a celestial WCS in the image header")
    x, y = (float(v) for v in wcs.world_to_pixel_values(args.ra, args.dec))
    if not (0 <= x <= n_x - 1 and 0 <= y <= n_y - 1):
        raise CLIError(f"--ra {args.ra} --dec {args.dec} falls at pixel ({x:.1f}, {y:.1f}), outside the "
                       f"{n_x} x {n_y} image")
    return (x, y), args.ra, args.dec


# --------------------------------------------------------------------------- commands


def _sampler_kwargs(args) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.zeta is not None:
        if args.sampler != "dps":
            raise CLIError("--zeta applies to --sampler dps only")
        if not args.zeta > 0:
            raise CLIError(f"--zeta {args.zeta}: accepted: > 0")
        kw["zeta"] = args.zeta
    if args.covariance is not None:
        if args.sampler != "mmps":
            raise CLIError("--covariance applies to --sampler mmps only")
        kw["covariance"] = args.covariance
    if args.lookahead is not None:
        if args.sampler != "mmps" or kw.get("covariance") == "tweedie":
            raise CLIError("--lookahead applies to --sampler mmps with a diagonal covariance only")
        kw["lookahead"] = "chain" if args.lookahead == "on" else None
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
    import numpy as np
    import torch

    from .deconvolution import CHI2_CONVERGED, deconvolve
    from .diagnostics import residual_sources
    from .reference_samples import prior_samples
    from .result_fits import write_result

    kw = _sampler_kwargs(args)
    progress = not args.quiet
    print(f"[diffdecon] {problem.name}: z={problem.z:g}, window {tuple(problem.y.shape[-2:])} px, "
          f"m(z,p)={problem.m:.1f} px, upsampling {problem.upsampling_factor:.2f}, flux scale {problem.scale:.4g}",
          file=sys.stderr)
    ref = prior_samples(prior, n=args.prior_samples, seed=args.seed, progress=progress)
    result = deconvolve(problem, prior, sampler=args.sampler, n=args.samples, steps=args.steps,
                        generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size,
                        prior_samples=ref, progress=progress, **kw)
    result.seed = args.seed
    residuals = residual_sources(problem, result.mean)
    extra = {**(extra_fn(result) if extra_fn else {}), **_residual_cards(residuals, problem.profile.bands)}
    write_result(args.output, result, prior, overwrite=args.overwrite, save_samples=args.save_samples, extra=extra)
    chi2 = ", ".join(f"{b} {c:.2f}" for b, c in zip(problem.profile.bands, result.chi2))
    print(f"[diffdecon] wrote {args.output} ({result.n} samples, {result.wall_time_s:.1f} s; reduced chi2 {chi2}; "
          f"variance ratio in r={problem.profile.aperture_radius_px:g} px: {result.variance_ratio_aperture:.4f})",
          file=sys.stderr)
    if max(result.chi2) > CHI2_RESIDUALS:
        print(f"[diffdecon] reduced chi2 above {CHI2_RESIDUALS:g}: where the posterior mean misses the data, "
              f"{residuals.summary(problem.profile.bands)}. The prior holds one idealized galaxy centred in its "
              "field: neighbours and light outside the field are not in the model (header RES*, CHI2O_*)",
              file=sys.stderr)
    if not result.converged:
        _report_not_converged(problem, result, CHI2_CONVERGED)
    elif max(result.chi2) > CHI2_WARNING:
        print(f"[diffdecon] warning: reduced chi2 above {CHI2_WARNING:g}: the posterior mean does not explain the "
              "data (an untrained or mismatched checkpoint, a wrong redshift or PSF, or a neighbour in the window?)",
              file=sys.stderr)
    return 0


def _residual_cards(report, bands) -> dict:
    """FITS cards of a :class:`diffdecon.diagnostics.ResidualReport`: the share of the excess
    chi^2 in residual sources at each place and the reduced chi^2 outside them per band."""
    import numpy as np

    from .diagnostics import SOURCE_PLACES

    cards = {f"RES{w[:3].upper()}": (round(report.share(w), 4), f"excess chi2 share, residual sources: {w}")
             for w in SOURCE_PLACES}
    cards["RESNSRC"] = (len(report.sources), "residual sources of the posterior mean")
    cards.update({f"CHI2O_{b.upper()}": (float(c) if np.isfinite(c) else -1.0,
                                         f"reduced chi2 outside residual sources, band {b} (-1: none)")
                  for b, c in zip(bands, report.chi2_outside)})
    return cards


def _report_not_converged(problem, result, threshold: float) -> None:
    """Warn that the samples miss the data and say whether any image on the model grid could
    fit it (:func:`diffdecon.diagnostics.fit_floor`): the prior and sampler, or the data."""
    import numpy as np

    from .diagnostics import fit_floor

    floor = fit_floor(problem, max_iter=150)
    bands = problem.profile.bands
    text = ", ".join(f"{b} {c:.2f}" for b, c in zip(bands, floor))
    print(f"[diffdecon] warning: the posterior samples do not fit the data (median reduced chi2 of the samples "
          f"{float(np.median(result.chi2_samples)):.2f} > {threshold:g}; header CONVERGD = F). A non-negative "
          f"least-squares fit through the same operator reaches reduced chi2 {text}:", file=sys.stderr)
    if max(floor) > threshold:
        print("[diffdecon]   no image on the model grid fits these data either: light outside the model field, "
              "a neighbour or a point source the prior cannot represent, a wrong redshift, PSF or noise level",
              file=sys.stderr)
    else:
        print("[diffdecon]   an image on the grid fits, the posterior does not: more sampling steps or CG "
              "iterations (--steps), or a prior that cannot represent this galaxy", file=sys.stderr)


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
    from . import data
    from .hst import hst_agreement, hst_on_hsc_grid
    from .problem import prepare_target

    if args.output.exists() and not args.overwrite:
        raise CLIError(f"output {args.output} exists; pass --overwrite to replace it")
    try:
        present = data.list_targets(args.root)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    if args.name not in present:
        raise CLIError(f"unknown target {args.name!r}; present: {', '.join(present) or 'none'}")
    target = data.load_target(args.name, args.root)
    problem = prepare_target(target, args.profile)

    def extra(result):
        hst = hst_on_hsc_grid(target, problem)
        if hst is None:
            return {"HSTCMP": ("none", "no HST cutout for this target")}
        agr = hst_agreement(result.mean, problem, hst, target=target)
        return {"HSTCORR": (agr.correlation, "corr. of mean(i) with HST"),
                "HSTFRAT": (agr.flux_ratio, "flux ratio mean(i) / HST (AB)"),
                "HSTFWHM": (agr.fwhm_arcsec, "[arcsec] common Gaussian FWHM")}

    return _sample_and_write(args, problem, _load_prior(args, prior), extra)


def main(argv: Sequence[str] | None = None, *, prior=None) -> int:
    """Entry point of ``diffdecon``; returns the exit status.

    ``prior``: an already loaded prior used instead of ``--checkpoint`` (to call the
    command from Python with a prior held in memory).
    """
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
    except DivergenceError as err:
        print(f"diffdecon: error: sampling failed: {err}", file=sys.stderr)
    except DiffdeconError as err:  # CLIError, DataError, OutputExistsError, InputValueError, ...
        print(f"diffdecon: error: {err}", file=sys.stderr)
    return EXIT_INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
