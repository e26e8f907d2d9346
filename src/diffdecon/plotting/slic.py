"""Figures of the SLIC study (notebook 07): exposures with cosmic rays, posteriors under the
two likelihoods against a sharper simulated reference, residuals per exposure, and the flux
put on the cosmic-ray footprints. Every figure is stamped as simulated where it is."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import finish_plot, mark_synthetic, to_numpy


def _show(ax, img, title, vmin=None, vmax=None, cmap="magma"):
    ax.imshow(to_numpy(img), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _asinh(img, soft):
    return np.arcsinh(to_numpy(img) / soft)


def exposures_figure(truth, exposures, cr_masks, name: str, kind: str, profile: str):
    """The truth [e-/model px] and the E exposures [e-/px] (asinh display), cosmic-ray pixels outlined."""
    E = len(exposures)
    fig, axes = plt.subplots(1, E + 1, figsize=(2.1 * (E + 1), 2.4))
    soft = float(np.percentile(np.abs(to_numpy(exposures)), 50)) + 1e-9
    _show(axes[0], _asinh(truth, soft / 4), f"truth ({kind})")
    hi = float(_asinh(exposures, soft).max())
    for e in range(E):
        _show(axes[e + 1], _asinh(exposures[e], soft), f"exposure {e + 1}", vmin=-2, vmax=hi)
        axes[e + 1].contour(to_numpy(cr_masks[e]).astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    fig.suptitle(f"{name}: dithered exposures with simulated cosmic rays (cyan) [profile {profile}]", fontsize=9)
    mark_synthetic(fig, "SIMULATED exposures, noise and cosmic rays" + ("" if kind == "synthetic" else
                                                                       f"; truth: real HST image ({name})"))
    fig.tight_layout()
    return fig


def posterior_figure(rows, profile: str):
    """One row per truth: truth, simulated JWST-like reference, then median and std of the
    posterior under SLIC and under the Gaussian likelihood (exposures with cosmic rays).

    ``rows``: dicts with ``name``, ``kind``, ``truth``, ``reference``, ``slic`` and ``gauss``
    (objects with ``median`` and ``std`` (N, N) [e-/model px])."""
    cols = ["truth", "JWST-like reference\n(simulated)", "SLIC median", "SLIC std", "Gaussian median", "Gaussian std"]
    fig, axes = plt.subplots(len(rows), 6, figsize=(11, 2.0 * len(rows) + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        soft = float(np.percentile(to_numpy(row["truth"]), 90)) / 10 + 1e-9
        hi = float(_asinh(row["truth"], soft).max())
        imgs = [row["truth"], row["reference"], row["slic"].median, None, row["gauss"].median, None]
        smax = float(max(row["slic"].std.max(), row["gauss"].std.max()))
        for c, img in enumerate(imgs):
            ax = axes[r, c]
            if img is None:
                std = row["slic"].std if c == 3 else row["gauss"].std
                _show(ax, std, cols[c] if r == 0 else "", vmin=0, vmax=smax, cmap="viridis")
            else:
                _show(ax, _asinh(img, soft), cols[c] if r == 0 else "", vmin=-1, vmax=hi)
        axes[r, 0].set_ylabel(f"{row['name']}\n({row['kind']})", fontsize=8)
    fig.suptitle(f"Posterior from 4 cosmic-ray-hit exposures, same prior, sampler, steps and seed [profile {profile}]",
                 fontsize=9)
    mark_synthetic(fig, "SIMULATED exposures and JWST-like reference; truths: synthetic galaxies and real HST images")
    fig.tight_layout()
    return fig


def residuals_figure(resid_slic, resid_gauss, cr_masks, name: str, profile: str):
    """Normalised residuals (y_e - A_e median) / sigma per exposure (columns), SLIC (top) and
    Gaussian (bottom); cosmic-ray pixels outlined."""
    E = len(resid_slic)
    fig, axes = plt.subplots(2, E, figsize=(2.1 * E, 4.4), squeeze=False)
    for row, (res, label) in enumerate(((resid_slic, "SLIC"), (resid_gauss, "Gaussian"))):
        for e in range(E):
            _show(axes[row, e], res[e], f"{label}, exposure {e + 1}", vmin=-5, vmax=5, cmap="RdBu_r")
            axes[row, e].contour(to_numpy(cr_masks[e]).astype(float), levels=[0.5], colors="k", linewidths=0.5)
    fig.suptitle(f"{name}: residuals / sigma per exposure (colour range +-5) [profile {profile}]", fontsize=9)
    mark_synthetic(fig, "SIMULATED exposures and cosmic rays")
    fig.tight_layout()
    return fig


def cr_flux_figure(names, values, profile: str):
    """Flux put on the cosmic-ray footprints relative to the cosmic-ray flux, mean +- posterior
    std, per truth (x) for each (method, data) in ``values``: {label: (means, stds)}."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(values))
    for k, (label, (m, s)) in enumerate(values.items()):
        ax.errorbar(x + (k - (len(values) - 1) / 2) * width, m, yerr=s, fmt="o", ms=4, capsize=3, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("(model - truth) flux on CR pixels\n/ cosmic-ray flux")
    return finish_plot(fig, ax, f"Flux on the cosmic-ray footprints [profile {profile}]",
                       "SIMULATED exposures and cosmic rays")
