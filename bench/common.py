"""Helpers shared by the benchmark scripts: sampler arguments from one place, timing.

The sampler settings of a profile live in :func:`diffdecon.validation.sampler_settings`;
the benchmarks never restate its numbers. :func:`sampler_kwargs` turns a
``SamplerSettings`` into the keyword arguments of :func:`diffdecon.samplers.mmps` or
:func:`diffdecon.samplers.dps`, passing through every setting the sampler accepts, so a
new option of a sampler (say an MMPS covariance mode) reaches the benchmark as soon as
the settings carry it.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, Callable

SAMPLERS: tuple[str, ...] = ("mmps", "dps")
"""Posterior samplers the benchmarks know."""

# Arguments the benchmark supplies itself (the problem, the randomness, the batch).
_OWN_ARGS = frozenset({"prior", "y", "forward", "sigma_y", "generator", "n", "progress", "on_divergence"})


def _settings_dict(settings) -> dict[str, Any]:
    if dataclasses.is_dataclass(settings):
        return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    if isinstance(settings, dict):
        return dict(settings)
    raise TypeError(f"settings of type {type(settings).__name__}; accepted: a SamplerSettings dataclass or a dict")


def sampler_kwargs(settings, sampler: str, sampler_fn: Callable | None = None) -> dict[str, Any]:
    """Keyword arguments of ``samplers.<sampler>`` carried by ``settings``.

    Parameters
    ----------
    settings : ``validation.SamplerSettings`` (or a dict of its fields).
    sampler : ``"mmps"`` or ``"dps"``.
    sampler_fn : the function the arguments are for (default ``diffdecon.samplers.<sampler>``);
        only names in its signature are passed.

    Rules, in order (a later rule overrides an earlier one):

    * ``steps`` from ``mmps_steps`` / ``dps_steps``; DPS gets ``zeta`` from ``dps_zeta`` and
      ``convention="paper"`` (the published zeta_t = zeta / ||r||, as ``validation.run_validation``);
    * every field whose name is a parameter of the sampler (``cg_iters``, ``eta``, ...);
    * every field ``<sampler>_<name>`` with ``<name>`` a parameter (``mmps_covariance`` ->
      ``covariance``);
    * a dict field ``<sampler>_kwargs``, merged as is (its names must be parameters).

    Raises
    ------
    ValueError for an unknown sampler or a ``<sampler>_kwargs`` name the sampler does not take.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; accepted: {', '.join(SAMPLERS)}")
    if sampler_fn is None:
        from diffdecon import samplers

        sampler_fn = getattr(samplers, sampler)
    params = set(inspect.signature(sampler_fn).parameters) - _OWN_ARGS
    fields = _settings_dict(settings)
    out: dict[str, Any] = {"steps": fields[f"{sampler}_steps"]}
    if sampler == "dps":
        out.update(zeta=fields.get("dps_zeta", 1.0), convention="paper")
    prefix = f"{sampler}_"
    for name, value in fields.items():
        if name in params:
            out[name] = value
        elif name.startswith(prefix) and name[len(prefix):] in params and name != f"{sampler}_steps":
            out[name[len(prefix):]] = value
    extra = fields.get(f"{sampler}_kwargs") or {}
    bad = sorted(set(extra) - params)
    if bad:
        raise ValueError(f"settings.{sampler}_kwargs names {bad}, which samplers.{sampler} does not take; "
                         f"accepted: {sorted(params)}")
    out.update(extra)
    return {k: v for k, v in out.items() if k in params}


def describe(kwargs: dict[str, Any]) -> str:
    """Short label of sampler arguments, e.g. ``steps=100, cg_iters=5``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def synchronize(device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], device) -> tuple[Any, float]:
    """``(fn(), wall seconds)`` with the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def finite_sample_coverage(n: int, levels=(0.68, 0.95), trials: int = 20000, seed: int = 0) -> dict[float, float]:
    """Expected pixel coverage of a perfectly calibrated sampler with ``n`` samples.

    The central interval of ``n`` samples (``torch.quantile``, linear interpolation, as
    ``calibration.interval_coverage``) holds an exchangeable truth less often than the
    nominal level (16 samples: about 0.61 for 68 %). Estimated by simulation: ``trials``
    sets of ``n + 1`` independent uniforms, the last one the truth (standard error about
    0.003 at 20,000 trials). Returns {level: expected coverage}; ``n < 2`` gives 0."""
    import torch

    if n < 2:
        return {float(lv): 0.0 for lv in levels}
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(trials, n + 1, generator=g, dtype=torch.float64)
    s, truth = u[:, :n], u[:, n]
    out = {}
    for lv in levels:
        q = torch.quantile(s, torch.tensor([(1 - lv) / 2, (1 + lv) / 2], dtype=torch.float64), dim=1)
        out[float(lv)] = float(((truth >= q[0]) & (truth <= q[1])).double().mean())
    return out
