"""What the prior's own chain still does to its x0 after each step: the chain's lookahead bias.

MMPS (:func:`diffdecon.mmps.mmps`) fits the data at each step through ``N(x0; D(x_t), V_t)``,
the Gaussian it takes for ``p(x0 | x_t)``. For an exact prior ``D(x_t) = E[x0 | x_t]``, and the
chain that continues from ``x_t`` ends, on average, at ``D(x_t)``. The trained network's chain does
not: run without data, its final draw ``x0`` holds less faint light than the ``D`` of every
earlier step predicted (quick prior, 256 chain draws, summed beyond 16 model px: -0.02 / -0.09 /
-0.19 normalised flux per band at t = 3 / 25 / 100, 10-40 % of what ``D`` holds there). A step
that fits the data with ``D`` then leaves ``x_t`` with the light the data want, and the later
steps remove part of it: the samples end below the data (the flux deficit of
``results/calibration.json``).

The remedy measured here: the data observe the chain's *final* image, so each step fits them
through ``x0 + b_t(D)`` with

    b_t(D) = E_chain[x0_final - D(x_t) | D]        (prior-space units),

tabulated by band, radius and value of ``D`` on the chain's own draws (the same chain that draws
the prior's reference samples, :func:`diffdecon.mmps.mmps_prior`), at each of its times; at the last
step ``b = 0`` by construction. A prior whose chain keeps what its denoiser predicts has
``b = 0`` within its noise (tested on a Gaussian prior), and the sampler is then unchanged.

:func:`of_prior` measures the table once per checkpoint and sampler grid and caches it with its
inputs; :class:`ChainLookahead` is the ``lookahead`` callable of :func:`diffdecon.mmps.mmps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from . import cache, paths

__all__ = ["RING_EDGES_PX", "N_BINS", "N_CHAINS", "ChainLookahead", "measure", "of_prior"]

RING_EDGES_PX: tuple[float, ...] = (0.0, 3.0, 6.0, 9.0, 12.0, 16.0, 20.0, 25.0, 32.0)
"""Inner edges of the rings about the image centre [model px of a 64 px image; scaled with the
image's side]; the last ring runs to the corners."""

N_BINS: int = 16
"""Bins in the value of ``D`` per time and band (edges at its quantiles over the first batch of draws)."""

N_CHAINS: int = 256
"""Chain draws the cached table of :func:`of_prior` is measured on (at most; four times the
profile's ``n_prior`` where that is fewer: 32 under smoke)."""

MIN_COUNT: int = 64
"""A cell (time, band, ring, bin) with fewer pixels takes its ring's mean at that time and band."""


def _rings(H: int, W: int) -> torch.Tensor:
    """Ring index of every pixel, (H, W) int64, by distance from the centre (in px of a 64 px
    image: :data:`RING_EDGES_PX`)."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    r = ((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2).sqrt() * 64.0 / max(H, W)
    return torch.bucketize(r, torch.tensor(RING_EDGES_PX[1:], dtype=torch.float64), right=True)


@dataclass
class ChainLookahead:
    """``b_t(D)`` on the chain's times: ``times`` (K,) diffusion times of the chain (descending to
    0: the grid of ``mmps`` with the same steps and spacing), ``edges`` (K, C, N_BINS - 1)
    bin edges in ``D`` [prior space], ``table`` (K, C, rings, N_BINS) mean of ``x0_final - D``
    [prior-space units], ``count`` (K, C, rings, N_BINS) pixels behind each cell, ``identity``:
    what the table was measured on (the chain's settings and number of draws), for records;
    :func:`diffdecon.mmps.mmps` checks ``times`` against its own grid."""

    times: np.ndarray
    edges: torch.Tensor
    table: torch.Tensor
    count: torch.Tensor
    identity: dict

    def __call__(self, D: torch.Tensor, t: int) -> torch.Tensor:
        """``b_t(D)``, shaped like ``D`` (n, C, H, W), for a time ``t`` of the table's grid;
        any other ``t`` is refused (the lookahead depends on the steps that remain)."""
        hit = np.flatnonzero(self.times == int(t))
        if hit.size != 1:
            raise ValueError(f"t={t!r} is not a time of this lookahead table (measured on the chain's grid "
                             f"{self.times.tolist()}): measure it for the sampler's steps and spacing")
        k = int(hit[0])
        n, C, H, W = D.shape
        if C != self.table.shape[1]:
            raise ValueError(f"D has {C} bands; the lookahead table {self.table.shape[1]}")
        ring = _rings(H, W).to(D.device).expand(n, H, W)
        out = torch.empty_like(D)
        for c in range(C):
            b = torch.bucketize(D[:, c].contiguous(), self.edges[k, c].to(D.device, D.dtype))
            out[:, c] = self.table[k, c].to(D.device, D.dtype)[ring, b]
        return out

    def summary(self, beyond_px: float = 16.0) -> dict:
        """Per time and band, the mean of ``b`` over the pixels in the rings beyond ``beyond_px``
        (cells weighted by their counts) [prior-space units per pixel]: a record for results files."""
        first = next(i for i, e in enumerate(RING_EDGES_PX) if e >= beyond_px)  # in px of a 64 px image
        w = self.count[:, :, first:].double()
        m = (self.table[:, :, first:].double() * w).sum((-2, -1)) / w.sum((-2, -1)).clamp_min(1)
        return {"times": self.times.tolist(), "mean_beyond_px": beyond_px, "b_mean": m.tolist()}


class _Tally:
    """Sums behind the table, filled step by step: per (time, band, ring, bin) the sum of ``D``,
    of the chain's final image and the pixel count. Only each step's cell index (uint8) is kept
    until the chain ends, so a long chain of large images fits in memory."""

    def __init__(self):
        self.edges: list[torch.Tensor] = []  # per step (C, N_BINS - 1), from the first batch
        self.times: list[int] = []
        self.sum_D = self.sum_F = self.count = self.rings = None
        self.cells: list[torch.Tensor] = []

    def step(self, D: torch.Tensor, t: int) -> None:
        k = len(self.cells)
        D = D.detach().double().cpu()
        n, C, H, W = D.shape
        if self.rings is None:
            self.rings = _rings(H, W)
            self.n_ring = int(self.rings.max()) + 1
        if k == len(self.edges):  # the first batch sets this step's bin edges
            q = torch.linspace(0, 1, N_BINS + 1, dtype=torch.float64)[1:-1]
            self.edges.append(torch.stack([torch.quantile(D[:, c].flatten()[::7], q) for c in range(C)]))
            self.times.append(int(t))
            shape = (len(self.edges), C, self.n_ring * N_BINS)
            self.sum_D = _grow(self.sum_D, shape, torch.float64)
            self.sum_F = _grow(self.sum_F, shape, torch.float64)
            self.count = _grow(self.count, shape, torch.int64)
        cell = torch.stack([self.rings * N_BINS + torch.bucketize(D[:, c].contiguous(), self.edges[k][c])
                            for c in range(C)], 1)  # (n, C, H, W)
        for c in range(C):
            self.sum_D[k, c] += torch.bincount(cell[:, c].flatten(), D[:, c].flatten(), minlength=self.sum_D.shape[-1])
            self.count[k, c] += torch.bincount(cell[:, c].flatten(), minlength=self.count.shape[-1])
        self.cells.append(cell.to(torch.uint8))

    def finish(self, final: torch.Tensor) -> None:
        final = final.detach().double().cpu()
        for k, cell in enumerate(self.cells):
            for c in range(final.shape[1]):
                self.sum_F[k, c] += torch.bincount(cell[:, c].flatten().long(), final[:, c].flatten(),
                                                   minlength=self.sum_F.shape[-1])
        self.cells = []


def _grow(a: torch.Tensor | None, shape: tuple, dtype) -> torch.Tensor:
    """``a`` zero-padded along its first axis to ``shape`` (a new zero tensor when None)."""
    out = torch.zeros(shape, dtype=dtype)
    if a is not None:
        out[: a.shape[0]] = a
    return out


def measure(prior, n: int, generator: torch.Generator, chain_kwargs: dict, batch: int = 64,
            progress: bool = True) -> ChainLookahead:
    """Run ``n`` chains of :func:`diffdecon.mmps.mmps_prior` (keyword arguments ``chain_kwargs``:
    ``steps``, ``spacing``, ``covariance``, ``x0_draw``, ``last_draw``, ...) in batches of
    ``batch`` and tabulate ``x0_final - D`` at each step by band, ring and value of ``D``
    (bin edges at the quantiles of the first batch's ``D``). Cells with fewer than
    :data:`MIN_COUNT` pixels take their ring's mean. The last step's ``b`` is 0 by construction
    (its draw is the final image), and is set so."""
    from tqdm.auto import tqdm

    from .mmps import mmps_prior

    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: expected an int >= 2 (chain draws)")
    if N_BINS * len(RING_EDGES_PX) > 256:
        raise ValueError("the cell index is kept as uint8: rings x bins must stay below 256")
    tally, done = _Tally(), 0
    with tqdm(total=n, desc="lookahead chains", disable=not progress) as bar:
        while done < n:
            m = min(batch, n - done)
            with torch.no_grad():
                final = mmps_prior(prior, generator, m, progress=False, on_step=lambda D, x0, t: tally.step(D, t),
                                   **chain_kwargs)
            tally.finish(final)
            done += m
            bar.update(m)
    K, C = tally.count.shape[:2]
    shape = (K, C, tally.n_ring, N_BINS)
    sums, counts = (tally.sum_F - tally.sum_D).view(shape), tally.count.view(shape)
    ring_mean = sums.sum(-1, keepdim=True) / counts.sum(-1, keepdim=True).clamp_min(1)
    table = torch.where(counts >= MIN_COUNT, sums / counts.clamp_min(1), ring_mean)
    table[-1] = 0.0  # the last step's draw is the final image
    times = np.array(tally.times)
    identity = {"times": times.tolist(), "n_chains": n,
                **{k: v for k, v in chain_kwargs.items() if isinstance(v, (bool, int, float, str))}}
    return ChainLookahead(times, torch.stack(tally.edges), table.float(), counts, identity)


def of_prior(prior, steps: int | None = None, spacing: str | None = None, progress: bool = True) -> ChainLookahead:
    """The lookahead table of a trained prior for a sampler of ``steps`` steps with ``spacing``
    (default: the profile's) and the profile's covariance and draws (with the profile's steps,
    the chain of :func:`diffdecon.reference_samples.prior_samples`), on :data:`N_CHAINS` chain
    draws (or four times the profile's ``n_prior``, whichever is fewer) from a seed of their own; cached on disk keyed by the checkpoint's SHA-256 and those
    settings, and on the prior object."""
    from .prior import x0_trust_region

    P = prior.profile
    steps = P.sampling_steps if steps is None else int(steps)
    spacing = P.time_spacing if spacing is None else spacing
    memo = getattr(prior, "_chain_lookahead", {})
    if (steps, spacing) in memo:
        return memo[steps, spacing]
    kw = {"steps": steps, "eta": 1.0, "spacing": spacing, "covariance": P.mmps_covariance,
          "x0_draw": P.x0_draw, "last_draw": P.x0_draw and P.last_draw, "max_step": x0_trust_region(P.asinh_a)}
    seed, n_chains = P.seed + 23, min(N_CHAINS, 4 * P.n_prior)

    def compute() -> ChainLookahead:
        return measure(prior, n_chains, torch.Generator().manual_seed(seed), kw, progress=progress)

    sha = getattr(prior, "checkpoint_sha256", None)
    if not sha:
        print("[diffdecon] prior has no checkpoint hash: chain lookahead measured, not cached")
        la = compute()
    else:
        inputs = {"profile": P.name, "checkpoint_sha256": sha, "n_chains": n_chains, "seed": seed,
                  "ring_edges_px": list(RING_EDGES_PX), "n_bins": N_BINS, "min_count": MIN_COUNT, **kw}
        path = paths.cache_dir() / "chain_lookahead" / f"{P.name}-{sha[:16]}-{spacing}{steps}.pt"

        def build(tmp) -> None:
            la = compute()
            with open(tmp, "wb") as f:
                torch.save({"times": la.times.tolist(), "edges": la.edges, "table": la.table, "count": la.count,
                            "identity": json.dumps(la.identity)}, f)

        cache.cached(path, inputs, build, what="chain lookahead")
        d = torch.load(path, weights_only=True)
        la = ChainLookahead(np.array(d["times"]), d["edges"], d["table"], d["count"], json.loads(d["identity"]))
    memo[steps, spacing] = la
    prior._chain_lookahead = memo
    return la
