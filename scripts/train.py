#!/usr/bin/env python
"""Train the diffusion prior of a profile and export it to ``models/<profile>/``.

    python scripts/train.py --profile quick [--resume] [--retrain] [--max-minutes M] [--threads 2]

* If ``models/<profile>/`` already holds a finished checkpoint of the same config and
  dataset, prints ``cache hit`` and does nothing (unless ``--retrain``).
* Otherwise trains in ``<cache>/training/<profile>/``, resuming from its last checkpoint
  (a run killed even with SIGKILL loses at most ``checkpoint_every`` steps); ``--retrain``
  starts afresh. When the run is finished the EMA weights, config, log, dataset manifest
  and the EMA snapshots at the FID steps are exported to ``models/<profile>/`` with a
  training-curve figure beside them.

Candidate runs (a prior to compare with the committed one, never written over it):

    python scripts/train.py --profile quick --candidate DIR [--channels 32 64 128 160] [--layers 1]
        [--steps N | --train-seconds S] [--batch-size B] [--lr LR] [--device cuda]

train a copy of the profile with the given network and schedule
(``dataclasses.replace`` of the profile, same name, so the same cached training set) in
``<cache>/training/<profile>-candidate/`` and export it to ``DIR`` (refused if ``DIR`` is
the committed ``models/<profile>/``). With ``--train-seconds`` the number of steps is
chosen on the machine: a probe of ``--probe-steps`` steps measures the time per step, and
the run gets as many steps as fit in ``S`` seconds (x 0.92 for the snapshots, checkpoints
and a slower tail), rounded down to a multiple of 7 so that the FID snapshot steps (4/7,
5/7, 6/7 of the run, the paper's 300k/375k/450k of 525k) are whole. ``DIR/candidate.json``
records the overrides, the probe and the wall times. The final EMA weights (float32) must
stay under ``MAX_WEIGHTS_MB``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

MAX_WEIGHTS_MB = 30.0
"""Largest accepted size of a candidate's final EMA weights [MB, 1e6 bytes] (float32)."""

STEP_MULTIPLE = 7
"""Candidate step counts are multiples of this, so the FID snapshot steps are whole."""

