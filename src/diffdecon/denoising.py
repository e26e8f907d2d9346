"""The denoising loss every diffusion model of the package is trained with.

The objective is the simple epsilon loss of Ho et al. (2020), eq. 14:
``L = E_{x_0, t, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2``
with ``t`` uniform in ``[0, T)`` and a fixed (not learned) reverse variance, as published;
with ``prediction == "v"`` the target is ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``
(Salimans & Ho 2022). The prior (:mod:`diffdecon.training`) and the conditional models
(:mod:`diffdecon.conditional_training`) draw their batches and call :func:`denoising_loss`.
"""

from __future__ import annotations

import torch

__all__ = ["v_target", "denoising_loss", "training_step"]


def v_target(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022, eq. 9); ``a`` is
    ``abar_t`` broadcastable to ``x0`` (the inverse conversions are in :mod:`diffdecon.prior`)."""
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def denoising_loss(net, abar: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   prediction: str = "epsilon", amp: bool = False) -> torch.Tensor:
    """The denoising loss of every diffusion model of the package (a 0-d tensor).

    ``net(x_t, t)`` returns the network output (epsilon or v) like ``x0``; ``x0`` model-space
    images ``(B, C, H, W)`` (dimensionless); ``t`` integer times ``(B,)``; ``eps`` standard
    normal like ``x0``; ``abar`` the cumulative alphas ``(T,)`` on ``x0``'s device.
    ``prediction``: ``"epsilon"`` (Ho et al. 2020, eq. 14) or ``"v"``; ``amp``: bf16 autocast
    of the network (GPU).
    """
    if prediction not in ("epsilon", "v"):
        raise ValueError(f"prediction={prediction!r}: accepted values epsilon, v")
    a = abar[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # DDPM eq. 4
    target = eps if prediction == "epsilon" else v_target(x0, eps, a)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp):
        pred = net(x_t, t)
    return torch.mean((pred.float() - target) ** 2)  # Ho et al. eq. 14 (with v: its v analogue)


def training_step(model: torch.nn.Module, opt: torch.optim.Optimizer, abar: torch.Tensor,
                  x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, use_amp: bool = False,
                  prediction: str = "epsilon") -> torch.Tensor:
    """One optimizer step of :func:`denoising_loss` for a diffusers UNet ``model`` (benchmarks);
    returns the loss (a 0-d tensor, not synchronised)."""
    loss = denoising_loss(lambda x_t, t_: model(x_t, t_).sample, abar, x0, t, eps, prediction, use_amp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()
