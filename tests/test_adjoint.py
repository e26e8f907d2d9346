"""One adjointness test over every linear operator of the package.

Each case in :data:`OPERATORS` is a factory ``make(generator, device) -> Case``: the operator
``A``, its adjoint ``A_adjoint`` and the shapes of a vector ``x`` in its domain and ``y`` in
its range. Two checks per operator, both in float64:

* the inner-product identity ``<A x, y> = <x, A^T y>`` for random ``x`` and ``y``;
* ``A^T y`` equals the vector-Jacobian product of ``A`` (autograd's ``grad_x <A x, y>``), which
  also catches an adjoint that only satisfies the identity by accident on one draw.

To add an operator, append one ``pytest.param(factory, id=...)`` to :data:`OPERATORS`.
Operators of the package that are not linear or have no adjoint, and so are not here:
Richardson-Lucy (multiplicative updates), the Wiener filters of :mod:`diffdecon.baselines`
(linear for a fixed balance, but applied only forwards: no adjoint is defined or used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from diffdecon.physics import ForwardModel, arcsec_per_kpc

HSC_P = 0.168  # HSC pixel scale [arcsec/px]


@dataclass
class Case:
    A: Callable[[torch.Tensor], torch.Tensor]
    A_adjoint: Callable[[torch.Tensor], torch.Tensor]
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]


def forward_model(z, m, image_size, obs_size, k, offset=(0.0, 0.0), n_bands=2, seed=0) -> ForwardModel:
    """A float64 ForwardModel whose model field spans ``m`` obs px at ``z``, with random
    positive asymmetric PSFs of side ``k`` (a flipped kernel would then break adjointness)."""
    rng = np.random.default_rng(seed)
    shape = (n_bands, k, k) if n_bands else (k, k)
    psf = rng.uniform(0.1, 1.0, size=shape)
    kpc_per_px = m * HSC_P / (image_size * arcsec_per_kpc(z))  # m = image_size * p_kpc * (arcsec/kpc) / p
    return ForwardModel(z, psf, obs_size, image_size, kpc_per_px, center_offset=offset, dtype=torch.float64)


def _forward_case(method: str, *geometry, n_bands=2, batch=2):
    def make(generator, device):
        fm = forward_model(*geometry, n_bands=n_bands).to(device)
        c = n_bands or 3
        fwd, adj = {
            "A": (fm.A, fm.A_adjoint),
            "resample": (fm.resample, fm.resample_adjoint),
            # baselines.to_model_grid = rebin_to_model = w^2 f^T; its adjoint is w^2 f
            "rebin_to_model": (fm.rebin_to_model, lambda x: fm.resample(x) * fm.model_pixel_width**2),
        }[method]
        x_shape = (batch, c, fm.image_size, fm.image_size)
        y_shape = (batch, c, fm.obs_size, fm.obs_size)
        if method == "rebin_to_model":  # maps the observation grid onto the model grid
            x_shape, y_shape = y_shape, x_shape
        return Case(fwd, adj, x_shape, y_shape)

    return make


def _valid_convolution_case(k: int):
    """physics' 'valid' PSF convolution (direct below FFT_MIN_KERNEL, FFT from it)."""

    def make(generator, device):
        from diffdecon.physics import _convolve_valid, _convolve_valid_adjoint

        w = torch.rand(3, 1, k, k, generator=generator, dtype=torch.float64).to(device)
        n = 40
        return Case(lambda x: _convolve_valid(x, w), lambda y: _convolve_valid_adjoint(y, w),
                    (2, 3, n, n), (2, 3, n - k + 1, n - k + 1))

    return make


def _conditional_convolution_case(generator, device):
    """The 'same'-size per-image convolution of the conditional study."""
    from diffdecon import conditional as C

    psf = torch.rand(3, 5, 5, generator=generator, dtype=torch.float64).to(device)
    return Case(lambda y: C.convolve(y, psf), lambda r: C.convolve_adjoint(r, psf), (3, 1, 12, 12), (3, 1, 12, 12))


