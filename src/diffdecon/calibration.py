"""Calibration: a closed-form Gaussian diffusion prior, the exact linear-Gaussian
posterior, Gaussian W2 distances, TARP coverage, per-pixel interval coverage and chi^2.

The Gaussian prior lets every sampler be checked against an exact answer (FACTS section 4):
for x0 ~ N(mu, Sigma) and y = A x0 + n, n ~ N(0, Sigma_y), the posterior is Gaussian with

    Sigma_post = (Sigma^-1 + A^T Sigma_y^-1 A)^-1
    mu_post    = mu + Sigma A^T (A Sigma A^T + Sigma_y)^-1 (y - A mu).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .arrays import to_numpy

__all__ = [
    "GaussianPrior",
    "exact_posterior",
    "gaussian_w2",
    "whitened_chi2",
    "tarp_coverage",
    "interval_coverage",
    "reduced_chi2",
    "se_covariance",
    "blur_downsample_matrix",
    "blurred_observation",
    "posterior_moment_errors",
]


def _as_t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=torch.float64)


class GaussianPrior:
    """Closed-form diffusion prior for x0 ~ N(mu, Sigma) under the VP process
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    Since x_t | x0 is Gaussian, x_t ~ N(sqrt(abar) mu, abar Sigma + (1 - abar) I) and

        D(x_t) = E[x0 | x_t] = mu + sqrt(abar) Sigma (abar Sigma + (1-abar) I)^-1 (x_t - sqrt(abar) mu)
        score(x_t) = -(abar Sigma + (1-abar) I)^-1 (x_t - sqrt(abar) mu)
        eps(x_t) = -sqrt(1 - abar) score(x_t).

    With Sigma = U diag(lam) U^T these are diagonal in the eigenbasis, so one call costs
    two matrix products. Meant for small images (d = C*H*W up to ~1000).

    Parameters
    ----------
    mu : (d,) or (C, H, W) prior mean [prior-space units].
    Sigma : (d, d) prior covariance, symmetric positive semi-definite.
    shape : (C, H, W), optional; default ``(1, 1, d)`` or ``mu.shape`` when 3-D.
    schedule : object with ``alphas_cumprod``; default the cosine schedule with T = 1000.
    dtype : dtype of the tensors the methods return (float64 default, exact tests).
    """

    def __init__(self, mu, Sigma, shape: Sequence[int] | None = None, schedule=None,
                 dtype: torch.dtype = torch.float64):
        mu = _as_t64(mu)
        if shape is None:
            shape = tuple(mu.shape) if mu.ndim == 3 else (1, 1, mu.numel())
        self.shape = tuple(int(s) for s in shape)
        d = math.prod(self.shape)
        self.mu = mu.reshape(d)
        Sigma = _as_t64(Sigma)
        if Sigma.shape != (d, d):
            raise ValueError(f"Sigma has shape {tuple(Sigma.shape)}: expected ({d}, {d}) for shape {self.shape}")
        if not torch.allclose(Sigma, Sigma.T, atol=1e-10 * float(Sigma.abs().max())):
            raise ValueError("Sigma is not symmetric")
        lam, U = torch.linalg.eigh(Sigma)
        if lam.min() < -1e-9 * lam.max():
            raise ValueError(f"Sigma is not positive semi-definite (min eigenvalue {float(lam.min()):.3g})")
        self.Sigma, self.lam, self.U = Sigma, lam.clamp_min(0.0), U
        # The symmetric square root Sigma^1/2 = U diag(lam)^1/2 U^T is unique, while U is not where
        # eigenvalues repeat (an image grid's symmetries make them repeat: 28 pairs for the 8 x 8
        # squared-exponential covariance of the exactness table), and LAPACK builds then return
        # different bases: draws through U alone would change with the build.
        self.sqrt = (U * self.lam.sqrt()) @ U.T
        if schedule is None:
            from .prior import NoiseSchedule  # the schedule type of the trained prior

            schedule = NoiseSchedule.cosine(1000)
        self.schedule = schedule
        self.abar = torch.as_tensor(self.schedule.alphas_cumprod, dtype=torch.float64)
        self.dtype, self.device = dtype, torch.device("cpu")

    @property
    def d(self) -> int:
        return self.mu.numel()

    def _coeffs(self, t: torch.Tensor):
        t = torch.as_tensor(t)
        if t.dtype not in (torch.int64, torch.int32) or t.ndim != 1:
            raise ValueError(f"t: expected an integer tensor (B,), got dtype {t.dtype} shape {tuple(t.shape)}")
        if t.min() < 0 or t.max() >= self.abar.numel():
            raise ValueError(f"t out of range [0, {self.abar.numel()})")
        a = self.abar[t.cpu()].unsqueeze(1)  # (B, 1)
        return a

    def _centred_eig(self, x_t: torch.Tensor, a: torch.Tensor):
        B = x_t.shape[0]
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}: expected (B, {self.shape})")
        if B != a.shape[0]:
            raise ValueError(f"t has {a.shape[0]} entries for a batch of {B}")
        u = x_t.reshape(B, -1).to(torch.float64) - a.sqrt() * self.mu  # x_t - sqrt(abar) mu
        return u @ self.U  # eigen-coordinates

    def _out(self, v: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return v.reshape(x_t.shape).to(x_t.dtype if x_t.is_floating_point() else self.dtype)

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie / posterior mean E[x0 | x_t] (exact), same shape as x_t."""
        a = self._coeffs(t)
        w = self._centred_eig(x_t, a)
        g = a.sqrt() * self.lam / (a * self.lam + 1.0 - a)
        return self._out(self.mu + (w * g) @ self.U.T, x_t)

    def score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_{x_t} log p_t(x_t) (exact)."""
        a = self._coeffs(t)
        w = self._centred_eig(x_t, a)
        return self._out(-(w / (a * self.lam + 1.0 - a)) @ self.U.T, x_t)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction eps = -sqrt(1 - abar_t) score (exact)."""
        a = self._coeffs(t)
        return -(1.0 - a).sqrt().reshape(-1, 1, 1, 1).to(x_t.dtype) * self.score(x_t, t)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact draws ``mu + Sigma^1/2 z`` from N(mu, Sigma), shape (n, *shape), with the symmetric
        square root: the same draws for a given generator whatever eigenbasis LAPACK returns."""
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (self.mu + z @ self.sqrt).reshape(n, *self.shape).to(self.dtype)


# ------------------------------------------------------------------ exact posterior


def _sigma_y_matrix(sigma_y, m: int) -> torch.Tensor:
    s = _as_t64(sigma_y)
    if s.ndim == 0 or s.numel() == 1:
        return float(s) ** 2 * torch.eye(m, dtype=torch.float64)
    if s.ndim == 1 and s.numel() == m:
        return torch.diag(s**2)
    if s.shape == (m, m):
        return s
    raise ValueError(
        f"sigma_y with shape {tuple(s.shape)}: expected a scalar std, a ({m},) vector of stds "
        f"or a ({m}, {m}) covariance Sigma_y"
    )


def exact_posterior(mu, Sigma, A_matrix, sigma_y, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior N(mu_post, Sigma_post) of x0 ~ N(mu, Sigma), y = A x0 + n, n ~ N(0, Sigma_y).

    Sigma_post = (Sigma^-1 + A^T Sigma_y^-1 A)^-1, written in the equivalent form that needs
    no inverse of Sigma (Woodbury): Sigma_post = Sigma - K A Sigma, K = Sigma A^T S^-1,
    S = A Sigma A^T + Sigma_y; mu_post = mu + K (y - A mu).

    Parameters
    ----------
    mu : (d,) prior mean; Sigma : (d, d) prior covariance [prior units].
    A_matrix : (m, d) linear forward operator.
    sigma_y : scalar or (m,) noise std, or (m, m) noise covariance [observation units].
    y : (m,) observation (any shape with m entries).

    Returns
    -------
    (mu_post (d,), Sigma_post (d, d)), float64.
    """
    mu, Sigma, A = _as_t64(mu).flatten(), _as_t64(Sigma), _as_t64(A_matrix)
    d = mu.numel()
    if Sigma.shape != (d, d) or A.ndim != 2 or A.shape[1] != d:
        raise ValueError(f"shapes mu {tuple(mu.shape)}, Sigma {tuple(Sigma.shape)}, A {tuple(A.shape)} are inconsistent")
    m = A.shape[0]
    y = _as_t64(y).flatten()
    if y.numel() != m:
        raise ValueError(f"y has {y.numel()} entries: expected m = {m}")
    S = A @ Sigma @ A.T + _sigma_y_matrix(sigma_y, m)
    K = torch.linalg.solve(S, A @ Sigma).T  # Sigma A^T S^-1 (S symmetric)
    mu_post = mu + K @ (y - A @ mu)
    Sigma_post = Sigma - K @ A @ Sigma
    return mu_post, 0.5 * (Sigma_post + Sigma_post.T)


