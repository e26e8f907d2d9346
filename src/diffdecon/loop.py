"""The one training loop of the package: optimiser, EMA, checkpoints, resume, GPU path.

Every model the package trains (the diffusion prior of :mod:`diffdecon.training`, the
conditional models and the one-band prior of :mod:`diffdecon.conditional_models`) runs
through :func:`run_loop`. A :class:`Loop` says what is trained and how one step's loss
is drawn; the loop does the rest, identically for all of them:

* AdamW with the learning rate ``loop.lr_at(k)`` of step ``k + 1``;
* an EMA copy of the weights with decay ``loop.ema_decay_at(step)`` after each step;
* atomic checkpoints every ``loop.checkpoint_every`` steps (model, EMA, optimiser, the
  loop generator, the device noise generator on a GPU, torch and numpy global RNG states,
  the log) and a CSV log beside them; a run started again in the same folder resumes from
  the last checkpoint, refusing one made with another ``config`` or ``dataset_hash``,
  and on the CPU gives bitwise the weights of an uninterrupted run (same thread count);
* on CUDA the loss function gets ``amp=True`` (bf16 autocast of the network) and a
  device-side noise generator seeded with ``seed + 1``; on the CPU one generator draws
  everything and deterministic algorithms are switched on.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache
from .errors import DiffdeconError

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.csv"
LOG_FIELDS = ("step", "loss", "lr", "ema_decay", "shift", "elapsed_s", "images_per_s")


class CheckpointMismatchError(DiffdeconError, RuntimeError):
    """A checkpoint was made with another configuration or dataset than the one asked for."""


class SimulatedKill(DiffdeconError, RuntimeError):
    """Raised by :func:`run_loop` after ``kill_after_step`` steps (tests of resume-after-kill)."""


LossFn = Callable[[torch.nn.Module, int, torch.Generator, torch.Generator, bool], torch.Tensor]


@dataclass
class Loop:
    """What one run trains and how a step's loss is drawn.

    model : the module whose parameters are optimised (on its device already).
    loss : ``loss(model, k, gen, noise_gen, amp) -> scalar`` for step ``k + 1`` (``k`` steps
        done): draws its batch from ``gen`` (CPU generator) and Gaussian noise from
        ``noise_gen`` (on the model's device), uses bf16 autocast for the network when ``amp``.
    total_steps : length of the run (schedules refer to it).
    lr_at, ema_decay_at : learning rate of step ``k + 1``; EMA decay after step ``step`` (1-based).
    config : JSON record compared on resume; dataset_hash : identity of the training data.
    seed : seed of the loop generator (and ``seed + 1`` of the GPU noise generator).
    batch : images per step (for the images/s column of the log).
    checkpoint_every : steps between checkpoints; snapshot_steps : steps whose EMA is saved
        to ``snapshots/ema_step<step>.pt``.
    shift_at : value of the log's ``shift`` column at step ``k + 1`` (augmentation, px).
    ignore_fields : config keys not compared on resume (they do not touch the weights).
    """

    name: str
    model: torch.nn.Module
    loss: LossFn
    total_steps: int
    lr_at: Callable[[int], float]
    ema_decay_at: Callable[[int], float]
    config: dict[str, Any]
    dataset_hash: str
    seed: int
    batch: int
    checkpoint_every: int
    snapshot_steps: frozenset[int] = frozenset()
    shift_at: Callable[[int], int] = lambda k: 0
    ignore_fields: tuple[str, ...] = ()


@dataclass
class TrainResult:
    """What :func:`run_loop` (and :func:`diffdecon.training.train`) returns."""

    run_dir: Path
    step: int
    finished: bool
    log: list[dict[str, Any]]
    ema: torch.nn.Module
    model: torch.nn.Module
    config: dict[str, Any]
    dataset_hash: str


@dataclass
class _State:
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    noise_gen: torch.Generator
    step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    elapsed0: float = 0.0


# --------------------------------------------------------------------------- helpers


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay used after optimizer step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``
    with the warm-up, else ``decay``."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers copied."""
    # one fused update instead of a kernel per tensor
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    with cache.atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def log_csv(rows: list[dict[str, Any]]) -> str:
    """The training log as CSV text (:data:`LOG_FIELDS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in LOG_FIELDS})
    return buf.getvalue()


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a training log CSV (step, loss, lr, ema_decay, shift, elapsed_s, images_per_s)."""
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def check_checkpoint(state: dict[str, Any], config: dict[str, Any], dataset_hash: str, path,
                     ignore: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint made with another config or dataset, naming the differing fields
    (``ignore``: keys not compared). Raises :class:`CheckpointMismatchError`."""
    old = state.get("config", {})
    keys = sorted((set(old) | set(config)) - set(ignore))
    problems = [f"config.{k}: checkpoint {old.get(k)!r} vs now {config.get(k)!r}" for k in keys
                if cache.canonical_json(old.get(k)) != cache.canonical_json(config.get(k))]
    if state.get("dataset_hash") != dataset_hash:
        problems.append(f"dataset_hash: checkpoint {state.get('dataset_hash')!r} vs now {dataset_hash!r}")
    if problems:
        raise CheckpointMismatchError(
            f"refusing to resume from {path}: it was made with other inputs ("
            + "; ".join(problems) + "). Delete it or pass retrain=True (--retrain).")


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the first parameter of ``model``."""
    return next(model.parameters()).device


# --------------------------------------------------------------------------- the loop


def _new_state(loop: Loop) -> _State:
    model = loop.model
    device = model_device(model)
    gen = torch.Generator().manual_seed(loop.seed)
    # on a GPU the noise is drawn there by its own seeded generator (checkpointed too); on
    # the CPU ``gen`` draws everything, so CPU runs are bitwise resumable
    noise_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(loop.seed + 1)
    return _State(model, copy.deepcopy(model).requires_grad_(False),
                  torch.optim.AdamW(model.parameters(), lr=loop.lr_at(0)), gen, noise_gen)


def _restore(s: _State, loop: Loop, ckpt: Path) -> None:
    state = torch.load(ckpt, map_location=model_device(s.model), weights_only=False)
    check_checkpoint(state, loop.config, loop.dataset_hash, ckpt, loop.ignore_fields)
    s.model.load_state_dict(state["model"])
    s.ema.load_state_dict(state["ema"])
    s.opt.load_state_dict(state["optimizer"])
    s.gen.set_state(state["rng"]["generator"])
    if s.noise_gen is not s.gen:
        if "noise_generator" not in state["rng"]:
            raise CheckpointMismatchError(f"{ckpt} was written by a CPU run; a GPU run cannot resume it "
                                          "exactly: resume on the CPU or pass --retrain")
        s.noise_gen.set_state(state["rng"]["noise_generator"].cpu())
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    s.step, s.log = int(state["step"]), list(state["log"])
    s.elapsed0 = float(s.log[-1]["elapsed_s"]) if s.log else 0.0
    print(f"[diffdecon] resuming {loop.name} at step {s.step}/{loop.total_steps} from {ckpt}")


def _save(s: _State, loop: Loop, out: Path) -> None:
    rng = {"generator": s.gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if s.noise_gen is not s.gen:
        rng["noise_generator"] = s.noise_gen.get_state()
    save_torch_atomic({"config": loop.config, "dataset_hash": loop.dataset_hash, "step": s.step,
                       "model": s.model.state_dict(), "ema": s.ema.state_dict(), "optimizer": s.opt.state_dict(),
                       "rng": rng, "log": s.log}, out / CHECKPOINT_FILE)
    cache.atomic_write_text(out / LOG_FILE, log_csv(s.log))


def _one_step(s: _State, loop: Loop, amp: bool, t_start: float) -> float:
    """One optimizer step and EMA update; appends the log row; returns the loss."""
    t0 = time.perf_counter()
    lr = loop.lr_at(s.step)
    for group in s.opt.param_groups:
        group["lr"] = lr
    loss = loop.loss(s.model, s.step, s.gen, s.noise_gen, amp)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    shift = loop.shift_at(s.step)
    s.step += 1
    d = loop.ema_decay_at(s.step)
    ema_update(s.ema, s.model, d)
    value = loss.item()  # synchronises with the device: dt is the true step time
    if not math.isfinite(value):
        raise FloatingPointError(f"{loop.name}: non-finite training loss {value} at step {s.step}")
    dt = time.perf_counter() - t0
    s.log.append({"step": s.step, "loss": float(value), "lr": lr, "ema_decay": d, "shift": shift,
                  "elapsed_s": s.elapsed0 + time.perf_counter() - t_start, "images_per_s": loop.batch / dt})
    return value


def run_loop(loop: Loop, out: str | Path, retrain: bool = False, max_steps: int | None = None,
             max_minutes: float | None = None, kill_after_step: int | None = None,
             progress: bool = True) -> TrainResult:
    """Train ``loop.model`` (resuming from ``out/checkpoint.pt`` unless ``retrain``) up to
    ``min(max_steps, loop.total_steps)`` steps, or until ``max_minutes`` [min] are spent
    (a checkpoint is written first). ``kill_after_step``: tests only, raise
    :class:`SimulatedKill` right after that step without writing anything (as SIGKILL)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = _new_state(loop)
    device = model_device(s.model)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    if (out / CHECKPOINT_FILE).exists() and not retrain:
        _restore(s, loop, out / CHECKPOINT_FILE)
    end = loop.total_steps if max_steps is None else min(int(max_steps), loop.total_steps)
    s.model.train()
    bar = tqdm(total=end, initial=s.step, desc=loop.name, unit="step", disable=not progress, mininterval=5.0)
    t_start = time.perf_counter()
    try:
        while s.step < end:
            loss = _one_step(s, loop, device.type == "cuda", t_start)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{s.log[-1]['images_per_s']:.1f}", refresh=False)
            if kill_after_step is not None and s.step >= kill_after_step:
                raise SimulatedKill(f"simulated kill after step {s.step}")
            if s.step in loop.snapshot_steps:
                save_torch_atomic({k: v.detach().cpu() for k, v in s.ema.state_dict().items()},
                                  out / "snapshots" / f"ema_step{s.step:07d}.pt")
            out_of_time = max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes
            if s.step % loop.checkpoint_every == 0 or s.step == end or out_of_time:
                _save(s, loop, out)
            if out_of_time:
                print(f"[diffdecon] stopping {loop.name} after {max_minutes} min at step {s.step}; run again to resume")
                break
    finally:
        bar.close()
    s.model.eval()
    return TrainResult(out, s.step, s.step >= loop.total_steps, s.log, s.ema, s.model, loop.config,
                       loop.dataset_hash)
