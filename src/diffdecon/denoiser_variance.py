"""The diagonal covariance of ``p(x_0 | x_t)`` measured from the denoiser's own errors.

MMPS approximates ``p(x_0 | x_t)`` by ``N(D(x_t), V_t)`` (:mod:`diffdecon.mmps`). The
Tweedie covariance ``V_t = (sigma_t^2 / alpha_t) J`` needs the network's Jacobian, which a
trained network does not give symmetric; the isotropic ``V_t = c_t I`` gives every pixel the
same variance, while the prior knows the sky to ~0.02 in prior space and a galaxy's core to
~0.3. This module estimates the diagonal of ``V_t`` as the denoiser's mean squared error,
conditioned on the band and on the value of ``D`` itself (an empirical, heteroscedastic
version of the optimal reverse variance of Analytic-DPM, Bao et al. 2022):

    V_t(d, c) = E[(x_0 - D(x_t))^2 | D(x_t)_c in bin(d), band c],        x_t = alpha_t x_0 + sigma_t eps,

with ``x_0`` training images. By the law of total variance this is the average of
``Var[x_0 | x_t]`` over the pixels whose denoised value falls in the bin, i.e. what MMPS needs
where it has only ``D``. It is tabulated on a grid of diffusion times and of ``D`` values
(prior-space bins, :func:`bin_edges`, finest next to the sky) and interpolated linearly in ``log V`` between
grid times. For a Gaussian prior ``N(mu, v I)`` the table is the exact
``sigma_t^2 v / (alpha_t^2 v + sigma_t^2)`` (tested).

The errors are not independent between pixels: on the quick prior, far from any galaxy
(lags of 4-16 px) the sky errors keep a correlation of 0.04-0.18 with each other, and the
variance of their sum is 80-300 times what independent pixels would give (measured on training
images and on the prior's own draws). That is a uniform offset of the sky level per band,
which the prior does not know to the precision of one pixel, and a diagonal ``V_t`` forbids
the data to move: at high signal-to-noise the samples then lack the faint flux spread over the
whole image (the total flux of a prior draw at i = 18 lay above all four samples in 23 of 34
truths). The table therefore also holds a per-band offset variance ``lambda_t`` and MMPS uses

    V_t = diag(V_t(D)) + lambda_t 1 1^T        (per band),
    lambda_t = (E[(sum_i e_i)^2] - E[sum_i e_i^2]) / (P (P - 1)),    e = x_0 - D(x_t),  P pixels,

the mean covariance of two different pixels' errors. For ``N(mu, v I + l 1 1^T)``
this is again the exact Tweedie covariance (tested).

One level per band is not enough: the errors are coherent over rings about the galaxy's
centre too. On the quick prior (96 training images, band i) the variance of the error summed
over an annulus (radii 0, 3, 6, 9, 12, 16, 20, 25 px) is 1.3-5 times the sum of its pixels'
squared errors in the inner annuli and 100-345 times in the outer one, 1.3-16 times what
``diag + lambda_t 1 1^T`` gives in the annuli within 16 px at every diffusion time, and the
sums of adjacent annuli are correlated by 0.4-0.9. Such a ``V_t`` keeps the light of a ring
where the prior put it: at i = 22 the samples put too much light in the core and too little
beyond 12 px (summed residuals of -3.9 and -6.0 sigma at 3-6 and 6-9 px, +5 to +34 sigma
beyond 12 px, over 33 truths drawn from the prior; ``results/calibration.json``). The table
therefore holds, per band, the
covariance ``Lambda_t`` (K x K) of the errors of two different pixels in annuli ``k`` and
``l`` (:func:`annulus_covariance`, radii :data:`ANNULI_KPC`), and MMPS with
``covariance="annuli"`` uses

    V_t = diag(V_t(D) - Lambda_t,kk) + G Lambda_t G^T        (per band),

``G`` the annulus masks (P x K, :func:`annulus_masks`; one annulus covering the image is the
offset term), inverted exactly by Woodbury (:class:`diffdecon.mmps._LowRank`). For
``N(mu, v I + G Lam G^T)`` this is the exact Tweedie covariance and MMPS samples the exact
posterior (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache, paths
from .errors import InputValueError

__all__ = ["ANNULI_KPC", "BIN_RANGE", "BIN_SOFTENING", "BIN_WIDTH", "MIN_COUNT", "annuli_px", "annulus_covariance",
           "annulus_masks", "bin_edges", "DenoiserVariance", "measure", "of_prior"]

BIN_RANGE: tuple[float, float] = (-1.6, 3.0)
"""Range of ``D`` values tabulated [prior space]; values outside use the edge bins."""
BIN_SOFTENING: float = 0.005
"""``w`` of the bin coordinate ``u = asinh((D + 1) / w)`` [prior space]: bins are uniform in
``u``, so they are ~0.001 wide next to the empty sky (``D = -1``), where most pixels are and
where a galaxy's faint outskirts must be told from the sky, and widen logarithmically."""
BIN_WIDTH: float = 0.25
"""Width of a bin in ``u`` (see :data:`BIN_SOFTENING`)."""
MIN_COUNT: int = 20
"""Pixels a bin needs to be measured; emptier bins take the value of the nearest measured one."""
N_TIMES: int = 32
"""Diffusion times of the table (quadratic spacing: dense where the noise is small)."""
N_IMAGES: int = 96
"""Training images the table of a trained prior is measured on."""
ANNULI_KPC: tuple[float, ...] = (0.0, 1.8, 3.6, 5.4, 7.2, 9.6, 12.0, 15.0, math.inf)
"""Radii of the annuli of the annulus term [kpc in the galaxy's frame, from the image centre]:
0-25 px in 3-5 px steps on the quick profile's 0.6 kpc grid, then the rest of the image."""


