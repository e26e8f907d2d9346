"""Multi-exposure forward model: dithered HST-like exposures of one model image.

Each exposure ``e`` sees the model image ``x`` (linear flux per model pixel [e-]) through

    A_e x = Pool_q( PSF_q * S_e x )                                            (1)

1. ``S_e``, flux-conserving resampling through the exposure's WCS: every model pixel is
   split into ``n_sub x n_sub`` sub-samples of equal flux, each sub-sample is mapped to the
   exposure's supersampled grid (``q`` times finer than the exposure pixels) through the
   inverse of the exposure's WCS (offset, rotation, radial distortion), and deposited there
   with bilinear (cloud-in-cell) weights. Every model pixel's flux is conserved exactly
   (the weights of a model pixel sum to 1) as long as it lands on the padded grid; a
   deposit never comes from an interpolation of surface brightness. ``S_e`` is a sparse
   matrix, so its adjoint is exact.
2. ``PSF_q *``, a 'valid' convolution with the PSF sampled on the supersampled grid
   (``q`` times finer than the exposure pixels); the supersampled grid is padded by the
   PSF half-width so that flux scattered into the field from outside it is kept.
3. ``Pool_q``, sum pooling of ``q x q`` blocks (flux per exposure pixel [e-]).

The model grid is finer than the exposures by ``upsampling = exposure scale / model scale
>= 2`` (:data:`MIN_UPSAMPLING`). Coordinates: the model image's geometric centre is the
sky origin; an exposure's WCS maps its pixel coordinates ``p`` (exposure px, relative to
its geometric centre; rows y, columns x) to sky offsets [arcsec]:

    sky = R(theta) (s_e p (1 + k2 |s_e p|^2)) + s_e d                          (2)

with ``s_e`` the exposure pixel scale [arcsec/px], ``theta`` the rotation [deg], ``k2`` the
radial distortion [1/arcsec^2] and ``d = (dy, dx)`` the dither offset [exposure px].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .physics import _convolve_valid, _convolve_valid_adjoint
from .units import sigma_to_fwhm

__all__ = ["MIN_UPSAMPLING", "ExposureWCS", "default_dithers", "Exposure", "ExposureSet", "psf_fwhm_px"]

MIN_UPSAMPLING: float = 2.0
"""Smallest accepted ratio of exposure pixel scale to model pixel scale: the model must
resolve at least twice finer than an exposure pixel for dithering to carry information."""


@dataclass(frozen=True)
class ExposureWCS:
    """The WCS of one exposure, eq. (2).

    Attributes
    ----------
    pixel_scale_arcsec : exposure pixel scale [arcsec/px] (ACS/WFC: 0.05).
    offset : (dy, dx) dither offset of the exposure centre from the model centre [exposure px].
    rotation_deg : rotation of the exposure's axes on the sky [deg].
    distortion : radial distortion coefficient k2 [1/arcsec^2] (0: none).
    """

    pixel_scale_arcsec: float = 0.05
    offset: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    distortion: float = 0.0

    def __post_init__(self):
        vals = [self.pixel_scale_arcsec, *self.offset, self.rotation_deg, self.distortion]
        if len(self.offset) != 2 or not all(math.isfinite(float(v)) for v in vals) or self.pixel_scale_arcsec <= 0:
            raise ValueError(f"invalid {self!r}; accepted: pixel_scale_arcsec > 0 [arcsec/px], offset (dy, dx) "
                             "finite [exposure px], finite rotation_deg [deg] and distortion [1/arcsec^2]")

    def _rot(self) -> np.ndarray:
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        return np.array([[c, -s], [s, c]])

    def pixel_to_sky(self, p: np.ndarray) -> np.ndarray:
        """Exposure pixel coordinates (..., 2) as (y, x) [exposure px, from its centre] ->
        sky offsets (..., 2) [arcsec, from the model centre], eq. (2)."""
        u = self.pixel_scale_arcsec * np.asarray(p, dtype=np.float64)
        u = u * (1.0 + self.distortion * (u**2).sum(-1, keepdims=True))
        return u @ self._rot().T + self.pixel_scale_arcsec * np.asarray(self.offset)

    def sky_to_pixel(self, sky: np.ndarray, iters: int = 20) -> np.ndarray:
        """Inverse of :meth:`pixel_to_sky` (fixed-point iteration on the distortion term;
        converges for |k2| r^2 << 1, checked to 1e-9 exposure px)."""
        q = (np.asarray(sky, dtype=np.float64) - self.pixel_scale_arcsec * np.asarray(self.offset)) @ self._rot()
        u = q.copy()
        for _ in range(iters):
            u = q / (1.0 + self.distortion * (u**2).sum(-1, keepdims=True))
        p = u / self.pixel_scale_arcsec
        err = np.abs(self.pixel_to_sky(p) - np.asarray(sky)).max() / self.pixel_scale_arcsec if p.size else 0.0
        if err > 1e-9:
            raise ValueError(f"distortion={self.distortion!r} [1/arcsec^2] too strong to invert (residual "
                             f"{err:.2g} px); accepted: |k2| r^2 << 1 over the field")
        return p


def default_dithers(n: int = 4, pixel_scale_arcsec: float = 0.05, rotation_deg: float = 0.3,
                    distortion: float = 0.0) -> list[ExposureWCS]:
    """``n`` dithered WCSs: a sub-pixel box pattern ((0,0), (0.5,0.5), (0.25,0.75), (0.75,0.25)
    exposure px, repeated) with rotations alternating in sign by ``rotation_deg`` [deg]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}; accepted: a positive int (number of exposures)")
    pattern = [(0.0, 0.0), (0.5, 0.5), (0.25, 0.75), (0.75, 0.25)]
    return [ExposureWCS(pixel_scale_arcsec, tuple(v - 0.375 for v in pattern[e % 4]),
                        rotation_deg * (e - (n - 1) / 2) / max(1, (n - 1) / 2), distortion) for e in range(n)]


