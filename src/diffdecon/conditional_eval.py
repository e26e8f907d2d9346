"""Arms, validity and diversity of the conditional study (notebook 06).

An *arm* draws ``n`` candidate clean images for each of a batch of observations:
``arm(pairs, n, generator) -> (m, n, 1, H, W)`` in [0, 1] (peak-normalised flux). Model arms
read only ``pairs.y``, ``pairs.psf`` and ``pairs.sigma_y``; the reference arms (the
observation itself, the truth, the truth plus noise) read the truth as well. Every arm is
run by :func:`draw` on the same observations with the same seed and sample count, and
scored by :func:`score`:

* **validity** (replacing the paper's noise-free ``mean (Pi * x - y)^2 < 1e-4``): the reduced
  chi^2 of a candidate, ``chi2_r = ||Pi * x_hat - y||^2 / (N sigma_y^2)`` over the ``N``
  pixels; the truth has ``N chi2_r ~ chi^2_N``, so the threshold is the ``quantile`` of
  ``chi^2_N / N`` (:func:`chi2_threshold`) and about that fraction of truths pass;
* **diversity** (their eq. 4): per observation ``Tr(Sigma_i)`` of the features of *all*
  ``n`` candidates (the same observations for every arm), the mean over observations with
  a bootstrap interval over observations; also over the valid candidates only, on the
  observations where every model arm has at least two; and the per-pixel variance
  averaged over galaxy pixels (truth above ``3 sigma_y``) and over sky pixels.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cache, paths
from .conditional import ConditionalConfig, Pairs, convolve
from .conditional_models import CVAE, ConditionalUNet, conditioned_prior
from .config import Profile, get_profile

Arm = Callable[[Pairs, int, torch.Generator], torch.Tensor]
REFERENCES = ("observation", "truth", "truth + noise")
"""Reference arms: ``y`` itself (no deconvolution), ``x`` itself, ``x + sigma_y n`` (fresh noise)."""


# --------------------------------------------------------------------------- arms


def reference_arms() -> dict[str, Arm]:
    """The three reference arms (:data:`REFERENCES`)."""
    def rep(t, n):
        return t[:, None].expand(-1, n, -1, -1, -1).clone()

    return {"observation": lambda p, n, g: rep(p.y, n),
            "truth": lambda p, n, g: rep(p.x, n),
            "truth + noise": lambda p, n, g: rep(p.x, n) + p.sigma_y * torch.randn((len(p), n, *p.x.shape[1:]),
                                                                                   generator=g)}


def _repeat(p: Pairs, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return p.y.repeat_interleave(n, dim=0), p.psf.repeat_interleave(n, dim=0)


def _to_image(u: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Model space ``2 x - 1`` ``(m n, 1, H, W)`` -> ``(m, n, 1, H, W)`` clamped to [0, 1]."""
    return ((u + 1) / 2).clamp(0, 1).view(m, n, *u.shape[1:])


def conditional_arm(net: ConditionalUNet, profile: Profile, cfg: ConditionalConfig) -> Arm:
    """The conditional diffusion model: ``cfg.sampling_steps`` DDIM steps (``eta``), guidance
    ``w = cfg.guidance``, Tweedie's estimate clipped to [-1, 1] (the image range [0, 1])."""
    from .samplers import ddim_sample

    def arm(p: Pairs, n: int, g: torch.Generator) -> torch.Tensor:
        y, psf = _repeat(p, n)
        prior = conditioned_prior(net, profile, y, psf, cfg.guidance)
        with torch.no_grad():
            u = ddim_sample(prior, len(y), g, steps=cfg.sampling_steps, eta=cfg.eta, x0_clip=(-1.0, 1.0),
                            progress=False)
        return _to_image(u, len(p), n)

    return arm


def cvae_arm(cvae: CVAE) -> Arm:
    """The CVAE: ``z ~ q(z | y, Pi)`` decoded."""
    return lambda p, n, g: cvae.sample(p.y, p.psf, n, g)


def posterior_arm(prior, method: str, cfg: ConditionalConfig) -> Arm:
    """The one-band unconditional prior with ``samplers.mmps`` (``cfg.mmps_steps``,
    ``cfg.mmps_cg``) or ``samplers.dps`` (``cfg.dps_steps``), other arguments at their
    defaults; the forward model ``y = Pi * (u + 1) / 2`` of prior-space ``u``. DPS samples
    that diverge are returned as NaN (invalid)."""
    from . import samplers

    if method not in ("mmps", "dps"):
        raise ValueError(f"method={method!r}: expected 'mmps' or 'dps'")

    def arm(p: Pairs, n: int, g: torch.Generator) -> torch.Tensor:
        y, psf = _repeat(p, n)

        def forward(u):
            return convolve((u + 1) / 2, psf)

        if method == "mmps":
            u = samplers.mmps(prior, y, forward, p.sigma_y, g, len(y), steps=cfg.mmps_steps, cg_iters=cfg.mmps_cg,
                              progress=False)
        else:
            u, _ = samplers.dps(prior, y, forward, p.sigma_y, g, len(y), steps=cfg.dps_steps,
                                on_divergence="mask", progress=False)
        return _to_image(u.detach(), len(p), n)

    return arm


