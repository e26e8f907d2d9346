"""The diffusion prior: UNet, cosine noise schedule and the prior-space normalisation.

A score-based DDPM (variance-preserving) with epsilon prediction, as in the paper, or
v prediction (``profile.prediction``; see :class:`diffdecon.config.Profile` for why):

* forward noising ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, ``eps ~ N(0, I)``;
* the network predicts ``eps_theta(x_t, t)``, or ``v_theta`` with
  ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022, eq. 9), from which
  ``eps_theta = sqrt(abar_t) v_theta + sqrt(1 - abar_t) x_t`` and
  ``x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_theta``;
* score ``s_theta(x_t, t) = grad log p_t(x_t) = -eps_theta / sqrt(1 - abar_t)``;
* Tweedie's posterior mean ``x0_hat = (x_t + (1 - abar_t) s_theta) / sqrt(abar_t)
  = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``.

Prior space (see ``docs/design.md``): ``x = stretch(f)``, ``f = flux * flux_norm / sum(flux)``,
``stretch(f) = 2 asinh(f / a) / asinh(1 / a) - 1``. ``x`` is dimensionless; ``f`` is
normalised flux (each image sums to ``profile.flux_norm``); ``flux`` is linear flux per
model pixel; ``scale = sum(flux) / flux_norm`` carries the flux units.

Timesteps ``t`` are integer tensors of shape ``(B,)`` in ``[0, T)``, 0-based: ``t = 0`` is
the least noisy step (``abar_0`` close to 1), ``t = T - 1`` pure noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import torch

from . import paths
from .config import Profile, get_profile

# --------------------------------------------------------------------------- schedule


X0_RANGE: tuple[float, float] = (-2.0, 3.0)
"""Sanity range of Tweedie's x0 during posterior sampling [prior space]. Like improved
DDPM's ``clip_denoised`` it keeps the first steps, where 1/sqrt(abar_t) reaches 2e4, of an
imperfect model from diverging (and the asinh inverse from overflowing), and it must not
bind on anything the prior itself draws: 3 is far above the brightest training pixel (about
1.8), and the lower bound lies below the prior's own sky, whose unconditional samples reach
x = -1.13 (negative flux) although the training images stop at x = -1. Clipping at -1
forbids that sky, and on truths drawn from the prior the posterior samples then miss the
data by tens of noise sigma at high signal-to-noise."""

def cosine_alphas_cumprod(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17, as ``abar_t`` for ``t = 0..T-1``.

    ``abar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)``;
    ``beta_t = 1 - abar(t+1)/abar(t)`` clipped at ``max_beta`` (0.999) to avoid the
    singularity at ``t = T``; the returned ``abar_t = prod_{i<=t} (1 - beta_i)`` is
    recomputed from the clipped betas (float64, dimensionless, shape ``(T,)``).
    """
    if T < 1:
        raise ValueError(f"T (number of diffusion steps) must be >= 1, got {T}")

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=np.float64)
    return np.cumprod(1.0 - betas)


