"""Training loop: resume after a kill, refusal of mismatched checkpoints, EMA, augmentation."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffdecon.config import get_profile
from diffdecon.training import (CheckpointMismatchError, SimulatedKill, TrainOptions, augment,
                                ema_decay_at, export_checkpoint, fid_steps, learning_rate_at,
                                load_snapshot, read_log, train)


# A tiny profile: 16 px, 2 levels, 6 steps, checkpoint every 2 steps, batch 4.
TINY = dataclasses.replace(get_profile("smoke"), name="smoke", image_size=16, block_out_channels=(8, 16),
                           train_steps=6, checkpoint_every=2, batch_size=4, max_shift_px=1)


def _dataset(n=12, hash_="h0"):
    rng = np.random.default_rng(0)
    return SimpleNamespace(images=rng.random((n, 3, 16, 16)).astype(np.float32) + 0.01, manifest_hash=hash_)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    ds = _dataset()
    full = train(TINY, ds, out_dir=tmp_path / "full", progress=False)
    assert full.finished and full.step == 6
    # Killed right after step 5: the last checkpoint is at step 4, step 5 is lost and redone.
    with pytest.raises(SimulatedKill):
        train(TINY, ds, out_dir=tmp_path / "killed", progress=False, kill_after_step=5)
    resumed = train(TINY, ds, out_dir=tmp_path / "killed", progress=False)
    assert resumed.step == 6
    # Same seed, deterministic CPU kernels, same threads: bitwise equal weights, EMA and losses.
    assert _states_equal(full.model, resumed.model)
    assert _states_equal(full.ema, resumed.ema)
    assert [r["loss"] for r in full.log] == [r["loss"] for r in resumed.log]
    assert [r["step"] for r in read_log(tmp_path / "killed" / "train_log.csv")] == list(range(1, 7))


def test_max_steps_then_resume_matches(tmp_path):
    ds = _dataset()
    part = train(TINY, ds, out_dir=tmp_path / "a", progress=False, max_steps=3)
    assert part.step == 3 and not part.finished
    rest = train(TINY, ds, out_dir=tmp_path / "a", progress=False)
    full = train(TINY, ds, out_dir=tmp_path / "b", progress=False)
    assert _states_equal(rest.ema, full.ema)


def test_mismatched_checkpoint_is_refused(tmp_path):
    ds = _dataset()
    train(TINY, ds, out_dir=tmp_path, progress=False, max_steps=2)
    with pytest.raises(CheckpointMismatchError, match="dataset_hash"):
        train(TINY, _dataset(hash_="other"), out_dir=tmp_path, progress=False)
    other = dataclasses.replace(TINY, lr=3e-4)
    with pytest.raises(CheckpointMismatchError, match=r"config\.lr"):
        train(other, ds, out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointMismatchError, match="training_options"):
        train(TINY, ds, out_dir=tmp_path, progress=False, options=TrainOptions(batch_size=2))
    # retrain=True starts afresh instead.
    assert train(other, ds, out_dir=tmp_path, progress=False, retrain=True, max_steps=1).step == 1


def test_export_and_snapshots(tmp_path):
    ds = _dataset()
    train(TINY, ds, out_dir=tmp_path / "run", progress=False)
    dest = export_checkpoint(TINY, tmp_path / "run", tmp_path / "models", dataset_manifest={"a": 1})
    steps = fid_steps(TINY)
    assert steps == [3, 4, 5, 6]  # round(6 * 300/525) = 3, 375/525 -> 4, 450/525 -> 5, 6
    for s in steps:
        p = load_snapshot(TINY, s, dest)
        assert p.checkpoint_sha256 and len(p.checkpoint_sha256) == 64
    from diffdecon.prior import load_prior

    final = load_prior(TINY, dest)
    run_state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(final.unet.state_dict()[k], v) for k, v in run_state["ema"].items())


def test_export_refuses_unfinished_run(tmp_path):
    train(TINY, _dataset(), out_dir=tmp_path, progress=False, max_steps=2)
    with pytest.raises(RuntimeError, match="step 2 of 6"):
        export_checkpoint(TINY, tmp_path, tmp_path / "models")


def test_wrong_image_shape_is_refused(tmp_path):
    ds = SimpleNamespace(images=np.ones((4, 3, 8, 8), np.float32), manifest_hash="x")
    with pytest.raises(ValueError, match="needs"):
        train(TINY, ds, out_dir=tmp_path, progress=False)


def test_smoke_prior_cache_made_by_other_code_is_retrained(tmp_path, capsys, monkeypatch):
    """A cached smoke prior whose config differs (older code) is retrained, never refused or reused."""
    from diffdecon import training

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    tiny = dataclasses.replace(TINY, train_steps=2)
    ds = _dataset()
    ds.manifest = {"test": "tiny dataset"}
    first = training.prior_directory(tiny, ds, progress=False)
    assert "recomputed" in capsys.readouterr().out
    assert training.prior_directory(tiny, ds, progress=False) == first
    assert "cache hit" in capsys.readouterr().out
    changed = dataclasses.replace(tiny, lr=5e-4)  # what a code change to the profile looks like
    training.prior_directory(changed, ds, progress=False)
    out = capsys.readouterr().out
    assert "does not match" in out and "config.lr" in out and "recomputed" in out
    assert json.loads((first / "config.json").read_text())["config"]["lr"] == 5e-4


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999) == pytest.approx(0.91)
    assert ema_decay_at(10**7, 0.9999) == 0.9999
    assert ema_decay_at(5, 0.9999, warmup=False) == 0.9999


def test_learning_rate_schedules():
    const = dataclasses.replace(TINY, lr=1e-3, train_steps=100)
    assert [learning_rate_at(k, const) for k in (0, 50, 99)] == [1e-3] * 3
    cos = dataclasses.replace(const, lr_schedule="cosine", lr_warmup_steps=10)
    assert learning_rate_at(0, cos) == pytest.approx(1e-4)  # warm-up: 1/10 of lr (cos(0) = 1)
    assert learning_rate_at(50, cos) == pytest.approx(0.5e-3)  # half-way: (1 + cos(pi/2)) / 2
    assert learning_rate_at(99, cos) == pytest.approx(1e-3 * (1 + math.cos(math.pi * 0.99)) / 2)
    lrs = [learning_rate_at(k, cos) for k in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays monotonically after the warm-up
    with pytest.raises(ValueError, match="lr_schedule='step'; accepted: constant, cosine"):
        dataclasses.replace(const, lr_schedule="step")


def test_lr_is_logged_and_resume_keeps_the_schedule(tmp_path):
    cos = dataclasses.replace(TINY, lr_schedule="cosine", lr_warmup_steps=2)
    run = train(cos, _dataset(), out_dir=tmp_path, progress=False)
    logged = [r["lr"] for r in read_log(tmp_path / "train_log.csv")]
    assert logged == pytest.approx([learning_rate_at(k, cos) for k in range(cos.train_steps)])
    assert run.finished


def test_augment_conserves_flux_and_is_seeded():
    x = torch.rand(5, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1), 2, True)
    b = augment(x, torch.Generator().manual_seed(1), 2, True)
    assert torch.equal(a, b)
    # Rolls, flips and rotations permute pixels: every image's flux and sorted values are kept.
    assert torch.equal(a.flatten(1).sort().values, x.flatten(1).sort().values)


def _augment_reference(images, generator, max_shift, dihedral):
    """The per-image definition of :func:`augment`: rot90 by k, flip, then torch.roll."""
    b = images.shape[0]
    k = torch.randint(0, 4, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator) if max_shift > 0 else None
    out = []
    for i in range(b):
        im = images[i]
        if dihedral:
            im = torch.rot90(im, int(k[i]), dims=(1, 2))
            if flip[i]:
                im = torch.flip(im, dims=(2,))
        if shifts is not None:
            im = torch.roll(im, shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
        out.append(im)
    return torch.stack(out)


@pytest.mark.parametrize("max_shift,dihedral", [(0, True), (3, True), (2, False), (0, False)])
def test_vectorised_augment_equals_per_image_definition(max_shift, dihedral):
    x = torch.rand(32, 3, 12, 12)  # 32 images: every rotation and flip occurs (seeded)
    a = augment(x, torch.Generator().manual_seed(7), max_shift, dihedral)
    b = _augment_reference(x, torch.Generator().manual_seed(7), max_shift, dihedral)
    assert torch.equal(a, b)  # a permutation of pixels: exact


_CHILD = r"""
import dataclasses, sys
from types import SimpleNamespace
import numpy as np, torch
torch.set_num_threads(1)
from diffdecon.config import get_profile
from diffdecon.training import train
TINY = dataclasses.replace(get_profile("smoke"), name="smoke", image_size=16, block_out_channels=(8, 16),
                           train_steps=400, checkpoint_every=2, batch_size=4, max_shift_px=1)
