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
# # 03 — Real HSC galaxies and HST (paper section 3.2, Figures 4-7)
#
# The prior trained on idealized galaxies is now applied to real HSC PDR3 UltraDeep
# cutouts in COSMOS. For each low-redshift target the three-band cutout is cropped to a
# window around the catalogue position, the noise and residual sky are measured on the
# cutout, and the forward model $A = P * f_{z,p}$ is built from the target's catalogue
# redshift, the pixel scale of its WCS and its own PSFs. The posterior is sampled with
# MMPS.
#
# What is shown for each target: the observation, the posterior mean, two single
# posterior draws (they differ where the data do not pin the image down), the
# pixel-wise posterior standard deviation and the variance ratio, i.e. posterior over
# prior variance. A ratio near 0 means the data fixed that pixel; near 1 means the prior
# alone speaks there. Its mean inside a central aperture is the scalar summary.
#
# Where a higher-resolution HST/ACS F814W image exists it is resampled onto the HSC grid
# (conserving flux), and the posterior mean, brought onto the same grid without the HSC
# PSF, is compared with it after both are smoothed by one common small Gaussian. Only one
# of the paper's HST cutouts is available here, and it belongs to a high-redshift target
# (notebook 04); the low-redshift targets therefore show "no HST" unless their cutouts
# are downloaded. The data fit is checked per band with the reduced $\chi^2$ of
# $A(\bar x)$ against $y$, and where it misses, the residual is searched for compact
# sources (`diagnostics.residual_sources`): neighbours in the model field and light outside
# it, which a prior of one idealized galaxy centred in its field cannot represent, or
# structure on the galaxy itself. The table's last column is the reduced $\chi^2$ outside
# them, and each target's line below says where they lie and what share of the excess
# $\chi^2$ they hold.

# %% tags=["parameters"]
profile = "quick"

# %%

from diffdecon import config, manuscript, reference_samples, targets, training
from diffdecon.prior import load_prior

P = config.notebook_profile(profile)
Z_SPLIT = 0.5  # low-redshift targets (this notebook) have z < Z_SPLIT; the others are in notebook 04

# %% [markdown]
# ## Targets and prior
#
# The targets are whatever lies in the data folder (`DIFFDECON_DATA`), split by their
# catalogue redshift; targets listed in the committed checksums but absent are named.

# %%
low_z, missing = targets.targets_between(z_max=Z_SPLIT)
prior = load_prior(P, training.prior_directory(P))
prior_samples = reference_samples.prior_samples(prior, progress=False)
print(f"prior {P.name}: {P.image_size} px at {P.pixel_scale_kpc} kpc/px; {len(prior_samples)} prior samples; "
      f"MMPS, {P.n_posterior} samples, {P.sampling_steps} steps")

# %% [markdown]
# ## Deconvolution
#
# Each target is inverted independently; its wall time covers preparation, sampling
# and the HST comparison. A sampler that diverges (possible with a barely trained prior)
# is reported for that target and in the table, not hidden.

# %%
analyses = targets.analyse_targets(low_z, prior, sampler="mmps", n=P.n_posterior, steps=P.sampling_steps,
                                   prior_samples=prior_samples, progress=False)

# %% [markdown]
# ## Figures 4-7 and the table

# %%
caption = (f"Real HSC targets with $z < {Z_SPLIT}$ (profile {P.name}; MMPS, {P.n_posterior} samples, "
           f"{P.sampling_steps} steps): reduced $\\chi^2$ of $A(\\bar x)$ against $y$ per band, variance ratio "
           f"in an aperture of {P.aperture_radius_px:g} model px, correlation of the posterior mean with HST "
           "F814W on the HSC grid, and the largest reduced $\\chi^2$ over the bands outside the residual sources "
           "(neighbours, light outside the model field, structure on the galaxy).")
_ = targets.report_targets(analyses, P.name, "hsc_hst_comparison",
                           f"HSC targets with z < {Z_SPLIT}: deconvolution and HST", "hst_comparison", caption,
                           "tab:hst", missing)

# %%
done = [a for a in analyses if a.result is not None]
_ = manuscript.write_variables("hst_comparison", {
    "HSTProfile": P.name,
    "HSTNTargets": len(analyses),
    "HSTNDiverged": len(analyses) - len(done),
    "HSTNWithHST": sum(a.hst is not None for a in analyses),
    "HSTMissing": ", ".join(missing) or "none",
    "HSTMaxChi": round(max((float(a.result.chi2.max()) for a in done), default=float("nan")), 2),
    "HSTMaxChiOutside": round(max((float(a.residuals.chi2_outside.max()) for a in done), default=float("nan")), 2),
    "HSTMeanVarRatio": round(sum(a.result.variance_ratio_aperture for a in done) / len(done), 3) if done else "n/a",
    "HSTWallTime": round(sum(a.wall_time_s for a in analyses), 1),
})
