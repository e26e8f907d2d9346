"""The benchmark scripts (bench/) and the GPU run's candidate helpers (scripts/train.py).

Fast tests run the code paths on tiny models on the CPU; the end-to-end smoke invocations
(which train the smoke prior or draw datasets) are marked slow."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(relpath: str):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


@pytest.fixture(scope="module")
def common():
    return _load("bench/common.py")


@pytest.fixture(scope="module")
def paper_bench():
    return _load("bench/bench_paper_sampler.py")


# ------------------------------------------------------------------ settings in one place


def test_sampler_kwargs_pass_through_what_the_sampler_takes(common):
    from diffdecon.validation import SamplerSettings

    @dataclasses.dataclass(frozen=True)
    class Settings(SamplerSettings):  # the settings the benches pass, plus a sampler option they lack
        eta: float = 0.5

    settings = Settings(n=8, mmps_steps=30, cg_iters=3, dps_steps=1000, dps_zeta=0.01, note="not an argument",
                        mmps_covariance="isotropic")

    def mmps(prior, y, forward, sigma_y, generator, n, steps=100, cg_iters=5, eta=1.0, covariance="tweedie",
             progress=True):
        pass

    def dps(prior, y, forward, sigma_y, generator, n, steps=None, zeta=1.0, convention="reference"):
        pass

    assert common.sampler_kwargs(settings, "mmps", mmps) == {"steps": 30, "cg_iters": 3, "eta": 0.5,
                                                              "covariance": "isotropic"}
    assert common.sampler_kwargs(settings, "dps", dps) == {"steps": 1000, "zeta": 0.01, "convention": "paper"}
    with pytest.raises(ValueError, match="accepted: mmps, dps"):
        common.sampler_kwargs(settings, "daps", mmps)
    bad = dict(dataclasses.asdict(settings), mmps_kwargs={"solver": "gmres"})
    with pytest.raises(ValueError, match="solver"):
        common.sampler_kwargs(bad, "mmps", mmps)


def test_sampler_kwargs_match_the_package_sampler_signature(common):
    from diffdecon import samplers, validation

    for name in ("smoke", "quick", "paper"):
        st = validation.sampler_settings(name)
        for sampler in ("mmps", "dps"):
            kw = common.sampler_kwargs(st, sampler)
            assert set(kw) <= set(inspect.signature(getattr(samplers, sampler)).parameters)
            assert kw["steps"] == getattr(st, f"{sampler}_steps")


def test_finite_sample_coverage_matches_order_statistics(common):
    # With torch.quantile's linear interpolation the expected coverage of the central
    # interval of n exchangeable samples is (E[U_hi] - E[U_lo]) with E[U_(k)] = k / (n + 1):
    # n = 16, 68 %: positions 2.4 and 12.6 (0-based) -> (13.6 - 3.4) / 17 = 0.6 exactly.
    # Tolerance 0.012: about 3 standard errors of 20,000 Bernoulli trials (sd 0.0035).
    cov = common.finite_sample_coverage(16, (0.68,), trials=20000, seed=1)
    assert abs(cov[0.68] - 0.6) < 0.012


# ------------------------------------------------------------------ FLOP accounting


class _Conv1x1(torch.nn.Module):
    """A one-layer 'UNet': a 1x1 convolution C -> C, no bias (FLOPs known by hand)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x, t, return_dict=True):
        out = self.conv(x)
        return (out,) if not return_dict else type("Out", (), {"sample": out})()


def _tiny(side=8):
    from diffdecon.config import get_profile
    from diffdecon.prior import DiffusionPrior

    P = dataclasses.replace(get_profile("smoke"), image_size=side, block_out_channels=(8,), attention_resolutions=())
    torch.manual_seed(0)
    return DiffusionPrior(P, unet=_Conv1x1(len(P.bands))).eval().requires_grad_(False)


