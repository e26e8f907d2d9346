"""The posterior of one inverse problem: sampling and its summaries.

:func:`deconvolve` draws posterior samples of an :class:`diffdecon.problem.InverseProblem`
with MMPS or DPS (:mod:`diffdecon.samplers`) and summarises them as a
:class:`PosteriorResult`: mean and standard deviation in flux, reduced chi^2 of the mean,
the variance-ratio map against unconditional prior samples
(:func:`diffdecon.reference_samples.prior_samples`) and its aperture value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import posterior, reference_samples, samplers
from .arrays import to_numpy
from .errors import DivergenceError, InputValueError
from .metrics import reduced_chi2
from .prior import X0_RANGE
from .problem import InverseProblem

__all__ = [
    "CHI2_CONVERGED", "SAMPLERS", "DIVERGED_ABS", "PosteriorResult", "deconvolve"]

SAMPLERS: tuple[str, ...] = ("mmps", "dps")


DIVERGED_ABS: float = 10.0
"""A posterior sample with any ``|x| > DIVERGED_ABS`` [prior space] counts as diverged.
Training images lie in [-1, about 2]; ``x = 10`` is a normalised flux of
``a sinh(11 asinh(1/a) / 2)``, about 2e10 (a = 0.01): 1e9 times the brightest training
pixel, and the flux grows exponentially beyond it (float64 overflows near |x| = 270)."""


@dataclass
class PosteriorResult:
    """Posterior samples of one :class:`InverseProblem` and their summaries.

    Attributes
    ----------
    samples : Tensor (n, C, H, W)
        Posterior samples in prior space (dimensionless).
    flux_samples : Tensor (n, C, H, W), float64
        The same in model flux ``s * unstretch(x)`` [flux per model px].
    mean, std : Tensor (C, H, W)
        Pixel-wise posterior mean and standard deviation of the flux [flux per model px].
    chi2 : ndarray (C,)
        Reduced chi^2 per band of ``A(mean)`` against ``y`` (dof = pixels per band).
    chi2_samples : ndarray (n,)
        Reduced chi^2 of every sample's ``A(x)`` against ``y`` (all bands); ~1 for samples
        that fit the data to the noise. :attr:`converged` tests its median.
    variance_ratio : Tensor (H, W)
        Posterior / prior variance in the [0, 1] display space, averaged over bands
        (:func:`diffdecon.posterior.variance_ratio`).
    variance_ratio_aperture : float
        Its mean within ``profile.aperture_radius_px`` [model px] of the centre.
    sampler, steps, n, seed : what was run (``seed`` None when a generator was passed).
    covariance : str or None
        MMPS's covariance of ``p(x_0 | x_t)`` (:data:`diffdecon.config.MMPS_COVARIANCES`);
        None for DPS.
    lookahead : bool
        Whether MMPS's steps fitted the data through the prior chain's lookahead
        (:mod:`diffdecon.lookahead`); False for DPS.
    wall_time_s : float
        Time spent sampling the posterior [s].
    problem : InverseProblem
    """

    samples: torch.Tensor
    flux_samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    chi2: np.ndarray
    variance_ratio: torch.Tensor
    variance_ratio_aperture: float
    sampler: str
    steps: int
    n: int
    seed: int | None
    wall_time_s: float
    problem: InverseProblem
    chi2_samples: np.ndarray | None = None
    covariance: str | None = None
    lookahead: bool = False

    @property
    def converged(self) -> bool:
        """Whether the median sample fits the data: median of :attr:`chi2_samples` at most
        :data:`CHI2_CONVERGED` (a sampler that has not converged leaves residuals far above
        the noise; a prior that cannot represent the data does too)."""
        return self.chi2_samples is None or float(np.median(self.chi2_samples)) <= CHI2_CONVERGED


CHI2_CONVERGED: float = 2.0
"""Median per-sample reduced chi^2 above which a posterior is reported as not converged (the
samples miss the data by more than the noise; calibrated samplers give about 1)."""


def _per_sample_generators(generator: torch.Generator, n: int) -> list[torch.Generator]:
    """n generators seeded from ``generator``: sample i is the same whatever the batch size."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def deconvolve(problem: InverseProblem, prior, sampler: str = "mmps", n: int | None = None, steps: int | None = None,
               generator: torch.Generator | int | None = None, batch_size: int | None = None,
               prior_samples: torch.Tensor | None = None, progress: bool = True,
               **sampler_kwargs: Any) -> PosteriorResult:
    """Sample the posterior p(x | y) of ``problem`` and summarise it.

    Parameters
    ----------
    problem : InverseProblem
    prior : diffusion prior (``diffdecon.prior.DiffusionPrior``) of ``problem.profile``.
    sampler : {"mmps", "dps"}
        :func:`diffdecon.samplers.mmps` or :func:`diffdecon.samplers.dps`.
    n : int
        Posterior samples (default ``profile.n_posterior``).
    steps : int
        Sampling steps (default ``profile.sampling_steps``).
    generator : torch.Generator or int
        Seeded source of randomness (an int is a seed; default seed ``profile.seed``). One
        generator per sample is derived from it, so results do not depend on ``batch_size``.
    batch_size : int
        Samples drawn together (default all ``n``).
    prior_samples : Tensor (N, C, H, W), optional
        Unconditional prior samples for the variance ratio (default
        :func:`diffdecon.reference_samples.prior_samples`, cached per profile and checkpoint).
    sampler_kwargs : passed on to the sampler (e.g. ``zeta``, ``cg_iters``).

    Raises :class:`~diffdecon.errors.DivergenceError` if a sample's flux is not finite or it
    leaves |x| <= :data:`DIVERGED_ABS` (a diverged sampler), while sampling or after.
    """
    P = problem.profile
    n = P.n_posterior if n is None else n
    steps = P.sampling_steps if steps is None else steps
    _check_arguments(problem, prior, sampler, n, steps)
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise InputValueError("batch_size", batch_size, ">= 1")
    seed = None
    if generator is None or isinstance(generator, int):
        seed = P.seed if generator is None else int(generator)
        generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    samples = _sample(problem, prior, sampler, n, steps, generator, batch_size, progress, sampler_kwargs)
    wall = time.perf_counter() - t0
    flux, mean, std, chi2 = _flux_summaries(problem, samples, sampler)
    chi2_samples = problem.sample_chi2(flux)
    ref = reference_samples.prior_samples(prior, progress=progress) if prior_samples is None else prior_samples
    vr = posterior.variance_ratio(samples, ref.to(samples.dtype))
    vr_ap = float(posterior.aperture_mean(vr, P.aperture_radius_px))
    return PosteriorResult(samples=samples, flux_samples=flux, mean=mean, std=std, chi2=chi2,
                           variance_ratio=torch.as_tensor(vr), variance_ratio_aperture=vr_ap,
                           sampler=sampler, steps=steps, n=n, seed=seed, wall_time_s=wall, problem=problem,
                           chi2_samples=chi2_samples,
                           covariance=sampler_kwargs.get("covariance", P.mmps_covariance) if sampler == "mmps" else None,
                           lookahead=sampler == "mmps" and bool(problem.mmps_kwargs(sampler_kwargs).get("lookahead")))


