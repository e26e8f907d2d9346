"""Figures of the conditional study (notebook 06): candidates, validity, the CVAE sweep.

Images are peak-normalised linear flux on [0, 1] (the study's clean-image scale), shown with
an asinh stretch; residuals ``Pi * x_hat - y`` in units of the noise ``sigma_y``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import mark_synthetic, to_numpy


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def candidates_figure(truth, observation, psf, samples: dict, sigma_y: float, n_show: int = 3,
                      profile: str = ""):
    """Truth ``x`` and observation ``y`` ``(1, H, W)``, then for each arm (rows) ``n_show``
    candidates and the normalised residual of the first, ``(Pi * x_hat - y) / sigma_y``.
    ``samples`` maps an arm to ``(n, 1, H, W)``; ``psf`` ``(k, k)``."""
    import torch
    from matplotlib.colors import AsinhNorm

    from ..conditional import convolve

    names = list(samples)
    fig, axes = plt.subplots(len(names), n_show + 3, figsize=(1.3 * (n_show + 3), 1.35 * len(names) + 0.4),
                             squeeze=False)
    norm = AsinhNorm(linear_width=0.02, vmin=0, vmax=1)
    for ax in axes.flat:
        _blank(ax)
    im = None
    for r, name in enumerate(names):
        s = torch.as_tensor(samples[name]).float()
        axes[r, 0].imshow(to_numpy(truth).squeeze(), origin="lower", cmap="magma", norm=norm)
        axes[r, 1].imshow(to_numpy(observation).squeeze(), origin="lower", cmap="magma", norm=norm)
        for j in range(n_show):
            axes[r, 2 + j].imshow(to_numpy(s[j, 0]), origin="lower", cmap="magma", norm=norm)
        res = (convolve(s[:1], torch.as_tensor(psf)[None].float()) - torch.as_tensor(observation).float()) / sigma_y
        im = axes[r, -1].imshow(to_numpy(res[0, 0]), origin="lower", cmap="RdBu_r", vmin=-4, vmax=4)
        axes[r, 0].set_ylabel(name, fontsize=7)
    for c, t in enumerate(["truth x", "observed y"] + [f"candidate {j + 1}" for j in range(n_show)]
                          + [r"$(\Pi*\hat x - y)/\sigma_y$"]):
        axes[0, c].set_title(t, fontsize=7)
    fig.colorbar(im, ax=axes[:, -1].tolist(), fraction=0.05, pad=0.02)
    fig.suptitle(f"candidate deconvolutions of one test observation, profile {profile}", fontsize=8)
    mark_synthetic(fig)
    return fig


def retained_figure(thresholds: np.ndarray, curves: dict, threshold: float, quantile: float, profile: str = ""):
    """Percent of candidates with reduced chi^2 below a threshold, per arm (``curves`` maps an
    arm to percents at ``thresholds``), and the chi^2 threshold used (dashed)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for k, v in curves.items():
        ls = ":" if k in ("observation", "truth", "truth + noise") else "-"
        ax.plot(thresholds, v, ls=ls, lw=1.5, label=k)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=rf"$\chi^2_N/N$ {100 * quantile:g} % quantile")
    ax.set_xscale("log")
    ax.set_xlabel(r"threshold on the reduced $\chi^2 = \|\Pi * \hat x - y\|^2 / (N \sigma_y^2)$")
    ax.set_ylabel("candidates retained [%]")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(f"validity against the noise, profile {profile}", fontsize=8)
    fig.tight_layout()
    mark_synthetic(fig)
    return fig


def sweep_figure(truth, samples: dict, profile: str = ""):
    """One candidate of each CVAE of the alpha/beta sweep for the same observation (as the
    companion paper's Fig. 4); ``samples`` maps a label to ``(1, H, W)`` images."""
    from matplotlib.colors import AsinhNorm

    names = list(samples)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(1.5 * (len(names) + 1), 1.9), squeeze=False)
    norm = AsinhNorm(linear_width=0.02, vmin=0, vmax=1)
    for ax, (title, img) in zip(axes[0], [("truth x", truth)] + list(samples.items())):
        ax.imshow(to_numpy(img).squeeze(), origin="lower", cmap="magma", norm=norm)
        ax.set_title(title, fontsize=7)
        _blank(ax)
    fig.suptitle(f"CVAE candidates by (alpha, beta), profile {profile}", fontsize=8)
    mark_synthetic(fig)
    return fig
