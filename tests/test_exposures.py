"""Tests of the multi-exposure forward model (diffdecon.exposures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon.exposures import MIN_UPSAMPLING, Exposure, ExposureSet, ExposureWCS, default_dithers
from diffdecon.physics import gaussian_psf

Q = 4  # PSF oversampling [supersampled px per exposure px]
PSF = gaussian_psf(0.1, 15, 0.05 / Q)  # FWHM 0.1 arcsec = 8 supersampled px (>= Q: accepted)


def small_set(distortion=0.02, dtype=None) -> ExposureSet:
    """4 dithered 12 px exposures of a 32 px model grid at 0.025 arcsec/px (upsampling 2)."""
    return ExposureSet.dithered(PSF, Q, 12, 32, 0.025, default_dithers(4, 0.05, 0.3, distortion))


@pytest.mark.parametrize("distortion", [0.0, 0.05])
def test_every_exposure_operator_is_adjoint(generator, distortion):
    # <A x, y> = <x, A^T y> in float64; the operators are exact matrix chains (sparse
    # splatting, FFT convolution, pooling), so only round-off remains: relative 1e-10.
    es = small_set(distortion)
    x = torch.randn(3, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.randn(3, 4, 12, 12, generator=generator, dtype=torch.float64)
    for e, ex in enumerate(es.exposures):
        lhs, rhs = (ex.A(x) * y[:, e]).sum(), (x * ex.A_adjoint(y[:, e])).sum()
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs), (e, float(lhs), float(rhs))
    lhs, rhs = (es.A(x) * y).sum(), (x * es.A_adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_flux_is_conserved_for_a_source_inside_every_exposure():
    # A compact source far from the exposure edges keeps all its flux (splat weights per
    # model pixel sum to 1, PSF and sum pooling conserve flux): 1e-9 relative.
    es = small_set()
    x = torch.zeros(1, 32, 32, dtype=torch.float64)
    x[0, 14:18, 13:19] = 1.0
    flux = es.A(x).sum((2, 3))
    assert torch.allclose(flux, torch.full_like(flux, float(x.sum())), rtol=1e-9)


def test_dithers_move_the_image_by_their_offsets():
    # The centroid of a point source moves by minus the dither offset (0.5 px): 0.05 px.
    wcs = [ExposureWCS(0.05, (0.0, 0.0)), ExposureWCS(0.05, (0.5, 0.0))]
    es = ExposureSet.dithered(PSF, Q, 12, 32, 0.025, wcs)
    x = torch.zeros(1, 32, 32, dtype=torch.float64)
    x[0, 16, 16] = 1.0
    y = es.A(x)[0]
    r = torch.arange(12, dtype=torch.float64)
    cy = [(im.sum(1) * r).sum() / im.sum() for im in y]
    assert abs(float(cy[0] - cy[1]) - 0.5) < 0.05


def test_operators_are_differentiable_and_batched(generator):
    es = small_set(dtype=torch.float32)
    x = torch.rand(5, 32, 32, generator=generator, requires_grad=True)
    out = es.A(x)
    assert out.shape == (5, 4, 12, 12)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(g, es.A_adjoint(torch.ones_like(out)), atol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shape=12.*exposure 0 has 10"):
        ExposureSet([Exposure(ExposureWCS(), 10, PSF, Q, 32, 0.025), Exposure(ExposureWCS(), 12, PSF, Q, 32, 0.025)])
    with pytest.raises(ValueError, match="band='F606W'"):
        ExposureSet([Exposure(ExposureWCS(), 12, PSF, Q, 32, 0.025),
                     Exposure(ExposureWCS(), 12, PSF, Q, 32, 0.025, band="F606W")])
    with pytest.raises(ValueError, match="inside the model field"):
        Exposure(ExposureWCS(0.05, (20.0, 0.0)), 12, PSF, Q, 32, 0.025)
    with pytest.raises(ValueError, match="psf_oversampling=4"):  # a PSF sampled at the exposure pixels
        Exposure(ExposureWCS(), 12, gaussian_psf(0.1, 7, 0.05), Q, 32, 0.025)
    with pytest.raises(ValueError, match=f">= {MIN_UPSAMPLING}"):
        Exposure(ExposureWCS(), 12, PSF, Q, 32, 0.04)
    with pytest.raises(ValueError, match=r"accepted: \(B, 32, 32\)"):
        small_set().exposures[0].A(torch.zeros(1, 30, 30))


def test_kernel_power_spectrum_is_regularised_and_normalised():
    ps = small_set().kernel_power_spectra()
    assert ps.shape == (4, 12, 12)
    # |FFT(k)|^2 <= (sum k)^2 = 1 for a flux-conserving kernel, plus the 1e-3 floor
    assert float(ps.min()) >= 1e-3 and abs(float(ps[:, 0, 0].mean()) - (1 + 1e-3)) < 1e-6
    assert np.isfinite(ps.numpy()).all()
