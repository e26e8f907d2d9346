"""The denoiser-variance table against the closed form of a Gaussian prior."""

import math

import pytest
import torch

from diffdecon import calibration, denoiser_variance as dvm
from diffdecon.errors import InputValueError
from diffdecon.samplers import _alphas_cumprod


def _white_prior(v: float, side: int = 8, mu: float = -0.5):
    d = side * side
    return calibration.GaussianPrior(torch.full((d,), mu, dtype=torch.float64), v * torch.eye(d, dtype=torch.float64),
                                     shape=(1, side, side))


def test_table_matches_gaussian_tweedie_variance():
    """For x0 ~ N(mu, v I), E[(x0 - D)^2 | x_t] = sigma^2 v / (alpha^2 v + sigma^2) whatever D."""
    v = 0.09
    prior = _white_prior(v)
    x0 = prior.sample(256, torch.Generator().manual_seed(0))
    times = [0, 50, 200, 500, 900]
    dv = dvm.measure(prior, x0, times, torch.Generator().manual_seed(1), progress=False)
    abar = _alphas_cumprod(prior)
    for k, t in enumerate(times):
        a = float(abar[t])
        exact = (1 - a) * v / (a * v + 1 - a)
        # every pixel has the same exact variance; 16384 pixels per time, of which >= 1000 fall
        # in each of the three bins next to the mean: relative std sqrt(2 / n) <= 4.5 %, so 15 %
        # is more than three standard deviations.
        near_mean = torch.tensor([-0.65, -0.45, -0.35], dtype=torch.float64).view(1, 1, 1, 3)
        assert torch.allclose(dv(near_mean, t), torch.full_like(near_mean, exact), rtol=0.15)
        D = prior.x0_hat(torch.zeros(4, 1, 8, 8, dtype=torch.float64) + a**0.5 * -0.5, torch.full((4,), t))
        assert dv(D, t).shape == D.shape
        assert torch.all(torch.isclose(dv(D, t), dv.table[k, 0][torch.bucketize(D.double(), dv.edges[1:-1])],
                                       rtol=1e-6))


def test_table_is_measured_and_read_on_the_networks_device(device, prior_on_device):
    """Training images come from the CPU; the table is measured with the network on ``device``
    and read for a ``D`` on that device, with the values of the all-CPU table (1e-12). (On the
    CPU the devices agree; run with DIFFDECON_TEST_DEVICE=cuda on a GPU to test the moves.)"""
    base = _white_prior(0.09)
    x0 = base.sample(64, torch.Generator().manual_seed(0))
    times = [0, 200, 600]
    dv = dvm.measure(prior_on_device(base), x0, times, torch.Generator().manual_seed(1), progress=False)
    ref = dvm.measure(base, x0, times, torch.Generator().manual_seed(1), progress=False)
    assert torch.allclose(dv.table, ref.table, rtol=1e-12)
    D = torch.linspace(-1.2, 0.5, 64, dtype=torch.float64).view(1, 1, 8, 8)
    got = dv(D.to(device), 200)
    assert got.device == D.to(device).device
    assert torch.allclose(got.cpu(), ref(D, 200), rtol=1e-12)


def test_interpolation_in_log_variance_between_times():
    prior = _white_prior(0.25)
    x0 = prior.sample(32, torch.Generator().manual_seed(0))
    dv = dvm.measure(prior, x0, [100, 300], torch.Generator().manual_seed(1), progress=False)
    D = torch.full((1, 1, 8, 8), -0.5, dtype=torch.float64)
    mid = dv(D, 200)
    assert torch.allclose(mid, (dv(D, 100) * dv(D, 300)).sqrt(), rtol=1e-6)  # geometric mean at the midpoint
    assert torch.allclose(dv(D, 0), dv(D, 100)) and torch.allclose(dv(D, 999), dv(D, 300))  # held at the ends


def test_bad_input_is_named():
    prior = _white_prior(0.25)
    x0 = prior.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(InputValueError, match="times"):
        dvm.measure(prior, x0, [5], torch.Generator(), progress=False)
    with pytest.raises(InputValueError, match="x0 shape"):
        dvm.measure(prior, x0[0], [5, 10], torch.Generator(), progress=False)
    dv = dvm.measure(prior, x0, [5, 10], torch.Generator().manual_seed(0), progress=False)
    with pytest.raises(InputValueError, match="bands"):
        dv(torch.zeros(1, 3, 8, 8), 5)
    assert dvm.DenoiserVariance.from_dict(dv.to_dict()).table.equal(dv.table)