def _check_arguments(problem: InverseProblem, prior, sampler: str, n, steps) -> None:
    P = problem.profile
    if getattr(prior, "profile", P).name != P.name:
        raise ValueError(f"prior of profile {prior.profile.name!r} cannot invert a problem of profile {P.name!r}")
    if sampler not in SAMPLERS:
        raise InputValueError("sampler", sampler, ", ".join(SAMPLERS))
    if not isinstance(n, int) or n < 2:
        raise InputValueError("n", n, "at least 2 samples (the posterior variance needs two)")
    if not isinstance(steps, int) or steps < 1:
        raise InputValueError("steps", steps, "a positive number of steps")


def _sample(problem: InverseProblem, prior, sampler: str, n: int, steps: int, generator: torch.Generator,
            batch_size: int, progress: bool, sampler_kwargs: dict[str, Any]) -> torch.Tensor:
    """``n`` posterior samples (prior space), drawn in batches of ``batch_size``; one
    generator per sample seeded from ``generator``."""
    gens = _per_sample_generators(generator, n)
    fn = samplers.mmps if sampler == "mmps" else samplers.dps
    sampler_kwargs.setdefault("x0_clip", X0_RANGE)  # sanity range of Tweedie's x0, see prior.X0_RANGE
    if sampler == "mmps":
        sampler_kwargs = problem.mmps_kwargs(sampler_kwargs)
    chunks = []
    starts = range(0, n, batch_size)
    for i in tqdm(starts, desc=f"{sampler} {problem.name}", unit="batch", disable=not progress or len(starts) == 1):
        b = min(batch_size, n - i)
        x = fn(prior, problem.y, problem.forward, problem.sigma, gens[i : i + b], b, steps=steps,
               progress=progress, **sampler_kwargs)
        chunks.append(x.detach())
    return torch.cat(chunks)


def _flux_summaries(problem: InverseProblem, samples: torch.Tensor, sampler: str):
    """``(flux samples, mean, std, reduced chi^2 per band)``; raises :class:`DivergenceError`
    when a sample is non-finite in flux or leaves |x| <= :data:`DIVERGED_ABS`."""
    n = samples.shape[0]
    with torch.no_grad():
        # float64: unstretch is exponential (sinh) and overflows float32 beyond |x| ~ 34
        flux = problem.to_flux(samples.double())
        bad = ~torch.isfinite(flux.flatten(1)).all(1) | (samples.flatten(1).abs().amax(1) > DIVERGED_ABS)
        if bad.any():
            raise DivergenceError(None, None, int(bad.sum()), n, sampler, max_abs=float(samples.abs().max()),
                                  threshold=DIVERGED_ABS, context=problem.name,
                                  hint="training images lie in [-1, 2]; lower zeta (dps), use more steps "
                                       "or check the prior checkpoint")
        mean, std = flux.mean(0), flux.std(0)  # unbiased (ddof = 1)
        pred = problem.operator.A(mean[None])[0]
    y_np, p_np, s_np = (to_numpy(t) for t in (problem.y, pred, problem.sigma))
    chi2 = np.array([reduced_chi2(y_np[c], p_np[c], float(s_np[c])) for c in range(y_np.shape[0])])
    return flux, mean, std, chi2
