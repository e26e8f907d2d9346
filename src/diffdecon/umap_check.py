"""Mode-collapse check: UMAP projections of training images and model samples.

The paper diagnosed mode collapse with a 3D UMAP of training images and 1000 model
samples: a collapsed model's samples occupy a small part of the training manifold. Here the
projection is computed on the **galaxy-encoder features** (64-d, :mod:`diffdecon.fid`), not
on pixels, with one UMAP fitted jointly on training images and the samples of every
checkpoint shown, so that all panels share the same embedding. The figure is
:func:`diffdecon.plotting.umap_figure`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def umap_embedding(features: Sequence[np.ndarray], n_components: int = 2, seed: int = 0,
                   n_neighbors: int = 15, min_dist: float = 0.1) -> list[np.ndarray]:
    """Fit one UMAP on the concatenated feature sets ``(N_k, D)``; return each set's embedding
    ``(N_k, n_components)`` (dimensionless UMAP coordinates). Features are standardised with
    the first set's (the training set's) mean and standard deviation first."""
    import umap

    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components}")
    sets = [np.asarray(f, np.float64) for f in features]
    ref = sets[0]
    mu, sd = ref.mean(0), ref.std(0) + 1e-12
    z = np.concatenate([(f - mu) / sd for f in sets])
    n_neighbors = max(2, min(n_neighbors, len(z) - 1))
    emb = umap.UMAP(n_components=n_components, random_state=seed, n_neighbors=n_neighbors,
                    min_dist=min_dist, n_jobs=1).fit_transform(z)
    out, i = [], 0
    for f in sets:
        out.append(emb[i:i + len(f)])
        i += len(f)
    return out


def coverage(train_emb: np.ndarray, sample_emb: np.ndarray, k: int = 5) -> float:
    """Fraction of training points whose nearest sample is closer than their k-th nearest
    training neighbour (a recall-like number: low when samples cover few modes)."""
    from scipy.spatial import cKDTree

    k = max(1, min(k, len(train_emb) - 1))
    r_train = cKDTree(train_emb).query(train_emb, k=k + 1)[0][:, -1]
    d_sample = cKDTree(sample_emb).query(train_emb, k=1)[0]
    return float(np.mean(d_sample <= r_train))