def test_mmps_empirical_is_exact_for_a_white_gaussian_prior():
    """For x0 ~ N(mu, v I) the diagonal table is the exact Tweedie covariance, so MMPS drawing
    x0 from the Gaussian p(x0 | x_t, y) samples the exact posterior whatever the step count."""
    from diffdecon import samplers

    side, sigma_y, v = 8, 0.05, 0.25
    prior = _white_prior(v, side)
    g = torch.Generator().manual_seed(0)
    y, forward, mu_post, Sigma_post = calibration.blurred_observation(prior, sigma_y, g)
    dv = dvm.measure(prior, prior.sample(128, g), samplers.timesteps(1000, 32, "quadratic"),
                     torch.Generator().manual_seed(2), progress=False)

    x = samplers.mmps(prior, y, forward, sigma_y, torch.Generator().manual_seed(3), 256, steps=20, cg_iters=20,
                      covariance="empirical", variance=dv, spacing="quadratic", x0_draw=True, progress=False)
    err = calibration.posterior_moment_errors(x, mu_post, Sigma_post)
    # 256 samples: the variance ratio of one pixel scatters by sqrt(2/255) ~ 9 %, its mean over
    # 64 pixels by ~2 % (measured 1.00); the mean error in posterior std units by 1/16 (0.05).
    assert 0.85 < err["var_ratio"] < 1.15
    assert err["mean_err_rms"] < 0.15
    with pytest.raises(ValueError, match="variance is used by covariance 'empirical', 'annuli', 'jacobian' only"):
        samplers.mmps(prior, y, forward, sigma_y, torch.Generator(), 2, steps=3, variance=dv, progress=False)


def _offset_prior(v: float, lam: float, side: int = 8, mu: float = -0.5):
    d = side * side
    cov = v * torch.eye(d, dtype=torch.float64) + lam * torch.ones(d, d, dtype=torch.float64)
    return calibration.GaussianPrior(torch.full((d,), mu, dtype=torch.float64), cov, shape=(1, side, side)), cov


def test_offset_variance_matches_gaussian_tweedie_covariance():
    """For x0 ~ N(mu, v I + l 1 1^T) the Tweedie covariance is c I + l' 1 1^T, with
    c = s^2 v / (a^2 v + s^2) and c + P l' = s^2 (v + P l) / (a^2 (v + P l) + s^2) along 1."""
    v, lam, side = 0.04, 0.01, 8
    P = side * side
    prior, _ = _offset_prior(v, lam, side)
    times = [50, 300, 800]
    dv = dvm.measure(prior, prior.sample(2048, torch.Generator().manual_seed(0)), times,
                     torch.Generator().manual_seed(1), progress=False)
    abar = _alphas_cumprod(prior)
    for k, t in enumerate(times):
        a = float(abar[t])
        c = (1 - a) * v / (a * v + 1 - a)
        along = (1 - a) * (v + P * lam) / (a * (v + P * lam) + 1 - a)
        exact = (along - c) / P
        # the estimate is a difference of two means over N images of sums with variance P along:
        # its std is about sqrt(2 / N) along / (P - 1) (35 % of l' at t = 50, 3 % at t = 800);
        # four of them is the tolerance.
        tol = 4 * (2 / 2048) ** 0.5 * along / (P - 1)
        assert abs(float(dv.offset_at(t)[0]) - exact) < tol, (t, float(dv.offset_at(t)[0]), exact, tol)
    white = _white_prior(v, side)
    off_free = dvm.measure(white, white.sample(512, torch.Generator().manual_seed(0)), times,
                           torch.Generator().manual_seed(1), progress=False)
    for t in times:  # independent pixels: l' = 0 within four standard deviations of the estimate
        a = float(abar[t])
        c = (1 - a) * v / (a * v + 1 - a)
        assert float(off_free.offset_at(t)[0]) < 4 * (2 / 512) ** 0.5 * c / (P - 1)
    assert dvm.DenoiserVariance.from_dict(dv.to_dict()).offset.equal(dv.offset)


