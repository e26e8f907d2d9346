"""The fit floor: a non-negative least-squares fit through the forward model reaches the noise
when the data hold only what the model grid can represent, and not otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon.config import get_profile
from diffdecon.diagnostics import fit_floor
from diffdecon.mock import gaussian_reference, make_mock
from diffdecon.problem import from_mock


@pytest.fixture
def mock_problem():
    P = get_profile("smoke")
    yy, xx = np.mgrid[:32, :32] - 15.5
    disk = np.exp(-np.hypot(yy, xx) / 3.0)
    truth = np.stack([disk, 1.5 * disk, 2.0 * disk])
    obs = make_mock(truth, 0.3, P, gaussian_reference(0.7, 0.01, size=9), torch.Generator().manual_seed(0))
    return from_mock(obs, P, dtype=torch.float64)


def test_floor_reaches_the_noise_on_representable_data(mock_problem):
    """Data made by the operator from a non-negative image: the fit reaches the noise. The
    fit absorbs some noise (32^2 unknowns per band against more observed pixels), so the
    reduced chi^2 lies a little below 1: accepted [0.6, 1.15]."""
    floor = fit_floor(mock_problem, max_iter=200)
    assert floor.shape == (3,)
    assert np.all((floor > 0.6) & (floor < 1.15)), floor


def test_floor_flags_a_source_outside_the_model_field(mock_problem):
    """A point source in the window's margin, outside the model field: no model image can
    place it, and the floor rises far above 1 (> 3)."""
    y = mock_problem.y.clone()
    y[:, 2, 2] += 2.0  # 200 sigma in the corner of the window
    mock_problem.y = y
    assert fit_floor(mock_problem, max_iter=200).max() > 3


def test_bad_iterations(mock_problem):
    with pytest.raises(ValueError, match="max_iter"):
        fit_floor(mock_problem, max_iter=0)


def _blob(shape, y0: float, x0: float, peak: float, sd: float = 1.2) -> torch.Tensor:
    """A Gaussian source of ``peak`` [flux per obs px] at ``(y0, x0)`` [obs px], all bands."""
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    g = peak * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sd**2))
    return torch.as_tensor(np.broadcast_to(g, shape).copy())


def test_residual_sources_place_a_neighbour_and_light_outside_the_field(mock_problem):
    """With the truth as the model, the residual is noise: any source found holds an excess chi^2
    below 30 (a 20 sigma source holds thousands) and the chi^2 outside the sources is 1 within
    0.1. A neighbour (20 sigma peak) inside the field, away from the galaxy, and one in the
    window's margin are found where they were put (within 1.5 obs px) and placed as a
    neighbour and outside the field; together they hold over 90 % of the
    excess, and the chi^2 outside them returns to 1 within 0.1."""
    from diffdecon.diagnostics import residual_sources

    truth = mock_problem.truth.double()
    clean = residual_sources(mock_problem, truth)
    assert clean.chi2.shape == (3,) and np.all(np.abs(clean.chi2_outside - 1) < 0.1), clean
    assert all(s.excess_chi2 < 30 for s in clean.sources), clean.sources
    H, W = mock_problem.y.shape[-2:]
    with torch.no_grad():
        reach = mock_problem.operator.A(torch.ones_like(truth)[None])[0, -1]
    inside = (reach > 0.5 * reach[H // 2, W // 2]).nonzero()
    lo, hi = int(inside[:, 0].min()), int(inside[:, 0].max())
    assert lo >= 2, "the mock's window needs a margin outside the model field for this test"
    near, far = (lo + 3, hi - 3), (1, W // 2)  # a corner of the field; the margin's top row
    sig = float(mock_problem.sigma.max())
    shape = mock_problem.y.shape
    mock_problem.y = mock_problem.y + _blob(shape, *near, 20 * sig) + _blob(shape, *far, 20 * sig)
    rep = residual_sources(mock_problem, truth)
    by_place = {s.where: s for s in rep.sources if s.excess_chi2 > 0.05 * rep.excess_chi2}
    assert set(by_place) == {"neighbour", "outside"}, rep.sources
    assert np.hypot(by_place["neighbour"].y - near[0], by_place["neighbour"].x - near[1]) < 1.5
    assert np.hypot(by_place["outside"].y - far[0], by_place["outside"].x - far[1]) < 1.5
    assert rep.share("neighbour") + rep.share("outside") > 0.9 and rep.share("galaxy") < 0.05
    assert np.all(np.abs(rep.chi2_outside - 1) < 0.1) and rep.chi2.min() > 1.5, (rep.chi2, rep.chi2_outside)
    assert "neighbours in the model field" in rep.summary(("g", "r", "i"))


def test_residual_sources_bad_input(mock_problem):
    from diffdecon.diagnostics import residual_sources

    with pytest.raises(ValueError, match="box"):
        residual_sources(mock_problem, mock_problem.truth, box=4)
    with pytest.raises(ValueError, match="where"):
        residual_sources(mock_problem, mock_problem.truth).share("sky")
    with pytest.raises(ValueError, match="bands"):
        residual_sources(mock_problem, mock_problem.truth[:2])