TIME_MARGIN = 0.92
"""Share of ``--train-seconds`` given to the steps themselves (snapshots, checkpoints,
the export and run-to-run variation take the rest)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", help="smoke, quick or paper (default quick)")
    ap.add_argument("--resume", action="store_true",
                    help="resume from the run's last checkpoint (the default behaviour; kept explicit for make)")
    ap.add_argument("--retrain", action="store_true", help="ignore the committed checkpoint and any run checkpoint")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after M minutes")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="override the profile's batch (e.g. on a GPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--candidate", default=None, metavar="DIR",
                    help="train a candidate prior (overrides below) and export it to DIR")
    ap.add_argument("--channels", nargs="+", type=int, default=None, help="candidate UNet widths per level")
    ap.add_argument("--layers", type=int, default=None, help="candidate ResNet layers per UNet level")
    ap.add_argument("--steps", type=int, default=None, help="candidate optimizer steps (multiple of 7)")
    ap.add_argument("--train-seconds", type=float, default=None,
                    help="candidate: choose the steps that fit in this many seconds (probe first)")
    ap.add_argument("--probe-steps", type=int, default=30, help="steps of the timing probe (default 30)")
    ap.add_argument("--lr", type=float, default=None, help="candidate peak learning rate")
    args = ap.parse_args(argv)
    if args.resume and args.retrain:
        ap.error("--resume and --retrain exclude each other")
    if args.candidate is not None:
        if (args.steps is None) == (args.train_seconds is None):
            ap.error("--candidate needs exactly one of --steps and --train-seconds")
        if args.probe_steps < 6:
            ap.error(f"--probe-steps={args.probe_steps}: accepted >= 6 (the first third is left out)")
        return train_candidate(args)
    if any(getattr(args, k) is not None for k in ("channels", "layers", "steps", "train_seconds", "lr")):
        ap.error("--channels, --layers, --steps, --train-seconds and --lr apply to --candidate runs only")

    import torch

    torch.set_num_threads(args.threads)
    from diffdecon import plotting
    from diffdecon.config import get_profile
    from diffdecon.galaxies import build_dataset
    from diffdecon.prior import checkpoint_dir
    from diffdecon.plotting.training import training_curve_figure
    from diffdecon.training import TrainOptions, committed_matches, export_checkpoint, train

    profile = get_profile(args.profile)
    options = TrainOptions(batch_size=args.batch_size)
    print(f"[train] {time.strftime('%Y-%m-%d %H:%M:%S')} profile {profile.name}, threads {args.threads}", flush=True)
    dataset = build_dataset(profile)
    if not args.retrain and committed_matches(profile, dataset.manifest_hash, options):
        print(f"[diffdecon] cache hit: committed checkpoint {checkpoint_dir(profile)} "
              "(pass --retrain to train again)")
        return 0
    result = train(profile, dataset, options=options, retrain=args.retrain,
                   max_minutes=args.max_minutes, device=args.device)
    if not result.finished:
        print(f"[train] stopped at step {result.step}/{profile.train_steps}; run again to resume")
        return 0
    dest = export_checkpoint(profile, result.run_dir, dataset_manifest=dataset.manifest)
    fig = training_curve_figure(result.log, title=f"training loss, profile {profile.name} (synthetic galaxies)",
                                prediction=profile.prediction)
    plotting.save_figure(fig, "training_curve", directory=dest)
    print(json.dumps({"step": result.step, "final_loss": result.log[-1]["loss"] if result.log else None}))
    print(f"[train] {time.strftime('%Y-%m-%d %H:%M:%S')} done", flush=True)
    return 0


def candidate_profile(base, channels=None, layers=None, steps=None, batch=None, lr=None):
    """``base`` with the candidate's network and schedule (same name: same training set).

    Raises ValueError when the final EMA weights (float32, 4 bytes per parameter) would
    exceed :data:`MAX_WEIGHTS_MB`, or when ``steps`` is not a positive multiple of
    :data:`STEP_MULTIPLE`."""
    from diffdecon.prior import build_unet, count_parameters

    changes = {k: v for k, v in (("block_out_channels", tuple(channels) if channels else None),
                                 ("layers_per_block", layers), ("train_steps", steps),
                                 ("batch_size", batch), ("lr", lr)) if v is not None}
    if steps is not None and (steps < STEP_MULTIPLE or steps % STEP_MULTIPLE):
        raise ValueError(f"steps={steps}: accepted a positive multiple of {STEP_MULTIPLE}")
    P = dataclasses.replace(base, **changes)
    if steps is not None:
        P = dataclasses.replace(P, checkpoint_every=max(1, min(P.checkpoint_every, steps // 4)))
    n = count_parameters(build_unet(P))
    if 4 * n / 1e6 > MAX_WEIGHTS_MB:
        raise ValueError(f"candidate network {P.block_out_channels} x {P.layers_per_block} layers has {n / 1e6:.2f} M "
                         f"parameters = {4 * n / 1e6:.1f} MB of float32 EMA weights; accepted <= {MAX_WEIGHTS_MB} MB")
    return P


def steps_that_fit(seconds: float, step_s: float, lo: int = STEP_MULTIPLE) -> int:
    """Largest multiple of :data:`STEP_MULTIPLE` whose steps of ``step_s`` seconds fit in
    ``TIME_MARGIN * seconds`` (at least ``lo``)."""
    if not (seconds > 0 and step_s > 0):
        raise ValueError(f"seconds={seconds}, step_s={step_s}: accepted positive numbers [s]")
    n = math.floor(TIME_MARGIN * seconds / step_s / STEP_MULTIPLE) * STEP_MULTIPLE
    return max(lo, n)


def probe_step_seconds(P, dataset, device, steps: int, scratch: Path) -> float:
    """Median wall time of one training step [s] of profile ``P``, from a short run of
    ``training.train`` (its first third, warm-up and the data transfer, left out)."""
    from diffdecon.training import train

    long = dataclasses.replace(P, train_steps=max(P.train_steps, 100 * steps))
    res = train(long, dataset, out_dir=scratch, retrain=True, max_steps=steps, device=device, progress=False)
    rows = res.log[len(res.log) // 3:]
    return statistics.median(r["elapsed_s"] - p["elapsed_s"] for p, r in zip(res.log[len(res.log) // 3 - 1:], rows))


def train_candidate(args) -> int:
    """Train and export a candidate prior (``--candidate``); see the module docstring."""
    import torch

    torch.set_num_threads(args.threads)
    from diffdecon import paths, plotting
    from diffdecon.config import get_profile
    from diffdecon.galaxies import build_dataset
    from diffdecon.prior import checkpoint_dir
    from diffdecon.training import export_checkpoint, train, training_curve_figure

    dest = Path(args.candidate).resolve()
    base = get_profile(args.profile)
    if dest == checkpoint_dir(base).resolve():
        raise SystemExit(f"--candidate {dest} is the committed checkpoint folder; choose another folder")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    dataset = build_dataset(base)
    t_data = time.perf_counter() - t0
    scratch = paths.cache_dir() / "training" / f"{base.name}-candidate"
    P = candidate_profile(base, args.channels, args.layers, args.steps, args.batch_size, args.lr)
    probe = None
    if args.train_seconds is not None:
        step_s = probe_step_seconds(P, dataset, device, args.probe_steps, scratch / "probe")
        steps = steps_that_fit(args.train_seconds, step_s)
        probe = {"steps": args.probe_steps, "seconds_per_step": step_s, "train_seconds": args.train_seconds}
        print(f"[train] probe: {step_s:.4f} s/step -> {steps} steps in {args.train_seconds:.0f} s", flush=True)
        P = candidate_profile(P, steps=steps)
    t1 = time.perf_counter()
    result = train(P, dataset, out_dir=scratch / "run", retrain=not args.resume, max_minutes=args.max_minutes,
                   device=device)
    t_train = time.perf_counter() - t1
    if not result.finished:
        print(f"[train] candidate stopped at step {result.step}/{P.train_steps} (--max-minutes): not exported")
        return 1
    export_checkpoint(P, result.run_dir, dest, dataset_manifest=dataset.manifest)
    fig = training_curve_figure(result.log, title=f"training loss, candidate {P.block_out_channels} x "
                                f"{P.layers_per_block}, {P.train_steps} x {P.batch_size}", prediction=P.prediction)
    plotting.save_figure(fig, "training_curve", directory=dest)
    from diffdecon.cache import atomic_write_text

    record = {"base_profile": base.name, "block_out_channels": list(P.block_out_channels),
              "layers_per_block": P.layers_per_block, "train_steps": P.train_steps, "batch_size": P.batch_size,
              "lr": P.lr, "lr_schedule": P.lr_schedule, "probe": probe, "device": str(device),
              "gpu": torch.cuda.get_device_name() if str(device).startswith("cuda") else None,
              "dataset_build_s": t_data, "train_call_s": t_train, "final_loss": result.log[-1]["loss"],
              "weights_mb": (dest / "ema_weights.pt").stat().st_size / 1e6}
    atomic_write_text(dest / "candidate.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