@dataclass(frozen=True)
class DenoiserVariance:
    """``V_t(D)`` tabulated: ``table[k, c, b]`` at time ``times[k]``, band ``c``, bin ``b``
    of ``edges`` [prior-space units^2], the offset variance ``offset[k, c]``
    (``lambda_t``, module docstring) [prior-space units^2]; ``offset`` None: no offset term;
    and the annulus covariance ``annulus_cov[k, c]`` (``Lambda_t``, K x K, module docstring)
    [prior-space units^2] of the annuli whose radii are ``annuli`` [model px, from the image
    centre; 0 first, inf last]; None: no annulus term. :meth:`lowrank_at` gives the annulus
    term when there is one (the offset term is its one-annulus special case) and the offset
    term otherwise; MMPS's ``covariance="empirical"`` drops the annulus term
    (:meth:`without_annuli`), ``"annuli"`` uses it."""

    times: torch.Tensor  # int64 (T,), increasing
    edges: torch.Tensor  # float64 (B + 1,)
    table: torch.Tensor  # float64 (T, C, B)
    offset: torch.Tensor | None = None  # float64 (T, C)
    annuli: tuple[float, ...] | None = None  # (K + 1,) [px]
    annulus_cov: torch.Tensor | None = None  # float64 (T, C, K, K)

    def _time_weight(self, t: int) -> tuple[int, float]:
        """Grid index ``k`` and weight ``w`` of time ``t`` between ``times[k]`` and ``times[k + 1]``
        (held at the ends)."""
        k = int(torch.searchsorted(self.times, torch.tensor(int(t)), right=True)) - 1
        k = min(max(k, 0), len(self.times) - 2)
        t0, t1 = float(self.times[k]), float(self.times[k + 1])
        return k, min(max((float(t) - t0) / (t1 - t0), 0.0), 1.0)

    def without_annuli(self) -> "DenoiserVariance":
        """The same table without its annulus term (MMPS then uses the offset term)."""
        return DenoiserVariance(self.times, self.edges, self.table, self.offset)

    def offset_at(self, t: int) -> torch.Tensor | None:
        """``lambda_t`` per band (C,) at time ``t``, linear between grid times [prior-space
        units^2]; None when the table has no offset term."""
        if self.offset is None:
            return None
        k, w = self._time_weight(t)
        return (1 - w) * self.offset[k] + w * self.offset[k + 1]

    def lowrank_at(self, t: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(G, Lambda_t)`` of the low-rank term ``G Lambda_t G^T`` of ``V_t`` for images of
        ``shape`` (H, W) [px]: the annulus masks (K, H, W) and ``Lambda_t`` (C, K, K), linear
        between grid times [prior-space units^2]; with no annulus term the offset term
        (``G = 1``, ``Lambda_t = lambda_t``); None with neither."""
        k, w = self._time_weight(t)
        if self.annulus_cov is not None:
            return (annulus_masks(self.annuli, shape),
                    (1 - w) * self.annulus_cov[k] + w * self.annulus_cov[k + 1])
        lam = self.offset_at(t)
        return None if lam is None else (torch.ones(1, *shape, dtype=torch.float64), lam.view(-1, 1, 1))

    def __call__(self, D: torch.Tensor, t: int) -> torch.Tensor:
        """Variance of each pixel of ``D`` (N, C, H, W) at time ``t`` [prior-space units^2]."""
        C = D.shape[1]
        if C != self.table.shape[1]:
            raise InputValueError("D's bands", C, f"{self.table.shape[1]} bands, as the table")
        k, w = self._time_weight(t)
        logv = (1 - w) * self.table[k].log() + w * self.table[k + 1].log()  # (C, B)
        # the table lives on the CPU; the lookup runs on D's device (a network's, e.g. a GPU)
        edges = self.edges[1:-1].contiguous().to(D.device)
        b = torch.bucketize(D.detach().double(), edges).clamp(0, logv.shape[1] - 1)
        return logv.exp().to(device=D.device, dtype=D.dtype)[torch.arange(C, device=D.device).view(1, C, 1, 1), b]

    def to_dict(self) -> dict:
        return {"times": self.times.tolist(), "edges": self.edges.tolist(), "table": self.table.tolist(),
                "offset": None if self.offset is None else self.offset.tolist(),
                "annuli": None if self.annuli is None else list(self.annuli),
                "annulus_cov": None if self.annulus_cov is None else self.annulus_cov.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserVariance":
        off, ann, cov = d.get("offset"), d.get("annuli"), d.get("annulus_cov")
        return cls(torch.tensor(d["times"], dtype=torch.long), torch.tensor(d["edges"], dtype=torch.float64),
                   torch.tensor(d["table"], dtype=torch.float64),
                   None if off is None else torch.tensor(off, dtype=torch.float64),
                   None if ann is None else tuple(float(a) for a in ann),
                   None if cov is None else torch.tensor(cov, dtype=torch.float64))


def annulus_masks(annuli, shape: tuple[int, int]) -> torch.Tensor:
    """Indicator images (K, H, W), float64, of the annuli ``annuli[k] <= r < annuli[k + 1]``
    [px], ``r`` the distance of a pixel's centre from the image centre ``((H - 1) / 2, (W - 1) / 2)``;
    ``annuli`` starts at 0 and ends at inf, so the masks tile the image."""
    a = [float(v) for v in annuli]
    if len(a) < 2 or a[0] != 0.0 or a[-1] != math.inf or any(b <= c for c, b in zip(a, a[1:])):
        raise InputValueError("annuli", a, "increasing radii [px] from 0 to inf, at least two")
    H, W = shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r = torch.hypot(yy - (H - 1) / 2, xx - (W - 1) / 2)
    return torch.stack([((r >= lo) & (r < hi)).double() for lo, hi in zip(a, a[1:])])


def annulus_covariance(err: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``Lambda`` (C, K, K) of errors ``err`` (N, C, H, W) [prior-space units] and annulus masks
    ``G`` (K, H, W) (module docstring): the mean covariance of the errors of two different
    pixels, one in annulus ``k`` and one in ``l``,
    ``(E[s_k s_l] - delta_kl E[sum_{i in k} e_i^2]) / (n_k n_l - delta_kl n_k)``, ``s_k`` the
    error summed over annulus ``k`` and ``n_k`` its pixel count, projected onto the positive
    semi-definite matrices (negative eigenvalues set to 0); empty annuli get 0."""
    err = err.double()
    s = torch.einsum("nchw,khw->nck", err, G)
    second = torch.einsum("nci,ncj->cij", s, s) / err.shape[0]
    own = torch.einsum("nchw,khw->ck", err**2, G) / err.shape[0]
    n = G.sum((-2, -1))
    pairs = (n[:, None] * n[None, :] - torch.diag(n)).clamp_min(1.0)  # pixel pairs i != j of annuli k, l
    lam = (second - torch.diag_embed(own)) / pairs
    lam = 0.5 * (lam + lam.transpose(-1, -2))
    ew, ev = torch.linalg.eigh(lam)
    return ev @ torch.diag_embed(ew.clamp_min(0.0)) @ ev.transpose(-1, -2)


def bin_edges() -> torch.Tensor:
    """Edges of the ``D`` bins [prior space], float64, increasing (see :data:`BIN_SOFTENING`)."""
    u0, u1 = (math.asinh((v + 1.0) / BIN_SOFTENING) for v in BIN_RANGE)
    u = torch.linspace(u0, u1, int(math.ceil((u1 - u0) / BIN_WIDTH)) + 1, dtype=torch.float64)
    return -1.0 + BIN_SOFTENING * torch.sinh(u)


def _bin_means(err2: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Mean of ``err2`` per bin, the nearest measured bin's where fewer than MIN_COUNT pixels."""
    s = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, err2)
    cnt = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(err2))
    good = torch.nonzero(cnt >= MIN_COUNT).flatten()
    if good.numel() == 0:
        raise InputValueError("images", f"{int(cnt.sum())} pixels", f"at least {MIN_COUNT} pixels in one bin")
    nearest = good[(torch.arange(n_bins)[:, None] - good[None]).abs().argmin(1)]
    return (s / cnt.clamp_min(1))[nearest]


