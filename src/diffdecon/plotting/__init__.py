"""Figures: display transforms and saving into ``paper/figures``.

Functions here take arrays and return or save matplotlib figures; they hold no science.
Helpers for a particular figure live beside their siblings below (append, don't rewrite).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .. import paths
from ..arrays import to_numpy
from ..cache import atomic_path


def rgb(image, stretch: float = 0.5, q: float = 8.0, minimum: float = 0.0) -> np.ndarray:
    """A Lupton et al. (2004) asinh RGB composite of a ``(3, H, W)`` g, r, i flux image.

    Uses :func:`astropy.visualization.make_lupton_rgb` with i -> red, r -> green,
    g -> blue. ``stretch`` is in the image's flux units. Returns ``(H, W, 3)`` floats in [0, 1].
    """
    from astropy.visualization import make_lupton_rgb

    g, r, i = to_numpy(image)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero-intensity pixels are mapped to black
        return make_lupton_rgb(i, r, g, minimum=minimum, stretch=stretch, Q=q).astype(np.float64) / 255.0


def auto_stretch(image, percentile: float = 99.5) -> float:
    """A display stretch [flux units]: the ``percentile`` of the image's positive pixels."""
    a = to_numpy(image)
    pos = a[a > 0]
    return float(np.percentile(pos, percentile)) if pos.size else 1.0


def mark_synthetic(fig, text: str = "SYNTHETIC galaxies (GalSim), not TNG") -> None:
    """Stamp a figure as made from a fallback (synthetic or mock) input, on the figure itself."""
    fig.text(0.995, -0.01, text, ha="right", va="top", fontsize=7, color="crimson",
             bbox=dict(facecolor="white", alpha=0.8, edgecolor="crimson", lw=0.5))


def save_figure(fig, name: str, directory: Path | None = None, formats=("pdf", "png"), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``paper/figures/<name>.<fmt>`` atomically, then close it.

    Closing matters: an open figure prints a ``<Figure size ...>`` repr in notebooks,
    which nbval would compare.
    """
    out = []
    directory = directory or paths.FIGURES
    for fmt in formats:
        path = Path(directory) / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


def forward_operator_figure(truth, resampled, observation, *, z: float, m: float, profile: str,
                            pixel_scale_kpc: float, pixel_scale_arcsec: float, source: str):
    """The paper's Figure 1: idealized image, resampled intermediate f_{z,p}(x), observation y.

    All three are ``(3, H, W)`` g, r, i flux images; each panel has its own Lupton stretch
    (their pixel sizes differ), and the axes are labelled in their own units.
    """
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    panels = [
        (truth, f"idealized x\n{truth.shape[-1]} px at {pixel_scale_kpc} kpc/px", "kpc", pixel_scale_kpc),
        (resampled, f"resampled $f_{{z,p}}(x)$\nz = {z:.3f}, m(z,p) = {m:.1f} px", "arcsec", pixel_scale_arcsec),
        (observation, f"observation y = A(x) + $\\sigma_y$n\n{observation.shape[-1]} px at {pixel_scale_arcsec}\"/px",
         "arcsec", pixel_scale_arcsec),
    ]
    for ax, (img, title, unit, scale) in zip(axes, panels):
        half = img.shape[-1] * scale / 2
        ax.imshow(rgb(img, stretch=auto_stretch(img)), origin="lower", extent=(-half, half, -half, half))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(unit)
    fig.suptitle(f"Forward operator A = PSF * f_(z,p)  [profile {profile}]", fontsize=10)
    mark_synthetic(fig, f"SYNTHETIC galaxy (GalSim); PSF and noise: {source}")
    fig.tight_layout()
    return fig


def galaxy_grid(images, ncols: int = 8, titles=None):
    """A grid of Lupton RGB composites of synthetic ``(N, 3, H, W)`` g, r, i flux images.

    Each panel is stretched by its own :func:`auto_stretch` [flux units]; ``titles`` is an
    optional list of ``N`` strings. The figure is stamped with :func:`mark_synthetic`.
    Returns the figure (save it with :func:`save_figure`, which closes it).
    """
    ims = to_numpy(images)
    if ims.ndim != 4 or ims.shape[1] != 3:
        raise ValueError(f"images must be shaped (N, 3, H, W) in bands g, r, i, got {ims.shape}")
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    if titles is not None and len(titles) != len(ims):
        raise ValueError(f"titles must have one entry per image ({len(ims)}), got {len(titles)}")
    n = len(ims)
    ncols = int(min(ncols, max(n, 1)))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows + 0.2), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides 0/0 on empty pixels
                panel = rgb(ims[k], stretch=auto_stretch(ims[k]))
            ax.imshow(panel, origin="lower", interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.15 if titles is not None else 0.03)
    mark_synthetic(fig)
    return fig


def _rgb_panel(ax, img, stretch: float, title: str | None = None) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        ax.imshow(rgb(np.clip(to_numpy(img), 0, None), stretch=stretch), origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


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
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"TARP coverage on mock observations [{profile}]", fontsize=9)
    mark_synthetic(fig, "SYNTHETIC galaxies (GalSim), mock observations")
    fig.tight_layout()
    return fig


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
    ax.legend(fontsize=7)
    ax.set_title(f"Variance ratio vs magnitude [{profile}]", fontsize=9)
    mark_synthetic(fig, "SYNTHETIC galaxies (GalSim), mock observations")
    fig.tight_layout()
    return fig


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
        top = r == 0
        _rgb_panel(axes[r, 0], row["y"], auto_stretch(row["y"]), heads[0] if top else None)
        axes[r, 0].set_ylabel(row.get("title", ""), fontsize=7)
        if row.get("mean") is None:
            for c in range(1, 6):
                _blank_panel(axes[r, c], "sampler diverged:\nno posterior", heads[c] if top else None)
        else:
            s_mod = auto_stretch(row["mean"])
            _rgb_panel(axes[r, 1], row["mean"], s_mod, heads[1] if top else None)
            samples = row["samples"]
            for k in range(2):
                _rgb_panel(axes[r, 2 + k], samples[k], s_mod, heads[2 + k] if top else None)
            std_i = to_numpy(row["std"])[-1]
            axes[r, 4].imshow(std_i, origin="lower", cmap="viridis")
            vr = to_numpy(row["variance_ratio"])
            axes[r, 5].imshow(vr, origin="lower", cmap="magma", vmin=0, vmax=max(1.0, float(np.nanmax(vr))))
            h, w = vr.shape
            axes[r, 5].add_patch(plt.Circle(((w - 1) / 2, (h - 1) / 2), row["aperture_radius_px"], fill=False,
                                            color="cyan", lw=0.8))
            axes[r, 5].set_xlabel(f"aperture {row['variance_ratio_aperture']:.3f}", fontsize=7)
            for c in (4, 5):
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
                if top:
                    axes[r, c].set_title(heads[c], fontsize=7)
        if row.get("hst") is None:
            _blank_panel(axes[r, 6], "no HST for this target", heads[6] if top else None)
        else:
            hst = to_numpy(row["hst"])
            finite = hst[np.isfinite(hst)]
            vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
            axes[r, 6].imshow(np.arcsinh(hst / (0.05 * vmax)), origin="lower", cmap="gray_r")
            axes[r, 6].set_xticks([])
            axes[r, 6].set_yticks([])
            if top:
                axes[r, 6].set_title(heads[6], fontsize=7)
        if row.get("error"):
            axes[r, 1].set_xlabel("DIVERGED", fontsize=7, color="crimson")
    fig.suptitle(f"{title} [profile {profile}]", fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.15)
    return fig


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
