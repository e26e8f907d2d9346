"""The sweeps over one idealized galaxy: magnitude (signal-to-noise) and redshift (resolution).

**Magnitude sweep** (the paper's Table 2 and Appendix C): signal-to-noise against the
posterior's variance ratio.

One idealized galaxy is set to total magnitudes 18..23, observed through a Gaussian PSF with
the noise sigma measured on HSC images (:func:`diffdecon.mock.gaussian_reference`), and
deconvolved; the posterior / prior variance ratio inside the aperture should grow as the
signal-to-noise falls (the data constrain less, the prior fills in more).

Choices, stated once:

* **Magnitude.** "Total magnitude" is the i-band magnitude (the catalogue magnitude quoted
  for the paper's targets): all bands are scaled by one factor so that the i-band flux is
  ``10**(-0.4 (mag - 27))`` [HSC coadd flux]; the colours of the galaxy are kept.
* **SNR.** The paper's recipe is the mean flux inside the aperture (r = 30 px at 256 px)
  divided by sigma_y. A mean flux per *model* pixel depends on the model pixel scale, and
  sigma_y is a noise per *observation* pixel, so here the mean is taken on the noiseless
  observation ``A(x)`` [flux per obs px] inside the same physical aperture (radius
  ``aperture_radius_px / upsampling_factor`` obs px around the galaxy centre), per band
  divided by that band's sigma_y, then averaged over bands. The absolute values differ from
  the published ones (other galaxy, other pixel grids, other flux units); the 0.4 dex per
  magnitude scaling is the same.

**Redshift sweep** (:func:`redshift_sweep`): the same galaxy moved from z = 0.1 to 1.0,
recording how the posterior's variance ratio grows with the upsampling factor
``image_size / m(z, p)``; :func:`upsampling_crossing` gives the redshift at which that
factor reaches a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import physics, reference_samples
from .arrays import to_numpy
from .config import HSC_PIXEL_SCALE, Profile, get_profile
from .deconvolution import deconvolve
from .errors import DivergenceError, InputValueError
from .problem import from_mock
from .units import mag_to_flux

__all__ = [
    "MAGNITUDES",
    "PUBLISHED_SNR",
    "PUBLISHED_VARIANCE_RATIO",
    "PSF_FWHM_ARCSEC",
    "set_magnitude",
    "observed_snr",
    "MagnitudeSweep",
    "magnitude_sweep",
    "galaxy_sweeps",
    "sweep_rows",
    "mock_problem",
    "SweepResult",
    "redshift_sweep",
    "upsampling_crossing",
]

MAGNITUDES: tuple[float, ...] = (18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
"""Total (i-band) magnitudes of the sweep [AB mag]."""

PUBLISHED_SNR: tuple[float, ...] = (699.3, 278.4, 110.8, 44.1, 17.6, 7.0)
"""The paper's Table 2, SNR row, at :data:`MAGNITUDES`."""

PUBLISHED_VARIANCE_RATIO: tuple[float, ...] = (0.0114, 0.0116, 0.0168, 0.0346, 0.0560, 0.0685)
"""The paper's Table 2, variance ratio (r = 30 px) row, at :data:`MAGNITUDES`."""

PSF_FWHM_ARCSEC: float = 0.7
"""FWHM of the sweep's Gaussian PSF [arcsec]: the middle of the HSC UltraDeep seeing
(0.6-0.8 arcsec)."""

def set_magnitude(flux, mag: float, band: int = 2) -> np.ndarray:
    """Scale an idealized image so that band ``band`` (default 2 = i) has total magnitude
    ``mag`` [AB], keeping the colours.

    Parameters
    ----------
    flux : array (C, H, W) [HSC coadd flux per model px], positive total in ``band``.
    mag : float [AB mag]

    Returns
    -------
    ndarray (C, H, W) float64 [HSC coadd flux per model px].
    """
    f = to_numpy(flux)
    if f.ndim != 3 or not 0 <= band < f.shape[0]:
        raise ValueError(f"flux has shape {f.shape}, band={band}; accepted: (C, H, W) with 0 <= band < C")
    if not np.isfinite(mag):
        raise ValueError(f"mag={mag!r}; accepted: a finite AB magnitude")
    total = float(f[band].sum())
    if not total > 0:
        raise ValueError(f"band {band} has total flux {total:.4g}; accepted: > 0")
    return f * (float(mag_to_flux(mag)) / total)


