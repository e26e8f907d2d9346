"""Tests of the forward model (diffdecon.physics)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from diffdecon.physics import (
    MIN_OBSERVED_SIZE,
    ForwardModel,
    add_noise,
    arcsec_per_kpc,
    gaussian_psf,
    mock_observation,
    observed_size,
    validate_psf,
)

P = 0.168  # HSC pixel scale [arcsec/px]


def kpc_scale_for(m: float, z: float, image_size: int, p: float = P) -> float:
    """Model pixel scale [kpc/px] that gives an observed size of exactly m obs px at z."""
    return m * p / (image_size * arcsec_per_kpc(z))


def make_fm(z, m, image_size, obs_size, k, offset=(0.0, 0.0), n_bands=2, dtype=torch.float64, seed=0):
    """A ForwardModel with random positive (asymmetric) PSFs of side k."""
    rng = np.random.default_rng(seed)
    psf = rng.uniform(0.1, 1.0, size=(n_bands, k, k)) if n_bands else rng.uniform(0.1, 1.0, size=(k, k))
    return ForwardModel(
        z, psf, obs_size, image_size, kpc_scale_for(m, z, image_size), center_offset=offset, dtype=dtype
    )


def gaussian_blob(n: int, sigma_px: float, n_bands: int = 1, dtype=torch.float64) -> torch.Tensor:
    r = torch.arange(n, dtype=dtype) - (n - 1) / 2
    g = torch.exp(-0.5 * (r / sigma_px) ** 2)
    img = torch.outer(g, g)
    return (img / img.sum()).expand(1, n_bands, n, n).clone()


# ---------------------------------------------------------------- cosmology and m(z, p)


def test_paper_observed_size_at_highest_target_redshift():
    # Paper: m < 80 obs px at z > 0.7 for 256 px of 0.4 kpc (Planck15, p = 0.168").
    # We get 77.5 at z = 0.8463; accepted band [75, 80): below 80 as the paper states, and
    # within 6 % of it (the paper quotes a rounded threshold, with p rounded to 0.17).
    m = observed_size(0.8463, 256, 0.4, 0.168)
    assert 75.0 <= m < 80.0, m


def test_arcsec_per_kpc_matches_astropy_and_instances():
    from astropy.cosmology import Planck15, Planck18

    # Exact pass-through of astropy (rel. 1e-12: only float conversion in between).
    assert arcsec_per_kpc(0.2) == pytest.approx(Planck15.arcsec_per_kpc_proper(0.2).value, rel=1e-12)
    assert arcsec_per_kpc(0.2, Planck18) == pytest.approx(Planck18.arcsec_per_kpc_proper(0.2).value, rel=1e-12)
    assert arcsec_per_kpc(0.2, "Planck18") != arcsec_per_kpc(0.2, "Planck15")


def test_observed_size_decreases_with_z():
    # Angular size of a fixed proper length falls with z up to z ~ 1.6 (then rises again,
    # the angular-diameter turnaround), so strict monotonicity is tested on 0.05-1.2.
    zs = np.linspace(0.05, 1.2, 24)
    ms = [observed_size(z, 256, 0.4) for z in zs]
    assert np.all(np.diff(ms) < 0)


def test_forward_model_attributes():
    fm = ForwardModel(0.8463, gaussian_psf(0.7, 11), 96, 256, 0.4)
    assert fm.m == pytest.approx(observed_size(0.8463, 256, 0.4), rel=1e-12)
    assert fm.upsampling_factor == pytest.approx(256 / fm.m, rel=1e-12)
    assert fm.upsampling_factor > 3.0
    assert fm.z == 0.8463 and fm.obs_size == 96


# ---------------------------------------------------------------- resampling f_{z,p}


@pytest.mark.parametrize("m, image_size, obs_size", [(13.7, 32, 24), (40.3, 16, 48), (31.0, 64, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resample_conserves_flux(m, image_size, obs_size, dtype):
    # Galaxy well inside the field: flux must be conserved within 0.1 % (a
    # requirement of the forward model); area rebinning is exact, so even float32 is far inside it.
    fm = make_fm(0.3, m, image_size, obs_size, 5, offset=(0.4, -0.7), dtype=dtype)
    x = gaussian_blob(image_size, image_size / 10, n_bands=2, dtype=dtype)
    for out in (fm.resample(x), fm.A(x)):
        assert out.dtype == dtype
        rel = (out.sum(dim=(-1, -2)) / x.sum(dim=(-1, -2)) - 1).abs().max().item()
        assert rel < 1e-3, rel


def test_rebin_columns_sum_to_one_inside_padded_field():
    fm = make_fm(0.3, 13.7, 32, 17, 5)
    # Whole model field (13.7 px) inside the padded 21 px grid: every column sums to 1
    # (float64 rounding, 1e-12).
    assert torch.allclose(fm.R_y.sum(0), torch.ones(32, dtype=torch.float64), atol=1e-12)


def test_downsample_by_two_is_2x2_binning():
    # m = image_size / 2 exactly (up to float rounding of the scale): f is 2x2 summation.
    fm = make_fm(0.25, 8.0, 16, 8, 3)
    x = torch.rand(1, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = x.reshape(1, 2, 8, 2, 8, 2).sum(dim=(3, 5))
    torch.testing.assert_close(fm.resample(x), expected, atol=1e-12, rtol=0)


def test_upsample_by_two_spreads_flux_evenly():
    # m = 2 image_size: each model pixel covers 2x2 obs pixels holding a quarter of its flux.
    fm = make_fm(0.25, 16.0, 8, 16, 3)
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = x.repeat_interleave(2, -1).repeat_interleave(2, -2) / 4
    torch.testing.assert_close(fm.resample(x), expected, atol=1e-12, rtol=0)


def test_center_offset_direction():
    # offset (dy, dx) = (+1, -2) obs px with m = image_size: content moves down 1 row, left 2.
    fm = make_fm(0.25, 12.0, 12, 12, 3, offset=(1.0, -2.0))
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[0, 0, 5, 6] = 1.0
    out = fm.resample(x[:, :1].expand(1, 2, 12, 12))[0, 0]
    assert out[6, 4].item() == pytest.approx(1.0, abs=1e-12)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_rebin_to_model_conserves_flux():
    fm = make_fm(0.3, 20.0, 32, 16, 5)  # obs field (16 px) inside the model field (20 px)
    y = torch.rand(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    back = fm.rebin_to_model(y)
    assert back.shape == (2, 32, 32)
    torch.testing.assert_close(back.sum(dim=(-1, -2)), y.sum(dim=(-1, -2)), rtol=1e-10, atol=0)


# ---------------------------------------------------------------- PSF convolution


def test_psf_convolution_preserves_flux_and_orientation():
    # m = image_size = obs_size + 2 pad: f is the identity onto the padded grid. A point
    # source at the centre must reproduce the (normalised) PSF image, unflipped, with unit
    # flux: this catches correlation-vs-convolution mistakes on an asymmetric PSF.
    rng = np.random.default_rng(4)
    psf = rng.uniform(0.0, 1.0, size=(2, 5, 5))
    fm = ForwardModel(0.2, psf, 9, 13, kpc_scale_for(13.0, 0.2, 13), dtype=torch.float64)
    x = torch.zeros(1, 2, 13, 13, dtype=torch.float64)
    x[..., 6, 6] = 1.0
    out = fm.A(x)[0]
    norm = validate_psf(psf)
    torch.testing.assert_close(out[:, 2:7, 2:7], torch.as_tensor(norm), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.sum(dim=(-1, -2)), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("psf_kind", ["gaussian", "moffat"])
@pytest.mark.parametrize("factor", [1, 2])
def test_matches_galsim_convolution(psf_kind, factor):
    # Our A on a GalSim-drawn sheared exponential vs GalSim's own Convolve(gal, psf) drawn
    # on the same obs grid. factor 1: model grid = padded obs grid (f is the identity);
    # factor 2: model pixels half an obs pixel, f bins 2x2 (GalSim's pixel integration of
    # the fine grid then equals its integration over obs pixels). PSF images are drawn
    # without pixel (the model image already holds pixel-integrated flux).
    # Tolerance: max |difference| / total flux < 2e-5. A requirement of < 1e-3 (0.1 % of
    # the total flux) would be too loose to catch errors: a half-pixel misplacement
    # gives ~7e-4 (negative control below). The differences are 1e-8 to 3e-6, set by GalSim's FFT
    # rendering accuracy (float32 images) and the PSF truncation at 25 px; 2e-5 leaves a
    # factor ~7 margin.
    galsim = pytest.importorskip("galsim")
    obs, k, z = 33, 25, 0.2
    pad = (k - 1) // 2
    n_pad = obs + 2 * pad
    image_size = n_pad * factor
    gal = galsim.Exponential(half_light_radius=0.8, flux=1.0).shear(e1=0.3, e2=-0.2).shift(0.05, -0.03)
    if psf_kind == "gaussian":
        psf = galsim.Gaussian(fwhm=0.7)
    else:
        psf = galsim.Moffat(beta=3.5, fwhm=0.7, trunc=2.0)
    psf_img = psf.drawImage(nx=k, ny=k, scale=P, method="no_pixel").array
    gal_img = gal.drawImage(nx=image_size, ny=image_size, scale=P / factor).array
    ref = galsim.Convolve(gal, psf).drawImage(nx=obs, ny=obs, scale=P).array
    x = torch.as_tensor(gal_img, dtype=torch.float64)[None, None]
    scale = kpc_scale_for(n_pad, z, image_size)
    fm = ForwardModel(z, psf_img, obs, image_size, scale, dtype=torch.float64)
    err = np.abs(fm.A(x)[0, 0].numpy() - ref).max() / ref.sum()
    assert err < 2e-5, err
    # Negative control: the same comparison with the model misplaced by half a pixel fails.
    shifted = ForwardModel(z, psf_img, obs, image_size, scale, center_offset=(0.5, 0.0), dtype=torch.float64)
    assert np.abs(shifted.A(x)[0, 0].numpy() - ref).max() / ref.sum() > 2e-5


def test_gaussian_psf_fwhm():
    # Half maximum at r = FWHM / 2 along an axis (sampled exactly at a pixel when FWHM/2
    # is an integer number of pixels): tolerance 1e-12 relative.
    psf = gaussian_psf(fwhm_arcsec=4 * P, size=21, pixel_scale_arcsec=P)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf[10, 12] / psf[10, 10] == pytest.approx(0.5, rel=1e-12)


# ---------------------------------------------------------------- dtype, differentiability


def test_float32_matches_float64():
    fm64 = make_fm(0.3, 13.7, 32, 17, 5, dtype=torch.float64)
    fm32 = make_fm(0.3, 13.7, 32, 17, 5, dtype=torch.float32)
    x = torch.rand(2, 2, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out32 = fm32.A(x.float())
    assert out32.dtype == torch.float32
    # float32 rounding of sums of ~100 terms: relative 1e-5 of the output scale.
    torch.testing.assert_close(out32.double(), fm64.A(x), rtol=1e-5, atol=1e-5 * fm64.A(x).abs().max().item())
    # A float64 input to a float32 module uses float64 operators (exact to rounding).
    torch.testing.assert_close(fm32.A(x), fm64.A(x), rtol=1e-12, atol=0)


def test_gradcheck():
    fm = make_fm(0.3, 8.3, 10, 7, 3, offset=(0.2, -0.1))
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    y = torch.rand(1, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    assert torch.autograd.gradcheck(fm.A, (x,))
    assert torch.autograd.gradcheck(fm.A_adjoint, (y,))


def test_unbatched_input():
    fm = make_fm(0.3, 13.7, 32, 17, 5)
    x = torch.rand(2, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(fm(x), fm.A(x[None])[0])


# ---------------------------------------------------------------- noise


def test_mock_observation_noise_level(generator):
    fm = make_fm(0.3, 30.0, 32, 32, 5)
    x = gaussian_blob(32, 3.0, n_bands=2)
    sigma = torch.tensor([0.01, 0.05])
    y = mock_observation(x, fm, sigma, generator)
    resid = (y - fm.A(x))[0]
    # 1024 pixels per band: the sample std has relative error ~1/sqrt(2*1024) = 2.2 %;
    # 10 % is a > 4-sigma band.
    std = resid.std(dim=(-1, -2))
    torch.testing.assert_close(std, sigma.double(), rtol=0.1, atol=0)
    # Same seed, same draw.
    y2 = mock_observation(x, fm, sigma, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, y2, rtol=0, atol=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("z", [-1.0, 0.0, float("nan"), float("inf")])
def test_bad_z(z):
    with pytest.raises(ValueError, match=rf"z={re.escape(repr(z))}.*accepted: z > 0"):
        observed_size(z, 256, 0.4)
    with pytest.raises(ValueError, match=rf"z={re.escape(repr(z))}"):
        ForwardModel(z, gaussian_psf(0.7, 5), 16, 16, 0.4)


def test_too_small_m_raises():
    with pytest.raises(ValueError, match=r"z=2 .*m=1\.\d+ .*MIN_OBSERVED_SIZE=8"):
        observed_size(2.0, 16, 0.1)
    with pytest.raises(ValueError, match=r"m=.*MIN_OBSERVED_SIZE"):
        ForwardModel(2.0, gaussian_psf(0.7, 5), 16, 16, 0.1)


def test_bad_cosmology():
    with pytest.raises(ValueError, match=r"'Planck99'.*Planck15"):
        arcsec_per_kpc(0.3, "Planck99")


@pytest.mark.parametrize(
    "psf, pattern",
    [
        (np.ones((4, 4)), r"\(4, 4\).*odd"),
        (np.ones((3, 5)), r"\(3, 5\).*square"),
        (np.ones((1, 1, 3, 3)), r"4-D.*accepted"),
        (np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0]]), r"1 non-finite.*accepted"),
        (np.zeros((3, 3)), r"band 0 sums to 0.*accepted"),
        (np.array([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [[1.0, -1, 0], [0, 0, 0], [0, 0, 0]]]), r"band 1 sums to 0"),
    ],
)
def test_bad_psf(psf, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_psf(psf)


def test_validate_psf_normalises():
    out = validate_psf(2.0 * np.ones((2, 3, 3)))
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, atol=1e-15)


def test_band_count_mismatch():
    fm = make_fm(0.3, 13.7, 32, 17, 5, n_bands=2)
    with pytest.raises(ValueError, match=r"3 band\(s\) but the PSF has 2"):
        fm.A(torch.zeros(1, 3, 32, 32, dtype=torch.float64))


def test_bad_shapes_and_sizes():
    fm = make_fm(0.3, 13.7, 32, 17, 5)
    with pytest.raises(ValueError, match=r"\(30, 30\).*\(32, 32\)"):
        fm.A(torch.zeros(1, 2, 30, 30, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"obs_size=0"):
        ForwardModel(0.3, gaussian_psf(0.7, 5), 0, 32, 0.4)


@pytest.mark.parametrize("sigma, pattern", [(-0.1, r"-0\.1"), (float("nan"), r"nan"), ([0.1, 0.2, 0.3], r"\(3,\)")])
def test_bad_sigma(sigma, pattern, generator):
    y = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=pattern):
        add_noise(y, sigma, generator)


@pytest.mark.parametrize("k", [5, 9, 43])
@pytest.mark.parametrize("n", [60, 77])
def test_fft_convolution_equals_direct_convolution(k, n):
    # the FFT path (k >= FFT_MIN_KERNEL) is an exact linear convolution: it must match
    # torch's direct grouped convolution to float64 rounding (1e-12 relative). Its transform
    # is as long as the input (overlap-save), so the wrap-around must miss the kept outputs:
    # n = 60 transforms on 60 px exactly, n = 77 on 80 (and the adjoint on 60 + 42 -> 108 /
    # 77 + 42 -> 120 px); a transform one pixel short of the input fails this test
    import torch.nn.functional as F

    from diffdecon.physics import _convolve_valid, _convolve_valid_adjoint

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64)
    w = torch.rand(3, 1, k, k, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, w, groups=3)
    assert torch.allclose(_convolve_valid(x, w), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    y = torch.randn_like(ref)
    ref_t = F.conv_transpose2d(y, w, groups=3)
    assert torch.allclose(_convolve_valid_adjoint(y, w), ref_t, rtol=0, atol=1e-12 * float(ref_t.abs().max()))


def test_fft_length_is_long_enough_and_5_smooth():
    # the FFT convolutions transform on a length with prime factors 2, 3, 5 only (pocketfft's
    # fast sizes), never shorter than asked: 170 becomes 180, 77 becomes 80, 128 stays
    from diffdecon.physics import _fft_length

    for n in range(1, 600):
        L = _fft_length(n)
        assert L >= n
        m = L
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1, (n, L)
    assert _fft_length(170) == 180 and _fft_length(77) == 80 and _fft_length(128) == 128
