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
# # 02 — Validation on mock HSC observations (the TNG-HSC analog)
#
# Before touching real data we check the method where the truth is known: idealized
# galaxies are observed through the forward model of Eq. (1),
# $y = A(x) + \sigma_y n$ with $A = P * f_{z,p}$, using HSC PSFs and the noise level
# measured on real HSC cutouts, and then deconvolved.
#
# The simulated idealized images of the original study are not available here, so the
# idealized galaxies come from the package's synthetic universe (GalSim); every figure
# says so on itself.

# %% tags=["parameters"]
profile = "quick"

# %%
import json

import numpy as np
import torch

from diffdecon import config, galaxies, manuscript, mock, physics, plotting

P = config.notebook_profile(profile)
generator = torch.Generator().manual_seed(P.seed)

# %% [markdown]
# ## The forward operator (Figure 1)
#
# $f_{z,p}$ places the model grid (fixed physical pixel, kpc/px) at redshift $z$ and
# rebins it, conserving flux, onto the HSC grid ($p$ = 0.168 arcsec/px); the PSF of
# each band then blurs it. The model field of $N$ pixels covers $m(z,p)$ observed
# pixels. For the published configuration (256 px at 0.4 kpc/px) the paper notes
# $m < 80$ above $z \approx 0.7$, i.e. the inverse problem must then also upsample by
# more than 2.

# %%
# NBVAL_CHECK_OUTPUT
paper = config.get_profile("paper")
z_high = 0.8463
m_paper = physics.observed_size(z_high, paper.image_size, paper.pixel_scale_kpc, config.HSC_PIXEL_SCALE)
print(f"paper configuration at z = {z_high}: m(z, p) = {m_paper:.1f} px, upsampling {paper.image_size / m_paper:.2f}x")

# %%
reference = mock.hsc_reference()
test_set = galaxies.build_dataset(P, split="test")
z = 0.21677  # redshift of the paper's first HSC target (Figures 4-5)
obs = mock.make_mock(test_set.images[0], z, P, reference, generator)
resampled = obs.operator.resample(obs.truth)
print(f"profile {P.name}: m(z={z}) = {obs.operator.m:.1f} px, upsampling {obs.operator.upsampling_factor:.2f}x, "
      f"observation {obs.y.shape[-1]} px; PSF and noise from: {reference.source}")
print("flux: idealized {:.4g}, resampled {:.4g}, observed {:.4g}".format(
    float(obs.truth.sum()), float(resampled.sum()), float(obs.y.sum())))

# %%
fig = plotting.forward_operator_figure(
    obs.truth, resampled, obs.y, z=z, m=obs.operator.m, profile=P.name,
    pixel_scale_kpc=P.pixel_scale_kpc, pixel_scale_arcsec=config.HSC_PIXEL_SCALE, source=reference.source,
)
_ = plotting.save_figure(fig, "fig1_forward_operator")
_ = manuscript.write_variables("forward_model", {
    "FMProfile": P.name,
    "FMHighZ": z_high,
    "FMPixelScale": config.HSC_PIXEL_SCALE,
    "FMmHighZ": round(m_paper, 1),
    "FMUpsamplingHighZ": round(paper.image_size / m_paper, 2),
    "FMRedshift": z,
    "FMmProfile": round(obs.operator.m, 1),
    "FMPSFSource": reference.source,
})

# %% [markdown]
# ## The synthetic universe
#
# A grid of the idealized galaxies the prior is trained on (held-out test split):
# bulges, inclined disks, star-forming knots, bars and spiral arms, with no PSF and no
# noise.

# %%
fig = plotting.galaxy_grid(test_set.images[:24], ncols=8)
_ = plotting.save_figure(fig, "synthetic_galaxy_grid")

