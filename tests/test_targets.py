"""Tests of diffdecon.targets: windows, noise, flux scale, posterior plumbing, HST resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.wcs import WCS

from diffdecon import (background, cosmology, data, deconvolution, hst, manuscript, mock, physics, problem,
                       reference_samples, sweeps, targets, units)
from diffdecon.errors import DivergenceError
from diffdecon.config import get_profile


def _tan_wcs(scale_arcsec: float, n: int, crval=(150.0, 2.2)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w


# Gaussian PSF, FWHM 0.7" (sigma 1.8 HSC px): a 15 px stamp holds +-3.9 sigma and keeps
# the PSF convolutions (and MMPS's double backward through them) cheap.
SMALL_PSF = 15


@pytest.fixture
def smoke_mock(smoke_galaxy, generator):
    ref = mock.gaussian_reference(0.7, 0.01, size=SMALL_PSF)
    return mock.make_mock(smoke_galaxy, 0.3, "smoke", ref, generator)


# ------------------------------------------------------------------ synthetic observation


def test_prepare_observation_window_offset_and_scale(smoke_galaxy, generator):
    """A galaxy placed off the pixel grid: the window is centred to the nearest pixel and the
    sub-pixel remainder is the operator's centre offset; s = window flux / flux_norm."""
    P = get_profile("smoke")
    ref = mock.gaussian_reference(0.7, 0.01)
    obs = mock.make_mock(smoke_galaxy, 0.3, P, ref, generator, obs_size=100)
    # Shift the scene by (dy, dx) = (+3.3, -7.6) px: place it with the forward model's offset.
    op = physics.ForwardModel(0.3, ref.psfs, 100, P.image_size, P.pixel_scale_kpc, center_offset=(3.3, -7.6),
                              dtype=torch.float64)
    y = physics.mock_observation(torch.as_tensor(smoke_galaxy), op, ref.sigma, generator).numpy()
    center = (49.5 - 7.6, 49.5 + 3.3)  # (x, y) [px]
    pb = problem.prepare_observation(y, ref.psfs, 0.3, P, center, 0.168)
    row0, col0, n = pb.window
    assert n == int(np.ceil(pb.m)) + 2 * cosmology.WINDOW_MARGIN
    # the galaxy position in window coordinates and the operator offset agree to 1e-9 px
    assert pb.center_xy == pytest.approx((center[0] - col0, center[1] - row0), abs=1e-9)
    dy, dx = pb.operator.center_offset
    assert abs(dx) <= 0.5 and abs(dy) <= 0.5
    assert pb.center_xy[0] == pytest.approx((n - 1) / 2 + dx, abs=1e-9)
    # Flux scale: the model flux is 100 units; the window holds it all but the PSF wings and
    # noise (sigma 0.01 * sqrt(3 n^2) ~ 1 unit): 3% tolerance.
    assert pb.scale * P.flux_norm == pytest.approx(100.0, rel=0.03)
    # the noise sigma is the source-masked clipped estimate of the full image
    for c in range(3):
        assert float(pb.sigma[c]) == pytest.approx(background.estimate_noise_sigma(y[c], mask_sources=True), rel=1e-6)
    # A(flux of the truth) reproduces y within the noise: reduced chi2 ~ 1 (0.7-1.3 for ~9000 px)
    pred = pb.operator.A(torch.as_tensor(smoke_galaxy, dtype=torch.float32))
    chi2 = float((((pb.y - pred) / pb.sigma.view(-1, 1, 1)) ** 2).mean())
    assert 0.7 < chi2 < 1.3


