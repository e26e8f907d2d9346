"""Tests of the SLIC noise score and sampler (diffdecon.slic)."""

from __future__ import annotations

import pytest
import torch

from diffdecon import calibration, slic
from diffdecon.noise import NoiseModel


class PeriodicBlur:
    """Circulant Gaussian blur on an N x N grid, one 'exposure': A (B, N, N) -> (B, 1, N, N)."""

    def __init__(self, N: int, s: float = 1.0):
        r = torch.arange(N, dtype=torch.float64)
        r = torch.minimum(r, N - r)
        g = torch.exp(-0.5 * (r / s) ** 2)
        k = torch.outer(g, g)
        self.N, self.kh = N, torch.fft.fft2(k / k.sum())

    def A(self, x):
        return torch.fft.ifft2(torch.fft.fft2(x) * self.kh).real[:, None]

    def matrix(self):
        E = torch.eye(self.N**2, dtype=torch.float64).reshape(-1, self.N, self.N)
        return self.A(E).reshape(self.N**2, self.N**2).T


def test_gaussian_path_matches_the_exact_posterior():
    # Gaussian prior N(0, 0.5 I) on 8 x 8, circulant blur, white noise 0.1. With the analytic
    # score, r_eff = r exactly whatever tau, and eq. (4) is moment-matching posterior
    # sampling (10 CG iterations converge on this 64-pixel system): the exact posterior up to
    # Monte Carlo and step discretisation. 256 samples: the mean
    # per pixel to 0.063 posterior sd (1 sd), max over 64 pixels accepted below 0.3 sd;
    # the variance ratio to ~0.09 per pixel, mean accepted in [0.85, 1.15] (the ancestral
    # steps shrink it slightly: 0.97 with samplers.mmps at 200 steps on the same problem).
    N, s2, sig = 8, 0.5, 0.1
    op = PeriodicBlur(N)
    prior = calibration.GaussianPrior(torch.zeros(N * N), s2 * torch.eye(N * N), shape=(1, N, N))
    g = torch.Generator().manual_seed(0)
    x0 = prior.sample(1, g)
    y = op.A(x0[:, 0])[0] + sig * torch.randn(1, N, N, generator=g, dtype=torch.float64)
    mu, S = calibration.exact_posterior(torch.zeros(N * N), s2 * torch.eye(N * N), op.matrix(), sig, y.flatten())
    score = slic.GaussianNoiseScore(torch.full((N, N), sig**2), op.kh.abs() ** 2 + slic.KERNEL_REGULARIZATION)
    xs = slic.sample(prior, y, op, lambda x: x[:, 0], score, torch.Generator().manual_seed(1), n=256, steps=120,
                     cg_iters=10, progress=False)
    err = calibration.posterior_moment_errors(xs, mu, S)
    assert err["mean_err_max"] < 0.3, err
    assert 0.85 < err["var_ratio"] < 1.15, err


def _kernel(M: int) -> torch.Tensor:
    r = torch.arange(M, dtype=torch.float64)
    r = torch.minimum(r, M - r)
    k = torch.exp(-0.5 * (r[:, None] ** 2 + r[None] ** 2) / 1.5**2)
    return torch.fft.fft2(k / k.sum()).abs() ** 2 + slic.KERNEL_REGULARIZATION


def test_learned_score_matches_the_analytic_gaussian_score(tmp_path):
    # Gaussian noise of known covariance C (white + COSMOS-correlated, no cosmic rays):
    # the learned s_phi must match -(C + tau^2 K)^-1 eta. An isotropic Gaussian score of the
    # right variance is off by 9-14 % here; s_phi (power spectrum from 2,000 cutouts,
    # per-mode error ~2 %, plus 100 DSM steps) must be within 5 % (relative L2) at every tau.
    M = 16
    nm = NoiseModel(cosmic_rays=False, correlated_sigma=6.0)
    cut = nm.cutouts(2000, M, torch.Generator().manual_seed(0))
    K = _kernel(M)
    net = slic.train_noise_score(cut, K, tmp_path, steps=100, batch=32, width=16, lr=2e-3, progress=False)
    ref = slic.GaussianNoiseScore(nm.background_power_spectrum(M), K)
    iso = slic.GaussianNoiseScore(torch.full((M, M), float(nm.background_power_spectrum(M).mean())), K)
    g = torch.Generator().manual_seed(5)
    test = nm.cutouts(64, M, g)
    for ratio in (0.03, 0.3, 1.0, 3.0):  # kernel noise std over the pixel noise std
        tau = torch.full((64,), ratio * net.sigma_w / float(K.mean()) ** 0.5, dtype=torch.float64)
        eta = test + tau.view(-1, 1, 1) * torch.fft.ifft2(torch.fft.fft2(torch.randn(64, M, M, generator=g,
                                                                                     dtype=torch.float64)) * K.sqrt()).real
        s_true = ref(eta, tau)

        def rel(s):
            return float((s.double() - s_true).norm() / s_true.norm())

        assert rel(net(eta, tau)) < 0.05, (ratio, rel(net(eta, tau)), rel(iso(eta, tau)))
        assert rel(iso(eta, tau)) > 0.08  # the check has teeth: ignoring correlation fails it


