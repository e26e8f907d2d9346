"""Validation where the truth is known: mock observations, methods compared, calibration.

The chain of notebook 02, part 2 (the paper's Figures 2-3 and the validation table):

1. :func:`mock_set`: held-out synthetic idealized galaxies (``galaxies.build_dataset(split=
   "test")``) observed through the HSC-like forward model (:func:`diffdecon.mock.make_mock`)
   at the low redshifts of the paper's targets.
2. :func:`run_validation`: every mock is inverted with MMPS, DPS (the published ``paper``
   convention, zeta_t = 1 / ||r|| on the squared norm, computed per sample) and the classical
   baselines (Richardson-Lucy, Wiener; :mod:`diffdecon.baselines`, brought to the model grid
   with :func:`diffdecon.baselines.to_model_grid`). Each estimate is scored against the
   idealized truth (:func:`score_estimate`).
3. :func:`diffdecon.sbc.mock_calibration`: TARP expected coverage, per-pixel interval coverage and the
   reduced chi^2 of ``A(sample)`` against ``y``, over the whole mock set.
4. :func:`diffdecon.exactness.exactness`: the samplers against the exact posterior of a
   Gaussian prior, the numbers of the exactness table.

Units: model images in HSC coadd flux per model pixel, observations in HSC coadd flux per
observation pixel (``mag = 27 - 2.5 log10 F``), as everywhere (``docs/design.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import baselines, metrics
from .arrays import to_numpy
from .config import Profile, get_profile
from .errors import DivergenceError

__all__ = [
    "PAPER_LOW_Z",
    "METHODS",
    "DPS_ZETA_LADDER",
    "SamplerSettings",
    "sampler_settings",
    "mock_set",
    "score_estimate",
    "baseline_estimates",
    "MockValidation",
    "run_validation",
    "metrics_rows",
    "diverged_mocks",
]

PAPER_LOW_Z: tuple[float, ...] = (0.166, 0.186, 0.21677)
"""Redshifts of the paper's three low-redshift HSC targets (test3, test2, test1)."""

METHODS: tuple[str, ...] = ("mmps", "dps", "richardson_lucy", "wiener")
"""Methods compared on the mock set, in table order."""

DPS_ZETA_LADDER: tuple[float, ...] = (1.0, 0.1, 0.01, 1e-3, 1e-4)
"""DPS guidance scales tried in turn (``paper`` convention, per-sample whitened residual):
the published zeta = 1 first; when DPS diverges on a mock (:class:`errors.DivergenceError`)
the next smaller one, and later mocks start from the
last scale that worked. Which one was used is recorded per mock and quoted in the table.
Why zeta = 1 diverges here: the residual is whitened by sigma_y in flux units (sigma_y ~ 0.01),
not taken in the stretched image space of the published code, so the gradient of ||r|| is
larger by roughly s * d(unstretch)/dx / sigma_y ~ 1e3-1e4."""

LABELS: dict[str, str] = {"mmps": "MMPS", "dps": "DPS", "richardson_lucy": "Richardson-Lucy", "wiener": "Wiener"}


@dataclass(frozen=True)
class SamplerSettings:
    """How many samples and steps each posterior sampler gets under one profile.

    Attributes
    ----------
    n : int
        Posterior samples per mock (the same for both samplers, so TARP sees equal sets).
    mmps_steps, cg_iters : int
        MMPS steps and conjugate-gradient iterations per step.
    dps_steps : int
        DPS steps (published: all T = 1000).
    dps_zeta : float
        DPS guidance scale in the ``paper`` convention (published: 1, i.e. zeta_t = 1/||r||).
    note : str
        What differs from the published set-up, and why (quoted in table captions).
    mmps_covariance : str
        ``covariance`` of :func:`diffdecon.mmps.mmps` (:data:`diffdecon.mmps.COVARIANCES`).
    """

    n: int
    mmps_steps: int
    cg_iters: int
    dps_steps: int
    dps_zeta: float = 1.0
    note: str = ""
    mmps_covariance: str = "empirical"