def _exposure_set_case(generator, device):
    """The dithered exposures of the SLIC study (offsets, rotation, distortion; 4x PSF)."""
    from diffdecon.exposures import ExposureSet, default_dithers
    from diffdecon.physics import gaussian_psf

    es = ExposureSet.dithered(gaussian_psf(0.1, 15, 0.0125), 4, 12, 32, 0.025, default_dithers(4, 0.05, 0.3, 0.05))
    return Case(es.A, es.A_adjoint, (2, 32, 32), (2, 4, 12, 12))


# (z, m [obs px], image_size, obs_size, psf side, centre offset (dy, dx) [obs px])
DOWNSAMPLE = (0.30, 13.7, 32, 17, 5)
UPSAMPLE_OFFSET = (0.20, 21.3, 12, 24, 7, (0.3, -1.7))
FIELD_LARGER = (0.85, 30.0, 40, 20, 9, (2.5, -0.5))

OPERATORS = [
    pytest.param(_forward_case("A", *DOWNSAMPLE), id="ForwardModel.A-downsample"),
    pytest.param(_forward_case("A", *UPSAMPLE_OFFSET), id="ForwardModel.A-upsample-offset"),
    pytest.param(_forward_case("A", 0.17, 16.0, 16, 16, 3, n_bands=3), id="ForwardModel.A-identity-scale"),
    pytest.param(_forward_case("A", *FIELD_LARGER, n_bands=1), id="ForwardModel.A-field-larger-than-obs"),
    pytest.param(_forward_case("A", 0.50, 9.1, 20, 11, 1, (-0.25, 0.6)), id="ForwardModel.A-delta-psf"),
    pytest.param(_forward_case("A", 0.40, 14.0, 18, 15, 5, n_bands=None), id="ForwardModel.A-broadcast-2d-psf"),
    pytest.param(_forward_case("A", *DOWNSAMPLE, batch=None), id="ForwardModel.A-unbatched"),
    pytest.param(_forward_case("resample", *DOWNSAMPLE), id="ForwardModel.resample-downsample"),
    pytest.param(_forward_case("resample", *UPSAMPLE_OFFSET), id="ForwardModel.resample-upsample-offset"),
    pytest.param(_forward_case("rebin_to_model", *UPSAMPLE_OFFSET), id="baselines.to_model_grid"),
    pytest.param(_valid_convolution_case(5), id="physics.convolve_valid-direct"),
    pytest.param(_valid_convolution_case(21), id="physics.convolve_valid-fft"),
    pytest.param(_conditional_convolution_case, id="conditional.convolve"),
    pytest.param(_exposure_set_case, id="exposures.ExposureSet"),
]


def _draw(shape, generator, device):
    shape = tuple(s for s in shape if s is not None)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)


@pytest.mark.parametrize("make", OPERATORS)
def test_adjoint(make, generator, device):
    case = make(generator, device)
    x, y = _draw(case.x_shape, generator, device), _draw(case.y_shape, generator, device)
    Ax, ATy = case.A(x), case.A_adjoint(y)
    assert Ax.shape == y.shape and ATy.shape == x.shape
    # <A x, y> = <x, A^T y>. Tolerance 1e-10 relative: both sides are float64 sums of at most
    # ~10^5 products (rounding ~1e-13); a missing flip, a wrong pad or transpose gives O(1).
    lhs, rhs = float(torch.sum(Ax * y)), float(torch.sum(x * ATy))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), abs(rhs)), (lhs, rhs)
    # A^T y = grad_x <A x, y> (exact for a linear A; float64, 1e-10 relative to max |A^T y|)
    xr = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(torch.sum(case.A(xr) * y), xr)
    torch.testing.assert_close(ATy, vjp, rtol=0, atol=1e-10 * float(vjp.abs().max()))
