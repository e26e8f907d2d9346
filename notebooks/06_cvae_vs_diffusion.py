# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 — Conditional diffusion, a conditional VAE and the posterior sampler on the same observations
#
# Companion study (Xue et al. 2023). Notation of the package: $x$ the clean image (truth),
# $y = \Pi * x + \sigma_y n$ the observation with PSF $\Pi$ and white noise of standard deviation
# $\sigma_y$ (the paper writes the letters the other way round and neglects the noise). Arms:
#
# * **conditional diffusion**: a classifier-free UNet with the condition $c = (y, \Pi)$ as extra
#   input channels (the PSF embedded by a one-layer CNN), trained on fresh noisy observations
#   with the condition dropped 10 % of the time. It predicts $v = \sqrt{\bar\alpha_t}\,\epsilon -
#   \sqrt{1-\bar\alpha_t}\,x_0$ instead of the published $\epsilon$ (an $\epsilon$ model's
#   Tweedie estimate divides its error by $\sqrt{\bar\alpha_t}$ at the first sampling steps);
#   it is sampled with DDIM steps at guidance weight $w = 0$ (the conditional model alone,
#   $(1+w)\,\mathrm{net}(c) - w\,\mathrm{net}(\varnothing)$), Tweedie's estimate and the output
#   clamped to the image range $[0, 1]$;
# * **CVAE** as in the paper's eq. 1: encoder $q(z \mid y, \Pi)$ on the observation and the
#   PSF, decoder $\hat x = g(z, \Pi)$ whose observed branch is the fixed convolution
#   $\Pi * \hat x$, Gaussian likelihoods of scale $\sigma_y$ (the noise of the data), loss
#   $\alpha\,\|\hat x - x\|^2/2\sigma_y^2 + \beta\,\|\Pi*\hat x - y\|^2/2\sigma_y^2 + \mathrm{KL}$;
#   candidates decode $z \sim q(z \mid y, \Pi)$;
# * **the package's method**: an unconditional diffusion prior trained on the same one-band
#   images through the same training loop, sampled with MMPS and DPS (the package's
#   samplers) given $y$, $\Pi$ and $\sigma_y$; outputs clamped to $[0, 1]$;
# * **references**: the observation itself (no deconvolution), the truth, and the truth plus
#   white noise of $\sigma_y$.
#
# A candidate is **valid** when its reduced $\chi^2 = \|\Pi * \hat x - y\|^2 / (N\sigma_y^2)$ is
# below the 99 % quantile of $\chi^2_N / N$ ($N$ pixels): the truth passes 99 % of the time.
# **Diversity** is the paper's eq. 4, the mean over observations of $\mathrm{Tr}\,\Sigma_i$ of the
# candidates' image features (the package's galaxy encoder retrained on these one-band images;
# InceptionV3 where it is installed), on the same observations for every arm, with 95 %
# bootstrap intervals over observations.

# %% tags=["parameters"]
profile = "quick"

# %%
import numpy as np
import torch

from diffdecon import conditional, config, fid, manuscript, plotting
from diffdecon import conditional_eval as ev
from diffdecon.conditional_models import active_dimensions, one_band_profile
from diffdecon.conditional_training import train_model
from diffdecon.galaxies import build_dataset
from diffdecon.plotting import conditional as cplot
from diffdecon.prior import DiffusionPrior, count_parameters

P = config.notebook_profile(profile)
cfg = conditional.get_config(P)
train, test_all = conditional.split(P)
test = test_all[: cfg.n_obs]
size = train.x.shape[-1]
P1 = one_band_profile(P, cfg, size)
print(f"{len(train)} training pairs, {len(test)} of {len(test_all)} test observations, {size} px, "
      f"noise sigma_y = {cfg.sigma_y:g} (clean peak = 1); PSF sigma "
      f"{', '.join(f'{s:.3g}' for s in conditional.psf_sigmas(size))} px on {cfg.psf_size} px grids")

# %% [markdown]
# ## Training (one loop for all models; cached, resumable)

# %%
models, states = {}, {}
for kind in ("diffusion", "cvae", "prior"):
    models[kind], states[kind] = train_model(P, kind, train)
    print(f"{kind:9s}: {count_parameters(models[kind]) / 1e6:.3f} M parameters, {len(states[kind]['losses'])} steps "
          f"of {cfg.batch}, {states[kind]['seconds']:.0f} s, final loss (mean of last 50) "
          f"{np.mean(states[kind]['losses'][-50:]):.4g}")
prior = DiffusionPrior(P1, unet=models["prior"]).eval()

# %% [markdown]
# ## The CVAE: KL, active latent dimensions, and the alpha/beta sweep (as the paper's Fig. 4)

# %%
def cvae_stats(m):
    with torch.no_grad():
        mu, logvar = m.encode(test.y, test.psf)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
    return float(kl.mean()), active_dimensions(mu)


sweep = {(cfg.alpha, cfg.beta): models["cvae"]}
for a, b in cfg.sweep:
    if (a, b) not in sweep:
        sweep[(a, b)], _ = train_model(P, "cvae", train, alpha=a, beta=b, steps=cfg.sweep_steps)