def sampler_settings(profile: Profile | str) -> SamplerSettings:
    """The sampler budget of ``profile``: MMPS with the profile's covariance and a Jacobi-
    preconditioned CG solve (:mod:`diffdecon.mmps`), ``sampling_steps`` steps of
    ``cg_iters`` iterations each (one network evaluation per step; a CG iteration costs a
    product by ``A`` and one by ``A^T``), and DPS.

    * ``paper``: ``n_posterior`` samples, MMPS 100 steps, DPS with all ``diffusion_steps``
      (1000) as published.
    * ``quick`` (a 2-core CPU): ``n_posterior`` samples, MMPS ``sampling_steps`` steps,
      DPS ``sampling_steps`` steps: 1000-step DPS costs minutes per sample on the CPU.
      ``bench/bench_calibration.py`` checks these settings on truths drawn from the prior.
    * ``smoke``: a handful of steps; numbers mean nothing.
    """
    P = get_profile(profile)
    if P.name == "paper":
        return SamplerSettings(P.n_posterior, min(100, P.sampling_steps), P.cg_iters, P.diffusion_steps,
                               note="DPS as published (1000 steps); MMPS 100 steps",
                               mmps_covariance=P.mmps_covariance)
    if P.name == "quick":
        return SamplerSettings(P.n_posterior, P.sampling_steps, P.cg_iters, P.sampling_steps,
                               note=f"CPU budget: {P.n_posterior} samples, MMPS {P.sampling_steps} steps x "
                                    f"{'at most ' if P.cg_tol else ''}{P.cg_iters} CG ({P.mmps_covariance} covariance, "
                                    f"{P.time_spacing} time spacing{f', CG tolerance {P.cg_tol:g}' if P.cg_tol else ''}"
                                    f"{', steps from a draw of x0' + (' (the last too)' if P.last_draw else '') if P.x0_draw else ''}"
                                    f"{', CG warm-started from the previous step' if P.warm_start else ''}"
                                    f"{f', {P.last_newton} linearisations in the last step' if P.last_newton > 1 else ''}"
                                    f"{', the data fitted through the prior chain' + chr(39) + 's lookahead' if P.lookahead else ''}), "
                                    f"DPS {P.sampling_steps} "
                                    "steps (published 1000)",
                               mmps_covariance=P.mmps_covariance)
    return SamplerSettings(P.n_posterior, P.sampling_steps, P.cg_iters, P.sampling_steps,
                           note="smoke profile: numbers mean nothing", mmps_covariance=P.mmps_covariance)


def mock_set(profile: Profile | str, reference, n: int | None = None,
             redshifts: Sequence[float] = PAPER_LOW_Z, seed: int | None = None, dataset=None) -> list:
    """Mock observations of the first ``n`` held-out synthetic galaxies.

    Galaxy ``i`` is placed at ``redshifts[i % len(redshifts)]`` and observed through
    :func:`diffdecon.mock.make_mock` with ``reference`` (PSFs and noise sigma per band),
    noise drawn from a generator seeded with ``seed + i``.

    Parameters
    ----------
    profile : Profile or name.
    reference : mock.HSCReference
    n : int, optional
        Number of mocks (default ``profile.n_mock``).
    redshifts : sequence of float > 0
    seed : int, optional
        Default ``profile.seed``.
    dataset : GalaxyDataset, optional
        Default ``galaxies.build_dataset(profile, split="test")``.

    Returns
    -------
    list of :class:`diffdecon.mock.MockObservation`
    """
    from . import galaxies, mock

    P = get_profile(profile)
    n = P.n_mock if n is None else int(n)
    zs = [float(z) for z in redshifts]
    if n < 1:
        raise ValueError(f"n={n!r}; accepted: a positive number of mocks")
    if not zs or min(zs) <= 0:
        raise ValueError(f"redshifts={redshifts!r}; accepted: a non-empty sequence of z > 0")
    seed = P.seed if seed is None else int(seed)
    ds = galaxies.build_dataset(P, split="test") if dataset is None else dataset
    if len(ds.images) < n:
        raise ValueError(f"the test set holds {len(ds.images)} galaxies; n={n} requested")
    return [mock.make_mock(ds.images[i], zs[i % len(zs)], P, reference, torch.Generator().manual_seed(seed + i))
            for i in range(n)]


