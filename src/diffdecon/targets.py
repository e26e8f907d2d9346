"""One real HSC target end to end: prepare, deconvolve, compare with HST.

The steps live in their own modules and are chained here for a notebook or the CLI:
:func:`diffdecon.problem.prepare_target` (window, noise, forward model, flux scale),
:func:`diffdecon.deconvolution.deconvolve` (posterior samples and their summaries) and
:mod:`diffdecon.hst` (HST F814W on the HSC window, agreement with the posterior mean) and
:func:`diffdecon.diagnostics.residual_sources` (where the posterior mean misses the data).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import data
from .data import HSCTarget
from .deconvolution import PosteriorResult, deconvolve
from .diagnostics import ResidualReport, residual_sources
from .errors import DivergenceError
from .hst import HSTAgreement, hst_agreement, hst_on_hsc_grid
from .problem import InverseProblem, prepare_target, present_targets

__all__ = ["DeconvolutionError", "TargetAnalysis", "analyse_target", "targets_between", "analyse_targets",
           "report_targets"]

DeconvolutionError = DivergenceError
"""Alias of :class:`diffdecon.errors.DivergenceError` (the name used before the error family)."""


@dataclass
class TargetAnalysis:
    """One real target deconvolved and compared with HST (:func:`analyse_target`).

    Attributes
    ----------
    name : str
    z, i_mag : catalogue redshift and i-band Kron magnitude [AB].
    m, upsampling_factor : m(z, p) [HSC px] and ``image_size / m``.
    problem : InverseProblem
    result : PosteriorResult or None (None when the sampler diverged).
    error : str or None
        The divergence message when ``result`` is None.
    hst : ndarray (n, n) or None
        HST resampled onto the window [HST units per HSC px] (NaN where not covered), None
        when the target has no HST cutout.
    agreement : HSTAgreement or None
        Posterior mean vs HST (None without HST or without a posterior).
    wall_time_s : float
        Wall time of the whole analysis: preparation, sampling, HST [s].
    residuals : ResidualReport or None
        Where the posterior mean misses the data (:func:`diffdecon.diagnostics.residual_sources`:
        neighbours, light outside the model field, structure on the galaxy); None without a
        posterior.
    """

    name: str
    z: float
    i_mag: float
    m: float
    upsampling_factor: float
    problem: InverseProblem
    result: PosteriorResult | None
    error: str | None
    hst: np.ndarray | None
    agreement: HSTAgreement | None
    wall_time_s: float
    residuals: ResidualReport | None = None

    def summary(self) -> str:
        """One line: m(z, p) [HSC px], upsampling factor, reduced chi^2 per band and aperture
        variance ratio (or the divergence), HST correlation and flux ratio, wall time [s]."""
        if self.result is None:
            status = self.error
        else:
            status = (f"chi2 g/r/i = {', '.join(f'{c:.3g}' for c in self.result.chi2)}, "
                      f"variance ratio {self.result.variance_ratio_aperture:.3f}")
        if self.hst is None:
            hst = "no HST"
        elif self.agreement is None:
            hst = "HST present, no posterior to compare"
        else:
            hst = f"HST corr {self.agreement.correlation:.3f}, flux ratio {self.agreement.flux_ratio:.2f}"
        where = "" if self.residuals is None else f"\n    {self.residuals.summary(self.problem.profile.bands)}"
        return (f"{self.name}: m(z,p) = {self.m:.1f} px, upsampling {self.upsampling_factor:.2f}; {status}; "
                f"{hst}; {self.wall_time_s:.1f} s{where}")

    def figure_row(self, n_single: int = 2) -> dict[str, Any]:
        """Arrays for :func:`diffdecon.plotting.hsc_target_figure`: ``y`` (3, n, n)
        [flux/HSC px]; when sampled, ``mean``, ``std`` (3, H, W) and ``samples``
        (``n_single``, 3, H, W) [flux/model px], ``variance_ratio`` (H, W) and its aperture
        value; ``hst`` or None; ``error``; a ``title``."""
        row: dict[str, Any] = {"title": f"{self.name}\nz = {self.z:.3f}, i = {self.i_mag:.2f}",
                               "y": self.problem.y, "hst": self.hst, "error": self.error,
                               "aperture_radius_px": self.problem.profile.aperture_radius_px}
        if self.result is not None:
            r = self.result
            row.update(mean=r.mean, std=r.std, samples=r.flux_samples[:n_single], variance_ratio=r.variance_ratio,
                       variance_ratio_aperture=r.variance_ratio_aperture)
        return row


def analyse_target(target: HSCTarget, prior, *, sampler: str = "mmps", n: int | None = None,
                   steps: int | None = None, prior_samples: torch.Tensor | None = None,
                   progress: bool = True, **sampler_kwargs: Any) -> TargetAnalysis:
    """Prepare, deconvolve and compare with HST one real target (Figures 4-9 of the paper).

    Runs :func:`~diffdecon.problem.prepare_target`, :func:`~diffdecon.deconvolution.deconvolve`
    (``sampler``, ``n``, ``steps``, ``sampler_kwargs`` as there) and, when the target has an
    HST cutout, :func:`~diffdecon.hst.hst_on_hsc_grid` and :func:`~diffdecon.hst.hst_agreement`
    of the posterior mean. A diverged sampler (:class:`~diffdecon.errors.DivergenceError`) is not raised: it is
    printed and kept in ``error``, and the target's ``result`` is None, so a notebook can go
    on and report it. Any other error propagates.
    """
    t0 = time.perf_counter()
    problem = prepare_target(target, prior.profile)
    result, error = None, None
    try:
        result = deconvolve(problem, prior, sampler=sampler, n=n, steps=steps, prior_samples=prior_samples,
                            progress=progress, **sampler_kwargs)
    except DivergenceError as err:
        error = f"{sampler} diverged: {err}"
        print(f"[diffdecon] {target.name}: {error}")
    hst, agreement = None, None
    resampled = hst_on_hsc_grid(target, problem)
    if resampled is not None:
        hst = resampled[0]
        if result is not None:
            agreement = hst_agreement(result.mean, problem, resampled, target)
    residuals = None if result is None else residual_sources(problem, result.mean)
    return TargetAnalysis(name=target.name, z=float(target.z), i_mag=float(target.i_mag), m=problem.m,
                          upsampling_factor=problem.upsampling_factor, problem=problem, result=result,
                          error=error, hst=hst, agreement=agreement, wall_time_s=time.perf_counter() - t0,
                          residuals=residuals)


def targets_between(z_min: float = 0.0, z_max: float = math.inf, root=None) -> tuple[list[HSCTarget], list[str]]:
    """``(targets, missing)``: the targets present under ``root`` (default
    ``paths.hsc_dir()``) whose catalogue redshift lies in the open interval (``z_min``,
    ``z_max``), loaded, and the names of the targets listed in the committed checksums whose
    files are absent (their redshift is unknown without their catalogue). Prints both."""
    names = present_targets(root)
    chosen = [t for t in (data.load_target(n, root) for n in names) if z_min < t.z < z_max]
    missing = data.missing_targets(root) if names else []
    print(f"targets with {z_min:g} < z < {z_max:g}: {[(t.name, round(t.z, 4)) for t in chosen] or 'none'}")
    print(f"absent (redshift unknown without their catalogue, not run): {missing or 'none'}")
    return chosen, missing


def analyse_targets(targets: Sequence[HSCTarget], prior, **kwargs: Any) -> list[TargetAnalysis]:
    """:func:`analyse_target` of each target (keyword arguments as there), printing
    :meth:`TargetAnalysis.summary` of each."""
    analyses = []
    for t in targets:
        analyses.append(analyse_target(t, prior, **kwargs))
        print(analyses[-1].summary())
    return analyses


def report_targets(analyses: Sequence[TargetAnalysis], profile: str, figure: str, title: str, table: str,
                   caption: str, label: str, missing: Sequence[str] = ()) -> list[list[str]]:
    """Write what a section reports of its real targets: the figures
    (:func:`diffdecon.plotting.save_target_figures`, ``figure`` and one per target) and the
    table (:func:`diffdecon.manuscript.write_targets_table`, ``table``, naming ``missing``),
    and print the table's rows. Returns the rows."""
    from . import manuscript, plotting

    plotting.save_target_figures(analyses, profile, figure, title=title)
    rows = manuscript.write_targets_table(table, analyses, caption, label, missing)
    for r in rows:
        print(" | ".join(r))
    return rows
