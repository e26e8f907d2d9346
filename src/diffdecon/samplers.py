"""Samplers for a VP diffusion prior: unconditional DDPM/DDIM, DPS and MMPS.

Every sampler is a pure function of (prior, observation, forward operator, generator):
no global random state, no hidden module state. ``prior`` follows the contract of
:mod:`diffdecon.prior` (``prior.schedule.alphas_cumprod``: float64 tensor ``(T,)``;
``prior.eps(x_t, t)``, ``prior.score(x_t, t)``, ``prior.x0_hat(x_t, t)`` with ``t`` an
integer tensor ``(B,)`` in ``[0, T)``, ``x`` shaped ``(B, C, H, W)`` in prior space).

Notation (VP forward process, Ho et al. 2020, eq. 4):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        eps ~ N(0, I),

so ``alpha_t = sqrt(abar_t)`` (signal scale) and ``sigma_t^2 = 1 - abar_t`` (noise
variance) in the notation of Rozet et al. (2024). Tweedie: ``x0_hat = D(x_t) =
(x_t + sigma_t^2 score) / alpha_t``.

Randomness: ``generator`` is either one seeded :class:`torch.Generator` (noise for the
whole batch is drawn from it) or a sequence of ``n`` generators, one per sample, in which
case sample ``i`` is reproducible whatever the rest of the batch is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import TIME_SPACINGS
from .errors import DivergenceError

__all__ = [
    "SamplerDivergenceError",
    "SPACINGS",
    "timesteps",
    "has_exact_draws",
    "ddpm_sample",
    "ddim_sample",
    "dps",
    "dps_guidance",
    "mmps",
    "mmps_x0",
    "mmps_isotropic_x0",
]

Generator = torch.Generator | Sequence[torch.Generator]


SamplerDivergenceError = DivergenceError
"""Alias of :class:`diffdecon.errors.DivergenceError` (the name used before the error family)."""


# --------------------------------------------------------------------------- helpers


SPACINGS: tuple[str, ...] = TIME_SPACINGS
"""Accepted ``spacing`` values of :func:`timesteps` (:data:`diffdecon.config.TIME_SPACINGS`)."""


def timesteps(T: int, steps: int, spacing: str = "linear") -> torch.Tensor:
    """Strictly decreasing sub-sequence of ``{0, ..., T-1}`` from ``T - 1`` to ``0``.

    Parameters
    ----------
    T : int
        Number of diffusion steps of the trained schedule (paper: 1000).
    steps : int
        Number of sampling steps, ``1 <= steps <= T``.

    spacing : {"linear", "quadratic"}
        ``"linear"``: ``round(linspace(0, T-1, steps))`` (the spacing of improved DDPM,
        ``space_timesteps`` with one section). ``"quadratic"``: ``round((T-1) u^2)``,
        ``u = linspace(0, 1, steps)`` (DDIM's quadratic skip, Song et al. 2021, appendix
        D.2), with the values a rounding merges pushed up by one: the steps concentrate at
        small noise, where a posterior sampler resolves what the data constrain.

    Returns
    -------
    torch.Tensor
        int64 ``(steps,)``, starting at ``T - 1`` and ending at ``0`` (for ``steps > 1``).
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T={T!r}: expected a positive int")
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps={steps!r}: expected an int in [1, T={T}]")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r}: expected one of {', '.join(SPACINGS)}")
    if steps == 1:
        return torch.tensor([T - 1], dtype=torch.long)
    u = torch.linspace(0, 1, steps, dtype=torch.float64)
    ts = ((T - 1) * (u if spacing == "linear" else u**2)).round().long()
    for i in range(1, steps):  # t_i <= max(round(.), i) by induction, so t stays within [0, T-1]
        ts[i] = max(int(ts[i]), int(ts[i - 1]) + 1)
    assert int(ts[-1]) == T - 1 and torch.unique(ts).numel() == steps
    return ts.flip(0)


def has_exact_draws(prior: Any) -> bool:
    """Whether ``prior`` is a closed-form prior with exact draws, ``prior.sample(n, generator)``
    -> ``(n, C, H, W)`` prior space (e.g. :class:`diffdecon.mixture_prior.GalaxyMixturePrior`);
    a trained network has none and is drawn by its sampling chain."""
    return callable(getattr(prior, "sample", None))


