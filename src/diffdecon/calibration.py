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

__all__ = [
    "GaussianPrior",
    "exact_posterior",
    "gaussian_w2",
    "whitened_chi2",
    "tarp_coverage",
    "interval_coverage",
    "reduced_chi2",
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
        """Exact draws from N(mu, Sigma), shape (n, *shape)."""
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (self.mu + (z * self.lam.sqrt()) @ self.U.T).reshape(n, *self.shape).to(self.dtype)