def psf_fwhm_px(psf: np.ndarray) -> float:
    """FWHM of a PSF image from its second moments, ``2 sqrt(2 ln 2) sqrt((Ixx + Iyy)/2)`` [its px]."""
    k = psf.shape[-1]
    r = np.arange(k) - (k - 1) / 2
    w = np.clip(psf, 0, None)
    w = w / w.sum()
    var = 0.5 * ((w.sum(1) * r**2).sum() + (w.sum(0) * r**2).sum())
    return float(sigma_to_fwhm(math.sqrt(var)))


def _check_psf(psf, q: int) -> np.ndarray:
    arr = np.array(psf.detach().cpu() if isinstance(psf, torch.Tensor) else psf, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] % 2 == 0:
        raise ValueError(f"psf has shape {arr.shape}; accepted: (k, k) with k odd [supersampled px]")
    if not np.all(np.isfinite(arr)) or not arr.sum() > 0:
        raise ValueError("psf has non-finite values or a non-positive sum; accepted: finite, positive sum")
    arr = arr / arr.sum()
    fwhm = psf_fwhm_px(arr)
    if fwhm < q:  # an exposure-sampled PSF declared as supersampled spans < q supersampled px
        raise ValueError(
            f"psf FWHM is {fwhm:.2f} supersampled px = {fwhm / q:.2f} exposure px under the declared "
            f"psf_oversampling={q}; accepted: a PSF sampled {q}x finer than the exposure pixels, whose "
            f"FWHM spans at least one exposure pixel ({q} supersampled px)")
    return arr


