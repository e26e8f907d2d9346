"""Training of the conditional study's models through :func:`diffdecon.loop.run_loop`.

Each step draws a batch of clean images ``x`` with replacement (seeded loop generator),
applies a random dihedral transform (the Gaussian PSFs are symmetric under it, so the
pair stays consistent), and makes a *fresh* observation ``y = Pi * x + sigma_y n`` with the
noise from the loop's noise generator, so the models never see the same noise twice.
The conditional diffusion model and the one-band prior use the package's denoising loss
(:func:`diffdecon.denoising.denoising_loss`, v or epsilon per ``profile.prediction``); the
CVAE its weighted ELBO. Weights used for sampling: the EMA of the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import cache, paths
from .conditional import ConditionalConfig, Pairs, get_config, observe
from .conditional_models import CVAE, ConditionalUNet, one_band_prior, one_band_profile
from .config import Profile, get_profile
from .loop import Loop, ema_decay_at, run_loop
from .denoising import denoising_loss
from .training import augment

KINDS = ("diffusion", "cvae", "prior")


def _batch(train: Pairs, batch: int, gen: torch.Generator, noise_gen: torch.Generator, device):
    """Clean images (dihedral-augmented), PSFs and fresh noisy observations on ``device``."""
    idx = torch.randint(0, len(train), (batch,), generator=gen)
    x = augment(train.x[idx.to(train.x.device)], gen, 0, True)
    psf = train.psf[idx.to(train.psf.device)]
    y = observe(x, psf, train.sigma_y, torch.randn(x.shape, generator=noise_gen, device=device))
    return x, y, psf


def _loss_fn(kind: str, train: Pairs, cfg: ConditionalConfig, prediction: str, alpha: float, beta: float):
    """``loss(net, k, gen, noise_gen, amp)`` of one step (see :class:`diffdecon.loop.Loop`)."""
    from .prior import NoiseSchedule

    abar = NoiseSchedule.cosine(cfg.T).alphas_cumprod.float()  # the schedule of the samplers

    def loss(net, k, gen, noise_gen, amp):
        device = next(net.parameters()).device
        x, y, psf = _batch(train, cfg.batch, gen, noise_gen, device)
        if kind == "cvae":
            noise = torch.randn((cfg.batch, net.latent), generator=noise_gen, device=device)
            return net.loss(x, y, psf, train.sigma_y, noise, alpha, beta)
        t = torch.randint(0, cfg.T, (cfg.batch,), generator=gen).to(device)
        eps = torch.randn(x.shape, generator=noise_gen, device=device)
        a = abar.to(device)
        if kind == "prior":
            return denoising_loss(lambda x_t, t_: net(x_t, t_).sample, a, 2 * x - 1, t, eps, prediction, amp)
        drop = (torch.rand(cfg.batch, generator=gen) < cfg.p_uncond).to(device)
        return denoising_loss(lambda x_t, t_: net(x_t, t_, y, psf, drop), a, 2 * x - 1, t, eps, prediction, amp)

    return loss


def make_model(kind: str, profile: Profile, cfg: ConditionalConfig, size: int) -> torch.nn.Module:
    """A freshly initialised model of ``kind`` (weights from the config seed; the global RNG
    state is left as it was). ``prior``: the UNet of the one-band prior."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if kind == "diffusion":
            return ConditionalUNet(size, cfg.channels)
        if kind == "cvae":
            return CVAE(size, cfg.latent, cfg.psf_size)
        return one_band_prior(one_band_profile(profile, cfg, size)).unet


def make_loop(kind: str, model, train: Pairs, profile: Profile, cfg: ConditionalConfig, steps: int,
              alpha: float, beta: float, record: dict) -> Loop:
    """The :class:`~diffdecon.loop.Loop` of one model of the study (constant learning rate,
    EMA with warm-up)."""
    prediction = profile.prediction
    return Loop(name=f"{kind} {profile.name}", model=model,
                loss=_loss_fn(kind, train, cfg, prediction, alpha, beta), total_steps=int(steps),
                lr_at=lambda k: cfg.lr, ema_decay_at=lambda s: ema_decay_at(s, cfg.ema_decay),
                config=record, dataset_hash=cache.hash_inputs(train.digest()), seed=cfg.seed, batch=cfg.batch,
                checkpoint_every=cfg.checkpoint_every)


def train_model(profile: Profile | str, kind: str, train: Pairs, alpha: float | None = None,
                beta: float | None = None, steps: int | None = None, device: str | None = None,
                progress: bool = True, force: bool = False):
    """The trained EMA model of ``kind`` (``diffusion``, ``cvae`` or ``prior``) and its loss
    log, cached under ``<cache>/conditional/`` keyed by the config, the training pairs and
    ``alpha``, ``beta``, ``steps`` (defaults: the config's); resumable (``run-*`` folders).
    Device: CUDA when available (``device`` overrides); the model is returned on the CPU."""
    profile = get_profile(profile)
    cfg = get_config(profile)
    alpha = cfg.alpha if alpha is None else float(alpha)
    beta = cfg.beta if beta is None else float(beta)
    steps = int(steps or {"diffusion": cfg.diffusion_steps, "cvae": cfg.cvae_steps, "prior": cfg.prior_steps}[kind])
    size = train.x.shape[-1]
    record = {"kind": kind, "profile": profile.name, "prediction": profile.prediction, "config": repr(cfg),
              "alpha": alpha, "beta": beta, "steps": steps,
              "arch": "cvae-linear-output" if kind == "cvae" else "v2"}
    key = cache.hash_inputs({**record, "data": train.digest()})
    root = paths.cache_dir() / "conditional"
    weights = root / f"{kind}-{profile.name}-{key}.pt"

    def build(tmp: Path) -> None:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        data = Pairs(train.x.to(dev), train.psf.to(dev), train.y.to(dev), train.sigma_y)
        model = make_model(kind, profile, cfg, size).to(dev)
        loop = make_loop(kind, model, data, profile, cfg, steps, alpha, beta, record)
        result = run_loop(loop, root / f"run-{kind}-{profile.name}-{key}", progress=progress)
        torch.save({"state_dict": {k: v.cpu() for k, v in result.ema.state_dict().items()},
                    "losses": np.array([r["loss"] for r in result.log]),
                    "seconds": float(result.log[-1]["elapsed_s"])}, tmp)

    cache.cached(weights, {**record, "data": train.digest()}, build, force=force,
                 what=f"conditional {kind} model ({profile.name}, alpha {alpha:g}, beta {beta:g})")
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model = make_model(kind, profile, cfg, size)
    model.load_state_dict(state["state_dict"])
    model.eval().requires_grad_(False)
    return model, state
