#!/usr/bin/env python
"""Training throughput of the prior [images/s] for the smoke and quick networks.

    python bench/bench_training.py [--profiles smoke quick] [--threads 1 2] [--steps 3]
    python bench/bench_training.py --device cuda --profiles quick --threads 4 --batch-sizes 64 128 256

One full training step as the training loop runs it (augmentation, forward, epsilon-MSE
loss, backward, AdamW, EMA: ``training.training_step``) on random prior-space images of
the profile's size and batch, timed after two warm-up steps; the median over ``--steps``
steps is reported. Results go to ``results/bench_training.json`` (``_gpu.json`` on CUDA)
(atomic write) with the machine's CPU count and load average, because on a shared machine
the numbers depend on what else runs (two threads can be much slower than one when the
cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time


def bench(profile_name: str, threads: int, steps: int, device: str = "cpu", batch_size: int | None = None) -> dict:
    import torch

    from diffdecon.config import get_profile
    from diffdecon.prior import DiffusionPrior, count_parameters
    from diffdecon.training import augment, ema_update, training_step

    torch.set_num_threads(threads)
    p = get_profile(profile_name)
    dev = torch.device(device)
    batch = batch_size or p.batch_size
    prior = DiffusionPrior(p)
    model = prior.unet.to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    abar = prior.schedule.alphas_cumprod.to(torch.float32).to(dev)
    g = torch.Generator().manual_seed(0)
    shape = (batch, len(p.bands), p.image_size, p.image_size)
    times = []
    for i in range(steps + 2):  # two warm-up steps (allocator, cuDNN autotuning)
        x0 = (torch.rand(shape, generator=g) * 2 - 1).to(dev)
        t0 = time.perf_counter()
        x0 = augment(x0, g, p.max_shift_px, True)
        t = torch.randint(0, p.diffusion_steps, (batch,), generator=g).to(dev)
        eps = torch.randn(shape, device=dev)
        training_step(model, opt, abar, x0, t, eps, use_amp=dev.type == "cuda", prediction=p.prediction)
        ema_update(ema, model, 0.999)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    row = {"profile": p.name, "device": str(dev), "threads": threads, "batch_size": batch,
           "image_size": p.image_size, "n_parameters": count_parameters(model), "seconds_per_step": dt,
           "images_per_s": batch / dt, "steps_timed": steps}
    if dev.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(dev)
        row["precision"] = "bf16 autocast"
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["smoke", "quick"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU results go to bench_training_gpu.json)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[0],
                    help="batch sizes to time (0: the profile's own)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")

    import torch

    from diffdecon import paths
    from diffdecon.cache import atomic_write_text

    rows = []
    for name in args.profiles:
        for th in args.threads:
            for bs in args.batch_sizes:
                load0 = os.getloadavg()[0]
                r = bench(name, th, args.steps, args.device, bs or None)
                r["load_average_1min_before"] = load0
                rows.append(r)
                print(f"{name:6s} {args.device} threads {th}: {r['n_parameters'] / 1e6:.2f} M params, "
                      f"batch {r['batch_size']}, {r['seconds_per_step']:.3f} s/step, "
                      f"{r['images_per_s']:.1f} img/s (load {load0:.1f})", flush=True)
    out = {"benchmark": "training throughput", "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "cuda": torch.cuda.is_available(),
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows}
    path = paths.RESULTS / ("bench_training.json" if args.device == "cpu" else "bench_training_gpu.json")
    atomic_write_text(path, json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
