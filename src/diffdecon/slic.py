"""SLIC: a learned noise score in the likelihood of a diffusion-prior posterior.

For exposures ``y_e = A_e x + eta`` with additive, non-Gaussian noise ``eta``, the score of
the noise is learned by denoising score matching (DSM) on noise cutouts with the
perturbation kernel

    p(eta_tau | eta_0) = N(eta_0, tau^2 K),     K ~ A A^T                        (1)

where ``K`` is the circulant matrix of the effective kernel (the column of ``A_e`` at the
central model pixel), with power spectrum ``|FFT(k)|^2 + 1e-3``, so that applying K^(+-1/2)
costs two FFTs. The network ``s_phi(eta, tau)`` is the Gaussian score of the cutouts'
stationary part, applied to the noise minus a learned non-Gaussian part ``g`` (cosmic rays),

    s_phi(eta, tau) = -(N + tau^2 K)^-1 (eta - g),   g = c_tau CNN(eta / c_tau, log tau),   (2)

``N`` the circulant covariance whose power spectrum is estimated from the cutouts with
pixels beyond 5 robust (MAD) sigma set to zero [e-^2], ``c_tau^2 = mean(N) + tau^2 mean(K)``.
Predicting ``g`` (in electrons, local) is easier than predicting a score correction, which
the non-local ``(N + tau^2 K)^-1`` would mix over neighbouring pixels.

Sampler (:func:`sample`): moment-matching posterior steps (as ``samplers.mmps``) with a
noise score in the likelihood. With ``D(x_t)`` Tweedie's denoiser, ``J`` its Jacobian,
``c_t = (1 - abar_t)/sqrt(abar_t)`` and ``F = A o to_flux`` (all exposures stacked)
linearised at D, the residual ``r = y - F(D)`` is noise plus the denoiser error of
covariance ``S_t = c_t F J F^T``. The SLIC likelihood score is ``-c_t J^T F^T s(r, tau_t)``
summed over the exposures, with ``tau_t^2 K`` standing for ``S_t`` (``tau_t^2`` matched in
trace by Hutchinson probes):

    x0_post = D - c_t J^T sum_e F_e^T s(r_e, tau_t).                              (3)

Used as it stands, eq. (3) diverged in the first steps with the asinh-stretched prior
(Tweedie estimates of order 1e4 in prior space at the first step): the circulant
``tau^2 K``, matched to ``S_t`` in trace only, presumably underestimates it in the
directions of the bright pixels, where the stretch's Jacobian is large. We therefore turn the
score into the residual its Gaussian part would explain, ``r_eff = -(N + tau^2 K) s(r, tau)``
(two FFTs; ``r_eff = r`` exactly for a Gaussian score), and solve with the exact
moment-matched covariance by conjugate gradients as MMPS does:

    x0_post = D + c_t J^T F^T (N + S_t)^-1 r_eff.                                 (4)

For Gaussian noise eq. (4) is MMPS with noise covariance N; where ``N + tau^2 K`` equals
``N + S_t`` it is eq. (3). ``s`` is the learned ``s_phi`` (SLIC) or the analytic Gaussian
score ``-(C + tau^2 K)^-1 r`` (:class:`GaussianNoiseScore`): one code path.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import cache, paths
from .samplers import _alphas_cumprod, _check_generator, _clip, _ddim_step, _Divergence, _randn, _time_batch, timesteps

__all__ = ["KERNEL_REGULARIZATION", "check_cutouts", "GaussianNoiseScore", "NoiseScoreNet", "dsm_loss",
           "train_noise_score", "robust_power_spectrum", "load_noise_score", "sample", "likelihood_x0"]

KERNEL_REGULARIZATION: float = 1e-3
"""Added to the power spectrum of the circulant kernel K (dimensionless, |FFT(k)|^2 <= 1)."""

NOISE_SCORE_FORM = "gaussian-score-of-eta-minus-g"
"""Form of eq. (2), recorded in the cache manifest so that weights of another form are retrained."""

TAU_RANGE: tuple[float, float] = (0.1, 1e2)
"""Training range of the kernel noise std ``tau sqrt(mean K)`` in units of sigma_w. Below
0.1 the perturbed noise density barely differs from the noise's own (whose Gaussian part
already smooths it on the scale sigma_w), while the DSM signal falls as tau^2: smaller
tau are evaluated at the lower bound."""


def _cg(matvec, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Conjugate gradients for M u = b, M symmetric positive definite and block diagonal
    over the batch (one system per sample: per-sample step sizes)."""
    def dot(a, c):
        return (a * c).flatten(1).sum(1).view(-1, *[1] * (a.ndim - 1))

    tiny = torch.finfo(b.dtype).tiny
    u, res = torch.zeros_like(b), b.clone()
    p, rs = res.clone(), dot(res, res)
    for _ in range(iters):
        Mp = matvec(p)
        pMp = dot(p, Mp)
        alpha = torch.where(pMp > 0, rs / pMp.clamp_min(tiny), torch.zeros_like(rs))
        u, res = u + alpha * p, res - alpha * Mp
        rs_new = dot(res, res)
        p = res + torch.where(rs > 0, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs)) * p
        rs = rs_new
    return u


