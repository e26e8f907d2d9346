"""The magnitude sweep: magnitude scaling, SNR, the sweep on an exact Gaussian test prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import sweeps


def test_set_magnitude_sets_i_band_and_keeps_colours(smoke_galaxy):
    out = sweeps.set_magnitude(smoke_galaxy, 20.0)
    # i band (index 2) total = 10**(-0.4 (20 - 27)); float64 arithmetic, so 1e-12 relative
    assert out[2].sum() == pytest.approx(10 ** (0.4 * 7), rel=1e-12)
    ratios_in = smoke_galaxy.sum((1, 2)) / smoke_galaxy[2].sum()
    ratios_out = out.sum((1, 2)) / out[2].sum()
    np.testing.assert_allclose(ratios_out, ratios_in, rtol=1e-12)
    # one magnitude fainter is 10**-0.4 times the flux everywhere
    np.testing.assert_allclose(sweeps.set_magnitude(smoke_galaxy, 21.0), out * 10**-0.4, rtol=1e-12)


@pytest.mark.parametrize("bad", [dict(flux=np.zeros((3, 8, 8)), mag=20.0), dict(flux=np.ones((8, 8)), mag=20.0),
                                 dict(flux=np.ones((3, 8, 8)), mag=float("nan"))])
def test_set_magnitude_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        sweeps.set_magnitude(bad["flux"], bad["mag"])


def test_observed_snr_of_a_flat_image():
    img = np.stack([np.full((21, 21), c) for c in (1.0, 2.0, 3.0)])
    sigma = np.array([0.5, 1.0, 1.5])
    # each band: mean c inside the aperture, c / sigma_c = 2 in every band; exact
    assert sweeps.observed_snr(img, sigma, 5.0, (10.0, 10.0)) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError):
        sweeps.observed_snr(img, -sigma, 5.0, (10.0, 10.0))


def test_magnitude_sweep_on_gaussian_prior(smoke_gaussian_prior, smoke_galaxy):
    """Two magnitudes, two samples, three MMPS steps on the exact isotropic test prior."""
    prior = smoke_gaussian_prior
    ref = prior.mu + 0.1 * torch.randn((6, *prior.mu.shape), generator=torch.Generator().manual_seed(1))
    sw = sweeps.magnitude_sweep(smoke_galaxy, prior, 0.01, mags=(19.0, 21.0), n=2, steps=3, cg_iters=1,
                                prior_samples=ref, progress=False)
    assert sw.truth.shape == (2, 3, 32, 32) and sw.mean.shape == (2, 3, 32, 32)
    assert sw.variance_ratio.shape == (2, 32, 32) and sw.chi2.shape == (2, 3)
    # SNR is linear in the noiseless flux: two magnitudes apart = 10**0.8 (float arithmetic, 1e-6)
    assert sw.snr[0] / sw.snr[1] == pytest.approx(10**0.8, rel=1e-6)
    assert np.all(np.isfinite(sw.variance_ratio_aperture)) and np.all(sw.variance_ratio_aperture >= 0)
    stats = sweeps.sweep_rows([sw, sw])
    np.testing.assert_allclose(stats["vr_mean"], sw.variance_ratio_aperture)
    np.testing.assert_allclose(stats["vr_std"], 0.0, atol=1e-15)
    assert stats["n_galaxies"] == 2


def test_sweep_rows_rejects_mismatched_magnitudes(smoke_galaxy):
    a = sweeps.MagnitudeSweep(np.array([18.0, 19.0]), np.ones(2), np.ones(2), np.ones((2, 3)), *(np.zeros(1),) * 4,
                              z=0.2, psf_fwhm_arcsec=0.7, sigma=np.ones(3), sampler="mmps", steps=1, n=1)
    b = sweeps.MagnitudeSweep(np.array([18.0, 20.0]), np.ones(2), np.ones(2), np.ones((2, 3)), *(np.zeros(1),) * 4,
                              z=0.2, psf_fwhm_arcsec=0.7, sigma=np.ones(3), sampler="mmps", steps=1, n=1)
    with pytest.raises(ValueError):
        sweeps.sweep_rows([a, b])
    with pytest.raises(ValueError):
        sweeps.sweep_rows([])
