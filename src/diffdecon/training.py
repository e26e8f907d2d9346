"""Training of the diffusion prior: loop, checkpoints, resume, EMA, export.

The objective is the simple epsilon loss of Ho et al. (2020), eq. 14:
``L = E_{x_0, t, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2``
with ``t`` uniform in ``[0, T)`` and a fixed (not learned) reverse variance, as published;
with ``profile.prediction == "v"`` the target is ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``.

Choices, stated
---------------
* Optimiser AdamW, ``lr = profile.lr`` (1e-4), default weight decay (0.01); constant as
  published, or warm-up and cosine decay (``profile.lr_schedule``, :func:`learning_rate_at`).
* EMA of the weights with decay ``min(profile.ema_decay, (1 + step) / (10 + step))``: the
  warm-up of the second term lets a short CPU run (about a thousand steps) have a useful
  average; for the paper's 525k steps it equals the published 0.9999 after 90k steps.
* Batches: indices drawn uniformly *with replacement* from the training set by a seeded
  ``torch.Generator`` (the only random stream of the loop, together with ``t``, ``eps``
  and the augmentations), so the run is a function of the seed and resumable exactly. On
  a GPU the noise ``eps`` comes from a second, device-side generator (seed + 1) whose
  state is checkpointed too, and the whole training set is held on the device.
* Augmentation: a random element of the dihedral group (flips and 90-degree rotations;
  galaxies have no preferred orientation), and, from the fraction ``profile.shift_start_fraction``
  of the run onward (300k/525k as in the paper, which added it against mode collapse), a
  random integer shift of up to ``profile.max_shift_px`` px per axis made with
  ``torch.roll`` (periodic: the few px wrapped around are sky at the image edge).
* Images are normalised per batch with :func:`diffdecon.prior.normalise` (total flux
  fixed to ``flux_norm``, asinh stretch) *after* the shift, which conserves flux.
* CUDA: bf16 autocast. CPU: ``torch.use_deterministic_algorithms(True)``.
* Checkpoints (atomic): config, dataset manifest hash, step, model, optimiser, EMA, RNG
  states (loop generator, torch global, numpy global), the training log. A killed run
  resumes from the last one and repeats at most ``checkpoint_every`` steps; the resumed
  run is identical to an uninterrupted one on the same machine and thread count.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache, paths
from .config import Profile, get_profile
from .prior import CONFIG_FILE, WEIGHTS_FILE, DiffusionPrior, checkpoint_dir, count_parameters

FID_FRACTIONS: tuple[float, ...] = (300 / 525, 375 / 525, 450 / 525, 1.0)
"""Fractions of the run at which EMA snapshots are kept (the paper's FID checkpoints
300k, 375k, 450k and 525k of 525k steps, Table 1)."""

PAPER_FID_STEPS: tuple[int, ...] = (300_000, 375_000, 450_000, 525_000)
PAPER_FID: tuple[float, ...] = (317.3, 235.3, 119.4, 132.6)
"""Published FID (Inception, 1024 samples) at :data:`PAPER_FID_STEPS`."""

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.csv"
LOG_FIELDS = ("step", "loss", "lr", "ema_decay", "shift", "elapsed_s", "images_per_s")


INFERENCE_FIELDS: tuple[str, ...] = ("sampling_steps", "cg_iters", "n_posterior", "n_prior", "n_mock")
"""Profile fields that are recorded in a checkpoint but not compared: they size posterior
sampling, not training, so changing them keeps the trained weights valid."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was made with another configuration or dataset than the one asked for."""


class SimulatedKill(RuntimeError):
    """Raised by :func:`train` after ``kill_after_step`` steps (tests of resume-after-kill)."""


@dataclass(frozen=True)
class TrainOptions:
    """Options of a run beyond the profile (all recorded in the checkpoint's config).

    batch_size : int, optional   override of ``profile.batch_size`` (e.g. larger on a GPU).
    shift_start_fraction : float, optional  override of ``profile.shift_start_fraction``.
    dihedral : bool              random flips / 90-degree rotations.
    ema_warmup : bool            EMA decay ``min(decay, (1+step)/(10+step))``.
    """

    batch_size: int | None = None
    shift_start_fraction: float | None = None
    dihedral: bool = True
    ema_warmup: bool = True