_np64 = to_numpy  # float64 numpy copy of an array or tensor


def score_estimate(truth, estimate, y, operator, sigma) -> dict[str, float]:
    """Score one model-grid estimate against the idealized truth and the observation.

    Parameters
    ----------
    truth, estimate : (C, H, W) [flux per model px]
    y : (C, n, n) observation [flux per obs px]
    operator : physics.ForwardModel (``A``)
    sigma : (C,) noise sigma [flux per obs px]

    Returns
    -------
    dict with ``psnr`` [dB] (linear flux, data range = truth max - min over all bands),
    ``ssim`` (per band, averaged; 7 px window, or the largest odd window that fits),
    ``flux_error`` (relative total-flux error, all bands) and ``chi2`` (reduced chi^2 of
    ``A(estimate)`` against ``y``, dof = number of observed pixels).
    """
    t, e = _np64(truth), _np64(estimate)
    with torch.no_grad():  # float64: the operator then uses its float64 masters (no float32 overflow)
        Ae = operator.A(torch.as_tensor(e, dtype=torch.float64)[None])[0]
    side = min(t.shape[-2:])
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    with np.errstate(over="ignore"):
        mse_finite = bool(np.isfinite(np.mean((t - e) ** 2)))
    # a diverged estimate overflows inside SSIM and chi^2: the inf / nan it gets is the message
    with np.errstate(over="ignore", invalid="ignore"):
        return _scores(t, e, Ae, y, sigma, win, mse_finite)


def _scores(t, e, Ae, y, sigma, win, mse_finite) -> dict[str, float]:
    return {
        # a diverged estimate whose squared error overflows float64 has PSNR -inf
        "psnr": metrics.psnr(t, e) if mse_finite else -math.inf,
        "ssim": metrics.ssim(t, e, win_size=win),
        "flux_error": float(metrics.flux_error(t, e)),
        "chi2": metrics.reduced_chi2(_np64(y), _np64(Ae), _np64(sigma)),
    }


def baseline_estimates(problem, rl_iters: int = 30, wiener_balance: float = 0.1) -> dict[str, torch.Tensor]:
    """Richardson-Lucy and Wiener deconvolutions of ``problem.y`` on the model grid.

    Both remove the PSF on the observation grid (:mod:`diffdecon.baselines`; ``num_iter``
    = ``rl_iters``, Wiener-Hunt ``balance`` = ``wiener_balance``, fixed, not tuned on the
    truth) and are rebinned onto the model grid with :func:`baselines.to_model_grid`
    (flux-conserving, piecewise constant: the baselines do not upsample).

    Returns
    -------
    {"richardson_lucy": (C, H, W), "wiener": (C, H, W)} [flux per model px], float64.
    """
    y = _np64(problem.y)
    op = problem.operator
    if not hasattr(op, "psf_weight"):
        raise ValueError(f"problem.operator is a {type(op).__name__}; accepted: a physics.ForwardModel")
    # the operator stores each band's PSF flipped as a conv2d weight (C, 1, k, k): flip back
    psfs = _np64(op.psf_weight[:, 0].flip(-2, -1))
    out = {}
    for name, img in (("richardson_lucy", baselines.richardson_lucy(y, psfs, num_iter=rl_iters)),
                      ("wiener", baselines.wiener(y, psfs, wiener_balance))):
        out[name] = baselines.to_model_grid(torch.as_tensor(img, dtype=torch.float64), op)
    return out