def test_flop_count_of_sampler_steps_matches_hand_computation(paper_bench, common):
    prior = _tiny(8)
    C, H, W = 3, 8, 8
    y = torch.zeros(1, C, H, W)
    problem = (y, lambda x: 0.5 * x, torch.full((C,), 0.1))  # elementwise operator: no counted FLOPs
    conv = 2 * C * C * H * W  # one 1x1 conv of one image: 2 FLOPs per multiply-add
    K = 3
    mm = {"cg_iters": K}
    if "covariance" in inspect.signature(__import__("diffdecon.samplers").samplers.mmps).parameters:
        mm["covariance"] = "tweedie"  # the CG-through-Jacobian mode the count below assumes
    # MMPS step: x0_hat (1 forward) + one VJP per CG iteration + the final VJP, each VJP a
    # backward-to-input of the conv with the forward's FLOPs; DPS: forward + one VJP.
    assert paper_bench.step_flops(prior, problem, "mmps", mm) == (K + 2) * conv
    assert paper_bench.step_flops(prior, problem, "dps", {"zeta": 1.0, "convention": "paper"}) == 2 * conv
    assert paper_bench.forward_flops(prior, "cpu") == conv
    assert common.count_flops(lambda: prior.net(y, torch.zeros(1, dtype=torch.long))) == conv


def test_extrapolation_uses_the_best_batch(paper_bench):
    rows = [{"method": "mmps", "batch": 1, "seconds_per_step": 1.0, "precision": "bf16", "compiled": False},
            {"method": "mmps", "batch": 8, "seconds_per_step": 4.0, "precision": "bf16", "compiled": False}]
    e = paper_bench.extrapolate(rows, 256, "mmps", 100, flops_b1=10**12, peak_tflops=1.0)
    # batch 8: ceil(256 / 8) * 100 steps * 4 s = 12,800 s; batch 1: 25,600 s
    assert e["best_batch"] == 8 and e["minutes"] == pytest.approx(12800 / 60)
    # floor: 256 samples * 100 steps * 1 TFLOP at 1 TFLOP/s = 25,600 s
    assert e["floor_minutes_at_peak"] == pytest.approx(25600 / 60)


def test_sweep_stops_growing_a_batch_after_out_of_memory(paper_bench, monkeypatch):
    def fake(prior, problem, method, kwargs, batch, *rest):
        if batch >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        return {"seconds_per_step": 0.01 * batch, "warmup_s": 0.02, "samples_per_s": 1.0,
                "fraction_of_peak": 0.1, "peak_memory_gib": 1.0}

    monkeypatch.setattr(paper_bench, "bench_config", fake)
    args = type("Args", (), {"timed_steps": 1, "peak_tflops": 1.0})()
    configs = [("mmps", "bf16", False, b) for b in (1, 2, 4, 8)]
    rows, skipped = paper_bench.sweep({("bf16", False): None}, None, configs, args, {"mmps": {}}, {"mmps": 1},
                                      {"mmps": 10}, time.perf_counter() + 60, lambda r, s: None)
    assert [r["batch"] for r in rows] == [1, 2]
    assert [s["batch"] for s in skipped] == [4, 8]
    assert "out of memory" in skipped[0]["reason"] and "smaller batch" in skipped[1]["reason"]


def test_paper_sampler_bench_smoke_writes_its_fields(paper_bench, tmp_path):
    out = tmp_path / "b.json"
    t0 = time.perf_counter()
    paper_bench.main(["--profile", "smoke", "--device", "cpu", "--batch-sizes", "1", "2", "--precisions", "fp32",
                      "--timed-steps", "1", "--budget-s", "40", "--peak-tflops", "2", "--out", str(out)])
    assert time.perf_counter() - t0 < 60
    d = json.loads(out.read_text())
    for key in ("profile", "n_parameters", "flops_per_forward", "flops_per_step_batch1", "peak_tflops_bf16",
                "settings", "rows", "skipped", "extrapolation", "forward_equivalents_per_step"):
        assert key in d, key
    assert {(r["method"], r["batch"]) for r in d["rows"]} == {("mmps", 1), ("mmps", 2), ("dps", 1), ("dps", 2)}
    for r in d["rows"]:
        assert r["flops_per_step"] == d["flops_per_step_batch1"][r["method"]] * r["batch"]
        # fraction of peak = FLOPs / time / peak, peak 2 TFLOP/s given above (relative 1e-12: float rounding)
        assert r["fraction_of_peak"] == pytest.approx(r["flops_per_step"] / r["seconds_per_step"] / 2e12, rel=1e-12)
        assert r["samples_per_s"] == pytest.approx(r["batch"] / (r["seconds_per_step"] * r["steps_per_sample"]))
    assert d["extrapolation"]["mmps"]["steps"] == d["settings"]["mmps"]["steps"]
    assert "published_loop" in d["extrapolation"]
    # MMPS is timed as the notebooks run it: the profile's defaults under the settings
    from diffdecon.config import get_profile
    from diffdecon.prior import X0_RANGE

    P, mm = get_profile("smoke"), d["settings"]["mmps"]
    assert mm["spacing"] == P.time_spacing and mm["x0_clip"] == list(X0_RANGE)
    if mm["covariance"] != "tweedie":
        assert mm["precond"].endswith("normal_diagonal") and mm["linearise"].endswith("linearised")
        assert mm["warm_start"] == P.warm_start and mm["max_step"] > 0


