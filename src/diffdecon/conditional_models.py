"""Models of the conditional study (notebook 06), trained through the package's one loop.

* :class:`ConditionalUNet`: the classifier-free conditional diffusion network of Xue et al.
  (2023, their eq. 2), ``net(x_t, t, c)`` with ``c = (y, Pi)`` as extra input channels (the
  observation ``2 y - 1`` and the PSF embedded by a one-layer CNN, as published); the
  condition of chosen images is dropped (zeroed) during training with probability
  ``p_uncond``. It predicts ``v`` on smoke and quick (``profile.prediction``) and is sampled
  as a :class:`diffdecon.prior.DiffusionPrior` whose UNet is the network bound to one
  condition (:func:`conditioned_prior`), so the eps / v / x0 conversions are the prior's and
  the samplers are the package's. Guidance ``w``: ``(1 + w) net(c) - w net(0)`` (``w = 0``:
  the conditional model alone).
* :class:`CVAE`: their eq. 1 with the encoder on the observation and the PSF,
  ``q(z | y, Pi)``, the decoder ``x_hat = g(z, Pi)`` ending (for the observed branch) in the
  fixed convolution with the known PSF, and Gaussian likelihoods whose scale is the noise
  level ``sigma_y`` of the data. Candidates come from ``z ~ q(z | y, Pi)``.
* the one-band unconditional prior (:func:`one_band_prior`): a
  :class:`~diffdecon.prior.DiffusionPrior` on the same images and model space ``2 x - 1``,
  sampled with the package's MMPS and DPS.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import torch

from .conditional import ConditionalConfig, convolve
from .config import Profile
from .prior import DiffusionPrior, build_unet


def one_band_profile(profile: Profile, cfg: ConditionalConfig, image_size: int) -> Profile:
    """``profile`` resized for the study's networks: one band, ``image_size`` px, the config's
    widths, one layer per block, no attention, ``T`` steps (same prediction and seed)."""
    return dataclasses.replace(profile, bands=("r",), image_size=int(image_size), block_out_channels=cfg.channels,
                               layers_per_block=1, attention_resolutions=(), diffusion_steps=cfg.T)


def _pad_psf(psf: torch.Tensor, size: int) -> torch.Tensor:
    """PSF ``(B, k, k)`` zero-padded to ``(B, 1, size, size)``, centred."""
    k = psf.shape[-1]
    lo = (size - k) // 2
    return torch.nn.functional.pad(psf, (lo, size - k - lo, lo, size - k - lo))[:, None]


class PSFEmbedding(torch.nn.Module):
    """The published PSF embedding: the PSF, zero-padded to the image size, through a
    one-layer CNN (3 x 3 convolution) to one extra channel; scaled by ``k^2`` so its values
    are of order 1."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = int(image_size)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, psf: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_psf(psf * psf.shape[-1] ** 2, self.image_size))


class ConditionalUNet(torch.nn.Module):
    """``net(x_t, t, y, psf, drop)``: a diffusers UNet on (``x_t``, ``2 y - 1``, PSF embedding);
    ``drop`` (bool ``(B,)``) zeroes the condition of those images (classifier-free)."""

    def __init__(self, image_size: int, channels: tuple[int, ...]):
        super().__init__()
        from diffusers import UNet2DModel

        self.image_size = int(image_size)
        self.unet = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=1,
                                block_out_channels=tuple(channels), layers_per_block=1,
                                down_block_types=("DownBlock2D",) * len(channels),
                                up_block_types=("UpBlock2D",) * len(channels), add_attention=False,
                                norm_num_groups=math.gcd(32, *channels))
        self.psf_embed = PSFEmbedding(image_size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, psf: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        c = torch.cat([2 * y - 1, self.psf_embed(psf)], dim=1)
        if drop is not None:
            c = c * (~drop).to(c.dtype).view(-1, 1, 1, 1)
        return self.unet(torch.cat([x_t, c], dim=1), t).sample


class _Bound(torch.nn.Module):
    """The network bound to conditions ``(y, psf)`` of a batch, with guidance weight ``w``,
    behaving as a diffusers UNet (``.sample``) for :class:`DiffusionPrior`."""

    def __init__(self, net: ConditionalUNet, y: torch.Tensor, psf: torch.Tensor, w: float):
        super().__init__()
        self.net, self.y, self.psf, self.w = net, y, psf, float(w)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor):
        out = self.net(x_t, t, self.y, self.psf)
        if self.w:  # guidance is linear in the output: the same for eps and v
            drop = torch.ones(len(x_t), dtype=torch.bool, device=x_t.device)
            out = (1 + self.w) * out - self.w * self.net(x_t, t, self.y, self.psf, drop)
        return SimpleNamespace(sample=out)


def conditioned_prior(net: ConditionalUNet, profile: Profile, y: torch.Tensor, psf: torch.Tensor,
                      w: float = 0.0) -> DiffusionPrior:
    """``q(x | y, Pi)`` as a :class:`DiffusionPrior` over ``2 x - 1`` for a batch of conditions
    ``y`` ``(B, 1, H, W)`` and ``psf`` ``(B, k, k)`` (sample ``B`` images at once); ``profile``
    from :func:`one_band_profile`."""
    return DiffusionPrior(profile, unet=_Bound(net, y, psf, w)).eval()