def test_mmps_empirical_is_exact_for_a_gaussian_prior_with_an_offset():
    """The offset term of V_t (a uniform level the data constrain only summed over pixels) is
    what makes MMPS exact for N(mu, v I + l 1 1^T); the diagonal alone gets the level wrong."""
    from diffdecon import samplers

    side, sigma_y, v, lam = 8, 0.05, 0.01, 0.02
    prior, _ = _offset_prior(v, lam, side)
    g = torch.Generator().manual_seed(0)
    y, forward, mu_post, Sigma_post = calibration.blurred_observation(prior, sigma_y, g)
    dv = dvm.measure(prior, prior.sample(512, g), samplers.timesteps(1000, 32, "quadratic"),
                     torch.Generator().manual_seed(2), progress=False)

    def run(variance):
        x = samplers.mmps(prior, y, forward, sigma_y, torch.Generator().manual_seed(3), 256, steps=20, cg_iters=20,
                          covariance="empirical", variance=variance, spacing="quadratic", x0_draw=True,
                          progress=False)
        return calibration.posterior_moment_errors(x, mu_post, Sigma_post), x.mean((1, 2, 3))

    err, level = run(dv)
    diag_only = dvm.DenoiserVariance(dv.times, dv.edges, dv.table)
    err_diag, level_diag = run(diag_only)
    # the posterior of the mean level: exact sd from Sigma_post; 256 samples
    sd_level = float(Sigma_post.sum().sqrt()) / side**2
    mu_level = float(mu_post.mean())
    assert 0.8 < err["var_ratio"] < 1.25 and err["mean_err_rms"] < 0.2, err
    assert abs(float(level.mean()) - mu_level) < 0.3 * sd_level
    assert 0.75 < float(level.std()) / sd_level < 1.3
    # without the offset term the level's spread is wrong (measured: 1.65 times the exact sd)
    assert not 0.75 < float(level_diag.std()) / sd_level < 1.3


ANNULI = (0.0, 1.5, 3.0, math.inf)  # three annuli of an 8 x 8 image: 4, 28 and 32 px


def _annulus_prior(v: float, Lam: torch.Tensor, side: int = 8, mu: float = -0.5):
    """N(mu, v I + G Lam G^T), G the annulus masks (P x K)."""
    G = dvm.annulus_masks(ANNULI, (side, side)).reshape(len(ANNULI) - 1, -1).T
    cov = v * torch.eye(side * side, dtype=torch.float64) + G @ Lam @ G.T
    return calibration.GaussianPrior(torch.full((side * side,), mu, dtype=torch.float64), cov,
                                     shape=(1, side, side)), cov, G


def test_annulus_masks_tile_the_image_and_bad_radii_are_refused():
    G = dvm.annulus_masks(ANNULI, (8, 8))
    assert G.shape == (3, 8, 8) and torch.equal(G.sum(0), torch.ones(8, 8))
    assert G.sum((1, 2)).tolist() == [4.0, 28.0, 32.0]
    for bad in [(1.0, math.inf), (0.0, 3.0), (0.0, 3.0, 2.0, math.inf), (0.0,)]:
        with pytest.raises(InputValueError, match="annuli"):
            dvm.annulus_masks(bad, (8, 8))


