"""Tests of the real-target and redshift-sweep figures (diffdecon.plotting, notebooks 03-04)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from diffdecon import plotting


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title, ax.xaxis.label])


def _row(rng, sampled=True, hst=True):
    row = {"title": "t\nz = 0.2", "y": rng.random((3, 20, 20)), "hst": rng.random((20, 20)) if hst else None,
           "error": None if sampled else "mmps diverged: test", "aperture_radius_px": 4.0}
    if sampled:
        row.update(mean=rng.random((3, 16, 16)), std=rng.random((3, 16, 16)), samples=rng.random((2, 3, 16, 16)),
                   variance_ratio=rng.random((16, 16)), variance_ratio_aperture=0.123)
    return row


def test_hsc_target_figure_rows_and_messages():
    rng = np.random.default_rng(0)
    fig = plotting.hsc_target_figure([_row(rng), _row(rng, sampled=False, hst=False)], "smoke")
    assert len(fig.axes) == 2 * 7
    text = _texts(fig)
    assert "aperture 0.123" in text  # the scalar variance ratio is printed under its map
    assert "no HST for this target" in text and "sampler diverged" in text and "DIVERGED" in text
    assert text.count("sampler diverged") == 5  # every posterior panel of the diverged row says so
    plotting.plt.close(fig)
    empty = plotting.hsc_target_figure([], "smoke")
    assert "no real HSC target" in _texts(empty)
    plotting.plt.close(empty)


def test_redshift_sweep_figure_marks_threshold_and_divergence():
    z = np.array([0.1, 0.55, 1.0])
    fig = plotting.redshift_sweep_figure(z, [120, 35, 28], [0.5, 1.8, 2.3], [0.01, np.nan, 0.2], profile="quick",
                                         source="test", factor=2.0, z_cross=0.65)
    ax_up = fig.axes[1]
    horizontal = [ln for ln in ax_up.lines if np.allclose(ln.get_ydata(), 2.0)]
    vertical = [ln for ln in ax_up.lines if np.allclose(ln.get_xdata(), 0.65)]
    assert horizontal and vertical
    assert any(ln.get_label() == "diverged" for ln in fig.axes[2].lines)
    assert "SYNTHETIC" in " ".join(t.get_text() for t in fig.texts)
    plotting.plt.close(fig)
    no_cross = plotting.redshift_sweep_figure(z, [120, 35, 28], [0.3, 0.9, 1.1], [0.01, 0.02, 0.03],
                                              profile="smoke", source="test")
    assert "not reached" in no_cross.axes[1].get_title()
    plotting.plt.close(no_cross)


def test_save_target_figures_writes_one_figure_per_target_and_one_for_all(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    analyses = [SimpleNamespace(name=n, figure_row=lambda r=_row(rng): r) for n in ("a", "b")]
    written = plotting.save_target_figures(analyses, "smoke", "all", "title", directory=tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{s}.{f}" for s in ("all", "hsc_target_a", "hsc_target_b") for f in ("pdf", "png"))
    assert all(p.stat().st_size > 0 for p in written)