def _alphas_cumprod(prior: Any) -> torch.Tensor:
    try:
        abar = prior.schedule.alphas_cumprod
    except AttributeError as err:
        raise TypeError(
            f"prior of type {type(prior).__name__} has no schedule.alphas_cumprod: expected an "
            "object following the diffdecon.prior contract"
        ) from err
    abar = torch.as_tensor(abar, dtype=torch.float64).cpu()
    if abar.ndim != 1 or not torch.all((abar > 0) & (abar <= 1)):
        raise ValueError("prior.schedule.alphas_cumprod must be a 1-D tensor with values in (0, 1]")
    return abar


def _sample_shape(prior: Any, shape: Sequence[int] | None) -> tuple[int, int, int]:
    if shape is None:
        shape = getattr(prior, "shape", None)
    if shape is None and hasattr(prior, "profile"):
        p = prior.profile
        shape = (len(p.bands), p.image_size, p.image_size)
    if shape is None:
        raise ValueError(
            "cannot infer the sample shape: pass shape=(C, H, W) or give the prior a .shape "
            "or .profile attribute"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape={shape}: expected (C, H, W) with positive sizes")
    return shape  # type: ignore[return-value]


def _prior_dtype_device(prior: Any) -> tuple[torch.dtype, torch.device]:
    dtype = getattr(prior, "dtype", None)
    device = getattr(prior, "device", None)
    if (dtype is None or device is None) and isinstance(prior, torch.nn.Module):
        p = next(prior.parameters(), None)
        if p is not None:
            dtype = dtype or p.dtype
            device = device or p.device
    return dtype or torch.float32, torch.device(device or "cpu")


def _check_generator(generator: Generator, n: int) -> None:
    if isinstance(generator, torch.Generator):
        return
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for n={n} samples: pass one or n")
        return
    raise TypeError(
        f"generator of type {type(generator).__name__}: expected a torch.Generator or a "
        "sequence of n torch.Generator (no global RNG is used)"
    )


def _randn(shape: tuple[int, ...], generator: Generator, dtype, device) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...) from one generator or one per sample."""
    if isinstance(generator, torch.Generator):
        z = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
        return z.to(device)
    return torch.stack(
        [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]
    ).to(device)


def _step_coefficients(abar: torch.Tensor, ts: torch.Tensor):
    """(abar_t, abar_prev) for each sampling step; abar_prev = 1 after the last step."""
    a_t = abar[ts]
    a_prev = torch.cat([abar[ts[1:]], torch.ones(1, dtype=abar.dtype)])
    return a_t, a_prev


def _ancestral_step(x_t, x0, a_t: float, a_prev: float, z, variance: str):
    """One DDPM step x_t -> x_prev on the respaced schedule (improved DDPM, Nichol &
    Dhariwal 2021, sec. 4: beta_t = 1 - abar_t / abar_prev for the kept steps).

    Posterior q(x_prev | x_t, x0) (Ho et al. 2020, eqs. 6-7):
        mean = sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t
        beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t
    Fixed variance: ``"large"`` uses sigma^2 = beta_t (improved-DDPM FIXED_LARGE, the
    default of the reference code without learned sigma), ``"small"`` uses beta_tilde.
    No noise is added on the last step (abar_prev = 1).
    """
    beta = 1.0 - a_t / a_prev
    alpha = 1.0 - beta
    c0 = a_prev**0.5 * beta / (1.0 - a_t)
    ct = alpha**0.5 * (1.0 - a_prev) / (1.0 - a_t)
    mean = c0 * x0 + ct * x_t
    if a_prev >= 1.0:
        return mean
    var = beta if variance == "large" else (1.0 - a_prev) / (1.0 - a_t) * beta
    return mean + var**0.5 * z


def _ddim_step(x_t, x0, a_t: float, a_prev: float, z, eta: float):
    """One DDIM step (Song et al. 2021, eq. 12), eps re-derived from (x_t, x0):
        eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
    eta = 1 is the DDPM ancestral step with the small variance beta_tilde."""
    eps = (x_t - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5
    sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5
    out = a_prev**0.5 * x0 + max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        out = out + sigma * z
    return out


def _clip(x0: torch.Tensor, x0_clip) -> torch.Tensor:
    if x0_clip is None:
        return x0
    if isinstance(x0_clip, (int, float)):
        lo, hi = -float(x0_clip), float(x0_clip)
    else:
        lo, hi = (float(v) for v in x0_clip)
    if not lo < hi:
        raise ValueError(f"x0_clip={x0_clip!r}: expected None, c > 0 or (lo, hi) with lo < hi")
    return x0.clamp(lo, hi)


class _Divergence:
    """Per-sample divergence bookkeeping: raise, or mask and freeze the bad samples."""

    def __init__(self, n: int, mode: str, sampler: str, max_abs: float, device):
        if mode not in ("raise", "mask"):
            raise ValueError(f"on_divergence={mode!r}: expected 'raise' or 'mask'")
        self.mode, self.sampler, self.max_abs = mode, sampler, max_abs
        self.valid = torch.ones(n, dtype=torch.bool, device=device)

    def check(self, x: torch.Tensor, step: int, t: int) -> torch.Tensor:
        flat = x.detach().flatten(1)
        bad = ~torch.isfinite(flat).all(1) | (flat.abs().amax(1) > self.max_abs)
        new_bad = bad & self.valid
        if new_bad.any():
            if self.mode == "raise":
                raise SamplerDivergenceError(step, t, int(bad.sum()), x.shape[0], self.sampler)
            self.valid &= ~bad
            # Freeze diverged samples at 0 so they cannot poison anything; they are set to
            # NaN at the end and flagged in the returned mask.
            x = torch.where(self.valid.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros_like(x))
        return x

    def finish(self, x: torch.Tensor):
        if self.mode == "raise":
            return x
        x = torch.where(self.valid.view(-1, *[1] * (x.ndim - 1)), x, torch.full_like(x, float("nan")))
        return x, self.valid


def _time_batch(t: int, n: int, device) -> torch.Tensor:
    return torch.full((n,), int(t), dtype=torch.long, device=device)


# ------------------------------------------------------------------ unconditional


@torch.no_grad()
def ddpm_sample(
    prior: Any,
    n: int,
    generator: Generator,
    steps: int | None = None,
    shape: Sequence[int] | None = None,
    variance: str = "large",
    x0_clip=None,
    progress: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) with fixed variance.

    Parameters
    ----------
    prior : diffusion prior (see module docstring).
    n : int
        Number of samples.
    generator : torch.Generator or sequence of n generators
        Source of all randomness.
    steps : int, optional
        Number of steps; ``None`` uses all ``T``. With ``steps < T`` the schedule is
        respaced as in improved DDPM (betas recomputed from the kept ``abar``).
    shape : (C, H, W), optional
        Sample shape [prior-space pixels]; default from ``prior.shape`` or ``prior.profile``.
    variance : {"large", "small"}
        Fixed variance beta_t (default, as the reference code) or beta_tilde_t.
    x0_clip : None, float or (lo, hi)
        Optional clamp of the Tweedie estimate (biases flux; off by default).

    Returns
    -------
    torch.Tensor
        ``(n, C, H, W)`` samples in prior space (dimensionless, about [-1, 1]).
    """
    if variance not in ("large", "small"):
        raise ValueError(f"variance={variance!r}: expected 'large' or 'small'")
    return _unconditional(prior, n, generator, steps, shape, "ddpm", 1.0, variance, x0_clip, progress)


