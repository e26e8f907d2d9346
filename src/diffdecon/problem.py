"""The inverse problem of one observation: window, noise, forward model and flux scale.

:func:`prepare_observation` crops a three-band image to a square *window* around the
galaxy, measures (or takes) the per-band noise and background, builds the forward model
``A`` at the galaxy's redshift and pixel scale, and fixes the flux scale ``s`` that ties
prior space to observation flux. The result is an :class:`InverseProblem`;
:func:`prepare_target` does it for a real HSC target and :func:`from_mock` for a
:class:`diffdecon.mock.MockObservation`.

**Window.** Its side is ``n = ceil(m(z, p)) + 2 margin`` (:func:`cosmology.window_side`) and
it starts at the pixel that puts its centre nearest to the galaxy; the sub-pixel remainder
(at most half a pixel per axis) becomes the forward model's ``center_offset``, so the model
field is centred exactly on the galaxy.

**Flux scale.** ``s = sum_{bands, window}(y) / profile.flux_norm`` [flux units]. The PSF
convolution (unit-sum kernels) and the area-weighted resampling f_{z,p} both preserve total
flux, so a model image ``s * unstretch(x)`` whose normalised flux sums to ``flux_norm``
predicts the observed total flux. Caveats: flux of the galaxy outside the window is missed,
flux of neighbours inside it is included, and the sum carries noise ``sigma sqrt(n^2)`` per
band; the prior's normalisation adapts only through the sample's own total, which is free
to differ from ``flux_norm``.

Units: observations ``y`` and noise ``sigma`` in HSC coadd flux per HSC pixel
(:mod:`diffdecon.units`); model images in the same flux units per model pixel; prior space
``x`` dimensionless (``docs/design.md``, "Prior space").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from . import data, paths, physics
from .background import background_level, estimate_noise_sigma
from .config import BANDS, HSC_PIXEL_SCALE, Profile, get_profile
from .cosmology import WINDOW_MARGIN, window_side
from .prior import X0_RANGE, unstretch, unstretch_derivative, x0_trust_region

__all__ = ["InverseProblem", "prepare_observation", "prepare_target", "from_mock", "present_targets"]


@dataclass
class InverseProblem:
    """Everything needed to sample the posterior of one observation.

    Attributes
    ----------
    y : Tensor (C, n, n)
        Background-subtracted observation [HSC coadd flux per obs px].
    sigma : Tensor (C,)
        Per-band noise standard deviation [HSC coadd flux per obs px].
    operator : physics.ForwardModel
        ``A``: model flux (B, C, H, W) [flux per model px] -> (B, C, n, n) [flux per obs px].
    scale : float
        Flux scale ``s`` [flux units]: the model image in linear flux is ``s * unstretch(x)``.
    profile : Profile
    z : float
        Redshift.
    name : str
        Target name (or a description of the mock).
    window : (row0, col0, n) or None
        Position of ``y[:, 0, 0]`` in the full cutout and the window side [obs px]; None for mocks.
    wcs : astropy WCS or None
        WCS of the window (None for mocks and for images without a WCS).
    source : str
        Where the observation, PSF and noise come from (say it on every figure).
    background : ndarray (C,)
        Background level subtracted from each band [flux per obs px] (0 for mocks).
    center_xy : (float, float)
        Galaxy position in window pixel coordinates (x = column, 0-based, pixel centres at
        integers) = the centre of the model field.
    ra, dec : float or None
        Galaxy position [deg].
    truth : Tensor (C, H, W) or None
        The idealized image of a mock [flux per model px].
    """

    y: torch.Tensor
    sigma: torch.Tensor
    operator: physics.ForwardModel
    scale: float
    profile: Profile
    z: float
    name: str
    window: tuple[int, int, int] | None = None
    wcs: Any = None
    source: str = ""
    background: np.ndarray = field(default_factory=lambda: np.zeros(len(BANDS)))
    center_xy: tuple[float, float] = (0.0, 0.0)
    ra: float | None = None
    dec: float | None = None
    truth: torch.Tensor | None = None

    @property
    def pixel_scale_arcsec(self) -> float:
        """Observation pixel scale [arcsec/px]."""
        return self.operator.pixel_scale_arcsec

    @property
    def m(self) -> float:
        """Observed size of the model field m(z, p) [obs px]."""
        return self.operator.m

    @property
    def upsampling_factor(self) -> float:
        """``image_size / m`` (> 1: model pixels finer than observation pixels)."""
        return self.operator.upsampling_factor

    def to_flux(self, x: torch.Tensor) -> torch.Tensor:
        """Prior space ``x`` -> model flux ``s * unstretch(x)`` [flux per model px]."""
        return self.scale * unstretch(x, self.profile.asinh_a)

    def mmps_defaults(self, covariance: str | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`diffdecon.mmps.mmps` that the profile sets: its CG
        iterations, time spacing and covariance (or ``covariance``), the x0 sanity range, and
        for the diagonal covariances its CG tolerance, ``x0_draw`` (with ``last_draw`` when the
        profile sets both), ``warm_start``, ``last_newton`` and ``lookahead="chain"`` when the
        profile sets it, the Jacobi
        preconditioner of the CG solve (:meth:`normal_diagonal`), the trust region of the
        linearised step (:attr:`max_step`) and the closed-form linearisation (:meth:`linearised`)."""
        P = self.profile
        covariance = P.mmps_covariance if covariance is None else covariance
        kw: dict[str, Any] = {"cg_iters": P.cg_iters, "spacing": P.time_spacing, "covariance": covariance,
                              "x0_clip": X0_RANGE}
        if covariance != "tweedie":
            kw.update(precond=self.normal_diagonal, max_step=self.max_step, linearise=self.linearised,
                      cg_tol=P.cg_tol, x0_draw=P.x0_draw, warm_start=P.warm_start, last_newton=P.last_newton)
            if P.lookahead:
                kw["lookahead"] = "chain"
        if P.x0_draw and P.last_draw:
            kw["last_draw"] = True
        return kw

    def mmps_kwargs(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`diffdecon.mmps.mmps` for this problem: the profile's
        defaults (:meth:`mmps_defaults`, for the covariance that ``settings`` names) under
        ``settings`` (steps, CG iterations, covariance, ...), whose values win."""
        settings = dict(settings or {})
        return {**self.mmps_defaults(settings.get("covariance")), **settings}

    def linearised(self, x: torch.Tensor):
        """``forward`` linearised at prior-space ``x`` (B, C, H, W) in closed form:
        ``(A(s unstretch(x)), u -> A (d u), v -> d A^T v)`` with ``d = s unstretch'(x)``
        [flux per prior-space unit], the ``linearise`` of :func:`diffdecon.mmps.mmps`
        (the products autograd would give, without its graph: tested against it)."""
        x = x.detach()
        d = self.flux_derivative(x)
        op = self.operator
        return self.forward(x).detach(), (lambda u: op.A(d * u)), (lambda v: d * op.A_adjoint(v))

    @property
    def max_step(self) -> float:
        """Trust region of one linearised MMPS update [prior-space units]: two e-foldings of a
        bright pixel's flux (:func:`diffdecon.prior.stretch_efold`). Without it a pixel that
        the denoiser puts in the sky while the data make it bright can be pushed to the clip,
        with a flux hundreds of times the galaxy's."""
        return x0_trust_region(self.profile.asinh_a)

    def sample_chi2(self, flux: torch.Tensor) -> np.ndarray:
        """Reduced chi^2 of every model image ``A(flux)`` against ``y``, all bands together
        (dof = observed pixels), for ``flux`` (n, C, H, W) [flux per model px]; (n,), float64."""
        with torch.no_grad():
            r = (self.y.double() - self.operator.A(flux.double())) / self.sigma.double().view(1, -1, 1, 1)
        return r.pow(2).flatten(1).mean(1).cpu().numpy()

    def normal_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """``diag(A_x^T Sigma_y^-1 A_x)`` of the forward model linearised at prior-space ``x``
        (B, C, H, W) [1 / prior-space units^2]: the Jacobi preconditioner of
        :func:`diffdecon.mmps.mmps` (``precond``). ``A_x = A diag(s unstretch'(x))``, so the
        diagonal is ``(s unstretch'(x))^2 diag(A^T A) / sigma_y^2`` per band."""
        norms = getattr(self, "_column_norms", None)
        if norms is None:
            norms = self.operator.column_norms_sq() / self.sigma.detach().double().cpu().view(-1, 1, 1) ** 2
            self._column_norms = norms
        return self.flux_derivative(x) ** 2 * norms.to(device=x.device, dtype=x.dtype)

    def flux_derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``d = s unstretch'(x)`` at prior-space ``x``, the diagonal Jacobian of :meth:`to_flux`
        [flux per model px per prior-space unit], detached."""
        return self.scale * unstretch_derivative(x.detach(), self.profile.asinh_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prior space ``x`` (B, C, H, W) -> observation flux ``A(s * unstretch(x))``
        (B, C, n, n) [flux per obs px]; differentiable (the samplers' ``forward``)."""
        return self.operator.A(self.to_flux(x))


def _place_window(n: int, shape: tuple[int, int], x: float, y: float, name: str) -> tuple[int, int, int]:
    """``(row0, col0, n)`` of the window of side ``n`` whose centre is nearest to (x, y) [px]."""
    return _window_start(y, n, shape[0], "y", name), _window_start(x, n, shape[1], "x", name), n


def _window_start(center: float, n: int, length: int, axis: str, name: str) -> int:
    """First pixel of a window of side ``n`` centred (to the nearest pixel) on ``center``."""
    start = int(round(center - (n - 1) / 2))
    if start < 0 or start + n > length:
        raise ValueError(
            f"{name}: a window of {n} px around the galaxy ({axis} = {center:.1f}) does not fit in "
            f"the image ({length} px along {axis}); accepted: a galaxy at least {n / 2:.0f} px from "
            "the edge, a larger cutout, or a smaller profile / higher redshift"
        )
    return start


def prepare_observation(images: np.ndarray | Sequence[np.ndarray], psfs: np.ndarray | Sequence[np.ndarray], z: float,
                        profile: Profile | str, center_xy: tuple[float, float],
                        pixel_scale_arcsec: float = HSC_PIXEL_SCALE, *, wcs: Any = None, name: str = "observation",
                        source: str = "", margin: int = WINDOW_MARGIN, ra: float | None = None,
                        dec: float | None = None, dtype: torch.dtype = torch.float32,
                        sigma: Sequence[float] | None = None) -> InverseProblem:
    """Build the :class:`InverseProblem` of a three-band image (the work of :func:`prepare_target`).

    Parameters
    ----------
    images : ndarray (C, N, M) or C arrays (N, M)
        Full cutout, bands g, r, i [flux per obs px]. Used whole for the noise and
        background estimates, cropped for the likelihood.
    psfs : ndarray (C, k, k) or C arrays (k, k)
        PSFs on the observation grid (normalised here).
    z : float, redshift (> 0); profile : Profile or str.
    center_xy : (x, y)
        Galaxy position in ``images`` [px, 0-based, x = column, pixel centres at integers].
    pixel_scale_arcsec : float, observation pixel scale [arcsec/px].
    wcs : astropy WCS of ``images``, optional; sliced to the window.
    margin : int, pixels added on each side of the model field [obs px] (:data:`cosmology.WINDOW_MARGIN`).
    sigma : (C,) floats, optional
        Per-band noise [flux per obs px] when it is already known (a loaded target's
        ``noise_sigma``); default :func:`background.estimate_noise_sigma` of the full
        cutout (3-sigma clipping, sources masked).

    The window and the flux scale are described in the module docstring; per band, the
    background (:func:`background.background_level`) is subtracted from ``y``.

    Raises ``ValueError`` for shapes that disagree, non-finite pixels, a z that is not > 0
    or gives m(z, p) < physics.MIN_OBSERVED_SIZE, a window that does not fit, or a window
    whose background-subtracted total flux is not positive.
    """
    P = get_profile(profile)
    images, psfs = _checked_bands(images, psfs, P, name)
    m = physics.observed_size(z, P.image_size, P.pixel_scale_kpc, pixel_scale_arcsec)
    x, yc = (float(v) for v in center_xy)
    row0, col0, n = _place_window(window_side(m, margin), images.shape[1:], x, yc, name)
    # Offset of the galaxy from the window's geometric centre, (n - 1) / 2 [obs px].
    dy, dx = yc - (row0 + (n - 1) / 2), x - (col0 + (n - 1) / 2)
    sigma = _noise_sigma(images, sigma, name)
    y, background, total = _window_flux(images, row0, col0, n, name)
    op = physics.ForwardModel(z, psfs, n, P.image_size, P.pixel_scale_kpc, pixel_scale_arcsec,
                              center_offset=(dy, dx), dtype=dtype)
    win_wcs = None if wcs is None else wcs.slice((slice(row0, row0 + n), slice(col0, col0 + n)))
    return InverseProblem(
        y=torch.as_tensor(y, dtype=dtype), sigma=torch.as_tensor(sigma, dtype=dtype), operator=op,
        scale=total / P.flux_norm,  # s = observed total flux / flux_norm
        profile=P, z=float(z), name=name, window=(row0, col0, n), wcs=win_wcs, source=source or name,
        background=background, center_xy=(x - col0, yc - row0), ra=ra, dec=dec,
    )


def _noise_sigma(images: np.ndarray, sigma, name: str) -> np.ndarray:
    """Per-band noise sigma (C,) [flux per obs px]: ``sigma`` as given, or estimated from the
    full cutout ``images`` (C, N, M) with sources masked; checked to be one value > 0 per band."""
    if sigma is None:
        sigma = [estimate_noise_sigma(im, mask_sources=True) for im in images]
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (images.shape[0],) or not np.all(sigma > 0):
        raise ValueError(f"{name}: sigma={sigma!r}; accepted: one noise sigma > 0 per band [flux per obs px]")
    return sigma


def _window_flux(images: np.ndarray, row0: int, col0: int, n: int, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``(y, background, total)``: the ``n x n`` window at ``(row0, col0)`` of ``images``
    (C, N, M) minus each band's background level (C,) [flux per obs px], and the window's
    total flux, which must be positive (a galaxy is there)."""
    background = np.array([background_level(im) for im in images])
    y = images[:, row0 : row0 + n, col0 : col0 + n] - background[:, None, None]
    total = float(y.sum())
    if not total > 0:
        raise ValueError(
            f"{name}: the background-subtracted flux in the {n} x {n} px window is {total:.4g}; "
            "accepted: a positive total (is there a galaxy at the given position?)"
        )
    return y, background, total

def _checked_bands(images, psfs, P: Profile, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (C, N, M), psfs (C, k, k))`` float64, checked: one image and one PSF per band
    of ``P``, one pixel grid and one PSF size for all bands, finite pixels, valid PSFs."""
    bands = P.bands
    if len(images) != len(bands) or len(psfs) != len(bands):
        raise ValueError(f"{name}: {len(images)} image(s) and {len(psfs)} PSF(s); accepted: one of each per "
                         f"band {bands}")
    ims = [np.asarray(im, dtype=np.float64) for im in images]
    shapes = {b: im.shape for b, im in zip(bands, ims)}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"{name}: images differ in shape: {', '.join(f'{b} {s}' for b, s in shapes.items())}; "
                         "accepted: 2-D images on the same pixel grid in every band")
    for b, im in zip(bands, ims):
        bad = int((~np.isfinite(im)).sum())
        if bad == im.size:
            raise ValueError(f"{name}: the image of band {b} holds no finite pixel (all {im.size} are non-finite, NaN/inf)")
        if bad:
            raise ValueError(f"{name}: the image of band {b} has {bad} non-finite pixel(s) (NaN/inf) out of "
                             f"{im.size}; accepted: finite values (masked pixels are not supported)")
    kernels = [physics.validate_psf(p, name=f"{name} PSF ({b})") for b, p in zip(bands, psfs)]
    psf_shapes = {b: p.shape for b, p in zip(bands, kernels)}
    if any(len(s) != 2 for s in psf_shapes.values()) or len(set(psf_shapes.values())) != 1:
        raise ValueError(f"{name}: PSFs differ in shape: {', '.join(f'{b} {s}' for b, s in psf_shapes.items())}; "
                         "accepted: the same (k, k) size in every band")
    return np.stack(ims), np.stack(kernels)


def prepare_target(target: data.HSCTarget, profile: Profile | str, *, margin: int = WINDOW_MARGIN,
                   dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The :class:`InverseProblem` of a real HSC target (see :func:`prepare_observation`).

    The galaxy position is the catalogue RA/Dec through the cutout's WCS
    (:func:`data.catalog_position_pixel`), the redshift the catalogue's spectroscopic
    redshift, the pixel scale [arcsec/px] the one measured from the WCS, the noise the one
    measured when the target was loaded (:attr:`data.HSCTarget.noise_sigma`).
    """
    return prepare_observation(
        target.images, target.psfs, target.z, profile, data.catalog_position_pixel(target),
        target.pixel_scale_arcsec, wcs=target.wcs, name=target.name,
        source=f"HSC PDR3 {target.name} (object {target.object_id})", margin=margin,
        ra=target.ra, dec=target.dec, dtype=dtype, sigma=target.noise_sigma,
    )


def from_mock(mock, prior_or_profile, dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The :class:`InverseProblem` of a :class:`diffdecon.mock.MockObservation`.

    The flux scale is estimated from the observation exactly as for a real target
    (``s = sum(y) / flux_norm``), not taken from the truth; no background is subtracted
    (mocks have none). ``prior_or_profile``: a prior (its ``.profile`` is used) or a profile.
    """
    P = get_profile(getattr(prior_or_profile, "profile", prior_or_profile))
    y = mock.y.detach().to(dtype)
    total = float(y.sum())
    if not total > 0:
        raise ValueError(f"mock observation has total flux {total:.4g}; accepted: > 0")
    op = mock.operator
    if op.image_size != P.image_size or abs(op.pixel_scale_kpc - P.pixel_scale_kpc) > 1e-12:
        raise ValueError(
            f"mock operator has image_size {op.image_size}, {op.pixel_scale_kpc} kpc/px; profile "
            f"{P.name!r} needs {P.image_size}, {P.pixel_scale_kpc} kpc/px"
        )
    if op.R_y.dtype != dtype:
        op = physics.ForwardModel(op.z, np.stack([m for m in mock.reference.psfs]), op.obs_size, op.image_size,
                                  op.pixel_scale_kpc, op.pixel_scale_arcsec, center_offset=op.center_offset,
                                  dtype=dtype)
    n = op.obs_size
    return InverseProblem(
        y=y, sigma=mock.sigma.detach().to(dtype), operator=op, scale=total / P.flux_norm, profile=P,
        z=float(mock.z), name=f"mock z={mock.z:g}", window=None, wcs=None,
        source=f"mock ({mock.reference.source})", background=np.zeros(y.shape[0]),
        center_xy=((n - 1) / 2 + op.center_offset[1], (n - 1) / 2 + op.center_offset[0]),
        truth=mock.truth.detach(),
    )


def present_targets(root=None) -> list[str]:
    """Targets present under ``root`` (default ``paths.hsc_dir()``); prints the ones listed
    in the committed checksums but missing (:func:`data.missing_targets`), by name, as skipped.
    Returns [] with a message naming DIFFDECON_DATA if the data folder is absent."""
    try:
        names = data.list_targets(root)
    except FileNotFoundError as err:
        print(f"[diffdecon] no real HSC data: {err}")
        return []
    try:
        missing = data.missing_targets(root)
    except FileNotFoundError:
        missing = []
    if missing:
        print(f"[diffdecon] skipping targets whose files are missing under {paths.shown(root or paths.hsc_dir())}: "
              f"{', '.join(missing)} (run `make data` to fetch them)")
    return names
