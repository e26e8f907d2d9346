#!/usr/bin/env python
"""Calibration where the answer is known (simulation-based calibration) -> results/calibration.json.

    python bench/bench_calibration.py [--profile quick] [--truths 100] [--heldout 32] [--samples 4]
                                      [--steps S] [--cg-iters K] [--cg-tol T] [--newton N] [--last-newton N]
                                      [--covariance C|jacobian|exact] [--jacobian-rank 16] [--jacobian-min-t 500]
                                      [--x0-draw on|off] [--last-draw on|off] [--warm-start on|off] [--mags 18 20 22]
                                      [--variants draw mean]
                                      [--prior network|mixture] [--components 1024] [--s0 0.05]
                                      [--threads 2] [--output PATH]

Truths drawn from the prior itself and held-out synthetic galaxies are observed through the
HSC-like forward model at the paper's low redshifts and at the magnitudes given, and inverted
with the profile's default MMPS settings (``validation.sampler_settings``) unless overridden.
Writes one record per truth set (``prior_draws``, ``heldout``) and sampler with TARP and its
null band, coverage per pixel class against the finite-sample target, chi^2 of every sample,
rank statistics, the settings and the wall time (:mod:`diffdecon.sbc`). With ``--prior
mixture`` the trained network gives way to a Gaussian mixture about training galaxies whose
denoiser is exact (:mod:`diffdecon.mixture_prior`), and the truths are its exact draws: there
a miscalibration is the sampler's own, not the network's (-> results/calibration_mixture.json).
A benchmark, not a test: at quick it takes tens of minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from diffdecon.config import MMPS_COVARIANCES  # light: no torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_network_arguments, load_network  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--truths", type=int, default=100, help="prior-drawn truths (default 100; 0 skips)")
    ap.add_argument("--heldout", type=int, default=32, help="held-out synthetic truths (default 32; 0 skips)")
    ap.add_argument("--samples", type=int, default=4, help="posterior samples per truth (default 4)")
    ap.add_argument("--steps", type=int, default=None, help="MMPS steps (default: the profile's)")
    ap.add_argument("--cg-iters", type=int, default=None, help="CG iterations per step (default: the profile's)")
    ap.add_argument("--cg-tol", type=float, default=None,
                    help="CG tolerance (default: the profile's; 0 runs all --cg-iters)")
    ap.add_argument("--newton", type=int, default=None,
                    help="Gauss-Newton linearisations of the forward model per MMPS step (default: 1, MMPS's one "
                         "linearisation at the denoiser's x0)")
    ap.add_argument("--last-newton", type=int, default=None,
                    help="Gauss-Newton linearisations in the last MMPS step (default: the profile's last_newton)")
    ap.add_argument("--warm-start", choices=["profile", "on", "off"], default="profile",
                    help="CG of each step from the previous step's x0_post (default: as the profile sets it)")
    ap.add_argument("--x0-draw", choices=["profile", "on", "off"], default="profile",
                    help="the profile's x0_draw for this run (default: as the profile sets it): it selects the "
                         "sampler's step and the chain the prior-drawn truths come from")
    ap.add_argument("--last-draw", choices=["profile", "on", "off"], default="profile",
                    help="with steps from a draw: the last step returns a draw of p(x0 | x_t, y) too, not its mean "
                         "(default: as the profile sets it)")
    ap.add_argument("--mags", type=float, nargs="+", default=[18.0, 20.0, 22.0], help="total i magnitudes [AB]")
    ap.add_argument("--variants", nargs="+", default=None, choices=["mean", "draw"],
                    help="MMPS steps from the mean of the Gaussian p(x0 | x_t, y) and/or from a draw of it "
                         "(x0_draw=True); default: the profile's. The profile's is recorded as 'mmps', the "
                         "other as 'mmps_x0mean' or 'mmps_x0draw'")
    ap.add_argument("--covariance", default=None, choices=[*MMPS_COVARIANCES, "jacobian", "exact"],
                    help="MMPS covariance (default: the profile's; diffdecon.config.MMPS_COVARIANCES); 'jacobian': "
                         "the empirical one plus a low-rank term from the denoiser's Jacobian at the high-noise "
                         "steps (diffdecon.mmps.jacobian_lowrank); 'exact' (--prior mixture only): the mixture's "
                         "own Cov[x0 | x_t], what a diagonal one costs")
    ap.add_argument("--jacobian-rank", type=int, default=16, help="rank of the Jacobian term (--covariance jacobian)")
    ap.add_argument("--jacobian-min-t", type=int, default=500,
                    help="smallest diffusion time given the Jacobian term (--covariance jacobian)")
    ap.add_argument("--lookahead", choices=["profile", "on", "off"], default="profile",
                    help="each MMPS step fits the data through x0 + b_t(D), the mean change the prior's own chain "
                         "still makes after it (diffdecon.lookahead; measured on 256 chain draws, cached; "
                         "default: as the profile sets it)")
    ap.add_argument("--prior", choices=["network", "mixture"], default="network",
                    help="the profile's trained prior (default), or a Gaussian mixture about training galaxies "
                         "whose denoiser is exact (diffdecon.mixture_prior): truths are its exact draws, so a "
                         "miscalibration there is the sampler's; held-out truths are not drawn for it")
    ap.add_argument("--components", type=int, default=1024, help="mixture components (--prior mixture)")
    ap.add_argument("--s0", type=float, default=0.05,
                    help="standard deviation of each mixture component [prior-space units] (--prior mixture)")
    add_network_arguments(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="default results/calibration.json (smoke: results/calibration_smoke.json)")
    args = ap.parse_args(argv)
    if any(n == 1 or n < 0 for n in (args.truths, args.heldout)) or args.samples < 2:
        ap.error(f"--truths {args.truths} --heldout {args.heldout} --samples {args.samples}: the truths must be "
                 "0 (skip) or >= 2 (TARP needs two), the samples >= 2")
    if args.truths == 0 and (args.heldout == 0 or args.prior == "mixture"):
        ap.error(f"--truths 0 with --heldout {args.heldout} and --prior {args.prior}: nothing to measure "
                 "(the mixture has no held-out set)")
    if args.covariance == "exact" and args.prior != "mixture":
        ap.error("--covariance exact needs --prior mixture (the network has no closed-form covariance)")
    if args.checkpoint is not None and args.prior != "network":
        ap.error("--checkpoint needs --prior network (the mixture is built from the training set)")
    if args.jacobian_rank < 1 or args.jacobian_min_t < 0:
        ap.error(f"--jacobian-rank {args.jacobian_rank} --jacobian-min-t {args.jacobian_min_t}: expected a rank >= 1 "
                 "and a diffusion time >= 0")
    for flag, k in (("--newton", args.newton), ("--last-newton", args.last_newton)):
        if k is not None and k < 1:
            ap.error(f"{flag} {k}: expected a positive int")

    import torch

    torch.set_num_threads(args.threads)
    from diffdecon import config, mock, paths, sbc, validation
    from diffdecon.cache import atomic_write_text

    if args.prior == "mixture":
        from diffdecon import mixture_prior

        prior = mixture_prior.from_training_set(args.profile, args.components, args.s0)
        prior_id = prior.identity
        if args.heldout:
            print(f"[calibration] --prior mixture: no held-out set (its truths are the prior's exact draws); "
                  f"--heldout {args.heldout} ignored")
        args.heldout = 0
    else:
        prior = load_network(args.profile, args.checkpoint, args.device)
        prior_id = prior.checkpoint_sha256
    st = validation.sampler_settings(args.profile)
    P = config.get_profile(args.profile)
    # the sampler's steps and last step, and so the truths' chain (reference_samples.prior_samples)
    steps_from = {} if args.x0_draw == "profile" else {"x0_draw": args.x0_draw == "on"}
    if args.last_draw != "profile":
        steps_from["last_draw"] = args.last_draw == "on"
    if steps_from:
        import dataclasses

        P = dataclasses.replace(P, **steps_from)
        prior.profile = P
    cg_tol = P.cg_tol if args.cg_tol is None else (args.cg_tol or None)
    settings = {"steps": args.steps or st.mmps_steps, "cg_iters": args.cg_iters or st.cg_iters,
                "covariance": args.covariance or st.mmps_covariance, "spacing": P.time_spacing, "cg_tol": cg_tol,
                "warm_start": P.warm_start if args.warm_start == "profile" else args.warm_start == "on",
                "last_newton": P.last_newton if args.last_newton is None else args.last_newton}
    if args.newton is not None:
        settings["newton"] = args.newton
    if settings["covariance"] == "jacobian":
        settings.update(jacobian_rank=args.jacobian_rank, jacobian_min_t=args.jacobian_min_t)
    use_lookahead = P.lookahead if args.lookahead == "profile" else args.lookahead == "on"
    settings["lookahead"] = "chain" if use_lookahead else None
    own = "draw" if P.x0_draw else "mean"
    variants = args.variants or [own]
    reference = mock.hsc_reference()
    default = "calibration.json" if args.profile == "quick" else f"calibration_{args.profile}.json"
    if args.prior == "mixture":
        default = default.replace("calibration", "calibration_mixture")
    out = Path(args.output) if args.output else paths.RESULTS / default
    record = {"profile": args.profile, "sampler": "mmps", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "torch_threads": args.threads, "device": args.device, "checkpoint_sha256": prior_id,
              "prior": ("the trained network" if args.prior == "network" else
                        f"Gaussian mixture, {args.components} training galaxies, s0 = {args.s0:g} (exact denoiser)"),
              "samplers": {"mmps": f"MMPS, {settings['covariance']} covariance"
                                   + (f" (rank {args.jacobian_rank} at t >= {args.jacobian_min_t})"
                                      if settings["covariance"] == "jacobian" else "")
                                   + f", {P.time_spacing} time spacing, "
                                   f"{settings['cg_iters']} CG at most (tolerance {cg_tol}"
                                   f"{', warm-started from the previous step' if settings['warm_start'] else ''}), step from "
                                   f"{'a draw' if own == 'draw' else 'the mean'} of the Gaussian p(x0 | x_t, y) "
                                   "(the profile's sampler)"
                                   + (", the last step a draw too" if own == "draw" and P.last_draw else "")
                                   + (f", {settings['last_newton']} linearisations of the forward model in the last step"
                                      if settings["last_newton"] > 1 else "")
                                   + (", each step fitting the data through x0 + b_t(D), the chain's lookahead "
                                      "(diffdecon.lookahead)" if use_lookahead else ""),
                           f"mmps_x0{'mean' if own == 'draw' else 'draw'}":
                               f"the same, step from {'the mean' if own == 'draw' else 'a draw'} of it"
                               + (", the last step a draw too" if own == "mean" and P.last_draw else "")}}
    for kind, n in (("prior_draws", args.truths), ("heldout", args.heldout)):
        for variant in variants if n else ():
            name = "mmps" if variant == own else f"mmps_x0{variant}"
            t0 = time.perf_counter()
            # the profile's last_draw reaches the draw variant through InverseProblem.mmps_kwargs
            run = {**settings, "x0_draw": variant == "draw", "last_draw": variant == "draw" and P.last_draw}
            rec = sbc.run_calibration(prior, kind, n, args.samples, run, args.mags, validation.PAPER_LOW_Z, reference)
            if use_lookahead:
                from diffdecon import lookahead

                rec["lookahead"] = lookahead.of_prior(prior, settings["steps"], settings["spacing"]).summary()
            record.setdefault(kind, {})[name] = rec
            print(f"[calibration] {kind}, {name}: {n} truths in {time.perf_counter() - t0:.0f} s: chi2 median "
                  f"{rec['chi2_sample_median']:.3f}, coverage 68/95 {rec['coverage_68']:.3f}/{rec['coverage_95']:.3f} "
                  f"(target {rec['coverage_target_68']:.3f}/{rec['coverage_target_95']:.3f}), TARP "
                  f"{rec.get('tarp_max_dev', float('nan')):.3f} (null 95 % {rec.get('tarp_null_95', float('nan')):.3f}), "
                  f"total-flux offset per band {[round(v, 2) for v in rec['flux_offset']['mean']]} "
                  f"(samples' spread {[round(v, 2) for v in rec['flux_offset']['sample_spread']]})", flush=True)
            atomic_write_text(out, json.dumps(record, indent=1))  # after every set: nothing is lost on a kill
    print(f"[calibration] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