@dataclass
class Draw:
    """Candidates ``(m, n, 1, H, W)`` of one arm and the wall time per candidate [s]."""

    samples: torch.Tensor
    seconds_per_sample: float


def draw(arms: dict[str, Arm], test: Pairs, n: int, seed: int, progress: bool = True) -> dict[str, Draw]:
    """Run every arm on all of ``test`` with ``n`` candidates per observation, each from a
    generator seeded with ``seed`` (the same for every arm)."""
    out = {}
    for name, arm in arms.items():
        t0 = time.perf_counter()
        s = arm(test, n, torch.Generator().manual_seed(seed))
        dt = time.perf_counter() - t0
        if s.shape != (len(test), n, *test.x.shape[1:]):
            raise ValueError(f"arm {name!r} returned {tuple(s.shape)}; expected {(len(test), n, *test.x.shape[1:])}")
        out[name] = Draw(s, dt / (len(test) * n))
        if progress:
            print(f"[conditional] {name}: {len(test)} x {n} candidates in {dt:.1f} s")
    return out


# --------------------------------------------------------------------------- validity


def chi2_threshold(n_pixels: int, quantile: float) -> float:
    """The ``quantile`` of ``chi^2_N / N`` (``N = n_pixels``): the reduced chi^2 below which a
    candidate is valid (dimensionless)."""
    from scipy.stats import chi2

    if not 0 < quantile < 1:
        raise ValueError(f"quantile={quantile!r}: expected a float in (0, 1)")
    return float(chi2.ppf(quantile, int(n_pixels)) / int(n_pixels))


def reduced_chi2(samples: torch.Tensor, test: Pairs) -> np.ndarray:
    """``||Pi * x_hat - y||^2 / (N sigma_y^2)`` per candidate, ``(m, n)`` (NaN for NaN candidates)."""
    m, n = samples.shape[:2]
    psf = test.psf.repeat_interleave(n, dim=0)
    r = convolve(samples.flatten(0, 1).double(), psf.double()) - test.y.double().repeat_interleave(n, dim=0)
    return (r.pow(2).mean(dim=(1, 2, 3)) / test.sigma_y**2).view(m, n).numpy()


