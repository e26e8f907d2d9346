"""A galaxy prior whose denoiser is exact: a Gaussian mixture about training galaxies.

The calibration of a posterior sampler on truths drawn from its prior (:mod:`diffdecon.sbc`)
tests the sampler only if the prior's denoiser is the Tweedie denoiser of the distribution
the truths come from. A trained network is not (its chain drifts under its own noising:
:mod:`diffdecon.stationarity`), and the closed-form Gaussian prior of
:mod:`diffdecon.calibration` is one on which MMPS is exact by construction. This prior sits
between them: galaxy images of the profile's size, non-Gaussian and multimodal, with the
exact denoiser in closed form, so a miscalibration measured on it is the sampler's.

Prior (prior-space units, the asinh stretch of :mod:`diffdecon.prior`):

    p(x0) = (1/K) sum_k N(x0; mu_k, s0^2 I),        mu_k = K training galaxies.

Under the VP process x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, component k gives
x_t ~ N(sqrt(abar) mu_k, v I) with v = abar s0^2 + 1 - abar, so (Tweedie, exactly)

    w_k(x_t)  = softmax_k( -|x_t - sqrt(abar) mu_k|^2 / (2 v) )
    D(x_t)    = E[x0 | x_t] = (1 - abar s0^2 / v) sum_k w_k mu_k + (sqrt(abar) s0^2 / v) x_t
    eps(x_t)  = (x_t - sqrt(abar) D) / sqrt(1 - abar),   score = -eps / sqrt(1 - abar).

and the covariance of p(x0 | x_t), exactly (the law of total covariance over components),

    Cov[x0 | x_t] = s_p^2 I + sum_k w_k d_k d_k^T,   s_p^2 = s0^2 (1 - abar) / v,
    d_k = (1 - abar s0^2 / v) (mu_k - sum_j w_j mu_j),

which equals Tweedie's second-order (sigma_t^2 / alpha_t) dD/dx_t: the covariance MMPS
approximates (:meth:`GalaxyMixturePrior.posterior_covariance`, ``covariance="exact"`` of
:func:`diffdecon.mmps.mmps`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .config import Profile, get_profile
from .errors import InputValueError

__all__ = ["GalaxyMixturePrior", "from_training_set"]


class GalaxyMixturePrior:
    """The mixture prior of the module docstring; follows the prior contract of
    :mod:`diffdecon.samplers` (``schedule``, ``eps``, ``score``, ``x0_hat``) and adds exact
    draws (:meth:`sample`).

    Parameters
    ----------
    centres : (K, C, H, W) prior-space images mu_k [prior-space units].
    s0 : float
        Standard deviation of each component [prior-space units], > 0.
    profile : Profile or str
        The profile whose grid, stretch and noise schedule the prior lives on.
    dtype : dtype of the tensors the methods return (float32 default, as the network's).
    """

    def __init__(self, centres: torch.Tensor, s0: float, profile: Profile | str, dtype: torch.dtype = torch.float32):
        from .prior import NoiseSchedule

        self.profile = get_profile(profile)
        centres = torch.as_tensor(centres, dtype=torch.float64)
        P = self.profile
        shape = (len(P.bands), P.image_size, P.image_size)
        if centres.ndim != 4 or tuple(centres.shape[1:]) != shape or centres.shape[0] < 1:
            raise InputValueError("centres shape", tuple(centres.shape), f"(K, {', '.join(map(str, shape))}), K >= 1")
        if not (s0 > 0 and np.isfinite(s0)):
            raise InputValueError("s0", s0, "a finite standard deviation > 0 [prior-space units]")
        self.shape = shape
        self.mu = centres.reshape(centres.shape[0], -1).contiguous()  # (K, d)
        self.mu_sq = (self.mu**2).sum(1)  # (K,)
        self.s0 = float(s0)
        self.schedule = NoiseSchedule.cosine(P.diffusion_steps)
        self.abar = torch.as_tensor(self.schedule.alphas_cumprod, dtype=torch.float64)
        self.dtype, self.device = dtype, torch.device("cpu")
        digest = hashlib.sha256(self.mu.numpy().tobytes() + repr(self.s0).encode()).hexdigest()
        self.identity = f"mixture-{digest[:16]}"
        """Names this prior (its centres and s0) in records; not a checkpoint."""
        self.cov_rank = 32
        """Components kept in :meth:`posterior_covariance`'s low-rank term by default (the
        heaviest; the weight the others carry is left out of the covariance, not of the mean)."""

    @property
    def K(self) -> int:
        """Number of components."""
        return self.mu.shape[0]

    def _a(self, t: torch.Tensor, B: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dtype not in (torch.int64, torch.int32) or t.ndim != 1 or t.numel() != B:
            raise InputValueError("t", f"dtype {t.dtype} shape {tuple(t.shape)}", f"an integer tensor ({B},)")
        if int(t.min()) < 0 or int(t.max()) >= self.abar.numel():
            raise InputValueError("t", t.tolist(), f"integers in [0, {self.abar.numel()})")
        return self.abar[t.cpu()].unsqueeze(1)  # (B, 1)

    def _flat(self, x_t: torch.Tensor, t: torch.Tensor):
        """``x_t`` flattened to float64 (B, d) on the CPU, abar_t and v_t (B, 1), checked."""
        if tuple(x_t.shape[1:]) != self.shape:
            raise InputValueError("x_t shape", tuple(x_t.shape), f"(B, {', '.join(map(str, self.shape))})")
        a = self._a(t, x_t.shape[0])
        return x_t.reshape(x_t.shape[0], -1).to(torch.float64).cpu(), a, a * self.s0**2 + 1.0 - a

    def _weights(self, x: torch.Tensor, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # |x - sqrt(a) mu_k|^2 without forming the (B, K, d) difference; float64 because the
        # logits differ by thousands where v is small
        dist = (x**2).sum(1, keepdim=True) - 2 * a.sqrt() * (x @ self.mu.T) + a * self.mu_sq
        return torch.softmax(-dist / (2 * v), dim=1)

    def responsibilities(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """w_k(x_t) (B, K): the posterior probability of each component given x_t (float64)."""
        return self._weights(*self._flat(x_t, t))

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie's E[x0 | x_t] (exact; module docstring), shape of ``x_t``."""
        x, a, v = self._flat(x_t, t)
        w = self._weights(x, a, v)
        D = (1 - a * self.s0**2 / v) * (w @ self.mu) + (a.sqrt() * self.s0**2 / v) * x
        return D.reshape(x_t.shape).to(x_t.dtype, copy=False).to(x_t.device)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t) = (x_t - sqrt(abar) D) / sqrt(1 - abar) (exact), shape of ``x_t``."""
        a = self._a(t, x_t.shape[0]).reshape(-1, 1, 1, 1).to(x_t.dtype).to(x_t.device)
        return (x_t - a.sqrt() * self.x0_hat(x_t, t)) / (1 - a).sqrt()

    def score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x_t) = -eps / sqrt(1 - abar) [1 / prior-space units] (exact)."""
        a = self._a(t, x_t.shape[0]).reshape(-1, 1, 1, 1).to(x_t.dtype).to(x_t.device)
        return -self.eps(x_t, t) / (1 - a).sqrt()

    def posterior_covariance(self, x_t: torch.Tensor, t: int | torch.Tensor, rank: int | None = None):
        """``Cov[x0 | x_t]`` of the module docstring as ``(c, B)``: ``c`` (B,) its isotropic part
        ``s_p^2`` and ``B`` (B, R, d) the rows ``sqrt(w_k) d_k`` of its ``R = min(rank, K)``
        heaviest components (``rank`` default :attr:`cov_rank`), so that
        ``Cov = diag(c) + B^T B`` [prior-space units^2], exact when ``R = K`` (the centring uses
        every component). ``t``: an int or an integer tensor (B,). float64, on the CPU."""
        B = x_t.shape[0]
        t = torch.full((B,), int(t), dtype=torch.int64) if isinstance(t, int) else t
        rank = self.cov_rank if rank is None else rank
        if not isinstance(rank, int) or rank < 1:
            raise InputValueError("rank", rank, "an integer >= 1 (components in the low-rank term)")
        x, a, v = self._flat(x_t, t)
        w = self._weights(x, a, v)
        w_top, idx = w.topk(min(rank, self.K), dim=1)  # (B, R)
        d = (1 - a * self.s0**2 / v).unsqueeze(-1) * (self.mu[idx] - (w @ self.mu).unsqueeze(1))  # (B, R, d)
        return (self.s0**2 * (1 - a) / v).squeeze(1), d * w_top.sqrt().unsqueeze(-1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws (n, C, H, W): a component uniformly, then N(mu_k, s0^2 I)."""
        k = torch.randint(self.K, (n,), generator=generator)
        z = torch.randn(n, self.mu.shape[1], generator=generator, dtype=torch.float64)
        return (self.mu[k] + self.s0 * z).reshape(n, *self.shape).to(self.dtype)


def from_training_set(profile: Profile | str, n_components: int, s0: float, skip: int = 0) -> GalaxyMixturePrior:
    """The mixture about ``n_components`` training galaxies of ``profile`` (from the
    ``skip``-th on), normalised as the network's training images."""
    from . import galaxies
    from .prior import normalise

    P = get_profile(profile)
    if n_components < 1:
        raise InputValueError("n_components", n_components, "an integer >= 1")
    ds = galaxies.build_dataset(P, split="train")
    if skip + n_components > len(ds.images):
        raise InputValueError("skip + n_components", skip + n_components, f"at most {len(ds.images)} training images")
    x, _ = normalise(torch.as_tensor(np.array(ds.images[skip:skip + n_components], dtype=np.float64)), P)
    return GalaxyMixturePrior(x, s0, P)
