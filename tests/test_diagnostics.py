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