@dataclass(frozen=True)
class NoiseSchedule:
    """Variance-preserving noise schedule with ``T`` steps.

    Attributes
    ----------
    alphas_cumprod : torch.Tensor
        ``abar_t``, float64, shape ``(T,)``, decreasing from about 1 to about 0.
    """

    alphas_cumprod: torch.Tensor

    @classmethod
    def cosine(cls, T: int) -> "NoiseSchedule":
        """The cosine schedule with ``T`` steps (betas clipped at 0.999)."""
        return cls(torch.from_numpy(cosine_alphas_cumprod(T)))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def betas(self) -> torch.Tensor:
        """``beta_t = 1 - abar_t / abar_{t-1}`` (``abar_{-1} = 1``), float64 ``(T,)``."""
        a = self.alphas_cumprod
        prev = torch.cat([a.new_ones(1), a[:-1]])
        return 1.0 - a / prev

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` gathered for integer ``t`` ``(B,)``, shaped ``(B, 1, 1, 1)`` in ``like``'s dtype/device."""
        t = _check_t(t, self.T, like.shape[0])
        a = self.alphas_cumprod.to(like.device)[t.to(like.device)]
        return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward noising ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4)."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _check_t(t: torch.Tensor, T: int, batch: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"t must be an integer torch tensor of shape (B,), got {type(t).__name__} "
                        f"{getattr(t, 'dtype', '')}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t must lie in [0, {T}), got values in [{int(t.min())}, {int(t.max())}]")
    return t.long()


# --------------------------------------------------------------------------- network


def feature_sides(profile: Profile) -> list[int]:
    """Side of the feature map [px] at each UNet level: ``image_size / 2**level``."""
    return [profile.image_size // 2**i for i in range(len(profile.block_out_channels))]


def build_unet(profile: Profile | str, n_heads: int = 4):
    """A diffusers ``UNet2DModel`` sized by ``profile``.

    Levels whose feature-map side [px] is in ``profile.attention_resolutions`` use
    ``AttnDownBlock2D``/``AttnUpBlock2D``; the middle block has attention when any level
    has. Every attention layer gets ``n_heads`` heads (4 as published): diffusers takes
    one head *dimension* for all levels, so after construction each attention layer's head
    count and ``1/sqrt(head_dim)`` scale are set from its own width (widths must be
    divisible by ``n_heads``). Group norm uses ``gcd(32, widths)`` groups (32 as in the
    paper when the widths allow).
    """
    from diffusers import UNet2DModel

    profile = get_profile(profile)
    ch = tuple(int(c) for c in profile.block_out_channels)
    sides = feature_sides(profile)
    if sides[-1] < 1 or profile.image_size % 2 ** (len(ch) - 1):
        raise ValueError(f"image_size {profile.image_size} cannot be halved {len(ch) - 1} times "
                         f"(block_out_channels {ch})")
    attn = [s in profile.attention_resolutions for s in sides]
    for c, a in zip(ch, attn):
        if a and c % n_heads:
            raise ValueError(f"attention width {c} is not divisible by n_heads={n_heads}")
    groups = gcd(32, *ch)
    unet = UNet2DModel(
        sample_size=profile.image_size,
        in_channels=len(profile.bands),
        out_channels=len(profile.bands),
        block_out_channels=ch,
        layers_per_block=profile.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=any(attn),
        attention_head_dim=max(1, ch[-1] // n_heads),
        norm_num_groups=groups,
    )
    from diffusers.models.attention_processor import Attention

    for m in unet.modules():
        if isinstance(m, Attention):
            head_dim = m.inner_dim // n_heads
            m.heads = n_heads
            m.sliceable_head_dim = n_heads
            m.scale = head_dim**-0.5
    return unet


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- the prior


class DiffusionPrior(torch.nn.Module):
    """The unconditional diffusion prior over prior-space images ``x`` ``(B, C, H, W)``.

    Parameters
    ----------
    profile : Profile or str
    unet : torch.nn.Module, optional
        A network ``unet(x_t, t).sample -> eps`` (or ``v``, see ``profile.prediction``);
        default :func:`build_unet` (random weights).
    """

    def __init__(self, profile: Profile | str, unet: torch.nn.Module | None = None):
        super().__init__()
        self.profile = get_profile(profile)
        self.unet = unet if unet is not None else build_unet(self.profile)
        self.schedule = NoiseSchedule.cosine(self.profile.diffusion_steps)
        self.checkpoint_sha256: str | None = None
        self.checkpoint_path: Path | None = None

    # ---- network outputs
    @property
    def T(self) -> int:
        return self.schedule.T

    def net(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's raw output: ``eps_theta`` or ``v_theta`` (``profile.prediction``)."""
        t = _check_t(t, self.T, x_t.shape[0]).to(x_t.device)
        return self.unet(x_t, t).sample

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``eps_theta(x_t, t)`` (dimensionless, shape of ``x_t``)."""
        out = self.net(x_t, t)
        if self.profile.prediction == "epsilon":
            return out
        a = self.schedule.abar(t, x_t)
        return a.sqrt() * out + (1 - a).sqrt() * x_t  # eps from v

    def score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - abar_t)`` [1 / prior-space units]."""
        return -self.eps(x_t, t) / (1 - self.schedule.abar(t, x_t)).sqrt()

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Tweedie's estimate of the clean image (prior space).

        ``x0_hat = (x_t + (1 - abar_t) s_theta) / sqrt(abar_t)
                 = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``.
        Not clipped to [-1, 1] (clipping biases the flux). ``eps`` may be given to reuse a
        network evaluation. With v prediction and no ``eps``, the well-conditioned form
        ``sqrt(abar_t) x_t - sqrt(1 - abar_t) v_theta`` is used.
        """
        a = self.schedule.abar(t, x_t)
        if eps is None and self.profile.prediction == "v":
            return a.sqrt() * x_t - (1 - a).sqrt() * self.net(x_t, t)
        if eps is None:
            eps = self.eps(x_t, t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    # ---- normalisation
    def stretch(self, f: torch.Tensor) -> torch.Tensor:
        """Prior space from normalised flux: ``x = 2 asinh(f/a) / asinh(1/a) - 1``, ``a = asinh_a``."""
        return stretch(f, self.profile.asinh_a)

    def unstretch(self, x: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`stretch`: ``f = a sinh((x + 1) asinh(1/a) / 2)`` [normalised flux]."""
        return unstretch(x, self.profile.asinh_a)

    def normalise(self, flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear flux ``(B, C, H, W)`` (or ``(C, H, W)``) -> ``(x, scale)``.

        ``scale = sum(flux) / flux_norm`` per image [flux units], shape ``(B,)`` (or ``()``);
        ``x = stretch(flux / scale)``. Raises if an image's total flux is not positive.
        """
        return normalise(flux, self.profile)

    def to_flux(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Prior space -> linear flux: ``scale * unstretch(x)`` (inverse of :meth:`normalise`)."""
        return to_flux(x, scale, self.profile)


def stretch(f, a: float):
    """``2 asinh(f/a) / asinh(1/a) - 1`` (torch tensor or numpy array; dimensionless)."""
    lib = torch if isinstance(f, torch.Tensor) else np
    return 2 * lib.asinh(f / a) / math.asinh(1 / a) - 1


def unstretch(x, a: float):
    """Exact inverse of :func:`stretch`: ``a sinh((x + 1) asinh(1/a) / 2)`` [normalised flux]."""
    lib = torch if isinstance(x, torch.Tensor) else np
    return a * lib.sinh((x + 1) * math.asinh(1 / a) / 2)


def x0_trust_region(a: float) -> float:
    """Trust region of one linearised MMPS update of ``x0`` [prior-space units]: two e-foldings
    of a bright pixel's flux, ``2 stretch_efold(a)`` (``max_step`` of :func:`diffdecon.mmps.mmps`;
    :attr:`diffdecon.problem.InverseProblem.max_step`)."""
    return 2.0 * stretch_efold(a)


def stretch_efold(a: float) -> float:
    """Step in prior space that multiplies a bright pixel's flux by e: ``2 / asinh(1/a)``
    [prior-space units] (0.38 for ``a = 0.01``), the scale on which the stretched forward
    model stops being linear."""
    return 2.0 / math.asinh(1.0 / a)


def unstretch_derivative(x, a: float):
    """``d unstretch / dx = a cosh((x + 1) k) k``, ``k = asinh(1/a) / 2`` [normalised flux per
    prior-space unit]: how much flux one step in prior space is worth at ``x``."""
    lib = torch if isinstance(x, torch.Tensor) else np
    k = math.asinh(1 / a) / 2
    return a * k * lib.cosh((x + 1) * k)


def normalise(flux: torch.Tensor, profile: Profile | str) -> tuple[torch.Tensor, torch.Tensor]:
    """See :meth:`DiffusionPrior.normalise`."""
    profile = get_profile(profile)
    flux = torch.as_tensor(flux)
    single = flux.dim() == 3
    if flux.dim() not in (3, 4):
        raise ValueError(f"flux must be (C, H, W) or (B, C, H, W), got shape {tuple(flux.shape)}")
    fb = flux[None] if single else flux
    total = fb.sum(dim=(1, 2, 3))
    if not bool((total > 0).all()):
        bad = torch.nonzero(~(total > 0)).flatten().tolist()
        raise ValueError(f"total flux must be > 0 to normalise; images {bad[:10]} have total "
                         f"{total[bad[:10]].tolist()}")
    scale = total / profile.flux_norm
    x = stretch(fb / scale.view(-1, 1, 1, 1), profile.asinh_a)
    return (x[0], scale[0]) if single else (x, scale)


def to_flux(x: torch.Tensor, scale, profile: Profile | str) -> torch.Tensor:
    """``scale * unstretch(x)`` with ``scale`` a float, ``()`` or ``(B,)`` tensor [flux units]."""
    profile = get_profile(profile)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if scale.dim() == 1:
        scale = scale.view(-1, *([1] * (x.dim() - 1)))
    return scale * unstretch(x, profile.asinh_a)


# --------------------------------------------------------------------------- checkpoints

WEIGHTS_FILE = "ema_weights.pt"
CONFIG_FILE = "config.json"


def checkpoint_dir(profile: Profile | str) -> Path:
    """Folder of the committed checkpoint of ``profile``: ``models/<profile>/``."""
    return paths.MODELS / get_profile(profile).name


def load_prior(profile: Profile | str, checkpoint: str | Path | None = None,
               map_location: str | torch.device = "cpu") -> DiffusionPrior:
    """The trained prior of ``profile`` (EMA weights), in eval mode.

    ``checkpoint``: a weights file (``*.pt`` with the UNet state dict, float32 or float16
    as the training snapshots, or a training checkpoint holding ``"ema"``) or a folder
    holding ``ema_weights.pt``; default
    ``models/<profile>/``. The weights' SHA-256 is kept in ``prior.checkpoint_sha256``.

    Raises
    ------
    FileNotFoundError
        Naming the missing path and how to make it (``make train PROFILE=<profile>``).
    """
    from .cache import sha256_file

    profile = get_profile(profile)
    path = Path(checkpoint) if checkpoint is not None else checkpoint_dir(profile)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no trained prior for profile {profile.name!r}: {path} does not exist. "
            f"Train it with `make train PROFILE={profile.name}` "
            f"(or `python scripts/train.py --profile {profile.name}`).")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if isinstance(state, dict) and "ema" in state:
        _check_profile_record(state.get("config"), profile, path)
        state = state["ema"]
    elif isinstance(state, dict) and "state_dict" in state:
        _check_profile_record(state.get("config"), profile, path)
        state = state["state_dict"]
    prior = DiffusionPrior(profile)
    # weights stored in half precision (the float16 FID snapshots) are loaded as float32
    prior.unet.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    prior.eval()
    prior.requires_grad_(False)
    prior.checkpoint_sha256 = sha256_file(path)
    prior.checkpoint_path = path
    return prior


ARCHITECTURE_FIELDS = ("block_out_channels", "layers_per_block", "attention_resolutions")
"""Fields of a profile that shape the UNet alone (not its data, schedule or normalisation):
the ones a candidate prior (``scripts/train.py --candidate``) may change."""


def load_candidate(profile: Profile | str, folder: str | Path,
                   map_location: str | torch.device = "cpu") -> DiffusionPrior:
    """The prior exported to ``folder`` by ``scripts/train.py --candidate`` (or any exported
    checkpoint folder), built with the UNet of its ``config.json``: ``profile`` with the
    :data:`ARCHITECTURE_FIELDS` of that record, everything else (image size, bands, schedule,
    stretch, pixel scale) checked against ``profile`` as :func:`load_prior` does. The prior's
    ``profile`` is that replaced profile (same name, so the same training set and caches keyed
    by the weights' SHA-256).

    Raises
    ------
    FileNotFoundError
        ``folder/config.json`` is missing (a bare weights file: use :func:`load_prior`).
    ValueError
        The record was made for another image size, bands, schedule or normalisation.
    """
    import dataclasses
    import json

    profile = get_profile(profile)
    record_path = Path(folder) / "config.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist: load_candidate takes a folder exported by "
                                "scripts/train.py (ema_weights.pt and config.json); for a bare weights file "
                                "use load_prior(profile, checkpoint=...)")
    record = json.loads(record_path.read_text()).get("config") or {}
    arch = {k: (tuple(record[k]) if isinstance(record[k], list) else record[k])
            for k in ARCHITECTURE_FIELDS if k in record}
    P = dataclasses.replace(profile, **arch)
    _check_profile_record(record, P, record_path)
    return load_prior(P, folder, map_location=map_location)


NETWORK_FIELDS = ("image_size", "block_out_channels", "layers_per_block", "attention_resolutions",
                  "diffusion_steps", "bands", "asinh_a", "pixel_scale_kpc")


def _check_profile_record(record, profile: Profile, path) -> None:
    """Refuse weights made for another network or normalisation than ``profile``'s."""
    if not record:
        return
    want = profile.to_dict()
    bad = [k for k in NETWORK_FIELDS if k in record and record[k] != want[k]]
    if bad:
        raise ValueError(f"{path} was trained with another profile: differing "
                         + ", ".join(f"{k} (checkpoint {record[k]!r}, profile {want[k]!r})" for k in bad))