def test_training_is_cached_and_resumes_bit_exactly(tmp_path, monkeypatch):
    M = 8
    cut = NoiseModel().cutouts(64, M, torch.Generator().manual_seed(0))
    K = _kernel(M)
    kw = dict(steps=6, batch=4, width=4, checkpoint_every=3, progress=False)
    full = slic.train_noise_score(cut, K, tmp_path / "a", **kw)
    # an interrupted run: the 5th loss evaluation crashes, after the checkpoint of step 3
    calls, real = [], slic.dsm_loss

    def crashing(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(slic, "dsm_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        slic.train_noise_score(cut, K, tmp_path / "b", **kw)
    monkeypatch.setattr(slic, "dsm_loss", real)
    assert (tmp_path / "b" / "checkpoint.pt").exists() and not (tmp_path / "b" / "noise_score.pt").exists()
    resumed = slic.train_noise_score(cut, K, tmp_path / "b", **kw)
    for x, y in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(x, y)
    again = slic.train_noise_score(cut, K, tmp_path / "a", **kw)  # cache hit
    for x, y in zip(full.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)


def test_bad_cutouts_and_geometry_are_named(tmp_path):
    K = _kernel(8)
    with pytest.raises(ValueError, match=r"shape \(4, 8, 9\).*\(n, 8, 8\)"):
        slic.check_cutouts(torch.zeros(4, 8, 9), 8)
    bad = torch.zeros(4, 8, 8)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        slic.train_noise_score(bad, K, tmp_path, steps=1, progress=False)
    cut = NoiseModel().cutouts(16, 8, torch.Generator().manual_seed(0))
    slic.train_noise_score(cut, K, tmp_path, steps=1, batch=2, width=4, progress=False)
    with pytest.raises(ValueError, match="another geometry: kernel_sha"):
        slic.load_noise_score(tmp_path / "noise_score.pt", 8, _kernel(8) * 2)
    with pytest.raises(ValueError, match="another geometry: M"):
        slic.load_noise_score(tmp_path / "noise_score.pt", 10, torch.ones(10, 10))
    net = slic.load_noise_score(tmp_path / "noise_score.pt", 8, K)
    with pytest.raises(ValueError, match=r"trained on \(8, 8\)"):
        net(torch.zeros(1, 12, 12), torch.ones(1))


def test_learned_score_discounts_cosmic_rays(tmp_path):
    # The point of SLIC: at a pixel hit by a cosmic ray (hundreds of e- against a ~10 e-
    # background) the Gaussian score pulls with |eta| / sigma^2 ~ 1-10 per e-, the true score
    # of a heavy-tailed mixture hardly at all. After 200 DSM steps on cutouts with a raised
    # cosmic-ray rate (10 % of pixels per 1000 s, for more examples) the learned |score| at
    # cosmic-ray pixels must be below 30 % of the Gaussian one, and within 25 % of it elsewhere.
    M = 16
    nm = NoiseModel(cr_fraction_per_ks=0.1)
    cut = nm.cutouts(1000, M, torch.Generator().manual_seed(0))
    K = _kernel(M)
    net = slic.train_noise_score(cut, K, tmp_path, steps=200, batch=32, width=16, lr=2e-3, progress=False)
    gauss = slic.GaussianNoiseScore(nm.background_power_spectrum(M), K)
    held = nm.simulate(torch.zeros(64, M, M), torch.Generator().manual_seed(9))
    tau = torch.full((64,), net.tau_bounds()[0], dtype=torch.float64)
    hit = held["cr_mask"]
    s_net, s_g = net(held["y"], tau).abs(), gauss(held["y"], tau).abs()
    assert int(hit.sum()) > 50
    assert float(s_net[hit].mean()) < 0.3 * float(s_g[hit].mean()), (float(s_net[hit].mean()), float(s_g[hit].mean()))
    assert abs(float(s_net[~hit].mean()) / float(s_g[~hit].mean()) - 1) < 0.25
