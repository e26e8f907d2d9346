#!/usr/bin/env python
"""Posterior sampling speed and quality: the default sampler against the published loop and azula.

    python bench/bench_sampling.py [--profile auto|quick|smoke] [--loop-samples 2] [--n N]
        [--dps-steps S] [--mmps-steps S] [--cg-iters K] [--zeta Z] [--threads 2] [--no-azula]

Sampler settings come from one place, ``diffdecon.validation.sampler_settings(profile)``
(the notebooks' calibrated budget), turned into sampler arguments by
``bench/common.sampler_kwargs``, which passes through every setting the sampler accepts;
the options above override single values for a one-off run.

One fixed mock observation (the first held-out synthetic galaxy at z = 0.21677, HSC PSF and
noise; ``diffdecon.validation.mock_set``) is inverted, in one run, by:

* ``published``: the paper's loop, one posterior sample at a time, DPS with all
  T = 1000 ancestral steps (``--loop-steps`` fewer only for smoke tests), ``paper`` convention
  (zeta_t = zeta / ||r|| on the squared norm; zeta from the settings or ``--zeta``). It is
  slow on a CPU, so only ``--loop-samples`` samples are drawn (said so in the output).
* ``dps_batched``: the same DPS, all ``n`` samples in one batch, the settings' DPS steps (<= 100).
* ``default`` (MMPS at the settings, over the problem's profile defaults: time spacing, Jacobi
  preconditioner, closed-form linearisation, trust region, warm start, x0 range; what the
  notebooks and the CLI run, :meth:`diffdecon.problem.InverseProblem.mmps_kwargs`): ``n`` samples in one batch.
* ``azula_mmps``: azula's ``MMPSDenoiser`` (its default GMRES solver, as many iterations as
  the settings' CG iterations) on the same denoiser (``prior.x0_hat`` behind azula's
  ``Denoiser`` interface, the discrete cosine schedule mapped to azula's time in [0, 1]),
  the same forward operator and noise, with azula's ``DDPMSampler`` over the same number of
  steps. azula is a benchmark-only extra (``pip install --no-deps azula einops``: its guidance
  package imports einops, and nothing else outside torch); without it the
  comparison is skipped with a printed message.

Batches use one generator per sample (azula draws from torch's global generator, seeded).
Reported per method: posterior samples per second; peak memory during the method [MiB]
(GPU: allocator peak; CPU: ``VmHWM`` after a reset through ``/proc/self/clear_refs``, else
the process peak: ``memory_method`` says which); PSNR [dB] of the posterior mean and per
sample against the idealized truth (linear flux); the reduced chi^2 of A(posterior mean)
and the mean and median over samples of the reduced chi^2 of A(sample) against y; the
fraction of model pixels whose truth lies in the central 68 % / 95 % interval of the
samples, next to what a calibrated sampler with that many samples would give
(``common.finite_sample_coverage``). Ratios to the published loop are given too. A
sampler that diverges (non-finite samples) is recorded as such, with the finite samples only.

Written atomically to ``results/bench_sampling.json`` (``--out``); a markdown table is printed.
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
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, finite_sample_coverage, jsonable_kwargs, sampler_kwargs  # noqa: E402

LEVELS: tuple[float, ...] = (0.68, 0.95)
"""Credible levels of the pixel coverage."""


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


def _score(rec: dict, x, problem) -> dict:
    """PSNR, chi^2 (mean estimate, per sample: mean and median) and pixel coverage of the
    finite samples ``x`` (prior space, CPU); every score in float64 against the CPU problem."""
    import torch

    from diffdecon import calibration, metrics

    nan = float("nan")
    with torch.no_grad():
        flux = problem.to_flux(x).double()
        flux = flux[torch.isfinite(flux.flatten(1)).all(1)]
        rec["n_finite"] = int(len(flux))
        if len(flux) == 0:
            rec.update(psnr_mean=nan, psnr_per_sample=nan, chi2_mean=nan, chi2_per_sample=nan,
                       chi2_per_sample_median=nan, coverage={str(lv): nan for lv in LEVELS}, diverged=True)
            return rec
        op = problem.operator
        mean = flux.mean(0)
        A_mean = op.A(mean[None])[0]  # float64 input: the operator's float64 masters
        A_s = op.A(flux)
    truth, y, s = problem.truth.double(), problem.y.double(), problem.sigma.double()
    chi = [metrics.reduced_chi2(y, a.double(), s) for a in A_s]
    rec["psnr_mean"] = metrics.psnr(truth, mean)
    rec["psnr_per_sample"] = float(np.mean([metrics.psnr(truth, f) for f in flux]))
    rec["chi2_mean"] = metrics.reduced_chi2(y, A_mean.double(), s)
    rec["chi2_per_sample"] = float(np.mean(chi))
    rec["chi2_per_sample_median"] = float(np.median(chi))
    cov = calibration.interval_coverage(flux, truth, LEVELS) if len(flux) >= 2 else dict.fromkeys(LEVELS, nan)
    rec["coverage"] = {str(k): v for k, v in cov.items()}
    rec["coverage_calibrated"] = {str(k): v for k, v in finite_sample_coverage(len(flux), LEVELS).items()}
    return rec


def _run(label: str, fn, n_expected: int, problem, reset_ok: bool, device=None) -> tuple[dict, "torch.Tensor"]:
    """Time ``fn`` (returns samples and their validity mask) and score its samples
    (:func:`_score`). On CUDA the peak memory is the GPU's (reset before each method)."""
    import torch

    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif reset_ok:
        _reset_peak()
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
    rec = {"method": label, "n_samples": n_expected, "wall_s": wall, "samples_per_s": n_expected / wall,
           "peak_memory_mib": peak, "memory_method": how, "diverged": bool(valid.sum() < n_expected)}
    return _score(rec, x[valid], problem), x


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


