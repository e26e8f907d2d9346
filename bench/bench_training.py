#!/usr/bin/env python
"""Training throughput of the prior [images/s] for the smoke and quick networks.

    python bench/bench_training.py [--profiles smoke quick] [--threads 1 2] [--steps 3]

One full training step (forward, epsilon-MSE loss, backward, AdamW, EMA) on random
prior-space images of the profile's size and batch, timed after one warm-up step; the
median over ``--steps`` steps is reported. Results go to ``results/bench_training.json``
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


def bench(profile_name: str, threads: int, steps: int) -> dict:
    import torch

    from diffdecon.config import get_profile
    from diffdecon.prior import DiffusionPrior, count_parameters
    from diffdecon.training import ema_update

    torch.set_num_threads(threads)
    p = get_profile(profile_name)
    prior = DiffusionPrior(p)
    model = prior.unet
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    g = torch.Generator().manual_seed(0)
    shape = (p.batch_size, len(p.bands), p.image_size, p.image_size)
    times = []
    for i in range(steps + 1):
        x0 = torch.rand(shape, generator=g) * 2 - 1
        eps = torch.randn(shape, generator=g)
        t = torch.randint(0, p.diffusion_steps, (p.batch_size,), generator=g)
        t0 = time.perf_counter()
        x_t = prior.schedule.q_sample(x0, t, eps)
        loss = torch.mean((model(x_t, t).sample - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, 0.999)
        if i:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    return {"profile": p.name, "threads": threads, "batch_size": p.batch_size, "image_size": p.image_size,
            "n_parameters": count_parameters(model), "seconds_per_step": dt,
            "images_per_s": p.batch_size / dt, "steps_timed": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["smoke", "quick"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")

    import torch

    from diffdecon import paths
    from diffdecon.cache import atomic_write_text

    rows = []
    for name in args.profiles:
        for th in args.threads:
            load0 = os.getloadavg()[0]
            r = bench(name, th, args.steps)
            r["load_average_1min_before"] = load0
            rows.append(r)
            print(f"{name:6s} threads {th}: {r['n_parameters'] / 1e6:.2f} M params, batch {r['batch_size']}, "
                  f"{r['seconds_per_step']:.2f} s/step, {r['images_per_s']:.1f} img/s (load {load0:.1f})", flush=True)
    out = {"benchmark": "training throughput", "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "cuda": torch.cuda.is_available(),
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows}
    path = paths.RESULTS / "bench_training.json"
    atomic_write_text(path, json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
