"""The samplers against the exact posterior of a Gaussian prior (the exactness table of
notebook 02): with a closed-form prior every error comes from the sampler, not a network."""

from __future__ import annotations

from typing import Sequence

import torch

from . import calibration, denoiser_variance

__all__ = ["exactness"]


# Long by its docstring (18 lines) and one loop per sampler family
def exactness(side: int = 8, sigma_y: float = 0.05, n: int = 256, mmps_steps: int = 100, cg_iters: int = 5,
              dps_steps: int = 1000, dps_settings: Sequence[tuple[str, float]] = (("paper", 1.0), ("reference", 0.3)),
              seed: int = 0, progress: bool = False) -> dict[str, dict]:
    """MMPS and DPS against the exact posterior of a Gaussian prior.

    Test problem (small enough for dense algebra): prior N(0, Sigma) on a ``side`` x ``side``
    image with a squared-exponential covariance (length 2 px; :func:`calibration.se_covariance`),
    A = Gaussian blur (1 px) then 2 x 2 binning (:func:`calibration.blur_downsample_matrix`),
    noise std ``sigma_y`` [prior units], one observation of a prior draw. The diffusion prior
    is the closed-form :class:`calibration.GaussianPrior`, so every error comes from the
    sampler, not from a network. MMPS runs ``mmps_steps`` steps with ``cg_iters`` CG
    iterations; DPS ``dps_steps`` steps in each (convention, zeta) of ``dps_settings``
    (default: the published ``paper`` convention with zeta = 1, and the reference DPS code's
    non-squared norm with zeta = 0.3).

    Returns
    -------
    {"mmps": errors, "mmps_isotropic": errors, "mmps_empirical": errors, "mmps_empirical_draw": errors,
    "dps_<convention>_<zeta>": errors, ...} with the keys of
    :func:`calibration.posterior_moment_errors` (mean error in posterior std, variance
    ratio, W2, chi^2) plus ``steps``, ``label`` and, for DPS, ``convention`` and ``zeta``.
    """
    from . import samplers

    if side % 2 or side < 2:
        raise ValueError(f"side={side!r}; accepted: an even number of pixels >= 2")
    Sigma = calibration.se_covariance(side, ell=2.0)
    mu = torch.zeros(side * side, dtype=torch.float64)
    prior = calibration.GaussianPrior(mu, Sigma, shape=(1, side, side))
    g = torch.Generator().manual_seed(seed)
    y, forward, mu_post, Sigma_post = calibration.blurred_observation(prior, sigma_y, g)
    out = {}
    # The Tweedie covariance is exact for a Gaussian prior; the isotropic one (the default on
    # networks) approximates it, and this row measures what that costs where the answer is known.
    # The empirical (diagonal) covariance keeps each pixel's variance and drops the
    # correlations of this smooth prior, which the blurred data constrain: its row measures that.
    dv = denoiser_variance.measure(prior, prior.sample(128, torch.Generator().manual_seed(seed + 2)),
                                   samplers.timesteps(len(prior.schedule.alphas_cumprod), 32, "quadratic"),
                                   torch.Generator().manual_seed(seed + 3), progress=False)
    # Each of these steps from the mean of p(x0 | x_t, y), which on a finite grid under-disperses the
    # samples even where the covariance is exact (the Tweedie row); the last row steps from draws
    # of it (the last step included), which is exact for a Gaussian p(x0 | x_t, y).
    for key, cov, label, draw in (("mmps", "tweedie", "MMPS, Tweedie covariance", False),
                                  ("mmps_isotropic", "isotropic", "MMPS, isotropic covariance", False),
                                  ("mmps_empirical", "empirical", "MMPS, empirical diagonal covariance", False),
                                  ("mmps_empirical_draw", "empirical",
                                   "MMPS, empirical diagonal covariance, steps from draws", True)):
        xm = samplers.mmps(prior, y, forward, sigma_y, torch.Generator().manual_seed(seed + 1), n,
                           steps=mmps_steps, cg_iters=cg_iters, progress=progress, covariance=cov,
                           **({"variance": dv} if cov == "empirical" else {}),
                           **({"x0_draw": True, "last_draw": True} if draw else {}))
        out[key] = dict(calibration.posterior_moment_errors(xm, mu_post, Sigma_post), steps=mmps_steps,
                        label=f"{label} ({mmps_steps} steps, {cg_iters} CG)")
    for conv, zeta in dps_settings:
        xd = samplers.dps(prior, y, forward, sigma_y, torch.Generator().manual_seed(seed + 2), n,
                          steps=dps_steps, zeta=zeta, convention=conv, progress=progress)
        out[f"dps_{conv}_{zeta:g}"] = dict(calibration.posterior_moment_errors(xd, mu_post, Sigma_post),
                                           steps=dps_steps, convention=conv, zeta=zeta,
                                           label=f"DPS {conv}, $\\zeta={zeta:g}$ ({dps_steps} steps)")
    return out

