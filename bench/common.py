"""Helpers shared by the benchmark scripts: sampler arguments from one place, timing,
FLOP counting, peak memory, bf16 / compiled network wrappers and the finite-sample
coverage of a calibrated sampler.

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
import resource
import time
from pathlib import Path
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


def jsonable_kwargs(kw: dict) -> dict:
    """``kw`` for a results file: callables by their qualified names, tuples as lists, other
    objects that JSON cannot hold (a variance table) by their type's name."""
    def one(v):
        if callable(v):
            return getattr(v, "__qualname__", repr(v))
        if isinstance(v, tuple):
            return list(v)
        if v is None or isinstance(v, (bool, int, float, str, list, dict)):
            return v
        return type(v).__name__
    return {k: one(v) for k, v in kw.items()}


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


def add_network_arguments(ap) -> None:
    """``--checkpoint`` and ``--device`` of a benchmark that loads the profile's network
    (:func:`load_network`)."""
    ap.add_argument("--checkpoint", default=None,
                    help="a folder exported by scripts/train.py (ema_weights.pt, config.json; its UNet may differ "
                         "from the profile's, e.g. a --candidate run), or a weights file of the profile's own UNet "
                         "(e.g. a training snapshot, models/<profile>/snapshots/ema_step*.pt); default the committed "
                         "models/<profile>/")
    ap.add_argument("--device", default="cpu", help="torch device of the network and the sampler (default cpu)")


def load_network(profile, checkpoint=None, device="cpu"):
    """The trained prior of ``profile`` on ``device``, in eval mode without gradients: the
    committed one; with ``checkpoint`` a folder, the folder's (:func:`diffdecon.prior.load_candidate`,
    its own UNet); with ``checkpoint`` a file, those weights in the profile's UNet
    (:func:`diffdecon.prior.load_prior`: a training snapshot or checkpoint)."""
    from diffdecon import prior as prior_mod

    if checkpoint and not Path(checkpoint).is_file():
        prior = prior_mod.load_candidate(profile, checkpoint, device)
    else:
        prior = prior_mod.load_prior(profile, checkpoint=checkpoint, map_location=device)
    return prior.to(device).eval().requires_grad_(False)


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


class _Out:
    """The ``.sample`` attribute of a diffusers output, for a wrapped network."""

    def __init__(self, sample):
        self.sample = sample


def _precision_net_class():
    import torch

    class PrecisionNet(torch.nn.Module):
        """Wraps a diffusers UNet: bf16 autocast (output cast back to float32) and/or torch.compile.

        The samplers call ``prior.unet(x_t, t).sample`` through ``prior.net``; the wrapper keeps
        that contract, so autograd (the samplers' VJPs) runs through the autocast region."""

        def __init__(self, unet, device_type: str, bf16: bool, compile_net: bool):
            super().__init__()
            self.inner, self.bf16, self.compiled = unet, bf16, compile_net

            def net(x, t):
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                    return unet(x, t, return_dict=False)[0].float()

            self._fn = torch.compile(net, dynamic=False) if compile_net else net

        def forward(self, x, t):
            return _Out(self._fn(x, t))

    return PrecisionNet


def wrapped_prior(prior, device_type: str, bf16: bool, compile_net: bool):
    """A ``DiffusionPrior`` sharing ``prior``'s network (same weights), evaluated in bf16
    autocast and/or compiled (``PrecisionNet``)."""
    from diffdecon.prior import DiffusionPrior

    net = _precision_net_class()(prior.unet, device_type, bf16, compile_net)
    out = DiffusionPrior(prior.profile, unet=net).eval().requires_grad_(False)
    return out


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (2 per multiply-add) by the formulas of ``torch.utils.flop_counter``.

    A plain dispatch mode over its ``flop_registry`` (convolutions, matmuls, attention,
    forward and backward): ``FlopCounterMode`` itself also tracks modules with backward
    hooks, which ``torch.autograd.grad`` (the samplers' VJPs) does not support. Operations
    outside the registry are decomposed where torch can, as ``FlopCounterMode`` does."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = func._overloadpacket
            if packet not in flop_registry and hasattr(func, "decompose"):
                with self:
                    r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
            out = func(*args, **kwargs)
            if packet in flop_registry:
                _Count.total += int(flop_registry[packet](*args, **kwargs, out_val=out))
            return out

    with _Count():
        fn()
    return _Count.total


def peak_memory(device, reset: bool = False) -> tuple[float | None, str]:
    """Peak memory [GiB] and how it was read (GPU allocator peak; CPU: process peak RSS so far)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.max_memory_allocated(dev) / 2**30, "torch.cuda.max_memory_allocated (per configuration)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "ru_maxrss (process peak so far)"
