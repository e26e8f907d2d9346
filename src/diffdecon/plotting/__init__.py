"""Figures: display transforms and saving into ``paper/figures``.

Functions here take arrays and return or save matplotlib figures; they hold no science.
This module holds the display transforms, saving and the figures of the prior; the figures
of each study live in a submodule (``conditional``, ``sweeps``, ``targets``, ``training``,
``umap``, ``validation``), and the public ones of ``sweeps``, ``targets``, ``umap`` and
``validation`` are importable from here.
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


def finish_plot(fig, ax, title: str, stamp: str | None = None, **legend):
    """Finish a one-panel plot: the legend of ``ax`` (``legend`` keywords, fontsize 7 unless
    given), its title (fontsize 9), the :func:`mark_synthetic` stamp ``stamp`` when the data
    are synthetic or simulated, and the layout. Returns ``fig``."""
    ax.legend(**{"fontsize": 7, **legend})
    ax.set_title(title, fontsize=9)
    if stamp is not None:
        mark_synthetic(fig, stamp)
    fig.tight_layout()
    return fig


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


from .sweeps import magnitude_sweep_figure, variance_ratio_vs_magnitude_figure  # noqa: E402
from .targets import hsc_target_figure, redshift_sweep_figure, save_target_figures  # noqa: E402
from .umap import umap_figure  # noqa: E402
from .validation import deconvolution_figure, residuals_figure, tarp_figure  # noqa: E402
