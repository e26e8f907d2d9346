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
# # 04 — Limits at high redshift (paper section 3.3, Figures 8-9, and a redshift sweep)
#
# The model image has a fixed physical pixel (kpc/px). The farther the galaxy, the
# fewer HSC pixels $m(z,p)$ its model field covers, so the inversion must create more
# model pixels per observed pixel: the upsampling factor $N/m$ grows with $z$. The paper
# found that above $z \approx 0.7$, where its 256-px model field shrinks below about 80
# HSC pixels, the posterior starts to invent structure: the samples look like plausible
# galaxies but agree poorly with HST, and the variance ratio rises because the data no
# longer constrain the small scales.
#
# First the real high-redshift targets present (same outputs as notebook 03, compared
# with HST where a cutout exists), then a controlled experiment the paper did not run:
# one simulated galaxy moved from $z = 0.1$ to $1$ at fixed apparent magnitude, so that
# only the resolution changes.

# %% tags=["parameters"]
profile = "quick"

# %%
import numpy as np

from diffdecon import config, galaxies, manuscript, mock, plotting, reference_samples, sweeps, targets, training
from diffdecon.prior import load_prior

P = config.notebook_profile(profile)
Z_SPLIT = 0.5  # high-redshift targets (this notebook) have z > Z_SPLIT; the others are in notebook 03

# %% [markdown]
# ## Targets and prior

# %%
high_z, missing = targets.targets_between(z_min=Z_SPLIT)
prior = load_prior(P, training.prior_directory(P))
prior_samples = reference_samples.prior_samples(prior, progress=False)

# %% [markdown]
# ## Real high-redshift targets (Figures 8-9)
#
# A diverged sampler is reported for its target and in the table.

# %%
analyses = targets.analyse_targets(high_z, prior, sampler="mmps", n=P.n_posterior, steps=P.sampling_steps,
                                   prior_samples=prior_samples, progress=False)

# %%
caption = (f"Real HSC targets with $z > {Z_SPLIT}$ (profile {P.name}; MMPS, {P.n_posterior} samples, "
           f"{P.sampling_steps} steps); columns as in Table~\\ref{{tab:hst}}.")
_ = targets.report_targets(analyses, P.name, "hsc_high_z", f"HSC targets with z > {Z_SPLIT}: deconvolution and HST",
                           "high_z", caption, "tab:highz", missing)

# %% [markdown]
# ## One galaxy from z = 0.1 to 1 (beyond the paper)
#
# A held-out synthetic galaxy is observed with the HSC PSFs and noise at each redshift,
# with its apparent magnitude held fixed (no cosmological dimming), and deconvolved. The
# signal-to-noise is therefore the same everywhere, and any change of the variance
# ratio comes from the shrinking number of observed pixels. The redshift at which the
# upsampling factor of this profile reaches 2 is marked.

# %%
n_z = {"smoke": 3, "quick": 7}.get(P.name, 10)
zs = np.round(np.linspace(0.1, 1.0, n_z), 3)
reference = mock.hsc_reference()
galaxy = galaxies.build_dataset(P, split="test").images[0]
sweep = sweeps.redshift_sweep(galaxy, zs, P, prior, reference, sampler="mmps", n=P.n_posterior,
                              steps=P.sampling_steps, prior_samples=prior_samples, progress=False,
                              on_divergence="nan")
z_cross = sweeps.upsampling_crossing(P, 2.0)
for z, m, u, v in zip(sweep.z, sweep.m, sweep.upsampling_factor, sweep.variance_ratio_aperture):
    print(f"z = {z:.3f}: m(z,p) = {m:.1f} px, upsampling {u:.2f}, variance ratio "
          f"{'DIVERGED' if np.isnan(v) else f'{v:.3f}'}")
print(f"upsampling factor 2 reached at z = {z_cross:.3f}" if z_cross is not None
      else f"upsampling factor 2 not reached for z <= 1.5 under profile {P.name}")

# %%
fig = plotting.redshift_sweep_figure(sweep.z, sweep.m, sweep.upsampling_factor, sweep.variance_ratio_aperture,
                                     profile=P.name, source=reference.source, factor=2.0, z_cross=z_cross)
_ = plotting.save_figure(fig, "z_sweep")

# %%
done = [a for a in analyses if a.result is not None]
ok = np.isfinite(sweep.variance_ratio_aperture)
_ = manuscript.write_variables("high_z", {
    "HighZProfile": P.name,
    "HighZNTargets": len(analyses),
    "HighZNDiverged": len(analyses) - len(done),
    "HighZMissing": ", ".join(missing) or "none",
    "HighZHSTCorr": round(done[0].agreement.correlation, 3) if done and done[0].agreement else "n/a",
    "HighZUpsampling": round(analyses[0].upsampling_factor, 2) if analyses else "n/a",
    "HighZVarRatio": round(done[0].result.variance_ratio_aperture, 3) if done else "n/a",
    "HighZWallTime": round(sum(a.wall_time_s for a in analyses), 1),
    "SweepNz": len(sweep.z),
    "SweepNDiverged": int((~ok).sum()),
    "SweepZCross": round(z_cross, 2) if z_cross is not None else "not reached",
    "SweepVarRatioLow": round(float(sweep.variance_ratio_aperture[0]), 3) if ok[0] else "diverged",
    "SweepVarRatioHigh": round(float(sweep.variance_ratio_aperture[-1]), 3) if ok[-1] else "diverged",
    "SweepUpsamplingHigh": round(float(sweep.upsampling_factor[-1]), 2),
})
