"""The three profiles of the project: ``smoke``, ``quick`` and ``paper``.

One code path, three sizes. Every notebook takes a ``profile`` parameter and every
library function that depends on the size of the problem takes a :class:`Profile`.

* ``paper``: the published configuration (256 px at 0.4 kpc/px, g r i; the UNet of
  improved DDPM with 354 M parameters; 1000 diffusion steps; 256 posterior samples).
  It needs a GPU.
* ``quick``: the default of ``make paper``; meaningful results on a 2-core CPU.
  64 px at 0.6 kpc/px, i.e. a 38.4 kpc field of view.

  The trade-off, written down: a 2-core CPU trains a UNet of a few million parameters
  at a few images per second, so the model cannot have 256 px. With 64 px we must choose
  between resolution and field of view. At the paper's low-redshift targets
  (z = 0.166 to 0.217, Planck15: 2.9 to 3.5 kpc/arcsec) a 0.6 kpc pixel is 0.17 to
  0.21 arcsec, about one HSC pixel (0.168 arcsec) and a third of the HSC PSF FWHM
  (0.6 to 0.8 arcsec): finer than the PSF, so deconvolution has something to recover.
  The 38.4 kpc field is 11 to 13 arcsec there (66 to 79 HSC pixels), which holds
  the targets' disks (half-light radii of a few kpc) out to about 3 half-light radii,
  but not their faintest outskirts. At z = 0.8463 the field is 30 HSC pixels, an
  upsampling factor of 2.2: the regime where the paper reports hallucinations.
* ``smoke``: 32 px at 1.2 kpc/px (same field), a tiny network and a handful of steps and
  samples, so that CI executes every notebook in seconds. Its numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputValueError

BANDS: tuple[str, ...] = ("g", "r", "i")
"""Photometric bands of the model images and of the HSC observations, in this order."""

HSC_PIXEL_SCALE: float = 0.168
"""HSC pixel scale [arcsec/px] (the paper rounds it to 0.17)."""


PREDICTIONS: tuple[str, ...] = ("epsilon", "v")
"""Accepted values of :attr:`Profile.prediction`."""

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
"""Accepted values of :attr:`Profile.lr_schedule`."""

TIME_SPACINGS: tuple[str, ...] = ("linear", "quadratic")
"""Accepted values of :attr:`Profile.time_spacing` and of ``spacing`` in :func:`diffdecon.samplers.timesteps`."""

MMPS_COVARIANCES: tuple[str, ...] = ("empirical", "annuli", "isotropic", "tweedie")
"""Accepted values of :attr:`Profile.mmps_covariance` and of ``covariance`` in :func:`diffdecon.mmps.mmps`."""


@dataclass(frozen=True)
class Profile:
    """Sizes of everything for one profile.

    Attributes
    ----------
    name : str
        ``smoke``, ``quick`` or ``paper``.
    image_size : int
        Side of the model (idealized) image [px].
    pixel_scale_kpc : float
        Physical pixel scale of the model image [kpc/px] (paper: 0.4).
    bands : tuple of str
        Photometric bands, ``("g", "r", "i")``.
    asinh_a : float
        Softening of the asinh stretch of the prior's normalisation [normalised flux]
        (paper: 0.01).
    flux_norm : float
        Each idealized image is scaled so that its flux summed over all pixels and
        bands equals ``flux_norm`` [normalised flux] before the stretch. The value
        ``36 / pixel_scale_kpc**2`` puts the peak of a typical disk near 1, as the
        paper's min-max normalisation did, while keeping the flux scale known: the
        forward model multiplies by the observed total flux / ``flux_norm``.
    block_out_channels, layers_per_block, attention_resolutions :
        UNet size (diffusers ``UNet2DModel``); attention at these feature-map sides [px].
    diffusion_steps : int
        Number of steps T of the (cosine) noise schedule.
    prediction : str
        What the network predicts: ``"epsilon"`` (the noise, as published) or ``"v"``
        (``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``, Salimans & Ho 2022). The two
        define the same denoiser, but with epsilon Tweedie's ``x0_hat`` divides the
        network's error by ``sqrt(abar_t)``, 4.9e-5 at ``t = T - 1`` under the cosine
        schedule: the first sampling steps then see noise amplified 2e4 times, which the
        x0 clip turns into a bright, uniform background on images whose sky is exactly
        ``x = -1`` (measured on the quick model: sample corners at ``x`` from -0.4 to
        +2.6 instead of -1). ``v`` gives ``x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``,
        well conditioned at every ``t``. ``smoke`` and ``quick`` use ``v``; ``paper`` keeps
        the published epsilon.
    dataset_size : int
        Number of synthetic idealized galaxies in the training set.
    train_steps, batch_size, lr, ema_decay, max_shift_px :
        Training length [optimizer steps], batch, AdamW learning rate, EMA decay and the
        maximum random shift [px] (paper: 10 px at 256 px).
    shift_start_fraction : float
        Fraction of the run after which the random shifts are on (paper: 300k of 525k
        steps, added against mode collapse).
    lr_schedule, lr_warmup_steps :
        ``"constant"`` (as published) or ``"cosine"`` (``lr * (1 + cos(pi k / train_steps)) / 2``
        at step ``k``), after a linear warm-up of ``lr_warmup_steps`` steps.
    checkpoint_every : int
        Steps between checkpoints.
    sampling_steps : int
        Steps of the posterior samplers (DPS as published uses ``diffusion_steps``).
    cg_iters : int
        Conjugate-gradient iterations per MMPS step (each a product by ``A`` and by ``A^T``;
        the network is not involved with the diagonal covariances); with ``cg_tol`` the most.
    cg_tol : float or None
        CG stops once its preconditioned residual has fallen by this factor (``cg_tol`` of
        :func:`diffdecon.mmps.mmps`); None runs all ``cg_iters``.
    x0_draw : bool
        MMPS steps start from a draw of the Gaussian ``p(x_0 | x_t, y)`` rather than from its
        mean (``x0_draw`` of :func:`diffdecon.mmps.mmps`): the transition
        ``int q(x_s | x_t, x_0) p(x_0 | x_t, y) dx_0`` itself, which the mean under-disperses
        on a coarse time grid. On by default (every profile), with ``last_draw``.
    last_draw : bool
        With ``x0_draw``, the last step (t = 0) returns a draw of ``p(x_0 | x_t, y)`` too, not its
        mean (``last_draw`` of :func:`diffdecon.mmps.mmps`; the prior's reference chain follows).
        The two together are the sampler that is calibrated where the prior is exact: on a
        Gaussian prior whose data outweigh it (variance ratio 0.98-0.99 against 0.39-0.59 for steps
        from the mean, ``tests/test_mmps.py``), and the nearest to it on a Gaussian mixture about
        training galaxies (TARP 0.30 over 150 exact draws against a null of 0.22, with
        ``last_newton``; steps from the mean 0.72 against 0.28 on 60;
        ``results/calibration_mixture_*.json``, README).
    last_newton : int
        Gauss-Newton linearisations of the forward model in the last MMPS step (``last_newton``
        of :func:`diffdecon.mmps.mmps`; the other steps keep MMPS's one). Two: the draw at t = 0
        then fits the data through the stretched forward model, not only through its
        linearisation at the denoiser's ``D``, whose curvature otherwise puts the samples' total
        flux 0.4-0.9 units of the data's summed-flux noise above the truth's where the prior is
        exact (i = 18, 30 draws of the mixture prior: flux ranks [13, 6, 6, 5, 0] with one,
        [6, 6, 4, 8, 6] with two; on 50: mean offset 0.65 / 0.66 / 0.73 -> 0.17 / 0.09 / 0.06
        per band g / r / i), at one more CG solve per sample. Fainter galaxies barely move (the
        curvature's flux scales with the galaxy's).
    warm_start : bool
        Each MMPS step's CG solve starts from the previous step's ``x0_post`` instead of from
        ``D`` (``warm_start`` of :func:`diffdecon.mmps.mmps`): the same linear system, solved
        further in the same iterations.
    lookahead : bool
        Each MMPS step fits the data through ``x0 + b_t(D)``, the mean change the prior's own
        chain still makes to ``x0`` after that step, tabulated on the chain's draws
        (``lookahead="chain"`` of :func:`diffdecon.mmps.mmps`, :mod:`diffdecon.lookahead`): the
        data observe the chain's final image, which for the trained network holds less faint
        light than every earlier step's ``D``. Zero for an exact prior. On by default (every
        profile): on 100 of the quick network's chain draws per magnitude it brings the samples'
        total flux from 0.3-1.3 units of the data's summed-flux noise below the truth's to within
        the noise (flux ranks uniform, p 0.09-0.35 against 1e-15 to 1e-48) and TARP from
        0.35 / 0.29 / 0.31 to 0.24 / 0.16 / 0.15 at i = 18 / 20 / 22 against a 95 % null of 0.24
        (``results/calibration.json``, ``results/calibration_without_lookahead.json``), at no
        measurable cost (one table lookup per step).
    time_spacing : str
        Spacing of the sampling times, one of :data:`TIME_SPACINGS`
        (:func:`diffdecon.samplers.timesteps`); ``"quadratic"`` puts the steps at low noise.
    mmps_covariance : str
        ``covariance`` of :func:`diffdecon.mmps.mmps`, one of :data:`MMPS_COVARIANCES`
        (``"empirical"``: the denoiser's measured error per band and pixel value plus a
        per-band offset term; ``"annuli"``: the same diagonal with the errors' covariance
        within and between annuli about the centre, :mod:`diffdecon.denoiser_variance`).
    n_posterior, n_prior : int
        Posterior samples per target (paper: 256) and unconditional prior samples for
        the variance ratio (paper: 1024).
    aperture_radius_px : float
        Radius of the variance-ratio aperture [model px]: 30 px at 256 px, scaled.
    n_mock : int
        Number of mock observations in the validation and calibration sets.
    seed : int
        Master seed.
    """

    name: str
    image_size: int
    pixel_scale_kpc: float
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]
    dataset_size: int
    train_steps: int
    batch_size: int
    checkpoint_every: int
    sampling_steps: int
    n_posterior: int
    n_prior: int
    n_mock: int
    diffusion_steps: int = 1000
    prediction: str = "epsilon"
    cg_iters: int = 20
    cg_tol: float | None = None
    x0_draw: bool = True
    last_draw: bool = True
    last_newton: int = 2
    warm_start: bool = False
    lookahead: bool = True
    time_spacing: str = "quadratic"
    mmps_covariance: str = "empirical"
    bands: tuple[str, ...] = BANDS
    asinh_a: float = 0.01
    lr: float = 1e-4
    ema_decay: float = 0.9999
    max_shift_px: int = 0
    shift_start_fraction: float = 300 / 525
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise InputValueError("prediction", self.prediction, ", ".join(PREDICTIONS))
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputValueError("lr_schedule", self.lr_schedule, ", ".join(LR_SCHEDULES))
        if self.cg_tol is not None and not 0.0 < self.cg_tol < 1.0:
            raise InputValueError("cg_tol", self.cg_tol, "None or a float in (0, 1)")
        if not 0 <= self.shift_start_fraction <= 1:
            raise InputValueError("shift_start_fraction", self.shift_start_fraction, "a fraction of the run in [0, 1]")
        if not isinstance(self.last_newton, int) or self.last_newton < 1:
            raise InputValueError("last_newton", self.last_newton, "a positive int (1: MMPS's one linearisation)")
        if self.time_spacing not in TIME_SPACINGS:
            raise InputValueError("time_spacing", self.time_spacing, ", ".join(TIME_SPACINGS))
        if self.mmps_covariance not in MMPS_COVARIANCES:
            raise InputValueError("mmps_covariance", self.mmps_covariance, ", ".join(MMPS_COVARIANCES))

    @property
    def field_of_view_kpc(self) -> float:
        """Side of the model image [kpc]."""
        return self.image_size * self.pixel_scale_kpc

    @property
    def flux_norm(self) -> float:
        """Total normalised flux of one idealized image (see class docstring)."""
        return 36.0 / self.pixel_scale_kpc**2

    @property
    def aperture_radius_px(self) -> float:
        """Variance-ratio aperture radius [model px]: 30 px at 256 px, scaled with size."""
        return 30.0 * self.image_size / 256.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (stored in manifests and checkpoints)."""
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["bands"] = list(self.bands)
        return d


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", image_size=32, pixel_scale_kpc=1.2, prediction="v",
        # network
        block_out_channels=(16, 32), layers_per_block=1, attention_resolutions=(),
        # training set and run
        dataset_size=256, train_steps=40, batch_size=16, checkpoint_every=20, max_shift_px=1,
        # posterior sampling and validation
        sampling_steps=10, cg_iters=1, n_posterior=4, n_prior=8, n_mock=2,
    ),
    "quick": Profile(
        name="quick", image_size=64, pixel_scale_kpc=0.6, prediction="v",
        # network: 3.8 M parameters
        block_out_channels=(32, 64, 96, 128), layers_per_block=1, attention_resolutions=(16, 8),
        # Trained on a GPU, where a step is overhead-bound and a batch of 256 costs what 64 does
        # (results/bench_training_gpu.json); on 2 CPU cores the run takes about 18 hours and
        # `make train PROFILE=quick` resumes it across sessions. 4200 = 8 * 525, so the paper's
        # FID checkpoints (300k..525k of 525k steps) fall on whole steps (2400 ... 4200). A run
        # this short needs a larger learning rate than the published 1e-4: 3e-4, with the EMA
        # warm-up of training.py, a 100-step warm-up and a cosine decay. The random shift is on
        # from the start: switched on late in a run this short, it moves the samples away from
        # the training set just before the FID checkpoints.
        dataset_size=12000, train_steps=4200, batch_size=256, checkpoint_every=500, max_shift_px=3,
        lr=3e-4, lr_schedule="cosine", lr_warmup_steps=100, shift_start_fraction=0.0,
        # Posterior sampling dominates the notebooks' CPU time: an MMPS step costs one network
        # evaluation plus cg_iters products by A and A^T (for 16 samples, with the FFT
        # convolutions on the input's length: ~4 ms per CG iteration against ~0.3 s per network
        # evaluation, 2-core CPU of 2026-12-03; 2400 iterations and 20 evaluations per run). The CG solve of a bright galaxy (i ~ 18) is
        # the slowest to converge: from D, 60 iterations leave the solution 30-100 % (in norm)
        # away from its 240-iteration value, and the samples then carry 24 % too much pixel-scale
        # structure in the core, which TARP sees (0.50 against a null of 0.33 on 33 prior draws).
        # Starting each step's CG from the previous step's x0_post (warm_start) and 120
        # iterations remove that excess (TARP 0.28) at 1.5 times the sampling cost of 60 cold
        # iterations; 240 cold iterations do the same at 3.2 times (bench/bench_calibration.py, README).
        sampling_steps=20, cg_iters=120, warm_start=True, n_posterior=16, n_prior=64, n_mock=8,
    ),
    "paper": Profile(
        name="paper", image_size=256, pixel_scale_kpc=0.4,  # prediction: the published epsilon (default)
        block_out_channels=(192, 192, 384, 384, 768, 768), layers_per_block=3, attention_resolutions=(16, 8),
        dataset_size=17852, train_steps=525_000, batch_size=64, checkpoint_every=5000, max_shift_px=10,
        sampling_steps=1000, n_posterior=256, n_prior=1024, n_mock=64,  # cg_iters: the default
    ),
}


def get_profile(name: str | Profile) -> Profile:
    """Return the profile called ``name`` (a :class:`Profile` is returned unchanged).

    Raises
    ------
    ValueError
        If ``name`` is not one of ``smoke``, ``quick``, ``paper``.
    """
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; accepted values: {', '.join(PROFILES)}"
        ) from None


PROFILE_ENV = "DIFFDECON_PROFILE"
"""Environment variable that overrides a notebook's ``profile`` parameter.

``pytest --nbval`` executes the committed notebooks as they are (it cannot inject
papermill parameters), so the test suite sets ``DIFFDECON_PROFILE=smoke``."""


def notebook_profile(profile: str) -> Profile:
    """The profile a notebook runs under: ``$DIFFDECON_PROFILE`` if set, else ``profile``.

    Prints which one was chosen and why, so an executed notebook records it.
    """
    import os

    override = os.environ.get(PROFILE_ENV)
    chosen = get_profile(override or profile)
    source = f"${PROFILE_ENV}" if override else "notebook parameter"
    print(f"profile: {chosen.name} (from {source})")
    return chosen
