"""The galaxy encoder: the feature extractor of the package's FID.

A small CNN trained on the synthetic training set to regress the catalogue's physical
parameters (colours, sizes, bulge fraction, inclination, knots, bar, arms) from prior-space
images; its 64-d penultimate layer is the feature space of :mod:`diffdecon.fid` and of the
UMAP check. Trained once per profile and dataset and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cache, paths
from .config import Profile, get_profile

__all__ = ["TARGET_FIELDS", "ENCODER_STEPS", "FEATURE_DIM", "catalog_targets", "GalaxyEncoder", "Encoder",
           "galaxy_encoder"]

TARGET_FIELDS = ("g_r", "r_i", "log_disk_re_kpc", "disk_h_over_r", "bulge_frac", "log_bulge_re_kpc",
                 "bulge_n", "cos_i", "knot_frac", "bar_frac", "arm_amp")
"""Catalogue quantities the encoder regresses (orientation-free; the flux scale is removed
by the normalisation, so the magnitude is not among them)."""

ENCODER_STEPS = {"smoke": 30, "quick": 600, "paper": 3000}
"""Optimizer steps of the encoder per profile (batch 64, AdamW 1e-3)."""

FEATURE_DIM = 64


def catalog_targets(catalog) -> np.ndarray:
    """``(N, len(TARGET_FIELDS))`` regression targets from a galaxies catalogue (float64)."""
    c = catalog
    cols = [c["g_r"], c["r_i"], np.log(c["disk_re_kpc"]), c["disk_h_over_r"], c["bulge_frac"],
            np.log(c["bulge_re_kpc"]), c["bulge_n"], c["cos_i"], c["knot_frac"],
            c["bar_frac"] * c["has_bar"], c["arm_amp"] * c["has_arms"]]
    return np.stack([np.asarray(v, np.float64) for v in cols], axis=1)


class GalaxyEncoder(torch.nn.Module):
    """CNN: prior-space image ``(B, 3, H, W)`` -> features ``(B, 64)`` -> catalogue targets.

    Four stride-2 3x3 convolutions (32, 64, 128, 128 channels, GroupNorm + SiLU), global
    average pooling, a 64-d linear feature layer, a linear regression head.
    """

    def __init__(self, n_targets: int = len(TARGET_FIELDS), width: int = 32, feature_dim: int = FEATURE_DIM):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[torch.nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1), torch.nn.GroupNorm(8, cout),
                       torch.nn.SiLU()]
        self.conv = torch.nn.Sequential(*layers)
        self.feature = torch.nn.Linear(chans[-1], feature_dim)
        self.head = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(feature_dim, n_targets))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d features of prior-space images ``x``."""
        return self.feature(self.conv(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Encoder:
    """A trained galaxy encoder with its provenance."""

    model: GalaxyEncoder
    target_mean: np.ndarray
    target_std: np.ndarray
    holdout_r2: dict[str, float]
    path: Path

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 256) -> np.ndarray:
        """``(N, 64)`` float64 features of prior-space images ``x`` ``(N, 3, H, W)``."""
        self.model.eval()
        return np.concatenate([self.model.features(x[i:i + batch].float()).double().numpy()
                               for i in range(0, len(x), batch)])


def _train_encoder(x: torch.Tensor, y: np.ndarray, steps: int, seed: int, progress: bool = True):
    from tqdm.auto import tqdm

    from .training import augment

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_hold = max(2, len(x) // 10)
    perm = torch.randperm(len(x), generator=g)
    hold, tr = perm[:n_hold], perm[n_hold:]
    mean, std = y[tr.numpy()].mean(0), y[tr.numpy()].std(0) + 1e-8
    yt = torch.from_numpy((y - mean) / std).float()
    model = GalaxyEncoder(n_targets=y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc="galaxy encoder", disable=not progress, mininterval=5.0):
        idx = tr[torch.randint(0, len(tr), (64,), generator=g)]
        xb = augment(x[idx], g, 0, True)  # targets are orientation-free
        loss = torch.mean((model(xb) - yt[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(x[hold]).numpy()
    yh = yt[hold].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant target has no R^2 (nan)
        r2 = 1 - ((pred - yh) ** 2).sum(0) / ((yh - yh.mean(0)) ** 2).sum(0)
    return model, mean, std, {k: float(v) if np.isfinite(v) else float("nan") for k, v in zip(TARGET_FIELDS, r2)}


def galaxy_encoder(profile: Profile | str, dataset=None, steps: int | None = None, force: bool = False,
                   progress: bool = True) -> Encoder:
    """The galaxy encoder of ``profile``, trained on its training set (cached).

    Cached as ``<cache>/fid/encoder-<profile>-<hash>.pt`` with a manifest of the dataset
    hash, architecture, steps and seed; prints cache hit / recomputed. Trained on 90% of the
    training images; ``holdout_r2`` is the coefficient of determination of each target on
    the other 10% (a check that the features carry the galaxies' physical structure).
    """
    from .prior import normalise

    profile = get_profile(profile)
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    steps = ENCODER_STEPS.get(profile.name, 600) if steps is None else int(steps)
    inputs = {"profile": profile.name, "dataset_hash": str(dataset.manifest_hash), "steps": steps,
              "seed": profile.seed, "targets": list(TARGET_FIELDS), "arch": "GalaxyEncoder(32,64)-v1",
              "asinh_a": profile.asinh_a}
    path = paths.cache_dir() / "fid" / f"encoder-{profile.name}-{cache.hash_inputs(inputs)}.pt"

    def build(tmp: Path) -> None:
        x, _ = normalise(torch.from_numpy(np.array(dataset.images, dtype=np.float32)), profile)
        model, mean, std, r2 = _train_encoder(x, catalog_targets(dataset.catalog), steps, profile.seed, progress)
        torch.save({"state_dict": model.state_dict(), "mean": mean, "std": std, "holdout_r2": r2}, tmp)

    cache.cached(path, inputs, build, force=force, what=f"galaxy encoder {profile.name}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = GalaxyEncoder()
    model.load_state_dict(state["state_dict"])
    model.eval().requires_grad_(False)
    return Encoder(model, state["mean"], state["std"], state["holdout_r2"], path)
