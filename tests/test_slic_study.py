"""Tests of the SLIC study helpers (diffdecon.slic_study) that need no prior or data."""

from __future__ import annotations

import numpy as np

from diffdecon import slic_study as st


def _m(mean, std):
    return {"cr_excess_mean": mean, "cr_excess_std": std}


def test_verdicts_follow_their_definitions():
    # within: |SLIC| <= its std; larger: Gaussian - SLIC > 3 combined stds; agree (clean
    # data): |difference| <= combined std.
    rows = [{"name": "a", "slic_cr": _m(0.01, 0.02), "gauss_cr": _m(0.5, 0.05),
             "slic_clean": _m(0.0, 0.01), "gauss_clean": _m(0.005, 0.01)},
            {"name": "b", "slic_cr": _m(0.05, 0.01), "gauss_cr": _m(0.5, 1.0),
             "slic_clean": _m(0.0, 0.01), "gauss_clean": _m(0.1, 0.01)}]
    v = st.verdicts(rows)
    assert v["within"] == [True, False]
    assert v["larger"] == [True, False]
    assert v["agree"] == [True, False]
    assert "own wide spread" in v["lines"][1]


def test_real_truth_keeps_flux_and_sets_the_half_light_radius():
    # An exponential disk of half-light radius 30 px on a 401 px stamp with a constant
    # background: the background is removed, and after cropping and flux-conserving
    # rebinning onto 64 px its half-light radius is the target (8 model px) to within
    # one pixel, with the disk's flux conserved to 1 % (the crop cuts the far wings).
    yy, xx = np.indices((401, 401))
    r = np.hypot(yy - 200.0, xx - 200.0)
    disk = np.exp(-r / (30 / 1.678))  # r50 = 1.678 scale lengths
    img = 2.0 + disk
    out = st.real_truth(img, 64, 8.0)
    assert out.shape == (64, 64)
    assert abs(st.half_light_radius(out) - 8.0) < 1.0
    assert abs(out.sum() / disk.sum() - 1) < 0.01