def run_config(profile: Profile, options: TrainOptions) -> dict[str, Any]:
    """The config recorded in a checkpoint: the profile and the training options."""
    cfg = profile.to_dict()
    cfg["training_options"] = asdict(options)
    cfg["effective_batch_size"] = options.batch_size or profile.batch_size
    return json.loads(cache.canonical_json(cfg))


def fid_steps(profile: Profile | str) -> list[int]:
    """Steps of the EMA snapshots: :data:`FID_FRACTIONS` of ``profile.train_steps``."""
    n = get_profile(profile).train_steps
    return sorted({max(1, round(n * f)) for f in FID_FRACTIONS})


def run_dir(profile: Profile | str) -> Path:
    """Working folder of a training run (full checkpoints, not committed):
    ``<cache>/training/<profile>/``."""
    return paths.cache_dir() / "training" / get_profile(profile).name


# --------------------------------------------------------------------------- helpers


def learning_rate_at(k: int, profile: Profile) -> float:
    """Learning rate of optimizer step ``k + 1`` (``k`` steps done): ``profile.lr`` after a
    linear warm-up of ``profile.lr_warmup_steps``, times ``(1 + cos(pi k / train_steps)) / 2``
    for the ``"cosine"`` schedule."""
    lr = profile.lr
    if profile.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(k, profile.train_steps) / profile.train_steps))
    if k < profile.lr_warmup_steps:
        lr *= (k + 1) / profile.lr_warmup_steps
    return lr


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay used after optimizer step ``step`` (1-based)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter and float buffer."""
    # one fused update instead of a kernel per tensor
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int, dihedral: bool) -> torch.Tensor:
    """Random dihedral transform and integer roll of up to ``max_shift`` px per axis, per image.

    ``images`` ``(B, C, H, W)`` (any units, square images, any device); the random draws come
    from the CPU ``generator`` in a fixed order (rotation ``k``, flip, shift), so the result
    does not depend on the device. Per image: ``rot90`` by ``k`` quarter turns, then a flip of
    the last axis, then ``torch.roll`` by ``(dy, dx)``; vectorised over the batch.
    """
    b, _, h, w = images.shape
    k = torch.randint(0, 4, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator) if max_shift > 0 else None
    out = images
    if dihedral:
        out = images.clone()
        for q in range(1, 4):
            sel = (k == q).nonzero().flatten().to(images.device)
            if len(sel):
                out[sel] = torch.rot90(images[sel], q, dims=(2, 3))
        sel = flip.bool().nonzero().flatten().to(images.device)
        if len(sel):
            out[sel] = torch.flip(out[sel], dims=(3,))
    if shifts is not None:
        # torch.roll per image: out[..., j, i] = in[..., (j - dy) % H, (i - dx) % W]
        dev = images.device
        rows = (torch.arange(h)[None, :] - shifts[:, :1]) % h  # (B, H)
        cols = (torch.arange(w)[None, :] - shifts[:, 1:]) % w  # (B, W)
        bi = torch.arange(b)[:, None, None]
        out = out.permute(0, 2, 3, 1)[bi.to(dev), rows[:, :, None].to(dev), cols[:, None, :].to(dev)]
        out = out.permute(0, 3, 1, 2).contiguous()
    return out


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    with cache.atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _log_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in LOG_FIELDS})
    return buf.getvalue()


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a training log CSV (step, loss, ema_decay, shift, elapsed_s, images_per_s)."""
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def check_checkpoint(state: dict[str, Any], config: dict[str, Any], dataset_hash: str, path) -> None:
    """Refuse a checkpoint made with another config or dataset, naming the differing fields.

    Raises
    ------
    CheckpointMismatchError
    """
    problems = []
    old = state.get("config", {})
    # fields that only size the inference (samplers, notebooks) do not touch the weights
    keys = sorted((set(old) | set(config)) - set(INFERENCE_FIELDS))
    diff = [k for k in keys if cache.canonical_json(old.get(k)) != cache.canonical_json(config.get(k))]
    for k in diff:
        problems.append(f"config.{k}: checkpoint {old.get(k)!r} vs now {config.get(k)!r}")
    if state.get("dataset_hash") != dataset_hash:
        problems.append(f"dataset_hash: checkpoint {state.get('dataset_hash')!r} vs now {dataset_hash!r}")
    if problems:
        raise CheckpointMismatchError(
            f"refusing to resume from {path}: it was made with other inputs ("
            + "; ".join(problems) + "). Delete it or pass retrain=True (--retrain).")