def _fft_apply(v: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:
    """Circulant operator with real symmetric spectrum ``ps`` applied to (..., M, M) (two FFTs)."""
    return torch.fft.ifft2(torch.fft.fft2(v) * ps).real


def check_cutouts(cutouts, M: int) -> torch.Tensor:
    """Noise cutouts (n, M, M) [e-] as float32; raises naming NaNs or a wrong size."""
    c = torch.as_tensor(cutouts)
    if c.ndim != 3 or c.shape[-2:] != (M, M):
        raise ValueError(f"noise cutouts have shape {tuple(c.shape)}; accepted: (n, {M}, {M}) (the exposure size)")
    bad = int((~torch.isfinite(c)).sum())
    if bad:
        raise ValueError(f"noise cutouts contain {bad} non-finite value(s) (NaN/inf); accepted: finite values [e-]")
    return c.float()


def robust_power_spectrum(c: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """Power spectrum (M, M) [e-^2] of the stationary part of noise cutouts (n, M, M):
    ``mean |FFT(eta')|^2 / M^2`` with ``eta'`` the cutouts whose pixels beyond ``clip`` robust
    sigma (1.4826 MAD) are set to zero, rescaled for the zeroed fraction."""
    c = c.double()
    sigma = float(1.4826 * (c - c.median()).abs().median())
    keep = (c - c.median()).abs() <= clip * sigma
    e = torch.where(keep, c, torch.zeros_like(c))
    return (torch.fft.fft2(e).abs() ** 2).mean(0) / c.shape[-1] ** 2 / keep.double().mean()


class GaussianNoiseScore(nn.Module):
    """Analytic score of N(0, C) perturbed by eq. (1): ``-(C + tau^2 K)^-1 eta``.

    ``background_ps``: power spectrum of the circulant C (M, M) [e-^2]; ``kernel_ps``: of K (M, M)."""

    def __init__(self, background_ps, kernel_ps):
        super().__init__()
        self.register_buffer("background_ps", torch.as_tensor(background_ps, dtype=torch.float64))
        self.register_buffer("kernel_ps", torch.as_tensor(kernel_ps, dtype=torch.float64))

    def covariance_ps(self, tau: torch.Tensor) -> torch.Tensor:
        """Spectrum of C + tau^2 K, (B, 1, M, M) [e-^2]."""
        return self.background_ps + tau.double().view(-1, 1, 1, 1) ** 2 * self.kernel_ps

    def forward(self, eta: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau2 = tau.to(eta.dtype).reshape(-1, *[1] * (eta.ndim - 1)) ** 2
        return -_fft_apply(eta, 1.0 / (self.background_ps.to(eta.dtype) + tau2 * self.kernel_ps.to(eta.dtype)))


class NoiseScoreNet(nn.Module):
    """``s_phi(eta, tau)`` of eq. (2) for (..., M, M) noise [e-] and tau (B,) [e-]; score [1/e-].

    ``kernel_ps``: spectrum of K (M, M); ``noise_ps``: spectrum of N (M, M) [e-^2], see
    :func:`robust_power_spectrum`; ``width`` channels of dilated circular 3x3 convolutions
    (receptive field 33 px)."""

    def __init__(self, M: int, kernel_ps, noise_ps, width: int = 32):
        super().__init__()
        self.M, self.width = int(M), int(width)
        self.register_buffer("kernel_ps", torch.as_tensor(kernel_ps, dtype=torch.float32))
        self.register_buffer("noise_ps", torch.as_tensor(noise_ps, dtype=torch.float32))
        for name, ps in (("kernel_ps", self.kernel_ps), ("noise_ps", self.noise_ps)):
            if ps.shape != (M, M):
                raise ValueError(f"{name} has shape {tuple(ps.shape)}; accepted: ({M}, {M})")
        self.sigma_w = float(self.noise_ps.mean()) ** 0.5
        layers, c_in = [], 2
        for d in (1, 2, 4, 8, 1):
            layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d, padding_mode="circular"), nn.SiLU()]
            c_in = width
        layers.append(nn.Conv2d(width, 1, 1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.cnn = nn.Sequential(*layers)

    def geometry(self) -> dict:
        """What a checkpoint must match: exposure size, kernel spectrum, noise scale, width."""
        return {"M": self.M, "kernel_sha": cache.hash_inputs({"k": [round(float(v), 6) for v in self.kernel_ps.flatten()]}),
                "sigma_w": round(self.sigma_w, 6), "width": self.width}

    def covariance_ps(self, tau: torch.Tensor) -> torch.Tensor:
        """Spectrum of the Gaussian part N + tau^2 K of eq. (2), (B, 1, M, M) [e-^2]."""
        return self.noise_ps.double() + tau.double().view(-1, 1, 1, 1) ** 2 * self.kernel_ps.double()

    def tau_bounds(self) -> tuple[float, float]:
        """Training range of tau [e-], see :data:`TAU_RANGE`."""
        s = self.sigma_w / float(self.kernel_ps.mean()) ** 0.5
        return TAU_RANGE[0] * s, TAU_RANGE[1] * s

    def forward(self, eta: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        if eta.shape[-2:] != (self.M, self.M):
            raise ValueError(f"noise of shape {tuple(eta.shape)}; this noise score was trained on "
                             f"({self.M}, {self.M}) exposures; accepted: (..., {self.M}, {self.M})")
        shape, dtype = eta.shape, eta.dtype
        e = eta.reshape(-1, self.M, self.M).float()
        t = tau.float().reshape(-1, 1)
        t = t.expand(-1, e.shape[0] // t.shape[0]).reshape(-1, 1, 1)  # one tau per leading index
        K = self.kernel_ps
        c_tau = (self.sigma_w**2 + t**2 * K.mean()).sqrt()
        lo, hi = self.tau_bounds()
        log_t = torch.log(t.clamp(lo, hi) / self.sigma_w).expand_as(e)
        g = c_tau * self.cnn(torch.stack([e / c_tau, log_t], 1))[:, 0]  # non-Gaussian part [e-]
        return -_fft_apply(e - g, 1.0 / (self.noise_ps + t**2 * K)).reshape(shape).to(dtype)  # eq. (2)


def dsm_loss(net: NoiseScoreNet, eta0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DSM loss of eq. (1) with weight tau^2 K per Fourier mode: ``||tau K^1/2 s_phi(eta_tau) + z||^2``
    per pixel, ``eta_tau = eta_0 + tau K^1/2 z``, log tau uniform over :data:`TAU_RANGE`, z in
    antithetic pairs (the batch is doubled)."""
    lo, hi = net.tau_bounds()
    u = torch.rand(eta0.shape[0], generator=generator)
    tau = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).repeat(2).view(-1, 1, 1)
    z = torch.randn(eta0.shape, generator=generator)
    # antithetic pairs (z, -z): the first-order noise of the DSM gradient cancels, which
    # matters at small tau where the score-error signal is weak against the target's variance
    eta0, z = eta0.repeat(2, 1, 1), torch.cat([z, -z])
    B = eta0.shape[0]
    sqK = net.kernel_ps.sqrt()
    eta_t = eta0 + tau * _fft_apply(z, sqK)
    s = net(eta_t, tau.view(B))
    return ((tau * _fft_apply(s, sqK) + z) ** 2).mean()


def train_noise_score(cutouts, kernel_ps, directory: Path, steps: int = 1500, batch: int = 32, lr: float = 1e-3,
                      width: int = 32, seed: int = 0, checkpoint_every: int = 250, progress: bool = True) -> NoiseScoreNet:
    """Train s_phi on noise cutouts (n, M, M) [e-], cached in ``directory`` and resumable.

    The final weights ``noise_score.pt`` carry a manifest of the inputs (cutout hash,
    kernel, hyper-parameters): a matching one is a cache hit; a partial run resumes from
    its atomic checkpoint ``checkpoint.pt`` (model, optimiser and generator state)."""
    kernel_ps = torch.as_tensor(kernel_ps, dtype=torch.float32)
    M = kernel_ps.shape[-1]
    c = check_cutouts(cutouts, M)
    noise_ps = robust_power_spectrum(c)
    net = NoiseScoreNet(M, kernel_ps, noise_ps, width)
    inputs = {"cutouts_sha": hashlib.sha256(c.numpy().tobytes()).hexdigest()[:16], "n": len(c),
              "parametrization": NOISE_SCORE_FORM, "tau_range": list(TAU_RANGE),
              "geometry": net.geometry(), "steps": steps, "batch": batch, "lr": lr, "seed": seed}
    final, ckpt = Path(directory) / "noise_score.pt", Path(directory) / "checkpoint.pt"
    try:
        if cache.check_manifest(final, inputs):
            print(f"[diffdecon] cache hit: noise score {paths.shown(final)}")
            return load_noise_score(final, M, kernel_ps)
    except cache.CacheMismatchError as err:  # made from other inputs: never reused, retrained
        print(f"[diffdecon] cached noise score does not match ({err}); retraining it")
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
        torch.manual_seed(seed)
        net = NoiseScoreNet(M, kernel_ps, noise_ps, width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["inputs"] == cache.hash_inputs(inputs):
            net.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), g.set_state(state["rng"])
            start = state["step"]
            print(f"[diffdecon] resuming noise score training at step {start} from {paths.shown(ckpt)}")
    for step in tqdm(range(start, steps), desc="noise score (DSM)", disable=not progress, leave=False):
        idx = torch.randint(0, len(c), (batch,), generator=g)
        loss = dsm_loss(net, c[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            with cache.atomic_path(ckpt) as tmp:
                torch.save({"step": step + 1, "model": net.state_dict(), "opt": opt.state_dict(),
                            "rng": g.get_state(), "inputs": cache.hash_inputs(inputs)}, tmp)
    with cache.atomic_path(final) as tmp:
        torch.save({"model": net.state_dict(), "geometry": net.geometry()}, tmp)
    cache.write_manifest(final, inputs)
    ckpt.unlink(missing_ok=True)
    print(f"[diffdecon] recomputed: noise score {paths.shown(final)}")
    return net.eval().requires_grad_(False)


def load_noise_score(path, M: int, kernel_ps) -> NoiseScoreNet:
    """Load a trained s_phi and check it was trained for this geometry (M, kernel)."""
    state = torch.load(path, weights_only=False)
    got = state["geometry"]
    if got["M"] != M:
        raise ValueError(f"noise score {path} was trained for another geometry: M (checkpoint {got['M']!r}, "
                         f"asked {M!r}); accepted: a checkpoint trained on {M} x {M} exposures")
    want = NoiseScoreNet(M, kernel_ps, state["model"]["noise_ps"], got["width"])
    diff = [k for k in ("M", "kernel_sha") if got[k] != want.geometry()[k]]
    if diff:
        raise ValueError(f"noise score {path} was trained for another geometry: "
                         + ", ".join(f"{k} (checkpoint {got[k]!r}, asked {want.geometry()[k]!r})" for k in diff)
                         + "; accepted: a checkpoint trained on these exposures' size and effective kernel")
    want.load_state_dict(state["model"])
    return want.eval().requires_grad_(False)


# ------------------------------------------------------------------ sampler


def likelihood_x0(prior, x_t, t: int, y, operators, to_flux: Callable, noise_score, generator, cg_iters: int = 2,
                  n_probes: int = 1, x0_clip=None):
    """Posterior denoiser of eq. (4) at one time; returns (x0_post, D, tau) detached.

    ``y`` (1, E, M, M) exposures [e-]; ``operators.A``: model flux (B, N, N) -> (B, E, M, M);
    ``to_flux``: prior space (B, C, H, W) -> model flux (B, N, N) [e-]; ``noise_score(r, tau)``
    with r (B, E, M, M) [e-] and tau (B,) [e-] returns the score [1/e-], and
    ``noise_score.covariance_ps(tau)`` the spectrum of its Gaussian part N + tau^2 K.
    ``tau^2 = c_t <v, F J F^T v> / (E M^2 mean K)`` with ``n_probes`` Rademacher probes v; the
    system of eq. (4) is solved with ``cg_iters`` conjugate-gradient iterations, whitened by N."""
    a = float(_alphas_cumprod(prior)[t])
    c = (1.0 - a) / a**0.5  # sigma_t^2 / alpha_t
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        D = _clip(prior.x0_hat(x, _time_batch(t, x.shape[0], x.device)), x0_clip)
        Dd = D.detach().requires_grad_(True)
        AD = operators.A(to_flux(Dd))
        r = y - AD.detach()

        def vjp_F(w):  # F^T w
            return torch.autograd.grad(AD, Dd, w, retain_graph=True)[0]

        def vjp_D(w):  # J^T w = J w
            return torch.autograd.grad(D, x, w, retain_graph=True)[0]

        def jvp_F(u):  # F u, A linear
            return operators.A(torch.func.jvp(to_flux, (Dd.detach(),), (u,))[1])

        quad = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(n_probes):  # Hutchinson: E[v^T F J F^T v] = tr(F J F^T)
            v = (torch.randint(0, 2, AD.shape, generator=generator, device=generator.device) * 2 - 1).to(AD)
            quad += (v * jvp_F(vjp_D(vjp_F(v)))).flatten(1).sum(1).double() / n_probes
        tau = (c * quad / AD[0].numel() / float(noise_score.kernel_ps.mean())).clamp_min(0.0).sqrt().to(r.dtype)
        r_eff = -_fft_apply(noise_score(r, tau), noise_score.covariance_ps(tau).to(r.dtype))  # eq. (4), right
        n_isqrt = noise_score.covariance_ps(torch.zeros_like(tau)).to(r.dtype).rsqrt()  # N^-1/2

        def matvec(w):  # N^-1/2 (N + c F J F^T) N^-1/2 w
            return w + c * _fft_apply(jvp_F(vjp_D(vjp_F(_fft_apply(w, n_isqrt)))), n_isqrt)

        u = _fft_apply(_cg(matvec, _fft_apply(r_eff, n_isqrt), cg_iters), n_isqrt)
        x0_post = _clip(D.detach() + c * vjp_D(vjp_F(u)), x0_clip)  # eq. (4), left
    return x0_post.detach(), D.detach(), tau


def sample(prior, y, operators, to_flux: Callable, noise_score, generator: torch.Generator, n: int, steps: int = 20,
           cg_iters: int = 2, eta: float = 1.0, n_probes: int = 1, shape=None, x0_clip=None, on_divergence: str = "raise",
           max_abs: float = 1e6, progress: bool = True):
    """Posterior samples (n, C, H, W) [prior space] under the likelihood of ``noise_score``.

    A pure function of (prior, observations ``y`` (E, M, M) [e-], ``operators``, ``to_flux``,
    noise score, generator): eq. (4) then a DDIM step (``eta = 1``: ancestral) on ``steps``
    respaced times. ``noise_score`` is a :class:`NoiseScoreNet` (SLIC) or a
    :class:`GaussianNoiseScore`; everything else is shared. See :func:`samplers.mmps` for
    ``shape``, ``x0_clip``, ``on_divergence`` and ``max_abs``.
    """
    from .samplers import _prior_dtype_device, _sample_shape

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}; accepted: a positive int")
    if not isinstance(cg_iters, int) or cg_iters < 1:
        raise ValueError(f"cg_iters={cg_iters!r}; accepted: a positive int")
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes={n_probes!r}; accepted: a positive int")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator of type {type(generator).__name__}; accepted: one torch.Generator")
    _check_generator(generator, n)
    abar = _alphas_cumprod(prior)
    ts = timesteps(abar.numel(), steps)
    a_t = abar[ts]
    a_prev = torch.cat([abar[ts[1:]], torch.ones(1, dtype=abar.dtype)])
    C, H, W = _sample_shape(prior, shape)
    dtype, device = _prior_dtype_device(prior)
    y = torch.as_tensor(y, dtype=dtype, device=device)
    if y.ndim != 3 or not torch.isfinite(y).all():
        raise ValueError(f"y of shape {tuple(y.shape)}; accepted: finite exposures (E, M, M) [e-]")
    x = _randn((n, C, H, W), generator, dtype, device)
    div = _Divergence(n, on_divergence, "slic", max_abs, device)
    for i, t in enumerate(tqdm(ts.tolist(), desc="slic", disable=not progress, leave=False)):
        x0_post, _, _ = likelihood_x0(prior, x, t, y[None], operators, to_flux, noise_score, generator, cg_iters,
                                      n_probes, x0_clip)
        z = _randn((n, C, H, W), generator, dtype, device) if a_prev[i] < 1 else None
        x = div.check(_ddim_step(x, x0_post, float(a_t[i]), float(a_prev[i]), z, eta), i, t)
    return div.finish(x.detach())
