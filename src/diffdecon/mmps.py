"""Moment Matching Posterior Sampling (Rozet et al. 2024) for a VP diffusion prior.

Notation as in :mod:`diffdecon.samplers`: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``,
``alpha_t = sqrt(abar_t)``, ``sigma_t^2 = 1 - abar_t``, Tweedie's denoiser
``D(x_t) = E[x_0 | x_t]`` and its Jacobian ``J = dD/dx_t``.

MMPS approximates ``p(x_0 | x_t)`` by a Gaussian ``N(D(x_t), V_t)`` and conditions it on
``y = A(x_0) + n``, ``n ~ N(0, Sigma_y)``, with ``A`` linearised at ``D``. Three choices of
``V_t`` (the ``covariance`` argument):

* ``"tweedie"``: ``V_t = (sigma_t^2 / alpha_t) J``, the second-order Tweedie covariance of
  the paper. It is exact for an exact denoiser, whose Jacobian is symmetric positive
  semi-definite. A trained network's Jacobian is neither (measured on the quick prior:
  ``|J^T w - J w| / |J w|`` of 0.25-0.99 and negative eigenvalues of its symmetric part),
  and conjugate gradients on the resulting system do not converge: the samples then miss
  the data by orders of magnitude at high signal-to-noise.
* ``"empirical"``: ``V_t`` measured from the denoiser's own errors on training images
  (:mod:`diffdecon.denoiser_variance`): a diagonal per band and per value of ``D`` (the
  sky, which the prior knows to ~0.02, gets a variance thousands of times smaller than
  ``c_t`` below at high noise, and the data cannot drag it around in the early steps) plus a
  per-band offset term ``lambda_t 1 1^T``, the covariance the errors of distant pixels share
  (a uniform sky level the prior knows less well than any one pixel). Without that term the
  data cannot move the sky level as a whole, and at high signal-to-noise the samples lack
  the faint light spread over the image.
* ``"annuli"``: the same diagonal plus, instead of the offset term, a per-band low-rank term
  ``G Lambda_t G^T``, the covariance the errors of pixels share within and between annuli
  about the image centre (``G`` the annulus masks, of which the offset term is the
  one-annulus case): the light of a whole ring, which the prior knows less well than the
  sum of its pixels' variances says. With the offset term alone the data cannot move a
  ring's light as a whole, and at faint magnitudes the samples put too much light in the
  core and too little in the outskirts.
* ``"exact"``: ``V_t = Cov[x_0 | x_t]`` of a prior that gives it in closed form
  (``prior.posterior_covariance(x_t, t) -> (c, B)``, ``V_t = diag(c) + B^T B`` per sample,
  e.g. :class:`diffdecon.mixture_prior.GalaxyMixturePrior`): the moment MMPS matches, without
  the approximation of a diagonal; for measuring what the other covariances cost, not for a
  trained network (which has no such covariance).
* ``"jacobian"``: the ``"empirical"`` covariance with, at the high-noise steps
  (``t >= jacobian_min_t``), a per-sample low-rank term measured from the denoiser itself:
  the top ``jacobian_rank`` positive eigenpairs of the symmetric part of the Tweedie
  covariance ``(sigma_t^2 / alpha_t) J`` restricted to a randomized range of ``J^T``
  (Halko et al. 2011; only vector-Jacobian products, :func:`jacobian_lowrank`), with the
  table's diagonal reduced by the diagonal the low-rank term already holds. At high noise the
  posterior ``p(x_0 | x_t)`` is spread along a few directions of galaxy space (a component
  of a mixture, a galaxy's size and light profile), which a diagonal cannot represent; at
  low noise it is nearly diagonal and the table alone is kept. It costs
  ``2 (jacobian_rank + 4)`` network passes per sample and step where it applies.
* ``"isotropic"`` (the default of :func:`mmps`): ``V_t = c_t I`` with ``c_t = sigma_t^2 v0 / (alpha_t^2 v0 +
  sigma_t^2)``, the Tweedie covariance of a ``N(mu, v0 I)`` prior (``v0 = 1`` by default: the
  images span about [-1, 2]); it tends to ``sigma_t^2 / alpha_t^2``, the limit of every prior,
  at small noise. The conditioned mean is then a regularised least-squares problem in ``x_0``,

      x0_post = D + delta,   (I / c_t + A^T Sigma_y^-1 A) delta = A^T Sigma_y^-1 (y - A(D)),   (Woodbury form)

  (with the empirical ``V_t``, ``I / c_t`` becomes ``V_t^-1``, diagonal plus low rank per band
  and inverted by Woodbury, :class:`_LowRank`) whose matrix is symmetric positive
  definite whatever the network, solved by
  preconditioned conjugate gradients with only products by ``A`` and ``A^T`` (no pass
  through the network: one network evaluation per step). The Jacobi preconditioner
  ``(1 / c_t + diag(A^T Sigma_y^-1 A))^-1`` is supplied by the caller (``precond``): the
  columns of a flux-space operator seen through the asinh stretch differ in norm by
  orders of magnitude, and unpreconditioned CG stalls on them.

:func:`mmps_prior` runs the same loop without data: the prior as the posterior sampler sees
it, from which the reference samples of the variance ratio and the truths of the calibration
are drawn (:mod:`diffdecon.reference_samples`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import MMPS_COVARIANCES
from .samplers import (Generator, _alphas_cumprod, _bdot, _clip, _ddim_step, _posterior_setup, _randn, _time_batch,
                       _unconditional)

__all__ = ["COVARIANCES", "mmps", "mmps_prior", "mmps_x0", "mmps_isotropic_x0"]

COVARIANCES: tuple[str, ...] = MMPS_COVARIANCES + ("jacobian", "exact")
"""Accepted values of the ``covariance`` argument of :func:`mmps`: those of a profile
(:data:`diffdecon.config.MMPS_COVARIANCES`), ``"jacobian"`` (the empirical covariance plus a
low-rank term from the denoiser's Jacobian) and ``"exact"`` (a prior with a closed-form
``posterior_covariance``)."""
MEASURED: tuple[str, ...] = ("empirical", "annuli", "jacobian")
"""The covariances measured from the denoiser's errors (:mod:`diffdecon.denoiser_variance`)."""
DIAGONAL_FLOOR: float = 0.5
"""Smallest diagonal of an empirical ``V_t`` as a fraction of the pixel's tabulated variance
(:func:`_diagonal_variance`)."""
JACOBIAN_OVERSAMPLE: int = 4
"""Extra random probes of :func:`jacobian_lowrank` beyond its rank (randomized range finder)."""
JACOBIAN_POWER_ITERS: int = 1
"""Power iterations of :func:`jacobian_lowrank`'s range finder."""
JACOBIAN_DIAGONAL_FLOOR: float = 0.05
"""Smallest diagonal of ``covariance="jacobian"`` as a fraction of the table's variance, where
the low-rank term's diagonal exceeds the table's (:func:`_jacobian_covariance`)."""
JACOBIAN_SEED: int = 20240611
"""Seed of the generator of :func:`jacobian_lowrank`'s probes in :func:`mmps` (kept apart from the
samples' generator, one per sample or one for all)."""
JACOBIAN_BATCH: int = 80
"""Most images one pass of :func:`jacobian_lowrank` puts through the network (samples times
probes), bounding its memory."""


