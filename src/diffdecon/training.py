"""Training of the diffusion prior (through the package's one loop, :mod:`diffdecon.loop`) and export.

The objective is the denoising loss of :mod:`diffdecon.denoising` (Ho et al. 2020, eq. 14),
with the epsilon or v target of ``profile.prediction``.

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
* The optimiser step, EMA, checkpoints, resume and the GPU path are those of
  :func:`diffdecon.loop.run_loop`, shared with every other model of the package.
* Checkpoints (atomic): config, dataset manifest hash, step, model, optimiser, EMA, RNG
  states (loop generator, torch global, numpy global), the training log. A killed run
  resumes from the last one and repeats at most ``checkpoint_every`` steps; the resumed
  run is identical to an uninterrupted one on the same machine and thread count.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache, paths
from .config import Profile, get_profile
from .denoising import denoising_loss, training_step, v_target  # noqa: F401 (re-exported)
from .loop import (CHECKPOINT_FILE, LOG_FIELDS, LOG_FILE, CheckpointMismatchError, Loop,  # noqa: F401 (re-exported)
                   SimulatedKill, TrainResult, check_checkpoint, ema_decay_at, ema_update, log_csv, read_log,
                   run_loop, save_torch_atomic)
from .prior import CONFIG_FILE, WEIGHTS_FILE, DiffusionPrior, checkpoint_dir, count_parameters

FID_FRACTIONS: tuple[float, ...] = (300 / 525, 375 / 525, 450 / 525, 1.0)
"""Fractions of the run at which EMA snapshots are kept (the paper's FID checkpoints
300k, 375k, 450k and 525k of 525k steps, Table 1)."""

PAPER_FID_STEPS: tuple[int, ...] = (300_000, 375_000, 450_000, 525_000)
PAPER_FID: tuple[float, ...] = (317.3, 235.3, 119.4, 132.6)
"""Published FID (Inception, 1024 samples) at :data:`PAPER_FID_STEPS`."""

INFERENCE_FIELDS: tuple[str, ...] = ("sampling_steps", "cg_iters", "cg_tol", "x0_draw", "last_draw", "last_newton",
                                      "warm_start", "time_spacing", "mmps_covariance", "lookahead", "n_posterior", "n_prior",
                                      "n_mock")
"""Profile fields that are recorded in a checkpoint but not compared: they size posterior
sampling, not training, so changing them keeps the trained weights valid."""


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


# --------------------------------------------------------------------------- the prior's run


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _prior_loss(profile: Profile, images, abar: torch.Tensor, batch: int, shift_start: int, dihedral: bool):
    """The prior's step loss for :class:`diffdecon.loop.Loop`: a batch drawn with replacement,
    augmented, normalised to prior space (:func:`diffdecon.prior.normalise`), noised."""
    from .prior import normalise

    def loss(model, k, gen, noise_gen, amp):
        device = abar.device
        idx = torch.randint(0, len(images), (batch,), generator=gen).sort().values
        if isinstance(images, torch.Tensor):  # held on the device (GPU)
            flux = images[idx.to(device)]
        else:
            flux = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()]))
        flux = augment(flux, gen, profile.max_shift_px if k >= shift_start else 0, dihedral)
        x0, _ = normalise(flux.to(torch.float32), profile)
        t = torch.randint(0, profile.diffusion_steps, (batch,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=noise_gen, device=device)
        return denoising_loss(lambda x_t, t_: model(x_t, t_).sample, abar, x0, t, eps, profile.prediction, amp)

    return loss


def _check_images(images, profile: Profile) -> None:
    if tuple(images.shape[1:]) != (len(profile.bands), profile.image_size, profile.image_size):
        raise ValueError(f"dataset images have shape {tuple(images.shape)}, profile {profile.name!r} "
                         f"needs (N, {len(profile.bands)}, {profile.image_size}, {profile.image_size})")


def prior_loop(profile: Profile, dataset, options: TrainOptions, device: torch.device) -> Loop:
    """The :class:`diffdecon.loop.Loop` of the prior of ``profile`` on ``dataset`` (its
    initial weights drawn from the profile's seed)."""
    _check_images(dataset.images, profile)
    config = run_config(profile, options)
    batch = int(config["effective_batch_size"])
    _seed_all(profile.seed)
    prior = DiffusionPrior(profile)
    model = prior.unet.to(device)
    abar = prior.schedule.alphas_cumprod.to(torch.float32).to(device)
    # a GPU holds the whole training set (12,000 quick images: 0.6 GB); the CPU reads rows
    images = dataset.images
    if device.type != "cpu":
        images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    frac = profile.shift_start_fraction if options.shift_start_fraction is None else options.shift_start_fraction
    shift_start = math.ceil(frac * profile.train_steps)
    return Loop(name=f"train {profile.name}", model=model,
                loss=_prior_loss(profile, images, abar, batch, shift_start, options.dihedral),
                total_steps=profile.train_steps, lr_at=lambda k: learning_rate_at(k, profile),
                ema_decay_at=lambda step: ema_decay_at(step, profile.ema_decay, options.ema_warmup),
                config=config, dataset_hash=str(dataset.manifest_hash), seed=profile.seed, batch=batch,
                checkpoint_every=profile.checkpoint_every, snapshot_steps=frozenset(fid_steps(profile)),
                shift_at=lambda k: profile.max_shift_px if k >= shift_start else 0,
                ignore_fields=INFERENCE_FIELDS)


def train(profile: Profile | str, dataset=None, out_dir: str | Path | None = None, options: TrainOptions | None = None,
          retrain: bool = False, max_minutes: float | None = None, max_steps: int | None = None,
          device: str | torch.device | None = None, kill_after_step: int | None = None,
          progress: bool = True) -> TrainResult:
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
    device : default CUDA when available.
    kill_after_step : tests only: raise :class:`SimulatedKill` right after this step,
        without writing anything more (as a SIGKILL would).

    Raises
    ------
    CheckpointMismatchError if an existing checkpoint has another config or dataset hash.
    """
    profile = get_profile(profile)
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loop = prior_loop(profile, dataset, options or TrainOptions(), device)
    out = Path(out_dir) if out_dir is not None else run_dir(profile)
    if not ((out / CHECKPOINT_FILE).exists() and not retrain):
        print(f"[diffdecon] training {profile.name} prior from scratch: {count_parameters(loop.model) / 1e6:.2f} M "
              f"parameters, batch {loop.batch}, {profile.train_steps} steps")
    return run_loop(loop, out, retrain=retrain, max_steps=max_steps, max_minutes=max_minutes,
                    kill_after_step=kill_after_step, progress=progress)


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
    cache.atomic_write_text(dest / LOG_FILE, log_csv(state["log"]))
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
    print(f"[diffdecon] exported {profile.name} checkpoint to {paths.shown(dest)}")
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
    check_checkpoint(record, run_config(profile, options or TrainOptions()), dataset_hash, dest, INFERENCE_FIELDS)
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
    return load_prior(profile, f)  # float16 snapshots load as float32


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
                print(f"[diffdecon] cache hit: smoke prior {paths.shown(dest)}")
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
        print(f"[diffdecon] recomputed: smoke prior {paths.shown(dest)}")
        return dest
    dest = checkpoint_dir(profile)
    if not committed_matches(profile, dataset.manifest_hash):
        raise FileNotFoundError(
            f"no finished {profile.name} checkpoint in {dest}: run `make train PROFILE={profile.name}` "
            f"(python scripts/train.py --profile {profile.name})")
    print(f"[diffdecon] cache hit: committed {profile.name} prior {paths.shown(dest)}")
    return dest


def __getattr__(name: str):
    """``training_curve_figure`` lives in :mod:`diffdecon.plotting.training`; the name is kept
    here for code that imports it from this module (imported lazily: no matplotlib here)."""
    if name == "training_curve_figure":
        from .plotting.training import training_curve_figure

        return training_curve_figure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
