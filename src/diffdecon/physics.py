"""The forward model y = A(x) + sigma_y n, in linear flux units.

``A = PSF * f_{z,p}`` maps an idealized (model) image to an observation:

1. ``f_{z,p}``, the redshift scaling and pixel matching: the model grid
   (``image_size`` px of ``pixel_scale_kpc`` proper kpc) is placed at redshift ``z`` and
   rebinned onto the observation grid (``pixel_scale_arcsec`` arcsec/px). One model pixel
   is ``w = pixel_scale_kpc * arcsec_per_kpc(z) / pixel_scale_arcsec`` observation
   pixels wide, so the model field is ``m(z, p) = image_size * w`` observation pixels
   wide (:func:`observed_size`).
2. Per-band convolution with the band's PSF.

Design choices (written down because the reference code made others):

* **Linear flux, flux conserving.** ``f_{z,p}`` is an exact area-weighted rebinning of the
  piecewise-constant model image: the flux of each model pixel is shared among the
  observation pixels it overlaps, in proportion to the overlap area. It is separable,
  ``f(X) = R_y X R_x^T`` with 1-D matrices ``R[i, j] = |obs px i ∩ model px j| / w``
  (rows: observation pixels, columns: model pixels), so every column of ``R`` sums to 1
  when the model field lies inside the (padded) observation field: total flux is conserved
  exactly. The reference code instead multiplied by the pixel-area ratio and resized
  bilinearly, which conserves flux only approximately and is not exactly linear-adjoint.
  The asinh stretch of the prior is kept out of this module.
* **Exact adjoint.** The model is rebinned onto the observation grid padded by
  ``(k - 1) / 2`` pixels on each side (k the PSF size) and then convolved in 'valid' mode
  down to ``obs_size``, so flux from just outside the field that the PSF scatters into it
  is accounted for and no boundary convention (zero, reflect, periodic) is needed. The
  adjoint is the transposed chain: ``conv_transpose2d`` then ``R_y^T Y R_x``.
* **Convolution, not correlation.** ``torch.nn.functional.conv2d`` correlates, so the PSF
  is flipped; this matters for asymmetric PSFs.

Conventions: images are ``(B, C, H, W)`` tensors (a single ``(C, H, W)`` image is also
accepted and returned unbatched), rows are y and columns are x; the observation centre is
the geometric centre of the observation array and the model image's geometric centre is
placed at the observation centre plus ``center_offset = (dy, dx)`` [obs px].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F

from .config import HSC_PIXEL_SCALE
from .cosmology import (MIN_OBSERVED_SIZE, WINDOW_MARGIN, arcsec_per_kpc, check_positive, check_size, check_z,
                        observed_size, window_side)
from .psf import gaussian_psf, validate_psf

__all__ = [
    "MIN_OBSERVED_SIZE",
    "WINDOW_MARGIN",
    "arcsec_per_kpc",
    "observed_size",
    "window_side",
    "validate_psf",
    "gaussian_psf",
    "rebin_matrix",
    "ForwardModel",
    "add_noise",
    "mock_observation",
]

# --------------------------------------------------------------------------------------
# Resampling f_{z,p}
# --------------------------------------------------------------------------------------


def rebin_matrix(n_model: int, n_obs: int, width: float, offset: float = 0.0) -> np.ndarray:
    """1-D area-weighted rebinning matrix from a model grid onto an observation grid.

    Both grids are centred on 0 (plus ``offset`` for the model grid), in units of obs px:
    model pixel j spans ``[(j - n_model/2) w + offset, (j + 1 - n_model/2) w + offset]`` and
    obs pixel i spans ``[i - n_obs/2, i + 1 - n_obs/2]``.

    Returns ``R`` with shape (n_obs, n_model), ``R[i, j] = |obs i ∩ model j| / w``: the
    fraction of model pixel j's flux landing in obs pixel i (columns sum to 1 for model
    pixels inside the observation grid).
    """
    w = float(width)
    u = (np.arange(n_model + 1) - n_model / 2) * w + float(offset)  # model pixel edges [obs px]
    v = np.arange(n_obs + 1) - n_obs / 2  # obs pixel edges [obs px]
    lo = np.maximum(v[:-1, None], u[None, :-1])
    hi = np.minimum(v[1:, None], u[None, 1:])
    return np.clip(hi - lo, 0.0, None) / w


def _as_batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"{name} has shape {tuple(x.shape)}; accepted: (B, C, H, W) or (C, H, W)")


FFT_MIN_KERNEL: int = 9
"""PSFs of at least this side [px] are applied by FFT (a circular convolution whose wrap-around
misses the outputs kept, see :func:`_convolve_valid`); smaller ones directly. A direct grouped
43 x 43 convolution costs 1849 multiply-adds per pixel and dominated the samplers' run time."""