def observed_snr(noiseless_obs, sigma, radius_obs_px: float, center_xy: tuple[float, float]) -> float:
    """The sweep's SNR: :func:`diffdecon.posterior.aperture_snr` of the noiseless observation
    ``A(x)`` (C, n, n) [flux per obs px] with per-band ``sigma`` (C,) [flux per obs px] in a
    circle of ``radius_obs_px`` [obs px] around ``center_xy`` = (x, y) [obs px], averaged
    over bands [dimensionless]."""
    from . import posterior

    x, y = center_xy
    snr = posterior.aperture_snr(torch.as_tensor(np.asarray(noiseless_obs, dtype=np.float64)),
                                 torch.as_tensor(np.asarray(sigma, dtype=np.float64)), radius_obs_px, center=(y, x))
    return float(torch.as_tensor(snr).mean())


@dataclass
class MagnitudeSweep:
    """One galaxy across :data:`MAGNITUDES`.

    Attributes
    ----------
    mags : ndarray (n_mag,) [AB mag]
    snr : ndarray (n_mag,) :func:`observed_snr` of each noiseless observation.
    variance_ratio_aperture : ndarray (n_mag,) posterior / prior variance ratio, mean inside
        ``profile.aperture_radius_px`` [model px].
    chi2 : ndarray (n_mag, C) reduced chi^2 of ``A(posterior mean)`` against ``y``.
    truth : ndarray (n_mag, C, H, W) idealized images [flux per model px].
    observed : ndarray (n_mag, C, n, n) observations [flux per obs px].
    mean : ndarray (n_mag, C, H, W) posterior means [flux per model px].
    variance_ratio : ndarray (n_mag, H, W) variance-ratio maps.
    z : float; psf_fwhm_arcsec : float; sigma : ndarray (C,) [flux per obs px];
    sampler : str; steps, n : int; wall_time_s : float (sampling time, all magnitudes).
    """

    mags: np.ndarray
    snr: np.ndarray
    variance_ratio_aperture: np.ndarray
    chi2: np.ndarray
    truth: np.ndarray
    observed: np.ndarray
    mean: np.ndarray
    variance_ratio: np.ndarray
    z: float
    psf_fwhm_arcsec: float
    sigma: np.ndarray
    sampler: str
    steps: int
    n: int
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def magnitude_sweep(flux, prior, sigma, *, mags: Sequence[float] = MAGNITUDES, z: float = 0.21677,
                    psf_fwhm_arcsec: float = PSF_FWHM_ARCSEC, sampler: str = "mmps", n: int | None = None,
                    steps: int | None = None, seed: int = 0, prior_samples=None, progress: bool = True,
                    **sampler_kwargs: Any) -> MagnitudeSweep:
    """Observe one idealized galaxy at each magnitude and deconvolve it.

    Parameters
    ----------
    flux : array (C, H, W) idealized image [flux per model px]; only its shape and colours
        matter (it is rescaled by :func:`set_magnitude`).
    prior : diffusion prior (``diffdecon.prior`` contract); its profile sets the grid.
    sigma : scalar or (C,) noise sigma [HSC coadd flux per obs px] (``mock.hsc_reference().sigma``).
    mags : magnitudes [AB]; z : redshift (default: the paper's first target, 0.21677).
    psf_fwhm_arcsec : FWHM of the Gaussian PSF [arcsec].
    sampler, n, steps, sampler_kwargs : passed to :func:`diffdecon.deconvolution.deconvolve`.
    seed : int
        The noise of magnitude ``k`` is drawn with seed ``seed + k``, its posterior with
        ``seed + 1000 + k``: the same noise pattern (scaled) and the same sampler noise at
        every magnitude, so differences come from the signal-to-noise alone.
    prior_samples : (N, C, H, W) unconditional prior samples (default the cached ones).

    Returns
    -------
    MagnitudeSweep
    """
    from . import mock

    P = get_profile(prior.profile)
    mags = [float(m) for m in mags]
    if not mags:
        raise ValueError("mags is empty; accepted: at least one magnitude")
    ref = mock.gaussian_reference(psf_fwhm_arcsec, sigma)
    if prior_samples is None:
        prior_samples = reference_samples.prior_samples(prior, progress=progress)
    rows = []
    wall = 0.0
    for k, mag in enumerate(tqdm(mags, desc="magnitude sweep", disable=not progress, leave=False)):
        f = set_magnitude(flux, mag)
        mk, prob = mock_problem(f, z, P, ref, seed + k)
        res = deconvolve(prob, prior, sampler=sampler, n=n, steps=steps, generator=seed + 1000 + k,
                         prior_samples=prior_samples, progress=False, **sampler_kwargs)
        wall += res.wall_time_s
        with torch.no_grad():
            clean = mk.operator.A(mk.truth[None])[0]
        snr = observed_snr(clean.numpy(), ref.sigma, P.aperture_radius_px / mk.operator.upsampling_factor,
                           prob.center_xy)
        rows.append((snr, res.variance_ratio_aperture, res.chi2, f, mk.y.double().numpy(),
                     res.mean.double().numpy(), np.asarray(res.variance_ratio, dtype=np.float64)))
    snr, vr, chi2, tr, obs, mean, vmap = (np.array(v) for v in zip(*rows))
    return MagnitudeSweep(mags=np.array(mags), snr=snr, variance_ratio_aperture=vr, chi2=chi2, truth=tr,
                          observed=obs, mean=mean, variance_ratio=vmap, z=float(z),
                          psf_fwhm_arcsec=float(psf_fwhm_arcsec), sigma=np.asarray(ref.sigma),
                          sampler=sampler, steps=res.steps, n=res.n, wall_time_s=wall)