@torch.no_grad()
def measure(prior, x0: torch.Tensor, times, generator: torch.Generator, progress: bool = True,
            annuli=None) -> DenoiserVariance:
    """Tabulate ``V_t`` (module docstring) from prior-space images ``x0`` (N, C, H, W) at the
    diffusion ``times`` (ints in [0, T)), with one noise draw per image and time from
    ``generator``; with ``annuli`` (radii [px], 0 to inf, :func:`annulus_masks`) also the
    annulus covariance ``Lambda_t``. ``prior`` follows the contract of :mod:`diffdecon.samplers`."""
    from .samplers import _alphas_cumprod, _prior_dtype_device, _time_batch

    times = torch.as_tensor(sorted(set(int(t) for t in times)), dtype=torch.long)
    abar = _alphas_cumprod(prior)
    if len(times) < 2 or times[0] < 0 or times[-1] >= len(abar):
        raise InputValueError("times", times.tolist(), f"at least two distinct ints in [0, {len(abar)})")
    x0 = torch.as_tensor(x0)
    if x0.ndim != 4 or x0.shape[0] < 1:
        raise InputValueError("x0 shape", tuple(x0.shape), "(N, C, H, W) prior-space images")
    x0 = x0.to(_prior_dtype_device(prior)[1])  # the network's device; the table is made on the CPU
    edges = bin_edges()
    n_bins, C = len(edges) - 1, x0.shape[1]
    table = torch.empty(len(times), C, n_bins, dtype=torch.float64)
    offset = torch.empty(len(times), C, dtype=torch.float64)
    n_pix = x0.shape[-2] * x0.shape[-1]
    G = None if annuli is None else annulus_masks(annuli, tuple(x0.shape[-2:]))
    ann_cov = None if G is None else torch.empty(len(times), C, len(G), len(G), dtype=torch.float64)
    for k, t in enumerate(tqdm(times.tolist(), desc="denoiser variance", disable=not progress, leave=False)):
        a = float(abar[t])
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        D = prior.x0_hat(a**0.5 * x0 + (1 - a) ** 0.5 * eps, _time_batch(t, x0.shape[0], x0.device)).double().cpu()
        err2 = (x0.double().cpu() - D) ** 2  # tabulated on the CPU, whatever the network's device
        bins = torch.bucketize(D, edges[1:-1].contiguous()).clamp(0, n_bins - 1)
        for c in range(C):
            table[k, c] = _bin_means(err2[:, c].flatten(), bins[:, c].flatten(), n_bins)
        # lambda_t: mean covariance of two different pixels' errors (module docstring)
        sum_e = (x0.double().cpu() - D).sum((-2, -1))  # (N, C)
        offset[k] = ((sum_e**2 - err2.sum((-2, -1))).mean(0) / (n_pix * (n_pix - 1))).clamp_min(0.0)
        if G is not None:
            ann_cov[k] = annulus_covariance(x0.double().cpu() - D, G)
    return DenoiserVariance(times, edges, table.clamp_min(torch.finfo(torch.float32).tiny), offset,
                            None if annuli is None else tuple(float(a) for a in annuli), ann_cov)


