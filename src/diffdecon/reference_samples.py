"""Unconditional prior samples, drawn once and cached: the reference of every variance
ratio (posterior / prior variance) and the model side of the FID.

One function, :func:`prior_samples`, keyed by what determines the samples: the profile, the
checkpoint's SHA-256, the method, the number of samples, the steps, the seed and the range
to which Tweedie's x0 is clipped (none by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import cache, paths
from .errors import InputValueError
from .prior import x0_trust_region

__all__ = ["METHODS", "prior_samples"]

METHODS: tuple[str, ...] = ("ancestral", "ddim", "ddpm")
"""``ancestral``: the posterior sampler's own chain without data (:func:`diffdecon.mmps.mmps_prior`:
DDIM with eta = 1, i.e. ancestral steps with the small variance, on the profile's time
spacing, each from a draw of ``N(D, V_t)`` with the profile's covariance when its
``x0_draw`` is set, otherwise from ``D``); ``ddim``:
deterministic DDIM (eta = 0, linear spacing) from Gaussian x_T; ``ddpm``: ancestral sampling
with the large variance beta_t (linear spacing)."""


def _cache_path(profile: str, sha: str, method: str, steps: int, n: int, seed: int, x0_clip) -> Path:
    clip = "" if x0_clip is None else f"-clip{x0_clip[0]:g}_{x0_clip[1]:g}"
    return paths.cache_dir() / "prior_samples" / f"{profile}-{sha[:16]}-{method}{steps}-n{n}-s{seed}{clip}.npy"


# Long by its docstring (24 lines): draw, key and cache
def prior_samples(prior, n: int | None = None, steps: int | None = None, seed: int | None = None,
                  method: str = "ancestral", x0_clip: tuple[float, float] | None = None, force: bool = False,
                  progress: bool = True) -> torch.Tensor:
    """``n`` unconditional samples of ``prior`` in prior space, ``(n, C, H, W)`` float32, cached.

    Parameters
    ----------
    prior : diffusion prior (``diffdecon.prior.DiffusionPrior``); its ``profile`` gives the
        defaults and its ``checkpoint_sha256`` keys the cache.
    n : int
        Number of samples (default ``profile.n_prior``).
    steps : int
        Sampling steps (default ``profile.sampling_steps``).
    seed : int
        Seed of the generator the samples are drawn from (default ``profile.seed``).
    method : {"ancestral", "ddim", "ddpm"}
        See :data:`METHODS`. The default, ``ancestral``, is the prior as the posterior
        sampler sees it: a posterior sample with no data is one of these.
    x0_clip : (lo, hi) or None
        Clamp of Tweedie's x0 at each step [prior space]; None (default) leaves it free.
    force : bool
        Draw again even when a cached product with the same inputs exists.

    Cached as ``paths.cache_dir()/prior_samples/<profile>-<sha[:16]>-<method><steps>-n<n>-s<seed>[-clip<lo>_<hi>].npy``
    with a manifest of the inputs. A prior without a checkpoint hash (untrained or built in
    memory) is sampled without caching.
    """
    from . import samplers

    P = prior.profile
    n = P.n_prior if n is None else int(n)
    steps = P.sampling_steps if steps is None else int(steps)
    seed = P.seed if seed is None else int(seed)
    if method not in METHODS:
        raise InputValueError("method", method, ", ".join(repr(m) for m in METHODS))
    if n < 1 or steps < 1:
        raise InputValueError("(n, steps)", (n, steps), "positive integers")
    clip = None if x0_clip is None else (float(x0_clip[0]), float(x0_clip[1]))

    drawn = method == "ancestral" and P.x0_draw  # the x0 draws of the posterior sampler's chain
    max_step = x0_trust_region(P.asinh_a)

    def draw() -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if drawn:
                from .mmps import mmps_prior

                x = mmps_prior(prior, g, n, steps=steps, eta=1.0, x0_clip=clip, progress=progress,
                               covariance=P.mmps_covariance, x0_draw=True, max_step=max_step, spacing=P.time_spacing,
                               last_draw=P.last_draw)
            elif method == "ancestral":
                x = samplers.ddim_sample(prior, n, g, steps=steps, eta=1.0, x0_clip=clip, progress=progress,
                                         spacing=P.time_spacing)
            else:
                sample = samplers.ddim_sample if method == "ddim" else samplers.ddpm_sample
                x = sample(prior, n, g, steps=steps, x0_clip=clip, progress=progress)
        return x.detach().cpu().float()

    sha = getattr(prior, "checkpoint_sha256", None)
    if not sha:
        print("[diffdecon] prior has no checkpoint hash: prior samples drawn, not cached")
        return draw()
    inputs = {"profile": P.name, "checkpoint_sha256": sha, "method": method, "n": n, "steps": steps, "seed": seed}
    if method == "ancestral":
        inputs["spacing"] = P.time_spacing
    if drawn:  # the denoiser variance follows the checkpoint
        inputs.update(x0_draw=True, covariance=P.mmps_covariance, max_step=max_step)
        if P.last_draw:  # keyed only when set: the caches of the chain with a mean last step stay valid
            inputs["last_draw"] = True
    if clip is not None:
        inputs["x0_clip"] = list(clip)
    tag = (P.time_spacing[:4] + ("draw" if drawn else "")) if method == "ancestral" else ""
    if drawn and P.mmps_covariance != "empirical":  # the chain's V_t: one file per covariance
        tag += "-" + P.mmps_covariance
    if drawn and P.last_draw:
        tag += "-lastdraw"
    path = _cache_path(P.name, sha, method + tag, steps, n, seed, clip)

    def build(tmp: Path) -> None:
        np.save(tmp, draw().numpy())

    cache.cached(path, inputs, build, force=force, what="prior samples")
    return torch.from_numpy(np.load(path))
