"""Noise of HST-like exposures, in electrons: sky and source Poisson noise, read noise,
correlated noise with the measured COSMOS correlation function, and cosmic rays.

An exposure in electrons per exposure pixel is simulated as (sky subtracted)

    y = Poisson(A x + b) - b + r n_1 + c_corr L n_2 + CR                        (1)

with ``b = sky_rate * t`` the sky [e-/px], ``r`` the read noise [e-], ``n_1, n_2`` white
standard normal, ``L`` the circulant square root of the COSMOS F814W correlation function
(``galsim.getCOSMOSNoise()``, measured on the 0.03 arcsec/px coadds and drawn here at the
exposure pixel scale; where an exposure is undersampled relative to 0.03 arcsec its
correlation length in pixels shrinks accordingly), ``c_corr`` its standard deviation [e-],
and CR the cosmic-ray deposits. Defaults are ACS/WFC F814W-like values chosen for this
study (stated here, not measured): 507 s exposures (four per orbit, as in COSMOS), sky
0.08 e-/s/px, read noise 4.5 e-, correlated component 3 e-. Cosmic rays follow published
ACS statistics: ``cr_fraction_per_ks`` (2 %) of the pixels hit per 1000 s, events of
``cr_pixels_mean`` (4.5) pixels along a short straight track, total deposits log-normal
with median ``cr_median_e`` (900 e-) and log-width ``cr_sigma_ln`` (0.8), which gives
several hundred to a few thousand electrons with a long tail.

The background noise ``eta = y - A x`` without source shot noise is what the noise score
of :mod:`diffdecon.slic` learns from cutouts (:meth:`NoiseModel.cutouts`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["NoiseModel", "cosmos_power_spectrum", "cosmic_rays"]


@functools.lru_cache(maxsize=16)
def _cosmos_ps(M: int, pixel_scale_arcsec: float) -> np.ndarray:
    import galsim

    cn = galsim.getCOSMOSNoise(variance=1.0)
    img = galsim.ImageD(M, M, scale=pixel_scale_arcsec)
    cn.drawImage(img)  # correlation function, 1 at zero lag (pixel M // 2)
    cf = np.roll(img.array, (-(M // 2), -(M // 2)), (0, 1))
    ps = np.clip(np.fft.fft2(cf).real, 0.0, None)
    return ps / ps.mean()  # unit variance


def cosmos_power_spectrum(M: int, pixel_scale_arcsec: float) -> torch.Tensor:
    """Circulant power spectrum (M, M) of the COSMOS F814W noise correlation function at
    ``pixel_scale_arcsec`` [arcsec/px], normalised to unit pixel variance (mean 1)."""
    if not isinstance(M, int) or M < 2 or not pixel_scale_arcsec > 0:
        raise ValueError(f"M={M!r}, pixel_scale_arcsec={pixel_scale_arcsec!r}; accepted: int M >= 2 [px], scale > 0 [arcsec/px]")
    return torch.as_tensor(_cosmos_ps(M, float(pixel_scale_arcsec)))


def _track(rng: np.random.Generator, n_px: int) -> np.ndarray:
    """Pixel offsets (n_px, 2) of a straight track: one pixel per step along its major axis."""
    phi = rng.uniform(0, math.pi)
    d = np.array([math.sin(phi), math.cos(phi)])
    d = d / np.abs(d).max()
    return np.rint(np.arange(n_px)[:, None] * d).astype(np.int64)


def cosmic_rays(n: int, M: int, exposure_time_s: float, rng: np.random.Generator, fraction_per_ks: float = 0.02,
                pixels_mean: float = 4.5, median_e: float = 900.0, sigma_ln: float = 0.8) -> np.ndarray:
    """Cosmic-ray deposits (n, M, M) [e-]: events with Poisson counts of mean
    ``fraction_per_ks * t / 1000 * M^2 / pixels_mean`` per image, ``1 + Poisson(pixels_mean - 1)``
    pixels each, total deposit log-normal (median ``median_e`` [e-], log-width ``sigma_ln``)
    shared among the track's pixels with Dirichlet(2) weights. Tracks leaving the image are cut."""
    out = np.zeros((n, M, M))
    lam = fraction_per_ks * exposure_time_s / 1000.0 * M * M / pixels_mean
    for b in range(n):
        for _ in range(rng.poisson(lam)):
            k = 1 + rng.poisson(pixels_mean - 1)
            pix = _track(rng, k) + rng.integers(0, M, size=2)
            w = rng.dirichlet(np.full(k, 2.0)) * median_e * math.exp(sigma_ln * rng.standard_normal())
            ok = (pix >= 0).all(1) & (pix < M).all(1)
            np.add.at(out[b], (pix[ok, 0], pix[ok, 1]), w[ok])
    return out