@dataclass
class MockValidation:
    """Everything :func:`run_validation` produced.

    Attributes
    ----------
    problems : list of problem.InverseProblem (one per mock; ``truth`` set).
    estimates : {method: Tensor (n_mock, C, H, W)} point estimates [flux per model px]
        (posterior mean for the samplers).
    scores : {method: {metric: ndarray (n_mock,)}} from :func:`score_estimate`.
    posteriors : {sampler: list of deconvolution.PosteriorResult}, ``None`` where the sampler
        diverged (DPS at every scale of :data:`DPS_ZETA_LADDER`; estimate and scores NaN).
    settings : SamplerSettings
    wall_time_s : {method: float} total time spent per method [s].
    dps_zeta : list of float
        The DPS guidance scale used on each mock (see :data:`DPS_ZETA_LADDER`).
    """

    problems: list
    estimates: dict[str, torch.Tensor]
    scores: dict[str, dict[str, np.ndarray]]
    posteriors: dict[str, list]
    settings: SamplerSettings
    wall_time_s: dict[str, float] = field(default_factory=dict)
    dps_zeta: list = field(default_factory=list)


def run_validation(mocks: Sequence, prior, settings: SamplerSettings | None = None,
                   methods: Sequence[str] = METHODS, seed: int = 0, prior_samples=None,
                   progress: bool = True) -> MockValidation:
    """Invert every mock with each method and score the estimates against the truth.

    Parameters
    ----------
    mocks : sequence of mock.MockObservation
    prior : diffusion prior (``diffdecon.prior`` contract) of the mocks' profile.
    settings : SamplerSettings, default :func:`sampler_settings` of the prior's profile.
    methods : subset of :data:`METHODS`.
    seed : int
        Posterior of mock ``i`` with method ``m`` seeded with ``seed + 1000 METHODS.index(m) + i``.
    prior_samples : Tensor (N, C, H, W), optional
        Unconditional prior samples for the variance ratio (default: the cached ones).

    Returns
    -------
    MockValidation
    """
    import time

    from . import reference_samples
    from .deconvolution import deconvolve
    from .problem import from_mock

    _check_run(mocks, methods)
    settings = sampler_settings(prior.profile) if settings is None else settings
    problems = [from_mock(mk, prior) for mk in mocks]
    if prior_samples is None and any(m in ("mmps", "dps") for m in methods):
        prior_samples = reference_samples.prior_samples(prior, progress=progress)
    est = {m: [] for m in methods}
    post = {m: [] for m in methods if m in ("mmps", "dps")}
    wall = {m: 0.0 for m in methods}
    dps_zeta = []
    for i, prob in enumerate(tqdm(problems, desc="mock validation", disable=not progress)):
        base = None
        for m in methods:
            t0 = time.perf_counter()
            generator = seed + 1000 * METHODS.index(m) + i
            if m == "mmps":
                r = deconvolve(prob, prior, "mmps", n=settings.n, steps=settings.mmps_steps, generator=generator,
                               prior_samples=prior_samples, progress=False, cg_iters=settings.cg_iters,
                               covariance=settings.mmps_covariance)
            elif m == "dps":
                r, zeta = _dps_down_the_ladder(prob, prior, settings, generator, prior_samples, dps_zeta,
                                               f"{prob.name} #{i}")
                dps_zeta.append(zeta)
            elif base is None:  # both baselines at once; their time is booked on the first
                base = baseline_estimates(prob)
            if m in post:
                post[m].append(r)
                est[m].append(r.mean.detach().double() if r is not None
                              else torch.full(prob.truth.shape, math.nan, dtype=torch.float64))
            else:
                est[m].append(base[m])
            wall[m] += time.perf_counter() - t0
    estimates = {m: torch.stack(v) for m, v in est.items()}
    return MockValidation(problems, estimates, _score_all(problems, estimates), post, settings, wall, dps_zeta)


