"""Conditional deconvolution study (Xue et al. 2023, notebook 06): configuration and data.

The companion study compares generative models of the *clean* image given its
PSF-convolved observation and the PSF. In the package's notation (the paper swaps the
letters): ``x`` is the clean image (truth), ``y = Pi * x + sigma_y n`` the observation,
``n ~ N(0, I)``, ``Pi`` the PSF. Unlike the paper (noise neglected), the observations here
carry white noise of a stated level ``sigma_y``, so that the validity of a candidate can
be judged against the noise (a chi^2 test, :mod:`diffdecon.conditional_eval`).

Modules of the study:

* :mod:`diffdecon.conditional` (this one): budgets per profile, images, PSFs, the
  convolution (``physics``' operator, per-image kernels), noisy observations;
* :mod:`diffdecon.conditional_models`: the conditional diffusion model, the CVAE and the
  one-band unconditional prior, trained through :func:`diffdecon.loop.run_loop`;
* :mod:`diffdecon.conditional_eval`: the arms (samplers), validity, diversity, bootstrap.

Images: one band (r) of the profile's synthetic training set, sum-pooled ``pool x pool``
(quick: 64 -> 32 px) and normalised to a peak of 1 (linear flux, dimensionless); every
model works in ``2 x - 1``. PSFs: isotropic Gaussians with the published widths
2.0 .. 4.0 px on a 128 px image, scaled to the same fraction of the image side (32 px:
0.5 .. 1.0 px), on odd square grids of ``psf_size`` px.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import physics
from .config import Profile, get_profile
from .units import sigma_to_fwhm

PUBLISHED = {"retained": {"diffusion": 100.0, "cvae": 53.9}, "variance": {"diffusion": 15.86, "cvae": 15.13},
             "seconds_per_sample": {"diffusion": 10.0, "cvae": 0.01}}
"""Xue et al. (2023), Table 1 and text: percent retained, conditional variance
(InceptionV3 features, 1,944 validation images of TNG), inference time per sample [s]."""

PUBLISHED_SIGMAS_PX = (2.0, 2.5, 3.0, 3.5, 4.0)
"""Published Gaussian PSF widths [px of a 128 px image]."""

PUBLISHED_EPS = 1e-4
"""Published slack of the validity constraint: mean squared re-convolution error of a
noise-free observation (images on [0, 1]); replaced here by a chi^2 threshold."""


@dataclass(frozen=True)
class ConditionalConfig:
    """Sizes and budgets of the conditional study for one profile.

    pool : sum-pooling factor from the profile's images [px].
    channels : UNet widths (conditional diffusion model and one-band prior).
    T : diffusion steps (950 as published), cosine schedule.
    diffusion_steps, cvae_steps, prior_steps, sweep_steps : optimizer steps of the conditional
        diffusion model, the main CVAE, the one-band prior, each CVAE of the alpha/beta sweep.
    batch : images per step; lr : AdamW learning rate; ema_decay : EMA decay (with warm-up).
    p_uncond : probability of dropping the condition (classifier-free training).
    latent : CVAE latent dimension; alpha, beta : weights of the clean and observed
        reconstructions in the CVAE loss; sweep : the (alpha, beta) pairs of the sweep.
    sigma_y : noise standard deviation of the observations [peak-normalised flux].
    quantile : chi^2 quantile of the validity threshold.
    n_obs : test observations; n_samples : samples per observation per arm.
    sampling_steps : DDIM steps (``eta``) of the conditional model; guidance : weight ``w``.
    mmps_steps, mmps_cg, dps_steps : steps (and CG iterations) of the posterior samplers of
        the one-band prior.
    psf_size : side of the PSF grid [px]; checkpoint_every : steps between checkpoints.
    """

    pool: int
    channels: tuple[int, ...]
    T: int
    diffusion_steps: int
    cvae_steps: int
    prior_steps: int
    sweep_steps: int
    batch: int
    lr: float
    ema_decay: float
    p_uncond: float
    latent: int
    alpha: float
    beta: float
    sweep: tuple[tuple[float, float], ...]
    sigma_y: float
    quantile: float
    n_obs: int
    n_samples: int
    sampling_steps: int
    eta: float
    guidance: float
    mmps_steps: int
    mmps_cg: int
    dps_steps: int
    psf_size: int
    checkpoint_every: int
    seed: int = 0


_SWEEP = ((1.0, 1.0), (1.0, 10.0), (10.0, 1.0))

CONFIGS = {
    "smoke": ConditionalConfig(pool=2, channels=(16, 32), T=950, diffusion_steps=20, cvae_steps=20, prior_steps=20,
                               sweep_steps=10, batch=8, lr=1e-3, ema_decay=0.999, p_uncond=0.1, latent=8,
                               alpha=1.0, beta=1.0, sweep=_SWEEP[:2], sigma_y=0.01, quantile=0.99, n_obs=4,
                               n_samples=3, sampling_steps=5, eta=1.0, guidance=0.0, mmps_steps=3, mmps_cg=1,
                               dps_steps=5, psf_size=5, checkpoint_every=10),
    "quick": ConditionalConfig(pool=2, channels=(8, 16, 32), T=950, diffusion_steps=1200, cvae_steps=1500,
                               prior_steps=1200, sweep_steps=600, batch=32, lr=1e-3, ema_decay=0.999,
                               p_uncond=0.1, latent=32, alpha=1.0, beta=1.0, sweep=_SWEEP, sigma_y=0.01,
                               quantile=0.99, n_obs=64, n_samples=8, sampling_steps=50, eta=1.0, guidance=0.0,
                               mmps_steps=20, mmps_cg=2, dps_steps=50, psf_size=9, checkpoint_every=250),
    "paper": ConditionalConfig(pool=2, channels=(64, 128, 256, 256), T=950, diffusion_steps=40_000,
                               cvae_steps=36_000, prior_steps=40_000, sweep_steps=12_000, batch=96, lr=1e-4,
                               ema_decay=0.9999, p_uncond=0.1, latent=128, alpha=1.0, beta=1.0, sweep=_SWEEP,
                               sigma_y=0.01, quantile=0.99, n_obs=256, n_samples=32, sampling_steps=950, eta=1.0,
                               guidance=0.0, mmps_steps=100, mmps_cg=5, dps_steps=950, psf_size=17,
                               checkpoint_every=1000),
}
"""Per profile. paper: 128 px, batch 96, 1e-4 and T = 950 ancestral steps as published
(about 500 epochs of 7,774 images at batch 96 is 40k steps). quick: sized for about a
quarter of an hour on two CPU cores, training included."""


def get_config(profile: Profile | str) -> ConditionalConfig:
    """The :class:`ConditionalConfig` of ``profile`` (raises naming the accepted profiles)."""
    name = get_profile(profile).name
    if name not in CONFIGS:
        raise ValueError(f"no conditional-study configuration for profile {name!r}; accepted: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------- PSFs and the convolution


def psf_sigmas(image_size: int) -> tuple[float, ...]:
    """The published PSF widths scaled to an ``image_size`` px image [px]:
    ``sigma * image_size / 128`` (same fraction of the image side)."""
    if int(image_size) < 4:
        raise ValueError(f"image_size={image_size!r}: expected an int >= 4 [px]")
    return tuple(s * image_size / 128 for s in PUBLISHED_SIGMAS_PX)


def gaussian_kernel(sigma_px: float, size: int) -> torch.Tensor:
    """Normalised isotropic Gaussian PSF ``(size, size)`` of width ``sigma_px`` [px], float32,
    sampled at pixel centres (:func:`diffdecon.physics.gaussian_psf`; ``size`` odd)."""
    if not sigma_px > 0:
        raise ValueError(f"sigma_px={sigma_px!r}: expected > 0 [px]")
    return torch.from_numpy(physics.gaussian_psf(sigma_to_fwhm(sigma_px), size, pixel_scale_arcsec=1.0)).float()


def _check_pair(x: torch.Tensor, psf: torch.Tensor) -> int:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, H, W), got {tuple(x.shape)}")
    if psf.dim() != 3 or psf.shape[0] != x.shape[0] or psf.shape[1] != psf.shape[2] or psf.shape[1] % 2 == 0:
        raise ValueError(f"psf must be (B, k, k) with k odd and B = {x.shape[0]}, got {tuple(psf.shape)}")
    return psf.shape[-1] // 2


def convolve(x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """``Pi * x``: each image ``(B, 1, H, W)`` convolved with its own PSF ``(B, k, k)``
    ('same' size, zero flux outside the image; flux units of ``x``).

    The 'valid' convolution of :mod:`diffdecon.physics` (direct or FFT by kernel size) on
    the zero-padded images, one group per image.
    """
    p = _check_pair(x, psf)
    b, _, h, w = x.shape
    weight = psf.flip(-1, -2)[:, None].to(x.dtype)  # physics' convention: the flipped PSF
    out = physics._convolve_valid(F.pad(x.reshape(1, b, h, w), (p, p, p, p)), weight)
    return out.reshape(b, 1, h, w)


def convolve_adjoint(r: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`convolve` (a correlation with the PSF, cropped to the image)."""
    p = _check_pair(r, psf)
    b, _, h, w = r.shape
    full = physics._convolve_valid_adjoint(r.reshape(1, b, h, w), psf.flip(-1, -2)[:, None].to(r.dtype))
    return full[..., p:p + h, p:p + w].reshape(b, 1, h, w)


