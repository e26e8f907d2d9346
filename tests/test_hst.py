"""Tests of diffdecon.hst: flux-conserving reprojection and agreement with HST."""

from __future__ import annotations

import numpy as np
import pytest

from diffdecon import data, hst, problem, units


def test_resample_flux_conserves_flux_synthetic(tan_wcs):
    """A 0.03"/px image rebinned onto a 0.168"/px grid that contains the source: the total
    flux is conserved to 1e-5 (exact polygon overlaps; the residual is float rounding and
    the tangent-plane vs spherical pixel areas, ~1e-9 over a few arcsec)."""
    w_hst, w_hsc = tan_wcs(0.03, 300), tan_wcs(0.168, 40, crval=(150.0 + 0.4 / 3600, 2.2 - 0.3 / 3600))
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



def test_hst_on_hsc_grid_real(present_targets, hsc_root):
    with_hst = [n for n in present_targets if data.load_target(n, hsc_root).hst is not None]
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
    no_hst = [n for n in present_targets if data.load_target(n, hsc_root).hst is None]
    if no_hst:
        t2 = data.load_target(no_hst[0], hsc_root)
        assert hst.hst_on_hsc_grid(t2, problem.prepare_target(t2, "quick")) is None


def test_hst_agreement_of_hst_itself(present_targets, hsc_root):
    """Feeding the HST image itself (placed on the model grid) as the reconstruction gives a
    correlation near 1: checks the registration of the two grids."""
    with_hst = [n for n in present_targets if data.load_target(n, hsc_root).hst is not None]
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