def _check_run(mocks: Sequence, methods: Sequence[str]) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods={list(methods)!r}; accepted: a non-empty subset of {METHODS}")
    if not mocks:
        raise ValueError("mocks is empty; accepted: at least one mock observation")


def _dps_down_the_ladder(prob, prior, settings: SamplerSettings, generator: int, prior_samples,
                         used: list[float], label: str):
    """DPS on one problem, trying the scales of :data:`DPS_ZETA_LADDER` from the smallest one
    ``used`` on earlier mocks (or ``settings.dps_zeta``) down until one does not diverge.

    Returns ``(PosteriorResult, zeta)``, or ``(None, nan)`` when it diverged at every scale.
    """
    from .deconvolution import deconvolve

    ladder = [z for z in DPS_ZETA_LADDER if z <= min([settings.dps_zeta] + used)]
    for zeta in ladder or [settings.dps_zeta]:
        try:
            r = deconvolve(prob, prior, "dps", n=settings.n, steps=settings.dps_steps, generator=generator,
                           prior_samples=prior_samples, progress=False, convention="paper", zeta=zeta)
            return r, zeta
        except DivergenceError as err:
            print(f"[diffdecon] {label}: DPS with zeta={zeta} diverged ({err}); retrying with a smaller zeta")
    print(f"[diffdecon] {label}: DPS diverged for every zeta in {DPS_ZETA_LADDER}; "
          "recorded as diverged (NaN), left out of the means and of the calibration")
    return None, math.nan


def _score_all(problems: list, estimates: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """{method: {metric: ndarray (n_mock,)}}: :func:`score_estimate` of each mock's estimate,
    NaN for every metric where the estimate diverged (non-finite)."""
    scores = {}
    for m, E in estimates.items():
        rows = [score_estimate(p.truth, E[i], p.y, p.operator, p.sigma) if torch.isfinite(E[i]).all()
                else dict.fromkeys(("psnr", "ssim", "flux_error", "chi2"), math.nan)  # diverged: no estimate
                for i, p in enumerate(problems)]
        scores[m] = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return scores


def metrics_rows(val: MockValidation) -> list[list[str]]:
    """Table rows ``[method, PSNR, SSIM, flux error, chi^2]``, each ``mean $\\pm$ std`` over
    the mocks on which the method did not diverge (std with ddof = 1; 0 for a single mock);
    the method's label says on how many it diverged."""

    def f(v: float, fmt: str) -> str:  # diverged estimates give huge values: keep them short
        return fmt.format(v) if not np.isfinite(v) or abs(v) < 1e4 else f"{v:.2g}"

    def pm(a: np.ndarray, fmt: str, ok: np.ndarray) -> str:
        a = a[ok]
        if a.size == 0:
            return "diverged"
        with np.errstate(all="ignore"):
            m, s = float(np.mean(a)), float(np.std(a, ddof=1)) if a.size > 1 else 0.0
        return f"{f(m, fmt)} $\\pm$ {f(s, fmt)}"

    rows = []
    for m, sc in val.scores.items():
        ok = ~diverged_mocks(val, m)
        label = LABELS[m] + ("" if ok.all() else f" ({int((~ok).sum())} of {ok.size} diverged)")
        rows.append([label, pm(sc["psnr"], "{:.2f}", ok), pm(sc["ssim"], "{:.3f}", ok),
                     pm(100 * sc["flux_error"], "{:.1f}", ok) + r"\,\%", pm(sc["chi2"], "{:.2f}", ok)])
    return rows


def diverged_mocks(val: MockValidation, method: str) -> np.ndarray:
    """Boolean ``(n_mock,)``: the mocks on which ``method`` diverged (no usable estimate)."""
    if method in val.posteriors:
        return np.array([r is None for r in val.posteriors[method]])
    return ~np.isfinite(val.estimates[method].flatten(1).numpy()).all(1)