# %% [markdown]
# ## Deconvolving mock observations
#
# Held-out synthetic galaxies (never seen in training) are placed at the redshifts of the
# paper's three low-redshift targets (z = 0.166, 0.186, 0.217), observed with the HSC PSF
# and noise, and inverted with four methods:
#
# * **MMPS** (moment-matching posterior sampling), the better sampler: each step conditions
#   a Gaussian approximation of $p(x_0 \mid x_t)$ on the data. Its covariance is
#   measured from the denoiser's own errors on training images (`diffdecon.denoiser_variance`):
#   a diagonal per band and per denoised value, so the sky, which the prior knows to a few
#   hundredths, is not moved by the data's noise, plus one term per band for the uniform sky
#   level, which the prior knows less well than any single pixel. (A trained network's Jacobian, the
#   Tweedie covariance of the paper, is neither symmetric nor positive, and the linear solve
#   then fails.) The system is solved by preconditioned conjugate gradients, and the steps
#   are spaced quadratically in time, dense at low noise, so far fewer steps are needed.
#   Each step fits the data through the image the prior's own chain will end at,
#   $x_0 + b_t(D)$, with $b_t$ the mean change its later steps still make, measured on its
#   own draws (`diffdecon.lookahead`): the trained network's chain ends with less faint light
#   than each step's denoiser predicts, and without this the samples come out too faint;
# * **DPS** in the published convention (step size $\zeta_t = 1/\lVert r \rVert$ on the
#   squared residual norm), with the norm computed per sample;
# * **Richardson-Lucy** and **Wiener** deconvolution on the observation grid, rebinned
#   onto the model grid (they remove the PSF but add no resolution).
#
# Each point estimate (the posterior mean for the samplers) is compared with the idealized
# truth (PSNR, SSIM, total-flux error) and, through the forward model, with the data
# (reduced $\chi^2$, 1 at the noise level).

# %%
from diffdecon import prior as prior_mod
from diffdecon import exactness, reference_samples, sbc, training, validation

diffusion_prior = prior_mod.load_prior(P, training.prior_directory(P))
prior_samples = reference_samples.prior_samples(diffusion_prior, progress=False)
settings = validation.sampler_settings(P)
mocks = validation.mock_set(P, reference, dataset=test_set)
print(f"{len(mocks)} mocks at z = {sorted({m.z for m in mocks})}; samplers: {settings}")

# %%
val = validation.run_validation(mocks, diffusion_prior, settings, prior_samples=prior_samples)
print({m: f"{t:.1f} s" for m, t in val.wall_time_s.items()})

# %%
header = ["method", "PSNR [dB]", "SSIM", "flux error", r"reduced $\chi^2$"]
caption = (f"Point estimates against the idealized truth on {len(mocks)} mock HSC observations "
           f"(mean $\\pm$ std; profile {P.name}; {manuscript.latex_escape(settings.note)}). Samplers: posterior mean "
           f"of {settings.n} samples; MMPS {settings.mmps_steps} steps, DPS {settings.dps_steps} steps, published "
           f"convention, guidance scale $\\zeta$ = "
           f"{', '.join(f'{z:g}' for z in sorted({z for z in val.dps_zeta if np.isfinite(z)}))} "
           "(the largest of 1, 0.1, ... that did not diverge; a mock on which every scale diverged is "
           "counted as diverged and left out of the mean).")
_ = manuscript.write_table("validation_metrics", manuscript.latex_table(
    header, validation.metrics_rows(val), caption=caption, label="tab:validation"))
for row in validation.metrics_rows(val):
    print(" | ".join(row))

# %% [markdown]
# ### Figures 2 and 3
#
# The first three mocks: observation, re-convolved MMPS posterior mean $A(\hat x)$, the
# estimates of every method on the model grid and the idealized truth; then the
# normalised data residuals $(y - A\hat x)/\sigma_y$ and the image errors.

# %%
labels = {m: validation.LABELS[m] for m in val.estimates}
rows, res_rows = [], []
for i, prob in enumerate(val.problems[:3]):
    with torch.no_grad():
        Ax = {m: prob.operator.A(val.estimates[m][i][None].double())[0] for m in val.estimates}
    peak = float(prob.truth.max())
    rows.append({"y": prob.y, "Ax": Ax["mmps"], "truth": prob.truth, "title": f"z = {prob.z:.3f}",
                 "estimates": {labels[m]: val.estimates[m][i] for m in val.estimates}})
    res_rows.append({"title": f"z = {prob.z:.3f}",
                     "residuals": {labels[m]: (prob.y.double() - Ax[m]) / prob.sigma.double()[:, None, None]
                                   for m in val.estimates},
                     "errors": {labels[m]: (val.estimates[m][i] - prob.truth.double()) / peak for m in val.estimates}})
