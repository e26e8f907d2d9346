"""Is a diffusion prior's sampling chain stationary under its own noising?

A sample ``x`` of a prior, noised by the forward process to time ``t``,

    x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps,        eps ~ N(0, I),

and carried back to ``t = 0`` by the reverse chain is again a sample of the same prior when the
chain is the exact reverse of the noising. A trained denoiser need not be: if it treats some of
what its own chain draws as noise, every such *renoise cycle* moves the samples away from the
chain's distribution, and a posterior sampler that runs the denoiser along a path other than
the chain's (every sampler that conditions on data) inherits that drift where the data do not
override the prior.

:func:`renoise_drift` measures it: the mean change per cycle, over images, of the prior-space
mean and of the linear flux in annuli about the image centre. For an exact Gaussian prior the
expected change of the prior-space mean is 0 on any time grid (each step of the chain is linear
in ``x`` and the denoiser is unbiased); on the quick prior's own draws each cycle removes
light, most of it (relative to what is there) beyond 16 model px (``bench/bench_prior_drift.py``).

:func:`denoiser_mean_error` measures where the drift comes from in one step: the mean of
``x - D(x_t)`` by annulus. Tweedie's ``D(x_t) = E[x | x_t]`` has mean error 0 given ``x_t``,
hence 0 in every annulus, whatever the prior; a positive mean error is light that the denoiser
removes and the images held.

Units: prior space ``x`` dimensionless; flux in normalised flux per model px
(:func:`diffdecon.prior.unstretch`); radii in model px from the image centre.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .denoiser_variance import annulus_masks
from .samplers import SPACINGS, _alphas_cumprod, _ddim_step, _randn, _time_batch, timesteps

__all__ = ["DRIFT_ANNULI_PX", "chain_from", "denoiser_mean_error", "renoise_drift"]

DRIFT_ANNULI_PX: tuple[float, ...] = (0.0, 4.0, 8.0, 16.0, math.inf)
"""Edges of the annuli of :func:`renoise_drift` [model px from the image centre]: the core,
the body, the outskirts within 16 px and the rest of the image."""


@torch.no_grad()
def chain_from(prior: Any, x_t: torch.Tensor, ts: torch.Tensor, start: int, generator: torch.Generator,
               eta: float = 1.0) -> torch.Tensor:
    """The respaced DDIM chain (Song et al. 2021, eq. 12; ``eta = 1``: ancestral with the small
    variance, as :func:`diffdecon.samplers.ddim_sample`) from ``x_t`` at time ``ts[start]``
    down to ``t = 0``, with Tweedie's ``D`` unclipped. ``ts``: the decreasing respaced times
    (:func:`diffdecon.samplers.timesteps`). Returns prior-space images shaped like ``x_t``."""
    if not 0 <= start < len(ts):
        raise ValueError(f"start={start!r}; accepted: an index of ts, 0 ... {len(ts) - 1}")
    abar = _alphas_cumprod(prior)
    x = x_t
    for i in range(start, len(ts)):
        t = int(ts[i])
        a_t = float(abar[t])
        a_prev = float(abar[int(ts[i + 1])]) if i + 1 < len(ts) else 1.0
        D = prior.x0_hat(x, _time_batch(t, x.shape[0], x.device))
        z = _randn(tuple(x.shape), generator, x.dtype, x.device) if a_prev < 1 else None
        x = _ddim_step(x, D, a_t, a_prev, z, eta)
    return x


def _annulus_sums(v: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Sums over bands and over the pixels of each annulus ``G`` (K, H, W, indicator images,
    :func:`diffdecon.denoiser_variance.annulus_masks`), (N, K), float64, of ``v`` (N, C, H, W)."""
    return torch.einsum("nchw,khw->nk", v.double(), G.to(v.device))


def _mean_sem(d: torch.Tensor) -> dict:
    """``{"mean", "sem"}`` over images (dim 0) of ``d`` (N, K), as lists."""
    return {"mean": d.mean(0).tolist(), "sem": (d.std(0, unbiased=True) / math.sqrt(d.shape[0])).tolist()}