class Exposure:
    """One exposure's operator ``A_e`` of eq. (1), flux -> flux, exact adjoint.

    Parameters
    ----------
    wcs : :class:`ExposureWCS`.
    shape : int, side M of the exposure [exposure px].
    psf : (k, k) PSF on the supersampled grid (k odd) [relative flux per supersampled px].
    psf_oversampling : int q, supersampled px per exposure px.
    model_size : int N, side of the model grid [model px].
    model_pixel_scale_arcsec : model pixel scale [arcsec/px].
    band : filter name (all exposures of a set must share it).
    n_sub : sub-samples per model pixel side (default: enough to cover each supersampled
        pixel at least twice).
    """

    def __init__(self, wcs: ExposureWCS, shape: int, psf, psf_oversampling: int, model_size: int,
                 model_pixel_scale_arcsec: float, band: str = "F814W", n_sub: int | None = None):
        if not isinstance(shape, (int, np.integer)) or shape < 2:
            raise ValueError(f"shape={shape!r}; accepted: an int >= 2 [exposure px]")
        if not isinstance(psf_oversampling, (int, np.integer)) or psf_oversampling < 1:
            raise ValueError(f"psf_oversampling={psf_oversampling!r}; accepted: a positive int")
        self.wcs, self.M, self.q, self.N, self.band = wcs, int(shape), int(psf_oversampling), int(model_size), band
        self.s_m = float(model_pixel_scale_arcsec)
        self.upsampling = wcs.pixel_scale_arcsec / self.s_m
        if not self.upsampling >= MIN_UPSAMPLING - 1e-9:
            raise ValueError(f"exposure/model pixel-scale ratio {self.upsampling:.3g} (exposure "
                             f"{wcs.pixel_scale_arcsec} arcsec/px, model {self.s_m} arcsec/px); accepted: >= {MIN_UPSAMPLING}")
        self.psf = _check_psf(psf, self.q)
        self.pad = (self.psf.shape[0] - 1) // 2
        self.n_hi = self.M * self.q + 2 * self.pad
        self._check_overlap()
        s_hi = wcs.pixel_scale_arcsec / self.q
        self.n_sub = int(n_sub) if n_sub is not None else max(2, math.ceil(2 * self.s_m * (1 + abs(wcs.distortion)) / s_hi))
        self._S = self._splat_matrix()
        self._cache: dict = {}

    def _check_overlap(self) -> None:
        """Every exposure pixel must lie inside the model field (else it would be modelled
        as empty sky)."""
        h = self.M / 2
        corners = np.array([[-h, -h], [-h, h], [h, -h], [h, h]])
        edge = np.linspace(-h, h, 9)
        border = np.concatenate([corners] + [np.stack([edge, np.full(9, v)], 1) for v in (-h, h)]
                                + [np.stack([np.full(9, v), edge], 1) for v in (-h, h)])
        sky = self.wcs.pixel_to_sky(border)
        half = self.N * self.s_m / 2
        worst = float(np.abs(sky).max())
        if worst > half:
            raise ValueError(
                f"exposure footprint (WCS {self.wcs}, {self.M} px) reaches {worst:.3f} arcsec from the model "
                f"centre; accepted: inside the model field of half-width {half:.3f} arcsec "
                f"({self.N} px x {self.s_m} arcsec/px)")

    def _splat_matrix(self) -> torch.Tensor:
        """Sparse S_e (n_hi^2, N^2), float64: cloud-in-cell deposits of the sub-samples."""
        N, ns = self.N, self.n_sub
        sub = (np.arange(N * ns) + 0.5) / ns - N / 2  # sub-sample centres [model px from centre]
        yy, xx = np.meshgrid(sub, sub, indexing="ij")
        sky = np.stack([yy, xx], -1).reshape(-1, 2) * self.s_m
        p = self.wcs.sky_to_pixel(sky)  # exposure px from the exposure centre
        h = (p + self.M / 2) * self.q + self.pad - 0.5  # supersampled pixel index (centres integer)
        i0 = np.floor(h).astype(np.int64)
        f = h - i0
        src = (np.arange(N * ns)[:, None] // ns * N + np.arange(N * ns)[None, :] // ns).reshape(-1)
        rows, cols, vals = [], [], []
        for dy in (0, 1):
            for dx in (0, 1):
                iy, ix = i0[:, 0] + dy, i0[:, 1] + dx
                w = (f[:, 0] if dy else 1 - f[:, 0]) * (f[:, 1] if dx else 1 - f[:, 1]) / ns**2
                ok = (iy >= 0) & (iy < self.n_hi) & (ix >= 0) & (ix < self.n_hi) & (w > 0)
                rows.append(iy[ok] * self.n_hi + ix[ok])
                cols.append(src[ok])
                vals.append(w[ok])
        idx = torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)]))
        return torch.sparse_coo_tensor(idx, torch.as_tensor(np.concatenate(vals)),
                                       (self.n_hi**2, N * N), check_invariants=True).coalesce()

    def _ops(self, x: torch.Tensor):
        key = (x.dtype, x.device)
        if key not in self._cache:
            S = self._S.to(dtype=x.dtype, device=x.device)
            w = torch.as_tensor(self.psf[::-1, ::-1].copy(), dtype=x.dtype, device=x.device)[None, None]
            self._cache[key] = (S, S.t().coalesce(), w)
        return self._cache[key]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Model flux (B, N, N) [e- per model px] -> exposure flux (B, M, M) [e- per exposure px]."""
        if x.ndim != 3 or x.shape[-2:] != (self.N, self.N):
            raise ValueError(f"x has shape {tuple(x.shape)}; accepted: (B, {self.N}, {self.N}) (model grid)")
        S, _, w = self._ops(x)
        hi = torch.sparse.mm(S, x.reshape(x.shape[0], -1).T).T.reshape(-1, 1, self.n_hi, self.n_hi)  # S_e x
        conv = _convolve_valid(hi, w)  # PSF_q *
        return F.avg_pool2d(conv, self.q)[:, 0] * self.q**2  # sum pooling, eq. (1)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint: (B, M, M) -> (B, N, N)."""
        if y.ndim != 3 or y.shape[-2:] != (self.M, self.M):
            raise ValueError(f"y has shape {tuple(y.shape)}; accepted: (B, {self.M}, {self.M}) (exposure grid)")
        _, St, w = self._ops(y)
        up = y.repeat_interleave(self.q, -2).repeat_interleave(self.q, -1)[:, None]  # Pool_q^T
        hi = _convolve_valid_adjoint(up, w)[:, 0]  # PSF_q^T
        return torch.sparse.mm(St, hi.reshape(y.shape[0], -1).T).T.reshape(-1, self.N, self.N)

    def effective_kernel(self, dtype=torch.float64) -> torch.Tensor:
        """Column of A_e at the central model pixel, rolled so that its flux centroid sits at
        index (0, 0): the generator of the circulant approximation of A_e [e- per e-], (M, M)."""
        delta = torch.zeros(1, self.N, self.N, dtype=dtype)
        delta[0, self.N // 2, self.N // 2] = 1.0
        k = self.A(delta)[0]
        r = torch.arange(self.M, dtype=dtype)
        cy = int(round(float((k.sum(1) * r).sum() / k.sum())))
        cx = int(round(float((k.sum(0) * r).sum() / k.sum())))
        return torch.roll(k, (-cy, -cx), (0, 1))


class ExposureSet:
    """The ``E`` exposures of one observation, batched: ``A(x)`` is (B, E, M, M).

    Raises ValueError when the exposures differ in shape, band, model grid or upsampling.
    """

    def __init__(self, exposures: Sequence[Exposure]):
        exposures = list(exposures)
        if not exposures:
            raise ValueError("no exposures; accepted: at least one Exposure")
        ref = exposures[0]
        for e, ex in enumerate(exposures):
            for name, a, b in (("shape", ex.M, ref.M), ("band", ex.band, ref.band), ("model_size", ex.N, ref.N),
                               ("model_pixel_scale_arcsec", ex.s_m, ref.s_m)):
                if a != b:
                    raise ValueError(f"exposure {e} has {name}={a!r} but exposure 0 has {b!r}; accepted: "
                                     f"exposures of one {name}")
        self.exposures, self.M, self.N, self.band = exposures, ref.M, ref.N, ref.band

    def __len__(self) -> int:
        return len(self.exposures)

    @classmethod
    def dithered(cls, psf, psf_oversampling: int, shape: int, model_size: int, model_pixel_scale_arcsec: float,
                 wcss: Sequence[ExposureWCS] | None = None, band: str = "F814W") -> "ExposureSet":
        """An exposure set on the WCSs ``wcss`` (default :func:`default_dithers`)."""
        wcss = default_dithers() if wcss is None else wcss
        return cls([Exposure(w, shape, psf, psf_oversampling, model_size, model_pixel_scale_arcsec, band) for w in wcss])

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, N) [e- per model px] -> (B, E, M, M) [e- per exposure px]."""
        return torch.stack([ex.A(x) for ex in self.exposures], 1)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(B, E, M, M) -> (B, N, N): sum of the exposures' adjoints."""
        if y.ndim != 4 or y.shape[1] != len(self):
            raise ValueError(f"y has shape {tuple(y.shape)}; accepted: (B, {len(self)}, {self.M}, {self.M})")
        return sum(ex.A_adjoint(y[:, e]) for e, ex in enumerate(self.exposures))

    def kernel_power_spectra(self, regularization: float = 1e-3) -> torch.Tensor:
        """Circulant approximation of A_e A_e^T per exposure: |FFT(k_e)|^2 + ``regularization``
        (E, M, M) [dimensionless], with k_e :meth:`Exposure.effective_kernel`."""
        return torch.stack([torch.fft.fft2(ex.effective_kernel()).abs() ** 2 + regularization for ex in self.exposures])
