"""The magnitude sweep (the paper's Table 2 and Appendix C): signal-to-noise against the
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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Profile, get_profile

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

ZERO_POINT: float = 27.0
"""HSC coadd zero point [AB mag]: ``mag = 27 - 2.5 log10 F``."""


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
    f = np.asarray(flux.detach().cpu() if torch.is_tensor(flux) else flux, dtype=np.float64)
    if f.ndim != 3 or not 0 <= band < f.shape[0]:
        raise ValueError(f"flux has shape {f.shape}, band={band}; accepted: (C, H, W) with 0 <= band < C")
    if not np.isfinite(mag):
        raise ValueError(f"mag={mag!r}; accepted: a finite AB magnitude")
    total = float(f[band].sum())
    if not total > 0:
        raise ValueError(f"band {band} has total flux {total:.4g}; accepted: > 0")
    return f * (10.0 ** (-0.4 * (float(mag) - ZERO_POINT)) / total)


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
    sampler, n, steps, sampler_kwargs : passed to :func:`diffdecon.targets.deconvolve`.
    seed : int
        The noise of magnitude ``k`` is drawn with seed ``seed + k``, its posterior with
        ``seed + 1000 + k``: the same noise pattern (scaled) and the same sampler noise at
        every magnitude, so differences come from the signal-to-noise alone.
    prior_samples : (N, C, H, W) unconditional prior samples (default the cached ones).

    Returns
    -------
    MagnitudeSweep
    """
    from . import mock, targets

    P = get_profile(prior.profile)
    mags = [float(m) for m in mags]
    if not mags:
        raise ValueError("mags is empty; accepted: at least one magnitude")
    ref = mock.gaussian_reference(psf_fwhm_arcsec, sigma)
    if prior_samples is None:
        prior_samples = targets.cached_prior_samples(prior, progress=progress)
    rows = []
    wall = 0.0
    for k, mag in enumerate(tqdm(mags, desc="magnitude sweep", disable=not progress, leave=False)):
        f = set_magnitude(flux, mag)
        mk = mock.make_mock(f, z, P, ref, torch.Generator().manual_seed(seed + k))
        prob = targets.from_mock(mk, prior)
        res = targets.deconvolve(prob, prior, sampler=sampler, n=n, steps=steps, generator=seed + 1000 + k,
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
