"""One real or mock target end to end: crop, noise, forward model, posterior, HST check.

The chain for a real HSC target (every step driven by the catalogue, never by a name):

1. :func:`prepare_target` crops the three-band cutout to a square *window* around the
   catalogue position, measures the per-band background level and noise, builds the
   forward model ``A`` at the target's redshift and pixel scale, and fixes the flux
   scale ``s`` that ties prior space to observation flux. The result is an
   :class:`InverseProblem`; :func:`from_mock` builds the same object from a
   :class:`diffdecon.mock.MockObservation`.
2. :func:`deconvolve` draws posterior samples with MMPS or DPS and summarises them
   (:class:`PosteriorResult`): mean and standard deviation in flux, reduced chi^2 of the
   mean, the variance-ratio map against unconditional prior samples and its aperture value.
3. :func:`hst_on_hsc_grid` and :func:`hst_agreement` compare a reconstruction with the
   HST F814W cutout, where one exists.
4. :func:`redshift_sweep` moves one simulated galaxy from z = 0.1 to 1.0 and records how
   the posterior's variance ratio grows with the upsampling factor.

Units: observations ``y`` and noise ``sigma`` in HSC coadd flux per HSC pixel
(``mag = 27 - 2.5 log10 F``); model images in the same flux units per model pixel;
prior space ``x`` dimensionless (``docs/design.md``, "Prior space").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache, data, paths, physics
from .config import BANDS, HSC_PIXEL_SCALE, Profile, get_profile
from .prior import X0_RANGE, unstretch

__all__ = [
    "DeconvolutionError",
    "InverseProblem",
    "PosteriorResult",
    "HSTAgreement",
    "SweepResult",
    "background_level",
    "prepare_observation",
    "prepare_target",
    "from_mock",
    "present_targets",
    "cached_prior_samples",
    "deconvolve",
    "hst_on_hsc_grid",
    "hst_agreement",
    "hst_ab_zeropoint",
    "redshift_sweep",
    "upsampling_crossing",
    "TargetAnalysis",
    "analyse_target",
    "analysis_table_rows",
]

DEFAULT_MARGIN: int = 4
"""Pixels added on each side of the model field m(z, p) to make the window [obs px]: the
light the PSF (FWHM about 4 HSC px) scatters out of the model field."""

SAMPLERS: tuple[str, ...] = ("mmps", "dps")


DIVERGED_ABS: float = 10.0
"""A posterior sample with any ``|x| > DIVERGED_ABS`` [prior space] counts as diverged.
Training images lie in [-1, about 2]; ``x = 10`` is a normalised flux of
``a sinh(11 asinh(1/a) / 2)``, about 2e10 (a = 0.01): 1e9 times the brightest training
pixel, and the flux grows exponentially beyond it (float64 overflows near |x| = 270)."""


class DeconvolutionError(FloatingPointError):
    """Posterior samples came out unusable (non-finite flux): the sampler diverged."""


# --------------------------------------------------------------------------- the problem


@dataclass
class InverseProblem:
    """Everything needed to sample the posterior of one observation.

    Attributes
    ----------
    y : Tensor (C, n, n)
        Background-subtracted observation [HSC coadd flux per obs px].
    sigma : Tensor (C,)
        Per-band noise standard deviation [HSC coadd flux per obs px].
    operator : physics.ForwardModel
        ``A``: model flux (B, C, H, W) [flux per model px] -> (B, C, n, n) [flux per obs px].
    scale : float
        Flux scale ``s`` [flux units]: the model image in linear flux is ``s * unstretch(x)``.
    profile : Profile
    z : float
        Redshift.
    name : str
        Target name (or a description of the mock).
    window : (row0, col0, n) or None
        Position of ``y[:, 0, 0]`` in the full cutout and the window side [obs px]; None for mocks.
    wcs : astropy WCS or None
        WCS of the window (None for mocks and for images without a WCS).
    source : str
        Where the observation, PSF and noise come from (say it on every figure).
    background : ndarray (C,)
        Background level subtracted from each band [flux per obs px] (0 for mocks).
    center_xy : (float, float)
        Galaxy position in window pixel coordinates (x = column, 0-based, pixel centres at
        integers) = the centre of the model field.
    ra, dec : float or None
        Galaxy position [deg].
    truth : Tensor (C, H, W) or None
        The idealized image of a mock [flux per model px].
    """

    y: torch.Tensor
    sigma: torch.Tensor
    operator: physics.ForwardModel
    scale: float
    profile: Profile
    z: float
    name: str
    window: tuple[int, int, int] | None = None
    wcs: Any = None
    source: str = ""
    background: np.ndarray = field(default_factory=lambda: np.zeros(len(BANDS)))
    center_xy: tuple[float, float] = (0.0, 0.0)
    ra: float | None = None
    dec: float | None = None
    truth: torch.Tensor | None = None

    @property
    def pixel_scale_arcsec(self) -> float:
        """Observation pixel scale [arcsec/px]."""
        return self.operator.pixel_scale_arcsec

    @property
    def m(self) -> float:
        """Observed size of the model field m(z, p) [obs px]."""
        return self.operator.m

    @property
    def upsampling_factor(self) -> float:
        """``image_size / m`` (> 1: model pixels finer than observation pixels)."""
        return self.operator.upsampling_factor

    def to_flux(self, x: torch.Tensor) -> torch.Tensor:
        """Prior space ``x`` -> model flux ``s * unstretch(x)`` [flux per model px]."""
        return self.scale * unstretch(x, self.profile.asinh_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prior space ``x`` (B, C, H, W) -> observation flux ``A(s * unstretch(x))``
        (B, C, n, n) [flux per obs px]; differentiable (the samplers' ``forward``)."""
        return self.operator.A(self.to_flux(x))


