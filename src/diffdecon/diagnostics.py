"""What the data allow: the best fit any model image on the grid can reach.

A posterior whose samples miss the data (reduced chi^2 well above 1) fails either because the
sampler or the prior cannot reach a fit that exists, or because no image on the model grid
fits: light outside the model field, a neighbour or a point source that the forward model
cannot place, a noise sigma too small, correlated noise. :func:`fit_floor` separates the two:
the non-negative least-squares fit through the same operator, PSF and noise, unconstrained by
the prior. A floor near 1 puts the blame on the prior or the sampler; a floor well above 1 on
what the data hold.

A floor near 1 does not clear the data either: the grid may hold a neighbour that the prior,
one idealized galaxy per image, cannot. :func:`residual_sources` finds where the posterior
mean misses: compact residual sources in the window, on the galaxy or away from it, with their
share of the excess chi^2 and the reduced chi^2 outside them (on the real target test2 of the
quick profile, 31 % of the excess lies in neighbours in the model field and 43 % in light
outside it; notebook 03).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["fit_floor", "SOURCE_PLACES", "ResidualSource", "ResidualReport", "residual_sources"]

GALAXY_FRACTION: float = 0.9
"""Fraction of the model's flux (band sum, about the window's centre) within the radius that
bounds the galaxy for :func:`residual_sources`."""
SOURCE_PLACES: tuple[str, ...] = ("galaxy", "neighbour", "outside")
"""Where a residual source lies: on the galaxy, elsewhere in the model's field, outside it."""

SOURCE_BOX: int = 5
"""Side of the box the residual is summed over to detect a source [obs px]."""
SOURCE_THRESHOLD: float = 5.0
"""Detection threshold of a residual source, in robust standard deviations of the box-summed
residual (the MAD's, so that the correlated noise of coadds, whose box sums carry several
times the white-noise variance, does not make sources of noise)."""


def fit_floor(problem, nonnegative: bool = True, max_iter: int = 500) -> np.ndarray:
    """Reduced chi^2 per band of the best fit ``A f`` to ``problem.y`` over model images ``f``
    [flux per model px] (``f >= 0`` with ``nonnegative``), by L-BFGS-B on
    ``sum(((y - A f) / sigma)^2)`` with the exact gradient ``-2 A^T ((y - A f) / sigma^2)``.

    Parameters
    ----------
    problem : :class:`diffdecon.problem.InverseProblem`
    nonnegative : bool
        Bound the flux below by 0 (idealized galaxies have none below).
    max_iter : int
        L-BFGS-B iterations (the fit of a 3 x 64 x 64 grid converges in a few hundred).

    Returns
    -------
    ndarray (C,): reduced chi^2 per band (dof = observed pixels per band) [dimensionless].
    """
    from scipy.optimize import minimize

    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r}; accepted: a positive int")
    op = problem.operator
    y = problem.y.detach().double()
    w = 1.0 / problem.sigma.detach().double().view(-1, 1, 1) ** 2
    shape = (y.shape[0], op.image_size, op.image_size)
    scale = float(y.abs().max()) or 1.0  # optimise in units of the brightest pixel

    def objective(v: np.ndarray):
        f = torch.as_tensor(v, dtype=torch.float64).reshape(shape) * scale
        r = y - op.A(f[None])[0]
        grad = -2.0 * op.A_adjoint((r * w)[None])[0] * scale
        return float((r * r * w).sum()), grad.flatten().numpy()

    f0 = np.maximum(op.rebin_to_model(y[None].float())[0].double().numpy(), 0.0).flatten() / scale
    bounds = [(0.0, None)] * f0.size if nonnegative else None
    res = minimize(objective, f0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter})
    f = torch.as_tensor(res.x, dtype=torch.float64).reshape(shape) * scale
    with torch.no_grad():
        r = (y - op.A(f[None])[0]) ** 2 * w
    return r.flatten(1).mean(1).numpy()


@dataclass(frozen=True)
class ResidualSource:
    """A compact region where the model misses the data: centroid ``(y, x)`` of its box-summed
    residual [obs px], pixels ``n_pix`` (after growing by the detection box), ``excess_chi2`` =
    sum over its pixels and
    the bands of ``r^2 - 1`` (``r`` the normalised residual), the ``sign`` of the residual (+1:
    flux the model lacks) and ``where`` its peak lies (:data:`SOURCE_PLACES`): on the
    ``galaxy`` (within the radius about the window's centre that holds
    :data:`GALAXY_FRACTION` of the model's flux), ``outside`` the model's field (where a
    uniform model image reaches less than half its central level) or elsewhere in the field, a
    ``neighbour``."""

    y: float
    x: float
    n_pix: int
    excess_chi2: float
    sign: int
    where: str


@dataclass(frozen=True)
class ResidualReport:
    """:func:`residual_sources`: the sources, the total excess chi^2 of the window (sum of
    ``r^2 - 1`` over pixels and bands), the reduced chi^2 per band (C,) in the whole window and
    outside the sources' pixels."""

    sources: tuple[ResidualSource, ...]
    excess_chi2: float
    chi2: np.ndarray
    chi2_outside: np.ndarray

    def share(self, where: str) -> float:
        """Fraction of the window's excess chi^2 in the sources at ``where`` (:data:`SOURCE_PLACES`)."""
        if where not in SOURCE_PLACES:
            raise ValueError(f"where={where!r}; accepted: {', '.join(SOURCE_PLACES)}")
        ex = sum(s.excess_chi2 for s in self.sources if s.where == where)
        return float(ex / self.excess_chi2) if self.excess_chi2 > 0 else 0.0

    def summary(self, bands) -> str:
        """One line for a log or a table: the sources of each place with their share of the
        excess chi^2 (the neighbours' three largest positions), and the chi^2 outside them."""
        parts = []
        for where, label in zip(SOURCE_PLACES, ("on the galaxy", "neighbours in the model field",
                                                "outside the model field")):
            src = sorted((s for s in self.sources if s.where == where), key=lambda s: -s.excess_chi2)
            at = ", ".join(f"({s.y:.0f}, {s.x:.0f})" for s in src[:3])
            parts.append(f"{len(src)} {label} ({100 * self.share(where):.0f} %{f' at y, x = {at}' if at else ''})")
        outside = ", ".join(f"{b} {c:.2f}" for b, c in zip(bands, self.chi2_outside))
        return (f"residual sources [share of the excess chi2; obs px]: {'; '.join(parts)}; reduced chi2 "
                f"outside them: {outside}")