def _cache_path(profile: str, sha: str) -> Path:
    return paths.cache_dir() / "denoiser_variance" / f"{profile}-{sha[:16]}-n{N_IMAGES}-k{N_TIMES}-asinh-annuli.json"


def annuli_px(pixel_scale_kpc: float) -> tuple[float, ...]:
    """:data:`ANNULI_KPC` on a grid of ``pixel_scale_kpc`` [kpc/px] -> radii [px]."""
    return tuple(r / pixel_scale_kpc for r in ANNULI_KPC)


def of_prior(prior, progress: bool = True) -> DenoiserVariance:
    """The table of a trained :class:`diffdecon.prior.DiffusionPrior`, measured on
    :data:`N_IMAGES` training images of its profile (a closed-form prior with a ``sample``
    method: its exact draws) at :data:`N_TIMES` quadratically spaced
    times; cached on disk (keyed by the checkpoint's SHA-256) and on the prior object."""
    import json

    from . import galaxies
    from .samplers import ddim_sample, has_exact_draws, timesteps

    memo = getattr(prior, "_denoiser_variance", None)
    if memo is not None:
        return memo
    P = prior.profile
    T = len(prior.schedule.alphas_cumprod)
    times = timesteps(T, min(N_TIMES, T), "quadratic")
    annuli = annuli_px(P.pixel_scale_kpc)

    def compute() -> DenoiserVariance:
        g = torch.Generator().manual_seed(P.seed + 11)
        if has_exact_draws(prior):  # a closed-form prior: its own exact draws
            x0 = prior.sample(N_IMAGES, g)
        elif hasattr(prior, "normalise"):
            ds = galaxies.build_dataset(P, split="train")
            x0, _ = prior.normalise(torch.tensor(np.array(ds.images[:N_IMAGES]), dtype=torch.float64))
        else:  # a stand-in prior without the training normalisation: its own ancestral draws
            print("[diffdecon] prior without normalise(): denoiser variance measured on its own draws")
            with torch.no_grad():
                x0 = ddim_sample(prior, N_IMAGES, g, steps=min(20, T), eta=1.0, progress=False)
        dtype = next(prior.parameters()).dtype if isinstance(prior, torch.nn.Module) else torch.float32
        return measure(prior, x0.to(dtype), times, g, progress, annuli=annuli)

    sha = getattr(prior, "checkpoint_sha256", None)
    if not sha:
        print("[diffdecon] prior has no checkpoint hash: denoiser variance measured, not cached")
        dv = compute()
    else:
        inputs = {"profile": P.name, "checkpoint_sha256": sha, "n_images": N_IMAGES, "times": times.tolist(),
                  "bin_range": list(BIN_RANGE), "bin_width": BIN_WIDTH,
                  "bin_softening": BIN_SOFTENING, "min_count": MIN_COUNT, "seed": P.seed + 11,
                  "offset": "lambda_t per band", "annuli_px": [str(a) for a in annuli]}
        path = cache.cached(_cache_path(P.name, sha), inputs,
                            lambda tmp: Path(tmp).write_text(json.dumps(compute().to_dict())),
                            what="denoiser variance")
        dv = DenoiserVariance.from_dict(json.loads(Path(path).read_text()))
    try:
        prior._denoiser_variance = dv
    except AttributeError:
        pass
    return dv