def _window_start(center: float, n: int, length: int, axis: str, name: str) -> int:
    """First pixel of a window of side ``n`` centred (to the nearest pixel) on ``center``."""
    start = int(round(center - (n - 1) / 2))
    if start < 0 or start + n > length:
        raise ValueError(
            f"{name}: a window of {n} px around the galaxy ({axis} = {center:.1f}) does not fit in "
            f"the image ({length} px along {axis}); accepted: a galaxy at least {n / 2:.0f} px from "
            "the edge, a larger cutout, or a smaller profile / higher redshift"
        )
    return start


def background_level(image: np.ndarray, sigma: float = 3.0, maxiters: int = 10) -> float:
    """Sky level of one band [image units]: the sigma-clipped (``sigma``, ``maxiters``)
    median of the pixels outside :func:`diffdecon.data.source_mask`. Coadds are sky
    subtracted, so this is a small residual; it is removed because the flux scale ``s``
    sums the window and any pedestal would enter it."""
    from astropy.stats import sigma_clipped_stats

    image = np.asarray(image, dtype=np.float64)
    mask = data.source_mask(image, sigma=sigma, maxiters=maxiters)
    _, median, _ = sigma_clipped_stats(image, mask=mask, sigma=sigma, maxiters=maxiters)
    return float(median)


def prepare_observation(
    images: np.ndarray,
    psfs: np.ndarray,
    z: float,
    profile: Profile | str,
    center_xy: tuple[float, float],
    pixel_scale_arcsec: float = HSC_PIXEL_SCALE,
    *,
    wcs: Any = None,
    name: str = "observation",
    source: str = "",
    margin: int = DEFAULT_MARGIN,
    ra: float | None = None,
    dec: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> InverseProblem:
    """Build the :class:`InverseProblem` of a three-band image (the work of :func:`prepare_target`).

    Parameters
    ----------
    images : ndarray (C, N, M)
        Full cutout, bands g, r, i [flux per obs px]. Used whole for the noise and
        background estimates, cropped for the likelihood.
    psfs : ndarray (C, k, k)
        PSFs on the observation grid (normalised here).
    z : float
        Redshift (> 0).
    profile : Profile or str
    center_xy : (x, y)
        Galaxy position in ``images`` [px, 0-based, x = column, pixel centres at integers].
    pixel_scale_arcsec : float
        Observation pixel scale [arcsec/px].
    wcs : astropy WCS, optional
        WCS of ``images``; sliced to the window.
    margin : int
        Pixels added on each side of the model field [obs px] (:data:`DEFAULT_MARGIN`).

    The window has side ``n = ceil(m(z, p)) + 2 margin`` and starts at the pixel that puts
    its centre nearest to the galaxy; the sub-pixel remainder (at most half a pixel per
    axis) becomes the forward model's ``center_offset``, so the model field is centred
    exactly on ``center_xy``. Per band: noise ``sigma`` = :func:`data.estimate_noise_sigma`
    of the full cutout (3-sigma clipping, sources masked); background = :func:`background_level`,
    subtracted from ``y``.

    Flux scale: ``s = sum_{bands, window}(y) / profile.flux_norm`` [flux units]. The PSF
    convolution (unit-sum kernels) and the area-weighted resampling f_{z,p} both preserve
    total flux, so a model image ``s * unstretch(x)`` whose normalised flux sums to
    ``flux_norm`` predicts the observed total flux. Caveats: flux of the galaxy outside the
    window is missed, flux of neighbours inside it is included, and the sum carries noise
    ``sigma sqrt(n^2)`` per band; the prior's normalisation adapts only through the sample's
    own total, which is free to differ from ``flux_norm``.

    Raises
    ------
    ValueError
        Shapes that disagree, non-finite pixels, a z that is not > 0 or gives
        m(z, p) < physics.MIN_OBSERVED_SIZE, a window that does not fit, or a window whose
        background-subtracted total flux is not positive.
    """
    P = get_profile(profile)
    images = np.asarray(images, dtype=np.float64)
    psfs = physics.validate_psf(psfs, name=f"{name} PSFs")
    if images.ndim != 3 or images.shape[0] != len(P.bands):
        raise ValueError(f"{name}: images have shape {images.shape}; accepted: ({len(P.bands)}, N, M), bands {P.bands}")
    if psfs.ndim != 3 or psfs.shape[0] != images.shape[0]:
        raise ValueError(f"{name}: PSFs have shape {psfs.shape}; accepted: one (k, k) PSF per band ({images.shape[0]})")
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).sum())
        raise ValueError(f"{name}: images have {bad} non-finite pixel(s) out of {images.size}; accepted: finite values")
    m = physics.observed_size(z, P.image_size, P.pixel_scale_kpc, pixel_scale_arcsec)
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin={margin!r}; accepted: an integer >= 0 [obs px]")
    n = int(math.ceil(m)) + 2 * int(margin)
    x, yc = (float(v) for v in center_xy)
    col0 = _window_start(x, n, images.shape[2], "x", name)
    row0 = _window_start(yc, n, images.shape[1], "y", name)
    # Offset of the galaxy from the window's geometric centre, (n - 1) / 2 [obs px].
    dy, dx = yc - (row0 + (n - 1) / 2), x - (col0 + (n - 1) / 2)

    sigma = np.array([data.estimate_noise_sigma(im, mask_sources=True) for im in images])
    background = np.array([background_level(im) for im in images])
    y = images[:, row0 : row0 + n, col0 : col0 + n] - background[:, None, None]
    total = float(y.sum())
    if not total > 0:
        raise ValueError(
            f"{name}: the background-subtracted flux in the {n} x {n} px window is {total:.4g}; "
            "accepted: a positive total (is there a galaxy at the given position?)"
        )
    scale = total / P.flux_norm  # s = observed total flux / flux_norm
    op = physics.ForwardModel(z, psfs, n, P.image_size, P.pixel_scale_kpc, pixel_scale_arcsec,
                              center_offset=(dy, dx), dtype=dtype)
    win_wcs = None
    if wcs is not None:
        win_wcs = wcs.slice((slice(row0, row0 + n), slice(col0, col0 + n)))
    return InverseProblem(
        y=torch.as_tensor(y, dtype=dtype),
        sigma=torch.as_tensor(sigma, dtype=dtype),
        operator=op,
        scale=scale,
        profile=P,
        z=float(z),
        name=name,
        window=(row0, col0, n),
        wcs=win_wcs,
        source=source or name,
        background=background,
        center_xy=(x - col0, yc - row0),
        ra=ra,
        dec=dec,
    )