def _sqrtm_psd(M: torch.Tensor) -> torch.Tensor:
    lam, U = torch.linalg.eigh(0.5 * (M + M.T))
    return (U * lam.clamp_min(0).sqrt()) @ U.T


def gaussian_w2(mu1, S1, mu2, S2) -> float:
    """2-Wasserstein distance between N(mu1, S1) and N(mu2, S2) [units of x]:

    W2^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2).
    """
    mu1, mu2, S1, S2 = (_as_t64(v) for v in (mu1, mu2, S1, S2))
    r2 = _sqrtm_psd(S2)
    cross = _sqrtm_psd(r2 @ S1 @ r2)
    w2sq = ((mu1.flatten() - mu2.flatten()) ** 2).sum() + torch.trace(S1 + S2 - 2 * cross)
    return float(w2sq.clamp_min(0).sqrt())


def whitened_chi2(samples, mu, Sigma, rcond: float = 1e-10) -> torch.Tensor:
    """Per-sample whitened squared distance (x - mu)^T Sigma^-1 (x - mu) / d [dimensionless].

    For samples of N(mu, Sigma) it has mean 1 and std sqrt(2/d). ``samples`` (n, ...) with d
    entries each. Sigma is inverted through its eigendecomposition; eigenvalues below
    ``rcond * max`` are dropped (d then counts the kept ones).
    """
    x = _as_t64(samples).flatten(1)
    mu, Sigma = _as_t64(mu).flatten(), _as_t64(Sigma)
    lam, U = torch.linalg.eigh(0.5 * (Sigma + Sigma.T))
    keep = lam > rcond * lam.max()
    w = ((x - mu) @ U[:, keep]) / lam[keep].sqrt()
    return (w**2).sum(1) / int(keep.sum())