def azula_available() -> tuple[bool, str]:
    """(True, version) when azula and the modules used here import (its guidance package
    imports einops), else (False, why)."""
    try:
        import azula
        import azula.guidance  # noqa: F401
        import azula.sample  # noqa: F401
    except ImportError as err:
        return False, f"{type(err).__name__}: {err}"
    return True, getattr(azula, "__version__", "unknown version")


def azula_mmps(prior, y, forward, sigma, n: int, steps: int, iterations: int, seed: int,
               solver: str = "gmres"):
    """``n`` posterior samples with azula's MMPS on our denoiser, operator and noise.

    azula works on flat vectors and continuous time t in [0, 1]: t = 0 is the clean image
    (alpha = 1, sigma = 0), any t > 0 the discrete step ``round(t (T - 1))`` of the prior's
    cosine schedule (``alpha_t = sqrt(abar)``, ``sigma_t = sqrt(1 - abar)``, the same VP
    process). The denoiser is ``prior.x0_hat``; the observation covariance is diagonal,
    ``sigma_y^2`` per band and pixel. azula's ``DDPMSampler`` takes ``steps`` uniform steps
    of t from 1 to 0 and draws its noise from torch's global generator (seeded with
    ``seed``). Returns ``(x (n, C, H, W), valid (n,))`` as the package's samplers with
    ``on_divergence="mask"``."""
    import torch
    from azula.denoise import Denoiser, DiracPosterior
    from azula.guidance import MMPSDenoiser
    from azula.linalg.covariance import DiagonalCovariance
    from azula.noise import Schedule
    from azula.sample import DDPMSampler

    p = prior.profile
    shape = (len(p.bands), p.image_size, p.image_size)
    abar = prior.schedule.alphas_cumprod
    T = abar.numel()

    def index(t):
        return torch.round(torch.as_tensor(t, dtype=torch.float64) * (T - 1)).long().clamp(0, T - 1)

    class CosineSteps(Schedule):
        def __call__(self, t):
            a = abar.to(t.device)[index(t).to(t.device)].to(torch.float32)
            clean = t <= 0
            return torch.where(clean, 1.0, a.sqrt()), torch.where(clean, 0.0, (1 - a).sqrt())

    class PriorDenoiser(Denoiser):
        schedule = CosineSteps()

        def forward(self, x_t, t, **kwargs):
            tb = index(t).expand(x_t.shape[0]).to(x_t.device)
            return DiracPosterior(mean=prior.x0_hat(x_t.view(-1, *shape), tb).flatten(1))

    cov_y = DiagonalCovariance((sigma.view(1, -1, 1, 1).expand_as(y[None]) ** 2).flatten(1))
    guided = MMPSDenoiser(PriorDenoiser(), y.flatten()[None], lambda x: forward(x.view(-1, *shape)).flatten(1),
                          cov_y, solver=solver, iterations=iterations)
    sampler = DDPMSampler(guided, steps=steps, silent=True)
    torch.manual_seed(seed)
    x = sampler(sampler.init((n, int(np.prod(shape))), device=y.device)).view(n, *shape)
    valid = torch.isfinite(x.flatten(1)).all(1) & (x.flatten(1).abs().amax(1) < 1e6)
    return torch.where(valid.view(-1, 1, 1, 1), x, torch.full_like(x, float("nan"))), valid


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto", choices=["auto", "quick", "smoke"])
    parser.add_argument("--loop-samples", type=int, default=2, help="samples of the published loop (slow)")
    parser.add_argument("--loop-steps", type=int, default=None,
                        help="steps of the published loop (default all T, as published; fewer only for smoke tests)")
    for name, what in (("n", "samples of the batched samplers, one batch"), ("dps-steps", "batched DPS steps, <= 100"),
                       ("mmps-steps", "MMPS steps, <= 100"), ("cg-iters", "MMPS CG iterations"),
                       ("zeta", "DPS guidance scale, paper convention")):
        parser.add_argument(f"--{name}", type=float if name == "zeta" else int, default=None,
                            help=f"{what} (default: validation.sampler_settings of the profile)")
    parser.add_argument("--no-azula", action="store_true", help="skip the comparison with azula's MMPS")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", default=None,
                        help="default results/bench_sampling.json (results/bench_sampling_quick_gpu.json on cuda)")
    args = parser.parse_args(argv)
    for k in ("loop_samples", "loop_steps", "n", "dps_steps", "mmps_steps", "cg_iters", "threads", "zeta"):
        v = getattr(args, k)
        if v is not None and not v > 0:
            parser.error(f"--{k.replace('_', '-')}={v}: expected a positive number")
    if (args.dps_steps or 0) > 100 or (args.mmps_steps or 0) > 100:
        parser.error("the batched samplers are benchmarked at <= 100 steps")
    return args


