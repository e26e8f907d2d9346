#!/usr/bin/env python
"""Posterior sampling speed and quality: the published loop against batched DPS and MMPS.

    python bench/bench_sampling.py [--profile auto|quick|smoke] [--loop-samples 2] [--n N]
                                   [--dps-steps S] [--mmps-steps S] [--cg-iters K] [--threads 2]

(defaults of --n, --dps-steps, --mmps-steps, --cg-iters: the notebooks' budget,
``diffdecon.validation.sampler_settings`` of the profile)

One fixed mock observation (the first held-out synthetic galaxy at z = 0.21677, HSC PSF and
noise; ``diffdecon.validation.mock_set``) is inverted three ways, in one run:

* ``published``: the paper's loop, one posterior sample at a time, DPS with all
  T = 1000 ancestral steps, ``paper`` convention (zeta = ``--zeta``, 1 as published, i.e. zeta_t = 1/||r|| on the
  squared norm). It is slow on a CPU, so only ``--loop-samples`` samples are drawn (a
  rate measured on few samples; said so in the output).
* ``dps_batched``: the same DPS, all ``--n`` samples in one batch, ``--dps-steps`` (<= 100) steps.
  Batches use one generator per sample, so each sample is the same whatever the batch.
* ``mmps_batched``: MMPS, ``--n`` samples in one batch, ``--mmps-steps`` (<= 100) steps,
  ``--cg-iters`` CG iterations.

Reported per method: posterior samples per second; peak memory during the method [MiB]: on
``--device cuda`` the GPU's allocator peak, on the CPU the peak resident memory (Linux ``VmHWM`` of the process, reset before each method by writing 5 to
``/proc/self/clear_refs``; where that reset is not possible, ``resource.getrusage`` maxrss,
which is the peak of the whole process so far: the field ``memory_method`` says which);
PSNR [dB] of the posterior mean and the mean per-sample PSNR against the idealized truth
(linear flux); the reduced chi^2 of A(posterior mean) and the mean reduced chi^2 of
A(sample) against y. Each is also given as a ratio to the published loop (PSNR: also the
difference in dB). A sampler that diverges (non-finite samples) is recorded as such, with
the finite samples only. The per-sample numbers are the fair comparison: the published
loop's posterior mean averages fewer samples.

Written atomically to ``results/bench_sampling.json``; a markdown table is printed.
Uses ``models/quick`` when present, else the smoke prior (trained into the cache) with a
loud note: smoke numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib(reset_ok: bool) -> tuple[float, str]:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0, "VmHWM after clear_refs reset (per method)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss (process peak so far)"


def _load(profile_arg: str):
    from diffdecon import prior as prior_mod
    from diffdecon import training
    from diffdecon.config import get_profile

    quick_dir = prior_mod.checkpoint_dir("quick")
    name = profile_arg
    if profile_arg == "auto":
        name = "quick" if (quick_dir / prior_mod.WEIGHTS_FILE).exists() else "smoke"
    note = ""
    if name == "smoke":
        note = (f"NOTE: {quick_dir} is absent or --profile smoke was asked: this is the SMOKE prior, a tiny "
                "network trained for seconds; its speed and quality numbers mean nothing for the paper.")
        print("!" * 80 + "\n" + note + "\n" + "!" * 80, flush=True)
    P = get_profile(name)
    directory = quick_dir if name == "quick" else training.prior_directory(P)
    return P, prior_mod.load_prior(P, directory), note


def _run(label: str, fn, n_expected: int, problem, reset_ok: bool, device=None) -> tuple[dict, "torch.Tensor"]:
    """Time ``fn`` (returns samples and their validity mask) and score its samples.

    ``problem`` is the CPU copy of the inverse problem: scores are computed on the CPU in
    float64 whatever device sampled. On CUDA the peak memory is the GPU's
    (``torch.cuda.max_memory_allocated``, reset before each method)."""
    import torch

    from diffdecon import metrics

    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak() if reset_ok else None
    t0 = time.perf_counter()
    x, valid = fn()
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated (GPU, per method)"
    else:
        peak, how = _peak_mib(reset_ok)
    x, valid = x.detach().cpu(), valid.cpu()
    x = x[valid]
    rec = {"method": label, "n_samples": n_expected, "n_finite": int(valid.sum()), "wall_s": wall,
           "samples_per_s": n_expected / wall, "peak_memory_mib": peak, "memory_method": how,
           "diverged": bool(valid.sum() < n_expected)}
    if len(x) == 0:
        rec.update(psnr_mean=float("nan"), psnr_per_sample=float("nan"), chi2_mean=float("nan"),
                   chi2_per_sample=float("nan"))
        return rec, x
    with torch.no_grad():
        flux = problem.to_flux(x).double()
        finite = torch.isfinite(flux.flatten(1)).all(1)
        flux = flux[finite]
        rec["n_finite"] = int(finite.sum())
        if len(flux) == 0:
            rec.update(psnr_mean=float("nan"), psnr_per_sample=float("nan"), chi2_mean=float("nan"),
                       chi2_per_sample=float("nan"), diverged=True)
            return rec, x
        op = problem.operator
        mean = flux.mean(0)
        A_mean = op.A(mean[None])[0]  # float64 input: the operator's float64 masters
        A_s = op.A(flux)
    truth, y, s = problem.truth.double(), problem.y.double(), problem.sigma.double()
    rec["psnr_mean"] = metrics.psnr(truth, mean)
    rec["psnr_per_sample"] = float(np.mean([metrics.psnr(truth, f) for f in flux]))
    rec["chi2_mean"] = metrics.reduced_chi2(y, A_mean.double(), s)
    rec["chi2_per_sample"] = float(np.mean([metrics.reduced_chi2(y, a.double(), s) for a in A_s]))
    return rec, x


def speed_target(records: list[dict], at_least: float = 30.0) -> dict:
    """Is some batched method (``records[1:]``) ``at_least`` times faster than the published
    loop (``records[0]``) with an equal or better per-sample PSNR and an equal or lower
    per-sample chi^2? ``best_batched``: the fastest method that qualifies, else the fastest."""
    base = records[0]

    def ok(r):
        return bool(r["speedup"] >= at_least and r["psnr_per_sample"] >= base["psnr_per_sample"]
                    and r["chi2_per_sample"] <= base["chi2_per_sample"])

    fastest = lambda rs: max(rs, key=lambda r: r["speedup"] if np.isfinite(r["speedup"]) else -1)  # noqa: E731
    qualifying = [r for r in records[1:] if ok(r)]
    best = fastest(qualifying or records[1:])
    return {"speedup_at_least": at_least, "best_batched": best["method"], "speedup": best["speedup"],
            "met": bool(qualifying), "qualifying": [r["method"] for r in qualifying]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto", choices=["auto", "quick", "smoke"])
    parser.add_argument("--loop-samples", type=int, default=2, help="samples of the published loop (slow)")
    parser.add_argument("--n", type=int, default=None,
                        help="samples of the batched samplers, one batch (default: validation.sampler_settings)")
    parser.add_argument("--dps-steps", type=int, default=None, help="default: validation.sampler_settings, <= 100")
    parser.add_argument("--mmps-steps", type=int, default=None, help="default: validation.sampler_settings, <= 100")
    parser.add_argument("--cg-iters", type=int, default=None, help="default: validation.sampler_settings")
    parser.add_argument("--zeta", type=float, default=1.0,
                        help="DPS guidance scale, paper convention, for the published loop and batched DPS "
                             "(default 1.0 as published; it diverges on the quick model in flux units, see "
                             "validation.DPS_ZETA_LADDER)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (default cpu; cuda results go to results/bench_sampling_gpu.json)")
    parser.add_argument("--out", default=None, help="default results/bench_sampling.json (_gpu.json on cuda)")
    args = parser.parse_args(argv)

    import torch

    from diffdecon import mock, paths, samplers, validation
    from diffdecon.problem import from_mock
    from diffdecon.cache import atomic_write_text

    torch.set_num_threads(args.threads)
    P, prior, note = _load(args.profile)
    st = validation.sampler_settings(P)  # the notebooks' budget
    args.n = st.n if args.n is None else args.n
    args.dps_steps = min(st.dps_steps, 100) if args.dps_steps is None else args.dps_steps
    args.mmps_steps = st.mmps_steps if args.mmps_steps is None else args.mmps_steps
    args.cg_iters = st.cg_iters if args.cg_iters is None else args.cg_iters
    for k in ("loop_samples", "n", "dps_steps", "mmps_steps", "cg_iters", "threads"):
        if getattr(args, k) < 1:
            parser.error(f"--{k.replace('_', '-')}={getattr(args, k)}: expected a positive int")
    if args.dps_steps > 100 or args.mmps_steps > 100:
        parser.error("the batched samplers are benchmarked at <= 100 steps")
    T = int(prior.schedule.alphas_cumprod.numel())
    mk = validation.mock_set(P, mock.hsc_reference(), n=1, redshifts=(0.21677,))[0]
    problem = from_mock(mk, prior)
    dev = torch.device(args.device)
    if dev.type != "cpu":
        import dataclasses

        prior = prior.to(dev)
        run_problem = dataclasses.replace(problem, y=problem.y.to(dev), sigma=problem.sigma.to(dev),
                                          operator=copy.deepcopy(problem.operator).to(dev))
    else:
        run_problem = problem
    y, fwd, sig = run_problem.y, run_problem.forward, run_problem.sigma

    def gen(seed):  # on the sampling device: no host round trip per step
        return torch.Generator(dev).manual_seed(seed)

    reset_ok = _reset_peak()
    print(f"profile {P.name}; mock z = {mk.z}, observation {tuple(y.shape)}; {args.threads} threads; "
          f"published loop: {args.loop_samples} samples x {T} DPS steps (few samples: the loop is slow)", flush=True)

    def published():
        xs, valid = [], []
        for i in range(args.loop_samples):
            x, v = samplers.dps(prior, y, fwd, sig, gen(10 + i), 1, steps=T, zeta=args.zeta,
                                convention="paper", on_divergence="mask", progress=False)
            xs.append(x)
            valid.append(v)
        return torch.cat(xs), torch.cat(valid)

    def dps_batched():
        gens = [gen(100 + i) for i in range(args.n)]
        return samplers.dps(prior, y, fwd, sig, gens, args.n, steps=args.dps_steps, zeta=args.zeta, convention="paper",
                            on_divergence="mask", progress=False)

    def mmps_batched():
        gens = [gen(200 + i) for i in range(args.n)]
        return samplers.mmps(prior, y, fwd, sig, gens, args.n, steps=args.mmps_steps, cg_iters=args.cg_iters,
                             on_divergence="mask", progress=False)

    runs = [("published (DPS, 1 at a time, %d steps)" % T, published, args.loop_samples),
            (f"DPS batched ({args.n}, {args.dps_steps} steps)", dps_batched, args.n),
            (f"MMPS batched ({args.n}, {args.mmps_steps} steps, {args.cg_iters} CG)", mmps_batched, args.n)]
    records = []
    for label, fn, n in runs:
        print(f"running {label} ...", flush=True)
        rec, _ = _run(label, fn, n, problem, reset_ok, dev)
        records.append(rec)
        print(f"  {rec['wall_s']:.1f} s, {rec['samples_per_s']:.4f} samples/s, finite {rec['n_finite']}/{n}", flush=True)
    base = records[0]

    def ratio(a, b):
        return float(a / b) if np.isfinite(a) and np.isfinite(b) and b != 0 else float("nan")

    for rec in records:
        rec["speedup"] = ratio(rec["samples_per_s"], base["samples_per_s"])
        rec["memory_ratio"] = ratio(rec["peak_memory_mib"], base["peak_memory_mib"])
        for k in ("psnr_mean", "psnr_per_sample", "chi2_mean", "chi2_per_sample"):
            rec[f"{k}_ratio"] = ratio(rec[k], base[k])
        rec["psnr_per_sample_diff_db"] = float(rec["psnr_per_sample"] - base["psnr_per_sample"])
    target = speed_target(records)
    best = next(r for r in records if r["method"] == target["best_batched"])
    out = {"profile": P.name, "note": note, "checkpoint": str(getattr(prior, "checkpoint_path", "")),
           "checkpoint_sha256": getattr(prior, "checkpoint_sha256", None), "mock_z": mk.z,
           "mock_source": mk.reference.source, "threads": args.threads, "cpu_count": os.cpu_count(),
           "load_average": list(os.getloadavg()), "machine": platform.platform(), "torch": torch.__version__,
           "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "published_loop_samples": args.loop_samples, "dps_zeta": args.zeta,
           "published_loop_note": f"rate measured on {args.loop_samples} sample(s) only: the loop is slow on a CPU",
           "target": target, "methods": records}
    default_name = "bench_sampling.json" if dev.type == "cpu" else "bench_sampling_gpu.json"
    path = Path(args.out) if args.out else paths.RESULTS / default_name
    atomic_write_text(path, json.dumps(out, indent=2, sort_keys=False) + "\n")

    cols = ["method", "samples/s", "speed-up", "peak memory [MiB]", "mem ratio", "PSNR mean", "PSNR/sample",
            "dPSNR/sample [dB]", "chi2 mean", "chi2/sample", "chi2/sample ratio", "finite"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in records:
        print(f"| {r['method']} | {r['samples_per_s']:.4g} | {r['speedup']:.1f}x | {r['peak_memory_mib']:.0f} | "
              f"{r['memory_ratio']:.2f} | {r['psnr_mean']:.2f} | {r['psnr_per_sample']:.2f} | "
              f"{r['psnr_per_sample_diff_db']:+.2f} | {r['chi2_mean']:.3g} | {r['chi2_per_sample']:.3g} | "
              f"{r['chi2_per_sample_ratio']:.3g} | {r['n_finite']}/{r['n_samples']} |")
    print(f"\nmemory: {records[0]['memory_method']}. Target >= 30x samples/s at equal or better PSNR and chi2: "
          f"{'met' if target['met'] else 'NOT met'} (best: {best['method']}, {best['speedup']:.1f}x).")
    if note:
        print(note)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
