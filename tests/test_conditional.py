"""Conditional study (notebook 06): operators, models, losses, training through the loop, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon import conditional as C
from diffdecon import conditional_eval as E
from diffdecon import conditional_models as M
from diffdecon import conditional_training as T
from diffdecon.config import get_profile
from diffdecon.loop import SimulatedKill, run_loop


def _pairs(n=24, size=8, sigma_y=0.01, seed=2, psf_size=3):
    g = torch.Generator().manual_seed(seed)
    return C.make_pairs(torch.rand(n, 1, size, size, generator=g), (0.6, 0.9), psf_size, sigma_y, g)


# --------------------------------------------------------------------------- operators


def test_psf_widths_scale_with_the_image_and_kernels_are_normalised():
    assert C.psf_sigmas(128) == C.PUBLISHED_SIGMAS_PX
    assert C.psf_sigmas(32) == pytest.approx((0.5, 0.625, 0.75, 0.875, 1.0))
    k = C.gaussian_kernel(1.3, 9)
    assert k.shape == (9, 9) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    # second moment of a sampled Gaussian of sigma 1 px on 11 px (+-5 sigma: truncation < 1e-5)
    r = torch.arange(11.0) - 5
    assert float((C.gaussian_kernel(1.0, 11).sum(0) * r**2).sum()) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="odd positive"):
        C.gaussian_kernel(1.0, 8)
    with pytest.raises(ValueError, match="sigma_px"):
        C.gaussian_kernel(0.0, 9)


@pytest.mark.parametrize("k", [5, 9])  # physics' direct path below 9 px, its FFT path from 9 px
def test_convolve_is_a_convolution(k):
    """A point source returns the kernel (the adjoint is checked in tests/test_adjoint.py)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 12, 12, generator=g, dtype=torch.float64)
    psf = torch.rand(3, k, k, generator=g, dtype=torch.float64)
    # a point source returns the (unflipped) kernel: a true convolution, per image
    d = torch.zeros(3, 1, 12, 12, dtype=torch.float64)
    d[:, 0, 6, 6] = 1
    h = k // 2
    torch.testing.assert_close(C.convolve(d, psf)[:, 0, 6 - h:7 + h, 6 - h:7 + h], psf)
    with pytest.raises(ValueError, match=r"\(B, k, k\) with k odd"):
        C.convolve(x, psf[:2])


def test_observations_carry_noise_of_the_stated_level():
    p = _pairs(n=200, size=16, sigma_y=0.05)
    resid = p.y - C.convolve(p.x, p.psf)
    # std of 51,200 normal draws: relative standard error 0.3 %, 2 % is > 6 sigma
    assert float(resid.std()) == pytest.approx(0.05, rel=0.02)
    with pytest.raises(ValueError, match="sigma_y"):
        C.observe(p.x, p.psf, -1.0, torch.zeros_like(p.x))


# --------------------------------------------------------------------------- conditional diffusion


def _net():
    torch.manual_seed(0)
    net = M.ConditionalUNet(8, (8, 16)).eval()
    for prm in net.parameters():  # break any zero initialisation: outputs must respond to inputs
        prm.data.add_(0.05 * torch.randn_like(prm))
    return net


