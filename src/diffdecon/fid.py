"""Frechet distance between image sets, and the feature extractors it is computed in.

``FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` (Heusel et al. 2017), the
Frechet (2-Wasserstein) distance between Gaussians fitted to two sets of features.

Feature extractors
------------------
* **galaxy encoder (default)**: a small CNN trained by this project on the training set to
  regress the synthetic catalogue's physical parameters (colours, sizes, bulge fraction,
  inclination, knots, bar, arms) from prior-space images; the features are its 64-d
  penultimate layer (:mod:`diffdecon.galaxy_encoder`). Every table and figure labels its FID "galaxy-encoder features (not
  Inception)": the numbers are *not* comparable in scale with the paper's Inception FID.
* **InceptionV3** (the paper's FID): via ``pytorch-fid``, only where it is importable *and*
  its weights are already on disk (no download is attempted). pytorch-fid imports
  torchvision, which this project does not install (no CPU build matches the pinned
  torch), so on the development machines it is unavailable and
  :func:`inception_available` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache
from .config import Profile, get_profile
# the encoder's names stay importable from here (the FID's feature extractor)
from .galaxy_encoder import (ENCODER_STEPS, FEATURE_DIM, TARGET_FIELDS, Encoder, GalaxyEncoder,  # noqa: F401
                             _train_encoder, catalog_targets, galaxy_encoder)
from .reference_samples import prior_samples

FEATURE_LABEL = "galaxy-encoder features (not Inception)"
"""Label printed beside every FID computed with the default extractor."""

# --------------------------------------------------------------------------- Frechet distance


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, ``N - 1``) of ``(N, D)`` features."""
    f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, S1, mu2, S2, eps: float = 1e-6) -> float:
    """Frechet distance ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` (feature units^2).

    ``sqrtm`` is :func:`scipy.linalg.sqrtm`; if the product is singular (fewer samples than
    dimensions), ``eps`` is added to both diagonals, as pytorch-fid does. A negligible
    imaginary part from round-off is dropped; a large one raises.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    S1, S2 = np.atleast_2d(np.asarray(S1, np.float64)), np.atleast_2d(np.asarray(S2, np.float64))
    d = mu1.shape[0]
    for name, v in (("mu2", mu2), ("S1", S1), ("S2", S2)):
        if v.shape[0] != d or (v.ndim == 2 and v.shape != (d, d)):
            raise ValueError(f"{name} has shape {v.shape}; expected ({d},) or ({d}, {d}) like mu1")
    diff = mu1 - mu2

    def bad(c) -> bool:
        tol = 1e-3 * max(1.0, float(np.abs(c).max())) if np.isfinite(c).all() else 0.0
        return not np.isfinite(c).all() or (np.iscomplexobj(c) and np.abs(np.diagonal(c).imag).max() > tol)

    covmean = linalg.sqrtm(S1 @ S2)
    if bad(covmean):  # singular product (fewer samples than dimensions): regularise
        off = np.eye(d) * eps * max(1.0, float(np.trace(S1) + np.trace(S2)) / d)
        covmean = linalg.sqrtm((S1 + off) @ (S2 + off))
        if bad(covmean):
            raise ValueError("sqrtm(S1 S2) is not real and finite even after regularisation")
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean))


def fid_from_features(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def paired_bootstrap_fid(reference, sets, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """FIDs of several feature sets against one reference, over paired bootstrap replicates.

    ``reference`` is ``(N_r, D)``; ``sets`` a sequence of ``(N, D)`` feature arrays whose rows
    are *paired* (row ``i`` of every set comes from the same draw, e.g. DDIM samples of
    several snapshots from the same initial noise ``x_T``). Each replicate resamples the
    reference rows and one common set of sample rows with replacement, so differences
    between sets keep their pairing and their spread measures how well the *change* of FID
    is determined, not only each FID. Returns ``(n_boot, len(sets))`` FIDs (feature
    units^2). Resampling duplicates rows, which biases each replicate's FID upwards; use
    the replicates for spreads (standard deviations), not as point estimates.
    """
    ref = np.asarray(reference, np.float64)
    arrs = [np.asarray(f, np.float64) for f in sets]
    if not arrs:
        raise ValueError("sets is empty: expected at least one (N, D) feature array")
    n = arrs[0].shape[0]
    for k, f in enumerate(arrs):
        if f.ndim != 2 or f.shape[0] != n or f.shape[1] != ref.shape[1]:
            raise ValueError(f"sets[{k}] has shape {f.shape}; expected ({n}, {ref.shape[1]}): "
                             "paired sets need the same rows and the reference's feature dimension")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot={n_boot!r}: expected an int >= 2")
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_boot), len(arrs)))
    for b in range(int(n_boot)):
        ir = rng.integers(0, len(ref), len(ref))
        i_s = rng.integers(0, n, n)
        stats_ref = gaussian_stats(ref[ir])
        for k, f in enumerate(arrs):
            out[b, k] = frechet_distance(*stats_ref, *gaussian_stats(f[i_s]))
    return out


# --------------------------------------------------------------------------- Inception (optional)


def inception_available() -> tuple[bool, str]:
    """Whether the Inception FID can be computed here, and why not if not.

    Needs ``pytorch_fid`` importable (it imports torchvision) and its FID weights
    (``pt_inception-2015-12-05-*.pth``) in the torch hub checkpoint folder; nothing is
    downloaded.
    """
    try:
        import pytorch_fid  # noqa: F401  (imports torchvision)
    except Exception as e:  # ImportError, or torchvision failing on the CPU build of torch
        return False, (f"pytorch-fid is not importable ({type(e).__name__}: {e}); it needs torchvision, "
                       "which has no build for this torch. Using galaxy-encoder features instead.")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not list(hub.glob("pt_inception-2015-12-05*.pth")):
        return False, (f"pytorch-fid is installed but its Inception weights are not in {hub} and are not "
                       "downloaded by this project. Using galaxy-encoder features instead.")
    return True, "pytorch-fid InceptionV3 (pool3, 2048-d)"


def inception_features(x: torch.Tensor, batch: int = 50) -> np.ndarray:
    """InceptionV3 pool3 features ``(N, 2048)`` of prior-space images ``x`` ``(N, 3, H, W)``.

    ``x`` in [-1, 1] is mapped to [0, 1] (pytorch-fid's input range), bands g, r, i as the
    three channels. Raises ``RuntimeError`` with the reason when unavailable.
    """
    ok, why = inception_available()
    if not ok:
        raise RuntimeError(why)
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = ((x[i:i + batch].float() + 1) / 2).clamp(0, 1)
            out.append(model(xb)[0].flatten(1).numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- FID of a prior


X0_CLIP: tuple[float, float] = (-1.0, 3.0)
"""Range to which Tweedie's x0 is clipped in the FID's unconditional samples [prior space]:
the range of the training images (x = -1 is zero flux) up to far above their brightest pixel.
Kept apart from the wider posterior-sampling range :data:`diffdecon.prior.X0_RANGE` so that
the committed FID table stays reproducible."""


def training_floor(encoder: Encoder, x_train: torch.Tensor, n: int, seed: int) -> float:
    """FID between two disjoint random halves (``n`` images each) of the training set: the
    value a perfect model would reach with ``n`` samples (finite-sample floor)."""
    if 2 * n > len(x_train):
        raise ValueError(f"need 2 n = {2 * n} training images for the floor, have {len(x_train)}")
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    f1 = encoder.features(x_train[perm[:n]])
    f2 = encoder.features(x_train[perm[n:2 * n]])
    return fid_from_features(f1, f2)


def save_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as JSON atomically."""
    return cache.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


# --------------------------------------------------------------------------- evaluation of a run


@dataclass
class PriorEvaluation:
    """FID of the EMA snapshots of a run, the training-set floor and the features behind them.

    steps : snapshot steps; fids : {step: FID}; floor : FID between two disjoint training
    halves of ``n`` images each; n : images per set; x_train : the ``n`` training images
    (prior space) compared with the samples; samples : {step: (n, C, H, W) prior space};
    train_features / sample_features : galaxy-encoder features; encoder : the extractor;
    label : what the features are; fid_sd : {step: standard deviation of the FID over
    bootstrap replicates}; change : {step: (FID(step) - FID(earliest), paired-bootstrap
    standard deviation of that difference)} (the snapshots' samples share their initial
    noise, so the pairing removes the sampling noise common to all snapshots); n_boot :
    bootstrap replicates.
    """

    steps: list[int]
    fids: dict[int, float]
    floor: float
    n: int
    x_train: torch.Tensor
    samples: dict[int, torch.Tensor]
    train_features: np.ndarray
    sample_features: dict[int, np.ndarray]
    encoder: Encoder
    fid_sd: dict[int, float]
    change: dict[int, tuple[float, float]]
    n_boot: int
    label: str = FEATURE_LABEL

    def falls(self, n_sd: float = 2.0) -> bool:
        """Whether the final snapshot's FID is below the earliest's by more than ``n_sd``
        paired-bootstrap standard deviations of the difference."""
        delta, sd = self.change[self.steps[-1]]
        return bool(-delta > n_sd * sd)


FID_SAMPLES = {"smoke": 8, "quick": 128, "paper": 1024}
"""Samples per snapshot for the FID (and as many training images for the reference and
for each half of the floor). The paired bootstrap spread of an FID change shrinks as
1/sqrt(n); quick uses enough samples for the change over training to be compared with it."""


def evaluate_prior(profile: Profile | str, model_dir: str | Path | None = None, dataset=None,
                   n: int | None = None, ddim_steps: int | None = None, progress: bool = True,
                   n_boot: int = 200) -> PriorEvaluation:
    """FID (galaxy-encoder features) of every EMA snapshot in ``model_dir`` vs the training set.

    ``n`` samples per snapshot (default :data:`FID_SAMPLES` of the profile, else ``profile.n_prior``), drawn with DDIM (eta = 0,
    ``ddim_steps`` steps, default ``clip(profile.sampling_steps, 10, 50)``; cached); compared with ``n`` random training images, and the floor
    with two other disjoint sets of ``n`` training images (same ``n``, so the finite-sample
    bias of the FID is the same in both).
    """
    from .prior import checkpoint_dir, normalise
    from .training import fid_steps, load_snapshot

    profile = get_profile(profile)
    if dataset is None:
        from .galaxies import build_dataset

        dataset = build_dataset(profile)
    model_dir = Path(model_dir) if model_dir is not None else checkpoint_dir(profile)
    n = FID_SAMPLES.get(profile.name, profile.n_prior) if n is None else int(n)
    ddim_steps = max(10, min(50, profile.sampling_steps)) if ddim_steps is None else int(ddim_steps)
    if 3 * n > len(dataset.images):
        raise ValueError(f"n = {n} needs 3 n = {3 * n} training images (samples' reference and the "
                         f"two floor halves), the dataset has {len(dataset.images)}")
    encoder = galaxy_encoder(profile, dataset, progress=progress)
    perm = np.random.default_rng(profile.seed + 1).permutation(len(dataset.images))
    sel = np.sort(perm[:3 * n])
    x_all, _ = normalise(torch.from_numpy(np.array(dataset.images[sel], dtype=np.float32)), profile)
    x_train, x_floor = x_all[:n], x_all[n:]
    train_features = encoder.features(x_train)
    floor = fid_from_features(encoder.features(x_floor[:n]), encoder.features(x_floor[n:]))
    fids, samples, feats = {}, {}, {}
    for s in fid_steps(profile):
        prior = load_snapshot(profile, s, model_dir)
        x = prior_samples(prior, n, steps=ddim_steps, seed=profile.seed + 7, x0_clip=X0_CLIP, method="ddim",
                          progress=progress)
        samples[s], feats[s] = x, encoder.features(x)
        fids[s] = fid_from_features(train_features, feats[s])
        print(f"[diffdecon] FID ({FEATURE_LABEL}) at step {s}: {fids[s]:.3f} (floor {floor:.3f}, n = {n})")
    steps = fid_steps(profile)
    boot = paired_bootstrap_fid(train_features, [feats[s] for s in steps], n_boot=n_boot, seed=profile.seed)
    fid_sd = {s: float(boot[:, k].std(ddof=1)) for k, s in enumerate(steps)}
    change = {s: (fids[s] - fids[steps[0]], float((boot[:, k] - boot[:, 0]).std(ddof=1)))
              for k, s in enumerate(steps)}
    return PriorEvaluation(steps, fids, floor, n, x_train, samples, train_features, feats, encoder,
                           fid_sd, change, int(n_boot))
