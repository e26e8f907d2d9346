"""What the data allow: the best fit any model image on the grid can reach.

A posterior whose samples miss the data (reduced chi^2 well above 1) fails either because the
sampler or the prior cannot reach a fit that exists, or because no image on the model grid
fits: light outside the model field, a neighbour or a point source that the forward model
cannot place, a noise sigma too small, correlated noise. :func:`fit_floor` separates the two:
the non-negative least-squares fit through the same operator, PSF and noise, unconstrained by
the prior. A floor near 1 puts the blame on the prior or the sampler; a floor well above 1 on
what the data hold.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fit_floor"]


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