# --------------------------------------------------------------------------- images and observations


def clean_images(profile: Profile | str, dataset=None, band: str = "r") -> torch.Tensor:
    """Clean images ``x`` ``(N, 1, H, W)``: one band of the profile's training set, sum-pooled
    by the config's ``pool`` and normalised to a peak of 1 (dimensionless)."""
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


def observe(x: torch.Tensor, psf: torch.Tensor, sigma_y: float, noise: torch.Tensor) -> torch.Tensor:
    """``y = Pi * x + sigma_y n`` for standard normal ``noise`` like ``x`` [peak-normalised flux]."""
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y={sigma_y!r}: expected >= 0 [peak-normalised flux]")
    return convolve(x, psf) + sigma_y * noise


@dataclass
class Pairs:
    """Clean images ``x`` ``(N, 1, H, W)``, PSFs ``psf`` ``(N, k, k)``, noisy observations
    ``y = Pi * x + sigma_y n`` ``(N, 1, H, W)`` (peak-normalised flux) and ``sigma_y``."""

    x: torch.Tensor
    psf: torch.Tensor
    y: torch.Tensor
    sigma_y: float

    def __getitem__(self, idx) -> "Pairs":
        return Pairs(self.x[idx], self.psf[idx], self.y[idx], self.sigma_y)

    def __len__(self) -> int:
        return len(self.x)

    def digest(self) -> dict:
        """Shapes and SHA-256 (16 hex) of the tensors, for cache keys."""
        return {k: [list(v.shape), hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]]
                for k, v in (("x", self.x), ("psf", self.psf), ("y", self.y))} | {"sigma_y": self.sigma_y}


