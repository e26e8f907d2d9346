"""Figures of the mock validation: reconstructions, residuals, TARP coverage."""

from __future__ import annotations

import matplotlib.pyplot as plt

from . import _rgb_panel, auto_stretch, finish_plot, mark_synthetic, to_numpy


def deconvolution_figure(rows, source: str, profile: str):
    """The paper's Figure 2: per mock, the observation y, the re-convolved posterior mean
    A(x0), each method's estimate on the model grid and the idealized truth.

    Parameters
    ----------
    rows : list of dicts with ``y`` (3, n, n) [flux/obs px], ``Ax`` (3, n, n) [flux/obs px],
        ``estimates`` {label: (3, H, W)} [flux/model px] and ``truth`` (3, H, W), and
        optionally ``title`` (str, e.g. the redshift).
    source : where the PSF and noise came from (stamped on the figure).
    Observation-grid panels share one stretch per row, model-grid panels another (their
    pixel sizes differ).
    """
    if not rows:
        raise ValueError("rows is empty; accepted: at least one mock")
    labels = list(rows[0]["estimates"])
    ncols = 3 + len(labels)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.75 * ncols, 1.85 * len(rows) + 0.3), squeeze=False)
    for r, row in enumerate(rows):
        s_obs, s_mod = auto_stretch(row["y"]), auto_stretch(row["truth"])
        top = r == 0
        _rgb_panel(axes[r, 0], row["y"], s_obs, "observation y" if top else None)
        _rgb_panel(axes[r, 1], row["Ax"], s_obs, f"A(x0), {labels[0]}" if top else None)
        for c, lab in enumerate(labels):
            _rgb_panel(axes[r, 2 + c], row["estimates"][lab], s_mod, lab if top else None)
        _rgb_panel(axes[r, -1], row["truth"], s_mod, "idealized truth" if top else None)
        if row.get("title"):
            axes[r, 0].set_ylabel(row["title"], fontsize=8)
    fig.suptitle(f"Deconvolution of mock observations [profile {profile}]", fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.08)
    mark_synthetic(fig, f"SYNTHETIC galaxies (GalSim), mock observations; PSF and noise: {source}")
    return fig


def residuals_figure(rows, profile: str, band: int = 2):
    """The paper's Figure 3: per mock and method, the normalised data residual
    (y - A(x_hat)) / sigma_y (observation grid) and the error x_hat - x_true (model grid, in
    units of the truth's peak) in one band (default 2 = i).

    ``rows``: list of dicts with ``residuals`` {label: (3, n, n) [sigma units]} and
    ``errors`` {label: (3, H, W) [fraction of the truth's peak]}, optional ``title``. Colour
    ranges are fixed: +-4 sigma for the residuals, +-0.25 of the peak for the errors.
    """
    if not rows:
        raise ValueError("rows is empty; accepted: at least one mock")
    labels = list(rows[0]["residuals"])
    n = len(labels)
    fig, axes = plt.subplots(len(rows), 2 * n, figsize=(1.6 * 2 * n + 0.8, 1.75 * len(rows) + 0.5), squeeze=False)
    emax = 0.25  # fixed colour range (25 % of the truth's peak), so one diverged method cannot flatten the rest
    for r, row in enumerate(rows):
        for c, lab in enumerate(labels):
            a = axes[r, c]
            im_r = a.imshow(to_numpy(row["residuals"][lab])[band], origin="lower", cmap="RdBu_r", vmin=-4, vmax=4)
            b = axes[r, n + c]
            im_e = b.imshow(to_numpy(row["errors"][lab])[band], origin="lower", cmap="PuOr_r", vmin=-emax, vmax=emax)
            for ax in (a, b):
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                a.set_title(f"{lab}\n(y - A x)/$\\sigma_y$", fontsize=7)
                b.set_title(f"{lab}\n(x - truth)/peak", fontsize=7)
        if row.get("title"):
            axes[r, 0].set_ylabel(row["title"], fontsize=8)
    fig.colorbar(im_r, ax=axes[:, :n].ravel().tolist(), shrink=0.8, pad=0.01)
    fig.colorbar(im_e, ax=axes[:, n:].ravel().tolist(), shrink=0.8, pad=0.01)
    fig.suptitle(f"Residuals, band index {band} [profile {profile}]", fontsize=10)
    mark_synthetic(fig, "SYNTHETIC galaxies (GalSim), mock observations")
    return fig


def tarp_figure(curves, profile: str):
    """Expected coverage probability against credibility level (TARP), one line per sampler.

    ``curves``: {label: (alpha, ecp)}. The diagonal is calibrated; below it over-confident.
    """
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
    for lab, (alpha, ecp) in curves.items():
        ax.plot(to_numpy(alpha), to_numpy(ecp), lw=1.5, label=lab)
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return finish_plot(fig, ax, f"TARP coverage on mock observations [{profile}]",
                       "SYNTHETIC galaxies (GalSim), mock observations", fontsize=8, loc="upper left")