@torch.no_grad()
def ddim_sample(
    prior: Any,
    n: int,
    generator: Generator,
    steps: int = 50,
    eta: float = 0.0,
    shape: Sequence[int] | None = None,
    x0_clip=None,
    progress: bool = True,
    spacing: str = "linear",
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12); ``eta=0`` deterministic given x_T,
    ``eta=1`` equals ancestral DDPM with the small variance. Same parameters and return
    value as :func:`ddpm_sample` (``steps`` defaults to 50), plus the ``spacing`` of the
    respaced times (:func:`timesteps`)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r}: expected a float in [0, 1]")
    return _unconditional(prior, n, generator, steps, shape, "ddim", eta, "small", x0_clip, progress, spacing)


def _unconditional(prior, n, generator, steps, shape, kind, eta, variance, x0_clip, progress, spacing="linear",
                   x0_step=None):
    """The unconditional loop; ``x0_step(D, t, last)``, when given, replaces Tweedie's ``D`` in
    each step (``last``: the final step), drawing from ``generator`` before the step's noise."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive int")
    _check_generator(generator, n)
    abar = _alphas_cumprod(prior)
    T = abar.numel()
    ts = timesteps(T, T if steps is None else steps, spacing)
    a_t, a_prev = _step_coefficients(abar, ts)
    C, H, W = _sample_shape(prior, shape)
    dtype, device = _prior_dtype_device(prior)
    x = _randn((n, C, H, W), generator, dtype, device)  # x_T ~ N(0, I)
    div = _Divergence(n, "raise", kind, float("inf"), device)  # NaN/inf only
    for i, t in enumerate(tqdm(ts.tolist(), desc=kind, disable=not progress, leave=False)):
        x0 = _clip(prior.x0_hat(x, _time_batch(t, n, device)), x0_clip)
        if x0_step is not None:
            x0 = x0_step(x0, t, not a_prev[i] < 1)
        z = _randn((n, C, H, W), generator, dtype, device) if a_prev[i] < 1 else None
        if kind == "ddpm":
            x = _ancestral_step(x, x0, float(a_t[i]), float(a_prev[i]), z, variance)
        else:
            x = _ddim_step(x, x0, float(a_t[i]), float(a_prev[i]), z, eta)
        x = div.check(x, i, t)
    return x


# ------------------------------------------------------------------ observations


def _prepare_observation(y, sigma_y, n: int, dtype, device):
    """y -> (n or 1, C, h, w) tensor, sigma_y -> (1, C, 1, 1) [observation flux units]."""
    y = torch.as_tensor(y, dtype=dtype, device=device)
    if y.ndim == 3:
        y = y.unsqueeze(0)
    if y.ndim != 4 or y.shape[0] not in (1, n):
        raise ValueError(f"y has shape {tuple(y.shape)}: expected (C, h, w) or ({n}, C, h, w)")
    if not torch.isfinite(y).all():
        raise ValueError("y contains non-finite values: mask or inpaint them before sampling")
    C = y.shape[1]
    s = torch.as_tensor(sigma_y, dtype=dtype, device=device).flatten()
    if s.numel() == 1:
        s = s.expand(C)
    if s.numel() != C or not torch.all(s > 0):
        raise ValueError(
            f"sigma_y={sigma_y!r}: expected a positive scalar or one positive value per band (C={C}) "
            "in observation flux units"
        )
    return y, s.view(1, C, 1, 1)


def _posterior_setup(prior, y, sigma_y, generator: Generator, n: int, steps: int, shape, on_divergence: str,
                     max_abs: float, name: str, spacing: str = "linear"):
    """Common start of a posterior sampler: respaced times ``ts`` and their ``(abar_t,
    abar_prev)``, the observation and noise as tensors, ``x_T ~ N(0, I)`` and the divergence
    bookkeeping. Returns ``(ts, a_t, a_prev, (C, H, W), y, sigma, x, div)``."""
    _check_generator(generator, n)
    abar = _alphas_cumprod(prior)
    ts = timesteps(abar.numel(), steps, spacing)
    a_t, a_prev = _step_coefficients(abar, ts)
    chw = _sample_shape(prior, shape)
    dtype, device = _prior_dtype_device(prior)
    y, sigma = _prepare_observation(y, sigma_y, n, dtype, device)
    x = _randn((n, *chw), generator, dtype, device)
    return ts, a_t, a_prev, chw, y, sigma, x, _Divergence(n, on_divergence, name, max_abs, device)


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped (B, 1, 1, 1) for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *[1] * (a.ndim - 1))


_LAZY = {"mmps": "mmps", "mmps_x0": "mmps", "mmps_isotropic_x0": "mmps", "dps": "dps", "dps_guidance": "dps"}


def __getattr__(name: str):
    """The posterior samplers live in :mod:`diffdecon.mmps` and :mod:`diffdecon.dps` (which
    import this module's helpers); they are re-exported here lazily, so that
    ``samplers.mmps`` and ``samplers.dps`` keep working."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