def make_pairs(x: torch.Tensor, sigmas_px, psf_size: int, sigma_y: float, generator: torch.Generator) -> Pairs:
    """Pair each clean image with a PSF drawn uniformly from ``sigmas_px`` and a noisy observation."""
    kernels = torch.stack([gaussian_kernel(s, psf_size) for s in sigmas_px])
    psf = kernels[torch.randint(0, len(sigmas_px), (len(x),), generator=generator)]
    return Pairs(x, psf, observe(x, psf, sigma_y, torch.randn(x.shape, generator=generator)), float(sigma_y))


def split(profile: Profile | str) -> tuple[Pairs, Pairs]:
    """(train, test) pairs from the profile's ``train`` and ``test`` galaxy splits (as the
    published 7,774 / 1,944 split of TNG images); PSFs from :func:`psf_sigmas`, noise of
    ``sigma_y`` (seeded). Training draws fresh noise at every step; the training pairs'
    ``y`` is one realisation."""
    from .galaxies import build_dataset

    profile = get_profile(profile)
    cfg = get_config(profile)
    out = []
    for k, name in enumerate(("train", "test")):
        x = clean_images(profile, build_dataset(profile, split=name))
        g = torch.Generator().manual_seed(cfg.seed + 11 + k)
        out.append(make_pairs(x, psf_sigmas(x.shape[-1]), cfg.psf_size, cfg.sigma_y, g))
    return out[0], out[1]