def test_annulus_covariance_matches_gaussian_tweedie_covariance():
    """For x0 ~ N(mu, v I + G Lam G^T) with disjoint annuli, the Tweedie covariance is
    f(v) I + G Lam' G^T with f(s) = sigma^2 s / (alpha^2 s + sigma^2) and, with N = diag(n_k),
    Lam' = N^-1/2 (f(v I + N^1/2 Lam N^1/2) - f(v) I) N^-1/2 (f of a matrix): 2048 draws."""
    v = 0.04
    Lam = torch.tensor([[0.02, 0.01, 0.0], [0.01, 0.01, 0.004], [0.0, 0.004, 0.003]], dtype=torch.float64)
    prior, _, G = _annulus_prior(v, Lam)
    times = [50, 300, 800]
    N = 2048
    dv = dvm.measure(prior, prior.sample(N, torch.Generator().manual_seed(0)), times,
                     torch.Generator().manual_seed(1), progress=False, annuli=ANNULI)
    n = G.sum(0)
    abar = _alphas_cumprod(prior)
    for t in times:
        a = float(abar[t])
        M = v * torch.eye(3, dtype=torch.float64) + n.sqrt()[:, None] * Lam * n.sqrt()[None, :]
        ew, ev = torch.linalg.eigh(M)
        fM = ev @ torch.diag((1 - a) * ew / (a * ew + 1 - a)) @ ev.T
        fv = (1 - a) * v / (a * v + 1 - a)
        exact = (fM - fv * torch.eye(3, dtype=torch.float64)) / (n.sqrt()[:, None] * n.sqrt()[None, :])
        # covariance of the annulus sums s: n_k fv + n Lam' n; the estimate of E[s_i s_j] has std
        # sqrt((E[s_i^2] E[s_j^2] + E[s_i s_j]^2) / N); four of them, divided by n_i n_j
        Ss = fv * torch.diag(n) + n[:, None] * exact * n[None, :]
        tol = 4 * ((Ss.diag()[:, None] * Ss.diag()[None, :] + Ss**2) / N).sqrt() / (n[:, None] * n[None, :])
        got = dv.lowrank_at(t, (8, 8))[1][0]
        assert torch.all((got - exact).abs() < tol), (t, got, exact, tol)
    back = dvm.DenoiserVariance.from_dict(dv.to_dict())
    assert back.annuli == ANNULI and back.annulus_cov.equal(dv.annulus_cov)


def test_mmps_empirical_is_exact_for_a_gaussian_prior_with_annulus_covariance():
    """With the annulus term (covariance="annuli") V_t is the exact Tweedie covariance of
    N(mu, v I + G Lam G^T), and MMPS samples the exact posterior: pixel variances and the sums over the annuli (what the
    data constrain best when the image is blurred) have the exact mean and spread; the offset
    term alone (one level for the whole image) puts the annulus sums off by posterior sd."""
    from diffdecon import samplers

    side, sigma_y, v = 8, 0.05, 0.01
    Lam = torch.tensor([[0.05, -0.01, 0.0], [-0.01, 0.01, -0.004], [0.0, -0.004, 0.004]], dtype=torch.float64)
    prior, _, G = _annulus_prior(v, Lam, side)
    g = torch.Generator().manual_seed(0)
    y, forward, mu_post, Sigma_post = calibration.blurred_observation(prior, sigma_y, g)
    dv = dvm.measure(prior, prior.sample(1024, g), samplers.timesteps(1000, 32, "quadratic"),
                     torch.Generator().manual_seed(2), progress=False, annuli=ANNULI)

    def run(covariance):
        x = samplers.mmps(prior, y, forward, sigma_y, torch.Generator().manual_seed(3), 256, steps=20, cg_iters=20,
                          covariance=covariance, variance=dv, spacing="quadratic", x0_draw=True, progress=False)
        return calibration.posterior_moment_errors(x, mu_post, Sigma_post), x.flatten(1) @ G

    sd_sums = (G.T @ Sigma_post @ G).diag().sqrt()  # exact posterior sd of the annulus sums
    err, sums = run("annuli")
    # 256 samples: the Monte-Carlo error of a variance is sqrt(2 / 256) = 9 %, of a mean 1/16 sd
    assert 0.8 < err["var_ratio"] < 1.25 and err["mean_err_rms"] < 0.2, err
    ratio = sums.std(0) / sd_sums
    assert torch.all((ratio > 0.75) & (ratio < 1.3)), ratio
    assert torch.all((sums.mean(0) - G.T @ mu_post).abs() < 0.3 * sd_sums)
    # "empirical" drops the annulus term for the offset term: annulus sums off by 1.5-2.1
    # posterior sd (measured), the pixel means by 0.87 sd rms
    _, sums_off = run("empirical")
    assert float(((sums_off.mean(0) - G.T @ mu_post).abs() / sd_sums).max()) > 1.0
    with pytest.raises(ValueError, match="covariance='annuli' needs a variance with an annulus term"):
        samplers.mmps(prior, y, forward, sigma_y, torch.Generator(), 2, steps=3, covariance="annuli",
                      variance=dv.without_annuli(), progress=False)
