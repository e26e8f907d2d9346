"""Tests of diffdecon.deconvolution: posterior sampling plumbing and summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import deconvolution, problem, reference_samples
from diffdecon.errors import DivergenceError


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
