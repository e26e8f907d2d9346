"""Figures of the training runs: the loss curve."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import finish_plot


def training_curve_figure(log: list[dict[str, Any]], title: str = "", smooth: int = 25,
                          prediction: str = "epsilon"):
    """Loss vs step (raw and running mean over ``smooth`` steps); returns the figure.

    ``prediction`` ("epsilon" or "v", :attr:`Profile.prediction`) names the regression
    target on the loss axis (dimensionless: images are in the [-1, 1] prior space).
    """
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, loss, lw=0.5, alpha=0.4, color="0.4", label="per step")
    if len(loss) >= smooth:
        k = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(loss, k, mode="valid"), lw=1.5, color="C0",
                label=f"running mean ({smooth})")
    ax.set_xlabel("optimizer step")
    target = {"epsilon": r"$\epsilon$", "v": r"$v$"}.get(prediction)
    if target is None:
        raise ValueError(f"prediction={prediction!r}: expected one of 'epsilon', 'v'")
    ax.set_ylabel(f"{target}-MSE loss")
    ax.set_yscale("log")
    return finish_plot(fig, ax, title, fontsize=8)