cvae_info = {ab: cvae_stats(m) for ab, m in sweep.items()}
for (a, b), (kl, act) in cvae_info.items():
    print(f"CVAE alpha {a:g}, beta {b:g}: KL {kl:.1f} nats per observation, {act} of {cfg.latent} latent "
          "dimensions active")

# %% [markdown]
# ## Features

# %%
train_catalog = build_dataset(P, split="train").catalog
features, r2 = ev.one_band_encoder(P, train.x, train_catalog)
print("galaxy encoder on one-band images, hold-out R^2:", {k: round(v, 2) for k, v in r2.items()})
has_inception, why = fid.inception_available()
print(why)
feature_label = "galaxy-encoder features"

# %% [markdown]
# ## All arms on the same observations, seeds and sample counts

# %%
arms = ev.reference_arms() | {
    "conditional diffusion": ev.conditional_arm(models["diffusion"], P1, cfg),
    "CVAE": ev.cvae_arm(models["cvae"]),
    "prior + MMPS": ev.posterior_arm(prior, "mmps", cfg),
    "prior + DPS": ev.posterior_arm(prior, "dps", cfg),
} | {f"CVAE a={a:g} b={b:g}": ev.cvae_arm(m) for (a, b), m in sweep.items() if (a, b) != (cfg.alpha, cfg.beta)}
draws = ev.draw(arms, test, cfg.n_samples, seed=cfg.seed + 1000)
scores = ev.score(draws, test, features, cfg.quantile)
model_arms = ["conditional diffusion", "CVAE", "prior + MMPS", "prior + DPS"]
valid_div, n_common = ev.valid_diversity(draws, scores, test, features, cfg.quantile, model_arms)
if has_inception:  # the paper's features, where installed: printed beside the encoder's
    inception = ev.score(draws, test, lambda s: fid.inception_features((2 * s - 1).repeat(1, 3, 1, 1)), cfg.quantile)
    print("Inception diversity:", {k: round(s.diversity[0], 4) for k, s in inception.items()})
thr = ev.chi2_threshold(test.x[0].numel(), cfg.quantile)
print(f"validity threshold: reduced chi^2 < {thr:.4f} ({100 * cfg.quantile:g} % quantile of chi^2_N / N, "
      f"N = {test.x[0].numel()})")
for k, s in scores.items():
    print(f"{k:22s} retained {s.retained[0]:5.1f} % [{s.retained[1]:.1f}, {s.retained[2]:.1f}]  "
          f"median chi2_r {np.nanmedian(s.chi2r):.3g}  diversity {s.diversity[0]:.4g} "
          f"[{s.diversity[1]:.4g}, {s.diversity[2]:.4g}]  diverged {s.n_diverged}  "
          f"{1e3 * s.seconds_per_sample:.2f} ms per candidate")
print(f"valid-only diversity on the {n_common} observations where every model arm has >= 2 valid candidates:",
      {k: round(v[0], 4) for k, v in valid_div.items()})

# %% [markdown]
# ## What the numbers say
#
# An arm whose median reduced $\chi^2$ is above the threshold does not fit the data at the
# noise level, so its diversity includes model error; diversity is compared with the truth
# plus one noise realisation (the spread that noise alone gives), with non-overlapping 95 %
# intervals as the criterion.

# %%
floor = scores["truth + noise"].diversity
verdicts = {}
for k, s in scores.items():
    if k in ev.REFERENCES:
        continue
    med = np.nanmedian(s.chi2r)
    fit = "fits" if med < thr else "does not fit"
    if s.diversity[1] > floor[2]:
        div = "more diverse than"
    elif s.diversity[2] < floor[1]:
        div = "less diverse than"
    else:
        div = "as diverse as"  # the 95 % intervals overlap
    verdicts[k] = (fit, div)
    print(f"{k}: median chi2_r {med:.3g} vs {thr:.3f}: {fit} the data at the noise level; "
          f"{s.retained[0]:.1f} % valid; {div} a noise realisation")

# %%
def ci(t, f="{:.3g}", scale=1.0):
    if not np.isfinite(t[0]):
        return "--"
    return f"{f.format(scale * t[0])} [{f.format(scale * t[1])}, {f.format(scale * t[2])}]"


rows = []
for k, s in scores.items():
    ab = next(((a, b) for (a, b) in sweep if k in (f"CVAE a={a:g} b={b:g}",)), None)
    ab = (cfg.alpha, cfg.beta) if k == "CVAE" else ab
    kl = f"{cvae_info[ab][0]:.0f} / {cvae_info[ab][1]}" if ab else ""
    rows.append([k, ci(s.retained, "{:.1f}"), f"{np.nanmedian(s.chi2r):.3g}", ci(s.diversity),
                 ci(s.galaxy_var, scale=1e4), ci(s.sky_var, scale=1e4), kl, f"{1e3 * s.seconds_per_sample:.2g}"])