def _fft_length(n: int) -> int:
    """The smallest FFT length ``>= n`` [px] whose prime factors are 2, 3 and 5
    (:func:`scipy.fft.next_fast_len`), on which pocketfft is fastest (170 -> 180)."""
    return scipy.fft.next_fast_len(int(n), real=True)


def _convolve_valid(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """'valid' convolution of (B, C, N, N) by the flipped PSF ``weight`` (C, 1, k, k):
    (B, C, N - k + 1, N - k + 1). Equal to ``F.conv2d(x, weight, groups=C)``.

    By FFT on a grid of ``L >= N`` (:func:`_fft_length`), not the ``N + k - 1`` of the full
    linear convolution (overlap-save): output ``i`` of the circular convolution,
    ``sum_m x[(i - m) mod L] psf[m]``, ``0 <= m < k``, wraps only for ``i < k - 1``, and the
    valid outputs are ``k - 1 <= i < N``. On the quick profile's padded grid (N = 128, k = 43)
    that is a 128 px transform instead of 170 (or 180)."""
    k = weight.shape[-1]
    if k < FFT_MIN_KERNEL:
        return F.conv2d(x, weight, groups=x.shape[1])
    n = x.shape[-1]
    L = _fft_length(max(n, k))
    psf = weight[:, 0].flip(-1, -2)  # undo the flip: the PSF itself
    full = torch.fft.irfft2(torch.fft.rfft2(x, s=(L, L)) * torch.fft.rfft2(psf, s=(L, L)), s=(L, L))
    return full[..., k - 1 : n, k - 1 : n]


def _convolve_valid_adjoint(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_convolve_valid`: (B, C, M, M) -> (B, C, M + k - 1, M + k - 1).
    Equal to ``F.conv_transpose2d(y, weight, groups=C)`` (a full correlation with the PSF).

    By FFT on a grid of ``L >= N = M + k - 1``: with ``y`` at positions ``k - 1 ... N - 1``,
    output ``i < N`` of the circular correlation, ``sum_j g[j] psf[(j - i) mod L]``, would wrap
    only for ``j - i <= k - 1 - L``, while ``j - i >= k - N > k - 1 - L``."""
    k = weight.shape[-1]
    if k < FFT_MIN_KERNEL:
        return F.conv_transpose2d(y, weight, groups=y.shape[1])
    n = y.shape[-1] + k - 1
    L = _fft_length(n)
    psf = weight[:, 0].flip(-1, -2)
    g = F.pad(y, (k - 1, L - n, k - 1, L - n))  # y at positions k-1 .. n-1 of the grid
    corr = torch.fft.irfft2(torch.fft.rfft2(g) * torch.fft.rfft2(psf, s=(L, L)).conj(), s=(L, L))
    return corr[..., :n, :n]


class ForwardModel(torch.nn.Module):
    """Linear forward operator ``A = PSF * f_{z,p}`` in linear flux units.

    Parameters
    ----------
    z : float
        Redshift of the galaxy (> 0).
    psf : array-like, (C, k, k) or (k, k)
        PSF image per band on the observation grid (odd k); normalised here. A single
        (k, k) PSF is applied to every band.
    obs_size : int
        Side of the observation image [obs px].
    image_size : int
        Side of the model image [model px].
    pixel_scale_kpc : float
        Model pixel scale [proper kpc/px].
    pixel_scale_arcsec : float
        Observation pixel scale [arcsec/px] (HSC 0.168).
    cosmology : str or astropy Cosmology
        See :func:`arcsec_per_kpc`.
    center_offset : (float, float)
        Offset (dy, dx) [obs px] of the model image centre from the observation centre.
    dtype : torch.dtype
        Floating dtype of the operator's buffers; inputs of another floating dtype are
        handled by casting the buffers.

    Attributes
    ----------
    z, obs_size, image_size, n_bands (None when a single PSF is broadcast)
    m : float
        Observed size of the model field [obs px] (:func:`observed_size`).
    upsampling_factor : float
        ``image_size / m`` (> 1: the model is finer than the observation).
    pad : int
        ``(k - 1) / 2``, padding of the intermediate grid [obs px].
    """

    def __init__(
        self,
        z: float,
        psf: Any,
        obs_size: int,
        image_size: int,
        pixel_scale_kpc: float,
        pixel_scale_arcsec: float = HSC_PIXEL_SCALE,
        cosmology: Any = "Planck15",
        center_offset: Sequence[float] = (0.0, 0.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"invalid dtype={dtype!r}; accepted: a floating torch dtype")
        self.z = check_z(z)
        self.obs_size = check_size("obs_size", obs_size)
        self.image_size = check_size("image_size", image_size)
        self.pixel_scale_kpc = check_positive("pixel_scale_kpc", pixel_scale_kpc, "kpc/px")
        self.pixel_scale_arcsec = check_positive("pixel_scale_arcsec", pixel_scale_arcsec, "arcsec/px")
        self.m = observed_size(self.z, self.image_size, self.pixel_scale_kpc, self.pixel_scale_arcsec, cosmology)
        self.upsampling_factor = self.image_size / self.m
        # w: width of one model pixel [obs px]
        self.model_pixel_width = self.m / self.image_size
        try:
            dy, dx = (float(v) for v in center_offset)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid center_offset={center_offset!r}; accepted: two finite numbers (dy, dx) [obs px]"
            ) from None
        if not (math.isfinite(dy) and math.isfinite(dx)):
            raise ValueError(f"invalid center_offset={center_offset!r}; accepted: finite (dy, dx) [obs px]")
        self.center_offset = (dy, dx)

        psf_np = validate_psf(psf)
        self.n_bands = psf_np.shape[0] if psf_np.ndim == 3 else None
        k = psf_np.shape[-1]
        self.pad = (k - 1) // 2
        n_pad = self.obs_size + 2 * self.pad
        # Step 1, f_{z,p}: separable rebinning matrices onto the padded obs grid.
        R_y = rebin_matrix(self.image_size, n_pad, self.model_pixel_width, dy)
        R_x = rebin_matrix(self.image_size, n_pad, self.model_pixel_width, dx)
        # Step 2: per-band PSF as a grouped-conv weight (C, 1, k, k), flipped so that
        # conv2d (a correlation) performs a true convolution.
        w = psf_np.reshape(-1, 1, k, k)[..., ::-1, ::-1].copy()
        # float64 masters: an input of another dtype gets buffers cast from these, so a
        # float64 input is exact even when the module's buffers are float32.
        self._masters = (R_y, R_x, w)
        self.register_buffer("R_y", torch.as_tensor(R_y, dtype=dtype))
        self.register_buffer("R_x", torch.as_tensor(R_x, dtype=dtype))
        self.register_buffer("psf_weight", torch.as_tensor(w, dtype=dtype))

    # -- helpers -------------------------------------------------------------------

    def _buffers_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not x.dtype.is_floating_point:
            raise ValueError(f"input dtype {x.dtype} is not floating point; accepted: float32/float64")
        if x.dtype != self.R_y.dtype:
            return tuple(torch.as_tensor(a, dtype=x.dtype, device=x.device) for a in self._masters)
        return (
            self.R_y.to(device=x.device, dtype=x.dtype),
            self.R_x.to(device=x.device, dtype=x.dtype),
            self.psf_weight.to(device=x.device, dtype=x.dtype),
        )

    def _weight_for(self, weight: torch.Tensor, n_channels: int) -> torch.Tensor:
        if self.n_bands is None:
            return weight.expand(n_channels, 1, *weight.shape[-2:])
        if n_channels != self.n_bands:
            raise ValueError(
                f"image has {n_channels} band(s) but the PSF has {self.n_bands}; accepted: "
                f"one PSF per band"
            )
        return weight

    def _check_shape(self, x: torch.Tensor, size: int, name: str, grid: str) -> None:
        if x.shape[-2:] != (size, size):
            raise ValueError(
                f"{name} has spatial shape {tuple(x.shape[-2:])}; accepted: ({size}, {size}) "
                f"({grid})"
            )

    def _central(self, R: torch.Tensor) -> torch.Tensor:
        return R[self.pad : self.pad + self.obs_size]

    # -- operators -----------------------------------------------------------------

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """f_{z,p} alone: model flux (B, C, image_size, image_size) [flux/model px] ->
        observation-grid flux (B, C, obs_size, obs_size) [flux/obs px], no PSF."""
        xb, single = _as_batched(x, "x")
        self._check_shape(xb, self.image_size, "x", "model grid")
        R_y, R_x, _ = self._buffers_for(xb)
        out = self._central(R_y) @ xb @ self._central(R_x).T  # f(X) = R_y X R_x^T
        return out[0] if single else out

    def resample_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`resample`: (B, C, obs_size, obs_size) -> (B, C, image_size, image_size)."""
        yb, single = _as_batched(y, "y")
        self._check_shape(yb, self.obs_size, "y", "observation grid")
        R_y, R_x, _ = self._buffers_for(yb)
        out = self._central(R_y).T @ yb @ self._central(R_x)  # f^T(Y) = R_y^T Y R_x
        return out[0] if single else out

    def rebin_to_model(self, y: torch.Tensor) -> torch.Tensor:
        """Area-weighted rebinning of an observation-grid image onto the model grid.

        Each observation pixel's flux is shared among the model pixels it overlaps in
        proportion to the overlap area, ``X = w^2 R_y^T Y R_x`` (w the model pixel width in
        obs px). Flux is conserved for observation pixels inside the model field. Input
        [flux/obs px] (B, C, obs_size, obs_size), output [flux/model px]. Not an inverse of
        :meth:`resample` (it cannot restore resolution lost by downsampling).
        """
        return self.resample_adjoint(y) * self.model_pixel_width**2

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward operator: model flux (B, C, image_size, image_size) [flux/model px]
        -> observation flux (B, C, obs_size, obs_size) [flux/obs px], noise-free."""
        xb, single = _as_batched(x, "x")
        self._check_shape(xb, self.image_size, "x", "model grid")
        R_y, R_x, weight = self._buffers_for(xb)
        weight = self._weight_for(weight, xb.shape[1])
        padded = R_y @ xb @ R_x.T  # f_{z,p} onto the padded obs grid
        out = _convolve_valid(padded, weight)  # 'valid' PSF convolution
        return out[0] if single else out

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint A^T: (B, C, obs_size, obs_size) -> (B, C, image_size, image_size)."""
        yb, single = _as_batched(y, "y")
        self._check_shape(yb, self.obs_size, "y", "observation grid")
        R_y, R_x, weight = self._buffers_for(yb)
        weight = self._weight_for(weight, yb.shape[1])
        padded = _convolve_valid_adjoint(yb, weight)
        out = R_y.T @ padded @ R_x
        return out[0] if single else out

    def column_norms_sq(self) -> torch.Tensor:
        """``diag(A^T A)``: the squared norm of each column of ``A``, (C, image_size, image_size)
        [(obs px / model px)^2 flux ratio, dimensionless], float64.

        Column ``j`` of ``A`` is the PSF convolved with the outer product of column ``j`` of
        the rebinning matrices (a few obs px wide), so ``||A e_j||^2 = sum_d P(d) S_y(d) S_x(d)``
        with ``P`` the PSF's autocorrelation and ``S(d)_j = sum_k R[k, j] R[k + d, j]`` at lags
        ``d`` within the rebinning support. Exact up to the PSF light that falls outside the
        observation window (columns near the edge of a window with a small margin); used as
        the Jacobi preconditioner of the posterior samplers, where that is harmless.
        """
        R_y, R_x, w = (torch.as_tensor(a, dtype=torch.float64) for a in self._masters)
        psf = w[:, 0].flip(-2, -1)  # (C or 1, k, k)
        L = int(math.ceil(self.model_pixel_width)) + 1  # largest lag with overlapping rebinning weights
        P = F.conv2d(F.pad(psf[None], (L, L, L, L)), psf[:, None], groups=psf.shape[0])[0]  # (C, 2L+1, 2L+1)

        def lagged(R: torch.Tensor) -> torch.Tensor:  # S(d)_j for d = -L..L: (2L+1, image_size)
            n = R.shape[0]
            return torch.stack([(R[max(0, -d): n - max(0, d)] * R[max(0, d): n + min(0, d)]).sum(0)
                                for d in range(-L, L + 1)])

        return torch.einsum("cab,aj,bk->cjk", P, lagged(R_y), lagged(R_x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def extra_repr(self) -> str:
        return (
            f"z={self.z:g}, m={self.m:.3f} obs px, upsampling_factor={self.upsampling_factor:.3f}, "
            f"obs_size={self.obs_size}, image_size={self.image_size}, psf_size={2 * self.pad + 1}"
        )


# --------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------


def _sigma_tensor(sigma: Any, n_channels: int, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
    if s.ndim == 0:
        s = s.expand(n_channels)
    if s.ndim != 1 or s.shape[0] != n_channels:
        raise ValueError(
            f"sigma has shape {tuple(s.shape)} (value {s.tolist()}); accepted: a scalar or one "
            f"value per band ({n_channels},) [flux/obs px]"
        )
    if not torch.all(torch.isfinite(s)) or torch.any(s < 0):
        raise ValueError(f"invalid sigma={s.tolist()}; accepted: finite values >= 0 [flux/obs px]")
    return s.to(dtype=like.dtype, device=like.device).view(-1, 1, 1)


def add_noise(y: torch.Tensor, sigma: Any, generator: torch.Generator) -> torch.Tensor:
    """``y + sigma_c n`` with ``n`` standard normal drawn from ``generator``.

    ``y``: (B, C, N, N) or (C, N, N) [flux/obs px]; ``sigma``: scalar or (C,) [flux/obs px],
    finite and >= 0.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim not in (3, 4):
        raise ValueError(f"y has shape {tuple(y.shape)}; accepted: (B, C, N, N) or (C, N, N)")
    s = _sigma_tensor(sigma, y.shape[-3], y)
    n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=generator.device).to(y.device)
    return y + s * n


def mock_observation(flux: torch.Tensor, forward_model: ForwardModel, sigma: Any, generator: torch.Generator) -> torch.Tensor:
    """A mock observation ``y = A(flux) + sigma_y n``.

    Parameters
    ----------
    flux : tensor (B, C, image_size, image_size) or (C, ...)
        Model image [flux/model px].
    forward_model : ForwardModel
    sigma : float or sequence (C,)
        Per-band noise standard deviation [flux/obs px], finite and >= 0.
    generator : torch.Generator
        Seeded source of the noise.
    """
    y = forward_model.A(flux)
    return add_noise(y, sigma, generator)
