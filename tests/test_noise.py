"""Tests of the noise simulator (diffdecon.noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon.noise import NoiseModel, cosmic_rays, cosmos_power_spectrum


def test_read_noise_alone_has_the_stated_variance(generator):
    # No sky, no correlated part, no CRs: y = read_noise * n. 20,000 pixels give the
    # variance to 2 sqrt(2/20000) = 2 % (2 sigma); tolerance 3 %.
    nm = NoiseModel(sky_rate=0.0, read_noise=4.5, correlated_sigma=0.0, cosmic_rays=False)
    y = nm.cutouts(20, 32, generator)
    assert abs(float(y.var()) / 4.5**2 - 1) < 0.03
    assert abs(float(y.mean())) < 4 * 4.5 / math.sqrt(y.numel())  # sky-subtracted: mean 0


def test_poisson_noise_of_sky_and_source(generator):
    # Sky b = 40.56 e- plus a flat source s = 200 e-: variance b + s + r^2 (Poisson, then
    # read noise); mean s. 20,480 pixels: variance to ~2 %, tolerance 4 %.
    nm = NoiseModel(read_noise=3.0, correlated_sigma=0.0, cosmic_rays=False)
    s = torch.full((20, 32, 32), 200.0, dtype=torch.float64)
    y = nm.simulate(s, generator)["y"]
    want = nm.sky_e + 200.0 + 9.0
    assert abs(float(y.var()) / want - 1) < 0.04
    assert abs(float(y.mean()) - 200.0) < 4 * math.sqrt(want / y.numel())


def test_correlated_noise_follows_the_cosmos_correlation(generator):
    # Unit-variance correlated part only: lag-1 correlation equal to the COSMOS
    # function's (0.19 at 0.05 arcsec/px) within 0.02 (12 cutouts of 64 x 64 px).
    nm = NoiseModel(sky_rate=0.0, read_noise=0.0, correlated_sigma=1.0, cosmic_rays=False)
    y = nm.cutouts(12, 64, generator).numpy()
    ps = cosmos_power_spectrum(64, 0.05).numpy()
    rho_model = np.fft.ifft2(ps).real[0, 1]
    rho = float((y * np.roll(y, 1, axis=2)).mean() / y.var())
    assert 0.1 < rho_model < 0.3
    assert abs(rho - rho_model) < 0.02
    assert abs(float(y.var()) - 1) < 0.05


def test_cosmic_ray_rate_size_and_deposits():
    # ACS statistics: 2 % of pixels per 1000 s at 507 s -> 1.01 % of the pixels hit, events
    # of 4.5 px (tracks cut at the edges lose a little: accepted 0.8-1.1 %), deposits with
    # a median near 900 e- and a long tail. 200 images of 64 x 64 px (~3,700 events).
    rng = np.random.default_rng(0)
    cr = cosmic_rays(200, 64, 507.0, rng)
    frac = float((cr > 0).mean())
    assert 0.008 < frac < 0.011, frac
    from scipy.ndimage import label

    sizes, totals = [], []
    for im in cr:
        lab, n = label(im > 0, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            sizes.append(int((lab == k).sum()))
            totals.append(float(im[lab == k].sum()))
    assert 3.5 < np.mean(sizes) < 5.5, np.mean(sizes)
    assert 600 < np.median(totals) < 1400 and np.percentile(totals, 99) > 3 * np.median(totals)


def test_bad_parameters_are_named(generator):
    with pytest.raises(ValueError, match="read_noise=-1"):
        NoiseModel(read_noise=-1.0)
    with pytest.raises(ValueError, match="accepted: finite"):
        NoiseModel().simulate(torch.full((4, 4), float("nan")), generator)
