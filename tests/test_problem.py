"""Tests of diffdecon.problem: windows, noise, flux scale, real targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import background, cosmology, data, mock, physics, problem
from diffdecon.config import get_profile


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
    sky = np.random.default_rng(0).normal(0.0, 0.01, (3, 100, 100))
    with pytest.raises(ValueError, match="one noise sigma > 0 per band"):
        problem.prepare_observation(sky, psfs, 0.3, "smoke", (49.5, 49.5), sigma=[0.01, 0.01])
    with pytest.raises(ValueError, match="one noise sigma > 0 per band"):
        problem.prepare_observation(sky, psfs, 0.3, "smoke", (49.5, 49.5), sigma=[0.01, 0.0, 0.01])
    hole = sky.copy()
    hole[:, 30:70, 30:70] -= 1.0  # a negative patch where the galaxy should be
    with pytest.raises(ValueError, match="accepted: a positive total"):
        problem.prepare_observation(hole, psfs, 0.3, "smoke", (49.5, 49.5), sigma=[0.01] * 3)


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


def test_mmps_defaults_carry_the_profiles_solver_settings(smoke_mock):
    import dataclasses

    pb = problem.from_mock(smoke_mock, "smoke")
    kw = pb.mmps_defaults()
    P = pb.profile
    assert (kw["cg_iters"], kw["cg_tol"], kw["x0_draw"], kw["covariance"]) == (P.cg_iters, P.cg_tol, P.x0_draw,
                                                                              P.mmps_covariance)
    pb2 = dataclasses.replace(pb, profile=dataclasses.replace(P, cg_tol=1e-3, x0_draw=False))
    kw2 = pb2.mmps_defaults()
    assert (kw2["cg_tol"], kw2["x0_draw"]) == (1e-3, False)
    assert "cg_tol" not in pb.mmps_defaults("tweedie")  # the Jacobian covariance solves without them
    assert "last_newton" not in pb.mmps_defaults("tweedie") and kw["last_newton"] == P.last_newton == 2
    # last_draw only with steps from draws (mmps refuses it alone)
    alone = dataclasses.replace(pb, profile=dataclasses.replace(P, x0_draw=False, last_draw=True)).mmps_defaults()
    assert "last_draw" not in alone and alone["x0_draw"] is False
    both = dataclasses.replace(pb, profile=dataclasses.replace(P, x0_draw=True, last_draw=True)).mmps_defaults()
    assert both["x0_draw"] is True and both["last_draw"] is True
    assert P.x0_draw and P.last_draw  # the default of every profile: the sampler calibrated where the prior is exact
    # the chain's lookahead when the profile sets it, never with the Jacobian covariance
    on = dataclasses.replace(pb, profile=dataclasses.replace(P, lookahead=True))
    assert on.mmps_defaults()["lookahead"] == "chain" and "lookahead" not in on.mmps_defaults("tweedie")
    assert "lookahead" not in dataclasses.replace(pb, profile=dataclasses.replace(P, lookahead=False)).mmps_defaults()


def test_mmps_kwargs_puts_the_settings_over_the_defaults_of_their_covariance(smoke_mock):
    pb = problem.from_mock(smoke_mock, "smoke")
    kw = pb.mmps_kwargs({"steps": 7, "cg_iters": 3, "x0_draw": not pb.profile.x0_draw})
    assert kw == {**pb.mmps_defaults(), "steps": 7, "cg_iters": 3, "x0_draw": not pb.profile.x0_draw}
    tw = pb.mmps_kwargs({"covariance": "tweedie"})
    assert tw["covariance"] == "tweedie" and "precond" not in tw and "cg_tol" not in tw
    assert pb.mmps_kwargs() == pb.mmps_defaults()



def test_prepare_target_real(present_targets, hsc_root):
    for name in present_targets:
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



def test_missing_targets_are_named(hsc_root, capsys):
    missing = data.missing_targets(hsc_root)
    names = problem.present_targets(hsc_root)
    out = capsys.readouterr().out
    assert set(names) == set(data.list_targets(hsc_root))
    for m in missing:
        assert m in out and m not in names