def prepare_target(target: data.HSCTarget, profile: Profile | str, *, margin: int = DEFAULT_MARGIN,
                   dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The :class:`InverseProblem` of a real HSC target (see :func:`prepare_observation`).

    The galaxy position is the catalogue RA/Dec through the cutout's WCS
    (:func:`data.catalog_position_pixel`), the redshift the catalogue's spectroscopic
    redshift, the pixel scale [arcsec/px] the one measured from the WCS.
    """
    return prepare_observation(
        target.images, target.psfs, target.z, profile, data.catalog_position_pixel(target),
        target.pixel_scale_arcsec, wcs=target.wcs, name=target.name,
        source=f"HSC PDR3 {target.name} (object {target.object_id})", margin=margin,
        ra=target.ra, dec=target.dec, dtype=dtype,
    )


def from_mock(mock, prior_or_profile, dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The :class:`InverseProblem` of a :class:`diffdecon.mock.MockObservation`.

    The flux scale is estimated from the observation exactly as for a real target
    (``s = sum(y) / flux_norm``), not taken from the truth; no background is subtracted
    (mocks have none). ``prior_or_profile``: a prior (its ``.profile`` is used) or a profile.
    """
    P = get_profile(getattr(prior_or_profile, "profile", prior_or_profile))
    y = mock.y.detach().to(dtype)
    total = float(y.sum())
    if not total > 0:
        raise ValueError(f"mock observation has total flux {total:.4g}; accepted: > 0")
    op = mock.operator
    if op.image_size != P.image_size or abs(op.pixel_scale_kpc - P.pixel_scale_kpc) > 1e-12:
        raise ValueError(
            f"mock operator has image_size {op.image_size}, {op.pixel_scale_kpc} kpc/px; profile "
            f"{P.name!r} needs {P.image_size}, {P.pixel_scale_kpc} kpc/px"
        )
    if op.R_y.dtype != dtype:
        op = physics.ForwardModel(op.z, np.stack([m for m in mock.reference.psfs]), op.obs_size, op.image_size,
                                  op.pixel_scale_kpc, op.pixel_scale_arcsec, center_offset=op.center_offset,
                                  dtype=dtype)
    n = op.obs_size
    return InverseProblem(
        y=y, sigma=mock.sigma.detach().to(dtype), operator=op, scale=total / P.flux_norm, profile=P,
        z=float(mock.z), name=f"mock z={mock.z:g}", window=None, wcs=None,
        source=f"mock ({mock.reference.source})", background=np.zeros(y.shape[0]),
        center_xy=((n - 1) / 2 + op.center_offset[1], (n - 1) / 2 + op.center_offset[0]),
        truth=mock.truth.detach(),
    )


def present_targets(root=None) -> list[str]:
    """Targets present under ``root`` (default ``paths.hsc_dir()``); prints the ones listed
    in the committed checksums but missing (:func:`data.missing_targets`), by name, as skipped.
    Returns [] with a message naming DIFFDECON_DATA if the data folder is absent."""
    try:
        names = data.list_targets(root)
    except FileNotFoundError as err:
        print(f"[diffdecon] no real HSC data: {err}")
        return []
    try:
        missing = data.missing_targets(root)
    except FileNotFoundError:
        missing = []
    if missing:
        print(f"[diffdecon] skipping targets whose files are missing under {root or paths.hsc_dir()}: "
              f"{', '.join(missing)} (run `make data` to fetch them)")
    return names


# --------------------------------------------------------------------------- posterior


@dataclass
class PosteriorResult:
    """Posterior samples of one :class:`InverseProblem` and their summaries.

    Attributes
    ----------
    samples : Tensor (n, C, H, W)
        Posterior samples in prior space (dimensionless).
    flux_samples : Tensor (n, C, H, W), float64
        The same in model flux ``s * unstretch(x)`` [flux per model px].
    mean, std : Tensor (C, H, W)
        Pixel-wise posterior mean and standard deviation of the flux [flux per model px].
    chi2 : ndarray (C,)
        Reduced chi^2 per band of ``A(mean)`` against ``y`` (dof = pixels per band).
    variance_ratio : Tensor (H, W)
        Posterior / prior variance in the [0, 1] display space, averaged over bands
        (:func:`diffdecon.posterior.variance_ratio`).
    variance_ratio_aperture : float
        Its mean within ``profile.aperture_radius_px`` [model px] of the centre.
    sampler, steps, n, seed : what was run (``seed`` None when a generator was passed).
    wall_time_s : float
        Time spent sampling the posterior [s].
    problem : InverseProblem
    """

    samples: torch.Tensor
    flux_samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    chi2: np.ndarray
    variance_ratio: torch.Tensor
    variance_ratio_aperture: float
    sampler: str
    steps: int
    n: int
    seed: int | None
    wall_time_s: float
    problem: InverseProblem


def _checkpoint_id(prior) -> str:
    sha = getattr(prior, "checkpoint_sha256", None)
    return sha if sha else "untrained-or-in-memory"


def cached_prior_samples(prior, n: int | None = None, steps: int | None = None, seed: int = 0,
                  method: str = "ddim", force: bool = False, progress: bool = True) -> torch.Tensor:
    """Unconditional prior samples (prior space, (n, C, H, W)) for the variance ratio, cached.

    Drawn with DDIM (eta = 0, ``method="ddim"``) or ancestral DDPM (``"ddpm"``) in
    ``steps`` steps (default ``profile.sampling_steps``) from a generator seeded with
    ``seed``; ``n`` defaults to ``profile.n_prior``. Cached under
    ``paths.cache_dir()/prior_samples/`` keyed by profile, checkpoint SHA-256, method, n,
    steps and seed (an untrained or in-memory prior without a checkpoint hash is never cached).
    """
    from . import samplers

    P = prior.profile
    n = P.n_prior if n is None else int(n)
    steps = P.sampling_steps if steps is None else int(steps)
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"method={method!r}; accepted: 'ddim' or 'ddpm'")

    def draw() -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        if method == "ddim":
            return samplers.ddim_sample(prior, n, g, steps=steps, progress=progress)
        return samplers.ddpm_sample(prior, n, g, steps=steps, progress=progress)

    sha = getattr(prior, "checkpoint_sha256", None)
    if not sha:
        print("[diffdecon] prior has no checkpoint hash: prior samples drawn, not cached")
        return draw()
    inputs = {"profile": P.name, "checkpoint_sha256": sha, "method": method, "n": n, "steps": steps,
              "seed": int(seed)}
    path = paths.cache_dir() / "prior_samples" / f"{P.name}-{sha[:16]}-{method}{steps}-n{n}-s{seed}.npy"

    def build(tmp):
        np.save(tmp, draw().detach().cpu().numpy().astype(np.float32))

    cache.cached(path, inputs, build, force=force, what="prior samples")
    return torch.from_numpy(np.load(path))


