"""Classical deconvolution baselines: Richardson-Lucy and Wiener (scikit-image).

They work per band on observation-grid images ``(C, N, N)`` in linear flux units
[flux/obs px] with one PSF per band ``(C, k, k)`` (or one ``(k, k)`` PSF for all bands),
and return restored images of the same shape and units on the observation grid: they
remove the PSF, not the resampling f_{z,p}. :func:`to_model_grid` rebins a result onto the
model grid for a side-by-side comparison with the diffusion posterior.

Choices stated once:

* **Negative pixels and Richardson-Lucy.** RL assumes Poisson data, non-negative. Background-
  subtracted coadds have negative noise pixels. By default (``negative="shift"``) each band
  is shifted by a constant ``c = -min(y) + 1e-3 * (max(y) - min(y))`` so it is strictly
  positive, deconvolved, and the constant is subtracted again. RL with a unit-sum PSF
  preserves the total flux (up to losses at the image edges) and a constant image is its
  fixed point, so the result keeps the observed total flux; clipping (``negative="clip"``,
  also offered) instead sets negative noise to zero and biases the flux upwards. The price
  of the shift: RL is multiplicative, and a pedestal slows its sharpening of faint parts. Each band is also scaled to a
  maximum of 1 before RL (RL is scale-equivariant, this only keeps skimage's 1e-12
  division guard and its initial estimate of 0.5 irrelevant) and scaled back.
* **Wiener boundaries.** skimage's Wiener filters assume periodic boundaries; the image is
  reflect-padded by the PSF half-width before filtering and cropped afterwards, which
  reduces wrap-around artefacts for galaxies near the edge. ``clip=False`` everywhere
  (skimage's default clips to [-1, 1], meaningless in flux units).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import to_numpy
from .physics import ForwardModel, validate_psf

__all__ = ["richardson_lucy", "wiener", "unsupervised_wiener", "to_model_grid"]


def _prepare(y: Any, psf: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(C, N, N) float64 image, (C, k, k) normalised PSF, and whether input was a tensor."""
    is_tensor = isinstance(y, torch.Tensor)
    arr = to_numpy(y).copy()
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"y has shape {np.shape(y)}; accepted: (C, N, N) or (N, N) [flux/obs px]")
    if not np.all(np.isfinite(arr)):
        raise ValueError("y contains non-finite values (NaN/inf); accepted: finite fluxes")
    p = validate_psf(psf)
    if p.ndim == 2:
        p = np.broadcast_to(p, (arr.shape[0],) + p.shape)
    if p.shape[0] != arr.shape[0]:
        raise ValueError(
            f"y has {arr.shape[0]} band(s) but psf has {p.shape[0]}; accepted: one PSF per band"
        )
    return arr, np.ascontiguousarray(p), is_tensor


def _finish(out: np.ndarray, y: Any, is_tensor: bool):
    out = out.reshape(np.shape(y))
    if is_tensor:
        return torch.as_tensor(out, dtype=y.dtype, device=y.device)
    return out


def richardson_lucy(y: Any, psf: Any, num_iter: int = 30, negative: str = "shift"):
    """Richardson-Lucy deconvolution per band.

    Parameters
    ----------
    y : array or tensor (C, N, N) or (N, N)
        Observation [flux/obs px].
    psf : array (C, k, k) or (k, k)
        PSF per band (normalised here).
    num_iter : int
        Number of RL iterations (> 0). RL amplifies noise as iterations grow: it is
        regularised only by early stopping.
    negative : ``"shift"`` or ``"clip"``
        How non-negative data are obtained (see module docstring).

    Returns
    -------
    Same type and shape as ``y`` [flux/obs px].
    """
    from skimage.restoration import richardson_lucy as _rl

    if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)) or num_iter < 1:
        raise ValueError(f"invalid num_iter={num_iter!r}; accepted: a positive integer")
    if negative not in ("shift", "clip"):
        raise ValueError(f"invalid negative={negative!r}; accepted: 'shift' or 'clip'")
    arr, p, is_tensor = _prepare(y, psf)
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):
        band = arr[c]
        lo, hi = float(band.min()), float(band.max())
        if negative == "shift":
            shift = -lo + 1e-3 * max(hi - lo, 1e-30)
            data = band + shift
        else:
            shift = 0.0
            data = np.clip(band, 0.0, None)
        scale = float(data.max())
        if scale <= 0:  # an all-zero band stays zero
            out[c] = band
            continue
        rest = _rl(data / scale, p[c], num_iter=int(num_iter), clip=False)
        out[c] = rest * scale - shift
    return _finish(out, y, is_tensor)


def _pad_width(p: np.ndarray) -> int:
    return (p.shape[-1] - 1) // 2


def wiener(y: Any, psf: Any, balance: float):
    """Wiener-Hunt deconvolution per band (skimage, Laplacian regulariser).

    ``balance`` [dimensionless, > 0] trades data fidelity against smoothness: larger is
    smoother. Since the filter is linear the result scales with the flux. Returns the
    same type and shape as ``y`` [flux/obs px].
    """
    from skimage.restoration import wiener as _wiener

    try:
        b = float(balance)
    except (TypeError, ValueError):
        raise ValueError(f"invalid balance={balance!r}; accepted: a finite number > 0") from None
    if not np.isfinite(b) or b <= 0:
        raise ValueError(f"invalid balance={balance!r}; accepted: a finite number > 0")
    arr, p, is_tensor = _prepare(y, psf)
    h = _pad_width(p)
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):
        padded = np.pad(arr[c], h, mode="reflect")
        rest = _wiener(padded, p[c], b, clip=False)
        out[c] = rest[h : h + arr.shape[-2], h : h + arr.shape[-1]]
    return _finish(out, y, is_tensor)


def unsupervised_wiener(y: Any, psf: Any, seed: int = 0):
    """Unsupervised Wiener-Hunt deconvolution per band (skimage's Gibbs sampler).

    The noise and prior precisions are sampled, not chosen. ``seed`` seeds the sampler
    (band c uses ``seed + c``). Returns the posterior mean image, same type and shape as
    ``y`` [flux/obs px].
    """
    from skimage.restoration import unsupervised_wiener as _uw

    arr, p, is_tensor = _prepare(y, psf)
    h = _pad_width(p)
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):
        padded = np.pad(arr[c], h, mode="reflect")
        rest, _ = _uw(padded, p[c], clip=False, rng=np.random.default_rng(int(seed) + c))
        out[c] = rest[h : h + arr.shape[-2], h : h + arr.shape[-1]]
    return _finish(out, y, is_tensor)


def to_model_grid(image: Any, forward_model: ForwardModel) -> torch.Tensor:
    """Bring an observation-grid image (e.g. a baseline's result) onto the model grid.

    Exact area-weighted rebinning (:meth:`ForwardModel.rebin_to_model`): flux conserving for
    observation pixels inside the model field; it adds no resolution (an upsampled result is
    piecewise constant on observation pixels).

    Parameters
    ----------
    image : array or tensor (C, N, N) or (B, C, N, N), N = ``forward_model.obs_size``
        [flux/obs px].
    forward_model : ForwardModel

    Returns
    -------
    torch.Tensor of the same batch layout on the model grid [flux/model px] (float64 for
    numpy input, else the input dtype).
    """
    t = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image, dtype=np.float64))
    return forward_model.rebin_to_model(t)