def test_condition_drop_observation_and_psf_all_change_the_output():
    net = _net()
    p = _pairs(n=4)
    x_t, t = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 500, 900])
    other_psf = C.gaussian_kernel(0.3, 3)[None].expand(4, -1, -1)
    with torch.no_grad():
        base = net(x_t, t, p.y, p.psf)
        dropped = net(x_t, t, p.y, p.psf, torch.ones(4, dtype=torch.bool))
        assert (base - dropped).abs().max() > 1e-3  # the drop is not a no-op
        assert (base - net(x_t, t, p.y + 0.2, p.psf)).abs().max() > 1e-3  # depends on y
        assert (base - net(x_t, t, p.y, other_psf)).abs().max() > 1e-3  # depends on the PSF
        # dropped: the same output whatever the observation and PSF (exact: zeroed inputs)
        torch.testing.assert_close(dropped, net(x_t, t, p.y + 0.2, other_psf, torch.ones(4, dtype=torch.bool)))
        # a partial drop only touches the dropped images
        part = net(x_t, t, p.y, p.psf, torch.tensor([True, False, False, False]))
        torch.testing.assert_close(part[1:], base[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_conditioned_prior_uses_the_prior_conversions_and_guidance(prediction):
    import dataclasses

    net = _net()
    prof = dataclasses.replace(M.one_band_profile(get_profile("smoke"), C.get_config("smoke"), 8),
                               block_out_channels=(8, 16), prediction=prediction)
    p = _pairs(n=3)
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 300, 800])
    with torch.no_grad():
        out = net(x_t, t, p.y, p.psf)
        out_u = net(x_t, t, p.y, p.psf, torch.ones(3, dtype=torch.bool))
        prior = M.conditioned_prior(net, prof, p.y, p.psf)
        a = prior.schedule.abar(t, x_t)
        if prediction == "v":  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
            torch.testing.assert_close(prior.x0_hat(x_t, t), a.sqrt() * x_t - (1 - a).sqrt() * out)
        else:
            torch.testing.assert_close(prior.eps(x_t, t), out)
        # guidance w = 2: 3 net(c) - 2 net(0)
        g = M.conditioned_prior(net, prof, p.y, p.psf, w=2.0)
        torch.testing.assert_close(g.net(x_t, t), 3 * out - 2 * out_u, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CVAE


class _FixedCVAE(M.CVAE):
    """Encoder and decoder replaced by known values: mu = (1, 0), logvar = (0, log 4), x_hat = 0.5."""

    def encode(self, y, psf):
        b = len(y)
        return torch.tensor([[1.0, 0.0]]).expand(b, -1), torch.tensor([[0.0, math.log(4.0)]]).expand(b, -1)

    def decode(self, z, psf):
        return torch.full((len(z), 1, 4, 4), 0.5)


def test_cvae_loss_against_hand_computed_values():
    m = _FixedCVAE(4, 2, 1)
    x, y = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.3)
    psf = torch.ones(2, 1, 1)  # a delta PSF: Pi * x_hat = x_hat
    sigma, noise = 0.1, torch.zeros(2, 2)
    rec_x = 16 * 0.25 / (2 * 0.01)  # ||0.5 - 0||^2 / (2 sigma^2) = 200
    rec_y = 16 * 0.04 / (2 * 0.01)  # ||0.5 - 0.3||^2 / (2 sigma^2) = 32
    kl = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 4 - 1 - math.log(4.0))  # KL of N(mu, e^logvar) || N(0, 1)
    assert float(m.loss(x, y, psf, sigma, noise, 1.0, 0.0)) == pytest.approx(rec_x + kl)
    assert float(m.loss(x, y, psf, sigma, noise, 0.0, 1.0)) == pytest.approx(rec_y + kl)  # alpha: clean, beta: observed
    assert float(m.loss(x, y, psf, sigma, noise, 2.0, 3.0)) == pytest.approx(2 * rec_x + 3 * rec_y + kl)


def test_cvae_candidates_depend_on_observation_and_psf():
    torch.manual_seed(0)
    m = M.CVAE(8, 4, 3).eval()
    p = _pairs(n=2)
    mu, _ = m.encode(p.y, p.psf)
    assert (mu - m.encode(p.y + 0.3, p.psf)[0]).abs().max() > 1e-4  # the encoder reads y
    other = C.gaussian_kernel(0.3, 3)[None].expand(2, -1, -1)
    assert (mu - m.encode(p.y, other)[0]).abs().max() > 1e-4  # and the PSF
    z = torch.randn(2, 4)
    assert (m.decode(z, p.psf) - m.decode(z, other)).abs().max() > 1e-4  # the decoder reads the PSF
    with torch.no_grad():
        m.dec[-1].bias.fill_(0.5)  # untrained outputs near 0.5, inside the [0, 1] clamp
    s = m.sample(p.y, p.psf, 5, torch.Generator().manual_seed(0))
    s2 = m.sample(p.y + 0.3, p.psf, 5, torch.Generator().manual_seed(0))
    assert s.shape == (2, 5, 1, 8, 8) and bool(((s >= 0) & (s <= 1)).all())
    assert (s - s2).abs().max() > 1e-6  # float32 resolution at 0.5: 6e-8
    assert M.active_dimensions(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]])) == 1
    with pytest.raises(ValueError, match="multiple of 4"):
        M.CVAE(10, 4, 3)


