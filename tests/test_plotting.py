"""Tests of diffdecon.plotting: the one-panel plots finished by plotting.finish_plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from diffdecon import plotting
from diffdecon.plotting.slic import cr_flux_figure
from diffdecon.plotting.training import training_curve_figure


def _stamps(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_finish_plot_adds_legend_title_stamp_and_returns_the_figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    assert plotting.finish_plot(fig, ax, "the title", "SYNTHETIC test") is fig
    assert ax.get_title() == "the title" and ax.title.get_fontsize() == 9
    assert _legend(ax) == ["a line"] and ax.get_legend().get_texts()[0].get_fontsize() == 7
    assert _stamps(fig) == ["SYNTHETIC test"]
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="b")
    plotting.finish_plot(fig, ax, "no stamp", fontsize=8)
    assert _stamps(fig) == [] and ax.get_legend().get_texts()[0].get_fontsize() == 8
    plt.close(fig)


@pytest.mark.parametrize("make, title, stamp", [
    (lambda: plotting.variance_ratio_vs_magnitude_figure([20, 22], [0.1, 0.3], [0.01, 0.02], published=[0.1, 0.2],
                                                         profile="smoke"),
     "Variance ratio vs magnitude [smoke]", "SYNTHETIC galaxies (GalSim), mock observations"),
    (lambda: plotting.tarp_figure({"MMPS": (np.linspace(0, 1, 5), np.linspace(0, 1, 5))}, "smoke"),
     "TARP coverage on mock observations [smoke]", "SYNTHETIC galaxies (GalSim), mock observations"),
    (lambda: cr_flux_figure(["a", "b"], {"SLIC": ([0.1, 0.2], [0.01, 0.02])}, "smoke"),
     "Flux on the cosmic-ray footprints [profile smoke]", "SIMULATED exposures and cosmic rays"),
    (lambda: training_curve_figure([{"step": k, "loss": 1.0 / k} for k in range(1, 40)], "run", prediction="v"),
     "run", None),
])
def test_one_panel_figures_are_finished(make, title, stamp):
    fig = make()
    (ax,) = fig.axes
    assert ax.get_title() == title
    assert ax.get_legend() is not None and _legend(ax)
    assert _stamps(fig) == ([stamp] if stamp else [])
    plt.close(fig)
