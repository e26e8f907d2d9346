"""Simulation-based calibration helpers: finite-sample coverage, the TARP null band, ranks,
pixel classes and the half-light radius."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import sbc


def test_finite_sample_coverage_matches_simulation():
    """The closed form level (n - 1) / (n + 1) against a simulation of exchangeable draws
    (100k trials: Monte-Carlo error 0.0015, tolerance 0.006), for n = 4 and 16."""
    g = torch.Generator().manual_seed(0)
    for n in (4, 16):
        d = torch.rand(100_000, n + 1, generator=g, dtype=torch.float64)
        for level, want in sbc.finite_sample_coverage(n).items():
            q = torch.quantile(d[:, 1:], torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=1)
            got = float(((d[:, 0] >= q[0]) & (d[:, 0] <= q[1])).double().mean())
            assert abs(got - want) < 0.006
    assert sbc.finite_sample_coverage(16)[0.68] == pytest.approx(0.6)


def test_tarp_null_shrinks_and_detects_over_confidence():
    """The null band of a calibrated sampler narrows with the number of truths, and a sampler
    whose samples have half the posterior spread (over-confident) exceeds its 95th percentile."""
    null8, null64 = (np.quantile(sbc.tarp_null(k, 16, reps=60), 0.95) for k in (8, 64))
    assert 0 < null64 < null8 < 1
    rng = np.random.default_rng(1)
    centre = rng.normal(size=(64, 8))
    th = centre + rng.normal(size=(64, 8))
    s = centre[None] + 0.5 * rng.normal(size=(16, 64, 8))
    from diffdecon.calibration import tarp_coverage

    assert tarp_coverage(s, th, norm=False, num_alpha_bins=sbc.TARP_BINS)[2] > null64


def test_rank_statistics():
    samples = torch.tensor([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    assert sbc.rank_statistics(torch.tensor([1.5, 10.0]), samples).tolist() == [2, 3]
    assert sbc.rank_statistics(torch.tensor([-1.0, 5.5]), samples).tolist() == [0, 1]


def test_uniformity_p_flags_skewed_ranks():
    rng = np.random.default_rng(0)
    assert sbc._uniformity_p(rng.integers(0, 5, 400), 4) > 0.01
    assert sbc._uniformity_p(np.zeros(400, dtype=int), 4) < 1e-6


def test_half_light_radius_of_a_ring():
    """All the flux on a ring of radius 10 px about the centre: half-light radius ~10 px
    (within the 1 px width of the ring); negative sky is ignored."""
    H = 41
    yy, xx = np.mgrid[:H, :H] - (H - 1) / 2
    ring = (np.abs(np.hypot(yy, xx) - 10) < 0.5).astype(float)
    img = torch.as_tensor(np.stack([ring, ring, ring]) - 0.01)
    assert abs(float(sbc._half_light_radius(img)) - 10) <= 1.0


def test_bad_truth_set():
    with pytest.raises(ValueError, match="prior_draws"):
        sbc.truth_images(None, "training", 4)
