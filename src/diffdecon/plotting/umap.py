"""The mode-collapse figure: UMAP embeddings of training images and samples."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..umap_check import coverage


def umap_figure(train_emb: np.ndarray, sample_embs: dict[str, np.ndarray], title: str = ""):
    """Panels of training points (grey) and samples (colour), one per checkpoint label; 2D or 3D."""
    dim = train_emb.shape[1]
    n = len(sample_embs)
    fig = plt.figure(figsize=(3.6 * n, 3.6))
    for j, (label, s) in enumerate(sample_embs.items()):
        if dim == 3:
            ax = fig.add_subplot(1, n, j + 1, projection="3d")
            ax.scatter(*train_emb.T, s=2, c="0.6", alpha=0.5, label="training")
            ax.scatter(*s.T, s=4, c="C3", alpha=0.8, label="samples")
            ax.set_zticklabels([])
        else:
            ax = fig.add_subplot(1, n, j + 1)
            ax.scatter(*train_emb.T, s=2, c="0.6", alpha=0.5, label="training")
            ax.scatter(*s.T, s=4, c="C3", alpha=0.8, label="samples")
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_title(f"{label}\ncoverage {coverage(train_emb, s):.2f}", fontsize=8)
        if j == 0:
            ax.legend(fontsize=7, loc="upper left", markerscale=3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