_ = plotting.save_figure(plotting.deconvolution_figure(rows, reference.source, P.name), "fig2_deconvolution")
_ = plotting.save_figure(plotting.residuals_figure(res_rows, P.name), "fig3_residuals")

# %% [markdown]
# ### Calibration
#
# Are the posteriors' uncertainties right? TARP (expected coverage against credibility
# level, over the mock set: the diagonal is calibrated, below it over-confident; computed on
# prior-space pixels without per-pixel normalisation, so that near-empty sky cannot dominate
# it, and compared with the band a calibrated sampler reaches with as few mocks and samples),
# the fraction of pixels whose true value lies in the central 68 % and 95 % intervals
# (against what a calibrated sampler reaches with this many samples, not the nominal
# levels), and the reduced $\chi^2$ of re-convolved posterior *samples* against the data.

# %%
# posteriors of the mocks on which a sampler diverged are left out (their number is in Table 2)
usable = {m: [r for r in rs if r is not None] for m, rs in val.posteriors.items()}
cal = {m: sbc.mock_calibration(rs) for m, rs in usable.items() if len(rs) >= 2}
for m, c in cal.items():
    print(f"{labels[m]}: TARP max deviation {c['tarp_max_dev']:.3f} (calibrated: below {c['tarp_null_95']:.3f}); "
          f"coverage 68% -> {c['coverage'][0.68]:.3f}, 95% -> {c['coverage'][0.95]:.3f} (calibrated: "
          f"{c['coverage_target'][0.68]:.3f}, {c['coverage_target'][0.95]:.3f}); "
          f"chi2(A(sample), y) = {c['chi2_samples']:.2f} +- {c['chi2_samples_std']:.2f}")
_ = plotting.save_figure(plotting.tarp_figure({labels[m]: (c["alpha"], c["ecp"]) for m, c in cal.items()}, P.name),
                         "tarp_coverage")

# %% [markdown]
# ### Calibration where the answer is known
#
# Held-out galaxies mix two errors: the sampler's and the prior's (a synthetic universe the
# network learnt imperfectly). Truths drawn from the prior itself remove the second: observed
# through the same forward model and noise, a correct sampler is calibrated on them whatever
# the prior's quality (simulation-based calibration). The truths are set to total magnitudes
# 18, 20 and 22 (the magnitude sweep's range) at the three low redshifts. The flux scale is
# given to the sampler and is the same for every truth at one magnitude (that of a training
# image with the median i-band total; each truth's own magnitude differs by its brightness):
# a scale set from each truth's own total would tell the sampler that total, and the truths
# would no longer be draws of the prior it assumes. Coverage is split by the truth's surface brightness in
# noise units: sky (< 1 sigma), faint (1-10) and galaxy (> 10). Here a small set; the bench
# script `bench/bench_calibration.py` runs 100 prior-drawn and 16 held-out truths per magnitude and writes
# `results/calibration.json`, whose numbers the manuscript quotes. Beside each TARP figure it
# prints what drives it: the z-score of the mean over truths of (distance of the samples to
# TARP's reference) squared minus (distance of the truth) squared, over the whole image. For a
# calibrated sampler it is 0 within its noise; positive, the samples scatter more than the truth
# about what they share with it (too wide, or pushed away from typical images), negative, less.

# %%
from diffdecon import paths

n_cal = {"smoke": (2, 2), "quick": (12, 4)}.get(P.name, (24, 8))
cal_settings = {"steps": settings.mmps_steps, "cg_iters": settings.cg_iters, "covariance": settings.mmps_covariance}
sbc_small = {kind: sbc.run_calibration(diffusion_prior, kind, n_cal[0], n_cal[1], cal_settings, (18.0, 20.0, 22.0),
                                       validation.PAPER_LOW_Z, reference, progress=False)
             for kind in sbc.TRUTH_SETS}