def retained_curve(chi2r: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Percent of candidates with reduced chi^2 below each threshold."""
    return np.array([100.0 * float(np.mean(chi2r < t)) for t in thresholds])


# --------------------------------------------------------------------------- diversity


def traces(features: np.ndarray) -> np.ndarray:
    """``Tr(Sigma_i)`` per observation of ``features`` ``(m, n, D)`` (unbiased covariance over
    the finite candidates; NaN where fewer than 2)."""
    out = np.full(len(features), np.nan)
    for i, f in enumerate(features):
        f = f[np.isfinite(f).all(axis=1)]
        if len(f) >= 2:
            out[i] = float(np.var(f, axis=0, ddof=1).sum())
    return out


def bootstrap_mean(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """``(mean, lo, hi)``: the mean of the finite ``values`` and its percentile bootstrap
    interval at ``level`` over them (resampled with replacement); NaNs when none is finite."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (int(n_boot), len(v)))].mean(axis=1)
    q = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def pixel_variance(samples: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per observation, the per-pixel variance over candidates averaged over the pixels of
    ``mask`` ``(m, 1, H, W)`` (bool) [(peak-normalised flux)^2]; NaN where ``mask`` is empty."""
    var = samples.double().var(dim=1, unbiased=True)  # (m, 1, H, W)
    cnt = mask.sum(dim=(1, 2, 3)).double()
    tot = (var * mask).sum(dim=(1, 2, 3))
    return torch.where(cnt > 0, tot / cnt.clamp_min(1), torch.full_like(tot, float("nan"))).numpy()


@dataclass
class Score:
    """Scores of one arm: reduced chi^2 ``(m, n)``, percent valid with its interval,
    feature diversity (all candidates) per observation and its mean and interval, per-pixel
    variance on galaxy and sky (mean and interval), seconds per candidate."""

    chi2r: np.ndarray
    retained: tuple[float, float, float]
    trace_per_obs: np.ndarray
    diversity: tuple[float, float, float]
    galaxy_var: tuple[float, float, float]
    sky_var: tuple[float, float, float]
    seconds_per_sample: float
    n_diverged: int


def score(draws: dict[str, Draw], test: Pairs, features: Callable, quantile: float, seed: int = 0) -> dict:
    """:class:`Score` of every arm at the chi^2 threshold of ``quantile``; ``features`` maps
    images ``(k, 1, H, W)`` in [0, 1] to ``(k, D)`` (NaN rows for NaN images)."""
    thr = chi2_threshold(test.x[0].numel(), quantile)
    galaxy = test.x > 3 * test.sigma_y
    out = {}
    for name, d in draws.items():
        m, n = d.samples.shape[:2]
        chi2r = reduced_chi2(d.samples, test)
        ok = np.isfinite(d.samples.flatten(2).numpy()).all(axis=2)
        f = features(torch.nan_to_num(d.samples.flatten(0, 1), nan=0.0)).reshape(m, n, -1)
        f[~ok] = np.nan
        tr = traces(f)
        out[name] = Score(chi2r, bootstrap_mean(100.0 * (chi2r < thr).mean(axis=1), seed=seed), tr,
                          bootstrap_mean(tr, seed=seed), bootstrap_mean(pixel_variance(d.samples, galaxy), seed=seed),
                          bootstrap_mean(pixel_variance(d.samples, ~galaxy), seed=seed), d.seconds_per_sample,
                          int((~ok).sum()))
    return out


def valid_diversity(draws: dict[str, Draw], scores: dict[str, Score], test: Pairs, features: Callable,
                    quantile: float, arms: list[str], seed: int = 0) -> tuple[dict, int]:
    """Feature diversity over the *valid* candidates only, on the observations where each of
    ``arms`` has at least 2 valid ones: ``({arm: (mean, lo, hi)}, number of observations)``."""
    thr = chi2_threshold(test.x[0].numel(), quantile)
    valid = {a: scores[a].chi2r < thr for a in arms}
    common = np.all([v.sum(axis=1) >= 2 for v in valid.values()], axis=0)
    out = {}
    for a in arms:
        tr = [float(np.var(features(draws[a].samples[i][torch.from_numpy(valid[a][i])]), axis=0, ddof=1).sum())
              for i in np.flatnonzero(common)]
        out[a] = bootstrap_mean(np.array(tr), seed=seed)
    return out, int(common.sum())


# --------------------------------------------------------------------------- features


def one_band_encoder(profile: Profile | str, train_x: torch.Tensor, catalog, steps: int | None = None,
                     progress: bool = True):
    """The package's galaxy encoder (:class:`diffdecon.galaxy_encoder.GalaxyEncoder`) trained on the
    study's one-band images (``2 x - 1`` in each of its three input channels) to regress the
    catalogue's physical parameters (:func:`diffdecon.galaxy_encoder.catalog_targets`); cached under
    ``<cache>/conditional/``. Returns ``(features, holdout_r2)`` with ``features`` mapping
    ``(k, 1, H, W)`` images in [0, 1] to ``(k, 64)`` float64 features."""
    from . import galaxy_encoder as ge

    profile = get_profile(profile)
    steps = ge.ENCODER_STEPS.get(profile.name, 600) if steps is None else int(steps)
    targets = ge.catalog_targets(catalog)
    digest = {"x": [list(train_x.shape), hashlib.sha256(train_x.contiguous().numpy().tobytes()).hexdigest()[:16]],
              "targets": hashlib.sha256(np.ascontiguousarray(targets).tobytes()).hexdigest()[:16]}
    inputs = {"profile": profile.name, "data": digest, "steps": steps, "seed": profile.seed, "arch": "one-band-v1"}
    path = paths.cache_dir() / "conditional" / f"encoder-{profile.name}-{cache.hash_inputs(inputs)}.pt"

    def build(tmp: Path) -> None:
        model, mean, std, r2 = ge._train_encoder((2 * train_x - 1).repeat(1, 3, 1, 1), targets, steps,
                                                 profile.seed, progress)
        torch.save({"state_dict": model.state_dict(), "holdout_r2": r2}, tmp)

    cache.cached(path, inputs, build, what=f"one-band galaxy encoder ({profile.name})")
    state = torch.load(path, map_location="cpu", weights_only=False)
    enc = ge.Encoder(ge.GalaxyEncoder(), np.zeros(1), np.ones(1), state["holdout_r2"], path)
    enc.model.load_state_dict(state["state_dict"])
    enc.model.requires_grad_(False)
    return (lambda s: enc.features((2 * s - 1).repeat(1, 3, 1, 1))), state["holdout_r2"]