# ------------------------------------------------------------------ azula on the same problem


def test_azula_mmps_on_our_denoiser_runs_or_is_skipped():
    from conftest import IsotropicGaussianPrior

    bs = _load("bench/bench_sampling.py")
    ok, why = bs.azula_available()
    if not ok:
        pytest.skip(f"azula not installed ({why}): the benchmark skips the comparison too")
    from diffdecon.config import get_profile

    P = dataclasses.replace(get_profile("smoke"), image_size=8)
    prior = IsotropicGaussianPrior(P, torch.zeros(3, 8, 8), 0.5)
    g = torch.Generator().manual_seed(0)
    truth = 0.5 * torch.randn(3, 8, 8, generator=g)
    y = truth + 0.05 * torch.randn(3, 8, 8, generator=g)  # A = identity, sigma_y = 0.05
    x, valid = bs.azula_mmps(prior, y, lambda v: v, torch.full((3,), 0.05), 64, steps=30, iterations=3, seed=0)
    assert x.shape == (64, 3, 8, 8) and bool(valid.all())
    # exact posterior mean of N(0, 0.25 I) observed with noise 0.05: y * 0.25 / (0.25 + 0.0025).
    # The 64-sample mean has a Monte Carlo error of 0.0497 / 8 = 0.006 per pixel (posterior sd
    # 0.0497); 0.02 rms over the 192 pixels leaves room for a small sampler bias, while a wrong
    # time or scale mapping moves the mean by a fraction of |y| ~ 0.5.
    rms = float(((x.mean(0) - y * 0.25 / 0.2525) ** 2).mean().sqrt())
    assert rms < 0.02


# ------------------------------------------------------------------ candidate training helpers


def test_candidate_profile_size_guard_and_steps():
    tr = _load("scripts/train.py")
    from diffdecon.config import get_profile

    P = tr.candidate_profile(get_profile("quick"), channels=(32, 64, 128, 160), layers=1, steps=3500, batch=512)
    assert P.name == "quick" and P.block_out_channels == (32, 64, 128, 160) and P.train_steps == 3500
    with pytest.raises(ValueError, match="MB of float32 EMA weights"):
        tr.candidate_profile(get_profile("quick"), channels=(48, 96, 144, 192))
    with pytest.raises(ValueError, match="multiple of 7"):
        tr.candidate_profile(get_profile("quick"), steps=100)
    # 270 s at 0.1 s/step: 0.92 * 2700 = 2484 steps -> 2478, the largest multiple of 7 below
    assert tr.steps_that_fit(270, 0.1) == 2478


def test_bench_training_smoke_step():
    bt = _load("bench/bench_training.py")
    row = bt.bench("smoke", threads=1, steps=1)
    assert row["images_per_s"] > 0 and row["n_parameters"] > 0


# ------------------------------------------------------------------ end to end (slow)


@pytest.mark.slow
def test_bench_sampling_smoke_invocation_under_a_minute(tmp_path):
    out = tmp_path / "s.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench/bench_sampling.py"), "--profile", "smoke", "--loop-samples", "1",
                    "--loop-steps", "20", "--n", "2", "--threads", "1", "--zeta", "1e-3", "--out", str(out)],
                   check=True, cwd=ROOT)
    assert time.perf_counter() - t0 < 60
    d = json.loads(out.read_text())
    assert d["settings"]["source"] == "validation.sampler_settings"
    assert d["methods"][0]["method"].startswith("published")
    assert all("coverage" in m for m in d["methods"])
    # the default MMPS is the notebooks' one: the problem's profile defaults under the settings
    mm = d["settings"]["mmps"]
    assert mm["precond"].endswith("normal_diagonal") and mm["linearise"].endswith("linearised")
    assert mm["spacing"] == "quadratic" and "x0_clip" in mm and "max_step" in mm