for kind, r in sbc_small.items():
    print(f"{kind}: {r['n_truths']} truths x {r['n_samples']} samples, {r['wall_time_s']:.0f} s; median sample "
          f"chi2 {r['chi2_sample_median']:.2f}; coverage 68/95 % {r['coverage_68']:.3f}/{r['coverage_95']:.3f} "
          f"(calibrated {r['coverage_target_68']:.3f}/{r['coverage_target_95']:.3f}); galaxy pixels "
          f"{r['coverage_68_galaxy']}/{r['coverage_95_galaxy']}")

# %%
cal_path = paths.RESULTS / "calibration.json"
bench_cal = json.loads(cal_path.read_text()) if cal_path.exists() else {}
if bench_cal.get("profile") == P.name:
    print(f"{cal_path.name} ({bench_cal['created']}):")
    for kind in sbc.TRUTH_SETS:
        r = bench_cal.get(kind, {}).get("mmps")
        if r is None:
            continue
        for mag, b in r["by_mag"].items():
            print(f"  {kind:11s} mag {mag}: {b['n_truths']:3d} truths, chi2 {b['chi2_sample_median']:.2f}, "
                  f"TARP {b['tarp_max_dev']:.3f} (null 95 % {b['tarp_null_95']:.3f}), coverage 68 % "
                  f"{b['coverage_68']:.3f} (target {b['coverage_target_68']:.3f}; sky {b['coverage_68_sky']}, "
                  f"faint {b['coverage_68_faint']}, galaxy {b['coverage_68_galaxy']}); distance excess z "
                  f"{b.get('tarp_distance_excess', {}).get('all', {}).get('z', float('nan')):+.1f}")
    _ = plotting.save_figure(plotting.tarp_figure(
        {f"{k} (bench)": (bench_cal[k]["mmps"]["tarp_alpha"], bench_cal[k]["mmps"]["tarp_ecp"])
         for k in sbc.TRUTH_SETS if k in bench_cal}, P.name), "tarp_calibration")
else:
    print(f"no {cal_path.name} for profile {P.name}: run `python bench/bench_calibration.py --profile {P.name}`")

# %% [markdown]
# The same bench where the prior is exact: a Gaussian mixture about 1024 training galaxies
# (`diffdecon.mixture_prior`), whose denoiser and draws are exact, so that a miscalibration there
# is the sampler's own and not the network's. The profile's sampler (steps from draws of
# p(x0 | x_t, y), the last step too, with the forward model linearised twice there) and, for
# comparison, steps from the mean of it (`make bench` writes both files).

# %%
mixture_cal = {}
for prefix, name in (("CalMix", "calibration_mixture_draw_last.json"), ("CalMixMean", "calibration_mixture_mean.json")):
    path = paths.RESULTS / name
    rec = json.loads(path.read_text()) if path.exists() else {}
    if rec.get("profile") != P.name:
        print(f"no {name} for profile {P.name}: run `make bench PROFILE={P.name}`")
        continue
    mixture_cal[prefix] = rec
    r = rec["prior_draws"]["mmps"]
    print(f"{name} ({rec['created']}; {rec['prior']}), {r['settings']}: TARP {r['tarp_max_dev']:.3f} "
          f"(null 95 % {r['tarp_null_95']:.3f}) over {r['n_truths']} truths; per magnitude "
          + ", ".join(f"{m}: {b['tarp_max_dev']:.3f} (null {b['tarp_null_95']:.3f}), chi2 {b['chi2_sample_median']:.2f}"
                      for m, b in r["by_mag"].items()))

# %% [markdown]
# ### Exactness: the samplers against a closed-form posterior
#
# With a Gaussian prior the posterior is known exactly, so the error of each sampler can
# be measured without a network in the way: an 8 x 8 image, Gaussian blur and 2 x 2
# binning, 256 samples. Errors of the posterior mean are in units of the exact posterior
# standard deviation; the variance ratio is empirical over exact posterior variance.

# %%
exact = exactness.exactness(n=256 if P.name != "smoke" else 64, dps_steps=1000 if P.name != "smoke" else 200)
ex_rows = [[e["label"], e["mean_err_rms"], e["mean_err_max"], e["var_ratio"], e["w2"], e["chi2"]]
           for e in exact.values()]
