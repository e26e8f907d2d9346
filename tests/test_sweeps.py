"""The sweeps: magnitude scaling, SNR, the magnitude and redshift sweeps on an exact Gaussian test
prior, the upsampling crossing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import physics, reference_samples, sweeps
from diffdecon.errors import DivergenceError


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


# ------------------------------------------------------------------ redshift sweep


def test_redshift_sweep(smoke_galaxy, smoke_gaussian_prior, small_psf_reference):
    pytest.importorskip("diffdecon.posterior", reason="diffdecon.posterior (variance ratio) not in the tree yet")
    ref = small_psf_reference
    prior_x = reference_samples.prior_samples(smoke_gaussian_prior, n=12, steps=20, method="ddpm", progress=False)
    sw = sweeps.redshift_sweep(smoke_galaxy, [0.4, 0.9], "smoke", smoke_gaussian_prior, ref, n=2, steps=3,
                                prior_samples=prior_x, progress=False, cg_iters=2)
    assert sw.m[0] > sw.m[1]  # m(z, p) shrinks from z = 0.4 to 0.9
    assert np.allclose(sw.upsampling_factor, 32 / sw.m)
    assert sw.variance_ratio_aperture.shape == (2,) and np.all(np.isfinite(sw.variance_ratio_aperture))
    dim = sweeps.redshift_sweep(smoke_galaxy, [0.4, 0.9], "smoke", smoke_gaussian_prior, ref, n=2, steps=2,
                                 prior_samples=prior_x, progress=False, dimming=True, cg_iters=1)
    # dimmed with (D_L(0.4) / D_L(0.9))^2 ~ 0.17: the flux scale drops by that factor (5%: noise
    # sd ~1% of the flux at z = 0.9 and PSF wings beyond the margin)
    from astropy.cosmology import Planck15

    expect = (Planck15.luminosity_distance(0.4) / Planck15.luminosity_distance(0.9)).value ** 2
    assert dim.flux_scale[1] / dim.flux_scale[0] == pytest.approx(expect, rel=0.05)



def test_upsampling_crossing():
    # quick: 64 px of 0.6 kpc; the factor 64 / m reaches 2 where m(z, p) = 32 px
    z2 = sweeps.upsampling_crossing("quick", 2.0)
    assert physics.observed_size(z2, 64, 0.6) == pytest.approx(32.0, abs=1e-3)  # brentq xtol 1e-6 in z
    assert sweeps.upsampling_crossing("quick", 1.5) < z2  # a lower factor is reached earlier
    assert sweeps.upsampling_crossing("smoke", 2.0) is None  # 32 px of 1.2 kpc: factor < 1.2 up to z = 1.5
    for bad in ({"factor": 0.0}, {"z_max": 3.0}, {"pixel_scale_arcsec": -1.0}):
        with pytest.raises(ValueError):
            sweeps.upsampling_crossing("quick", **bad)


def _diverge(*args, **kwargs):
    raise DivergenceError("forced divergence (test)")


def test_redshift_sweep_divergence_is_recorded(smoke_galaxy, smoke_gaussian_prior, monkeypatch, capsys,
                                               small_psf_reference):
    ref = small_psf_reference
    prior_x = torch.zeros(4, 3, 32, 32)
    monkeypatch.setattr(sweeps, "deconvolve", _diverge)
    with pytest.raises(DivergenceError):
        sweeps.redshift_sweep(smoke_galaxy, [0.4], "smoke", smoke_gaussian_prior, ref, prior_samples=prior_x,
                               progress=False)
    sw = sweeps.redshift_sweep(smoke_galaxy, [0.4, 0.9], "smoke", smoke_gaussian_prior, ref,
                                prior_samples=prior_x, progress=False, on_divergence="nan")
    assert np.isnan(sw.variance_ratio_aperture).all() and np.isnan(sw.chi2).all()
    assert sw.results == [None, None] and np.all(np.isfinite(sw.m))
    assert "DIVERGED" in capsys.readouterr().out
    with pytest.raises(ValueError, match="on_divergence"):
        sweeps.redshift_sweep(smoke_galaxy, [0.4], "smoke", smoke_gaussian_prior, ref, on_divergence="skip")