@pytest.mark.slow
def test_gpu_run_script_smoke_on_the_cpu(tmp_path):
    env = dict(__import__("os").environ, OUT=str(tmp_path), DIFFDECON_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "scripts/gpu_run.sh"), "--profile", "smoke"], check=True, env=env, cwd=ROOT)
    assert time.perf_counter() - t0 < 180
    assert (tmp_path / "bench_sampling_smoke_cpu.json").exists()
    assert list(tmp_path.glob("smoke_candidate.tar.part-*"))


def test_calibration_bench_records_the_sampler_it_ran(monkeypatch, tmp_path, smoke_gaussian_prior):
    """bench_calibration.py on the smoke stand-in prior: the profile's sampler is recorded as
    ``mmps`` with its settings; ``--x0-draw on`` switches the step and the truths' chain, and
    the other variant is recorded under its own name."""
    from diffdecon import prior as prior_mod

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prior_mod, "load_prior", lambda profile, **kw: smoke_gaussian_prior)
    bench = _load("bench/bench_calibration.py")
    out = tmp_path / "cal.json"
    args = ["--profile", "smoke", "--truths", "2", "--heldout", "0", "--samples", "2", "--threads", "1"]
    assert bench.main(args + ["--x0-draw", "on", "--variants", "draw", "mean", "--cg-tol", "0.01",
                              "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    runs = rec["prior_draws"]
    assert set(runs) == {"mmps", "mmps_x0mean"}
    assert runs["mmps"]["settings"]["x0_draw"] is True and runs["mmps_x0mean"]["settings"]["x0_draw"] is False
    assert runs["mmps"]["settings"]["cg_tol"] == 0.01 and runs["mmps"]["truth_chain"] == "ancestral, x0 drawn, the last step too"
    assert "heldout" not in rec


def test_prior_drift_bench_records_both_starting_sets(monkeypatch, tmp_path, smoke_gaussian_prior):
    """bench_prior_drift.py on the smoke stand-in prior: one run per starting set and time, each
    with the flux change per annulus and cycle and the chain it used."""
    from diffdecon import prior as prior_mod

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prior_mod, "load_prior", lambda profile, **kw: smoke_gaussian_prior)
    bench = _load("bench/bench_prior_drift.py")
    out = tmp_path / "drift.json"
    assert bench.main(["--profile", "smoke", "--images", "4", "--cycles", "2", "--times", "25", "--fine-steps", "0",
                       "--threads", "1", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["start"] for r in rec["runs"]] == ["prior_draws", "heldout"]
    for r in rec["runs"]:
        assert r["n_images"] == 4 and len(r["cycles"]) == 2
        assert len(r["cycles"][0]["flux"]["mean"]) == len(r["annuli_px"]) - 1
    assert rec["chain"].endswith("eta 1") and rec["wall_time_s"] > 0
    assert [(m["start"], m["t"]) for m in rec["mean_error"]] == [("prior_draws", 25), ("heldout", 25)]
    assert len(rec["runs"][0]["flux_start"]["mean"]) == len(rec["runs"][0]["annuli_px"]) - 1


def test_prior_drift_bench_mean_error_alone(monkeypatch, tmp_path, smoke_gaussian_prior):
    """``--cycles 0``: the denoiser's mean error only, on the starting sets asked for (no renoise
    runs); a negative count is refused by name."""
    from diffdecon import prior as prior_mod

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prior_mod, "load_prior", lambda profile, **kw: smoke_gaussian_prior)
    bench = _load("bench/bench_prior_drift.py")
    out = tmp_path / "mean_error.json"
    assert bench.main(["--profile", "smoke", "--images", "4", "--cycles", "0", "--times", "3", "25",
                       "--starts", "heldout", "--threads", "1", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["runs"] == [] and rec["checkpoint"] == "models/smoke/"
    assert [(m["start"], m["t"]) for m in rec["mean_error"]] == [("heldout", 3), ("heldout", 25)]
    with pytest.raises(SystemExit):
        bench.main(["--profile", "smoke", "--cycles", "-1", "--output", str(out)])


def test_load_network_takes_a_weights_file(monkeypatch, tmp_path):
    """``--checkpoint`` a file (a training snapshot): its weights in the profile's own UNet,
    through load_prior; a folder goes to load_candidate."""
    from diffdecon import prior as prior_mod

    common = _load("bench/common.py")
    calls = []
    stand_in = torch.nn.Linear(1, 1)
    monkeypatch.setattr(prior_mod, "load_prior", lambda profile, **kw: calls.append(("file", kw)) or stand_in)
    monkeypatch.setattr(prior_mod, "load_candidate", lambda profile, folder, device: calls.append(("folder",)) or stand_in)
    weights = tmp_path / "ema_step0002400.pt"
    weights.write_bytes(b"")
    common.load_network("smoke", str(weights))
    common.load_network("smoke", str(tmp_path))
    assert calls[0] == ("file", {"checkpoint": str(weights), "map_location": "cpu"}) and calls[1] == ("folder",)


def test_calibration_bench_on_the_exact_mixture_prior(monkeypatch, tmp_path):
    """``--prior mixture``: truths are the mixture's exact draws, the denoiser variance is
    measured on them, and the record names the prior; no held-out set is drawn for it."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    bench = _load("bench/bench_calibration.py")
    out = tmp_path / "cal_mix.json"
    assert bench.main(["--profile", "smoke", "--prior", "mixture", "--components", "4", "--s0", "0.05",
                       "--truths", "2", "--heldout", "3", "--samples", "2", "--steps", "4", "--cg-iters", "5",
                       "--variants", "mean", "draw", "--x0-draw", "off", "--last-draw", "on", "--threads", "1",
                       "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["prior"].startswith("Gaussian mixture, 4 training galaxies, s0 = 0.05")
    assert rec["checkpoint_sha256"].startswith("mixture-")
    runs = rec["prior_draws"]
    assert runs["mmps"]["truth_chain"] == "exact draws of the closed-form prior"
    assert runs["mmps"]["settings"]["last_draw"] is False and runs["mmps_x0draw"]["settings"]["last_draw"] is True
    assert rec["samplers"]["mmps_x0draw"].endswith("the last step a draw too")
    assert "heldout" not in rec


def test_calibration_bench_with_the_mixtures_exact_covariance(monkeypatch, tmp_path):
    """``--covariance exact`` runs MMPS with the mixture's own Cov[x0 | x_t] and says so in the
    record; with the network prior it is refused before anything is loaded."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    bench = _load("bench/bench_calibration.py")
    out = tmp_path / "cal_exact.json"
    assert bench.main(["--profile", "smoke", "--prior", "mixture", "--components", "4", "--s0", "0.05",
                       "--truths", "2", "--samples", "2", "--steps", "4", "--cg-iters", "5", "--covariance", "exact",
                       "--threads", "1", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["prior_draws"]["mmps"]["settings"]["covariance"] == "exact"
    assert rec["samplers"]["mmps"].startswith("MMPS, exact covariance")
    with pytest.raises(SystemExit):
        bench.main(["--profile", "smoke", "--covariance", "exact", "--output", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()


def test_calibration_bench_with_the_jacobian_covariance(monkeypatch, tmp_path):
    """``--covariance jacobian`` runs MMPS with the Jacobian's low-rank term at the rank and
    times given and records them; a rank below 1 is refused before anything is written."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    bench = _load("bench/bench_calibration.py")
    out = tmp_path / "cal_jac.json"
    assert bench.main(["--profile", "smoke", "--prior", "mixture", "--components", "4", "--s0", "0.05",
                       "--truths", "2", "--samples", "2", "--steps", "4", "--cg-iters", "5",
                       "--covariance", "jacobian", "--jacobian-rank", "3", "--jacobian-min-t", "0",
                       "--threads", "1", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    settings = rec["prior_draws"]["mmps"]["settings"]
    assert (settings["covariance"], settings["jacobian_rank"], settings["jacobian_min_t"]) == ("jacobian", 3, 0)
    assert rec["samplers"]["mmps"].startswith("MMPS, jacobian covariance (rank 3 at t >= 0)")
    with pytest.raises(SystemExit):
        bench.main(["--profile", "smoke", "--prior", "mixture", "--covariance", "jacobian", "--jacobian-rank", "0",
                    "--output", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()


@pytest.mark.parametrize("argv", [["--truths", "1"], ["--heldout", "1"], ["--samples", "1"], ["--truths", "-2"],
                                  ["--truths", "0", "--heldout", "0"], ["--truths", "0", "--prior", "mixture"]])
def test_calibration_bench_refuses_truth_counts_it_cannot_measure(tmp_path, argv):
    """A set of one truth (TARP needs two), one sample, or nothing to measure at all is refused
    before anything loads or is written."""
    bench = _load("bench/bench_calibration.py")
    with pytest.raises(SystemExit):
        bench.main(["--profile", "smoke", *argv, "--output", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()