def galaxy_sweeps(images, prior, sigma, progress: bool = True, **kwargs: Any) -> list[MagnitudeSweep]:
    """:func:`magnitude_sweep` for each idealized image of ``images`` (N, C, H, W); galaxy
    ``i`` uses seed ``kwargs.get("seed", 0) + 100 i``. Other arguments as :func:`magnitude_sweep`."""
    if len(images) < 1:
        raise ValueError("images is empty; accepted: at least one idealized image")
    seed = int(kwargs.pop("seed", 0))
    return [magnitude_sweep(img, prior, sigma, seed=seed + 100 * i, progress=progress, **kwargs)
            for i, img in enumerate(tqdm(images, desc="galaxies", disable=not progress))]


def sweep_rows(sweeps: Sequence[MagnitudeSweep]) -> dict[str, np.ndarray]:
    """Statistics over galaxies at each magnitude: ``mags``, ``snr_mean``, ``snr_std``,
    ``vr_mean``, ``vr_std`` (std with ddof = 1; 0 for one galaxy), ``chi2_mean`` (over
    galaxies and bands) and ``n_galaxies``."""
    if not sweeps:
        raise ValueError("sweeps is empty; accepted: at least one MagnitudeSweep")
    mags = sweeps[0].mags
    if any(not np.array_equal(s.mags, mags) for s in sweeps):
        raise ValueError("sweeps cover different magnitudes; accepted: the same magnitudes for all galaxies")
    snr = np.stack([s.snr for s in sweeps])
    vr = np.stack([s.variance_ratio_aperture for s in sweeps])
    chi2 = np.stack([s.chi2.mean(1) for s in sweeps])
    ddof = 1 if len(sweeps) > 1 else 0
    return {"mags": mags, "snr_mean": snr.mean(0), "snr_std": snr.std(0, ddof=ddof), "vr_mean": vr.mean(0),
            "vr_std": vr.std(0, ddof=ddof), "chi2_mean": chi2.mean(0), "n_galaxies": len(sweeps)}


def mock_problem(flux, z: float, profile: Profile | str, reference, noise_seed: int):
    """``(mock, problem)``: ``flux`` (C, H, W) [flux per model px] observed at ``z`` through
    ``reference`` (:func:`diffdecon.mock.make_mock`, noise from a generator seeded with
    ``noise_seed``) and its :class:`~diffdecon.problem.InverseProblem`."""
    from . import mock

    mk = mock.make_mock(flux, z, profile, reference, torch.Generator().manual_seed(int(noise_seed)))
    return mk, from_mock(mk, profile)


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


