"""Figures of the magnitude sweep: images across magnitudes, variance ratio against magnitude."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import _rgb_panel, auto_stretch, finish_plot, mark_synthetic, to_numpy


def magnitude_sweep_figure(mags, truth, observed, mean, variance_ratio, snr, vr_aperture, profile: str, source: str):
    """Appendix C: one galaxy at each magnitude (columns); rows idealized, observed,
    posterior mean and the variance-ratio map. Each column is stretched by its own flux
    (idealized and posterior mean share the idealized image's stretch), so that the
    morphology stays comparable across magnitudes; the variance-ratio maps share one scale.

    Arrays are indexed by magnitude first: ``truth``, ``mean`` (n, 3, H, W) [flux/model px],
    ``observed`` (n, 3, h, w) [flux/obs px], ``variance_ratio`` (n, H, W); ``snr`` and
    ``vr_aperture`` (n,).
    """
    n = len(mags)
    fig, axes = plt.subplots(4, n, figsize=(1.7 * n + 0.6, 7.4), squeeze=False)
    vmax = float(np.nanmax(to_numpy(variance_ratio)))
    for k in range(n):
        s_mod = auto_stretch(truth[k])
        _rgb_panel(axes[0, k], truth[k], s_mod, f"mag {mags[k]:g}\nSNR {snr[k]:.1f}")
        _rgb_panel(axes[1, k], observed[k], auto_stretch(observed[k]))
        _rgb_panel(axes[2, k], mean[k], s_mod)
        im = axes[3, k].imshow(to_numpy(variance_ratio[k]), origin="lower", cmap="magma", vmin=0, vmax=vmax)
        axes[3, k].set_xticks([])
        axes[3, k].set_yticks([])
        axes[3, k].set_xlabel(f"ratio {vr_aperture[k]:.3f}", fontsize=8)
    for r, lab in enumerate(["idealized", "observed", "posterior mean", "variance ratio"]):
        axes[r, 0].set_ylabel(lab, fontsize=8)
    fig.colorbar(im, ax=axes[3, :].ravel().tolist(), shrink=0.8, pad=0.01)
    fig.suptitle(f"Magnitude sweep [profile {profile}]", fontsize=10)
    mark_synthetic(fig, f"SYNTHETIC galaxy (GalSim); {source}")
    return fig


def variance_ratio_vs_magnitude_figure(mags, vr_mean, vr_std, published=None, single=None, profile: str = ""):
    """Variance ratio in the aperture against magnitude: mean +- std over galaxies
    (error bars), optionally one galaxy's curve (``single``) and the published values."""
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.errorbar(mags, vr_mean, yerr=vr_std, marker="o", capsize=3, label="mean $\\pm$ std over galaxies")
    if single is not None:
        ax.plot(mags, single, marker="s", ls=":", label="the single galaxy")
    if published is not None:
        ax.plot(mags, published, marker="^", ls="--", color="0.4", label="published (Table 2)")
    ax.set_xlabel("total magnitude (i) [AB]")
    ax.set_ylabel("variance ratio (aperture)")
    return finish_plot(fig, ax, f"Variance ratio vs magnitude [{profile}]",
                       "SYNTHETIC galaxies (GalSim), mock observations")
