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
"""

from __future__ import annotations

import argparse
import json
import sys
import time


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
    args = ap.parse_args(argv)
    if args.resume and args.retrain:
        ap.error("--resume and --retrain exclude each other")

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


if __name__ == "__main__":
    sys.exit(main())