# --------------------------------------------------------------------------- training loop


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    step: int
    finished: bool
    log: list[dict[str, Any]]
    ema: torch.nn.Module
    model: torch.nn.Module
    config: dict[str, Any]
    dataset_hash: str


def training_step(model: torch.nn.Module, opt: torch.optim.Optimizer, abar: torch.Tensor,
                  x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, use_amp: bool = False,
                  prediction: str = "epsilon") -> torch.Tensor:
    """One optimizer step of the denoising loss; returns the loss (a 0-d tensor, not synchronised).

    ``x0`` prior-space images ``(B, C, H, W)`` in [-1, 1]; ``t`` integer times ``(B,)``;
    ``eps`` standard normal noise like ``x0``; ``abar`` the cumulative alphas ``(T,)``; all on
    the model's device. ``use_amp``: bf16 autocast for the network (GPU). ``prediction``:
    the network's target, ``"epsilon"`` (Ho et al. eq. 14) or ``"v"`` (Salimans & Ho 2022).
    """
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # DDPM eq. 4
    if prediction == "epsilon":
        target = eps
    elif prediction == "v":
        target = a.sqrt() * eps - (1 - a).sqrt() * x0  # v, Salimans & Ho eq. 9
    else:
        raise ValueError(f"prediction={prediction!r}: accepted values epsilon, v")
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=use_amp):
        pred = model(x_t, t).sample
    loss = torch.mean((pred.float() - target) ** 2)  # Ho et al. eq. 14 (with v: its v analogue)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(
    profile: Profile | str,
    dataset=None,
    out_dir: str | Path | None = None,
    options: TrainOptions | None = None,
    retrain: bool = False,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    device: str | torch.device | None = None,
    kill_after_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) the prior of ``profile`` for ``profile.train_steps`` steps.

    Parameters
    ----------
    dataset : GalaxyDataset, optional
        Needs ``.images`` (float32 ``(N, C, H, W)`` linear flux) and ``.manifest_hash``;
        default ``galaxies.build_dataset(profile)``.
    out_dir : folder of the run (default :func:`run_dir`). Holds ``checkpoint.pt``,
        ``train_log.csv``, ``snapshots/ema_step<step>.pt``.
    retrain : start afresh even if a checkpoint exists (it is overwritten).
    max_minutes : stop (after writing a checkpoint) once this wall time [min] is spent.
    max_steps : stop at this step instead of ``profile.train_steps`` (the schedule, e.g. the
        shift start, still refers to ``profile.train_steps``).
    kill_after_step : tests only: raise :class:`SimulatedKill` right after this step,
        without writing anything more (as a SIGKILL would).

    Raises
    ------
    CheckpointMismatchError if an existing checkpoint has another config or dataset hash.
    """
    from tqdm.auto import tqdm

    from .prior import normalise

    profile = get_profile(profile)
    options = options or TrainOptions()
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    images = dataset.images
    n_img = len(images)
    if tuple(images.shape[1:]) != (len(profile.bands), profile.image_size, profile.image_size):
        raise ValueError(f"dataset images have shape {tuple(images.shape)}, profile {profile.name!r} "
                         f"needs (N, {len(profile.bands)}, {profile.image_size}, {profile.image_size})")
    dataset_hash = str(dataset.manifest_hash)
    config = run_config(profile, options)
    batch = int(config["effective_batch_size"])
    total_steps = profile.train_steps if max_steps is None else min(int(max_steps), profile.train_steps)
    out = Path(out_dir) if out_dir is not None else run_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_FILE
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    _seed_all(profile.seed)
    prior = DiffusionPrior(profile)
    model = prior.unet.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=profile.lr)
    gen = torch.Generator().manual_seed(profile.seed)
    # On a GPU the noise eps is drawn there by its own seeded generator (saved in the
    # checkpoint); on the CPU ``gen`` draws everything, so CPU runs are bitwise resumable.
    noise_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(profile.seed + 1)
    abar = prior.schedule.alphas_cumprod.to(torch.float32).to(device)
    # A GPU holds the whole training set (12,000 quick images: 0.6 GB); the CPU reads rows.
    images_dev = torch.from_numpy(np.ascontiguousarray(images)).to(device) if device.type != "cpu" else None
    step, log, elapsed0 = 0, [], 0.0

    if ckpt_path.exists() and not retrain:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        check_checkpoint(state, config, dataset_hash, ckpt_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"]["generator"])
        if noise_gen is not gen:
            if "noise_generator" not in state["rng"]:
                raise CheckpointMismatchError(f"{ckpt_path} was written by a CPU run; a {device.type} run "
                                              "cannot resume it exactly: resume on the CPU or pass --retrain")
            noise_gen.set_state(state["rng"]["noise_generator"].cpu())
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        step, log = int(state["step"]), list(state["log"])
        elapsed0 = float(log[-1]["elapsed_s"]) if log else 0.0
        print(f"[diffdecon] resuming {profile.name} training at step {step}/{profile.train_steps} from {ckpt_path}")
    else:
        print(f"[diffdecon] training {profile.name} prior from scratch: "
              f"{count_parameters(model) / 1e6:.2f} M parameters, batch {batch}, {profile.train_steps} steps")

    snap_steps = set(fid_steps(profile))
    shift_frac = profile.shift_start_fraction if options.shift_start_fraction is None else options.shift_start_fraction
    shift_start = math.ceil(shift_frac * profile.train_steps)
    use_amp = device.type == "cuda"
    t_start = time.perf_counter()

    def save_checkpoint() -> None:
        state = {
            "config": config, "dataset_hash": dataset_hash, "step": step,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    **({"noise_generator": noise_gen.get_state()} if noise_gen is not gen else {})},
            "log": log,
        }
        save_torch_atomic(state, ckpt_path)
        cache.atomic_write_text(out / LOG_FILE, _log_csv(log))

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {profile.name}", unit="step",
               disable=not progress, mininterval=5.0)
    finished = step >= total_steps
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            idx = torch.randint(0, n_img, (batch,), generator=gen).sort().values
            if images_dev is None:
                flux = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()]))
            else:
                flux = images_dev[idx.to(device)]
            shift = profile.max_shift_px if step >= shift_start else 0
            flux = augment(flux, gen, shift, options.dihedral)
            x0, _ = normalise(flux.to(torch.float32), profile)
            t = torch.randint(0, profile.diffusion_steps, (batch,), generator=gen).to(device)
            eps = torch.randn(x0.shape, generator=noise_gen, device=device)
            lr = learning_rate_at(step, profile)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = training_step(model, opt, abar, x0, t, eps, use_amp, profile.prediction)
            step += 1
            d = ema_decay_at(step, profile.ema_decay, options.ema_warmup)
            ema_update(ema, model, d)
            loss = loss.item()  # synchronises with the device: dt is the true step time
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss} at step {step}")
            dt = time.perf_counter() - t0
            log.append({"step": step, "loss": float(loss), "lr": lr, "ema_decay": d, "shift": shift,
                        "elapsed_s": elapsed0 + time.perf_counter() - t_start,
                        "images_per_s": batch / dt})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{batch / dt:.1f}", refresh=False)
            if kill_after_step is not None and step >= kill_after_step:
                raise SimulatedKill(f"simulated kill after step {step}")
            if step in snap_steps:
                save_torch_atomic({k: v.detach().cpu() for k, v in ema.state_dict().items()},
                                  out / "snapshots" / f"ema_step{step:07d}.pt")
            out_of_time = max_minutes is not None and (time.perf_counter() - t_start) > 60 * max_minutes
            if step % profile.checkpoint_every == 0 or step == total_steps or out_of_time:
                save_checkpoint()
            if out_of_time:
                print(f"[diffdecon] stopping after {max_minutes} min at step {step}; resume with --resume")
                break
        finished = step >= profile.train_steps
    finally:
        bar.close()
    return TrainResult(out, step, finished, log, ema, model, config, dataset_hash)


# --------------------------------------------------------------------------- export


def export_checkpoint(profile: Profile | str, src_dir: str | Path | None = None,
                      dest_dir: str | Path | None = None, dataset_manifest: dict | None = None,
                      snapshot_dtype: torch.dtype = torch.float16) -> Path:
    """Write the committed form of a finished run to ``models/<profile>/``.

    Contents: ``ema_weights.pt`` (final EMA state dict, float32), ``config.json`` (run
    config, dataset hash, step, SHA-256 of every weights file, parameter count),
    ``train_log.csv``, ``dataset_manifest.json`` and ``snapshots/ema_step<step>.pt``: the
    EMA at the intermediate FID steps, stored in ``snapshot_dtype`` (float16: half the size;
    cast back to float32 when loaded) to fit the size budget.
    """
    profile = get_profile(profile)
    src = Path(src_dir) if src_dir is not None else run_dir(profile)
    dest = Path(dest_dir) if dest_dir is not None else checkpoint_dir(profile)
    state = torch.load(src / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    if state["step"] < profile.train_steps:
        raise RuntimeError(f"run in {src} is at step {state['step']} of {profile.train_steps}: "
                           "finish it (make train) before exporting")
    dest.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(state["ema"], dest / WEIGHTS_FILE)
    snaps = {}
    for s in fid_steps(profile):
        if s == state["step"]:
            continue
        f = src / "snapshots" / f"ema_step{s:07d}.pt"
        if not f.exists():
            raise FileNotFoundError(f"EMA snapshot {f} missing")
        sd = torch.load(f, map_location="cpu")
        name = f"snapshots/ema_step{s:07d}.pt"
        save_torch_atomic({k: v.to(snapshot_dtype) if v.is_floating_point() else v for k, v in sd.items()},
                          dest / name)
        snaps[str(s)] = {"file": name, "sha256": cache.sha256_file(dest / name), "dtype": str(snapshot_dtype)}
    cache.atomic_write_text(dest / LOG_FILE, _log_csv(state["log"]))
    if dataset_manifest is not None:
        cache.atomic_write_text(dest / "dataset_manifest.json", json.dumps(dataset_manifest, indent=2, sort_keys=True))
    prior = DiffusionPrior(profile)
    record = {
        "config": state["config"], "dataset_hash": state["dataset_hash"], "step": state["step"],
        "weights": WEIGHTS_FILE, "weights_sha256": cache.sha256_file(dest / WEIGHTS_FILE),
        "n_parameters": count_parameters(prior.unet), "snapshots": snaps,
        "fid_steps": fid_steps(profile),
        "train_wall_s": state["log"][-1]["elapsed_s"] if state["log"] else None,
    }
    cache.atomic_write_text(dest / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True))
    print(f"[diffdecon] exported {profile.name} checkpoint to {dest}")
    return dest


def committed_matches(profile: Profile | str, dataset_hash: str, options: TrainOptions | None = None,
                      dest_dir: str | Path | None = None) -> bool:
    """True if ``models/<profile>/`` holds a finished checkpoint of this config and dataset.

    Raises
    ------
    CheckpointMismatchError if it exists but records another config or dataset.
    """
    profile = get_profile(profile)
    dest = Path(dest_dir) if dest_dir is not None else checkpoint_dir(profile)
    cfg_file = dest / CONFIG_FILE
    if not (cfg_file.exists() and (dest / WEIGHTS_FILE).exists()):
        return False
    record = json.loads(cfg_file.read_text())
    check_checkpoint(record, run_config(profile, options or TrainOptions()), dataset_hash, dest)
    return True


def load_snapshot(profile: Profile | str, step: int, directory: str | Path | None = None) -> DiffusionPrior:
    """The prior with the EMA weights saved at ``step`` (a FID step or the final one), float32."""
    from .prior import load_prior

    profile = get_profile(profile)
    d = Path(directory) if directory is not None else checkpoint_dir(profile)
    f = d / "snapshots" / f"ema_step{step:07d}.pt"
    if step == profile.train_steps and not f.exists():
        return load_prior(profile, d)
    if not f.exists():
        raise FileNotFoundError(f"no EMA snapshot for step {step} in {d}; available steps: {fid_steps(profile)}")
    prior = DiffusionPrior(profile)
    prior.unet.load_state_dict({k: v.float() if v.is_floating_point() else v
                                for k, v in torch.load(f, map_location="cpu").items()})
    prior.eval().requires_grad_(False)
    prior.checkpoint_sha256 = cache.sha256_file(f)
    prior.checkpoint_path = f
    return prior


def training_curve_figure(log: list[dict[str, Any]], title: str = "", smooth: int = 25,
                          prediction: str = "epsilon"):
    """Loss vs step (raw and running mean over ``smooth`` steps); returns the figure.

    ``prediction`` ("epsilon" or "v", :attr:`Profile.prediction`) names the regression
    target on the loss axis (dimensionless: images are in the [-1, 1] prior space).
    """
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, loss, lw=0.5, alpha=0.4, color="0.4", label="per step")
    if len(loss) >= smooth:
        k = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(loss, k, mode="valid"), lw=1.5, color="C0",
                label=f"running mean ({smooth})")
    ax.set_xlabel("optimizer step")
    target = {"epsilon": r"$\epsilon$", "v": r"$v$"}.get(prediction)
    if target is None:
        raise ValueError(f"prediction={prediction!r}: expected one of 'epsilon', 'v'")
    ax.set_ylabel(f"{target}-MSE loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def prior_directory(profile: Profile | str, dataset=None, progress: bool = True) -> Path:
    """Folder of the trained prior a notebook uses for ``profile``.

    * ``smoke``: trains the tiny smoke model (seconds) in ``<cache>/training/smoke/`` and
      exports it to ``<cache>/models/smoke/`` (never into the committed ``models/``); a
      finished run of the same config and dataset is reused (cache hit), one made with other
      inputs (an older version of the code) is retrained, and the mismatch is printed.
    * other profiles: the committed ``models/<profile>/``, checked against the config and
      the dataset hash; prints ``cache hit``. Raises ``FileNotFoundError`` naming
      ``make train`` when it is absent (training a quick model takes about an hour).
    """
    profile = get_profile(profile)
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    if profile.name == "smoke":
        dest = paths.cache_dir() / "models" / "smoke"
        try:
            if committed_matches(profile, dataset.manifest_hash, dest_dir=dest):
                print(f"[diffdecon] cache hit: smoke prior {dest}")
                return dest
            stale = False
        except CheckpointMismatchError as err:  # made by another version of the code: never reused
            print(f"[diffdecon] cached smoke prior does not match ({err}); retraining it")
            stale = True
        try:
            result = train(profile, dataset, progress=progress, retrain=stale)
        except CheckpointMismatchError as err:
            print(f"[diffdecon] smoke training checkpoint does not match ({err}); retraining from scratch")
            result = train(profile, dataset, progress=progress, retrain=True)
        if not result.finished:
            raise RuntimeError(f"smoke training stopped at step {result.step}")
        export_checkpoint(profile, result.run_dir, dest, dataset_manifest=dataset.manifest)
        print(f"[diffdecon] recomputed: smoke prior {dest}")
        return dest
    dest = checkpoint_dir(profile)
    if not committed_matches(profile, dataset.manifest_hash):
        raise FileNotFoundError(
            f"no finished {profile.name} checkpoint in {dest}: run `make train PROFILE={profile.name}` "
            f"(python scripts/train.py --profile {profile.name})")
    print(f"[diffdecon] cache hit: committed {profile.name} prior {dest}")
    return dest