rng = np.random.default_rng(0)
ds = SimpleNamespace(images=rng.random((12, 3, 16, 16)).astype(np.float32) + 0.01, manifest_hash="h0")
train(TINY, ds, out_dir=sys.argv[1], progress=False, max_steps=int(sys.argv[2]))
"""


@pytest.mark.slow
def test_resume_after_sigkill_subprocess(tmp_path):
    """A real SIGKILL (no chance to clean up) at an arbitrary moment after the first checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), "400"], env=env)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=False)  # the atomic write leaves a complete file
    k = state["step"]
    assert 2 <= k < 400
    n = k + 3
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), str(n)], env=env, check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "full"), str(n)], env=env, check=True)
    a = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == n
    assert all(torch.equal(a["ema"][key], b["ema"][key]) for key in b["ema"])
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in b["model"])


def test_training_curve_names_the_regression_target():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffdecon.plotting.training import training_curve_figure

    log = [{"step": k, "loss": 1.0 / k} for k in range(1, 40)]
    for prediction, label in (("epsilon", r"$\epsilon$-MSE loss"), ("v", "$v$-MSE loss")):
        fig = training_curve_figure(log, prediction=prediction)
        assert fig.axes[0].get_ylabel() == label
        plt.close(fig)
    with pytest.raises(ValueError, match="expected one of 'epsilon', 'v'"):
        training_curve_figure(log, prediction="x0")


@pytest.mark.parametrize("profile", ["quick"])
def test_committed_checkpoint_matches_the_current_profile(profile):
    """The committed checkpoint's recorded config agrees with the current profile on every
    training field (a profile field added for sampling only must join INFERENCE_FIELDS, or every
    notebook would refuse the committed prior), and a changed training field is still refused."""
    from diffdecon import loop, paths, training

    path = paths.ROOT / "models" / profile / training.CONFIG_FILE
    record = json.loads(path.read_text())
    P = get_profile(profile)
    config = training.run_config(P, TrainOptions())
    loop.check_checkpoint(record, config, record["dataset_hash"], path.parent, training.INFERENCE_FIELDS)
    changed = training.run_config(dataclasses.replace(P, lr=P.lr * 2), TrainOptions())
    with pytest.raises(CheckpointMismatchError, match="config.lr"):
        loop.check_checkpoint(record, changed, record["dataset_hash"], path.parent, training.INFERENCE_FIELDS)
