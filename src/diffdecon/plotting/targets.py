"""Figures of the real targets (the paper's Figures 4-9) and of the redshift sweep."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import _rgb_panel, auto_stretch, mark_synthetic, save_figure, to_numpy


def _blank_panel(ax, text: str, title: str | None = None) -> None:
    """An empty panel carrying a message (a missing HST image, a diverged sampler)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_box_aspect(1)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, color="crimson", wrap=True,
            transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=7)


def hsc_target_figure(rows, profile: str, title: str = "HSC targets"):
    """The paper's Figures 4-9, one row per real target, columns: observation y (Lupton RGB,
    [flux/HSC px]); posterior mean, two single posterior samples (RGB, one stretch per row
    set by the mean [flux/model px]); posterior std in the i band [flux/model px]; variance
    ratio map (posterior / prior variance, dimensionless, with the aperture drawn); HST
    resampled onto the HSC grid [HST units/HSC px] or "no HST for this target".

    ``rows``: list of dicts from :meth:`diffdecon.targets.TargetAnalysis.figure_row` with
    keys ``title``, ``y``, ``hst`` (or None), ``error`` (or None), ``aperture_radius_px``
    and, when the sampler did not diverge, ``mean``, ``std``, ``samples`` (>= 2),
    ``variance_ratio`` and ``variance_ratio_aperture``. A diverged target shows its
    observation and "sampler diverged" in the posterior panels. An empty ``rows`` gives a
    one-panel figure saying that no target was present.
    """
    if not rows:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        _blank_panel(ax, f"no real HSC target present [profile {profile}]")
        return fig
    heads = ["observation y", "posterior mean", "sample 1", "sample 2", "posterior std (i)", "variance ratio",
             "HST F814W on HSC grid"]
    fig, axes = plt.subplots(len(rows), len(heads), figsize=(1.75 * len(heads), 1.95 * len(rows) + 0.4),
                             squeeze=False)
    for r, row in enumerate(rows):
        titles = heads if r == 0 else [None] * len(heads)
        _rgb_panel(axes[r, 0], row["y"], auto_stretch(row["y"]), titles[0])
        axes[r, 0].set_ylabel(row.get("title", ""), fontsize=7)
        if row.get("mean") is None:
            for c in range(1, 6):
                _blank_panel(axes[r, c], "sampler diverged:\nno posterior", titles[c])
        else:
            _posterior_panels(axes[r, 1:6], row, titles[1:6])
        if row.get("hst") is None:
            _blank_panel(axes[r, 6], "no HST for this target", titles[6])
        else:
            hst = to_numpy(row["hst"])
            finite = hst[np.isfinite(hst)]
            vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
            axes[r, 6].imshow(np.arcsinh(hst / (0.05 * vmax)), origin="lower", cmap="gray_r")
            _bare(axes[r, 6], titles[6])
        if row.get("error"):
            axes[r, 1].set_xlabel("DIVERGED", fontsize=7, color="crimson")
    fig.suptitle(f"{title} [profile {profile}]", fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.15)
    return fig


def _posterior_panels(axes, row, titles) -> None:
    """Posterior mean, two samples (RGB, one stretch set by the mean), std of the i band and
    the variance-ratio map with its aperture, on five axes."""
    s_mod = auto_stretch(row["mean"])
    _rgb_panel(axes[0], row["mean"], s_mod, titles[0])
    for k in range(2):
        _rgb_panel(axes[1 + k], row["samples"][k], s_mod, titles[1 + k])
    axes[3].imshow(to_numpy(row["std"])[-1], origin="lower", cmap="viridis")
    vr = to_numpy(row["variance_ratio"])
    axes[4].imshow(vr, origin="lower", cmap="magma", vmin=0, vmax=max(1.0, float(np.nanmax(vr))))
    h, w = vr.shape
    axes[4].add_patch(plt.Circle(((w - 1) / 2, (h - 1) / 2), row["aperture_radius_px"], fill=False, color="cyan",
                                 lw=0.8))
    axes[4].set_xlabel(f"aperture {row['variance_ratio_aperture']:.3f}", fontsize=7)
    for ax, title in zip(axes[3:5], titles[3:5]):
        _bare(ax, title)


def _bare(ax, title: str | None) -> None:
    """No ticks; the column title on the first row."""
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def redshift_sweep_figure(z, m, upsampling, vr_aperture, *, profile: str, source: str, factor: float = 2.0,
                          z_cross: float | None = None):
    """The redshift sweep: m(z, p) [HSC px], the upsampling factor ``image_size / m`` and the
    aperture variance ratio (dimensionless) against z, for one synthetic galaxy. A horizontal
    line marks the upsampling factor ``factor`` and, when given, a vertical line the
    redshift ``z_cross`` where it is reached (from :func:`diffdecon.sweeps.upsampling_crossing`).
    NaN variance ratios (diverged samplers) are drawn as red crosses on the axis.
    """
    z, m, up, vr = (to_numpy(a) for a in (z, m, upsampling, vr_aperture))
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2))
    axes[0].plot(z, m, "o-")
    axes[0].set_ylabel("m(z, p) [HSC px]")
    axes[1].plot(z, up, "o-")
    axes[1].axhline(factor, color="crimson", ls="--", lw=1, label=f"upsampling = {factor:g}")
    axes[1].set_ylabel("upsampling factor N / m")
    ok = np.isfinite(vr)
    axes[2].plot(z[ok], vr[ok], "o-")
    if (~ok).any():
        axes[2].plot(z[~ok], np.zeros((~ok).sum()), "x", color="crimson", label="diverged")
    axes[2].set_ylabel("variance ratio (aperture)")
    for ax in axes:
        ax.set_xlabel("redshift z")
        if z_cross is not None:
            ax.axvline(z_cross, color="crimson", ls=":", lw=1, label=f"z = {z_cross:.2f}" if ax is axes[1] else None)
    axes[1].legend(fontsize=7)
    if (~ok).any():
        axes[2].legend(fontsize=7)
    if z_cross is None:
        axes[1].set_title(f"factor {factor:g} not reached for z <= {z.max():.1f}", fontsize=8)
    fig.suptitle(f"One galaxy from z = {z.min():.1f} to {z.max():.1f} [profile {profile}]", fontsize=10)
    mark_synthetic(fig, f"SYNTHETIC galaxy (GalSim), mock observations; PSF and noise: {source}")
    fig.tight_layout()
    return fig


def save_target_figures(analyses, profile: str, name: str, title: str, directory=None) -> list:
    """Save :func:`hsc_target_figure` of all ``analyses`` (:class:`diffdecon.targets.TargetAnalysis`)
    as ``name`` and of each alone as ``hsc_target_<target name>`` (in ``directory``, default
    ``paper/figures``); returns the paths written."""
    written = save_figure(hsc_target_figure([a.figure_row() for a in analyses], profile, title=title), name,
                          directory)
    for a in analyses:
        written += save_figure(hsc_target_figure([a.figure_row()], profile, title=f"HSC {a.name}"),
                               f"hsc_target_{a.name}", directory)
    return written
