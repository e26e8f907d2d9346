"""Posterior statistics: pixel mean and variance, the display space, the variance ratio
and centred-aperture summaries.

Base floor: numpy and torch only. Functions accept numpy arrays or torch tensors and
return the same kind as their (first) input.
"""

from __future__ import annotations

import math

import torch

from .arrays import like_input, to_tensor

__all__ = [
    "DISPLAY_VAR_FLOOR",
    "pixel_mean_var",
    "display_space",
    "variance_ratio",
    "aperture_mask",
    "aperture_mean",
    "aperture_snr",
]

DISPLAY_VAR_FLOOR: float = 1e-6
"""Floor on the prior variance in the variance ratio [display units^2, display in [0, 1]]:
a std of 1e-3, a quarter of one 8-bit display level (1/255), so pixels where the prior
never varies (empty background) give a large finite ratio instead of a division by ~0."""


def pixel_mean_var(samples):
    """Pixel-wise mean and unbiased variance (ddof = 1) over samples.

    Parameters
    ----------
    samples : (n, C, H, W) (or (n, ...)) samples, any units; n >= 2.

    Returns
    -------
    (mean, var) each shaped ``samples.shape[1:]`` [units, units^2].
    """
    s, was = to_tensor(samples)
    if s.ndim < 2 or s.shape[0] < 2:
        raise ValueError(f"samples of shape {tuple(s.shape)}: expected (n, ...) with n >= 2")
    if not torch.isfinite(s).all():
        raise ValueError("samples contain non-finite values (drop diverged samples first)")
    return like_input(s.mean(0), was), like_input(s.var(0, unbiased=True), was)


def display_space(flux_or_x, space: str = "prior", asinh_a: float = 0.01, flux_norm: float | None = None):
    """Map images to the [0, 1]-stretched display space of the paper.

    ``space="prior"``: prior-space x (dimensionless, [-1, 1]) -> (x + 1) / 2.
    ``space="flux"``: linear flux f -> asinh(f / a) / asinh(1 / a), i.e. the prior-space
    stretch 2 asinh(f/a)/asinh(1/a) - 1 followed by (x + 1) / 2. If ``flux_norm`` is given,
    each image (the last three axes, (C, H, W)) is first rescaled to total flux
    ``flux_norm`` [normalised flux], as the prior's normalisation does; otherwise ``f`` must
    already be normalised flux. ``asinh_a``: softening [normalised flux] (paper: 0.01).
    """
    x, was = to_tensor(flux_or_x)
    if space == "prior":
        return like_input((x + 1.0) / 2.0, was)
    if space != "flux":
        raise ValueError(f"space={space!r}: expected 'prior' or 'flux'")
    if not asinh_a > 0:
        raise ValueError(f"asinh_a={asinh_a!r}: expected > 0")
    f = x
    if flux_norm is not None:
        if x.ndim < 3:
            raise ValueError(f"flux_norm needs (..., C, H, W) images, got shape {tuple(x.shape)}")
        total = x.sum((-3, -2, -1), keepdim=True)
        if torch.any(total <= 0):
            raise ValueError("an image has non-positive total flux: cannot normalise it")
        f = x * flux_norm / total
    return like_input(torch.asinh(f / asinh_a) / math.asinh(1.0 / asinh_a), was)


def variance_ratio(post_samples, prior_samples, space: str = "prior", floor: float = DISPLAY_VAR_FLOOR,
                   **display_kwargs):
    """Per-pixel variance ratio posterior / prior in display space, averaged over bands.

    ratio(p) = mean_c Var_post[d_c(p)] / max(Var_prior[d_c(p)], floor), with d the display
    space (:func:`display_space`; ``space``/``display_kwargs`` passed on). Near 0: the data
    determine the pixel; near 1: the prior does.

    Parameters
    ----------
    post_samples : (n_post, C, H, W); prior_samples : (n_prior, C, H, W) (paper: 256 and 1024),
        in prior space (default) or linear flux with ``space="flux"``.
    floor : float
        Floor on the prior variance [display units^2]; default :data:`DISPLAY_VAR_FLOOR`.

    Returns
    -------
    (H, W) map [dimensionless].
    """
    p, was = to_tensor(post_samples)
    q, _ = to_tensor(prior_samples)
    if p.ndim != 4 or q.ndim != 4 or p.shape[1:] != q.shape[1:]:
        raise ValueError(
            f"post_samples {tuple(p.shape)} and prior_samples {tuple(q.shape)}: expected (n, C, H, W) with equal (C, H, W)"
        )
    if not floor > 0:
        raise ValueError(f"floor={floor!r}: expected > 0")
    _, v_post = pixel_mean_var(display_space(p, space, **display_kwargs))
    _, v_prior = pixel_mean_var(display_space(q, space, **display_kwargs))
    ratio = (v_post / v_prior.clamp_min(floor)).mean(0)
    return like_input(ratio, was)


def aperture_mask(shape: tuple[int, int], radius_px: float, center: tuple[float, float] | None = None) -> torch.Tensor:
    """Boolean (H, W) mask of pixels whose centres lie within ``radius_px`` [px] of
    ``center`` = (row, col) [px]; default the image centre ((H-1)/2, (W-1)/2)."""
    H, W = shape
    if not radius_px > 0:
        raise ValueError(f"radius_px={radius_px!r}: expected > 0 [px]")
    cy, cx = ((H - 1) / 2.0, (W - 1) / 2.0) if center is None else center
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2
    if not mask.any():
        raise ValueError(f"the aperture (radius {radius_px} px at {(cy, cx)}) contains no pixel of a {H}x{W} image")
    return mask


def aperture_mean(map_, radius_px: float, center: tuple[float, float] | None = None):
    """Mean of ``map_`` (..., H, W) inside a circular aperture of radius ``radius_px`` [px]
    centred on the image (or ``center`` = (row, col) [px]). Returns shape ``map_.shape[:-2]``
    (a float for a 2-D map) in the units of ``map_``. Paper: the variance ratio at r = 30 px."""
    m, was = to_tensor(map_)
    if m.ndim < 2:
        raise ValueError(f"map of shape {tuple(m.shape)}: expected (..., H, W)")
    mask = aperture_mask(tuple(m.shape[-2:]), radius_px, center).to(m.device)
    out = m[..., mask].mean(-1)
    return float(out) if m.ndim == 2 else like_input(out, was)


def aperture_snr(image, sigma, radius_px: float, center: tuple[float, float] | None = None):
    """Signal-to-noise ratio = mean flux inside the centred aperture / sigma (the magnitude
    sweep definition of the reference code).

    image : (H, W) or (C, H, W) [flux per pixel]; sigma : noise std per pixel [same units],
    a scalar or one per band (C,). Returns a float, or (C,) for a multi-band image.
    """
    mean = aperture_mean(image, radius_px, center)
    s, _ = to_tensor(sigma)
    if not torch.all(s > 0):
        raise ValueError(f"sigma={sigma!r}: expected positive noise std(s)")
    if isinstance(mean, float):
        if s.numel() != 1:
            raise ValueError("a single-band image needs a scalar sigma")
        return mean / float(s)
    m, was = to_tensor(mean)
    if s.numel() not in (1, m.shape[-1]):
        raise ValueError(f"sigma has {s.numel()} entries: expected 1 or one per band ({m.shape[-1]})")
    return like_input(m / s.to(m.dtype), was)
