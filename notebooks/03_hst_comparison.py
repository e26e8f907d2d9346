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
# $A(\bar x)$ against $y$.

# %% tags=["parameters"]
profile = "quick"

# %%

from diffdecon import config, data, manuscript, plotting, targets, training
from diffdecon.prior import load_prior

P = config.notebook_profile(profile)
Z_SPLIT = 0.5  # low-redshift targets (this notebook) have z < Z_SPLIT; the others are in notebook 04

# %% [markdown]
# ## Targets and prior
#
# The targets are whatever lies in the data folder (`DIFFDECON_DATA`), split by their
# catalogue redshift; targets listed in the committed checksums but absent are named.

# %%
names = targets.present_targets()
loaded = [data.load_target(name) for name in names]
low_z = [t for t in loaded if t.z < Z_SPLIT]
missing = data.missing_targets() if names else []
print(f"low-redshift targets (z < {Z_SPLIT}): {[(t.name, round(t.z, 4)) for t in low_z] or 'none'}")
print(f"absent (redshift unknown without their catalogue, not run): {missing or 'none'}")

prior = load_prior(P, training.prior_directory(P))
prior_samples = targets.cached_prior_samples(prior, progress=False)
print(f"prior {P.name}: {P.image_size} px at {P.pixel_scale_kpc} kpc/px; {len(prior_samples)} prior samples; "
      f"MMPS, {P.n_posterior} samples, {P.sampling_steps} steps")

# %% [markdown]
# ## Deconvolution
#
# Each target is inverted independently; its wall time covers preparation, sampling
# and the HST comparison. A sampler that diverges (possible with a barely trained prior)
# is reported for that target and in the table, not hidden.

# %%
analyses = []
for t in low_z:
    a = targets.analyse_target(t, prior, sampler="mmps", n=P.n_posterior, steps=P.sampling_steps,
                               prior_samples=prior_samples, progress=False)
    analyses.append(a)
    status = (f"chi2 g/r/i = {', '.join(f'{c:.2f}' for c in a.result.chi2)}, "
              f"variance ratio {a.result.variance_ratio_aperture:.3f}") if a.result is not None else a.error
    hst = "no HST" if a.hst is None else (f"HST corr {a.agreement.correlation:.3f}" if a.agreement else "HST")
    print(f"{a.name}: m(z,p) = {a.m:.1f} px, upsampling {a.upsampling_factor:.2f}; {status}; {hst}; "
          f"{a.wall_time_s:.1f} s")

# %% [markdown]
# ## Figures 4-7

# %%
fig = plotting.hsc_target_figure([a.figure_row() for a in analyses], P.name,
                                 title=f"HSC targets with z < {Z_SPLIT}: deconvolution and HST")
_ = plotting.save_figure(fig, "hsc_hst_comparison")
for a in analyses:
    _ = plotting.save_figure(plotting.hsc_target_figure([a.figure_row()], P.name, title=f"HSC {a.name}"),
                             f"hsc_target_{a.name}")

# %% [markdown]
# ## Table

# %%
header = ["target", "$z$", "$i$ [mag]", "$m(z,p)$ [px]", "upsampling", r"$\chi^2_g$", r"$\chi^2_r$",
          r"$\chi^2_i$", "variance ratio", "HST corr.", "wall [s]"]
rows = targets.analysis_table_rows(analyses)
caption = (f"Real HSC targets with $z < {Z_SPLIT}$ (profile {P.name}; MMPS, {P.n_posterior} samples, "
           f"{P.sampling_steps} steps): reduced $\\chi^2$ of $A(\\bar x)$ against $y$ per band, variance ratio "
           f"in an aperture of {P.aperture_radius_px:g} model px, correlation of the posterior mean with HST "
           "F814W on the HSC grid.")
note = "Absent, not run: " + manuscript.latex_escape(", ".join(missing)) + "." if missing else None
_ = manuscript.write_table("hst_comparison", manuscript.latex_table(
    header, rows or [["no target present"] + [""] * (len(header) - 1)], caption=caption, label="tab:hst", note=note))
for r in rows:
    print(" | ".join(r))

# %%
done = [a for a in analyses if a.result is not None]
_ = manuscript.write_variables("hst_comparison", {
    "HSTProfile": P.name,
    "HSTNTargets": len(analyses),
    "HSTNDiverged": len(analyses) - len(done),
    "HSTNWithHST": sum(a.hst is not None for a in analyses),
    "HSTMissing": ", ".join(missing) or "none",
    "HSTMaxChi": round(max((float(a.result.chi2.max()) for a in done), default=float("nan")), 2),
    "HSTMeanVarRatio": round(sum(a.result.variance_ratio_aperture for a in done) / len(done), 3) if done else "n/a",
    "HSTWallTime": round(sum(a.wall_time_s for a in analyses), 1),
})