def test_prepare_observation_errors(smoke_galaxy):
    img = np.zeros((3, 40, 40))
    psf = physics.gaussian_psf(0.7, 21)
    psfs = np.stack([psf] * 3)
    with pytest.raises(ValueError, match="does not fit"):
        problem.prepare_observation(img, psfs, 0.3, "smoke", (19.5, 19.5))
    with pytest.raises(ValueError, match="redshift"):
        problem.prepare_observation(img, psfs, -1.0, "smoke", (19.5, 19.5))
    with pytest.raises(ValueError, match="MIN_OBSERVED_SIZE"):
        problem.prepare_observation(img, psfs, 0.8, "smoke", (19.5, 19.5), pixel_scale_arcsec=2.0)
    bad = np.full((3, 100, 100), np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        problem.prepare_observation(bad, psfs, 0.3, "smoke", (49.5, 49.5))
    with pytest.raises(ValueError, match="one of each per band"):
        problem.prepare_observation(np.zeros((3, 100, 100)), psfs[:2], 0.3, "smoke", (49.5, 49.5))


def test_from_mock_matches_operator(smoke_mock):
    pb = problem.from_mock(smoke_mock, "smoke")
    P = pb.profile
    from diffdecon.prior import normalise

    x = torch.as_tensor(smoke_mock.truth)
    xn, s = normalise(x, P)
    # forward(x) = A(s * unstretch(x)): with the true scale it reproduces A(truth) exactly
    pb_true = problem.InverseProblem(**{**pb.__dict__, "scale": float(s)})
    assert torch.allclose(pb_true.forward(xn[None].float())[0].double(), smoke_mock.operator.A(x), rtol=1e-4,
                          atol=1e-6)
    # the estimated scale comes from y: noise sd 0.01 * sqrt(3 * 58^2) = 1.0 on a total of 100
    # (1%), plus the PSF wings beyond the 4 px margin (~1%): 4% tolerance
    assert pb.scale == pytest.approx(float(s), rel=0.04)


# ------------------------------------------------------------------ posterior plumbing


def test_deconvolve_mmps_and_dps(smoke_mock, smoke_gaussian_prior):
    pytest.importorskip("diffdecon.posterior", reason="diffdecon.posterior (variance ratio) not in the tree yet")
    pb = problem.from_mock(smoke_mock, smoke_gaussian_prior)
    # ancestral DDPM in 20 steps: DDIM (eta = 0) in a few steps underestimates the prior variance
    ref = reference_samples.prior_samples(smoke_gaussian_prior, n=12, steps=20, method="ddpm", progress=False)
    res = deconvolution.deconvolve(pb, smoke_gaussian_prior, "mmps", n=3, steps=5, generator=1, batch_size=2,
                             prior_samples=ref, progress=False, cg_iters=3)
    H = pb.profile.image_size
    assert res.samples.shape == res.flux_samples.shape == (3, 3, H, H)
    assert res.mean.shape == res.std.shape == (3, H, H)
    assert torch.allclose(res.flux_samples, pb.to_flux(res.samples.double()))
    assert res.chi2.shape == (3,) and np.all(np.isfinite(res.chi2))
    assert res.variance_ratio.shape == (H, H)
    assert np.isfinite(res.variance_ratio_aperture) and res.variance_ratio_aperture >= 0
    # the observation constrains the galaxy: posterior variance below the prior's in the aperture
    assert res.variance_ratio_aperture < 1.0
    # per-sample generators: the samples do not depend on the batch size (exactly)
    res_all = deconvolution.deconvolve(pb, smoke_gaussian_prior, "mmps", n=3, steps=5, generator=1, batch_size=3,
                                 prior_samples=ref, progress=False, cg_iters=3)
    assert torch.allclose(res.samples, res_all.samples, atol=1e-5)
    # DPS in 5 steps needs a small guidance scale on this problem (whitened residual norm
    # ~ 1e2); zeta = 0.3 (the reference code's) sends samples to |x| ~ 60
    res_dps = deconvolution.deconvolve(pb, smoke_gaussian_prior, "dps", n=2, steps=5, generator=2, prior_samples=ref,
                                 progress=False, zeta=0.01)
    assert torch.isfinite(res_dps.flux_samples).all()
    assert res_dps.samples.abs().max() <= deconvolution.DIVERGED_ABS
    # ... and those samples (finite flux, but ~1e60 times too bright) are a divergence
    with pytest.raises(DivergenceError, match=r"\|x\| <= 10"):
        deconvolution.deconvolve(pb, smoke_gaussian_prior, "dps", n=2, steps=5, generator=2, prior_samples=ref,
                           progress=False, zeta=0.3)
    with pytest.raises(ValueError, match="at least 2"):
        deconvolution.deconvolve(pb, smoke_gaussian_prior, "mmps", n=1, steps=2, prior_samples=ref, progress=False)
    with pytest.raises(ValueError, match="sampler"):
        deconvolution.deconvolve(pb, smoke_gaussian_prior, "langevin", n=2, steps=2, prior_samples=ref, progress=False)


def test_redshift_sweep(smoke_galaxy, smoke_gaussian_prior):
    pytest.importorskip("diffdecon.posterior", reason="diffdecon.posterior (variance ratio) not in the tree yet")
    ref = mock.gaussian_reference(0.7, 0.01, size=SMALL_PSF)
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


# ------------------------------------------------------------------ HST resampling


def test_resample_flux_conserves_flux_synthetic():
    """A 0.03"/px image rebinned onto a 0.168"/px grid that contains the source: the total
    flux is conserved to 1e-5 (exact polygon overlaps; the residual is float rounding and
    the tangent-plane vs spherical pixel areas, ~1e-9 over a few arcsec)."""
    w_hst, w_hsc = _tan_wcs(0.03, 300), _tan_wcs(0.168, 40, crval=(150.0 + 0.4 / 3600, 2.2 - 0.3 / 3600))
    yy, xx = np.indices((300, 300))
    img = np.exp(-0.5 * ((xx - 140.3) ** 2 + (yy - 155.7) ** 2) / 20**2)
    out, fp = hst.resample_flux(img, w_hst, w_hsc, (40, 40))
    assert np.nansum(out) == pytest.approx(img.sum(), rel=1e-5)
    # the 9" input is larger than the 6.7" output: a constant image keeps its surface
    # brightness, i.e. each fully covered output pixel holds (0.168 / 0.03)^2 input pixels
    out1, fp1 = hst.resample_flux(np.ones((300, 300)), w_hst, w_hsc, (40, 40))
    full = fp1 > 1 - 1e-9
    assert full.sum() == 40 * 40
    assert np.allclose(out1[full], (0.168 / 0.03) ** 2, rtol=1e-6)


# ------------------------------------------------------------------ real data


@pytest.fixture
def present(hsc_root):
    names = problem.present_targets(hsc_root)
    if not names:
        pytest.skip(f"no HSC target under {hsc_root} (DIFFDECON_DATA)")
    return names


def test_prepare_target_real(present, hsc_root):
    for name in present:
        t = data.load_target(name, hsc_root)
        pb = problem.prepare_target(t, "quick")
        row0, col0, n = pb.window
        x, y = data.catalog_position_pixel(t)
        assert col0 <= x <= col0 + n - 1 and row0 <= y <= row0 + n - 1
        assert pb.center_xy == pytest.approx((x - col0, y - row0))
        # the galaxy is in the window: the i-band light peaks within 3 px (0.5") of the
        # catalogue position (Gaussian-smoothed to damp noise)
        from scipy import ndimage

        sm = ndimage.gaussian_filter(pb.y[2].numpy().astype(float), 1.5)
        py, px = np.unravel_index(np.argmax(sm), sm.shape)
        assert np.hypot(px - pb.center_xy[0], py - pb.center_xy[1]) < 3, name
        assert pb.scale > 0
        for c in range(3):
            assert float(pb.sigma[c]) == pytest.approx(
                background.estimate_noise_sigma(t.images[c], mask_sources=True), rel=1e-6)
        # pixel scale from the WCS, redshift from the catalogue
        assert pb.pixel_scale_arcsec == pytest.approx(t.pixel_scale_arcsec)
        assert pb.z == t.z
        assert pb.wcs is not None
        # the window WCS maps the catalogue position onto center_xy (1e-6 px)
        wx, wy = pb.wcs.world_to_pixel_values(t.ra, t.dec)
        assert (float(wx), float(wy)) == pytest.approx(pb.center_xy, abs=1e-6)


def test_hst_on_hsc_grid_real(present, hsc_root):
    with_hst = [n for n in present if data.load_target(n, hsc_root).hst is not None]
    if not with_hst:
        pytest.skip(f"no target with an HST cutout under {hsc_root}")
    t = data.load_target(with_hst[0], hsc_root)
    pb = problem.prepare_target(t, "quick")
    img, fp = hst.hst_on_hsc_grid(t, pb)
    assert img.shape == tuple(pb.y.shape[-2:])
    # Reference: HST pixels whose centres fall inside the window. They differ from the exact
    # overlap only along the window edge (half of a 0.03" pixel at most, ~600 edge pixels of
    # sky-level flux): 0.5% tolerance.
    yy, xx = np.indices(t.hst.image.shape)
    wx, wy = pb.wcs.world_to_pixel_values(*t.hst.wcs.pixel_to_world_values(xx, yy))
    n = pb.y.shape[-1]
    inside = (wx > -0.5) & (wx < n - 0.5) & (wy > -0.5) & (wy < n - 0.5)
    assert np.nansum(img) == pytest.approx(t.hst.image[inside].sum(), rel=5e-3)
    no_hst = [n for n in present if data.load_target(n, hsc_root).hst is None]
    if no_hst:
        t2 = data.load_target(no_hst[0], hsc_root)
        assert hst.hst_on_hsc_grid(t2, problem.prepare_target(t2, "quick")) is None


def test_hst_agreement_of_hst_itself(present, hsc_root):
    """Feeding the HST image itself (placed on the model grid) as the reconstruction gives a
    correlation near 1: checks the registration of the two grids."""
    with_hst = [n for n in present if data.load_target(n, hsc_root).hst is not None]
    if not with_hst:
        pytest.skip(f"no target with an HST cutout under {hsc_root}")
    t = data.load_target(with_hst[0], hsc_root)
    pb = problem.prepare_target(t, "quick")
    P = pb.profile
    on_hsc = hst.hst_on_hsc_grid(t, pb)
    # HST resampled directly onto the model grid (a WCS centred on the galaxy at the model scale)
    from diffdecon.result_fits import model_grid_wcs

    mw = model_grid_wcs(pb)
    on_model, _ = hst.resample_flux(t.hst.image, t.hst.wcs, mw, (P.image_size, P.image_size))
    rec = np.nan_to_num(np.stack([on_model] * 3))
    agr = hst.hst_agreement(rec, pb, on_hsc, target=t)
    # 0.97: the model grid is resampled twice (to the model grid and back) and its field
    # is only m(z, p) wide; misregistration by a pixel would give ~0.8 on this galaxy.
    assert agr.correlation > 0.97
    zp = hst.hst_ab_zeropoint({"PHOTFLAM": 7.07236e-20, "PHOTPLAM": 8059.7598})
    assert zp == pytest.approx(25.936, abs=0.01)  # ACS/WFC F814W AB zero point (STScI)
    # the "reconstruction" is HST itself, so the flux ratio is 1 up to the resampling (2%)
    assert agr.flux_ratio * 10 ** (0.4 * (units.HSC_ZEROPOINT - zp)) == pytest.approx(1.0, rel=0.02)


def test_missing_targets_are_named(hsc_root, capsys):
    missing = data.missing_targets(hsc_root)
    names = problem.present_targets(hsc_root)
    out = capsys.readouterr().out
    assert set(names) == set(data.list_targets(hsc_root))
    for m in missing:
        assert m in out and m not in names


# ------------------------------------------------------------------ notebooks 03-04 helpers


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


def test_redshift_sweep_divergence_is_recorded(smoke_galaxy, smoke_gaussian_prior, monkeypatch, capsys):
    ref = mock.gaussian_reference(0.7, 0.01, size=SMALL_PSF)
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


def test_analyse_target_real(present, hsc_root, smoke_gaussian_prior, monkeypatch):
    """A real target end to end with the exact Gaussian test prior (smoke grid, 2 samples, 2
    steps): table row, figure row and, for a target with HST, the HST agreement."""
    prior_x = reference_samples.prior_samples(smoke_gaussian_prior, n=6, steps=5, method="ddpm", progress=False)
    with_hst = [n for n in present if data.load_target(n, hsc_root).hst is not None]
    name = with_hst[0] if with_hst else present[0]
    t = data.load_target(name, hsc_root)
    a = targets.analyse_target(t, smoke_gaussian_prior, n=2, steps=2, prior_samples=prior_x, progress=False,
                               cg_iters=1)
    assert a.error is None and a.result is not None and a.wall_time_s > 0
    assert a.m == pytest.approx(a.problem.m) and a.upsampling_factor == pytest.approx(32 / a.m)
    row = manuscript.analysis_table_rows([a])[0]
    assert len(row) == 11 and row[0] == name.replace("_", r"\_") and row[1] == f"{t.z:.4f}"
    if with_hst:
        assert a.hst is not None and a.agreement is not None
        assert row[9] == f"{a.agreement.correlation:.3f}"
    else:
        assert a.hst is None and row[9] == "no HST"
    fr = a.figure_row()
    assert fr["samples"].shape == (2, 3, 32, 32) and fr["error"] is None
    line = a.summary()
    assert line.startswith(f"{name}: m(z,p) = {a.m:.1f} px") and f"variance ratio {a.result.variance_ratio_aperture:.3f}" in line
    assert ("HST corr" in line) == bool(with_hst)
    # a diverged sampler is kept, not raised: "diverged" in the posterior columns
    monkeypatch.setattr(targets, "deconvolve", _diverge)
    d = targets.analyse_target(t, smoke_gaussian_prior, prior_samples=prior_x, progress=False)
    assert d.result is None and "forced divergence" in d.error and d.agreement is None
    assert "forced divergence" in d.summary()
    drow = manuscript.analysis_table_rows([d])[0]
    assert drow[5:9] == ["diverged"] * 4
    assert drow[9] == ("diverged" if with_hst else "no HST")
    assert "mean" not in d.figure_row()


def test_targets_between_splits_by_redshift(hsc_root, capsys):
    low, missing = targets.targets_between(z_max=0.5, root=hsc_root)
    high, missing_again = targets.targets_between(z_min=0.5, root=hsc_root)
    assert all(t.z < 0.5 for t in low) and all(t.z > 0.5 for t in high)
    assert sorted(t.name for t in low + high) == problem.present_targets(hsc_root)
    assert missing == missing_again == data.missing_targets(hsc_root)
    assert "targets with 0 < z < 0.5" in capsys.readouterr().out
