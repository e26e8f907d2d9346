# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 — Signal-to-noise and the variance ratio (Table 2, Appendix C)
#
# How much of a reconstruction comes from the data and how much from the prior? The
# same idealized galaxy is made fainter, from total magnitude 18 to 23, observed through
# a Gaussian PSF with the noise level measured on HSC images, and deconvolved. The
# posterior / prior variance ratio inside the central aperture (30 px at 256 px, scaled
# to the profile) measures the share of the prior: near 0 the data decide, near 1 the
# prior does. As the signal-to-noise falls it should grow.
#
# The idealized galaxies are synthetic (GalSim), not TNG; every figure says so. The
# magnitude is the i-band total magnitude, all bands scaled together; the SNR is the mean
# noiseless flux per observation pixel inside the aperture over the noise sigma
# (`diffdecon.sweeps` states why this differs from a per-model-pixel mean).

# %% tags=["parameters"]
profile = "quick"

# %%
import numpy as np

from diffdecon import config, galaxies, manuscript, mock, plotting, reference_samples, sweeps, training, validation
from diffdecon import prior as prior_mod

P = config.notebook_profile(profile)
diffusion_prior = prior_mod.load_prior(P, training.prior_directory(P))
settings = validation.sampler_settings(P)
hsc = mock.hsc_reference()
test_set = galaxies.build_dataset(P, split="test")
prior_samples = reference_samples.prior_samples(diffusion_prior, progress=False)
print(f"noise sigma per band (g, r, i) from {hsc.source}: {np.round(hsc.sigma, 4)}; "
      f"Gaussian PSF FWHM {sweeps.PSF_FWHM_ARCSEC}\"; aperture {P.aperture_radius_px:g} model px; sampler MMPS "
      f"{settings.mmps_steps} steps, {settings.n} samples")

# %% [markdown]
# ## One galaxy (Table 2)

# %%
kw = dict(sampler="mmps", n=settings.n, steps=settings.mmps_steps, cg_iters=settings.cg_iters,
          prior_samples=prior_samples)
single = sweeps.magnitude_sweep(test_set.images[0], diffusion_prior, hsc.sigma, seed=P.seed, **kw)
for m, s, v, c in zip(single.mags, single.snr, single.variance_ratio_aperture, single.chi2.mean(1)):
    print(f"mag {m:4.1f}: SNR {s:8.1f}  variance ratio {v:.4f}  chi2 {c:.2f}")

# %% [markdown]
# ## Several galaxies: the spread

# %%
n_gal = {"smoke": 1, "quick": 2}.get(P.name, 8)
many = sweeps.galaxy_sweeps(test_set.images[1 : 1 + n_gal], diffusion_prior, hsc.sigma, seed=P.seed + 1, **kw)
stats = sweeps.sweep_rows([single] + many)
print(f"{stats['n_galaxies']} galaxies: variance ratio {np.round(stats['vr_mean'], 4)} +- {np.round(stats['vr_std'], 4)}")

# %%
rows = []
for k, m in enumerate(single.mags):
    rows.append([f"{m:g}", f"{sweeps.PUBLISHED_SNR[k]:.1f}", f"{single.snr[k]:.1f}",
                 f"{sweeps.PUBLISHED_VARIANCE_RATIO[k]:.4f}", f"{single.variance_ratio_aperture[k]:.4f}",
                 f"{stats['vr_mean'][k]:.4f} $\\pm$ {stats['vr_std'][k]:.4f}"])
caption = (f"The same synthetic galaxy at total (i) magnitudes 18 to 23 (Gaussian PSF, FWHM "
           f"{sweeps.PSF_FWHM_ARCSEC}'', HSC noise): SNR and aperture variance ratio, published and here "
           f"(profile {P.name}; MMPS, {settings.n} samples, {settings.mmps_steps} steps), and the mean $\\pm$ std "
           f"of the variance ratio over {stats['n_galaxies']} galaxies. SNRs differ in absolute value from the "
           "published ones (another galaxy and flux units; SNR per observation pixel), not in scaling.")
_ = manuscript.write_table("magnitude_sweep", manuscript.latex_table(
    ["mag", "SNR (paper)", "SNR", "ratio (paper)", "ratio", "ratio, galaxies"], rows, caption=caption,
    label="tab:magnitude_sweep", digits=4))

# %%
fig = plotting.magnitude_sweep_figure(single.mags, single.truth, single.observed, single.mean, single.variance_ratio,
                                      single.snr, single.variance_ratio_aperture, P.name,
                                      f"Gaussian PSF, noise from {hsc.source}")
_ = plotting.save_figure(fig, "magnitude_sweep")
fig = plotting.variance_ratio_vs_magnitude_figure(stats["mags"], stats["vr_mean"], stats["vr_std"],
                                                  published=sweeps.PUBLISHED_VARIANCE_RATIO,
                                                  single=single.variance_ratio_aperture, profile=P.name)
_ = plotting.save_figure(fig, "magnitude_sweep_galaxies")

# %%
slope = np.polyfit(single.mags, np.log10(single.snr), 1)[0]
_ = manuscript.write_variables("magnitude_sweep", {
    "MagProfile": P.name,
    "MagPSFFWHM": sweeps.PSF_FWHM_ARCSEC,
    "MagNGalaxies": int(stats["n_galaxies"]),
    "MagSNRBright": round(float(single.snr[0]), 1),
    "MagSNRFaint": round(float(single.snr[-1]), 1),
    "MagSNRSlope": round(float(slope), 3),
    "MagRatioBright": round(float(single.variance_ratio_aperture[0]), 4),
    "MagRatioFaint": round(float(single.variance_ratio_aperture[-1]), 4),
    "MagRatioMeanBright": round(float(stats["vr_mean"][0]), 4),
    "MagRatioMeanFaint": round(float(stats["vr_mean"][-1]), 4),
    "MagRatioGrowth": round(float(single.variance_ratio_aperture[-1] / single.variance_ratio_aperture[0]), 2),
    "MagRatioGrowthPaper": round(sweeps.PUBLISHED_VARIANCE_RATIO[-1] / sweeps.PUBLISHED_VARIANCE_RATIO[0], 2),
})