# ------------------------------------------------------------------ exact test problem


def se_covariance(side: int, ell: float = 2.0, amp: float = 0.25, nugget: float = 1e-3,
                  channels: int = 1) -> torch.Tensor:
    """Squared-exponential covariance on a side x side pixel grid plus a diagonal nugget,
    block-diagonal over ``channels`` [prior units^2]:
    K_ij = amp exp(-|p_i - p_j|^2 / (2 ell^2)) + nugget delta_ij, ``ell`` in pixels."""
    if side < 1 or ell <= 0 or amp <= 0 or nugget < 0 or channels < 1:
        raise ValueError(f"se_covariance(side={side}, ell={ell}, amp={amp}, nugget={nugget}, channels={channels}): "
                         "expected side, channels >= 1, ell, amp > 0, nugget >= 0")
    ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    p = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    K = amp * torch.exp(-torch.cdist(p, p) ** 2 / (2 * ell**2)) + nugget * torch.eye(side * side, dtype=torch.float64)
    return torch.block_diag(*[K] * channels)


def blur_downsample_matrix(side: int, blur_sigma_px: float = 1.0, factor: int = 2, channels: int = 1) -> torch.Tensor:
    """Dense operator A: separable Gaussian blur (std ``blur_sigma_px`` model px, rows
    normalised so flux is conserved away from the edges) then ``factor`` x ``factor`` block
    averaging, per channel. Returns ``(channels (side/factor)^2, channels side^2)``, float64,
    acting on images flattened in (C, H, W) order."""
    if side % factor:
        raise ValueError(f"side={side} is not a multiple of factor={factor}")
    i = torch.arange(side, dtype=torch.float64)
    G = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * blur_sigma_px**2))
    G = G / G.sum(1, keepdim=True)
    Dn = torch.zeros(side // factor, side, dtype=torch.float64)
    for k in range(side // factor):
        Dn[k, factor * k: factor * (k + 1)] = 1.0 / factor
    M = Dn @ G
    return torch.block_diag(*[torch.kron(M, M)] * channels)


def blurred_observation(prior: GaussianPrior, sigma_y: float, generator: torch.Generator):
    """A truth drawn from the one-band ``prior`` (``side`` x ``side`` model px), observed through
    :func:`blur_downsample_matrix` (1 px blur, 2 x 2 binning: ``side / 2`` px a side) with white
    noise ``sigma_y`` [prior-space units], and its exact Gaussian posterior (:func:`exact_posterior`).
    Draws the truth, then the noise, from ``generator``. Returns ``(y, forward, mu_post,
    Sigma_post)``: ``y`` (1, side/2, side/2), ``forward`` the operator on prior-space batches
    (B, 1, side, side) -> (B, 1, side/2, side/2)."""
    if len(prior.shape) != 3 or prior.shape[0] != 1 or prior.shape[1] != prior.shape[2] or prior.shape[-1] % 2:
        raise ValueError(f"prior.shape={prior.shape}: expected (1, side, side) with side even")
    side = prior.shape[-1]
    A = blur_downsample_matrix(side, 1.0, 2)
    h = side // 2
    x_true = prior.sample(1, generator)
    noise = sigma_y * torch.randn(A.shape[0], generator=generator, dtype=torch.float64)
    y = (A @ x_true.flatten() + noise).reshape(1, h, h)
    mu_post, Sigma_post = exact_posterior(prior.mu, prior.Sigma, A, sigma_y, y)

    def forward(x):
        return (A @ x.flatten(1).T).T.reshape(x.shape[0], 1, h, h)

    return y, forward, mu_post, Sigma_post


def posterior_moment_errors(samples, mu_post, Sigma_post) -> dict[str, float]:
    """Compare samples (n, ...) with the exact posterior N(mu_post, Sigma_post).

    Returns a dict: ``mean_err_max``/``mean_err_rms``: |empirical mean - mu_post| in units
    of the exact posterior std per pixel (Monte-Carlo level ~ 1/sqrt(n)); ``var_ratio``:
    mean over pixels of empirical / exact posterior variance; ``w2``: Gaussian W2 between
    the empirical (mean, covariance) and the exact posterior [prior units] (biased upward
    by the Monte-Carlo error of the empirical covariance); ``chi2``: mean whitened chi^2
    per dimension of the samples about mu_post (1 when calibrated); ``n``.
    """
    x = _as_t64(samples).flatten(1)
    mp, Sp = _as_t64(mu_post).flatten(), _as_t64(Sigma_post)
    if x.shape[1] != mp.numel():
        raise ValueError(f"samples have {x.shape[1]} entries each: expected {mp.numel()}")
    m, C = x.mean(0), torch.cov(x.T)
    z = (m - mp) / Sp.diag().sqrt()
    return {
        "n": int(x.shape[0]),
        "mean_err_max": float(z.abs().max()),
        "mean_err_rms": float(z.pow(2).mean().sqrt()),
        "var_ratio": float((C.diag() / Sp.diag()).mean()),
        "w2": gaussian_w2(m, C, mp, Sp),
        "chi2": float(whitened_chi2(x, mp, Sp).mean()),
    }


# ------------------------------------------------------------------ coverage


# Long by its docstring (24 lines): the body is checks and one call
def tarp_coverage(samples, truths, references="random", metric: str = "euclidean",
                  norm: bool = True, bootstrap: bool = False, num_bootstrap: int = 100, seed: int = 0,
                  num_alpha_bins: int | None = None):
    """TARP expected coverage (Lemos et al. 2023) via the PyPI ``tarp`` package.

    Parameters
    ----------
    samples : (n_samples, n_sims, n_dims) posterior samples (flatten images to n_dims).
    truths : (n_sims, n_dims) true parameters.
    references : ``"random"`` (``tarp``'s default: uniform in [0, 1]^n_dims, meaningful only
        for normalised parameters) or an array (n_sims, n_dims) of reference points, one per
        simulation, in the units of ``truths``; the reference of simulation k must be
        independent of truth k and its samples (e.g. another truth of the same set). With
        ``norm`` they are normalised as the truths and samples are.
    metric, norm, bootstrap, num_bootstrap : passed to ``get_tarp_coverage``.
    seed : passed to ``tarp``, which seeds numpy's global generator with it; the global
        state is restored afterwards.
    num_alpha_bins : int, optional
        Credibility bins; default ``max(1, n_sims // 10)`` (``tarp``'s own default,
        ``n_sims // 10``, is 0 and fails for fewer than 10 simulations).

    Returns
    -------
    (alpha, ecp, max_dev): credibility levels, expected coverage probability (with
    ``bootstrap``: the mean over bootstraps) and max |ecp - alpha| (0 = calibrated; ecp
    below the diagonal means over-confident).
    """
    from tarp import get_tarp_coverage  # lazy: optional heavy import

    s, th = to_numpy(samples), to_numpy(truths)
    if s.ndim != 3 or th.ndim != 2 or s.shape[1:] != th.shape:
        raise ValueError(
            f"samples {s.shape} and truths {th.shape}: expected (n_samples, n_sims, n_dims) and (n_sims, n_dims)"
        )
    if s.shape[1] < 2:
        raise ValueError("tarp needs at least 2 simulations (n_sims >= 2)")
    if not isinstance(references, str):
        references = np.asarray(to_numpy(references), dtype=np.float64)
        if references.shape != th.shape:
            raise ValueError(f"references with shape {references.shape}: expected (n_sims, n_dims) = {th.shape} "
                             "or 'random'")
        if norm:  # tarp normalises samples and truths by the truths' range, not the references
            low, high = th.min(0), th.max(0)
            references = (references - low) / (high - low + 1e-10)
    elif references != "random":
        raise ValueError(f"references={references!r}; accepted: 'random' or an (n_sims, n_dims) array")
    state = np.random.get_state()
    try:
        bins = max(1, s.shape[1] // 10) if num_alpha_bins is None else int(num_alpha_bins)
        if bins < 1:
            raise ValueError(f"num_alpha_bins={num_alpha_bins!r}: expected a positive int")
        out = get_tarp_coverage(s, th, references=references, metric=metric, norm=norm, num_alpha_bins=bins,
                                bootstrap=bootstrap, num_bootstrap=num_bootstrap, seed=seed)
    finally:
        np.random.set_state(state)
    ecp, alpha = out[0], out[1]
    if bootstrap:
        ecp = np.asarray(ecp).mean(0)
    ecp, alpha = np.asarray(ecp), np.asarray(alpha)
    # tarp 0.1.1 histograms its coverage statistic f without range=(0, 1), so its alpha grid
    # spans [min f, max f], not the credibility levels [0, 1] (visible with few simulations).
    # ecp is the empirical CDF of f at those edges: put it back on [0, 1] (0 below, 1 above).
    grid = np.linspace(0.0, 1.0, len(alpha))
    ecp = np.interp(grid, alpha, ecp, left=0.0, right=1.0)
    return grid, ecp, float(np.abs(ecp - grid).max())


def interval_coverage(samples, truths, levels: Sequence[float] = (0.68, 0.95)) -> dict[float, float]:
    """Fraction of truth values inside the central equal-tailed credible interval.

    samples : (n_samples, ...) posterior samples of one truth (...) or (n_samples, n_sims, ...);
    truths : (...) matching ``samples.shape[1:]``. Every pixel (entry) is one trial.
    Returns {level: empirical coverage}; a calibrated posterior gives coverage ~ level.
    """
    s = _as_t64(samples)
    th = _as_t64(truths)
    if tuple(s.shape[1:]) != tuple(th.shape):
        raise ValueError(f"samples {tuple(s.shape)} and truths {tuple(th.shape)}: truths must match samples.shape[1:]")
    out = {}
    for level in levels:
        if not 0 < level < 1:
            raise ValueError(f"level={level!r}: expected a float in (0, 1)")
        q = torch.quantile(s.flatten(1), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=0)
        inside = (th.flatten() >= q[0]) & (th.flatten() <= q[1])
        out[float(level)] = float(inside.double().mean())
    return out


def reduced_chi2(y, Ax, sigma, dof: int | None = None) -> float:
    """Reduced chi^2 = sum(((y - Ax) / sigma)^2) / dof [dimensionless]; ~1 for a fit at
    the noise level. ``sigma``: scalar, per band (C,) for (..., C, h, w) arrays, or
    broadcastable. ``dof`` defaults to the number of data entries."""
    from .metrics import reduced_chi2 as _rc

    return _rc(y, Ax, sigma, dof=dof)