def one_band_prior(profile: Profile) -> DiffusionPrior:
    """An untrained unconditional :class:`DiffusionPrior` for ``profile`` (from
    :func:`one_band_profile`) over ``2 x - 1``."""
    return DiffusionPrior(profile, unet=build_unet(profile))


class CVAE(torch.nn.Module):
    """Conditional VAE with a PSF-convolution output layer (their eq. 1 and Fig. 1).

    Encoder ``q(z | y, Pi)``: CNN on (``2 y - 1``, PSF embedding) -> mean and log-variance of
    ``z`` (``latent``-d). Decoder ``x_hat = g(z, Pi)``: ``z`` and the PSF (flattened grid)
    through a linear layer to a ``H/4`` map, transposed convolutions to the image size, a
    linear output; the observed branch is ``Pi * x_hat`` (:func:`convolve`, fixed).
    Candidates are clamped to [0, 1] like every arm's.
    """

    def __init__(self, image_size: int, latent: int, psf_size: int, width: int = 32):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size={image_size}: expected a multiple of 4 [px]")
        self.image_size, self.latent, self.psf_size = int(image_size), int(latent), int(psf_size)
        s, act = image_size // 4, torch.nn.SiLU
        self.psf_embed = PSFEmbedding(image_size)
        self.enc = torch.nn.Sequential(
            torch.nn.Conv2d(2, width, 3, stride=2, padding=1), act(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act(),
            torch.nn.Flatten(), torch.nn.Linear(2 * width * s * s, 2 * latent))
        self.dec_in = torch.nn.Linear(latent + psf_size**2, 2 * width * s * s)
        self.dec = torch.nn.Sequential(
            act(), torch.nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), act(),
            torch.nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), act(),
            torch.nn.Conv2d(width, 1, 3, padding=1))
        self._s, self._w = s, width

    def encode(self, y: torch.Tensor, psf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(B, latent)`` of ``q(z | y, Pi)``."""
        mu, logvar = self.enc(torch.cat([2 * y - 1, self.psf_embed(psf)], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        """``x_hat = g(z, Pi)``, ``(B, 1, H, W)`` [peak-normalised flux]; linear output (a
        sigmoid saturates on the empty sky, which is most of each image, and stalls training)."""
        h = self.dec_in(torch.cat([z, psf.flatten(1) * self.psf_size**2], dim=1))
        return self.dec(h.view(-1, 2 * self._w, self._s, self._s))

    def loss_terms(self, x, y, psf, sigma: float, noise: torch.Tensor):
        """Per image: ``(||x_hat - x||^2 / (2 sigma^2), ||Pi * x_hat - y||^2 / (2 sigma^2), KL)``
        with ``z = mu + exp(logvar / 2) noise`` (``noise`` standard normal ``(B, latent)``):
        the negative Gaussian log-likelihoods of scale ``sigma`` (up to constants) and
        ``KL(q(z | y, Pi) || N(0, I))`` [nats]."""
        mu, logvar = self.encode(y, psf)
        x_hat = self.decode(mu + torch.exp(0.5 * logvar) * noise, psf)
        rec_x = ((x_hat - x) ** 2).sum(dim=(1, 2, 3)) / (2 * sigma**2)
        rec_y = ((convolve(x_hat, psf) - y) ** 2).sum(dim=(1, 2, 3)) / (2 * sigma**2)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
        return rec_x, rec_y, kl

    def loss(self, x, y, psf, sigma: float, noise: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        """Negative weighted ELBO (their eq. 1), mean over images [nats]:
        ``alpha (-log p(x | z)) + beta (-log p(y | x_hat)) + KL``; ``alpha`` weights the clean
        image, ``beta`` the observation."""
        rec_x, rec_y, kl = self.loss_terms(x, y, psf, sigma, noise)
        return torch.mean(alpha * rec_x + beta * rec_y + kl)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, psf: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` candidates per observation, ``(B, n, 1, H, W)`` clamped to [0, 1]: ``z ~ q(z | y, Pi)``
        decoded with the PSF; ``y`` ``(B, 1, H, W)``, ``psf`` ``(B, k, k)``."""
        mu, logvar = self.encode(y, psf)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * torch.randn((len(y), n, self.latent), generator=g)
        out = self.decode(z.flatten(0, 1), psf.repeat_interleave(n, dim=0)).clamp(0, 1)
        return out.view(len(y), n, *out.shape[1:])


def active_dimensions(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Active latent dimensions (Burda et al. 2016): those whose posterior mean varies over
    observations, ``Var_y[E_q[z_d]] > threshold``; ``mu`` ``(N, latent)``."""
    if mu.dim() != 2 or len(mu) < 2:
        raise ValueError(f"mu must be (N >= 2, latent), got {tuple(mu.shape)}")
    return int((mu.double().var(dim=0) > threshold).sum())