def _per_sample_generators(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """n generators seeded from ``generator``: sample i is the same whatever the batch size."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def deconvolve(
    problem: InverseProblem,
    prior,
    sampler: str = "mmps",
    n: int | None = None,
    steps: int | None = None,
    generator: torch.Generator | int | None = None,
    batch_size: int | None = None,
    prior_samples: torch.Tensor | None = None,
    progress: bool = True,
    **sampler_kwargs: Any,
) -> PosteriorResult:
    """Sample the posterior p(x | y) of ``problem`` and summarise it.

    Parameters
    ----------
    problem : InverseProblem
    prior : diffusion prior (``diffdecon.prior.DiffusionPrior``) of ``problem.profile``.
    sampler : {"mmps", "dps"}
        :func:`diffdecon.samplers.mmps` or :func:`diffdecon.samplers.dps`.
    n : int
        Posterior samples (default ``profile.n_posterior``).
    steps : int
        Sampling steps (default ``profile.sampling_steps``).
    generator : torch.Generator or int
        Seeded source of randomness (an int is a seed; default seed ``profile.seed``). One
        generator per sample is derived from it, so results do not depend on ``batch_size``.
    batch_size : int
        Samples drawn together (default all ``n``).
    prior_samples : Tensor (N, C, H, W), optional
        Unconditional prior samples for the variance ratio (default :func:`cached_prior_samples`,
        cached per profile and checkpoint).
    sampler_kwargs : passed on to the sampler (e.g. ``zeta``, ``cg_iters``).

    Returns
    -------
    PosteriorResult

    Raises
    ------
    DeconvolutionError
        If a sample's flux is not finite (a diverged sampler).
    """
    from . import posterior, samplers
    from .metrics import reduced_chi2

    P = problem.profile
    if getattr(prior, "profile", P).name != P.name:
        raise ValueError(f"prior of profile {prior.profile.name!r} cannot invert a problem of profile {P.name!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; accepted: {', '.join(SAMPLERS)}")
    n = P.n_posterior if n is None else n
    steps = P.sampling_steps if steps is None else steps
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}; accepted: at least 2 samples (the posterior variance needs two)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; accepted: a positive number of steps")
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; accepted: >= 1")
    seed = None
    if generator is None or isinstance(generator, int):
        seed = P.seed if generator is None else int(generator)
        generator = torch.Generator().manual_seed(seed)
    gens = _per_sample_generators(generator, n)

    fn = samplers.mmps if sampler == "mmps" else samplers.dps
    sampler_kwargs.setdefault("x0_clip", X0_RANGE)  # sanity range of Tweedie's x0, see prior.X0_RANGE
    if sampler == "mmps":
        sampler_kwargs.setdefault("cg_iters", P.cg_iters)
    chunks = []
    t0 = time.perf_counter()
    starts = range(0, n, batch_size)
    for i in tqdm(starts, desc=f"{sampler} {problem.name}", unit="batch", disable=not progress or len(starts) == 1):
        b = min(batch_size, n - i)
        x = fn(prior, problem.y, problem.forward, problem.sigma, gens[i : i + b], b, steps=steps,
               progress=progress, **sampler_kwargs)
        chunks.append(x.detach())
    wall = time.perf_counter() - t0
    samples = torch.cat(chunks)
    with torch.no_grad():
        # float64: unstretch is exponential (sinh) and overflows float32 beyond |x| ~ 34
        flux = problem.to_flux(samples.double())
        bad = ~torch.isfinite(flux.flatten(1)).all(1) | (samples.flatten(1).abs().amax(1) > DIVERGED_ABS)
        if bad.any():
            raise DeconvolutionError(
                f"{problem.name}: {int(bad.sum())} of {n} {sampler} samples are non-finite or leave "
                f"|x| <= {DIVERGED_ABS:g} (prior-space values up to {float(samples.abs().max()):.3g}, "
                "training images lie in [-1, 2]); the sampler diverged: "
                "lower zeta (dps), use more steps or check the prior checkpoint"
            )
        mean, std = flux.mean(0), flux.std(0)  # unbiased (ddof = 1)
        pred = problem.operator.A(mean[None])[0]
    y_np, p_np, s_np = (t.detach().cpu().numpy() for t in (problem.y, pred, problem.sigma))
    chi2 = np.array([reduced_chi2(y_np[c], p_np[c], float(s_np[c])) for c in range(y_np.shape[0])])

    ref = cached_prior_samples(prior, progress=progress) if prior_samples is None else prior_samples
    vr = posterior.variance_ratio(samples, ref.to(samples.dtype))
    vr_ap = float(posterior.aperture_mean(vr, P.aperture_radius_px))
    return PosteriorResult(samples=samples, flux_samples=flux, mean=mean, std=std, chi2=chi2,
                           variance_ratio=torch.as_tensor(vr), variance_ratio_aperture=vr_ap,
                           sampler=sampler, steps=steps, n=n, seed=seed, wall_time_s=wall, problem=problem)


# --------------------------------------------------------------------------- HST


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


def hst_on_hsc_grid(target: data.HSCTarget, window: InverseProblem | tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """The target's HST cutout resampled onto the window's HSC grid, conserving flux.

    ``reproject.reproject_exact`` computes, for each output pixel, the overlap-area-weighted
    mean of the input pixels (spherical polygon intersection), i.e. it conserves surface
    brightness; multiplying by the pixel-area ratio (HSC px area / HST px area, both from
    the WCSs) turns that into flux per HSC pixel, so the flux of the covered region is
    conserved. Units: the HST file's (electrons/s) per HSC pixel.

    Parameters
    ----------
    target : data.HSCTarget
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
    if isinstance(window, InverseProblem):
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
                  target: data.HSCTarget | None = None, psf_match: float = 0.35,
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
    target : data.HSCTarget, optional
        For the HST zero point (flux ratio); without it the ratio is NaN.
    psf_match : float
        FWHM of the common Gaussian [arcsec], >= 0 (0: no smoothing).
    band : str
        Band of the reconstruction compared with HST (default i).
    """
    from scipy import ndimage

    hst_img, footprint = hst_resampled
    rec = torch.as_tensor(np.asarray(reconstruction.detach().cpu() if torch.is_tensor(reconstruction) else reconstruction),
                          dtype=torch.float64)
    if band not in problem.profile.bands:
        raise ValueError(f"band={band!r}; accepted: one of {problem.profile.bands}")
    if rec.shape != (len(problem.profile.bands), problem.profile.image_size, problem.profile.image_size):
        raise ValueError(f"reconstruction has shape {tuple(rec.shape)}; accepted: the model grid "
                         f"({len(problem.profile.bands)}, {problem.profile.image_size}, {problem.profile.image_size})")
    if hst_img.shape != tuple(problem.y.shape[-2:]):
        raise ValueError(f"HST image has shape {hst_img.shape}; accepted: the window {tuple(problem.y.shape[-2:])}")
    if not psf_match >= 0:
        raise ValueError(f"psf_match={psf_match!r}; accepted: a FWHM >= 0 [arcsec]")
    c = problem.profile.bands.index(band)
    rec_obs = problem.operator.resample(rec[c : c + 1][None].to(problem.operator.R_y.dtype))[0, 0]
    rec_obs = rec_obs.double().numpy()
    sig_px = psf_match / problem.pixel_scale_arcsec / (2 * math.sqrt(2 * math.log(2)))  # FWHM -> sigma [px]
    covered = footprint >= 1 - 1e-6
    filled = np.where(covered, hst_img, 0.0)
    if sig_px > 0:
        rec_s = ndimage.gaussian_filter(rec_obs, sig_px, mode="constant")
        hst_s = ndimage.gaussian_filter(filled, sig_px, mode="constant")
        # normalised convolution: correct the HST image near uncovered pixels
        wt = ndimage.gaussian_filter(covered.astype(float), sig_px, mode="constant")
        hst_s = np.where(wt > 0, hst_s / np.maximum(wt, 1e-12), 0.0)
    else:
        rec_s, hst_s = rec_obs, filled
    n = rec_obs.shape[0]
    yy, xx = np.indices((n, n))
    cx, cy = problem.center_xy
    half = problem.m / 2
    inside = covered & (np.abs(xx - cx) < half) & (np.abs(yy - cy) < half)
    if inside.sum() < 10:
        raise ValueError(f"{problem.name}: only {int(inside.sum())} window pixels are covered by HST; need >= 10")
    a, b = rec_s[inside], hst_s[inside]
    corr = float(np.corrcoef(a, b)[0, 1])
    zp = None
    if target is not None and target.hst is not None:
        from astropy.io import fits

        with fits.open(target.hst.path) as hdul:
            for h in hdul:
                zp = hst_ab_zeropoint(h.header)
                if zp is not None:
                    break
    to_hsc = 10 ** (0.4 * (data.HSC_ZEROPOINT - zp)) if zp is not None else float("nan")  # e/s -> coadd flux
    ratio = float(a.sum() / (b.sum() * to_hsc)) if zp is not None else float("nan")
    return HSTAgreement(correlation=corr, flux_ratio=ratio, fwhm_arcsec=float(psf_match), n_pixels=int(inside.sum()),
                        reconstruction=rec_s, hst=hst_s * (to_hsc if zp is not None else 1.0))


# --------------------------------------------------------------------------- redshift sweep


@dataclass
class SweepResult:
    """Arrays over the swept redshifts: ``z``, ``m`` = m(z, p) [obs px], ``upsampling_factor``
    (image_size / m), ``variance_ratio_aperture``, ``chi2`` (n_z, C) reduced chi^2 of the
    posterior mean, ``flux_scale`` s [flux units]; ``dimming`` as passed; ``results`` the
    :class:`PosteriorResult` of each z."""

    z: np.ndarray
    m: np.ndarray
    upsampling_factor: np.ndarray
    variance_ratio_aperture: np.ndarray
    chi2: np.ndarray
    flux_scale: np.ndarray
    dimming: bool
    results: list = field(default_factory=list)


def redshift_sweep(
    flux,
    zs: Sequence[float],
    profile: Profile | str,
    prior,
    reference,
    *,
    dimming: bool = False,
    z_ref: float | None = None,
    sampler: str = "mmps",
    n: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    prior_samples: torch.Tensor | None = None,
    progress: bool = True,
    on_divergence: str = "raise",
    **sampler_kwargs: Any,
) -> SweepResult:
    """The same idealized galaxy observed at each redshift in ``zs`` (e.g. 0.1 to 1.0).

    Parameters
    ----------
    flux : array (C, H, W)
        Idealized image [HSC coadd flux per model px] as observed at ``z_ref``.
    zs : sequence of float
        Redshifts.
    reference : mock.HSCReference
        PSFs and noise of the mock observations.
    dimming : bool
        False (default): the apparent magnitude is held fixed, so only the angular size
        (hence m(z, p) and the upsampling factor) changes and the signal-to-noise stays the
        same: the sweep isolates resolution. True: the flux is dimmed with distance as
        ``(D_L(z_ref) / D_L(z))^2`` (Planck15; no k-correction, no surface-brightness
        evolution), so the galaxy also fades.
    z_ref : float
        Redshift at which ``flux`` is the apparent flux (default ``min(zs)``); used only with ``dimming``.
    sampler, n, steps, sampler_kwargs : see :func:`deconvolve`.
    seed : int
        Seeds the noise of mock i with ``seed + i`` and its posterior with ``seed + 1000 + i``.
    on_divergence : {"raise", "nan"}
        What a diverged sampler (``SamplerDivergenceError`` or :class:`DeconvolutionError`)
        does: ``"raise"`` (default) re-raises; ``"nan"`` prints it, records NaN variance
        ratio and chi^2 at that z (``results`` holds None there) and goes on.

    Returns
    -------
    SweepResult
    """
    from . import mock as mock_mod

    from .samplers import SamplerDivergenceError

    P = get_profile(profile)
    if on_divergence not in ("raise", "nan"):
        raise ValueError(f"on_divergence={on_divergence!r}; accepted: 'raise' or 'nan'")
    zs = [float(z) for z in zs]
    if not zs:
        raise ValueError("zs is empty; accepted: at least one redshift > 0")
    base = np.asarray(flux.detach().cpu() if torch.is_tensor(flux) else flux, dtype=np.float64)
    z_ref = min(zs) if z_ref is None else float(z_ref)
    if prior_samples is None:
        prior_samples = cached_prior_samples(prior, progress=progress)
    if dimming:
        from astropy.cosmology import Planck15

        d_ref = Planck15.luminosity_distance(z_ref).value
    rows = []
    results = []
    for i, z in enumerate(tqdm(zs, desc="redshift sweep", disable=not progress)):
        f = base * ((d_ref / Planck15.luminosity_distance(z).value) ** 2 if dimming else 1.0)
        g = torch.Generator().manual_seed(seed + i)
        mk = mock_mod.make_mock(f, z, P, reference, g)
        prob = from_mock(mk, P)
        try:
            res = deconvolve(prob, prior, sampler=sampler, n=n, steps=steps, generator=seed + 1000 + i,
                             prior_samples=prior_samples, progress=progress, **sampler_kwargs)
        except (SamplerDivergenceError, DeconvolutionError) as err:
            if on_divergence == "raise":
                raise
            print(f"[diffdecon] redshift sweep z = {z:g}: {sampler} DIVERGED ({err}); recorded as NaN")
            rows.append((z, prob.m, prob.upsampling_factor, float("nan"), np.full(len(P.bands), np.nan), prob.scale))
            results.append(None)
            continue
        rows.append((z, prob.m, prob.upsampling_factor, res.variance_ratio_aperture, res.chi2, prob.scale))
        results.append(res)
    z_, m_, u_, v_, c_, s_ = zip(*rows)
    return SweepResult(z=np.array(z_), m=np.array(m_), upsampling_factor=np.array(u_),
                       variance_ratio_aperture=np.array(v_), chi2=np.stack(c_), flux_scale=np.array(s_),
                       dimming=dimming, results=results)


def upsampling_crossing(profile: Profile | str, factor: float = 2.0, pixel_scale_arcsec: float = HSC_PIXEL_SCALE,
                        z_max: float = 1.5) -> float | None:
    """Redshift at which the upsampling factor ``image_size / m(z, p)`` reaches ``factor``.

    m(z, p) = N s_kpc arcsec_per_kpc(z) / p (:func:`physics.observed_size`) falls with z up
    to z ~ 1.6, so the factor rises monotonically on (0, ``z_max``] for ``z_max`` <= 1.5;
    the crossing is found by bisection (``scipy.optimize.brentq``, xtol 1e-6). Returns None
    when the factor stays below ``factor`` up to ``z_max`` (e.g. the coarse smoke grid) or
    is already above it at z = 0.01.

    Parameters
    ----------
    profile : Profile or str
    factor : float
        Upsampling factor (> 0; the paper's hallucination threshold is about 2).
    pixel_scale_arcsec : float
        Observation pixel scale p [arcsec/px].
    z_max : float
        Upper end of the search (0.01 < z_max <= 1.5).
    """
    from scipy.optimize import brentq

    P = get_profile(profile)
    if not (isinstance(factor, (int, float)) and factor > 0):
        raise ValueError(f"factor={factor!r}; accepted: an upsampling factor > 0")
    if not 0.01 < z_max <= 1.5:
        raise ValueError(f"z_max={z_max!r}; accepted: 0.01 < z_max <= 1.5 (m(z, p) is monotonic there)")
    if not pixel_scale_arcsec > 0:
        raise ValueError(f"pixel_scale_arcsec={pixel_scale_arcsec!r}; accepted: > 0 [arcsec/px]")

    def excess(z: float) -> float:  # image_size / m(z, p) - factor
        m = P.image_size * P.pixel_scale_kpc * physics.arcsec_per_kpc(z) / pixel_scale_arcsec
        return P.image_size / m - factor

    lo, hi = 0.01, float(z_max)
    if excess(lo) >= 0 or excess(hi) < 0:
        return None
    return float(brentq(excess, lo, hi, xtol=1e-6))


@dataclass
class TargetAnalysis:
    """One real target deconvolved and compared with HST (:func:`analyse_target`).

    Attributes
    ----------
    name : str
    z, i_mag : catalogue redshift and i-band Kron magnitude [AB].
    m, upsampling_factor : m(z, p) [HSC px] and ``image_size / m``.
    problem : InverseProblem
    result : PosteriorResult or None (None when the sampler diverged).
    error : str or None
        The divergence message when ``result`` is None.
    hst : ndarray (n, n) or None
        HST resampled onto the window [HST units per HSC px] (NaN where not covered), None
        when the target has no HST cutout.
    agreement : HSTAgreement or None
        Posterior mean vs HST (None without HST or without a posterior).
    wall_time_s : float
        Wall time of the whole analysis: preparation, sampling, HST [s].
    """

    name: str
    z: float
    i_mag: float
    m: float
    upsampling_factor: float
    problem: InverseProblem
    result: PosteriorResult | None
    error: str | None
    hst: np.ndarray | None
    agreement: HSTAgreement | None
    wall_time_s: float

    def figure_row(self, n_single: int = 2) -> dict[str, Any]:
        """Arrays for :func:`diffdecon.plotting.hsc_target_figure`: ``y`` (3, n, n)
        [flux/HSC px]; when sampled, ``mean``, ``std`` (3, H, W) and ``samples``
        (``n_single``, 3, H, W) [flux/model px], ``variance_ratio`` (H, W) and its aperture
        value; ``hst`` or None; ``error``; a ``title``."""
        row: dict[str, Any] = {"title": f"{self.name}\nz = {self.z:.3f}, i = {self.i_mag:.2f}",
                               "y": self.problem.y, "hst": self.hst, "error": self.error,
                               "aperture_radius_px": self.problem.profile.aperture_radius_px}
        if self.result is not None:
            r = self.result
            row.update(mean=r.mean, std=r.std, samples=r.flux_samples[:n_single], variance_ratio=r.variance_ratio,
                       variance_ratio_aperture=r.variance_ratio_aperture)
        return row


def analyse_target(target: data.HSCTarget, prior, *, sampler: str = "mmps", n: int | None = None,
                   steps: int | None = None, prior_samples: torch.Tensor | None = None,
                   progress: bool = True, **sampler_kwargs: Any) -> TargetAnalysis:
    """Prepare, deconvolve and compare with HST one real target (Figures 4-9 of the paper).

    Runs :func:`prepare_target`, :func:`deconvolve` (``sampler``, ``n``, ``steps``,
    ``sampler_kwargs`` as there) and, when the target has an HST cutout,
    :func:`hst_on_hsc_grid` and :func:`hst_agreement` of the posterior mean. A diverged
    sampler (``SamplerDivergenceError`` or :class:`DeconvolutionError`) is not raised: it is
    printed and kept in ``error``, and the target's ``result`` is None, so a notebook can go
    on and report it. Any other error propagates.
    """
    from .samplers import SamplerDivergenceError

    t0 = time.perf_counter()
    problem = prepare_target(target, prior.profile)
    result, error = None, None
    try:
        result = deconvolve(problem, prior, sampler=sampler, n=n, steps=steps, prior_samples=prior_samples,
                            progress=progress, **sampler_kwargs)
    except (SamplerDivergenceError, DeconvolutionError) as err:
        error = f"{sampler} diverged: {err}"
        print(f"[diffdecon] {target.name}: {error}")
    hst, agreement = None, None
    resampled = hst_on_hsc_grid(target, problem)
    if resampled is not None:
        hst = resampled[0]
        if result is not None:
            agreement = hst_agreement(result.mean, problem, resampled, target)
    return TargetAnalysis(name=target.name, z=float(target.z), i_mag=float(target.i_mag), m=problem.m,
                          upsampling_factor=problem.upsampling_factor, problem=problem, result=result,
                          error=error, hst=hst, agreement=agreement, wall_time_s=time.perf_counter() - t0)


def analysis_table_rows(analyses: Sequence[TargetAnalysis]) -> list[list[str]]:
    """Rows of the targets' table (LaTeX-ready strings): target, z, i mag, m(z, p) [HSC px],
    upsampling factor, reduced chi^2 per band g, r, i of A(posterior mean) against y, the
    aperture variance ratio, the HST correlation (``no HST`` without a cutout) and the wall
    time [s]. A diverged sampler shows ``diverged`` in the posterior columns."""
    from .manuscript import latex_escape

    rows = []
    for a in analyses:
        row = [latex_escape(a.name), f"{a.z:.4f}", f"{a.i_mag:.2f}", f"{a.m:.1f}", f"{a.upsampling_factor:.2f}"]
        if a.result is None:
            row += ["diverged"] * 4
        else:
            row += [f"{c:.2f}" if abs(c) < 1e4 else f"{c:.2e}" for c in a.result.chi2]
            row += [f"{a.result.variance_ratio_aperture:.3f}"]
        if a.hst is None:
            row.append("no HST")
        else:
            row.append("diverged" if a.agreement is None else f"{a.agreement.correlation:.3f}")
        row.append(f"{a.wall_time_s:.1f}")
        rows.append(row)
    return rows