def _cg(matvec, b: torch.Tensor, iters: int, m_inv=None, tol: float | None = None,
        u0: torch.Tensor | None = None) -> torch.Tensor:
    """Batched (preconditioned) conjugate gradients for ``M u = b``, ``M`` symmetric positive
    definite and block diagonal over the batch (one system per sample: per-sample scalars).
    ``m_inv``: the inverse of a diagonal preconditioner, shaped like ``b`` (or ``None``).
    ``tol``: stop before ``iters`` once every system's preconditioned residual norm
    ``sqrt(r^T m_inv r)`` is below ``tol`` times its initial value (None: run all ``iters``).
    ``u0``: the initial guess (default 0); the tolerance is then relative to the residual of ``u0``."""
    tiny = torch.finfo(b.dtype).tiny
    u = torch.zeros_like(b) if u0 is None else u0.detach().clone()
    res = b.clone() if u0 is None else b - matvec(u)
    z = res if m_inv is None else m_inv * res
    p = z.clone()
    rz = _bdot(res, z)
    stop = None if tol is None else tol**2 * rz
    for _ in range(iters):
        Mp = matvec(p)
        pMp = _bdot(p, Mp)
        alpha = torch.where(pMp > 0, rz / pMp.clamp_min(tiny), torch.zeros_like(rz))
        u = u + alpha * p
        res = res - alpha * Mp
        z = res if m_inv is None else m_inv * res
        rz_new = _bdot(res, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        if stop is not None and bool((rz <= stop).all()):
            break
    return u


def _linearised(forward, D: torch.Tensor):
    """``A(D)`` and closures for ``A u`` (JVP, by double backward) and ``A^T v`` (VJP) of
    ``forward`` linearised at ``D``."""
    Dd = D.detach().requires_grad_(True)
    AD = forward(Dd)
    v0 = torch.zeros_like(AD, requires_grad=True)
    (At_v0,) = torch.autograd.grad(AD, Dd, v0, create_graph=True)  # A^T v0, linear in v0

    def vjp_A(v):  # A^T v
        return torch.autograd.grad(AD, Dd, v, retain_graph=True)[0]

    def jvp_A(u):  # A u = d/dv0 <A^T v0, u>
        return torch.autograd.grad(At_v0, v0, u, retain_graph=True)[0]

    return AD.detach(), jvp_A, vjp_A


def _diagonal_variance(a: float, v0: float, variance, D: torch.Tensor, t: int):
    """``(c, lowrank_at)`` of ``V_t``: ``c`` the isotropic ``(1 - a) v0 / (a v0 + 1 - a)`` (the Tweedie
    covariance of a ``N(mu, v0 I)`` prior, ``a = abar_t``) and no low-rank term without ``variance``,
    else ``variance(D, t)`` (shaped like ``D``) and its ``lowrank_at`` if it has one. ``variance``
    gives each pixel's whole variance ``E[e_i^2]``, of which the annulus term (a ``variance``
    with an ``annulus_cov``) already holds ``Lambda_kk`` (the covariance the pixel shares with
    the others of its annulus ``k``): the diagonal is then ``c - Lambda_kk``, floored at
    :data:`DIAGONAL_FLOOR` ``c`` where a pixel's variance is below its annulus's shared part (a
    sky pixel among a galaxy's outskirts); exact for a Gaussian prior (tested). The offset term
    stays on top of ``c``, as it was measured and calibrated (``lambda_t`` is 0.04-0.18 of the
    sky's variance)."""
    if variance is None:
        return (1.0 - a) * v0 / (a * v0 + 1.0 - a), None
    c, lowrank_at = variance(D, t), getattr(variance, "lowrank_at", None)
    annular = getattr(variance, "annulus_cov", None) is not None
    lr = None if lowrank_at is None or not annular else lowrank_at(t, tuple(D.shape[-2:]))
    if lr is not None:  # c is each pixel's whole variance; Lambda_kk of it is shared with its annulus
        shared = torch.einsum("khw,ck->chw", torch.as_tensor(lr[0], dtype=torch.float64),
                              torch.diagonal(torch.as_tensor(lr[1], dtype=torch.float64), dim1=-2, dim2=-1))
        c = torch.maximum(c - shared.to(c.dtype).to(c.device), DIAGONAL_FLOOR * c)
    return c, lowrank_at


def _g_power(w: torch.Tensor, p: float) -> torch.Tensor:
    """``g_p(w) = ((1 + w)^p - 1) / w`` (``p`` at ``w = 0``), the eigenvalue function of
    :class:`_LowRank`."""
    small = w < 1e-12
    return torch.where(small, torch.full_like(w, p), torch.expm1(p * torch.log1p(w)) / torch.where(small, torch.ones_like(w), w))


class _LowRank:
    """``V_t = diag(c) + G Lambda G^T`` per band and sample, ``G`` (K, H, W) images (columns of
    a P x K matrix) and ``Lambda`` (C, K, K) symmetric positive semi-definite (the annulus
    term of :class:`diffdecon.denoiser_variance.DenoiserVariance`; ``G = 1``, ``K = 1`` is the
    offset term ``lambda 1 1^T``). With ``B = G L`` (``L L^T = Lambda``) and ``U = c^-1/2 B``,

        V = c^1/2 (I + U U^T) c^1/2,      (I + U U^T)^p = I + U R g_p(w) R^T U^T,
        g_p(w) = ((1 + w)^p - 1) / w,     U^T U = R diag(w) R^T  (K x K per band and sample),

    so ``V^-1``, ``V^-1/2`` and ``V^1/2`` are products by ``c^-+1/2`` and ``K x K`` algebra
    (Woodbury; for ``K = 1`` the Sherman-Morrison forms)."""

    def __init__(self, c, G: torch.Tensor, Lam: torch.Tensor, D: torch.Tensor):
        self.c = torch.as_tensor(c, dtype=D.dtype, device=D.device) * torch.ones_like(D)  # (N, C, H, W)
        G = torch.as_tensor(G, dtype=torch.float64)
        Lam = torch.as_tensor(Lam, dtype=torch.float64)
        ew, ev = torch.linalg.eigh(0.5 * (Lam + Lam.transpose(-1, -2)))  # (C, K), (C, K, K)
        L = ev * ew.clamp_min(0.0).sqrt().unsqueeze(-2)  # L L^T = Lambda (its PSD part)
        self.B = torch.einsum("ckj,khw->cjhw", L, G).to(D.dtype).to(D.device)  # (C, K, H, W): columns of B
        rc = self.c.rsqrt()
        M = torch.einsum("cihw,cjhw,nchw->ncij", self.B, self.B, rc * rc)  # U^T U (N, C, K, K)
        w, self.R = torch.linalg.eigh(M)
        self.w = w.clamp_min(0.0)

    def _op(self, xi: torch.Tensor, p: float) -> torch.Tensor:
        """``(I + U U^T)^p xi`` (:class:`_LowRank`)."""
        rc = self.c.rsqrt()
        g = _g_power(self.w, p)
        ut = torch.einsum("cjhw,nchw->ncj", self.B, xi * rc)  # U^T xi
        z = torch.einsum("ncij,ncj->nci", self.R, g * torch.einsum("ncji,ncj->nci", self.R, ut))
        return xi + torch.einsum("cjhw,ncj->nchw", self.B, z) * rc

    def inv(self, v):  # V^-1 v = c^-1/2 (I + U U^T)^-1 c^-1/2 v
        rc = self.c.rsqrt()
        return rc * self._op(v * rc, -1.0)

    def inv_half(self, xi):  # W xi, W W^T = V^-1: c^-1/2 (I + U U^T)^-1/2 xi
        return self.c.rsqrt() * self._op(xi, -0.5)

    def sqrt(self, xi):  # S xi, S S^T = V: c^1/2 (I + U U^T)^1/2 xi
        return self.c.sqrt() * self._op(xi, 0.5)


class _SampleLowRank(_LowRank):
    """``V = diag(c) + B^T B`` per sample, ``c`` (N,) (isotropic per sample) or shaped like the
    samples (per pixel), and ``B`` (N, R, d) rows (the ``posterior_covariance`` of a prior,
    ``covariance="exact"``, or :func:`_jacobian_covariance`): with ``U = c^-1/2 B^T``
    (d x R) the algebra of :class:`_LowRank`, ``(I + U U^T)^p = I + U Q g_p(w) Q^T U^T``,
    ``U^T U = Q diag(w) Q^T`` (R x R per sample); ``c`` is kept as (N, 1, 1, 1) or (N, C, H, W)."""

    def __init__(self, c, B: torch.Tensor, D: torch.Tensor):  # U per sample, not per band
        c64 = torch.as_tensor(c, dtype=torch.float64)
        per_pixel = c64.dim() > 1
        if per_pixel and tuple(c64.shape) != tuple(D.shape):
            raise ValueError(f"a per-pixel diagonal of shape {tuple(c64.shape)}; expected (N,) or {tuple(D.shape)}")
        c_rows = c64.reshape(c64.shape[0], 1, -1) if per_pixel else c64.reshape(-1, 1, 1)
        U = torch.as_tensor(B, dtype=torch.float64) / c_rows.sqrt()  # (N, R, d): rows of U^T
        if U.shape[0] != D.shape[0] or U.shape[2] != D[0].numel():
            raise ValueError(f"posterior_covariance gave B of shape {tuple(U.shape)}; expected "
                             f"({D.shape[0]}, R, {D[0].numel()}) for samples of shape {tuple(D.shape)}")
        w, Q = torch.linalg.eigh(U @ U.transpose(1, 2))
        self.w, self.Q, self.U = (m.to(D.dtype).to(D.device) for m in (w.clamp_min(0.0), Q, U))
        self.c = c64.to(D.dtype).to(D.device).reshape(tuple(D.shape) if per_pixel else (-1, 1, 1, 1))

    def _op(self, xi: torch.Tensor, p: float) -> torch.Tensor:
        """``(I + U U^T)^p xi``."""
        flat = xi.reshape(xi.shape[0], -1)
        ut = torch.einsum("nrd,nd->nr", self.U, flat)  # U^T xi
        z = torch.einsum("nij,nj->ni", self.Q, _g_power(self.w, p) * torch.einsum("nji,nj->ni", self.Q, ut))
        return (flat + torch.einsum("nrd,nr->nd", self.U, z)).reshape(xi.shape)


def jacobian_lowrank(prior, x_t: torch.Tensor, t: int, rank: int, generator: Generator,
                     oversample: int = JACOBIAN_OVERSAMPLE,
                     power_iters: int = JACOBIAN_POWER_ITERS) -> torch.Tensor:
    """A rank-``rank`` positive semi-definite part of the Tweedie covariance of ``prior`` at
    ``x_t`` (N, C, H, W), ``t``, from vector-Jacobian products only:

        Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) J,     J = dD/dx_t,          (Tweedie, 2nd order)
        Q = orth((J^T)^(1+q) Omega),  Omega (d, rank + oversample) ~ N(0, I)   (randomized range finder,
                                                                          q = power_iters power iterations)
        T = (sigma_t^2 / alpha_t) sym(Q^T J Q),  T = R diag(lambda) R^T,    L = Q R_+ diag(lambda_+) R_+^T Q^T

    keeping the ``rank`` largest eigenvalues and only positive ones (a trained network's
    Jacobian is neither symmetric nor positive semi-definite; an exact denoiser's is). ``Q^T J Q``
    needs ``J^T Q`` only (``(Q^T J Q)_ij = (J^T q_i)^T q_j``), so the network is run once on the
    ``N (rank + oversample)`` images and differentiated ``2 + power_iters`` times. Without a power
    iteration the isotropic part of the covariance (the spread within a component, spread
    over all ``d`` pixels) swamps the probes' leading directions at high noise, and the
    captured eigenvalues come out low (measured on a five-component galaxy mixture at t = 600:
    0.28 for 0.37; with one power iteration 0.368). Returns ``B`` (N, rank, d) with
    ``L = B^T B`` per sample [prior-space units] (rows of zero where fewer eigenvalues are
    positive), float64. Probes ``Omega`` are drawn from ``generator`` (one ``torch.Generator``)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"jacobian_rank={rank!r}: expected a positive int")
    abar = float(_alphas_cumprod(prior)[t])
    ct = (1.0 - abar) / abar**0.5  # sigma_t^2 / alpha_t
    n, d, m = x_t.shape[0], x_t[0].numel(), rank + oversample
    if m > d:
        raise ValueError(f"jacobian_rank={rank} + {oversample} probes exceed the {d} pixels of an image")
    omega = _randn((n * m, *x_t.shape[1:]), generator, x_t.dtype, x_t.device)
    rows = []
    per = max(1, JACOBIAN_BATCH // m)
    for lo in range(0, n, per):
        nb = min(per, n - lo)
        xr = x_t[lo:lo + nb].detach().repeat_interleave(m, 0).requires_grad_(True)
        with torch.enable_grad():
            Dr = prior.x0_hat(xr, _time_batch(t, nb * m, x_t.device))
            Y = torch.autograd.grad(Dr, xr, omega[lo * m:(lo + nb) * m], retain_graph=True)[0]  # J^T omega
            for _ in range(power_iters):  # (J^T)^(1+q) omega: the leading directions outweigh the isotropic rest
                Q = torch.linalg.qr(Y.reshape(nb, m, d).transpose(1, 2).double())[0]
                Y = torch.autograd.grad(Dr, xr, Q.transpose(1, 2).reshape(xr.shape).to(xr.dtype), retain_graph=True)[0]
            Q = torch.linalg.qr(Y.reshape(nb, m, d).transpose(1, 2).double())[0]  # (nb, d, m)
            Z = torch.autograd.grad(Dr, xr, Q.transpose(1, 2).reshape(xr.shape).to(xr.dtype))[0]  # J^T q
        T = Z.reshape(nb, m, d).double() @ Q  # T_ij = q_i^T J q_j
        lam, R = torch.linalg.eigh(ct * 0.5 * (T + T.transpose(1, 2)))  # ascending
        lam, R = lam[:, -rank:].clamp_min(0.0), R[:, :, -rank:]
        rows.append(((Q @ R) * lam.sqrt().unsqueeze(1)).transpose(1, 2))  # (nb, rank, d)
    return torch.cat(rows, 0)


def _offset_rows(c, lowrank_at, t: int, D: torch.Tensor) -> torch.Tensor | None:
    """The per-band term ``G Lambda_t G^T`` of ``lowrank_at`` (the columns ``B`` of
    :class:`_LowRank`) as rows (N, C K, d) of ``B^T B``, the same for every sample; None
    without one."""
    terms = _lowrank_terms(c, lowrank_at, t, D)
    if terms is None:
        return None
    C, K = terms.B.shape[:2]
    rows = torch.zeros(C, K, *D.shape[1:], dtype=torch.float64, device=D.device)
    for band in range(C):
        rows[band, :, band] = terms.B[band]
    return rows.reshape(1, C * K, -1).expand(D.shape[0], -1, -1)


def _jacobian_covariance(prior, variance, rank: int, generator: Generator, x0_clip=None):
    """The ``exact_cov`` of :func:`mmps_isotropic_x0` for ``covariance="jacobian"``: a callable
    ``(x_t, t) -> (c, B)`` with ``V_t = diag(c) + B^T B``, ``B`` the rows of
    :func:`jacobian_lowrank` and of the table's offset term, and ``c`` the table's diagonal
    (``variance(D, t)``, each pixel's whole error variance) less the low-rank term's own
    diagonal, floored at :data:`JACOBIAN_DIAGONAL_FLOOR` of the table's."""
    abar = _alphas_cumprod(prior)

    def cov(x_t: torch.Tensor, t: int):
        B = jacobian_lowrank(prior, x_t, t, rank, generator)
        with torch.no_grad():
            D = _clip(prior.x0_hat(x_t.detach(), _time_batch(t, x_t.shape[0], x_t.device)), x0_clip)
        c, lowrank_at = _diagonal_variance(float(abar[t]), 1.0, variance, D, t)
        offset = _offset_rows(c, lowrank_at, t, D)
        c = torch.as_tensor(c, dtype=torch.float64, device=B.device) * torch.ones(D.shape, dtype=torch.float64,
                                                                                  device=B.device)
        c = torch.maximum(c - B.pow(2).sum(1).reshape(D.shape), JACOBIAN_DIAGONAL_FLOOR * c)
        return c, (B if offset is None else torch.cat([B, offset.to(B.device)], 1))

    return cov


def _lowrank_terms(c, lowrank_at, t: int, D: torch.Tensor) -> _LowRank | None:
    """The :class:`_LowRank` ``V_t`` of ``c`` and ``lowrank_at(t, (H, W)) -> (G, Lambda)``; None
    when there is no low-rank term (``lowrank_at`` None, or it gives None or ``Lambda = 0``)."""
    lr = None if lowrank_at is None else lowrank_at(t, tuple(D.shape[-2:]))
    if lr is None or not bool((torch.as_tensor(lr[1]) != 0).any()):
        return None
    return _LowRank(c, lr[0], lr[1], D)


def _inverse_covariance(c, lowrank_at, t: int, D: torch.Tensor):
    """Products by ``V_t^-1`` and by a square root ``W`` of it (``W W^T = V_t^-1``) for
    ``V_t = diag(c) + G Lambda_t G^T`` per band and sample (``lowrank_at(t, (H, W))`` gives
    ``(G, Lambda_t)``; diagonal when ``lowrank_at`` is None or gives None): :class:`_LowRank`."""
    terms = _lowrank_terms(c, lowrank_at, t, D)
    if terms is None:
        return (lambda v: v / c), (lambda xi: xi / c**0.5)  # c may stay a scalar (isotropic)
    return terms.inv, terms.inv_half


def _covariance_sqrt(c, lowrank_at, t: int, D: torch.Tensor):
    """Product by a square root ``S`` of ``V_t`` (``S S^T = V_t``), ``V_t`` as in
    :func:`_inverse_covariance`."""
    terms = _lowrank_terms(c, lowrank_at, t, D)
    if terms is None:
        return lambda xi: xi * c**0.5
    return terms.sqrt


def mmps_isotropic_x0(prior, x_t, t: int, y, forward, sigma_y, cg_iters: int = 10, x0_clip=None,
                      precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      generator: Generator | None = None, v0: float = 1.0, max_step: float | None = None,
                      variance: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                      linearise: Callable[[torch.Tensor], tuple] | None = None, cg_tol: float | None = None,
                      newton: int = 1, init: torch.Tensor | None = None,
                      exact_cov: Callable[[torch.Tensor, int], tuple] | None = None,
                      lookahead: Callable[[torch.Tensor, int], torch.Tensor] | None = None):
    """Posterior denoiser of MMPS with a diagonal covariance: ``V_t = c_t I`` (isotropic), or
    ``V_t = diag(variance(D, t))`` when ``variance`` is given (e.g. a
    :class:`diffdecon.denoiser_variance.DenoiserVariance`, [prior-space units^2]), plus
    ``G Lambda_t G^T`` per band when ``variance`` has a ``lowrank_at(t, (H, W))`` giving
    ``(G, Lambda_t)`` ((K, H, W), (C, K, K)) (:func:`_diagonal_variance`, :class:`_LowRank`).

    Solves ``(V_t^-1 + A^T Sigma_y^-1 A) delta = A^T Sigma_y^-1 (y - A(D))`` (module
    docstring) with ``cg_iters`` preconditioned CG iterations and returns
    ``(x0_post, D)`` = ``(D + delta, D)``, both detached, in prior space.

    ``precond``: a callable ``D -> diag(A^T Sigma_y^-1 A)`` at ``D`` (shape of ``D``,
    [1 / prior-space units^2]), e.g. :meth:`diffdecon.problem.InverseProblem.normal_diagonal`;
    without it CG runs unpreconditioned. ``sigma_y`` broadcasts against ``y``.

    With a ``generator``, ``x0_post`` is a *draw* of the Gaussian posterior
    ``N(D + delta, (V_t^-1 + A^T Sigma_y^-1 A)^-1)`` instead of its mean, by perturbing the
    right-hand side (perturb-and-solve): ``b + A^T Sigma_y^-1/2 eta + V_t^-1/2 xi``,
    ``eta``, ``xi ~ N(0, I)``, has covariance ``A^T Sigma_y^-1 A + V_t^-1`` (``V_t^-1/2 xi``: any
    square root, :func:`_inverse_covariance`), so its solution
    has exactly the posterior covariance. The sampler's ancestral step from a draw of
    ``p(x_0 | x_t, y)`` keeps the spread that the step from the mean loses on a coarse time grid.

    ``max_step`` [prior-space units] bounds each pixel's update ``|delta|``: a trust region for
    a forward model that is far from linear in ``x`` (the asinh stretch multiplies the flux by
    e every ``2 / asinh(1/a)`` in ``x``), where the linearised step can overshoot a pixel that
    ``D`` puts in the sky but the data make bright to the clip. The next steps, linearised
    anew, carry on from where it stops.

    ``linearise``: a callable ``D -> (A(D), u -> A_D u, v -> A_D^T v)`` giving ``forward``
    linearised at ``D`` in closed form (e.g. :meth:`diffdecon.problem.InverseProblem.linearised`);
    without it the products come from autograd (:func:`_linearised`), which gives the same
    values to float rounding at about twice the cost of a CG iteration. ``cg_tol``: stop CG
    early once the preconditioned residual has fallen by that factor (:func:`_cg`).

    ``newton``: Gauss-Newton iterations on the Gaussian-prior, nonlinear-likelihood problem
    (1, the default, is MMPS's single linearisation at ``D``); each further one linearises
    ``forward`` anew at the current ``x`` and solves
    ``(V_t^-1 + A_x^T Sigma_y^-1 A_x) dx = A_x^T Sigma_y^-1 (y - A(x)) - V_t^-1 (x - D)``
    (plus the same perturbations), so that ``A(x0_post)``, not only its linearisation, fits the data.

    ``init`` (prior space, shaped like ``x_t``): CG's initial guess for ``x0_post`` (the first
    linearisation starts from ``init - D`` instead of 0), e.g. the previous step's ``x0_post``
    (``warm_start`` of :func:`mmps`). The system is the same; only the iterations' starting point
    moves, so a converged solve does not depend on it.

    ``exact_cov``: a callable ``(x_t, t) -> (c, B)`` giving ``V_t = diag(c) + B^T B`` per sample,
    ``c`` (N,) or per pixel (``posterior_covariance`` of a prior, or
    :func:`_jacobian_covariance`; :class:`_SampleLowRank`); it replaces ``v0`` and ``variance``.

    ``lookahead``: a callable ``(D, t) -> b`` [prior-space units, shaped like ``D``], what the
    prior's chain still changes in ``x0`` after this step on average
    (:class:`diffdecon.lookahead.ChainLookahead`): the data observe ``x0 + b``, the chain's final
    image, so ``forward``, its linearisation and ``precond`` are taken at ``x + b``; ``x0_post``
    is returned without ``b`` (the step's own ``x0``).
    """
    if not isinstance(cg_iters, int) or cg_iters < 1:
        raise ValueError(f"cg_iters={cg_iters!r}: expected a positive int")
    if not isinstance(newton, int) or newton < 1:
        raise ValueError(f"newton={newton!r}: expected a positive int")
    with torch.no_grad():
        D = _clip(prior.x0_hat(x_t.detach(), _time_batch(t, x_t.shape[0], x_t.device)), x0_clip)
        if exact_cov is None:
            c, lowrank_at = _diagonal_variance(float(_alphas_cumprod(prior)[t]), v0, variance, D, t)
            v_inv, v_inv_half = _inverse_covariance(c, lowrank_at, t, D)
        else:
            exact = _SampleLowRank(*exact_cov(x_t.detach(), t), D)
            c, v_inv, v_inv_half = exact.c, exact.inv, exact.inv_half
        b = None if lookahead is None else lookahead(D, t).to(D.dtype)
    if b is not None:  # the data see the chain's final image x0 + b (lookahead.py)
        forward = _shifted(forward, b)
        linearise = None if linearise is None else _shifted(linearise, b)
        precond = None if precond is None else _shifted(precond, b)
    s2 = sigma_y**2
    y_pert, prior_pert = y, None
    x = D
    for k in range(newton):
        with torch.enable_grad():
            Ax, jvp_A, vjp_A = _linearised(forward, x) if linearise is None else linearise(x)
            if k == 0 and generator is not None:  # perturb-and-solve: y + Sigma_y^1/2 eta and V_t^-1/2 xi
                y_pert = y + sigma_y * _randn(tuple(Ax.shape), generator, Ax.dtype, Ax.device)
                prior_pert = v_inv_half(_randn(tuple(D.shape), generator, D.dtype, D.device))
            b = vjp_A((y_pert - Ax) / s2)  # A_x^T Sigma_y^-1 (y - A(x))
            if prior_pert is not None:
                b = b + prior_pert
            if k:
                b = b - v_inv(x - D)

            def matvec(v):  # (V_t^-1 + A_x^T Sigma_y^-1 A_x) v
                return v_inv(v) + vjp_A(jvp_A(v) / s2)

            m_inv = None if precond is None else 1.0 / (1.0 / c + precond(x).to(D.dtype))
            u0 = None if (k or init is None) else (init.detach().to(D.dtype) - D)
            step = _cg(matvec, b.detach(), cg_iters, m_inv, cg_tol, u0).detach()
        delta = x - D + step
        x = D + (delta if max_step is None else delta.clamp(-max_step, max_step))
    return _clip(x, x0_clip), D


def _shifted(f: Callable, b: torch.Tensor) -> Callable:
    """``x -> f(x + b)``."""
    return lambda x: f(x + b)


def mmps_x0(prior, x_t, t: int, y, forward, sigma_y, cg_iters: int = 5, x0_clip=None):
    """Posterior denoiser of MMPS with the Tweedie covariance ``V_t = (sigma_t^2 / alpha_t) J``.

    VP Tweedie: ``J = dD/dx_t = (I + sigma_t^2 H) / alpha_t`` (H the Hessian of
    ``log p(x_t)``) and ``Cov[x0 | x_t] = (sigma_t^2 / alpha_t^2)(I + sigma_t^2 H) =
    (sigma_t^2 / alpha_t) J``. With ``A`` linearised at ``D``,

        grad_{x_t} log p(y | x_t) ~ J^T A^T (Sigma_y + A V_t A^T)^-1 (y - A(D)),

    solved per sample with ``cg_iters`` CG iterations on the whitened system
    ``(I + Sigma_y^-1/2 A V_t A^T Sigma_y^-1/2) u' = Sigma_y^-1/2 r`` (J assumed symmetric,
    ``J v = J^T v``). Tweedie on the posterior score gives

        x0_post = D + (sigma_t^2 / alpha_t) J^T A^T u.

    CG needs the system to be symmetric positive definite, which a trained network's
    Jacobian does not guarantee (module docstring). Returns ``(x0_post, D)``, detached.
    """
    if not isinstance(cg_iters, int) or cg_iters < 1:
        raise ValueError(f"cg_iters={cg_iters!r}: expected a positive int")
    a = float(_alphas_cumprod(prior)[t])
    c = (1.0 - a) / a**0.5  # sigma_t^2 / alpha_t
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        D = _clip(prior.x0_hat(x, _time_batch(t, x.shape[0], x.device)), x0_clip)
        AD, jvp_A, vjp_A = _linearised(forward, D.detach())

        def vjp_D(w):  # J^T w
            return torch.autograd.grad(D, x, w, retain_graph=True)[0]

        def matvec(v):  # whitened Sigma_y^-1/2 (Sigma_y + c A J A^T) Sigma_y^-1/2 v
            return v + c * jvp_A(vjp_D(vjp_A(v / sigma_y))) / sigma_y

        u = _cg(matvec, (y - AD) / sigma_y, cg_iters) / sigma_y  # (Sigma_y + A V A^T)^-1 r
        x0_post = _clip(D.detach() + c * vjp_D(vjp_A(u)), x0_clip)
    return x0_post.detach(), D.detach()


def _check_arguments(n, eta, cg_iters, covariance, precond, variance, linearise=None, cg_tol=None,
                     warm_start=False, lookahead=None) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive int")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r}: expected a float in [0, 1]")
    if not isinstance(cg_iters, int) or cg_iters < 1:
        raise ValueError(f"cg_iters={cg_iters!r}: expected a positive int")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance={covariance!r}: expected one of {', '.join(COVARIANCES)}")
    if precond is not None and covariance == "tweedie":
        raise ValueError("precond is used by the diagonal covariances only; pass precond=None with 'tweedie'")
    if cg_tol is not None and not (isinstance(cg_tol, (int, float)) and 0.0 < cg_tol < 1.0):
        raise ValueError(f"cg_tol={cg_tol!r}: expected None or a float in (0, 1)")
    if linearise is not None and covariance == "tweedie":
        raise ValueError("linearise is used by the diagonal covariances only; pass linearise=None with 'tweedie'")
    if warm_start and covariance == "tweedie":
        raise ValueError("warm_start is used by the diagonal covariances only; pass warm_start=False with 'tweedie'")
    if lookahead is not None and covariance == "tweedie":
        raise ValueError("lookahead is used by the diagonal covariances only; pass lookahead=None with 'tweedie'")
    if variance is not None and covariance not in MEASURED:
        raise ValueError(f"variance is used by covariance {', '.join(map(repr, MEASURED))} only, got covariance={covariance!r}")


def _exact_covariance(prior, covariance: str):
    """``prior.posterior_covariance`` for ``covariance="exact"`` (refused for a prior without
    one), None otherwise."""
    if covariance != "exact":
        return None
    if not callable(getattr(prior, "posterior_covariance", None)):
        raise ValueError(f"covariance='exact' needs a prior with a closed-form posterior_covariance(x_t, t) "
                         f"(e.g. diffdecon.mixture_prior.GalaxyMixturePrior); {type(prior).__name__} has none: "
                         f"use one of {', '.join(MMPS_COVARIANCES)}")
    return prior.posterior_covariance


def _measured_variance(prior, covariance: str, variance, progress: bool):
    """The ``variance`` of a measured ``covariance`` (:data:`MEASURED`): ``variance`` or the
    prior's table (:func:`diffdecon.denoiser_variance.of_prior`), without its annulus term for
    ``"empirical"`` and ``"jacobian"``; ``variance`` unchanged (None) for the others. ``"annuli"`` with a table
    that has no annulus term is refused."""
    if covariance not in MEASURED:
        return variance
    if variance is None:
        from .denoiser_variance import of_prior

        variance = of_prior(prior, progress=progress)
    if covariance in ("empirical", "jacobian") and getattr(variance, "annulus_cov", None) is not None:
        return variance.without_annuli()
    if covariance == "annuli" and getattr(variance, "annulus_cov", None) is None:
        raise ValueError("covariance='annuli' needs a variance with an annulus term "
                         "(diffdecon.denoiser_variance.measure(..., annuli=...)); got none")
    return variance


def mmps(  # long by its documented parameters: the body is one loop
    prior: Any,
    y,
    forward: Callable[[torch.Tensor], torch.Tensor],
    sigma_y,
    generator: Generator,
    n: int,
    steps: int = 100,
    cg_iters: int = 5,
    eta: float = 1.0,
    shape: Sequence[int] | None = None,
    on_divergence: str = "raise",
    max_abs: float = 1e6,
    progress: bool = True,
    x0_clip=None,
    covariance: str = "isotropic",
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0_draw: bool = False,
    v0: float = 1.0,
    max_step: float | None = None,
    variance: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    spacing: str = "linear",
    linearise: Callable[[torch.Tensor], tuple] | None = None,
    cg_tol: float | None = None,
    newton: int = 1,
    warm_start: bool = False,
    last_draw: bool = False,
    last_newton: int | None = None,
    jacobian_rank: int = 16,
    jacobian_min_t: int = 500,
    lookahead: Callable[[torch.Tensor, int], torch.Tensor] | str | None = None,
):
    """Moment Matching Posterior Sampling with DDIM steps (Song et al. 2021, eq. 12).

    At each of ``steps`` respaced times the posterior denoiser ``x0_post`` replaces Tweedie's
    ``D`` in a DDIM step; ``eta = 1`` (default) is the ancestral step with variance
    beta_tilde, ``eta = 0`` the deterministic one.

    Parameters are those of :func:`diffdecon.samplers.dps` (``y`` and ``sigma_y`` in
    observation flux units, ``forward`` from prior space to observation flux), plus
    ``cg_iters`` CG iterations per step, ``eta`` in [0, 1], ``x0_clip`` (None, c or
    (lo, hi), prior space), ``covariance`` in :data:`COVARIANCES` (module docstring; below,
    "diagonal covariances" are all but ``"tweedie"``, ``"exact"`` included),
    ``precond``, ``max_step`` and ``x0_draw`` (diagonal covariances only, see
    :func:`mmps_isotropic_x0`: with ``x0_draw`` the step starts from a draw of the Gaussian
    ``p(x_0 | x_t, y)``, otherwise from its mean, which under-disperses the samples on a
    coarse time grid), ``variance`` (``"empirical"`` and ``"annuli"`` only: a callable ``(D, t) -> V_t``;
    default :func:`diffdecon.denoiser_variance.of_prior` of ``prior``), the ``spacing`` of
    the respaced times (:func:`diffdecon.samplers.timesteps`), ``linearise`` (diagonal
    covariances only: ``forward`` linearised in closed form, :func:`mmps_isotropic_x0`) and
    ``cg_tol`` (diagonal covariances only: CG stops once its preconditioned residual has fallen
    by that factor, at most ``cg_iters`` iterations; None runs them all) and ``newton``
    (diagonal covariances only: Gauss-Newton linearisations per step, :func:`mmps_isotropic_x0`)
    and ``warm_start`` (diagonal covariances only: each step's CG starts from the previous step's
    ``x0_post`` instead of from ``D``; the system of the step is unchanged) and ``last_draw``
    (with ``x0_draw``: the last step, at t = 0, returns a draw of ``p(x_0 | x_t, y)`` too, not its
    mean; where the data outweigh the prior at t = 0 the mean pulls every sample to the same
    data-driven value and the samples come out too narrow) and ``last_newton`` (diagonal
    covariances only: the Gauss-Newton linearisations of the last step, default ``newton``). At
    t = 0 the data outweigh the prior in a bright galaxy's pixels, and a draw fitted to the
    forward model linearised at ``D`` carries the stretch's curvature into its flux: the mean of
    ``unstretch`` over the draw's spread exceeds ``unstretch`` of its mean, and the samples'
    total flux comes out above the data's. A second linearisation at the draw removes it.

    ``jacobian_rank`` and ``jacobian_min_t`` (``covariance="jacobian"`` only): the rank of the
    low-rank term measured from the denoiser's Jacobian (:func:`jacobian_lowrank`) and the
    smallest diffusion time (of 0 ... T - 1) at which it is added to the empirical covariance.

    ``lookahead`` (diagonal covariances only): a callable ``(D, t) -> b``, the mean change the
    prior's own chain still makes to ``x0`` after the step at ``t`` (:mod:`diffdecon.lookahead`);
    each step then fits the data through ``x0 + b``, the chain's final image. A table with a
    ``times`` attribute must have been measured on this sampler's time grid; ``"chain"`` takes
    the prior's own table for this grid (:func:`diffdecon.lookahead.of_prior`, cached).

    Returns ``(n, C, H, W)`` prior-space samples, or ``(x, valid)`` with
    ``on_divergence="mask"``.
    """
    _check_arguments(n, eta, cg_iters, covariance, precond, variance, linearise, cg_tol, warm_start, lookahead)
    if last_draw and not x0_draw:
        raise ValueError("last_draw=True needs x0_draw=True (the steps from a draw of p(x0 | x_t, y))")
    last_newton = newton if last_newton is None else last_newton
    for name, k in (("newton", newton), ("last_newton", last_newton)):
        if not isinstance(k, int) or k < 1 or (k > 1 and covariance == "tweedie"):
            raise ValueError(f"{name}={k!r}: expected a positive int (1 with covariance='tweedie')")
    if not isinstance(jacobian_rank, int) or jacobian_rank < 1:
        raise ValueError(f"jacobian_rank={jacobian_rank!r}: expected a positive int")
    if not isinstance(jacobian_min_t, int) or jacobian_min_t < 0:
        raise ValueError(f"jacobian_min_t={jacobian_min_t!r}: expected an int >= 0 (a diffusion time)")
    variance = _measured_variance(prior, covariance, variance, progress)
    exact_cov = _exact_covariance(prior, covariance)
    if covariance == "jacobian":
        # the probes from a generator of their own: the samples' random stream stays that of the other covariances
        exact_cov = _jacobian_covariance(prior, variance, jacobian_rank, torch.Generator().manual_seed(JACOBIAN_SEED),
                                         x0_clip)
    ts, a_t, a_prev, chw, y, sigma, x, div = _posterior_setup(prior, y, sigma_y, generator, n, steps, shape,
                                                              on_divergence, max_abs, "mmps", spacing)
    if lookahead is not None:
        if isinstance(lookahead, str):
            if lookahead != "chain":
                raise ValueError(f"lookahead={lookahead!r}: expected None, 'chain' or a callable (D, t) -> b")
            if getattr(prior, "profile", None) is None:
                raise ValueError(f"lookahead='chain' needs a prior with a profile (a trained DiffusionPrior); "
                                 f"{type(prior).__name__} has none: pass a table (diffdecon.lookahead.measure)")
            from .lookahead import of_prior

            lookahead = of_prior(prior, steps=steps, spacing=spacing, progress=progress)
        grid = getattr(lookahead, "times", None)
        if grid is not None and not np.array_equal(np.asarray(grid), ts.cpu().numpy()):
            raise ValueError(f"lookahead measured on the times {list(grid)}, the sampler runs {ts.tolist()} "
                             f"({steps} steps, {spacing!r} spacing): measure it on this grid "
                             "(diffdecon.lookahead.measure)")
    x0_prev = None
    for i, t in enumerate(tqdm(ts.tolist(), desc=f"mmps ({covariance})", disable=not progress, leave=False)):
        if covariance != "tweedie":
            # the last step returns the mean, or with last_draw a draw as the others
            g = generator if x0_draw and (a_prev[i] < 1 or last_draw) else None
            x0_post, _ = mmps_isotropic_x0(prior, x, t, y, forward, sigma, cg_iters, x0_clip, precond, g, v0,
                                           max_step, variance, linearise, cg_tol,
                                           last_newton if i == len(ts) - 1 else newton,
                                           x0_prev if warm_start else None,
                                           None if covariance == "jacobian" and t < jacobian_min_t else exact_cov,
                                           lookahead)
            x0_prev = x0_post
        else:
            x0_post, _ = mmps_x0(prior, x, t, y, forward, sigma, cg_iters, x0_clip)
        z = _randn((n, *chw), generator, x.dtype, x.device) if a_prev[i] < 1 else None
        x = _ddim_step(x, x0_post, float(a_t[i]), float(a_prev[i]), z, eta)
        x = div.check(x, i, t)
    return div.finish(x.detach())


def mmps_prior(  # the loop of mmps without data
    prior: Any,
    generator: Generator,
    n: int,
    steps: int = 100,
    eta: float = 1.0,
    shape: Sequence[int] | None = None,
    progress: bool = True,
    x0_clip=None,
    covariance: str = "empirical",
    x0_draw: bool = True,
    v0: float = 1.0,
    max_step: float | None = None,
    variance: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    spacing: str = "linear",
    last_draw: bool = False,
    on_step: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None,
) -> torch.Tensor:
    """The chain of :func:`mmps` when the data carry no information (``A = 0``): unconditional
    prior samples as the posterior sampler sees the prior, so that a posterior sample without
    data is one of these (the reference of variance ratios and the truths of simulation-based
    calibration, :mod:`diffdecon.reference_samples`).

    Each step's ``x0`` is a draw of ``N(D, V_t)`` (``x0_draw``, ``V_t`` of ``covariance``, one of
    the diagonal covariances, as in :func:`mmps_isotropic_x0`: ``D + S xi``, ``S S^T = V_t``,
    ``|S xi|`` bounded by ``max_step`` and the result clipped to ``x0_clip`` like the posterior
    step) or ``D`` itself (``x0_draw=False``: :func:`diffdecon.samplers.ddim_sample`), followed
    by the DDIM step with ``eta``; the last step returns ``D``, or with ``last_draw`` a draw as
    the others. Parameters as :func:`mmps`; ``on_step(D, x0, t)``, when given, is called at every
    step with the denoiser's ``D`` and the step's ``x0`` (both ``(n, C, H, W)``, prior space) and
    the diffusion time ``t`` (e.g. to record the chain, :mod:`diffdecon.lookahead`). Returns
    ``(n, C, H, W)`` prior-space samples.
    """
    if last_draw and not x0_draw:
        raise ValueError("last_draw=True needs x0_draw=True (the steps from a draw of N(D, V_t))")
    if covariance not in COVARIANCES or covariance in ("tweedie", "exact", "jacobian"):  # diagonal plus offset/annuli
        raise ValueError(f"covariance={covariance!r}: expected one of "
                         f"{', '.join(c for c in COVARIANCES if c not in ('tweedie', 'exact', 'jacobian'))} "
                         "(a diagonal covariance; a prior with an exact one draws exactly)")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive int")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r}: expected a float in [0, 1]")
    if variance is not None and covariance not in MEASURED:
        raise ValueError(f"variance is used by covariance {', '.join(map(repr, MEASURED))} only, got covariance={covariance!r}")
    if x0_draw:
        variance = _measured_variance(prior, covariance, variance, progress)
    abar = _alphas_cumprod(prior)

    def draw(D, t, last):  # a draw of N(D, V_t); the last step returns the mean unless last_draw, as in mmps
        if not x0_draw or (last and not last_draw):
            return D
        c, lowrank_at = _diagonal_variance(float(abar[t]), v0, variance, D, t)
        delta = _covariance_sqrt(c, lowrank_at, t, D)(_randn(tuple(D.shape), generator, D.dtype, D.device))
        if max_step is not None:
            delta = delta.clamp(-max_step, max_step)
        return _clip(D + delta, x0_clip)

    def x0_step(D, t, last):
        x0 = draw(D, t, last)
        if on_step is not None:
            on_step(D, x0, t)
        return x0

    with torch.no_grad():
        x = _unconditional(prior, n, generator, steps, shape, "ddim", eta, "small", x0_clip, progress, spacing,
                           x0_step)
    return x.detach()