def sampler_arguments(settings, args) -> tuple[int, dict, dict]:
    """(n, MMPS kwargs, DPS kwargs): the settings' values (``common.sampler_kwargs``), with
    the command line's overrides; batched DPS is capped at 100 steps."""
    mm, dp = sampler_kwargs(settings, "mmps"), sampler_kwargs(settings, "dps")
    if args.mmps_steps:
        mm["steps"] = args.mmps_steps
    if args.cg_iters and "cg_iters" in mm:
        mm["cg_iters"] = args.cg_iters
    dp["steps"] = args.dps_steps or min(dp["steps"], 100)
    if args.zeta:
        dp["zeta"] = args.zeta
    return args.n or settings.n, mm, dp


def _methods(prior, run_problem, args, n, mm, dp, T):
    """[(label, fn, n_samples)] in table order; the published loop first."""
    import torch

    from diffdecon import samplers

    y, fwd, sig = run_problem.y, run_problem.forward, run_problem.sigma
    dev = y.device

    def gens(base, k):  # one generator per sample, on the sampling device
        return [torch.Generator(dev).manual_seed(base + i) for i in range(k)]

    loop_steps = args.loop_steps or T
    loop_kw = dict(dp, steps=loop_steps)

    def published():
        out = [samplers.dps(prior, y, fwd, sig, g, 1, on_divergence="mask", progress=False, **loop_kw)
               for g in gens(10, args.loop_samples)]
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    runs = [(f"published (DPS, 1 at a time, {loop_steps} steps)", published, args.loop_samples),
            (f"DPS batched ({n}, {describe(dp)})",
             lambda: samplers.dps(prior, y, fwd, sig, gens(100, n), n, on_divergence="mask", progress=False, **dp), n),
            (f"default: MMPS batched ({n}, {describe({k: mm[k] for k in ('steps', 'cg_iters', 'covariance')})}, "
             "with the profile's defaults)",
             lambda: samplers.mmps(prior, y, fwd, sig, gens(200, n), n, on_divergence="mask", progress=False, **mm), n)]
    ok, why = azula_available()
    if args.no_azula:
        print("azula comparison skipped (--no-azula)")
    elif not ok:
        print(f"azula comparison SKIPPED: azula is not installed ({why}); install it for the benchmark only with "
              "`.venv/bin/pip install --no-deps azula einops`")
    else:
        it = mm.get("cg_iters", 1)
        runs.append((f"azula {why} MMPS ({n}, steps={mm['steps']}, gmres iterations={it})",
                     lambda: azula_mmps(prior, y, fwd, sig, n, mm["steps"], it, seed=300), n))
    return runs


def _on_device(problem, dev):
    """The problem with y, sigma and the operator on ``dev`` (scores stay on the CPU copy)."""
    if dev.type == "cpu":
        return problem
    import dataclasses

    return dataclasses.replace(problem, y=problem.y.to(dev), sigma=problem.sigma.to(dev),
                               operator=copy.deepcopy(problem.operator).to(dev))