# --------------------------------------------------------------------------- training through the loop


@pytest.mark.parametrize("kind", ["cvae", "diffusion"])
def test_training_resumes_after_a_kill_bit_exactly(tmp_path, kind):
    import dataclasses

    P = get_profile("smoke")
    cfg = dataclasses.replace(C.get_config(P), channels=(8, 16), batch=4, checkpoint_every=2, psf_size=3)
    pairs = _pairs()

    def loop():
        return T.make_loop(kind, T.make_model(kind, P, cfg, 8), pairs, P, cfg, 6, 1.0, 1.0, {"k": kind})

    full = run_loop(loop(), tmp_path / "full", progress=False)
    with pytest.raises(SimulatedKill):
        run_loop(loop(), tmp_path / "killed", progress=False, kill_after_step=5)
    resumed = run_loop(loop(), tmp_path / "killed", progress=False)
    assert [r["loss"] for r in full.log] == [r["loss"] for r in resumed.log] and resumed.step == 6
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_trained_models_are_reproducible_and_leave_the_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "a"))
    pairs = _pairs(size=16, psf_size=C.get_config("smoke").psf_size)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a, state = T.train_model("smoke", "cvae", pairs, steps=4, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before) and len(state["losses"]) == 4
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "b"))
    torch.manual_seed(2)
    b, _ = T.train_model("smoke", "cvae", pairs, steps=4, progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    c, _ = T.train_model("smoke", "cvae", pairs, alpha=3.0, steps=4, progress=False)  # alpha is in the key
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(ValueError, match="kind"):
        T.make_model("gan", get_profile("smoke"), C.get_config("smoke"), 16)


# --------------------------------------------------------------------------- metrics


def test_chi2_threshold_keeps_the_stated_fraction_of_truths():
    p = _pairs(n=2000, size=8, sigma_y=0.02, seed=5)
    thr = E.chi2_threshold(64, 0.99)
    truth = E.reduced_chi2(p.x[:, None], p)[:, 0]
    # 2,000 binomial draws at p = 0.99: standard error 0.22 %, 1 % is > 4 sigma
    assert float(np.mean(truth < thr)) == pytest.approx(0.99, abs=0.01)
    g = torch.Generator().manual_seed(0)
    noisy = E.reference_arms()["truth + noise"](p, 1, g)
    # truth + noise of sigma_y: residual Pi n' - n of variance (1 + sum psf^2) sigma_y^2 per pixel
    # (edges aside); mean over 2,000 images of 64 px: standard error about 0.005, tolerance 0.03
    expected = float((1 + (p.psf**2).sum(dim=(1, 2))).mean())
    assert float(E.reduced_chi2(noisy, p).mean()) == pytest.approx(expected, abs=0.03)
    assert E.retained_curve(truth[:, None], np.array([0.0, np.inf])).tolist() == [0.0, 100.0]
    with pytest.raises(ValueError, match="quantile"):
        E.chi2_threshold(64, 1.5)


def test_traces_bootstrap_and_pixel_variance():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 20000, 2)) * np.sqrt([4.0, 9.0])
    f[1, 0] = np.nan  # a diverged candidate is left out
    # Tr(Sigma) = 13; sampling tolerance 5 % at 20,000 rows
    assert E.traces(f) == pytest.approx([13.0, 13.0], rel=0.05)
    assert np.isnan(E.traces(f[:, :1])).all()
    mean, lo, hi = E.bootstrap_mean(rng.normal(size=400))
    assert lo < mean < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.15)  # +-1.96 sd/sqrt(n)
    s = torch.zeros(1, 3, 1, 2, 2)
    s[0, :, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])  # variance 1 at one pixel
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, :] = True
    assert E.pixel_variance(s, mask).tolist() == [0.5] and E.pixel_variance(s, ~mask).tolist() == [0.0]


