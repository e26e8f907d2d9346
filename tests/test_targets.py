"""Tests of diffdecon.targets: one real target end to end, the targets of a redshift range."""

from __future__ import annotations

import pytest

from diffdecon import data, manuscript, problem, reference_samples, targets
from diffdecon.errors import DivergenceError


def _diverge(*args, **kwargs):
    raise DivergenceError("forced divergence (test)")


def test_analyse_target_real(present_targets, hsc_root, smoke_gaussian_prior, monkeypatch):
    """A real target end to end with the exact Gaussian test prior (smoke grid, 2 samples, 2
    steps): table row, figure row and, for a target with HST, the HST agreement."""
    prior_x = reference_samples.prior_samples(smoke_gaussian_prior, n=6, steps=5, method="ddpm", progress=False)
    with_hst = [n for n in present_targets if data.load_target(n, hsc_root).hst is not None]
    name = with_hst[0] if with_hst else present_targets[0]
    t = data.load_target(name, hsc_root)
    a = targets.analyse_target(t, smoke_gaussian_prior, n=2, steps=2, prior_samples=prior_x, progress=False,
                               cg_iters=1)
    assert a.error is None and a.result is not None and a.wall_time_s > 0
    assert a.m == pytest.approx(a.problem.m) and a.upsampling_factor == pytest.approx(32 / a.m)
    row = manuscript.analysis_table_rows([a])[0]
    assert len(row) == 12 and row[0] == name.replace("_", r"\_") and row[1] == f"{t.z:.4f}"
    assert a.residuals is not None and row[11] == f"{max(a.residuals.chi2_outside):.2f}"
    if with_hst:
        assert a.hst is not None and a.agreement is not None
        assert row[9] == f"{a.agreement.correlation:.3f}"
    else:
        assert a.hst is None and row[9] == "no HST"
    fr = a.figure_row()
    assert fr["samples"].shape == (2, 3, 32, 32) and fr["error"] is None
    line = a.summary()
    assert line.startswith(f"{name}: m(z,p) = {a.m:.1f} px") and f"variance ratio {a.result.variance_ratio_aperture:.3f}" in line
    assert ("HST corr" in line) == bool(with_hst)
    # a diverged sampler is kept, not raised: "diverged" in the posterior columns
    monkeypatch.setattr(targets, "deconvolve", _diverge)
    d = targets.analyse_target(t, smoke_gaussian_prior, prior_samples=prior_x, progress=False)
    assert d.result is None and "forced divergence" in d.error and d.agreement is None
    assert "forced divergence" in d.summary()
    drow = manuscript.analysis_table_rows([d])[0]
    assert drow[5:9] == ["diverged"] * 4
    assert drow[9] == ("diverged" if with_hst else "no HST") and drow[11] == "diverged" and d.residuals is None
    assert "mean" not in d.figure_row()


def test_targets_between_splits_by_redshift(hsc_root, capsys):
    low, missing = targets.targets_between(z_max=0.5, root=hsc_root)
    high, missing_again = targets.targets_between(z_min=0.5, root=hsc_root)
    assert all(t.z < 0.5 for t in low) and all(t.z > 0.5 for t in high)
    assert sorted(t.name for t in low + high) == problem.present_targets(hsc_root)
    assert missing == missing_again == data.missing_targets(hsc_root)
    assert "targets with 0 < z < 0.5" in capsys.readouterr().out


def test_report_targets_writes_figures_and_table(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import numpy as np

    from diffdecon import paths

    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(paths, "TABLES", tmp_path / "tables")
    rng = np.random.default_rng(0)
    row = {"title": "t", "y": rng.random((3, 12, 12)), "hst": None, "error": "mmps diverged: test",
           "aperture_radius_px": 3.0}
    a = SimpleNamespace(name="t_1", z=0.2, i_mag=19.0, m=10.0, upsampling_factor=3.2, result=None, hst=None,
                        agreement=None, wall_time_s=1.0, figure_row=lambda: row)
    rows = targets.report_targets([a], "smoke", "all", "title", "tab", "caption", "tab:t", missing=["x"])
    assert rows == manuscript.analysis_table_rows([a]) and " | ".join(rows[0]) in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "all.pdf", "all.png", "hsc_target_t_1.pdf", "hsc_target_t_1.png"]
    assert r"\label{tab:t}" in (tmp_path / "tables" / "tab.tex").read_text()