def renoise_drift(prior: Any, x0: torch.Tensor, t: int, cycles: int, generator: torch.Generator,
                  steps: int = 20, spacing: str = "quadratic", eta: float = 1.0,
                  to_flux: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  annuli_px: Sequence[float] = DRIFT_ANNULI_PX) -> dict:
    """Renoise-denoise ``x0`` (N, C, H, W, prior space) ``cycles`` times at the respaced time
    nearest ``t`` (``steps`` times with ``spacing``, :func:`diffdecon.samplers.timesteps`) and
    measure how far each cycle moves the images (module docstring).

    Per cycle ``c`` (1-based) and annulus (``annuli_px`` [model px], the image centre at
    ``(H - 1) / 2``): ``x_sum`` the sum over bands and pixels of ``x_c - x_0`` [prior-space
    units], and with ``to_flux`` (prior space -> flux, e.g. ``lambda x: unstretch(x, a)``)
    ``flux`` the same of the flux [its units] and ``flux_total_ratio`` the median over images of
    the total flux of ``x_c`` over that of ``x_0``; each as ``{"mean", "sem"}`` over images.
    Returns a JSON-ready dict with ``t`` (the time used), ``rho = sqrt((1 - abar_t) / abar_t)``
    (the noise added per cycle in prior-space units), ``x_start`` and ``flux_start`` (the sums
    per annulus of ``x0`` itself, the scale of the changes) and ``cycles`` (a list)."""
    if x0.ndim != 4 or x0.shape[0] < 2:
        raise ValueError(f"x0 with shape {tuple(x0.shape)}; accepted: (N >= 2, C, H, W)")
    if not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"cycles={cycles!r}; accepted: an int >= 1")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r}; accepted: {', '.join(SPACINGS)}")
    abar = _alphas_cumprod(prior)
    ts = timesteps(abar.numel(), steps, spacing)
    start = int((ts - int(t)).abs().argmin())
    t_used = int(ts[start])
    a = float(abar[t_used])
    G = annulus_masks(annuli_px, tuple(x0.shape[-2:]))

    x_start = x0.detach()
    xs0 = _annulus_sums(x_start, G)
    f0 = None if to_flux is None else to_flux(x_start.double())
    fs0 = None if f0 is None else _annulus_sums(f0, G)
    out: dict = {"t": t_used, "rho": math.sqrt((1.0 - a) / a), "steps": steps, "spacing": spacing, "eta": eta,
                 "annuli_px": [float(e) if math.isfinite(e) else None for e in annuli_px], "n_images": int(x0.shape[0]),
                 "x_start": _mean_sem(xs0), "cycles": []}
    if fs0 is not None:
        out["flux_start"] = _mean_sem(fs0)
    x = x_start
    for c in range(cycles):
        with torch.no_grad():
            x_t = a**0.5 * x + (1.0 - a) ** 0.5 * _randn(tuple(x.shape), generator, x.dtype, x.device)
            x = chain_from(prior, x_t, ts, start, generator, eta)
        row = {"cycle": c + 1, "x_sum": _mean_sem(_annulus_sums(x, G) - xs0)}
        if to_flux is not None:
            f = to_flux(x.double())
            row["flux"] = _mean_sem(_annulus_sums(f, G) - fs0)
            row["flux_total_ratio"] = float(np.median((f.sum((1, 2, 3)) / f0.sum((1, 2, 3))).cpu().numpy()))
        out["cycles"].append(row)
    return out


@torch.no_grad()
def denoiser_mean_error(prior: Any, x0: torch.Tensor, t: int, generator: torch.Generator,
                        to_flux: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        annuli_px: Sequence[float] = DRIFT_ANNULI_PX) -> dict:
    """Mean over images of the sums by annulus of ``x0 - D(x_t)``, ``x_t = sqrt(abar_t) x0 +
    sqrt(1 - abar_t) eps`` (one noise draw per image) at time ``t`` (any integer in ``[0, T)``),
    as ``{"mean", "sem"}`` [prior-space units] under ``x_sum`` and, with ``to_flux``, of
    ``to_flux(x0) - to_flux(D)`` under ``flux`` [its units]; 0 in expectation for Tweedie's
    exact denoiser (module docstring). ``x0``: (N >= 2, C, H, W) prior space."""
    if x0.ndim != 4 or x0.shape[0] < 2:
        raise ValueError(f"x0 with shape {tuple(x0.shape)}; accepted: (N >= 2, C, H, W)")
    abar = _alphas_cumprod(prior)
    if not 0 <= int(t) < abar.numel():
        raise ValueError(f"t={t!r}; accepted: an integer time in [0, {abar.numel()})")
    a = float(abar[int(t)])
    G = annulus_masks(annuli_px, tuple(x0.shape[-2:]))
    x_t = a**0.5 * x0 + (1.0 - a) ** 0.5 * _randn(tuple(x0.shape), generator, x0.dtype, x0.device)
    D = prior.x0_hat(x_t, _time_batch(int(t), x0.shape[0], x0.device))

    out = {"t": int(t), "n_images": int(x0.shape[0]), "x_sum": _mean_sem(_annulus_sums(x0 - D, G))}
    if to_flux is not None:
        out["flux"] = _mean_sem(_annulus_sums(to_flux(x0.double()) - to_flux(D.double()), G))
    return out