def redshift_sweep(flux, zs: Sequence[float], profile: Profile | str, prior, reference, *, dimming: bool = False,
                   z_ref: float | None = None, sampler: str = "mmps", n: int | None = None, steps: int | None = None,
                   seed: int = 0, prior_samples: torch.Tensor | None = None, progress: bool = True,
                   on_divergence: str = "raise", **sampler_kwargs: Any) -> SweepResult:
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
    sampler, n, steps, sampler_kwargs : see :func:`diffdecon.deconvolution.deconvolve`.
    seed : int
        Seeds the noise of mock i with ``seed + i`` and its posterior with ``seed + 1000 + i``.
    on_divergence : {"raise", "nan"}
        What a diverged sampler (:class:`diffdecon.errors.DivergenceError`) does: ``"raise"``
        (default) re-raises; ``"nan"`` prints it, records NaN variance ratio and chi^2 at that
        z (``results`` holds None there) and goes on.
    """
    P = get_profile(profile)
    if on_divergence not in ("raise", "nan"):
        raise InputValueError("on_divergence", on_divergence, "'raise' or 'nan'")
    zs = [float(z) for z in zs]
    if not zs:
        raise ValueError("zs is empty; accepted: at least one redshift > 0")
    base = to_numpy(flux)
    z_ref = min(zs) if z_ref is None else float(z_ref)
    if prior_samples is None:
        prior_samples = reference_samples.prior_samples(prior, progress=progress)
    rows, results = [], []
    for i, z in enumerate(tqdm(zs, desc="redshift sweep", disable=not progress)):
        f = base * (_dimming(z_ref, z) if dimming else 1.0)
        mk, prob = mock_problem(f, z, P, reference, seed + i)
        try:
            res = deconvolve(prob, prior, sampler=sampler, n=n, steps=steps, generator=seed + 1000 + i,
                             prior_samples=prior_samples, progress=progress, **sampler_kwargs)
        except DivergenceError as err:
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


def _dimming(z_ref: float, z: float) -> float:
    """Flux factor ``(D_L(z_ref) / D_L(z))^2`` (Planck15) of a galaxy moved from z_ref to z."""
    from astropy.cosmology import Planck15

    return (Planck15.luminosity_distance(z_ref).value / Planck15.luminosity_distance(z).value) ** 2


def upsampling_crossing(profile: Profile | str, factor: float = 2.0, pixel_scale_arcsec: float = HSC_PIXEL_SCALE,
                        z_max: float = 1.5) -> float | None:
    """Redshift at which the upsampling factor ``image_size / m(z, p)`` reaches ``factor``.

    m(z, p) (:func:`diffdecon.physics.observed_size`) falls with z up
    to z ~ 1.6, so the factor rises monotonically on (0, ``z_max``] for ``z_max`` <= 1.5;
    the crossing is found by bisection (``scipy.optimize.bisect``, xtol 1e-6). Returns None
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
    from scipy.optimize import bisect

    P = get_profile(profile)
    if not (isinstance(factor, (int, float)) and factor > 0):
        raise InputValueError("factor", factor, "an upsampling factor > 0")
    if not 0.01 < z_max <= 1.5:
        raise InputValueError("z_max", z_max, "0.01 < z_max <= 1.5 (m(z, p) is monotonic there)")
    if not pixel_scale_arcsec > 0:
        raise InputValueError("pixel_scale_arcsec", pixel_scale_arcsec, "> 0 [arcsec/px]")

    def excess(z: float) -> float:  # image_size / m(z, p) - factor
        try:
            m = physics.observed_size(z, P.image_size, P.pixel_scale_kpc, pixel_scale_arcsec)
        except ValueError:  # m below MIN_OBSERVED_SIZE: the factor is larger still
            return math.inf
        return P.image_size / m - factor

    lo, hi = 0.01, float(z_max)
    if excess(lo) >= 0 or excess(hi) < 0:
        return None
    return float(bisect(excess, lo, hi, xtol=1e-6))
