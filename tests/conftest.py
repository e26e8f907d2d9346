"""Shared fixtures: seeded generators, the slow marker, real-data discovery."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator (seed 0): every random draw in a test goes through it."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    """The device of device-generic tests: the CPU (CI has no GPU), or the one named by the
    environment variable DIFFDECON_TEST_DEVICE (e.g. ``cuda``) to run them on an accelerator."""
    import os

    return torch.device(os.environ.get("DIFFDECON_TEST_DEVICE", "cpu"))


class PriorOnDevice(torch.nn.Module):
    """A closed-form prior ``base`` behind a denoiser that, like a network, refuses inputs that
    are not on its own device (that of its one parameter)."""

    def __init__(self, base, device):
        super().__init__()
        self.base, self.schedule = base, base.schedule
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64, device=device))

    def x0_hat(self, x_t, t):
        if x_t.device != self.anchor.device or t.device != self.anchor.device:
            raise RuntimeError(f"inputs on {x_t.device} / {t.device}, network on {self.anchor.device}")
        return self.base.x0_hat(x_t.cpu(), t.cpu()).to(self.anchor.device)


@pytest.fixture
def prior_on_device(device):
    """``base -> PriorOnDevice(base, device)``: a prior whose denoiser runs on the test device."""
    return lambda base: PriorOnDevice(base, device)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op torch thread per test: the test tensors are small, and on a machine
    shared by several jobs more threads only contend for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def hsc_root():
    """The real HSC data folder (``paths.hsc_dir()``); skips when it is absent."""
    from diffdecon import paths

    root = paths.hsc_dir()
    if not root.is_dir():
        pytest.skip(f"real HSC data not found at {root}: set DIFFDECON_DATA to the folder holding hsc_pdr3_cosmos/")
    return root


class IsotropicGaussianPrior(torch.nn.Module):
    """Exact diffusion prior x0 ~ N(mu, s^2 I) in prior space under the VP process (tests only).

    With abar = abar_t: x_t ~ N(sqrt(abar) mu, (abar s^2 + 1 - abar) I), so Tweedie's mean is
    D(x_t) = mu + sqrt(abar) s^2 / (abar s^2 + 1 - abar) (x_t - sqrt(abar) mu) and
    eps(x_t) = (x_t - sqrt(abar) D) / sqrt(1 - abar). Unlike an untrained UNet it never
    diverges, so the plumbing of targets/cli can be tested end to end in seconds.
    Follows the diffdecon.prior contract (profile, schedule, eps, x0_hat, stretch, unstretch).
    """

    def __init__(self, profile, mu: torch.Tensor, s: float):
        super().__init__()
        from diffdecon.config import get_profile
        from diffdecon.prior import NoiseSchedule

        self.profile = get_profile(profile)
        self.schedule = NoiseSchedule.cosine(self.profile.diffusion_steps)
        self.register_buffer("mu", mu.to(torch.float32))
        self.s2 = float(s) ** 2
        self.checkpoint_sha256 = None
        self.checkpoint_path = None
        self._dtype_anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def x0_hat(self, x_t, t, eps=None):
        a = self.schedule.abar(t, x_t)
        return self.mu + a.sqrt() * self.s2 / (a * self.s2 + 1 - a) * (x_t - a.sqrt() * self.mu)

    def eps(self, x_t, t):
        a = self.schedule.abar(t, x_t)
        return (x_t - a.sqrt() * self.x0_hat(x_t, t)) / (1 - a).sqrt()

    def stretch(self, f):
        from diffdecon.prior import stretch

        return stretch(f, self.profile.asinh_a)

    def unstretch(self, x):
        from diffdecon.prior import unstretch

        return unstretch(x, self.profile.asinh_a)


def gaussian_galaxy(profile, sigma_px: float = 3.0, colors=(0.5, 0.8, 1.0), total: float = 100.0):
    """A round Gaussian galaxy on the model grid of ``profile``, (3, H, W) float64
    [HSC coadd flux per model px], summing to ``total`` over bands."""
    import numpy as np

    from diffdecon.config import get_profile

    n = get_profile(profile).image_size
    r = np.arange(n) - (n - 1) / 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma_px**2)
    img = np.stack([c * g for c in colors])
    return img * total / img.sum()


@pytest.fixture
def smoke_gaussian_prior():
    """An :class:`IsotropicGaussianPrior` of the smoke profile centred on a Gaussian galaxy
    (prior-space sd 0.1)."""
    from diffdecon.prior import normalise

    mu, _ = normalise(torch.as_tensor(gaussian_galaxy("smoke")), "smoke")
    return IsotropicGaussianPrior("smoke", mu, 0.1)


@pytest.fixture
def smoke_galaxy():
    """:func:`gaussian_galaxy` of the smoke profile, (3, 32, 32) [HSC coadd flux per model px]."""
    return gaussian_galaxy("smoke")


@pytest.fixture
def small_psf_reference():
    """Mock set-up with a Gaussian PSF of FWHM 0.7" (sigma 1.8 HSC px) on a 15 px stamp
    (+-3.9 sigma, cheap convolutions) and noise sigma 0.01 in every band."""
    from diffdecon import mock

    return mock.gaussian_reference(0.7, 0.01, size=15)


@pytest.fixture
def smoke_mock(smoke_galaxy, small_psf_reference, generator):
    """:func:`gaussian_galaxy` of the smoke profile observed at z = 0.3 through :func:`small_psf_reference`."""
    from diffdecon import mock

    return mock.make_mock(smoke_galaxy, 0.3, "smoke", small_psf_reference, generator)


@pytest.fixture
def present_targets(hsc_root):
    """Names of the real HSC targets present; skips when there are none."""
    from diffdecon import problem

    names = problem.present_targets(hsc_root)
    if not names:
        pytest.skip(f"no HSC target under {hsc_root} (DIFFDECON_DATA)")
    return names


def tan_wcs_of(scale_arcsec: float, n: int, crval=(150.0, 2.2)):
    """A gnomonic (TAN) WCS of an ``n`` x ``n`` image with ``scale_arcsec`` [arcsec/px],
    centred on ``crval`` [deg], east left."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w


@pytest.fixture
def tan_wcs():
    """Factory ``tan_wcs(scale_arcsec, n, crval=(150.0, 2.2))``: :func:`tan_wcs_of`."""
    return tan_wcs_of