def _ratios(records: list[dict]) -> None:
    base = records[0]

    def ratio(a, b):
        return float(a / b) if np.isfinite(a) and np.isfinite(b) and b != 0 else float("nan")

    for rec in records:
        rec["speedup"] = ratio(rec["samples_per_s"], base["samples_per_s"])
        rec["memory_ratio"] = ratio(rec["peak_memory_mib"], base["peak_memory_mib"])
        for k in ("psnr_mean", "psnr_per_sample", "chi2_mean", "chi2_per_sample"):
            rec[f"{k}_ratio"] = ratio(rec[k], base[k])
        rec["psnr_per_sample_diff_db"] = float(rec["psnr_per_sample"] - base["psnr_per_sample"])


def _print_table(records: list[dict]) -> None:
    cols = ["method", "samples/s", "speed-up", "peak memory [MiB]", "PSNR/sample", "dPSNR/sample [dB]",
            "chi2 mean", "chi2/sample (median)", "coverage 68/95 (calibrated)", "finite"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in records:
        c, t = r.get("coverage", {}), r.get("coverage_calibrated", {})
        cov = (f"{c.get('0.68', float('nan')):.2f}/{c.get('0.95', float('nan')):.2f} "
               f"({t.get('0.68', float('nan')):.2f}/{t.get('0.95', float('nan')):.2f})")
        print(f"| {r['method']} | {r['samples_per_s']:.4g} | {r['speedup']:.1f}x | {r['peak_memory_mib']:.0f} | "
              f"{r['psnr_per_sample']:.2f} | {r['psnr_per_sample_diff_db']:+.2f} | {r['chi2_mean']:.3g} | "
              f"{r['chi2_per_sample']:.3g} ({r['chi2_per_sample_median']:.3g}) | {cov} | "
              f"{r['n_finite']}/{r['n_samples']} |")


def main(argv=None) -> int:
    args = _parse(argv)
    import torch

    from diffdecon import mock, paths, validation
    from diffdecon.cache import atomic_write_text
    from diffdecon.problem import from_mock

    torch.set_num_threads(args.threads)
    P, prior, note = _load(args.profile)
    st = validation.sampler_settings(P)  # the notebooks' calibrated budget: the one place
    n, mm, dp = sampler_arguments(st, args)
    T = int(prior.schedule.alphas_cumprod.numel())
    mk = validation.mock_set(P, mock.hsc_reference(), n=1, redshifts=(0.21677,))[0]
    problem = from_mock(mk, prior)
    dev = torch.device(args.device)
    prior = prior.to(dev)
    run_problem = _on_device(problem, dev)
    mm = run_problem.mmps_kwargs(mm)  # what the notebooks run: the settings over the profile's defaults
    runs = _methods(prior, run_problem, args, n, mm, dp, T)
    reset_ok = _reset_peak()
    print(f"profile {P.name}; mock z = {mk.z}; {args.threads} threads; settings: {st.note}", flush=True)
    records = []
    for label, fn, k in runs:
        print(f"running {label} ...", flush=True)
        rec, _ = _run(label, fn, k, problem, reset_ok, dev)
        records.append(rec)
        print(f"  {rec['wall_s']:.1f} s, {rec['samples_per_s']:.4f} samples/s, finite {rec['n_finite']}/{k}", flush=True)
    _ratios(records)
    target = speed_target(records)
    from diffdecon import paths

    checkpoint = getattr(prior, "checkpoint_path", None)
    out = {"profile": P.name, "note": note, "checkpoint": paths.shown(checkpoint) if checkpoint else "",
           "checkpoint_sha256": getattr(prior, "checkpoint_sha256", None), "mock_z": mk.z,
           "mock_source": mk.reference.source, "threads": args.threads, "cpu_count": os.cpu_count(),
           "load_average": list(os.getloadavg()), "machine": platform.platform(), "torch": torch.__version__,
           "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "settings": {"source": "validation.sampler_settings", "note": st.note, "n": n,
                        "mmps": jsonable_kwargs(mm), "dps": dp},
           "published_loop_samples": args.loop_samples, "published_loop_steps": args.loop_steps or T,
           "published_loop_note": f"rate measured on {args.loop_samples} sample(s) only: the loop is slow on a CPU",
           "azula": azula_available()[1], "coverage_levels": list(LEVELS), "target": target, "methods": records}
    name = "bench_sampling.json" if dev.type == "cpu" else "bench_sampling_quick_gpu.json"
    path = Path(args.out) if args.out else paths.RESULTS / name
    atomic_write_text(path, json.dumps(out, indent=2, sort_keys=False) + "\n")
    _print_table(records)
    print(f"\nmemory: {records[0]['memory_method']}. Target >= 30x samples/s at equal or better PSNR and chi2: "
          f"{'met' if target['met'] else 'NOT met'} (best: {target['best_batched']}, {target['speedup']:.1f}x).")
    if note:
        print(note)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
