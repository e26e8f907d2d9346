"""The SLIC study of notebook 07: truths, dithered exposures, both likelihoods, metrics.

Set-up (all stated, none measured on real exposures):

* **Prior and pixel scale.** The committed prior of the profile (3 bands) is used through
  its i band: a sample ``x`` (3, N, N) maps to model flux ``scale * unstretch(x_i)`` [e- per
  model px]; g and r are sampled jointly but unconstrained by the data. We assign the
  model grid :data:`MODEL_PIXEL_SCALE` = 0.025 arcsec/px, half the ACS/WFC exposure pixel
  (0.05 arcsec/px): upsampling 2. The prior's kpc scale is not used (the galaxies are
  shapes on a pixel grid here).
* **Exposures.** :data:`N_EXPOSURES` = 4 dithered exposures of ``N/2 - 4`` px (inside the model
  field for every dither), ACS-like PSF (Airy, 2.4 m, 814 nm, obscuration 0.33, with a
  0.03 arcsec Gaussian jitter) 4x supersampled, noise of :class:`diffdecon.noise.NoiseModel`.
* **Truths.** Synthetic test galaxies of the profile (i band) and real HST ACS F814W
  galaxies (0.03 arcsec/px), background-subtracted, cropped and rebinned (flux conserving)
  so that their half-light radius equals the median one of the synthetic test galaxies:
  real morphologies placed on the model grid, not their true angular size. Every truth
  is scaled to i = :data:`TRUTH_MAG` (AB, zero point :data:`ACS_F814W_ZP`).
* **Sharper reference.** The truth through a JWST-like PSF (Airy, 6.5 m, 1.15 um,
  obscuration 0.11) on the model grid with :data:`REFERENCE_NOISE_FRACTION` of the
  exposures' noise: simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import calibration, metrics, paths
from .exposures import ExposureSet, default_dithers
from .noise import NoiseModel
from .physics import rebin_matrix
from .prior import unstretch

MODEL_PIXEL_SCALE = 0.025  # [arcsec/px] assigned to the prior's grid
EXPOSURE_PIXEL_SCALE = 0.05  # [arcsec/px] ACS/WFC
PSF_OVERSAMPLING = 4
PSF_SIZE = 25  # [supersampled px], odd
N_EXPOSURES = 4
TRUTH_MAG = 22.0  # i-band AB magnitude of every truth
ACS_F814W_ZP = 25.94  # AB magnitude giving 1 e-/s (ACS/WFC F814W, approximate)
REFERENCE_NOISE_FRACTION = 0.1  # noise of the sharper reference relative to one exposure
I_BAND = 2
X0_CLIP = (-2.0, 3.0)
"""Sanity range of Tweedie's x0 in the sampler [prior space]: it keeps the first steps from
diverging and never binds on what the prior draws (its own sky reaches x = -1.13, below the
training images' -1; 3 is far above their brightest pixel, about 1.8). Fixed here so that the
study's numbers do not move with another module's default."""


def acs_like_psf(oversampling: int = PSF_OVERSAMPLING, size: int = PSF_SIZE) -> np.ndarray:
    """ACS-like PSF (size, size) on a grid ``oversampling`` times finer than 0.05 arcsec, unit sum."""
    import galsim

    psf = galsim.Convolve(galsim.Airy(lam=814.0, diam=2.4, obscuration=0.33, scale_unit=galsim.arcsec),
                          galsim.Gaussian(fwhm=0.03))
    img = psf.drawImage(nx=size, ny=size, scale=EXPOSURE_PIXEL_SCALE / oversampling).array
    return img / img.sum()


def jwst_like_psf(size: int = 15) -> np.ndarray:
    """JWST-like PSF (size, size) on the model grid (0.025 arcsec/px), unit sum."""
    import galsim

    psf = galsim.Airy(lam=1150.0, diam=6.5, obscuration=0.11, scale_unit=galsim.arcsec)
    img = psf.drawImage(nx=size, ny=size, scale=MODEL_PIXEL_SCALE).array
    return img / img.sum()


def exposure_set(N: int, distortion: float = 0.02) -> ExposureSet:
    """The 4 dithered exposures of an N px model grid (side N/2 - 4 exposure px)."""
    return ExposureSet.dithered(acs_like_psf(), PSF_OVERSAMPLING, N // 2 - 4, N, MODEL_PIXEL_SCALE,
                                default_dithers(N_EXPOSURES, EXPOSURE_PIXEL_SCALE, 0.3, distortion))


def total_electrons(noise: NoiseModel, mag: float = TRUTH_MAG) -> float:
    """Electrons of an i = ``mag`` source in one exposure: 10^(0.4 (ZP - mag)) t [e-]."""
    return 10 ** (0.4 * (ACS_F814W_ZP - mag)) * noise.exposure_time_s


def half_light_radius(img: np.ndarray) -> float:
    """Radius [px] around the flux centroid holding half of the positive flux."""
    w = np.clip(img, 0, None)
    yy, xx = np.indices(img.shape)
    cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    c = np.cumsum(w.ravel()[order])
    return float(r[order][np.searchsorted(c, 0.5 * c[-1])])


def real_truth(image: np.ndarray, N: int, r50_target: float) -> np.ndarray:
    """A real HST stamp as a model-grid truth (N, N): background (border median) removed,
    cropped around the peak of the smoothed image and rebinned by ``S/N`` (flux conserving)
    so that its half-light radius is ``r50_target`` model px."""
    from scipy.ndimage import gaussian_filter

    img = image - np.median(np.concatenate([image[:20].ravel(), image[-20:].ravel()]))
    cy, cx = np.unravel_index(np.argmax(gaussian_filter(img, 5)), img.shape)
    half0 = min(cy, cx, img.shape[0] - cy - 1, img.shape[1] - cx - 1, 200)
    r50 = half_light_radius(img[cy - half0:cy + half0, cx - half0:cx + half0])
    S = int(min(2 * half0, max(N, round(N * r50 / r50_target))))
    crop = img[cy - S // 2:cy - S // 2 + S, cx - S // 2:cx - S // 2 + S]
    R = rebin_matrix(S, N, N / S)  # (N, S): S stamp px onto N model px
    return R @ crop @ R.T


@dataclass
class Truth:
    """A truth on the model grid: ``flux`` (N, N) [e- per model px per exposure], ``name``, ``kind``."""

    name: str
    kind: str  # "synthetic" or "real HST"
    flux: np.ndarray


def make_truths(profile, noise: NoiseModel, n_synthetic: int = 2) -> tuple[list[Truth], list[str]]:
    """Synthetic test galaxies (i band) and the real HST galaxies present under the data path.
    Returns (truths, messages about absent real data)."""
    from . import data, galaxies

    N = profile.image_size
    test = galaxies.build_dataset(profile, split="test")
    syn = [np.asarray(test.images[k][I_BAND], dtype=np.float64) for k in range(n_synthetic)]
    r50 = float(np.median([half_light_radius(np.asarray(test.images[k][I_BAND])) for k in range(min(32, len(test)))]))
    truths = [Truth(f"synthetic {k}", "synthetic", s) for k, s in enumerate(syn)]
    messages = []
    real = {"COSMOS 147246": paths.data_dir() / "hst_cosmos_stamp" / "147246.0_150.416558_1.998697_masknoise.fits",
            "test_high_z2": next(iter(sorted((paths.hsc_dir() / "test_high_z2").glob("HST-*.fits"))), None)}
    for name, path in real.items():
        if path is None or not path.exists():
            messages.append(f"{name}: HST image not found under {paths.data_dir()} (set DIFFDECON_DATA); skipped")
            continue
        truths.append(Truth(name, "real HST", real_truth(data.load_hst(path).image, N, r50)))
    F = total_electrons(noise)
    for t in truths:
        t.flux = t.flux * F / t.flux.sum()
    return truths, messages


def i_fraction(profile) -> float:
    """Mean i-band share of the total g+r+i flux of the synthetic test galaxies."""
    from . import galaxies

    ims = np.asarray(galaxies.build_dataset(profile, split="test").images[:64], dtype=np.float64)
    return float(np.mean(ims[:, I_BAND].sum((1, 2)) / ims.sum((1, 2, 3))))


def flux_map(y: torch.Tensor, profile, f_i: float):
    """``to_flux`` for the sampler: prior space (B, 3, N, N) -> i-band flux (B, N, N) [e-].
    The scale comes from the data: total of the pixel-wise median of the exposures
    (robust to cosmic rays) over ``f_i * flux_norm``."""
    total = float(torch.as_tensor(y).median(0).values.sum())
    scale = total / (f_i * profile.flux_norm)
    a = profile.asinh_a

    def to_flux(x):
        return scale * unstretch(x[:, I_BAND], a)

    return to_flux


@dataclass
class Run:
    """Posterior of one (truth, data condition, likelihood): flux samples (n, N, N) [e-]."""

    samples: np.ndarray
    median: np.ndarray = field(init=False)
    std: np.ndarray = field(init=False)

    def __post_init__(self):
        self.median, self.std = np.median(self.samples, 0), self.samples.std(0)


def run_metrics(run: Run, truth: np.ndarray, ops: ExposureSet, y: np.ndarray, cr: np.ndarray,
                background_var: float) -> dict:
    """The study's numbers for one run (see notebook 07): CR-footprint flux, chi^2, PSNR,
    SSIM, interval coverage."""
    mask = cr > 0
    As = ops.A(torch.as_tensor(run.samples)).numpy()  # (n, E, M, M)
    At = ops.A(torch.as_tensor(truth)[None]).numpy()[0]
    excess = ((As - At) * mask).sum((2, 3)).sum(1) / max(cr.sum(), 1e-12)  # per sample
    Am = ops.A(torch.as_tensor(run.median)[None]).numpy()[0]
    var = background_var + np.clip(Am, 0, None)  # background + source shot noise [e-^2]
    chi = (y - Am) ** 2 / var
    from scipy.ndimage import binary_dilation

    keep = ~np.stack([binary_dilation(m, iterations=1) for m in mask])
    cov = calibration.interval_coverage(torch.as_tensor(run.samples), torch.as_tensor(truth), (0.68, 0.95))
    gal = truth > 0.05 * truth.max()  # the galaxy's pixels: above 5 % of the peak
    cov_gal = calibration.interval_coverage(torch.as_tensor(run.samples[:, gal]), torch.as_tensor(truth[gal]), (0.68,))
    return {
        "cr_excess_mean": float(excess.mean()), "cr_excess_std": float(excess.std()),
        "chi2_all": chi.mean((1, 2)), "chi2_clean": np.array([c[k].mean() for c, k in zip(chi, keep)]),
        "psnr": metrics.psnr(truth, run.median), "ssim": metrics.ssim(truth, run.median),
        "cov68": cov[0.68], "cov95": cov[0.95], "cov68_galaxy": cov_gal[0.68],
    }


def convolve_same(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``img`` convolved with ``psf`` (zero padding, same size) [flux conserved inside]."""
    from scipy.signal import fftconvolve

    return fftconvolve(img, psf, mode="same")


def snr_per_pixel(truth: np.ndarray, ops: ExposureSet, noise: NoiseModel) -> float:
    """Peak noiseless exposure flux over the background std [dimensionless]."""
    return float(ops.A(torch.as_tensor(truth)[None]).max() / math.sqrt(noise.white_variance + noise.correlated_sigma**2))


def posterior(prior, y: np.ndarray, ops: ExposureSet, to_flux, noise_score, seed: int, n: int, steps: int,
              cg_iters: int = 2, progress: bool = False) -> Run:
    """Posterior flux samples for exposures ``y`` (E, M, M) [e-]: :func:`diffdecon.slic.sample`
    with generator seed ``seed`` (the same for both likelihoods) and Tweedie's x0 kept in
    the sanity range :data:`X0_CLIP`."""
    from .slic import sample

    x = sample(prior, torch.as_tensor(y, dtype=torch.float32), ops, to_flux, noise_score,
               torch.Generator().manual_seed(seed), n=n, steps=steps, cg_iters=cg_iters, x0_clip=X0_CLIP,
               progress=progress)
    with torch.no_grad():
        return Run(to_flux(x).double().numpy())


def sharp_reference(truth: np.ndarray, noise: NoiseModel, generator: torch.Generator) -> np.ndarray:
    """Simulated sharper, deeper image (N, N) [e-/model px]: the truth through
    :func:`jwst_like_psf` plus white noise of :data:`REFERENCE_NOISE_FRACTION` times one
    exposure's background std, per model pixel (divided by the upsampling, as for a
    surface-brightness noise on a finer grid)."""
    sigma = REFERENCE_NOISE_FRACTION * math.sqrt(noise.white_variance + noise.correlated_sigma**2)
    sigma /= EXPOSURE_PIXEL_SCALE / MODEL_PIXEL_SCALE
    z = torch.randn(truth.shape, generator=generator, dtype=torch.float64).numpy()
    return convolve_same(truth, jwst_like_psf()) + sigma * z


def reference_psnr(median: np.ndarray, reference: np.ndarray) -> float:
    """PSNR [dB] of the posterior median through the JWST-like PSF against the reference."""
    return metrics.psnr(reference, convolve_same(median, jwst_like_psf()))


def normalised_residuals(median: np.ndarray, ops: ExposureSet, y: np.ndarray, background_var: float) -> np.ndarray:
    """(y_e - A_e median) / sqrt(background + source shot variance), (E, M, M)."""
    Am = ops.A(torch.as_tensor(median)[None]).numpy()[0]
    return (y - Am) / np.sqrt(background_var + np.clip(Am, 0, None))


def verdicts(results: list[dict]) -> dict:
    """The study's claims, per truth (from the metrics of the four runs):

    * ``within``: SLIC's CR-footprint flux (CR data) within one posterior std of 0 (the truth);
    * ``larger``: the Gaussian's exceeds SLIC's by more than 3 combined stds;
    * ``agree``: without cosmic rays the two differ by less than their combined std."""
    out = {"within": [], "larger": [], "agree": [], "lines": []}
    for r in results:
        s, g, sc, gc = r["slic_cr"], r["gauss_cr"], r["slic_clean"], r["gauss_clean"]
        within = abs(s["cr_excess_mean"]) <= s["cr_excess_std"]
        larger = g["cr_excess_mean"] - s["cr_excess_mean"] > 3 * math.hypot(s["cr_excess_std"], g["cr_excess_std"])
        agree = abs(sc["cr_excess_mean"] - gc["cr_excess_mean"]) <= math.hypot(sc["cr_excess_std"], gc["cr_excess_std"])
        for k, v in (("within", within), ("larger", larger), ("agree", agree)):
            out[k].append(bool(v))
        why = ""
        if not larger and g["cr_excess_mean"] > s["cr_excess_mean"] + 3 * s["cr_excess_std"]:
            why = " [above SLIC's by more than 3 SLIC spreads, but within 3 of the Gaussian's own wide spread]"
        elif not larger:
            why = " [no larger than SLIC's: the Gaussian put no more flux on these footprints]"
        out["lines"].append(
            f"{r['name']}: SLIC within its spread of the truth: {'yes' if within else 'NO'} "
            f"({s['cr_excess_mean']:+.4f} +- {s['cr_excess_std']:.4f}); Gaussian clearly larger: "
            f"{'yes' if larger else 'NO'} ({g['cr_excess_mean']:+.4f} +- {g['cr_excess_std']:.4f}){why}; "
            f"agree without cosmic rays: {'yes' if agree else 'NO'} ({sc['cr_excess_mean']:+.4f} vs "
            f"{gc['cr_excess_mean']:+.4f})")
    return out


def latex_table(results: list[dict], profile: str, sizes: dict) -> str:
    """Table of notebook 07: one row per truth and likelihood (exposures with cosmic rays)."""
    from .manuscript import latex_table as table

    rows = []
    for r in results:
        for m, lab in (("slic", "SLIC"), ("gauss", "Gaussian")):
            a, c = r[f"{m}_cr"], r[f"{m}_clean"]
            rows.append([r["name"].replace("_", r"\_"), lab,
                         f"${a['cr_excess_mean']:+.3f} \\pm {a['cr_excess_std']:.3f}$",
                         f"${c['cr_excess_mean']:+.3f} \\pm {c['cr_excess_std']:.3f}$",
                         f"{np.mean(a['chi2_all']):.2f}", f"{np.mean(a['chi2_clean']):.2f}", f"{a['psnr']:.1f}",
                         f"{a['ssim']:.3f}", f"{a['cov68']:.2f}/{a['cov95']:.2f}/{a['cov68_galaxy']:.2f}",
                         f"{a['reference_psnr']:.1f}"])
    caption = (f"SLIC against the Gaussian likelihood on four simulated dithered exposures per truth (profile "
               f"{profile}; {sizes['n']} samples, {sizes['steps']} steps, same seed). CR flux: flux on the cosmic-ray "
               "pixels beyond the truth over the cosmic-ray flux (mean $\\pm$ posterior std), with and without "
               "cosmic rays in the data; $\\chi^2$: reduced, mean over exposures, all pixels and without cosmic-ray "
               "pixels; PSNR [dB], SSIM and interval coverage against the truth (68 and 95\\,\\% over all pixels, 68\\,\\% "
               "over the galaxy's pixels above 5\\,\\% of its peak); last column: PSNR "
               "[dB] against the simulated JWST-like reference.")
    latex = table(["truth", "likelihood", "CR flux", "CR flux, clean", r"$\chi^2$", r"$\chi^2$ w/o CR", "PSNR",
                   "SSIM", "cov.", "PSNR ref."], rows, caption=caption, label="tab:slic")
    return latex.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{3pt}\n", 1)  # 10 columns



_METRIC_VARIABLES: dict[str, tuple[str, str, int]] = {
    "CRFlux": ("cr", "cr_excess_mean", 4), "CRFluxSpread": ("cr", "cr_excess_std", 4),
    "CRFluxClean": ("clean", "cr_excess_mean", 4), "ChiAll": ("cr", "chi2_all", 2),
    "ChiNoCR": ("cr", "chi2_clean", 2), "ChiCleanData": ("clean", "chi2_all", 2), "PSNR": ("cr", "psnr", 1),
    "PSNRClean": ("clean", "psnr", 1), "SSIM": ("cr", "ssim", 3), "CovSixtyEight": ("cr", "cov68", 2),
    "CovNinetyFive": ("cr", "cov95", 2), "CovGalaxy": ("cr", "cov68_galaxy", 2),
    "RefPSNR": ("cr", "reference_psnr", 1)}
"""LaTeX variable name -> (data set: with or without cosmic rays, metric key, digits), per method."""


def summary_variables(results, verdict, profile: str, sizes: dict, ops: ExposureSet, noise: NoiseModel,
                      wall_s: float, absent: list[str]) -> dict:
    """LaTeX variables of notebook 07 (means over truths; counts of verdicts)."""
    def mean(m, cond, key):
        return float(np.mean([np.mean(r[f"{m}_{cond}"][key]) for r in results]))

    out = {"SlicProfile": profile, "SlicNTruths": len(results),
           "SlicNReal": sum(r["kind"] != "synthetic" for r in results),
           "SlicRealAbsent": "none" if not absent else "; ".join(a.split(":")[0] for a in absent),
           "SlicNExposures": len(ops), "SlicExposureScale": EXPOSURE_PIXEL_SCALE, "SlicModelScale": MODEL_PIXEL_SCALE,
           "SlicUpsampling": round(ops.exposures[0].upsampling, 2), "SlicExposureTime": noise.exposure_time_s,
           "SlicSamples": sizes["n"], "SlicSteps": sizes["steps"], "SlicTrainSteps": sizes["train_steps"],
           "SlicWallTime": int(round(wall_s)),
           "SlicNWithin": sum(verdict["within"]), "SlicNLarger": sum(verdict["larger"]),
           "SlicNAgree": sum(verdict["agree"])}
    for m, lab in (("slic", "Slic"), ("gauss", "Gauss")):
        for name, (data_set, key, digits) in _METRIC_VARIABLES.items():
            out[f"Slic{name}{lab}"] = round(mean(m, data_set, key), digits)
    return out


def discounted_fraction(net, truth: np.ndarray, y_clean: np.ndarray, ops: ExposureSet) -> tuple[float, float]:
    """How much of the true noise (background and source shot noise, no cosmic rays) the noise
    score treats as non-Gaussian at its smallest tau: ``sum |g| / sum |eta|`` with
    ``eta = y - A truth`` and ``g = eta + (N + tau^2 K) s_phi(eta)`` (eq. 2), on the galaxy's
    core (noiseless exposure flux above 30 % of its peak) and elsewhere [dimensionless]."""
    from .slic import _fft_apply

    At = ops.A(torch.as_tensor(truth)[None])
    eta = torch.as_tensor(y_clean)[None] - At
    tau = torch.full((1,), net.tau_bounds()[0], dtype=torch.float64)
    with torch.no_grad():
        g = (eta + _fft_apply(net(eta, tau), net.covariance_ps(tau))).abs()[0].numpy()
    core = (At[0] > 0.3 * At.max()).numpy()
    e = eta.abs()[0].numpy()
    return float(g[core].sum() / e[core].sum()), float(g[~core].sum() / e[~core].sum())