@dataclass(frozen=True)
class NoiseModel:
    """Parameters of eq. (1); every rate per exposure pixel (see module docstring for units)."""

    exposure_time_s: float = 507.0
    sky_rate: float = 0.08
    read_noise: float = 4.5
    correlated_sigma: float = 3.0
    pixel_scale_arcsec: float = 0.05
    cosmic_rays: bool = True
    cr_fraction_per_ks: float = 0.02
    cr_pixels_mean: float = 4.5
    cr_median_e: float = 900.0
    cr_sigma_ln: float = 0.8

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not isinstance(v, bool) and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{k}={v!r}; accepted: finite and >= 0")
        if self.exposure_time_s <= 0 or self.pixel_scale_arcsec <= 0 or self.cr_pixels_mean < 1:
            raise ValueError(f"{self}: accepted exposure_time_s > 0 [s], pixel_scale_arcsec > 0, cr_pixels_mean >= 1 [px]")

    @property
    def sky_e(self) -> float:
        """Sky per exposure pixel b = sky_rate * t [e-]."""
        return self.sky_rate * self.exposure_time_s

    @property
    def white_variance(self) -> float:
        """Variance of the white background part, b + r^2 [e-^2]."""
        return self.sky_e + self.read_noise**2

    def background_power_spectrum(self, M: int) -> torch.Tensor:
        """Power spectrum (M, M) [e-^2] of the Gaussian background covariance C (white +
        COSMOS-correlated, no cosmic rays, no source shot noise), circulant on M x M."""
        return self.white_variance + self.correlated_sigma**2 * cosmos_power_spectrum(M, self.pixel_scale_arcsec)

    def _rng(self, generator: torch.Generator) -> np.random.Generator:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

    def simulate(self, signal, generator: torch.Generator, cosmic_rays_on: bool | None = None) -> dict:
        """Eq. (1) for noiseless exposures ``signal`` (..., M, M) [e-/px].

        Returns a dict of float64 tensors: ``y`` (the exposures [e-]), ``cr`` (the cosmic-ray
        deposits [e-]) and ``cr_mask`` (bool, pixels hit)."""
        s = torch.as_tensor(signal, dtype=torch.float64)
        if s.ndim < 2 or s.shape[-1] != s.shape[-2] or not torch.isfinite(s).all():
            raise ValueError(f"signal of shape {tuple(s.shape)}; accepted: finite (..., M, M) [e-/px]")
        M, b = s.shape[-1], self.sky_e
        shot = torch.poisson((s.clamp_min(0) + b), generator=generator) - b - s.clamp_min(0) + s
        white = self.read_noise * torch.randn(s.shape, generator=generator, dtype=torch.float64)
        z = torch.randn(s.shape, generator=generator, dtype=torch.float64)
        corr = torch.fft.ifft2(torch.fft.fft2(z) * cosmos_power_spectrum(M, self.pixel_scale_arcsec).sqrt()).real
        on = self.cosmic_rays if cosmic_rays_on is None else cosmic_rays_on
        n_img = int(np.prod(s.shape[:-2])) if s.ndim > 2 else 1
        cr = torch.zeros_like(s)
        if on:
            cr = torch.as_tensor(cosmic_rays(n_img, M, self.exposure_time_s, self._rng(generator), self.cr_fraction_per_ks,
                                             self.cr_pixels_mean, self.cr_median_e, self.cr_sigma_ln)).reshape(s.shape)
        y = shot + white + self.correlated_sigma * corr + cr
        return {"y": y, "cr": cr, "cr_mask": cr > 0}

    def cutouts(self, n: int, M: int, generator: torch.Generator, cosmic_rays_on: bool | None = None) -> torch.Tensor:
        """``n`` source-free noise cutouts (n, M, M) [e-]: the training set of the noise score."""
        if not isinstance(n, int) or n < 1 or not isinstance(M, int) or M < 2:
            raise ValueError(f"n={n!r}, M={M!r}; accepted: ints n >= 1, M >= 2 [px]")
        return self.simulate(torch.zeros(n, M, M), generator, cosmic_rays_on)["y"]

    def to_dict(self) -> dict:
        return asdict(self)
