"""Conditional diffusion vs CVAE (notebook 06): operators, metrics, training resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdecon import conditional as C
from diffdecon.config import get_profile


def test_psf_widths_scale_with_the_image_and_kernels_are_normalised():
    assert C.psf_sigmas(128) == C.PUBLISHED_SIGMAS_PX
    assert C.psf_sigmas(32) == pytest.approx((0.5, 0.625, 0.75, 0.875, 1.0))
    k = C.gaussian_kernel(1.3, 9)
    assert k.shape == (9, 9) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.flip(0)), torch.testing.assert_close(k, k.T)
    # second moment of a sampled Gaussian of sigma 1 px on 11 px (+-5 sigma: truncation < 1e-5)
    k1 = C.gaussian_kernel(1.0, 11)
    r = torch.arange(11.0) - 5
    assert float((k1.sum(0) * r**2).sum()) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="odd positive"):
        C.gaussian_kernel(1.0, 8)
    with pytest.raises(ValueError, match="sigma_px"):
        C.gaussian_kernel(0.0, 9)


def test_convolve_is_a_convolution_and_adjoint():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 1, 12, 12, generator=g, dtype=torch.float64)
    psf = torch.rand(3, 5, 5, generator=g, dtype=torch.float64)
    r = torch.rand(3, 1, 12, 12, generator=g, dtype=torch.float64)
    # <A y, r> = <y, A^T r> (float64, 1e-12)
    lhs, rhs = (C.convolve(y, psf) * r).sum(), (y * C.convolve_adjoint(r, psf)).sum()
    assert float(abs(lhs - rhs)) < 1e-12 * float(abs(lhs))
    # a point source returns the (unflipped) kernel: a true convolution
    d = torch.zeros(3, 1, 12, 12, dtype=torch.float64)
    d[:, 0, 6, 6] = 1
    torch.testing.assert_close(C.convolve(d, psf)[:, 0, 4:9, 4:9], psf)
    with pytest.raises(ValueError, match=r"\(B, k, k\) with k odd"):
        C.convolve(y, psf[:2])


def test_reconvolution_mse_and_conditional_variance():
    psf = C.gaussian_kernel(1.0, 5)[None]
    y = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = C.convolve(y[:1], psf)
    m = C.reconvolution_mse(y, x, psf)
    assert m.shape == (4,) and float(m[0]) < 1e-14 and bool((m[1:] > 0).all())
    # Tr(Sigma) of features with known diagonal covariance (2 and 3: trace 13) -- sampling
    # tolerance 5 % at 20,000 rows
    rng = np.random.default_rng(0)
    f = rng.normal(size=(20000, 2)) * np.sqrt([4.0, 9.0])
    assert C.conditional_variance([f, f]) == pytest.approx(13.0, rel=0.05)
    assert C.conditional_variance([f[:1], f]) == pytest.approx(13.0, rel=0.05)  # < 2 samples: left out
    assert np.isnan(C.conditional_variance([f[:1]]))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_conditioned_diffusion_follows_the_sampler_contract(prediction):
    torch.manual_seed(0)
    m = C.ConditionalDiffusion(8, (8, 16), 50, prediction).eval()
    psf = C.gaussian_kernel(0.7, 3)[None]
    x = torch.rand(1, 1, 8, 8)
    cond = C.Conditioned(m, x, psf)
    y_t = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 10, 25, 40, 49])
    xs, ps = x.expand(5, -1, -1, -1), psf.expand(5, -1, -1)
    with torch.no_grad():
        e, d = cond.eps(y_t, t), cond.x0_hat(y_t, t)
        torch.testing.assert_close(e, m.eps(y_t, t, xs, ps), rtol=1e-4, atol=1e-4)
        # both parametrisations satisfy y_t = sqrt(abar) x0_hat + sqrt(1 - abar) eps (float32, 1e-5)
        a = m.schedule.abar(t, y_t)
        torch.testing.assert_close(a.sqrt() * d + (1 - a).sqrt() * e, y_t, rtol=1e-5, atol=1e-5)
        # guidance w: (1 + w) e_c - w e_u
        e_u = m.eps(y_t, t, xs, ps, torch.ones(5, dtype=torch.bool))
        torch.testing.assert_close(C.Conditioned(m, x, psf, 2.0).eps(y_t, t), 3 * e - 2 * e_u, rtol=1e-4, atol=1e-4)
        s = C.diffusion_samples(m, x, psf, 3, torch.Generator().manual_seed(0), steps=5)
    assert s.shape == (3, 1, 8, 8) and bool(((s >= 0) & (s <= 1)).all())
    with pytest.raises(ValueError, match="'epsilon' or 'v'"):
        C.ConditionalDiffusion(8, (8, 16), 50, "x0")


def _tiny_pairs(n=24, size=8):
    g = torch.Generator().manual_seed(2)
    return C.make_pairs(torch.rand(n, 1, size, size, generator=g), (0.6, 0.9), 3, g)


def _cvae_loss(m, y, x, psf, g):
    return m.loss(y, x, psf, g, 1.0, 10.0)


def test_training_resumes_after_an_interruption_bit_exactly(tmp_path):
    pairs = _tiny_pairs()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        ref = C.CVAE(8, 4)
        ref_losses = C.train_model("cvae", ref, _cvae_loss, pairs, 12, 4, 1e-3, 0, tmp_path / "a", 4, False)
        torch.manual_seed(0)
        m = C.CVAE(8, 4)
        with pytest.raises(C.Interrupted):
            C.train_model("cvae", m, _cvae_loss, pairs, 12, 4, 1e-3, 0, tmp_path / "b", 4, False, stop_after=6)
        torch.manual_seed(123)  # a fresh process: other initial weights, restored from the checkpoint at step 4
        m2 = C.CVAE(8, 4)
        losses = C.train_model("cvae", m2, _cvae_loss, pairs, 12, 4, 1e-3, 0, tmp_path / "b", 4, False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert losses == ref_losses and len(losses) == 12
    for a, b in zip(ref.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cvae_sample_shapes_and_bad_inputs():
    m = C.CVAE(8, 4).eval()
    p = _tiny_pairs()
    s = m.sample(p.x[:1], p.psf[:1], 5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and bool(((s >= 0) & (s <= 1)).all())
    with pytest.raises(ValueError, match="multiple of 4"):
        C.CVAE(10, 4)
    with pytest.raises(ValueError, match="accepted"):
        C.get_config("huge")


def test_compare_scores_both_models_and_the_figures_build(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from diffdecon import plotting

    torch.manual_seed(0)
    cfg = C.get_config("smoke")
    diff = C.ConditionalDiffusion(16, cfg.channels, cfg.T).eval()
    cvae = C.CVAE(16, cfg.latent).eval()
    g = torch.Generator().manual_seed(0)
    test = C.make_pairs(torch.rand(3, 1, 16, 16, generator=g), C.psf_sigmas(16), cfg.psf_size, g)
    # eps = inf: every sample is valid, so both variances are finite and positive
    cmp = C.compare("smoke", diff, cvae, test, eps=float("inf"), progress=False)
    n_obs = min(cfg.n_obs, 3)
    for k in ("diffusion", "cvae"):
        assert cmp.samples[k].shape == (n_obs, cfg.n_samples, 1, 16, 16)
        assert cmp.mse[k].shape == (n_obs, cfg.n_samples) and cmp.retained[k] == 100.0
        assert cmp.variance_pixels[k] > 0 and cmp.variance_features[k] == cmp.variance_pixels[k]
        assert np.isfinite(cmp.variance_features_sem[k]) and cmp.variance_features_sem[k] >= 0
    # eps = 0: nothing is valid and the variance is undefined (NaN), not 0
    none = C.compare("smoke", diff, cvae, test, eps=0.0, progress=False)
    assert none.retained["cvae"] == 0.0 and np.isnan(none.variance_pixels["cvae"])
    recon = {k: C.convolve(cmp.samples[k][0], cmp.test.psf[:1].expand(cfg.n_samples, -1, -1)) for k in cmp.samples}
    fig = plotting.conditional_samples_figure(cmp.test.y[0], cmp.test.x[0], {k: v[0] for k, v in cmp.samples.items()},
                                              recon, n_show=2, profile="smoke")
    assert len(plotting.save_figure(fig, "cond", directory=tmp_path)) == 2
    fig = plotting.reconvolution_mse_figure(cmp.mse, 1e-4, profile="smoke")
    assert len(plotting.save_figure(fig, "mse", directory=tmp_path)) == 2


def test_trained_models_are_reproducible_from_the_config_seed(tmp_path, monkeypatch):
    """Two trainings of the smoke models in fresh caches give identical weights, whatever the
    global RNG state before (the initial weights are drawn from the config's seed), and leave
    the global RNG state as it was."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "a"))
    pairs = C.make_pairs(torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(4)),
                         C.psf_sigmas(16), C.get_config("smoke").psf_size, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a, _ = C._train_cached(get_profile("smoke"), "cvae", pairs, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "b"))
    torch.manual_seed(2)
    b, _ = C._train_cached(get_profile("smoke"), "cvae", pairs, progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
