"""MMPS with the isotropic covariance: the conditioned step against dense linear algebra,
the perturb-and-solve draws against the Gaussian posterior covariance, the Jacobi
preconditioner against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdecon.calibration import GaussianPrior, blur_downsample_matrix, se_covariance
from diffdecon.mmps import _cg, mmps, mmps_isotropic_x0
from diffdecon.physics import ForwardModel
from diffdecon.psf import gaussian_psf

SIDE, SIGMA_Y = 8, 0.05


@pytest.fixture
def problem():
    """8x8 Gaussian prior, blur (1 px) + 2x2 binning to 4x4, noise 0.05."""
    prior = GaussianPrior(torch.zeros(SIDE * SIDE, dtype=torch.float64), se_covariance(SIDE, ell=2.0),
                          shape=(1, SIDE, SIDE))
    A = blur_downsample_matrix(SIDE, 1.0, 2)
    y = torch.linspace(-0.2, 0.3, 16, dtype=torch.float64).reshape(1, 4, 4)

    def forward(x):
        return (A @ x.flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    return prior, A, y, forward


def _v(prior, t, v0=1.0):
    a = float(prior.abar[t])
    return (1 - a) * v0 / (a * v0 + 1 - a)


@pytest.mark.parametrize("t", [3, 200, 700])
@pytest.mark.parametrize("with_precond", [False, True])
def test_isotropic_step_is_gaussian_conditioning(problem, t, with_precond):
    """x0_post = D + c A^T (Sigma_y + c A A^T)^-1 (y - A D): the conditioning of N(D, c I)
    on y, computed densely. 64 CG iterations on the 64-dim SPD system are exact up to
    round-off, which the system's conditioning amplifies to ~1e-8: tolerance 1e-6 prior
    units, far below the prior std 0.5."""
    prior, A, y, forward = problem
    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    diag = (A**2).sum(0).reshape(1, 1, SIDE, SIDE) / SIGMA_Y**2  # diag(A^T Sigma^-1 A)
    pre = (lambda D: diag.expand_as(D)) if with_precond else None
    x0, D = mmps_isotropic_x0(prior, x_t, t, y, forward, torch.tensor(SIGMA_Y), cg_iters=64, precond=pre)
    c = _v(prior, t)
    S = SIGMA_Y**2 * torch.eye(16, dtype=torch.float64) + c * A @ A.T
    for i in range(2):
        r = y.flatten() - A @ D[i].flatten()
        want = D[i].flatten() + c * A.T @ torch.linalg.solve(S, r)
        torch.testing.assert_close(x0[i].flatten(), want, atol=1e-6, rtol=0)


def test_perturb_and_solve_draws_have_the_posterior_covariance(problem):
    """Draws at one x_t have mean D + delta and covariance (I / c + A^T Sigma^-1 A)^-1.
    With 4000 draws the Monte-Carlo error of a variance is sqrt(2/4000) = 2.2 %: tolerance
    8 % on the trace, 0.1 prior std on the mean."""
    prior, A, y, forward = problem
    t, n = 150, 4000
    x_t = torch.randn(1, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=torch.float64).expand(n, -1, -1, -1)
    mean, _ = mmps_isotropic_x0(prior, x_t[:1], t, y, forward, torch.tensor(SIGMA_Y), cg_iters=64)
    draws, _ = mmps_isotropic_x0(prior, x_t, t, y, forward, torch.tensor(SIGMA_Y), cg_iters=64,
                                 generator=torch.Generator().manual_seed(2))
    c = _v(prior, t)
    cov = torch.linalg.inv(torch.eye(64, dtype=torch.float64) / c + A.T @ A / SIGMA_Y**2)
    emp = torch.cov(draws.flatten(1).T)
    assert abs(float(torch.trace(emp) / torch.trace(cov)) - 1) < 0.08
    std = cov.diag().sqrt()
    assert float(((draws.mean(0).flatten() - mean.flatten()) / std).abs().max()) < 0.1


def test_preconditioner_speeds_up_a_badly_scaled_system():
    """Columns scaled over four decades (as the asinh stretch scales flux columns): after 10
    iterations the Jacobi-preconditioned residual is at least 100x smaller."""
    g = torch.Generator().manual_seed(0)
    B = torch.randn(40, 30, generator=g, dtype=torch.float64) * torch.logspace(-2, 2, 30, dtype=torch.float64)
    M = torch.eye(30, dtype=torch.float64) + B.T @ B
    b = torch.randn(1, 30, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(M, b[0])

    def matvec(v):
        return v @ M

    plain = _cg(matvec, b, 10)
    pre = _cg(matvec, b, 10, 1.0 / M.diag()[None])
    assert float((pre[0] - exact).norm()) * 100 < float((plain[0] - exact).norm())


@pytest.mark.parametrize("z", [0.186, 0.4])
def test_column_norms_match_brute_force(z):
    """diag(A^T A) from the PSF autocorrelation equals the squared column norms of the dense
    operator; 1e-4 relative: only PSF light leaving the window (margin 5 px) is missed."""
    psf = np.stack([gaussian_psf(f, 9) for f in (0.8, 0.7, 0.6)])
    m = ForwardModel(z, psf, 8, 12, 1.2).m  # observed size of the model field [obs px]
    op = ForwardModel(z, psf, int(np.ceil(m)) + 10, 12, 1.2, dtype=torch.float64)
    idx = torch.randperm(3 * 144, generator=torch.Generator().manual_seed(0))[:60]  # 60 columns
    eye = torch.zeros(60, 3 * 144, dtype=torch.float64)
    eye[torch.arange(60), idx] = 1.0
    brute = (op.A(eye.reshape(-1, 3, 12, 12)).flatten(1) ** 2).sum(1)
    got = op.column_norms_sq().flatten()[idx]
    assert float((got - brute).abs().max() / brute.max()) < 1e-4


def test_cg_tolerance_stops_early_and_meets_it():
    """With ``tol`` CG stops once every preconditioned residual has fallen by ``tol`` (fewer
    products than the cap) and the solution is then as close to the exact one as the
    residual allows; ``tol=None`` runs the cap."""
    g = torch.Generator().manual_seed(1)
    B = torch.randn(40, 30, generator=g, dtype=torch.float64)
    M = torch.eye(30, dtype=torch.float64) + B.T @ B
    b = torch.randn(2, 30, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(M, b.T).T
    calls = []

    def matvec(v):
        calls.append(1)
        return v @ M

    u = _cg(matvec, b, 500, tol=1e-8)
    assert len(calls) < 100
    assert float((u - exact).norm() / exact.norm()) < 1e-6
    calls.clear()
    _cg(matvec, b, 40)
    assert len(calls) == 40


def test_normal_diagonal_is_the_linearised_diagonal():
    """InverseProblem.normal_diagonal = diag(J^T A^T Sigma^-1 A J) of the stretched forward
    model at x, against the dense Jacobian of problem.forward (1e-4 relative)."""
    from diffdecon.config import get_profile
    from diffdecon.mock import gaussian_reference, make_mock
    from diffdecon.problem import from_mock

    P = get_profile("smoke")
    truth = np.zeros((3, P.image_size, P.image_size))
    truth[:, 14:18, 14:18] = 1.0
    obs = make_mock(truth, 0.2, P, gaussian_reference(0.7, 0.01, size=9), torch.Generator().manual_seed(0))
    prob = from_mock(obs, P, dtype=torch.float64)
    x = -1 + 0.5 * torch.rand(1, 3, P.image_size, P.image_size, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)
    idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(2))[:24]  # 24 columns of J
    s2 = prob.sigma.view(1, -1, 1, 1) ** 2
    got = prob.normal_diagonal(x).flatten()[idx]
    for k, j in enumerate(idx.tolist()):
        e = torch.zeros_like(x).flatten()
        e[j] = 1.0
        _, col = torch.func.jvp(prob.forward, (x,), (e.reshape(x.shape),))  # column j of the Jacobian
        brute = float((col**2 / s2).sum())
        assert abs(float(got[k]) - brute) <= 1e-4 * brute


def test_closed_form_linearisation_matches_autograd():
    """InverseProblem.linearised gives A(x), A_x u and A_x^T v equal to the autograd
    linearisation of problem.forward (1e-10 relative in float64), and one MMPS step with it
    equals the step without it (1e-8 in prior space)."""
    from diffdecon.config import get_profile
    from diffdecon.mmps import _linearised
    from diffdecon.mock import gaussian_reference, make_mock
    from diffdecon.problem import from_mock

    P = get_profile("smoke")
    truth = np.zeros((3, P.image_size, P.image_size))
    truth[:, 14:18, 14:18] = 1.0
    obs = make_mock(truth, 0.2, P, gaussian_reference(0.7, 0.01, size=9), torch.Generator().manual_seed(0))
    prob = from_mock(obs, P, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = -1 + 1.5 * torch.rand(2, 3, P.image_size, P.image_size, generator=g, dtype=torch.float64)
    u = torch.randn(x.shape, generator=g, dtype=torch.float64)
    with torch.enable_grad():
        ref = _linearised(prob.forward, x)
        v = torch.randn(ref[0].shape, generator=g, dtype=torch.float64)
        want = (ref[0], ref[1](u), ref[2](v))
    got = prob.linearised(x)
    got = (got[0], got[1](u), got[2](v))
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max())

    prior = GaussianPrior(torch.zeros(3 * P.image_size**2), 0.3 * torch.eye(3 * P.image_size**2),
                          shape=(3, P.image_size, P.image_size))
    x_t = torch.randn(x.shape, generator=g, dtype=torch.float64)
    kw = dict(cg_iters=30, precond=prob.normal_diagonal)
    auto, _ = mmps_isotropic_x0(prior, x_t, 300, prob.y, prob.forward, prob.sigma.view(-1, 1, 1), **kw)
    closed, _ = mmps_isotropic_x0(prior, x_t, 300, prob.y, prob.forward, prob.sigma.view(-1, 1, 1),
                                  linearise=prob.linearised, **kw)
    assert float((auto - closed).abs().max()) < 1e-8


def test_bad_arguments(problem):
    prior, A, y, forward = problem
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="covariance"):
        mmps(prior, y, forward, SIGMA_Y, g, 2, steps=2, covariance="diagonal", progress=False)
    with pytest.raises(ValueError, match="precond"):
        mmps(prior, y, forward, SIGMA_Y, g, 2, steps=2, covariance="tweedie", precond=lambda d: d, progress=False)
    with pytest.raises(ValueError, match="cg_tol"):
        mmps(prior, y, forward, SIGMA_Y, g, 2, steps=2, cg_tol=2.0, progress=False)
    with pytest.raises(ValueError, match="linearise"):
        mmps(prior, y, forward, SIGMA_Y, g, 2, steps=2, covariance="tweedie", linearise=lambda d: d, progress=False)
    with pytest.raises(ValueError, match="cg_iters"):
        mmps(prior, y, forward, SIGMA_Y, g, 2, steps=2, cg_iters=0, progress=False)


def test_max_step_bounds_the_update(problem):
    """With a trust region every pixel moves at most max_step from D (exact bound), and the
    unbounded step does exceed it on this problem (so the bound is what is tested)."""
    prior, A, y, forward = problem
    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    free, D = mmps_isotropic_x0(prior, x_t, 600, 5 * y, forward, torch.tensor(SIGMA_Y), cg_iters=20)
    assert float((free - D).abs().max()) > 0.05
    bounded, D2 = mmps_isotropic_x0(prior, x_t, 600, 5 * y, forward, torch.tensor(SIGMA_Y), cg_iters=20, max_step=0.05)
    assert float((bounded - D2).abs().max()) <= 0.05 + 1e-12


def test_low_rank_covariance_products_are_exact():
    """For V = diag(c) + G Lambda G^T per band and sample (G: three annuli of a 5 x 5 image,
    Lambda a random PSD matrix in band 0 and the rank-one offset term lambda 1 1^T in band 1):
    S S^T = V, W W^T = V^-1 and the product by V^-1, compared densely with the matrices
    (float64, tolerance 1e-10)."""
    from diffdecon.denoiser_variance import annulus_masks
    from diffdecon.mmps import _covariance_sqrt, _inverse_covariance

    g = torch.Generator().manual_seed(3)
    H = W = 5
    c = 0.1 + torch.rand(2, 2, H, W, generator=g, dtype=torch.float64)
    annuli = (0.0, 1.0, 2.0, math.inf)
    G = annulus_masks(annuli, (H, W))
    K = len(G)
    Lam = torch.zeros(2, K, K, dtype=torch.float64)
    a = torch.randn(K, K, generator=g, dtype=torch.float64)
    Lam[0] = a @ a.T

    def lowrank_at(t, shape):
        if t == 0:
            return annulus_masks(annuli, shape), Lam
        return torch.ones(1, *shape, dtype=torch.float64), torch.tensor([0.0, 0.7], dtype=torch.float64).view(2, 1, 1)

    D = torch.zeros_like(c)
    for t in (0, 1):
        Gm = (G if t == 0 else torch.ones(1, H, W, dtype=torch.float64)).reshape(-1, H * W).T  # P x K
        L = lowrank_at(t, (H, W))[1]
        v_inv, v_inv_half = _inverse_covariance(c, lowrank_at, t, D)
        s_times = _covariance_sqrt(c, lowrank_at, t, D)
        for n in range(2):
            for b in range(2):
                cols = torch.zeros(H * W, 2, 2, H, W, dtype=torch.float64)
                for k in range(H * W):
                    cols[k, n, b].view(-1)[k] = 1.0

                def dense(op):  # column k = op(e_k)
                    return torch.stack([op(cols[k])[n, b].flatten() for k in range(H * W)], 1)

                V = torch.diag(c[n, b].flatten()) + Gm @ L[b] @ Gm.T
                S, Wh, Vi = dense(s_times), dense(v_inv_half), dense(v_inv)
                torch.testing.assert_close(S @ S.T, V, atol=1e-10, rtol=0)
                torch.testing.assert_close(Wh @ Wh.T, torch.linalg.inv(V), atol=1e-10, rtol=0)
                torch.testing.assert_close(Vi, torch.linalg.inv(V), atol=1e-10, rtol=0)


def test_per_sample_low_rank_covariance_products_are_exact():
    """For V = diag(c) + B^T B per sample (covariance="exact": c (N,), B (N, R, d) rows): S S^T = V,
    W W^T = V^-1 and the product by V^-1, compared densely (float64, tolerance 1e-10)."""
    from diffdecon.mmps import _SampleLowRank

    g = torch.Generator().manual_seed(4)
    shape = (2, 2, 3, 3)
    d = 18
    c = 0.05 + torch.rand(2, generator=g, dtype=torch.float64)
    B = torch.randn(2, 3, d, generator=g, dtype=torch.float64)
    lr = _SampleLowRank(c, B, torch.zeros(shape, dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64)
    for n in range(2):
        def dense(op):  # column k = op(e_k) of sample n
            cols = []
            for k in range(d):
                e = torch.zeros(shape, dtype=torch.float64)
                e[n].view(-1)[k] = 1.0
                cols.append(op(e)[n].flatten())
            return torch.stack(cols, 1)

        V = c[n] * eye + B[n].T @ B[n]
        S, Wh, Vi = dense(lr.sqrt), dense(lr.inv_half), dense(lr.inv)
        torch.testing.assert_close(S @ S.T, V, atol=1e-10, rtol=0)
        torch.testing.assert_close(Wh @ Wh.T, torch.linalg.inv(V), atol=1e-10, rtol=0)
        torch.testing.assert_close(Vi, torch.linalg.inv(V), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="posterior_covariance gave B of shape"):
        _SampleLowRank(c, B[:, :, :5], torch.zeros(shape, dtype=torch.float64))


def test_exact_covariance_of_one_gaussian_is_the_isotropic_one(problem):
    """A one-component mixture is N(mu, s0^2 I): its exact covariance is the isotropic one with
    v0 = s0^2 and no low-rank term, so MMPS gives the same samples from the same generator
    (float32, tolerance 1e-5); a prior without a closed-form covariance is refused by name."""
    from diffdecon.mixture_prior import GalaxyMixturePrior
    from diffdecon.mmps import mmps_prior

    shape = (3, 32, 32)  # the smoke grid
    prior = GalaxyMixturePrior(-0.5 + 0.3 * torch.randn(1, *shape, generator=torch.Generator().manual_seed(7),
                                                        dtype=torch.float64), 0.2, "smoke")
    y = torch.randn(*shape, generator=torch.Generator().manual_seed(8)) * 0.1

    def forward(x):
        return 0.5 * x

    runs = [mmps(prior, y, forward, 0.05, torch.Generator().manual_seed(9), 2, steps=4, cg_iters=8, progress=False,
                 x0_draw=True, **kw) for kw in ({"covariance": "exact"}, {"covariance": "isotropic", "v0": 0.04})]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)
    gp = problem[0]
    with pytest.raises(ValueError, match="posterior_covariance"):
        mmps(gp, problem[2], problem[3], SIGMA_Y, torch.Generator().manual_seed(0), 2, steps=2,
             covariance="exact", progress=False)
    with pytest.raises(ValueError, match="diagonal covariance"):
        mmps_prior(prior, torch.Generator().manual_seed(0), 2, steps=2, covariance="exact", progress=False)


def test_prior_chain_without_draws_is_ddim_and_with_draws_matches_mmps_without_data(problem):
    """mmps_prior with x0_draw=False is the ancestral DDIM chain, sample for sample (same
    random stream); with x0_draw=True and the isotropic V_t its draws match, in mean and
    spread, those of mmps whose data carry no information (sigma_y = 1e6): 400 samples of
    each, 8x8 Gaussian prior of std 1, Monte-Carlo error of a pixel's std ~3.5 %, of the mean
    std over the image 0.02: tolerances 0.1 on the spread and the mean."""
    from diffdecon.mmps import mmps_prior
    from diffdecon.samplers import ddim_sample

    prior, A, y, forward = problem
    a = ddim_sample(prior, 3, torch.Generator().manual_seed(1), steps=6, eta=1.0, progress=False)
    b = mmps_prior(prior, torch.Generator().manual_seed(1), 3, steps=6, x0_draw=False, covariance="isotropic",
                   progress=False)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    n = 400
    p = mmps_prior(prior, torch.Generator().manual_seed(2), n, steps=6, x0_draw=True, covariance="isotropic",
                   progress=False)
    q = mmps(prior, y, forward, 1e6, torch.Generator().manual_seed(3), n, steps=6, cg_iters=4, x0_draw=True,
             progress=False)
    assert abs(float(p.std(0).mean()) - float(q.std(0).mean())) < 0.1
    assert abs(float(p.mean()) - float(q.mean())) < 0.1
    with pytest.raises(ValueError, match="a diagonal covariance"):
        mmps_prior(prior, torch.Generator().manual_seed(1), 2, steps=2, covariance="tweedie")


def test_gauss_newton_steps_solve_the_nonlinear_conditioning(problem):
    """With a nonlinear forward model (A exp(x)), one linearisation (MMPS) leaves the gradient of
    0.5 |y - A exp(x)|^2 / s^2 + 0.5 (x - D)^T V^-1 (x - D) far from 0 at x0_post; Gauss-Newton
    iterations drive it towards 0, linearly (a problem with a nonzero residual), each lowering
    the objective (64 CG iterations per solve on the 64-dim system: exact to round-off;
    measured: 121 -> 7.8 -> 0.005 after 1, 2, 20 iterations; tolerance: below 0.1 of the
    first after 2 and below 1e-4 after 20)."""
    prior, A, y, _ = problem

    def forward(x):
        return (A @ torch.exp(x).flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    t = 200
    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y1 = forward(torch.full((1, 1, SIDE, SIDE), 0.3, dtype=torch.float64))[0]
    c = _v(prior, t)

    def grad_and_objective(x, D):
        x = x.clone().requires_grad_(True)
        obj = 0.5 * ((y1 - forward(x)) ** 2).sum() / SIGMA_Y**2 + 0.5 * ((x - D) ** 2).sum() / c
        return float(torch.autograd.grad(obj, x)[0].norm()), float(obj.detach())

    g, f = {}, {}
    for k in (1, 2, 4, 20):
        x0, D = mmps_isotropic_x0(prior, x_t, t, y1, forward, torch.tensor(SIGMA_Y), cg_iters=64, newton=k)
        g[k], f[k] = grad_and_objective(x0, D)
    assert g[1] > 1.0 and g[2] < 0.1 * g[1] and g[20] < 1e-4 * g[1]
    assert f[1] > f[2] > f[4] > f[20]
    with pytest.raises(ValueError, match="newton=0"):
        mmps_isotropic_x0(prior, x_t, t, y1, forward, torch.tensor(SIGMA_Y), newton=0)
    with pytest.raises(ValueError, match="1 with covariance='tweedie'"):
        mmps(prior, y1, forward, SIGMA_Y, torch.Generator().manual_seed(0), 2, steps=2, covariance="tweedie",
             newton=2, progress=False)


def test_cg_from_an_initial_guess_solves_the_same_system():
    """``u0`` moves only CG's starting point: converged, the solution is the cold one (1e-8
    relative); started from the exact solution, no iteration moves it (1e-10); started near it,
    5 iterations land closer than 5 from 0."""
    g = torch.Generator().manual_seed(2)
    B = torch.randn(60, 40, generator=g, dtype=torch.float64)
    M = 1e-2 * torch.eye(40, dtype=torch.float64) + B.T @ B
    b = torch.randn(2, 40, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(M, b.T).T

    def matvec(v):
        return v @ M

    near = exact + 1e-3 * torch.randn(2, 40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_cg(matvec, b, 400, u0=near), exact, atol=1e-8 * float(exact.abs().max()), rtol=0)
    torch.testing.assert_close(_cg(matvec, b, 3, u0=exact), exact, atol=1e-10 * float(exact.abs().max()), rtol=0)
    assert float((_cg(matvec, b, 5, u0=near) - exact).norm()) < float((_cg(matvec, b, 5) - exact).norm())


def test_warm_start_changes_where_cg_starts_not_what_it_solves(problem):
    """mmps with ``warm_start``: with CG converged at every step (64 iterations on the 64-dim
    system) the samples are those of the cold start (same random stream; tolerance 1e-6 prior
    units, the round-off of the conditioned solves); with 2 iterations they differ. In one step,
    2 iterations from an ``init`` near the converged x0_post land closer to it than 2 from D;
    ``warm_start`` with the Tweedie covariance is refused."""
    prior, A, y, forward = problem
    kw = dict(steps=8, covariance="isotropic", progress=False)
    cold = mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(4), 3, cg_iters=64, **kw)
    warm = mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(4), 3, cg_iters=64, warm_start=True, **kw)
    torch.testing.assert_close(warm, cold, atol=1e-6, rtol=0)
    cold2 = mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(4), 3, cg_iters=2, **kw)
    warm2 = mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(4), 3, cg_iters=2, warm_start=True, **kw)
    assert float((warm2 - cold2).abs().max()) > 1e-3
    x_t = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    conv, _ = mmps_isotropic_x0(prior, x_t, 200, y, forward, torch.tensor(SIGMA_Y), cg_iters=64)
    init = conv + 0.01 * torch.randn(conv.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    from_d, _ = mmps_isotropic_x0(prior, x_t, 200, y, forward, torch.tensor(SIGMA_Y), cg_iters=2)
    from_init, _ = mmps_isotropic_x0(prior, x_t, 200, y, forward, torch.tensor(SIGMA_Y), cg_iters=2, init=init)
    assert float((from_init - conv).norm()) < float((from_d - conv).norm())
    with pytest.raises(ValueError, match="warm_start"):
        mmps(prior, y, forward, SIGMA_Y, torch.Generator().manual_seed(4), 1, steps=2, covariance="tweedie",
             warm_start=True, progress=False)


def test_steps_from_draws_sample_a_gaussian_posterior_exactly_and_from_means_too_narrow():
    """Prior N(0, s0^2 I) (the diagonal covariance of MMPS is then exact), 8 x 8 px blurred and
    binned, data that outweigh the prior (sigma_y = 0.002 against s0 = 0.05): with each step from a
    draw of p(x0 | x_t, y), the last one included, 512 samples on 10 steps have the exact
    posterior variance (ratio within 5 %, whitened chi^2 within 0.1 of 1); steps from its mean
    under-disperse (ratio below 0.5), and a mean at the last step alone leaves the data-dominated
    directions too narrow (chi^2 below 0.92)."""
    from diffdecon import calibration, denoiser_variance, samplers

    side, s0, sy = 8, 0.05, 0.002
    prior = GaussianPrior(torch.zeros(side * side), s0**2 * torch.eye(side * side), shape=(1, side, side))
    y, fwd, mp, Sp = calibration.blurred_observation(prior, sy, torch.Generator().manual_seed(0))
    dv = denoiser_variance.measure(prior, prior.sample(256, torch.Generator().manual_seed(2)),
                                   samplers.timesteps(1000, 32, "quadratic"), torch.Generator().manual_seed(3),
                                   progress=False)

    def errors(**kw):
        x = mmps(prior, y, fwd, sy, torch.Generator().manual_seed(1), 512, steps=10, cg_iters=60,
                 covariance="empirical", variance=dv, spacing="quadratic", progress=False, **kw)
        return calibration.posterior_moment_errors(x, mp, Sp)

    exact = errors(x0_draw=True, last_draw=True)
    assert abs(exact["var_ratio"] - 1) < 0.05 and abs(exact["chi2"] - 1) < 0.1
    assert errors(x0_draw=False)["var_ratio"] < 0.5
    assert errors(x0_draw=True)["chi2"] < 0.92
    with pytest.raises(ValueError, match="last_draw=True needs x0_draw=True"):
        mmps(prior, y, fwd, sy, torch.Generator().manual_seed(1), 2, steps=2, covariance="empirical", variance=dv,
             last_draw=True, progress=False)


def test_second_linearisation_in_the_last_step_removes_the_curvature_flux():
    """Forward model A exp(x) (8 x 8 px blurred and binned to 4 x 4) on a prior N(0, 0.3^2 I),
    data precise enough (sigma_y = 1e-4) to outweigh the prior's variance at t = 0 (~4e-5):
    the last step's draw, fitted through the model linearised at D, carries exp's curvature
    into the summed model flux, 0.85 units of its noise (4 sigma_y) above the data (512 samples,
    10 steps, measured); linearised again at the draw (``last_newton=2``) the samples' summed
    flux sits on the data's (measured -0.02) and their chi^2 at 1.01 (1.07 with one). Tolerances:
    above 0.5 with one, within 0.15 with two (the mean's Monte-Carlo error is 0.04); chi^2 of
    the second within 0.03 of 1. ``last_newton`` defaults to ``newton``, overrides it in the
    last step only, and refuses 0."""
    from diffdecon import denoiser_variance, samplers

    side, s0, sy = 8, 0.3, 1e-4
    prior = GaussianPrior(torch.zeros(side * side), s0**2 * torch.eye(side * side), shape=(1, side, side))
    A = blur_downsample_matrix(side, 1.0, 2)

    def forward(x):
        return (A.to(x.dtype) @ torch.exp(x).flatten(1).T).T.reshape(x.shape[0], 1, 4, 4)

    g = torch.Generator().manual_seed(0)
    y = forward(prior.sample(1, g))[0] + sy * torch.randn(1, 4, 4, generator=g)
    dv = denoiser_variance.measure(prior, prior.sample(256, torch.Generator().manual_seed(2)),
                                   samplers.timesteps(1000, 32, "quadratic"), torch.Generator().manual_seed(3),
                                   progress=False)

    def offset_and_chi2(**kw):
        x = mmps(prior, y, forward, sy, torch.Generator().manual_seed(1), 512, steps=10, cg_iters=60,
                 covariance="empirical", variance=dv, spacing="quadratic", progress=False, x0_draw=True,
                 last_draw=True, **kw)
        Ax = forward(x)
        return float((Ax.sum((1, 2, 3)).mean() - y.sum()) / (4 * sy)), float(((Ax - y) ** 2).mean() / sy**2)

    once, chi2_once = offset_and_chi2()
    twice, chi2_twice = offset_and_chi2(last_newton=2)
    assert once > 0.5 and chi2_once > chi2_twice
    assert abs(twice) < 0.15 and abs(chi2_twice - 1) < 0.03
    assert abs(offset_and_chi2(newton=2)[0]) < 0.15  # last_newton follows newton by default
    assert offset_and_chi2(newton=2, last_newton=1)[0] > 0.5  # and overrides it in the last step
    with pytest.raises(ValueError, match="last_newton=0"):
        mmps(prior, y, forward, sy, torch.Generator().manual_seed(1), 2, steps=2, covariance="empirical",
             variance=dv, last_newton=0, progress=False)