pub = conditional.PUBLISHED
table = manuscript.latex_table(
    ["arm", r"valid [\%]", r"median $\chi^2_r$", "diversity", r"var$_\mathrm{gal}\times10^4$",
     r"var$_\mathrm{sky}\times10^4$", "KL / active", "ms"], rows,
    caption=(f"Conditional diffusion, CVAE and the unconditional prior with MMPS/DPS on the same {len(test)} "
             f"synthetic test observations (profile {P.name}, r band, {size} px, noise $\\sigma_y = {cfg.sigma_y:g}$ "
             f"of the clean peak), {cfg.n_samples} candidates each, one seed. Valid: reduced $\\chi^2 < {thr:.3f}$ "
             f"(the {100 * cfg.quantile:g}\\,\\% quantile of $\\chi^2_N/N$). Diversity: mean over observations of "
             f"Tr$\\,\\Sigma_i$ of the {feature_label} of all candidates; var: per-pixel variance on galaxy "
             "(truth $> 3\\sigma_y$) "
             f"and sky pixels ({n_common} observations have two valid candidates in every model arm, the set on "
             "which the paper's valid-only diversity could be compared). Brackets: 95\\,\\% bootstrap intervals over "
             "observations. KL [nats] and active latent "
             f"dimensions (of {cfg.latent}) for the CVAEs; the sweep's CVAEs ran {cfg.sweep_steps} steps, the main "
             f"one {cfg.cvae_steps}. Conditional diffusion: {cfg.sampling_steps} DDIM steps, $w = {cfg.guidance:g}$; "
             f"MMPS {cfg.mmps_steps} steps $\\times$ {cfg.mmps_cg} CG; DPS {cfg.dps_steps} steps. Paper (TNG, "
             f"noise-free, Inception): diffusion {pub['retained']['diffusion']:g}\\,\\% valid, variance "
             f"{pub['variance']['diffusion']:g}; CVAE {pub['retained']['cvae']:g}\\,\\%, {pub['variance']['cvae']:g}."),
    label="tab:cvae")
_ = manuscript.write_table("cvae_vs_diffusion", table)
print(table)

# %%
def v(k, field, i=0, f="{:.3g}"):
    return f.format(getattr(scores[k], field)[i])


variables = {"CondProfile": P.name, "CondObservations": len(test), "CondSamples": cfg.n_samples,
             "CondSigma": f"{cfg.sigma_y:g}", "CondThreshold": f"{thr:.3f}", "CondQuantile": f"{100 * cfg.quantile:g}",
             "CondFeatures": feature_label, "CondCommon": n_common, "CondGuidance": f"{cfg.guidance:g}",
             "CondSweepSteps": cfg.sweep_steps, "CondLatent": cfg.latent,
             "CondKLCVAE": f"{cvae_info[(cfg.alpha, cfg.beta)][0]:.0f}",
             "CondActiveCVAE": cvae_info[(cfg.alpha, cfg.beta)][1]}
for key, k in (("Obs", "observation"), ("Truth", "truth"), ("TruthNoise", "truth + noise"),
               ("Diffusion", "conditional diffusion"), ("CVAE", "CVAE"), ("MMPS", "prior + MMPS"),
               ("DPS", "prior + DPS")):
    variables |= {f"CondRetained{key}": v(k, "retained", f="{:.1f}"), f"CondVar{key}": v(k, "diversity"),
                  f"CondChi{key}": f"{np.nanmedian(scores[k].chi2r):.3g}",
                  f"CondVarGal{key}": f"{1e4 * scores[k].galaxy_var[0]:.3g}",
                  f"CondVarSky{key}": f"{1e4 * scores[k].sky_var[0]:.3g}",
                  f"CondVarLo{key}": v(k, "diversity", 1), f"CondVarHi{key}": v(k, "diversity", 2)}
for key, k in (("Diffusion", "conditional diffusion"), ("CVAE", "CVAE"), ("MMPS", "prior + MMPS"),
               ("DPS", "prior + DPS")):
    variables |= {f"CondFit{key}": verdicts[k][0], f"CondDiv{key}": verdicts[k][1]}
_ = manuscript.write_variables("cvae_vs_diffusion", variables)

# %% [markdown]
# ## Figures: candidates, validity against the threshold, the CVAE sweep

# %%
i = 0
show = ["conditional diffusion", "CVAE", "prior + MMPS", "prior + DPS", "truth + noise"]
fig = cplot.candidates_figure(test.x[i], test.y[i], test.psf[i], {k: draws[k].samples[i] for k in show},
                              cfg.sigma_y, profile=P.name)
_ = plotting.save_figure(fig, "cvae_vs_diffusion_samples")
grid = np.logspace(-1, 2, 80)
fig = cplot.retained_figure(grid, {k: ev.retained_curve(s.chi2r, grid) for k, s in scores.items()
                                   if not k.startswith("CVAE a=")}, thr, cfg.quantile, profile=P.name)
_ = plotting.save_figure(fig, "cvae_vs_diffusion_retained")
fig = cplot.sweep_figure(test.x[i], {f"a={a:g}, b={b:g}": m.sample(test.y[i:i + 1], test.psf[i:i + 1], 1,
                                                                     torch.Generator().manual_seed(0))[0, 0]
                                     for (a, b), m in sweep.items()}, profile=P.name)
_ = plotting.save_figure(fig, "cvae_vs_diffusion_sweep")
