#!/usr/bin/env python
"""Posterior sampling at paper scale: time per step, samples/s, memory, fraction of peak.

    python bench/bench_paper_sampler.py --device cuda [--budget-s 180] [--peak-tflops 989]
        [--batch-sizes 1 8 32 64 128 256] [--precisions bf16 fp32] [--compile] [--out PATH]
    python bench/bench_paper_sampler.py --profile smoke --device cpu     (seconds; numbers mean nothing)

The network is the profile's UNet (``paper``: 354 M parameters, 256 px) with seeded random
weights: no paper-scale checkpoint exists, and the cost of a step does not depend on the
weights. The samples are therefore not scored; only speed, memory and arithmetic are.
The problem: one synthetic galaxy (row 0 of the training catalogue) at z = 0.21677 seen
through Gaussian PSFs with the fallback HSC noise (``mock.FALLBACK_*``), the operator of
the notebooks (``physics.ForwardModel``). Sampler arguments come from
``validation.sampler_settings(profile)`` (paper: MMPS 100 steps with 5 CG iterations, DPS
1000 steps, 256 samples) through ``bench/common.sampler_kwargs``; MMPS gets them over the
problem's profile defaults (``InverseProblem.mmps_kwargs``: preconditioner, closed-form
linearisation, time spacing, warm start, trust region), as the notebooks run it.

Measured, per (sampler, precision, batch size[, torch.compile]): seconds per sampler step
(a warm-up step, then ``--timed-steps`` steps timed with the device synchronised),
posterior samples per second at the settings' step count, peak memory (GPU: the
allocator's peak, reset per configuration) and the fraction of the GPU's bf16 peak:

    fraction = flops_per_step(batch) / seconds_per_step / (peak_tflops * 1e12),

with ``flops_per_step`` counted by ``torch.utils.flop_counter`` on one real step at batch 1
(convolutions, matmuls and attention; forward and backward) times the batch (every counted
operation is per sample). The extrapolation: the time for ``n`` (256) samples at the
settings' steps, ``ceil(n / b) * steps * seconds_per_step(b)`` at the best measured batch,
and the floor at 100 % of peak. ``--budget-s`` bounds the whole run: configurations
that would not fit in what is left are skipped and listed. The JSON is rewritten after
every configuration, so a run killed at its limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count_flops, describe, jsonable_kwargs, peak_memory, sampler_kwargs, timed, wrapped_prior  # noqa: E402

MOCK_Z = 0.21677
"""Redshift of the benchmark observation (the paper's test1)."""

MIN_SWEEP_S = 90.0
"""Least time [s] kept for the eager configurations before a compiled one is attempted."""


def galaxy_image(profile):
    """The benchmark's idealized galaxy (C, H, W) [HSC flux per model px]: row 0 of the
    synthetic catalogue, or, where GalSim does not import, a round exponential disk of
    3 kpc half-light radius and i = 19 with the same total (the cost of a sampler step does
    not depend on the image; the JSON records which)."""
    import numpy as np

    try:
        from diffdecon import galaxies

        return galaxies.draw_galaxy(galaxies.catalog_for(1, profile.seed)[0], profile), "synthetic catalogue row 0"
    except ImportError as err:
        r = (np.arange(profile.image_size) - (profile.image_size - 1) / 2) * profile.pixel_scale_kpc
        rr = np.hypot(r[:, None], r[None, :])
        disk = np.exp(-1.678 * rr / 3.0)  # exponential profile: r_e = 1.678 scale lengths
        total = 10 ** ((27 - 19.0) / 2.5)  # HSC coadd units: mag = 27 - 2.5 log10 flux
        img = np.stack([disk] * len(profile.bands)) * total / (len(profile.bands) * disk.sum())
        return img, f"exponential disk (GalSim unavailable: {err})"


def make_problem(profile, device):
    """((y, forward, sigma), problem, galaxy source) of the benchmark observation on ``device``
    (float32): ``problem`` the :class:`diffdecon.problem.InverseProblem` with its tensors and
    operator on ``device`` (its profile defaults of MMPS, :meth:`InverseProblem.mmps_kwargs`,
    refer to them), ``forward`` its prior space -> observation flux map; y in HSC coadd flux
    per observation pixel."""
    import dataclasses

    import numpy as np
    import torch

    from diffdecon import mock, physics
    from diffdecon.problem import from_mock
    from diffdecon.config import BANDS

    flux, source = galaxy_image(profile)
    print(f"benchmark galaxy: {source}")
    ref = mock.HSCReference(
        psfs=np.stack([physics.gaussian_psf(mock.FALLBACK_FWHM_ARCSEC[b], mock.PSF_SIZE) for b in BANDS]),
        sigma=np.full(len(BANDS), mock.FALLBACK_SIGMA), source="Gaussian PSFs, sigma of mock.FALLBACK_*",
        real=False)
    mk = mock.make_mock(flux, MOCK_Z, profile, ref, torch.Generator().manual_seed(profile.seed))
    problem = from_mock(mk, profile)
    problem = dataclasses.replace(problem, y=problem.y.to(device), sigma=problem.sigma.to(device),
                                  operator=problem.operator.to(device))
    return (problem.y, problem.forward, problem.sigma), problem, source


def run_sampler(prior, problem, method: str, kwargs: dict, batch: int, steps: int, seed: int = 0):
    """``steps`` steps of ``samplers.<method>`` on a batch; returns the samples (masked on divergence)."""
    import torch

    from diffdecon import samplers

    y, forward, sigma = problem
    gen = torch.Generator(y.device).manual_seed(seed)
    kw = dict(kwargs, steps=steps)
    return getattr(samplers, method)(prior, y, forward, sigma, gen, batch, on_divergence="mask",
                                     progress=False, **kw)


def step_flops(prior, problem, method: str, kwargs: dict) -> int:
    """FLOPs of one sampler step at batch 1 (eager, as the network is built)."""
    return count_flops(lambda: run_sampler(prior, problem, method, kwargs, 1, 1))


def forward_flops(prior, device) -> int:
    """FLOPs of one network forward pass of one image."""
    import torch

    p = prior.profile
    x = torch.zeros(1, len(p.bands), p.image_size, p.image_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        return count_flops(lambda: prior.net(x, t))


def bench_config(prior, problem, method, kwargs, batch, timed_steps, flops_b1, peak_tflops, n_steps):
    """One configuration: warm-up step, then ``timed_steps`` timed steps. Returns the row."""
    device = problem[0].device
    peak_memory(device, reset=True)
    _, warm = timed(lambda: run_sampler(prior, problem, method, kwargs, batch, 1), device)
    (x, valid), wall = timed(lambda: run_sampler(prior, problem, method, kwargs, batch, timed_steps), device)
    mem, how = peak_memory(device)
    dt = wall / timed_steps
    flops = flops_b1 * batch
    return {"method": method, "batch": batch, "seconds_per_step": dt, "warmup_s": warm,
            "steps_timed": timed_steps, "samples_per_s": batch / (dt * n_steps), "steps_per_sample": n_steps,
            "flops_per_step": flops, "tflops_per_s": flops / dt / 1e12,
            "fraction_of_peak": flops / dt / (peak_tflops * 1e12),
            "peak_memory_gib": mem, "memory_method": how, "n_finite": int(valid.sum())}


def bf16_agreement(prior_fp32, prior_bf16, problem, kwargs, seed: int = 0) -> dict:
    """Relative difference of one MMPS posterior denoiser (``samplers.mmps_x0``) in bf16
    autocast against float32, at three noise levels, from the same ``x_t`` (batch 1)."""
    import torch

    from diffdecon import samplers

    y, forward, sigma = problem
    p = prior_fp32.profile
    T = prior_fp32.T
    g = torch.Generator(y.device).manual_seed(seed)
    x = torch.randn(1, len(p.bands), p.image_size, p.image_size, generator=g, device=y.device)
    cg = {k: v for k, v in kwargs.items() if k in ("cg_iters",)}
    out = {}
    for t in (T - 1, T // 2, T // 20):
        a, _ = samplers.mmps_x0(prior_fp32, x, t, y, forward, sigma[None, :, None, None], **cg)
        b, _ = samplers.mmps_x0(prior_bf16, x, t, y, forward, sigma[None, :, None, None], **cg)
        out[str(t)] = float((a - b).norm() / a.norm().clamp_min(1e-30))
    return out


def extrapolate(rows: list[dict], n: int, method: str, steps: int, flops_b1: int, peak_tflops: float) -> dict:
    """Time for ``n`` samples of ``steps`` steps at the best measured batch, and the floor
    at 100 % of peak (``n * steps * flops_per_step(1) / peak``)."""
    cand = [r for r in rows if r["method"] == method and r.get("seconds_per_step")]
    floor_min = n * steps * flops_b1 / (peak_tflops * 1e12) / 60
    if not cand:
        return {"method": method, "n_samples": n, "steps": steps, "minutes": None, "floor_minutes_at_peak": floor_min}
    best = min(cand, key=lambda r: math.ceil(n / r["batch"]) * r["seconds_per_step"])
    minutes = math.ceil(n / best["batch"]) * steps * best["seconds_per_step"] / 60
    return {"method": method, "n_samples": n, "steps": steps, "minutes": minutes, "best_batch": best["batch"],
            "best_precision": best["precision"], "best_compiled": best["compiled"],
            "floor_minutes_at_peak": floor_min}


def _estimate(done: dict, key, batch: int, timed_steps: int) -> float | None:
    """Seconds a configuration will take, scaled from the last one measured with the same
    (method, precision, compiled): linear in the batch, warm-up plus timed steps."""
    last = done.get(key)
    if last is None:
        return None
    return last["seconds_per_step"] * max(1.0, batch / last["batch"]) * (timed_steps + 1) + last["warmup_extra_s"]


def sweep(priors: dict, problem, configs, args, kwargs: dict, flops: dict, n_steps: dict, deadline: float, write):
    """Run ``configs`` ((method, precision, compiled, batch), in priority order) until the
    deadline; a configuration whose estimate does not fit, or that follows an out-of-memory
    error of a smaller batch, is skipped with the reason. ``write(rows, skipped)`` after each."""
    import torch

    rows, skipped, done, oom = [], [], {}, set()
    for method, precision, compiled, batch in configs:
        key = (method, precision, compiled)
        left = deadline - time.perf_counter()
        est = _estimate(done, key, batch, args.timed_steps)
        label = {"method": method, "precision": precision, "compiled": compiled, "batch": batch}
        if key in oom or left <= 0 or (est is not None and est > left):
            why = "out of memory at a smaller batch" if key in oom else f"estimated {est or 0:.0f} s > {left:.0f} s left"
            skipped.append(dict(label, reason=why))
            continue
        row, why = None, ""
        try:
            row = bench_config(priors[(precision, compiled)], problem, method, kwargs[method], batch,
                               args.timed_steps, flops[method], args.peak_tflops, n_steps[method])
        except torch.OutOfMemoryError as err:
            why = f"out of memory: {str(err).splitlines()[0][:160]}"
        if row is None:  # outside the except block: the traceback no longer holds the tensors
            oom.add(key)
            skipped.append(dict(label, reason=why))
            gc.collect()
            torch.cuda.empty_cache()
            continue
        row.update(label)
        row["warmup_extra_s"] = max(0.0, row["warmup_s"] - row["seconds_per_step"])
        done[key] = row
        rows.append(row)
        print(f"  {method:4s} {precision} {'compiled' if compiled else 'eager':8s} batch {batch:4d}: "
              f"{row['seconds_per_step']:.4g} s/step, {row['samples_per_s']:.4g} samples/s, "
              f"{100 * row['fraction_of_peak']:.1f} % of peak, {row['peak_memory_gib'] or 0:.2f} GiB", flush=True)
        write(rows, skipped)
    return rows, skipped


def _configs(args, rows=None) -> list[tuple]:
    """The planned configurations, in priority order: bf16 (or the first precision) batch
    sweep of each method, then the other precisions at ``--other-batch-sizes``."""
    first, others = args.precisions[0], args.precisions[1:]
    out = [(m, first, False, b) for m in args.methods for b in args.batch_sizes]
    out += [(m, p, False, b) for p in others for m in args.methods for b in args.other_batch_sizes]
    return out


def _parse(argv):
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper", choices=["paper", "quick", "smoke"])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--methods", nargs="+", default=["mmps", "dps"], choices=["mmps", "dps"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                    help="batch sweep of the first precision (default GPU 1 8 32 64 128 256, CPU 1 2)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=["bf16", "fp32"],
                    help="default GPU: bf16 fp32; CPU: fp32")
    ap.add_argument("--other-batch-sizes", nargs="+", type=int, default=[1, 16],
                    help="batch sizes of the precisions after the first (default 1 16)")
    ap.add_argument("--timed-steps", type=int, default=3, help="sampler steps timed per configuration")
    ap.add_argument("--budget-s", type=float, default=180.0, help="wall-time bound of the whole benchmark [s]")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak of the GPU [TFLOP/s] (H100 SXM and H200: about 989 by the datasheet)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile at the best MMPS batch")
    ap.add_argument("--compile-reserve-s", type=float, default=150.0,
                    help="time kept for the compiled configuration (compilation included) [s]")
    ap.add_argument("--n-samples", type=int, default=None, help="samples of the extrapolation (default: settings)")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench_sampling_gpu.json on CUDA, "
                                                "build/bench_paper_sampler_<profile>_cpu.json on the CPU)")
    args = ap.parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    args.batch_sizes = args.batch_sizes or ([1, 8, 32, 64, 128, 256] if on_gpu else [1, 2])
    args.precisions = args.precisions or (["bf16", "fp32"] if on_gpu else ["fp32"])
    for name in ("timed_steps", "budget_s", "peak_tflops", "n_samples"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            ap.error(f"--{name.replace('_', '-')}={v}: expected a positive number")
    bad = [b for b in args.batch_sizes + args.other_batch_sizes if b < 1]
    if bad:
        ap.error(f"batch sizes {bad}: expected positive ints")
    return args


def _setup(args):
    """Profile, float32 prior (seeded random weights) on the device, problem, settings."""
    import torch

    from diffdecon import validation
    from diffdecon.config import get_profile
    from diffdecon.prior import DiffusionPrior

    P = get_profile(args.profile)
    torch.manual_seed(P.seed)  # the network's initial weights
    prior = DiffusionPrior(P).to(args.device).eval().requires_grad_(False)
    problem, inverse_problem, args.galaxy = make_problem(P, args.device)
    st = validation.sampler_settings(P)
    kwargs = {m: sampler_kwargs(st, m) for m in args.methods}
    if kwargs.get("mmps", {}).get("covariance") in ("empirical", "annuli"):
        # The cost of a step does not depend on the table's values: a small table, measured
        # once outside the timings on 4 sky-like images (the untrained network has no
        # training set to measure on; denoiser_variance.of_prior would build it).
        from diffdecon.denoiser_variance import annuli_px, measure
        from diffdecon.samplers import timesteps

        g = torch.Generator().manual_seed(P.seed)
        x0 = (-1.0 + 0.1 * torch.randn(4, len(P.bands), P.image_size, P.image_size, generator=g)).to(args.device)
        annuli = annuli_px(P.pixel_scale_kpc) if kwargs["mmps"]["covariance"] == "annuli" else None
        kwargs["mmps"]["variance"] = measure(prior, x0, timesteps(P.diffusion_steps, 8, "quadratic"), g,
                                             progress=False, annuli=annuli)
    if "mmps" in kwargs:  # what the notebooks run: the settings over the profile's defaults
        kwargs["mmps"] = inverse_problem.mmps_kwargs(kwargs["mmps"])
    return P, prior, problem, st, kwargs


def _compile_row(args, prior, problem, rows, kwargs, flops, n_steps, deadline, write_rows):
    """The compiled configuration at the best eager MMPS batch of the first precision, if the
    reserve fits; returns (row or None, reason)."""
    import torch

    eager = [r for r in rows if r["method"] == "mmps" and r["precision"] == args.precisions[0]]
    if not eager:
        return None, "no eager MMPS row to compare with"
    left = deadline - time.perf_counter()
    if left < args.compile_reserve_s:
        return None, f"{left:.0f} s left < --compile-reserve-s {args.compile_reserve_s:.0f}"
    best = max(eager, key=lambda r: r["samples_per_s"])
    cprior = wrapped_prior(prior, torch.device(args.device).type, args.precisions[0] == "bf16", True)
    t0 = time.perf_counter()
    row = bench_config(cprior, problem, "mmps", kwargs["mmps"], best["batch"], args.timed_steps,
                       flops["mmps"], args.peak_tflops, n_steps["mmps"])
    row.update(method="mmps", precision=args.precisions[0], compiled=True, batch=best["batch"],
               compile_and_warmup_s=row["warmup_s"], speedup_vs_eager=best["seconds_per_step"] / row["seconds_per_step"])
    saved = (best["seconds_per_step"] - row["seconds_per_step"]) * n_steps["mmps"] * math.ceil(
        (args.n_samples or 1) / best["batch"])
    row["pays"] = bool(saved > row["warmup_s"])
    row["pays_note"] = (f"saves {saved:.0f} s over the extrapolated run against {row['warmup_s']:.0f} s of "
                        "compilation and warm-up")
    print(f"  mmps compiled batch {best['batch']}: {row['seconds_per_step']:.4g} s/step "
          f"({row['speedup_vs_eager']:.2f}x eager), compile + warm-up {time.perf_counter() - t0:.0f} s", flush=True)
    return row, ""


def main(argv=None) -> int:
    args = _parse(argv)
    import torch

    from diffdecon import paths
    from diffdecon.cache import atomic_write_text
    from diffdecon.prior import count_parameters

    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    on_gpu = torch.device(args.device).type == "cuda"
    P, prior, problem, st, kwargs = _setup(args)
    args.n_samples = args.n_samples or st.n
    n_steps = {m: kwargs[m]["steps"] for m in args.methods}
    print(f"profile {P.name}: {count_parameters(prior.unet) / 1e6:.1f} M parameters, {P.image_size} px, "
          f"device {args.device}; settings {st.n} samples, " + "; ".join(
              f"{m} {describe(jsonable_kwargs(kwargs[m]))}" for m in args.methods), flush=True)
    flops_fwd = forward_flops(prior, args.device)
    flops = {m: step_flops(prior, problem, m, kwargs[m]) for m in args.methods}
    priors = {(p, False): wrapped_prior(prior, torch.device(args.device).type, p == "bf16", False)
              for p in args.precisions}
    agreement = (bf16_agreement(priors[("fp32", False)], priors[("bf16", False)], problem, kwargs.get("mmps", {}))
                 if {"bf16", "fp32"} <= set(args.precisions) and "mmps" in args.methods else None)
    default_out = (paths.RESULTS / "bench_sampling_gpu.json" if on_gpu
                   else paths.BUILD / f"bench_paper_sampler_{P.name}_cpu.json")
    out_path = Path(args.out) if args.out else default_out
    record = {
        "benchmark": "posterior sampling at paper scale", "profile": P.name, "image_size": P.image_size,
        "n_parameters": count_parameters(prior.unet),
        "weights": "seeded random initialisation: timings only, samples not scored",
        "device": args.device, "gpu": torch.cuda.get_device_name(args.device) if on_gpu else None,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "peak_tflops_bf16": args.peak_tflops, "budget_s": args.budget_s, "timed_steps": args.timed_steps,
        "settings": {"n": st.n, "note": st.note,  # the variance table is an object, named only
                     **{m: jsonable_kwargs(kwargs[m]) for m in args.methods}},
        "flops_per_forward": flops_fwd, "flops_per_step_batch1": flops,
        "forward_equivalents_per_step": {m: flops[m] / flops_fwd for m in args.methods},
        "flop_counter": "formulas of torch.utils.flop_counter.flop_registry, float32 eager, batch 1, one step",
        "bf16_vs_fp32_mmps_x0_rel_diff": agreement, "mock_z": MOCK_Z, "galaxy": args.galaxy,
    }

    def write(rows, skipped, extra=None):
        record.update(rows=rows, skipped=skipped, wall_s=time.perf_counter() - t_start, **(extra or {}))
        atomic_write_text(out_path, json.dumps(record, indent=2) + "\n")

    compile_why = ""
    if args.compile and args.budget_s < args.compile_reserve_s + MIN_SWEEP_S:
        compile_why = (f"--budget-s {args.budget_s:.0f} < --compile-reserve-s {args.compile_reserve_s:.0f} + "
                       f"{MIN_SWEEP_S:.0f} s for the eager sweep, which comes first")
        args.compile = False
        record["compile"] = {"skipped": compile_why}
    rows, skipped = sweep(priors, problem, _configs(args), args, kwargs, flops, n_steps,
                          deadline - (args.compile_reserve_s if args.compile else 0), write)
    if args.compile:
        try:
            crow, why = _compile_row(args, prior, problem, rows, kwargs, flops, n_steps, deadline, write)
        except Exception as err:  # noqa: BLE001 - a failed compilation is a result to record, not a crash
            crow, why = None, f"torch.compile failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows = rows + [crow] if crow else rows
        record["compile"] = crow or {"skipped": why}
    extra = {"extrapolation": _extrapolation(rows, args, kwargs, flops, n_steps)}
    write(rows, skipped, extra)
    _print_summary(record, out_path)
    return 0


GOAL_MINUTES = 5.0
"""Performance goal: the settings' samples (paper: 256) in at most this many minutes."""


def _extrapolation(rows, args, kwargs, flops, n_steps) -> dict:
    """Extrapolated times per sampler, the published loop (DPS one sample at a time, float32
    preferred) and whether the goal is met."""
    n = args.n_samples
    out = {m: extrapolate(rows, n, m, n_steps[m], flops[m], args.peak_tflops) for m in args.methods}
    if "dps" in args.methods:
        ones = [r for r in rows if r["method"] == "dps" and r["batch"] == 1 and not r["compiled"]]
        ones.sort(key=lambda r: r["precision"] != "fp32")
        if ones:
            r = ones[0]
            out["published_loop"] = {"method": "dps", "batch": 1, "precision": r["precision"], "n_samples": n,
                                     "steps": n_steps["dps"],
                                     "minutes": n * n_steps["dps"] * r["seconds_per_step"] / 60}
    done = {m: v for m, v in out.items() if m in args.methods and v.get("minutes") is not None}
    out["goal"] = {"minutes": GOAL_MINUTES, "n_samples": n,
                   "met_by": sorted(m for m, v in done.items() if v["minutes"] <= GOAL_MINUTES)}
    return out


def _print_summary(record: dict, out_path: Path) -> None:
    ex = record.get("extrapolation", {})
    print(f"\nFLOPs per network forward (one image): {record['flops_per_forward'] / 1e12:.4g} TFLOP; per step at "
          "batch 1: " + ", ".join(f"{m} {v / 1e12:.4g} TFLOP ({record['forward_equivalents_per_step'][m]:.1f} "
                                  "forward-equivalents)" for m, v in record["flops_per_step_batch1"].items()))
    for m in ("mmps", "dps"):
        e = ex.get(m)
        if not e:
            continue
        if e.get("minutes") is None:
            print(f"{e['n_samples']} samples, {m.upper()} {e['steps']} steps: not measured")
            continue
        print(f"{e['n_samples']} posterior samples, {m.upper()} {e['steps']} steps: {e['minutes']:.2f} min "
              f"(batch {e['best_batch']}, {e['best_precision']}{', compiled' if e['best_compiled'] else ''}); "
              f"floor at 100 % of {record['peak_tflops_bf16']:g} TFLOP/s: {e['floor_minutes_at_peak']:.2f} min")
    pub = ex.get("published_loop")
    if pub:
        print(f"published loop (DPS one sample at a time, {pub['steps']} steps, {pub['precision']}): "
              f"{pub['minutes'] / 60:.2f} h for {pub['n_samples']} samples")
    if "goal" in ex:
        g = ex["goal"]
        print(f"goal ({g['n_samples']} samples in <= {g['minutes']:g} min): "
              f"{'met by ' + ', '.join(g['met_by']) if g['met_by'] else 'NOT met'}")
    for s in record.get("skipped", []):
        print(f"skipped: {s['method']} {s['precision']} batch {s['batch']}: {s['reason']}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    raise SystemExit(main())