_ = manuscript.write_table("exactness", manuscript.latex_table(
    ["sampler", "mean err (rms)", "mean err (max)", "variance ratio", "$W_2$", r"$\chi^2$/dof"], ex_rows,
    caption=(f"Samplers against the exact posterior of a Gaussian prior (8 x 8 image, blur and 2 x 2 binning, "
             f"{exact['mmps']['n']} samples): errors of the mean in posterior standard deviations (Monte-Carlo "
             r"level about $1/\sqrt{n}$), empirical over exact variance (1 ideal), Gaussian $W_2$ and whitened "
             r"$\chi^2$ per dimension (1 ideal)."), label="tab:exactness"))
for r in ex_rows:
    print(r)

# %%
mm, dp = val.scores["mmps"], val.scores["dps"]
calibration_variables = sbc.manuscript_variables
nan_cal = {"tarp_max_dev": float("nan"), "coverage": {0.68: float("nan"), 0.95: float("nan")},
           "chi2_samples": float("nan")}
cal_dps = cal.get("dps", nan_cal)  # fewer than two mocks without divergence: no calibration
_ = manuscript.write_variables("validation", {
    "ValProfile": P.name,
    "ValNMock": len(mocks),
    "ValNSamples": settings.n,
    "ValMMPSSteps": settings.mmps_steps,
    "ValDPSSteps": settings.dps_steps,
    "ValMMPSPSNR": round(float(mm["psnr"].mean()), 2),
    "ValDPSPSNR": round(float(np.nanmean(dp["psnr"])), 2),
    "ValDPSDiverged": int(validation.diverged_mocks(val, "dps").sum()),
    "ValRLPSNR": round(float(val.scores["richardson_lucy"]["psnr"].mean()), 2),
    "ValWienerPSNR": round(float(val.scores["wiener"]["psnr"].mean()), 2),
    "ValMMPSChi": round(float(mm["chi2"].mean()), 2),
    "ValDPSChi": round(float(np.nanmean(dp["chi2"])), 2),
    "ValMMPSTarpDev": round(cal["mmps"]["tarp_max_dev"], 3),
    "ValDPSTarpDev": round(cal_dps["tarp_max_dev"], 3),
    "ValMMPSCovSixtyEight": round(cal["mmps"]["coverage"][0.68], 3),
    "ValMMPSCovNinetyFive": round(cal["mmps"]["coverage"][0.95], 3),
    "ValDPSCovSixtyEight": round(cal_dps["coverage"][0.68], 3),
    "ValDPSCovNinetyFive": round(cal_dps["coverage"][0.95], 3),
    "ValMMPSSampleChi": round(cal["mmps"]["chi2_samples"], 2),
    "ValDPSSampleChi": round(cal_dps["chi2_samples"], 2),
    "ValExactMMPSMeanErr": round(exact["mmps"]["mean_err_rms"], 3),
    "ValExactDPSMeanErr": round(exact["dps_paper_1"]["mean_err_rms"], 3),
    "ValExactMMPSVarRatio": round(exact["mmps"]["var_ratio"], 3),
    "ValExactDPSVarRatio": round(exact["dps_paper_1"]["var_ratio"], 3),
    "ValMMPSTarpNull": round(cal["mmps"]["tarp_null_95"], 3),
    "ValCovTargetSixtyEight": round(cal["mmps"]["coverage_target"][0.68], 3),
    "ValCovTargetNinetyFive": round(cal["mmps"]["coverage_target"][0.95], 3),
    **calibration_variables(bench_cal if bench_cal.get("profile") == P.name else {}),
    **{k: v for prefix in ("CalMix", "CalMixMean") for k, v in calibration_variables(
        mixture_cal.get(prefix, {}), prefix).items()},
    "ValDPSZetaMin": float(np.nanmin(val.dps_zeta)) if np.isfinite(val.dps_zeta).any() else float("nan"),
    "ValDPSZetaMax": float(np.nanmax(val.dps_zeta)) if np.isfinite(val.dps_zeta).any() else float("nan"),
})