def residual_sources(problem, flux_mean, box: int = SOURCE_BOX,
                     threshold: float = SOURCE_THRESHOLD) -> ResidualReport:
    """Compact sources of residual between ``problem.y`` and the model ``A(flux_mean)``.

    The normalised residual ``r = (y - A f) / sigma`` is summed over the bands
    (``/ sqrt(C)``) and over ``box`` x ``box`` pixels; pixels where that sum exceeds
    ``threshold`` robust standard deviations (1.4826 MAD) in absolute value, grown by the box,
    form the sources (connected regions), placed as :class:`ResidualSource` says: on the
    galaxy (structure or a point source the prior misses), a neighbour (a second source that a
    prior of one idealized galaxy per image cannot place), or outside the model's field (light
    no image on the grid can reach).

    Parameters
    ----------
    problem : :class:`diffdecon.problem.InverseProblem`
    flux_mean : array (C, H, W) model image [flux per model px], e.g. ``PosteriorResult.mean``.
    box : odd int >= 1 [obs px]; threshold : float > 0 [robust standard deviations].

    Returns
    -------
    :class:`ResidualReport`.
    """
    from scipy import ndimage

    if not isinstance(box, int) or box < 1 or box % 2 == 0:
        raise ValueError(f"box={box!r}; accepted: an odd int >= 1 [obs px]")
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r}; accepted: a float > 0 [robust standard deviations]")
    f = torch.as_tensor(np.asarray(flux_mean), dtype=torch.float64)
    if f.ndim != 3 or f.shape[0] != problem.y.shape[0]:
        raise ValueError(f"flux_mean with shape {tuple(f.shape)}; accepted: (C, H, W) with C = "
                         f"{problem.y.shape[0]} bands")
    sigma = problem.sigma.detach().double().cpu().view(-1, 1, 1)
    with torch.no_grad():
        model = problem.operator.A(f[None].to(problem.y.device))[0].double().cpu()
    r = ((problem.y.detach().double().cpu() - model) / sigma).numpy()
    C = r.shape[0]
    S = ndimage.uniform_filter(r.sum(0) / np.sqrt(C), box, mode="constant") * box
    spread = 1.4826 * float(np.median(np.abs(S - np.median(S)))) or 1.0
    detected = np.abs(S) > threshold * spread
    labels, n = ndimage.label(detected)
    inside, galaxy = _field(problem, f), _galaxy(model.sum(0).numpy())
    excess = (r**2 - 1.0).sum(0)
    mask = np.zeros(S.shape, dtype=bool)
    sources = []
    for k in range(1, n + 1):
        core = labels == k
        region = ndimage.binary_dilation(core, iterations=box // 2) if box > 1 else core
        region &= ~mask  # a pixel counts once
        mask |= region
        peak = np.unravel_index(np.argmax(np.where(core, np.abs(S), -np.inf)), S.shape)
        cy, cx = ndimage.center_of_mass(np.where(region, np.clip(np.sign(S[peak]) * S, 0.0, None), 0.0))
        where = "galaxy" if galaxy[peak] else ("neighbour" if inside[peak] else "outside")
        sources.append(ResidualSource(float(cy), float(cx), int(region.sum()), float(excess[region].sum()),
                                      int(np.sign(S[peak])), where))
    chi2 = (r**2).reshape(C, -1).mean(1)
    keep = ~mask
    chi2_out = (r[:, keep] ** 2).mean(1) if keep.any() else np.full(C, np.nan)
    return ResidualReport(tuple(sources), float(excess.sum()), chi2, chi2_out)


def _field(problem, f: torch.Tensor) -> np.ndarray:
    """Window pixels (H, W) inside the model's field: where ``A`` of a uniform model image
    reaches at least half its level at the window's centre (i band)."""
    with torch.no_grad():
        reach = problem.operator.A(torch.ones_like(f)[None].to(problem.y.device))[0, -1].double().cpu().numpy()
    return reach > 0.5 * reach[reach.shape[0] // 2, reach.shape[1] // 2]


def _galaxy(model: np.ndarray) -> np.ndarray:
    """Window pixels (H, W) within the radius about the window's centre that holds
    :data:`GALAXY_FRACTION` of the flux of ``model`` (H, W) (negative pixels count 0)."""
    m = np.clip(model, 0.0, None)
    yy, xx = np.indices(m.shape)
    rad = np.hypot(yy - (m.shape[0] - 1) / 2, xx - (m.shape[1] - 1) / 2)
    order = np.argsort(rad, axis=None)
    cum = np.cumsum(m.flatten()[order])
    if not cum[-1] > 0:
        return np.zeros(m.shape, dtype=bool)
    return rad <= rad.flatten()[order][np.searchsorted(cum, GALAXY_FRACTION * cum[-1])]
