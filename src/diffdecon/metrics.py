"""Image-quality and goodness-of-fit metrics: PSNR, SSIM, relative flux error, reduced chi^2.

Inputs are numpy arrays or torch tensors; images are ``(H, W)``, ``(C, H, W)`` or, for the
data-fit metrics, any shape whose last three axes are ``(C, h, w)``.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import to_numpy

__all__ = ["psnr", "ssim", "flux_error", "reduced_chi2"]


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"truth has shape {a.shape} but estimate has shape {b.shape}: expected equal shapes")


def psnr(truth, estimate, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio [dB]: 10 log10(data_range^2 / MSE).

    ``data_range`` [same units as the images] defaults to ``truth.max() - truth.min()``.
    Returns ``inf`` for identical images.
    """
    t, e = to_numpy(truth, name="truth"), to_numpy(estimate, name="estimate")
    _same_shape(t, e)
    if data_range is None:
        data_range = float(t.max() - t.min())
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r}: expected > 0 (a constant truth needs an explicit data_range)")
    mse = float(np.mean((t - e) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(truth, estimate, data_range: float | None = None, win_size: int | None = None) -> float:
    """Structural similarity (Wang et al. 2004) via ``skimage.metrics.structural_similarity``,
    computed per band and averaged over bands [dimensionless, <= 1].

    ``truth``/``estimate``: ``(H, W)`` or ``(C, H, W)``. ``data_range`` [image units] defaults
    to the range of ``truth`` over all bands (one range for all bands, so that bands are
    compared on the same scale). ``win_size``: skimage's default (7), odd, <= min(H, W).
    """
    from skimage.metrics import structural_similarity

    t, e = to_numpy(truth, name="truth"), to_numpy(estimate, name="estimate")
    _same_shape(t, e)
    if t.ndim == 2:
        t, e = t[None], e[None]
    if t.ndim != 3:
        raise ValueError(f"images of shape {t.shape}: expected (H, W) or (C, H, W)")
    if data_range is None:
        data_range = float(t.max() - t.min())
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r}: expected > 0")
    w = 7 if win_size is None else int(win_size)
    if w % 2 == 0 or w > min(t.shape[1:]):
        raise ValueError(f"win_size={w}: expected an odd int <= min(H, W) = {min(t.shape[1:])}")
    vals = [structural_similarity(tc, ec, data_range=data_range, win_size=w) for tc, ec in zip(t, e)]
    return float(np.mean(vals))


def flux_error(truth, estimate, per_band: bool = False):
    """Relative total-flux error (sum(estimate) - sum(truth)) / sum(truth) [dimensionless].

    Images in linear flux units (not the stretched prior space). With ``per_band`` the
    sums run over the last two axes of ``(C, H, W)`` images and a ``(C,)`` array is returned.
    """
    t, e = to_numpy(truth, name="truth"), to_numpy(estimate, name="estimate")
    _same_shape(t, e)
    if per_band:
        if t.ndim < 3:
            raise ValueError(f"per_band needs (..., C, H, W) images, got shape {t.shape}")
        ft, fe = t.sum((-2, -1)), e.sum((-2, -1))
    else:
        ft, fe = t.sum(), e.sum()
    if np.any(ft == 0):
        raise ValueError("the total truth flux is 0: the relative flux error is undefined")
    return (fe - ft) / ft


def reduced_chi2(y, Ax, sigma, dof: int | None = None) -> float:
    """Reduced chi^2 = sum(((y - A x) / sigma)^2) / dof [dimensionless].

    ``y``, ``Ax``: observation and model prediction [observation flux units], same shape.
    ``sigma``: noise std [same units]: a scalar, a per-band ``(C,)`` vector for arrays whose
    last three axes are ``(C, h, w)``, or an array broadcastable to ``y``.
    ``dof``: degrees of freedom, default the number of entries of ``y``. ~1 when the model
    fits to the noise level.
    """
    yy, ax = to_numpy(y, name="y"), to_numpy(Ax, name="Ax")
    if yy.shape != ax.shape:
        raise ValueError(f"y has shape {yy.shape} but Ax has shape {ax.shape}")
    s = to_numpy(sigma, name="sigma")
    if s.ndim == 1 and s.size > 1:
        if yy.ndim < 3 or yy.shape[-3] != s.size:
            raise ValueError(f"sigma has {s.size} entries: expected one per band of (..., C, h, w) data, got {yy.shape}")
        s = s[:, None, None]
    if not np.all(s > 0):
        raise ValueError("sigma must be positive")
    n = yy.size if dof is None else int(dof)
    if n < 1:
        raise ValueError(f"dof={dof!r}: expected a positive int")
    return float((((yy - ax) / s) ** 2).sum() / n)
