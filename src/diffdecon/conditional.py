"""Conditional deconvolution models (Xue et al. 2023): conditional diffusion vs a CVAE.

The companion study trains two generative models of the *clean* image ``y`` given a
PSF-convolved observation ``x = Pi * y`` and the PSF ``Pi`` (their notation; noise and
pixelation neglected), and compares how many of their samples are valid deconvolutions
and how diverse the valid ones are (their eq. 3):

    V = (1/N) sum_i Tr(Sigma_i),  over samples q(y | x_i, Pi_i) with ||Pi * y - x_i||^2 < eps,

``Sigma_i`` the covariance of image features of the samples of observation ``i``.

* **Conditional diffusion** (classifier-free; their eq. 2): a UNet predicts the noise
  ``eps_theta(y_t, t, c)`` with the condition ``c = (x, Pi)`` given as extra input
  channels: the observation, and the PSF (zero-padded to the image size and centred)
  embedded by a one-layer CNN, as published. During training ``c`` is dropped (zeroed)
  with probability ``p_uncond``; sampling uses guidance weight ``w``:
  ``eps = (1 + w) eps(y_t, t, c) - w eps(y_t, t, 0)`` (``w = 0``: the conditional model).
* **CVAE** (their eq. 1 with Gaussian likelihoods): encoder ``q(z | y, c)``, prior
  ``N(0, I)``, decoder ``y_hat = g(z, c)`` whose last layer is the *fixed* convolution with
  the known PSF for the observation branch. Loss (to minimise, per image, pixel sums):
  ``alpha ||y_hat - y||^2 + beta ||Pi * y_hat - x||^2 + KL(q(z | y, c) || N(0, I))``.

Images: one band (r) of the profile's synthetic training set, sum-pooled 2 x 2 (quick:
64 -> 32 px; paper: 256 -> 128 px as published) and normalised to a peak of 1 (linear flux,
dimensionless); models work in ``2 y - 1``. PSFs: isotropic Gaussians with the published
widths 2.0 .. 4.0 px on a 128 px image, scaled to the same fraction of the image side
(32 px: 0.5 .. 1.0 px), on odd square grids of ``psf_size`` px.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import cache, paths, physics
from .config import Profile, get_profile
from .prior import NoiseSchedule

PUBLISHED = {"retained": {"diffusion": 100.0, "cvae": 53.9}, "variance": {"diffusion": 15.86, "cvae": 15.13},
             "seconds_per_sample": {"diffusion": 10.0, "cvae": 0.01}}
"""Xue et al. (2023), Table 1 and text: percent retained, conditional variance
(InceptionV3 features, 1,944 validation images of TNG), inference time per sample."""

PUBLISHED_SIGMAS_PX = (2.0, 2.5, 3.0, 3.5, 4.0)
"""Published Gaussian PSF widths [px of a 128 px image]."""

PUBLISHED_EPS = 1e-4
"""Published slack of the validity constraint: mean squared error of the re-convolved
sample against the observation (images normalised to [0, 1])."""


@dataclass(frozen=True)
class ConditionalConfig:
    """Sizes and budgets of the conditional study for one profile.

    pool : int -- sum-pooling factor from the profile's images (px).
    channels : UNet widths of the conditional diffusion model.
    T : diffusion steps (950 as published), cosine schedule.
    diffusion_steps, cvae_steps : optimizer steps; batch : images per step; lr : Adam(W).
    p_uncond : probability of dropping the condition (classifier-free training).
    latent : CVAE latent dimension; alpha, beta : weights of the clean and convolved
        reconstructions in the CVAE loss (asymmetric as published: beta > alpha).
    n_obs : observations compared; n_samples : samples per observation per model.
    sampling_steps : DDIM steps (eta = ``eta``) of the diffusion sampler (950 ancestral published).
    psf_size : side of the PSF grid [px]; checkpoint_every : optimizer steps between checkpoints.
    """

    pool: int
    channels: tuple[int, ...]
    T: int
    diffusion_steps: int
    cvae_steps: int
    batch: int
    lr: float
    p_uncond: float
    latent: int
    alpha: float
    beta: float
    n_obs: int
    n_samples: int
    sampling_steps: int
    eta: float
    psf_size: int
    checkpoint_every: int
    seed: int = 0


CONFIGS = {
    "smoke": ConditionalConfig(pool=2, channels=(16, 32), T=950, diffusion_steps=30, cvae_steps=30, batch=16,
                               lr=1e-3, p_uncond=0.1, latent=8, alpha=1.0, beta=10.0, n_obs=2, n_samples=4,
                               sampling_steps=10, eta=1.0, psf_size=5, checkpoint_every=10),
    "quick": ConditionalConfig(pool=2, channels=(16, 32, 64), T=950, diffusion_steps=2000, cvae_steps=2000,
                               batch=32, lr=1e-3, p_uncond=0.1, latent=32, alpha=1.0, beta=10.0, n_obs=8,
                               n_samples=16, sampling_steps=50, eta=1.0, psf_size=9, checkpoint_every=250),
    "paper": ConditionalConfig(pool=2, channels=(64, 128, 256, 256), T=950, diffusion_steps=40_000,
                               cvae_steps=36_000, batch=96, lr=1e-4, p_uncond=0.1, latent=128, alpha=1.0,
                               beta=10.0, n_obs=64, n_samples=32, sampling_steps=950, eta=1.0, psf_size=17,
                               checkpoint_every=1000),
}
"""Per profile. quick: 0.62 M-parameter UNet, 0.21 s per step of 32 images on 2 CPU cores
(measured), so the two models train in about 9 minutes. paper: 128 px, batch 96, Adam 1e-4, T = 950 ancestral steps as published
(about 500 epochs of 7,774 images at batch 96 is 40k steps)."""


def get_config(profile: Profile | str) -> ConditionalConfig:
    """The :class:`ConditionalConfig` of ``profile`` (raises naming the accepted profiles)."""
    name = get_profile(profile).name
    if name not in CONFIGS:
        raise ValueError(f"no conditional-study configuration for profile {name!r}; accepted: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------- data


def psf_sigmas(image_size: int) -> tuple[float, ...]:
    """The published PSF widths scaled to an ``image_size`` px image [px]:
    ``sigma * image_size / 128`` (same fraction of the image side)."""
    if int(image_size) < 4:
        raise ValueError(f"image_size={image_size!r}: expected an int >= 4 [px]")
    return tuple(s * image_size / 128 for s in PUBLISHED_SIGMAS_PX)


def gaussian_kernel(sigma_px: float, size: int) -> torch.Tensor:
    """Normalised isotropic Gaussian PSF ``(size, size)`` of width ``sigma_px`` [px], float32,
    sampled at pixel centres (``size`` odd, centre at ``size // 2``)."""
    if not sigma_px > 0:
        raise ValueError(f"sigma_px={sigma_px!r}: expected > 0 [px]")
    fwhm_px = sigma_px * 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM = 2 sqrt(2 ln 2) sigma
    return torch.from_numpy(physics.gaussian_psf(fwhm_px, size, pixel_scale_arcsec=1.0)).float()


def convolve(y: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """``Pi * y``: each image ``(B, 1, H, W)`` convolved with its own PSF ``(B, k, k)``
    ('same' size, zero padding outside the image; flux units of ``y``).

    A true convolution (the kernel is flipped), linear in ``y``; with the symmetric
    Gaussian PSFs used here it equals a correlation.
    """
    if y.dim() != 4 or y.shape[1] != 1:
        raise ValueError(f"y must be (B, 1, H, W), got {tuple(y.shape)}")
    if psf.dim() != 3 or psf.shape[0] != y.shape[0] or psf.shape[1] != psf.shape[2] or psf.shape[1] % 2 == 0:
        raise ValueError(f"psf must be (B, k, k) with k odd and B = {y.shape[0]}, got {tuple(psf.shape)}")
    b, _, h, w = y.shape
    k = psf.shape[-1]
    # grouped conv: one group per image; conv2d is a correlation, so flip the kernel
    out = F.conv2d(y.reshape(1, b, h, w), psf.flip(-1, -2)[:, None].to(y.dtype), padding=k // 2, groups=b)
    return out.reshape(b, 1, h, w)


def convolve_adjoint(r: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`convolve` in ``y`` (correlation with the PSF, zero padding)."""
    b, _, h, w = r.shape
    k = psf.shape[-1]
    out = F.conv2d(r.reshape(1, b, h, w), psf[:, None].to(r.dtype), padding=k // 2, groups=b)
    return out.reshape(b, 1, h, w)


def clean_images(profile: Profile | str, dataset=None, band: str = "r") -> torch.Tensor:
    """Clean images ``(N, 1, H, W)`` of the study: one band of the profile's training set,
    sum-pooled by the config's ``pool`` and normalised to a peak of 1 (dimensionless)."""
    profile = get_profile(profile)
    cfg = get_config(profile)
    if band not in profile.bands:
        raise ValueError(f"band={band!r}: expected one of {list(profile.bands)}")
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    img = torch.from_numpy(np.array(dataset.images[:, profile.bands.index(band)], dtype=np.float32))[:, None]
    img = F.avg_pool2d(img, cfg.pool) * cfg.pool**2
    peak = img.amax(dim=(1, 2, 3), keepdim=True)
    if not bool((peak > 0).all()):
        raise ValueError("an image has no positive pixel: cannot normalise to a peak of 1")
    return img / peak


@dataclass
class Pairs:
    """Clean images ``y`` ``(N, 1, H, W)``, PSFs ``psf`` ``(N, k, k)`` and observations
    ``x = Pi * y`` ``(N, 1, H, W)`` (dimensionless, peak-normalised ``y``)."""

    y: torch.Tensor
    psf: torch.Tensor
    x: torch.Tensor


def make_pairs(y: torch.Tensor, sigmas_px, psf_size: int, generator: torch.Generator) -> Pairs:
    """Pair each clean image with a PSF drawn uniformly from ``sigmas_px`` and its observation."""
    kernels = torch.stack([gaussian_kernel(s, psf_size) for s in sigmas_px])
    idx = torch.randint(0, len(sigmas_px), (len(y),), generator=generator)
    psf = kernels[idx]
    return Pairs(y, psf, convolve(y, psf))


def split(profile: Profile | str) -> tuple[Pairs, Pairs]:
    """(train, test) pairs from the profile's ``train`` and ``test`` galaxy splits (separate
    seed streams, as the published 7,774 / 1,944 split of TNG images); each image gets a PSF
    drawn from :func:`psf_sigmas` (seeded)."""
    from .galaxies import build_dataset

    profile = get_profile(profile)
    cfg = get_config(profile)
    out = []
    for k, name in enumerate(("train", "test")):
        y = clean_images(profile, build_dataset(profile, split=name))
        g = torch.Generator().manual_seed(cfg.seed + 11 + k)
        out.append(make_pairs(y, psf_sigmas(y.shape[-1]), cfg.psf_size, g))
    return out[0], out[1]


# --------------------------------------------------------------------------- models


def _pad_psf(psf: torch.Tensor, size: int) -> torch.Tensor:
    """PSF ``(B, k, k)`` zero-padded to ``(B, 1, size, size)``, centred."""
    k = psf.shape[-1]
    lo = (size - k) // 2
    return F.pad(psf, (lo, size - k - lo, lo, size - k - lo))[:, None]


class PSFEmbedding(torch.nn.Module):
    """The published PSF embedding: the PSF, zero-padded to the image size, through a
    one-layer CNN (3 x 3 convolution) to one extra input channel. The PSF is scaled by
    ``k^2`` first so its values are of order 1."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = int(image_size)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, psf: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_psf(psf * psf.shape[-1] ** 2, self.image_size))


class ConditionalDiffusion(torch.nn.Module):
    """``eps_theta(y_t, t, c)``, ``c = (x, Pi)``: a diffusers ``UNet2DModel`` on three channels
    (``y_t``, the observation in model space ``2 x - 1``, the PSF embedding), cosine schedule
    with ``T`` steps; ``drop`` zeroes the condition of chosen images (classifier-free).

    ``prediction`` is the network's regression target, as :attr:`Profile.prediction`:
    ``"epsilon"`` (published) or ``"v" = sqrt(abar) eps - sqrt(1 - abar) y_0``; :meth:`eps`
    converts either to the noise estimate. Measured on the quick profile: the epsilon model
    reached a noise MSE of 0.003 yet its DDIM samples had a re-convolution MSE of 0.24 (bright
    skies: Tweedie's estimate divides its error by ``sqrt(abar_{T-1})``, ``x0`` error 12 at
    t = 940), as for the prior of notebook 01; smoke and quick use v.
    """

    def __init__(self, image_size: int, channels: tuple[int, ...], T: int, prediction: str = "epsilon"):
        super().__init__()
        from diffusers import UNet2DModel

        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction={prediction!r}: expected 'epsilon' or 'v'")
        groups = math.gcd(32, *channels)
        self.image_size, self.prediction = int(image_size), prediction
        self.unet = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=1,
                                block_out_channels=tuple(channels), layers_per_block=1,
                                down_block_types=("DownBlock2D",) * len(channels),
                                up_block_types=("UpBlock2D",) * len(channels), add_attention=False,
                                norm_num_groups=groups)
        self.psf_embed = PSFEmbedding(image_size)
        self.schedule = NoiseSchedule.cosine(T)

    def forward(self, y_t: torch.Tensor, t: torch.Tensor, x: torch.Tensor, psf: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """The network output (epsilon or v, per :attr:`prediction`)."""
        c = torch.cat([2 * x - 1, self.psf_embed(psf)], dim=1)
        if drop is not None:
            c = c * (~drop).to(c.dtype).view(-1, 1, 1, 1)
        return self.unet(torch.cat([y_t, c], dim=1), t).sample

    def eps(self, y_t, t, x, psf, drop=None) -> torch.Tensor:
        """Noise estimate: the output, or ``sqrt(1 - abar) y_t + sqrt(abar) v`` for v."""
        out = self(y_t, t, x, psf, drop)
        if self.prediction == "epsilon":
            return out
        a = self.schedule.abar(t, y_t)
        return (1 - a).sqrt() * y_t + a.sqrt() * out

    def x0_hat(self, y_t, t, x, psf, drop=None) -> torch.Tensor:
        """Tweedie's ``y_0`` estimate (model space): ``(y_t - sqrt(1 - abar) eps) / sqrt(abar)``,
        or ``sqrt(abar) y_t - sqrt(1 - abar) v`` for v (no division)."""
        out = self(y_t, t, x, psf, drop)
        a = self.schedule.abar(t, y_t)
        if self.prediction == "epsilon":
            return (y_t - (1 - a).sqrt() * out) / a.sqrt()
        return a.sqrt() * y_t - (1 - a).sqrt() * out

    def loss(self, y: torch.Tensor, x: torch.Tensor, psf: torch.Tensor, g: torch.Generator,
             p_uncond: float) -> torch.Tensor:
        """Their eq. 2, ``E ||eps - eps_theta(y_t, t, c)||^2`` (or the same with v), mean over
        pixels; ``y`` in [0, 1]."""
        b = len(y)
        t = torch.randint(0, self.schedule.T, (b,), generator=g)
        eps = torch.randn(y.shape, generator=g)
        drop = torch.rand(b, generator=g) < p_uncond
        y0 = 2 * y - 1
        y_t = self.schedule.q_sample(y0, t, eps)
        if self.prediction == "epsilon":
            target = eps
        else:
            a = self.schedule.abar(t, y0)
            target = a.sqrt() * eps - (1 - a).sqrt() * y0
        return torch.mean((self(y_t, t, x, psf, drop) - target) ** 2)


class Conditioned(torch.nn.Module):
    """A :class:`ConditionalDiffusion` fixed to one condition and guidance weight, exposing
    the prior contract of :mod:`diffdecon.samplers` (``schedule``, ``shape``, ``eps``,
    ``x0_hat``), so the package's DDPM/DDIM samplers draw from ``q(y | x, Pi)``."""

    def __init__(self, model: ConditionalDiffusion, x: torch.Tensor, psf: torch.Tensor, w: float = 0.0):
        super().__init__()
        self.model, self.x, self.psf, self.w = model, x, psf, float(w)
        self.schedule = model.schedule
        self.shape = (1, model.image_size, model.image_size)

    def _cond(self, n: int):
        return self.x.expand(n, -1, -1, -1), self.psf.expand(n, -1, -1)

    def x0_hat(self, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided Tweedie estimate ``(1 + w) D(y_t, c) - w D(y_t, 0)`` (linear in the network
        output, so the same as guiding epsilon; model space)."""
        x, psf = self._cond(len(y_t))
        d = self.model.x0_hat(y_t, t, x, psf)
        if self.w:
            d = (1 + self.w) * d - self.w * self.model.x0_hat(y_t, t, x, psf, torch.ones(len(y_t), dtype=torch.bool))
        return d

    def eps(self, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided noise estimate ``(1 + w) eps(y_t, t, c) - w eps(y_t, t, 0)``."""
        a = self.schedule.abar(t, y_t)
        return (y_t - a.sqrt() * self.x0_hat(y_t, t)) / (1 - a).sqrt()


class CVAE(torch.nn.Module):
    """Conditional VAE with a PSF-convolution output layer (their Fig. 1).

    Encoder ``q(z | y, c)``: CNN on (``y``, ``x``, PSF embedding) -> mean and log-variance of
    ``z`` (``latent``-d). Decoder ``g(z, c)``: ``z`` -> a low-resolution map by a linear layer,
    transposed convolutions up to the image size, concatenated with the condition, two
    convolutions -> ``y_hat`` in [0, 1] (sigmoid). The observation branch is the fixed
    convolution of ``y_hat`` with the known PSF (:func:`convolve`).
    """

    def __init__(self, image_size: int, latent: int, width: int = 32):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size={image_size}: expected a multiple of 4 [px]")
        self.image_size, self.latent = int(image_size), int(latent)
        s = image_size // 4
        act = torch.nn.SiLU
        self.psf_embed = PSFEmbedding(image_size)
        self.enc = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1), act(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act(),
            torch.nn.Flatten(), torch.nn.Linear(2 * width * s * s, 2 * latent))
        self.dec_in = torch.nn.Linear(latent, 2 * width * s * s)
        self.dec_up = torch.nn.Sequential(
            act(), torch.nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), act(),
            torch.nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), act())
        self.dec_out = torch.nn.Sequential(
            torch.nn.Conv2d(width + 2, width, 3, padding=1), act(), torch.nn.Conv2d(width, 1, 3, padding=1))
        self._s, self._w = s, width

    def condition(self, x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        return torch.cat([2 * x - 1, self.psf_embed(psf)], dim=1)

    def encode(self, y, x, psf):
        mu, logvar = self.enc(torch.cat([2 * y - 1, self.condition(x, psf)], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        """``y_hat = g(z, c)`` in [0, 1], ``(B, 1, H, W)``."""
        h = self.dec_up(self.dec_in(z).view(-1, 2 * self._w, self._s, self._s))
        return torch.sigmoid(self.dec_out(torch.cat([h, self.condition(x, psf)], dim=1)))

    def loss(self, y, x, psf, g: torch.Generator, alpha: float, beta: float) -> torch.Tensor:
        """Negative weighted ELBO (their eq. 1), per image, pixel sums, Gaussian likelihoods
        of unit variance on the [0, 1] scale: ``alpha ||y_hat - y||^2 + beta ||Pi * y_hat - x||^2
        + KL``."""
        mu, logvar = self.encode(y, x, psf)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        y_hat = self.decode(z, x, psf)
        rec_y = ((y_hat - y) ** 2).sum(dim=(1, 2, 3))
        rec_x = ((convolve(y_hat, psf) - x) ** 2).sum(dim=(1, 2, 3))
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
        return torch.mean(alpha * rec_y + beta * rec_x + kl)

    @torch.no_grad()
    def sample(self, x: torch.Tensor, psf: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` samples ``(n, 1, H, W)`` in [0, 1] for one observation ``x`` ``(1, 1, H, W)``."""
        z = torch.randn((n, self.latent), generator=g)
        return self.decode(z, x.expand(n, -1, -1, -1), psf.expand(n, -1, -1))


# --------------------------------------------------------------------------- training


class Interrupted(RuntimeError):
    """Raised by :func:`train_model` when ``stop_after`` optimizer steps were run (tests)."""


def train_model(name: str, model: torch.nn.Module, loss_fn, train: Pairs, steps: int, batch: int, lr: float,
                seed: int, directory: Path, checkpoint_every: int, progress: bool = True,
                stop_after: int | None = None) -> list[float]:
    """Train ``model`` with AdamW on random batches of ``train``; returns the loss per step.

    ``loss_fn(model, y, x, psf, generator)`` gives a scalar. Every ``checkpoint_every``
    steps the model, optimizer, generator state and losses are saved atomically to
    ``directory / 'checkpoint.pt'``; a run started again with the same ``directory`` resumes
    from there (the caller keys ``directory`` by every input, so a checkpoint cannot belong
    to another configuration), and gives the same parameters as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    from .training import save_torch_atomic

    directory = Path(directory)
    ckpt = directory / "checkpoint.pt"
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses: list[float] = []
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["generator"])
        losses, start = list(state["losses"]), int(state["step"])
        print(f"[diffdecon] resuming {name} at step {start}/{steps} from {ckpt}")
    model.train()
    bar = tqdm(range(start, steps), desc=name, disable=not progress, mininterval=5.0, initial=start, total=steps)
    for k in bar:
        idx = torch.randint(0, len(train.y), (batch,), generator=g)
        loss = loss_fn(model, train.y[idx], train.x[idx], train.psf[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (k + 1) % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}")
        if (k + 1) % checkpoint_every == 0 or k + 1 == steps:
            save_torch_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
                               "losses": losses, "step": k + 1}, ckpt)
        if stop_after is not None and k + 1 - start >= stop_after and k + 1 < steps:
            raise Interrupted(f"{name} stopped after step {k + 1}")
    model.eval()
    return losses


def _train_cached(profile: Profile, kind: str, train: Pairs, progress: bool, force: bool = False):
    cfg = get_config(profile)
    size = train.y.shape[-1]
    if kind == "diffusion":
        def make():
            return ConditionalDiffusion(size, cfg.channels, cfg.T, profile.prediction)
        steps = cfg.diffusion_steps

        def loss_fn(m, y, x, psf, g):
            return m.loss(y, x, psf, g, cfg.p_uncond)
    elif kind == "cvae":
        def make():
            return CVAE(size, cfg.latent)
        steps = cfg.cvae_steps

        def loss_fn(m, y, x, psf, g):
            return m.loss(y, x, psf, g, cfg.alpha, cfg.beta)
    else:
        raise ValueError(f"kind={kind!r}: expected 'diffusion' or 'cvae'")
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left as it was
        torch.manual_seed(cfg.seed)
        model = make()
    data_hash = {k: [list(v.shape), hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]]
                 for k, v in (("y", train.y), ("x", train.x), ("psf", train.psf))}
    inputs = {"kind": kind, "profile": profile.name, "config": asdict(cfg), "data": data_hash, "arch": "v1",
              "init": "seeded",
              "prediction": profile.prediction if kind == "diffusion" else None}
    key = cache.hash_inputs(inputs)
    root = paths.cache_dir() / "conditional"
    weights = root / f"{kind}-{profile.name}-{key}.pt"

    def build(tmp: Path) -> None:
        losses = train_model(kind, model, loss_fn, train, steps, cfg.batch, cfg.lr, cfg.seed,
                             root / f"run-{kind}-{profile.name}-{key}", cfg.checkpoint_every, progress)
        torch.save({"state_dict": model.state_dict(), "losses": np.asarray(losses)}, tmp)

    cache.cached(weights, inputs, build, force=force, what=f"conditional {kind} model ({profile.name})")
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.eval().requires_grad_(False)
    return model, state["losses"]


def train_models(profile: Profile | str, train: Pairs, progress: bool = True):
    """The trained (conditional diffusion, CVAE) of ``profile`` and their loss curves (cached
    under ``<cache>/conditional/`` keyed by the config and training data; resumable)."""
    profile = get_profile(profile)
    diff, l_diff = _train_cached(profile, "diffusion", train, progress)
    cvae, l_cvae = _train_cached(profile, "cvae", train, progress)
    return diff, cvae, {"diffusion": l_diff, "cvae": l_cvae}


# --------------------------------------------------------------------------- comparison


def diffusion_samples(model: ConditionalDiffusion, x: torch.Tensor, psf: torch.Tensor, n: int,
                      g: torch.Generator, steps: int, eta: float = 1.0, w: float = 0.0) -> torch.Tensor:
    """``n`` samples ``(n, 1, H, W)`` of ``q(y | x, Pi)`` in [0, 1] for one observation
    ``x`` ``(1, 1, H, W)`` and PSF ``(1, k, k)``: DDIM (``eta`` = 1: ancestral with the
    small variance) over ``steps`` respaced steps, Tweedie estimate clipped to [-1, 1]."""
    from .samplers import ddim_sample

    with torch.no_grad():
        out = ddim_sample(Conditioned(model, x, psf, w), n, g, steps=steps, eta=eta, x0_clip=(-1.0, 1.0),
                          progress=False)
    return ((out + 1) / 2).clamp(0, 1)


def reconvolution_mse(samples: torch.Tensor, x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Per sample ``mean((Pi * y - x)^2)`` ``(n,)`` (the constraint of their eq. 3; images on [0, 1])."""
    n = len(samples)
    return ((convolve(samples, psf.expand(n, -1, -1)) - x) ** 2).mean(dim=(1, 2, 3))


def conditional_traces(features: list[np.ndarray]) -> np.ndarray:
    """``Tr(Sigma_i)`` per observation ``i`` (unbiased covariance of ``features[i]``, ``(n_i, D)``);
    observations with fewer than 2 samples are left out."""
    return np.array([float(np.trace(np.atleast_2d(np.cov(np.asarray(f, np.float64), rowvar=False))))
                     for f in features if len(f) >= 2])


def conditional_variance(features: list[np.ndarray]) -> float:
    """``(1/N) sum_i Tr(Sigma_i)`` over observations ``i`` (their eq. 3): ``features[i]`` the
    ``(n_i, D)`` features of observation ``i``'s retained samples (unbiased covariance;
    observations with fewer than 2 retained samples are left out). NaN when none has 2."""
    traces = conditional_traces(features)
    return float(traces.mean()) if len(traces) else float("nan")


@dataclass
class Comparison:
    """Per model: samples ``(n_obs, n_samples, 1, H, W)``, re-convolution MSE ``(n_obs,
    n_samples)``, percent retained, conditional variance of pixels and of features (and the
    standard error of the latter over observations), seconds per sample; and the
    observations compared."""

    eps: float
    test: Pairs
    samples: dict[str, torch.Tensor]
    mse: dict[str, np.ndarray]
    retained: dict[str, float]
    variance_pixels: dict[str, float]
    variance_features: dict[str, float]
    variance_features_sem: dict[str, float]
    seconds_per_sample: dict[str, float]
    feature_label: str


def pixel_features(y: torch.Tensor) -> np.ndarray:
    """Images ``(n, 1, H, W)`` as ``(n, H W)`` pixel vectors (float64)."""
    return y.flatten(1).double().numpy()


def compare(profile: Profile | str, diffusion: ConditionalDiffusion, cvae: CVAE, test: Pairs,
            eps: float = PUBLISHED_EPS, features=None, feature_label: str = "pixels",
            progress: bool = True) -> Comparison:
    """Sample both models on the first ``n_obs`` test observations and score them (eq. 3).

    ``features``: a function ``(n, 1, H, W) -> (n, D)`` for the conditional variance (the
    paper: InceptionV3); ``None`` uses pixels. Both the pixel and the feature variance are
    reported.
    """
    import time

    from tqdm.auto import tqdm

    cfg = get_config(profile)
    features = features or pixel_features
    n_obs = min(cfg.n_obs, len(test.y))
    samples: dict[str, list] = {"diffusion": [], "cvae": []}
    seconds = {"diffusion": 0.0, "cvae": 0.0}
    for i in tqdm(range(n_obs), desc="conditional samples", disable=not progress):
        x, psf = test.x[i:i + 1], test.psf[i:i + 1]
        g = torch.Generator().manual_seed(cfg.seed + 1000 + i)
        t0 = time.perf_counter()
        samples["diffusion"].append(diffusion_samples(diffusion, x, psf, cfg.n_samples, g, cfg.sampling_steps,
                                                      cfg.eta))
        t1 = time.perf_counter()
        samples["cvae"].append(cvae.sample(x, psf, cfg.n_samples, g))
        t2 = time.perf_counter()
        seconds["diffusion"] += t1 - t0
        seconds["cvae"] += t2 - t1
    out = {k: torch.stack(v) for k, v in samples.items()}
    mse, retained, var_px, var_f, var_sem = {}, {}, {}, {}, {}
    for k, s in out.items():
        m = np.stack([reconvolution_mse(s[i], test.x[i:i + 1], test.psf[i:i + 1]).numpy() for i in range(n_obs)])
        ok = m < eps
        mse[k], retained[k] = m, 100.0 * float(ok.mean())
        kept = [s[i][torch.from_numpy(ok[i])] for i in range(n_obs)]
        kept = [v for v in kept if len(v) >= 2]  # a covariance needs 2 samples
        var_px[k] = conditional_variance([pixel_features(v) for v in kept])
        traces = conditional_traces([features(v) for v in kept])
        var_f[k] = float(traces.mean()) if len(traces) else float("nan")
        var_sem[k] = float(traces.std(ddof=1) / np.sqrt(len(traces))) if len(traces) > 1 else float("nan")
    sps = {k: seconds[k] / (n_obs * cfg.n_samples) for k in seconds}
    return Comparison(eps, Pairs(test.y[:n_obs], test.psf[:n_obs], test.x[:n_obs]), out, mse, retained,
                      var_px, var_f, var_sem, sps, feature_label)


def feature_extractor():
    """``(features, label, why)`` for the conditional variance: InceptionV3 pool3 features
    (as published; images replicated to three channels) where :func:`diffdecon.fid.inception_available`,
    else pixel vectors, labelled as such; ``why`` says which and why."""
    from . import fid

    ok, why = fid.inception_available()
    if ok:
        return (lambda y: fid.inception_features((2 * y - 1).repeat(1, 3, 1, 1))), "InceptionV3 features", why
    reason = why.split(" Using galaxy-encoder")[0]
    return pixel_features, "pixels (not Inception)", f"{reason} The conditional variance is computed on pixels."