def test_every_arm_draws_on_the_same_observations_and_scores(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from diffdecon import plotting
    from diffdecon.plotting import conditional as cplot

    P = get_profile("smoke")
    cfg = C.get_config(P)
    p = _pairs(n=3, size=8)
    prof = M.one_band_profile(P, cfg, 8)
    import dataclasses

    prof = dataclasses.replace(prof, block_out_channels=(8, 16))
    torch.manual_seed(0)
    prior = M.one_band_prior(prof).eval()
    arms = E.reference_arms() | {"cond": E.conditional_arm(_net(), prof, cfg),
                                 "cvae": E.cvae_arm(M.CVAE(8, 4, 3).eval()),
                                 "mmps": E.posterior_arm(prior, "mmps", cfg), "dps": E.posterior_arm(prior, "dps", cfg)}
    draws = E.draw(arms, p, 3, seed=0, progress=False)
    torch.testing.assert_close(draws["truth"].samples[:, 0], p.x)
    feats = lambda s: s.flatten(1).double().numpy()  # noqa: E731 (pixels as features)
    scores = E.score(draws, p, feats, 0.99)
    assert scores["truth"].diversity[0] == 0 and scores["truth + noise"].diversity[0] > 0
    for k in ("cond", "cvae", "mmps"):
        s = draws[k].samples
        assert s.shape == (3, 3, 1, 8, 8) and bool(((s >= 0) & (s <= 1)).all())
    div, n_common = E.valid_diversity(draws, scores, p, feats, 0.99, ["cond", "cvae"])
    assert set(div) == {"cond", "cvae"} and 0 <= n_common <= 3
    with pytest.raises(ValueError, match="mmps"):
        E.posterior_arm(prior, "ula", cfg)
    fig = cplot.candidates_figure(p.x[0], p.y[0], p.psf[0], {k: draws[k].samples[0] for k in ("cond", "cvae")},
                                  p.sigma_y, n_show=2, profile="smoke")
    assert len(plotting.save_figure(fig, "cand", directory=tmp_path)) == 2
    grid = np.logspace(-1, 2, 10)
    fig = cplot.retained_figure(grid, {k: E.retained_curve(s.chi2r, grid) for k, s in scores.items()}, 1.2, 0.99)
    fig = cplot.sweep_figure(p.x[0], {"a": draws["cvae"].samples[0, 0]})
    assert len(plotting.save_figure(fig, "sweep", directory=tmp_path)) == 2


def test_one_band_encoder_is_cached_and_gives_64_features(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    keys = ("g_r", "r_i", "disk_re_kpc", "disk_h_over_r", "bulge_frac", "bulge_re_kpc", "bulge_n", "cos_i",
            "knot_frac", "bar_frac", "has_bar", "arm_amp", "has_arms")
    catalog = {k: rng.uniform(0.5, 1.5, 40) for k in keys}
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    feats, r2 = E.one_band_encoder("smoke", x, catalog, steps=3, progress=False)
    assert "recomputed" in capsys.readouterr().out and len(r2) == 11
    f = feats(x[:5])
    assert f.shape == (5, 64) and np.isfinite(f).all()
    feats2, _ = E.one_band_encoder("smoke", x, catalog, steps=3, progress=False)
    assert "cache hit" in capsys.readouterr().out
    np.testing.assert_array_equal(feats2(x[:5]), f)  # the same cached weights
