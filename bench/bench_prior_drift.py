#!/usr/bin/env python
"""Is the prior's chain stationary under its own noising? -> results/prior_drift.json

    python bench/bench_prior_drift.py [--profile quick] [--images 100] [--cycles 4]
                                      [--times 3 11 25 100] [--fine-steps 100] [--starts prior_draws heldout]
                                      [--checkpoint PATH] [--threads 2] [--output PATH]

Images are noised to time t by the forward process and carried back by the profile's sampling
chain (``sampling_steps`` times with its spacing, ``eta = 1``: the chain the calibration truths
and the variance ratio's references are drawn from), ``--cycles`` times in a row, and the
change of their flux in annuli about the centre is recorded per cycle
(:func:`diffdecon.stationarity.renoise_drift`). Two starting sets: the calibration truths (the
chain's own draws, :func:`diffdecon.sbc.truth_images`) and held-out synthetic galaxies; and, for
the time nearest 25, the same on a grid of ``--fine-steps`` times, which separates the time
discretisation from the network. Where the drift comes from in one step: the denoiser's mean
error ``x - D(x_t)`` by annulus at the same times on both sets
(:func:`diffdecon.stationarity.denoiser_mean_error`; 0 for Tweedie's exact denoiser), under
``mean_error``. ``--cycles 0`` measures that mean error alone (a minute at quick: e.g. the
training snapshots against each other on the same held-out galaxies, ``--starts heldout
--checkpoint models/quick/snapshots/ema_step0002400.pt``). A benchmark, not a test: tens of
minutes on a 2-core CPU at quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_network_arguments, load_network  # noqa: E402

STARTS = ("prior_draws", "heldout")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--images", type=int, default=100, help="images per starting set (default 100)")
    ap.add_argument("--cycles", type=int, default=4,
                    help="renoise cycles in a row (default 4; 0: the denoiser's mean error only)")
    ap.add_argument("--times", type=int, nargs="+", default=[3, 11, 25, 100],
                    help="diffusion times to renoise to (the nearest of the profile's grid)")
    ap.add_argument("--fine-steps", type=int, default=100, help="steps of the finer grid at t ~ 25 (0 skips it)")
    ap.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS),
                    help="starting sets: the chain's own draws and/or held-out synthetic galaxies (default both)")
    add_network_arguments(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="default results/prior_drift.json (other profiles: _<profile>)")
    args = ap.parse_args(argv)
    if args.images < 2 or args.cycles < 0:
        ap.error(f"--images {args.images}, --cycles {args.cycles}: accepted --images >= 2 and --cycles >= 0 "
                 "(0: the denoiser's mean error only)")

    import torch

    torch.set_num_threads(args.threads)
    from diffdecon import paths, sbc, stationarity
    from diffdecon.cache import atomic_write_text
    from diffdecon.prior import unstretch

    prior = load_network(args.profile, args.checkpoint, args.device)
    P = prior.profile
    out = Path(args.output) if args.output else paths.RESULTS / (
        "prior_drift.json" if args.profile == "quick" else f"prior_drift_{args.profile}.json")
    record = {"profile": args.profile, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "torch_threads": args.threads,
              "device": args.device, "checkpoint_sha256": prior.checkpoint_sha256,
              "checkpoint": str(args.checkpoint) if args.checkpoint else f"models/{args.profile}/",
              "chain": f"{P.sampling_steps} {P.time_spacing} steps, eta 1",
              "flux_units": "normalised flux (prior.unstretch), summed over bands and annulus pixels",
              "runs": [], "mean_error": []}
    t_all = time.perf_counter()
    for kind in args.starts:
        x0 = sbc.truth_images(prior, kind, args.images, seed=1).to(args.device)
        for t in args.times:
            m = stationarity.denoiser_mean_error(prior, x0, t, torch.Generator().manual_seed(5),
                                                 to_flux=lambda x: unstretch(x, P.asinh_a))
            m["start"] = kind
            record["mean_error"].append(m)
            print(f"[drift] {kind}, t = {t}: denoiser mean error (flux) per annulus "
                  f"{[round(v, 3) for v in m['flux']['mean']]} (+- {[round(v, 3) for v in m['flux']['sem']]})", flush=True)
        grids = ([(P.sampling_steps, t) for t in args.times] + ([(args.fine_steps, 25)] if args.fine_steps else [])
                 if args.cycles else [])
        for steps, t in grids:
            t0 = time.perf_counter()
            r = stationarity.renoise_drift(prior, x0, t, args.cycles, torch.Generator().manual_seed(3), steps=steps,
                                           spacing=P.time_spacing, to_flux=lambda x: unstretch(x, P.asinh_a))
            r.update(start=kind, wall_time_s=time.perf_counter() - t0)
            record["runs"].append(r)
            last = r["cycles"][-1]["flux"]
            print(f"[drift] {kind}, {steps} steps, t = {r['t']} (rho {r['rho']:.3f}): after {args.cycles} cycles, "
                  f"flux change per annulus {[round(v, 3) for v in last['mean']]} "
                  f"(+- {[round(v, 3) for v in last['sem']]}), total ratio {r['cycles'][-1]['flux_total_ratio']:.4f}",
                  flush=True)
            atomic_write_text(out, json.dumps(record, indent=1))
    record["wall_time_s"] = time.perf_counter() - t_all
    atomic_write_text(out, json.dumps(record, indent=1))
    print(f"[drift] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
