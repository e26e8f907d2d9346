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
# # 01 — The diffusion prior: training, FID and the mode-collapse check
#
# The prior is a score-based diffusion model (variance-preserving DDPM with a cosine
# noise schedule of $T = 1000$ steps). The paper's UNet predicts the noise
# $\epsilon_\theta(x_t, t)$ added to a clean image $x_0$,
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$; its score
# $s_\theta = -\epsilon_\theta/\sqrt{1-\bar\alpha_t}$ and Tweedie's estimate
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$ are what the
# posterior samplers of the later notebooks use. The `smoke` and `quick` profiles train the
# same network to predict $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# instead (Salimans & Ho 2022), which defines the same $\epsilon$, score and $\hat x_0$ but
# computes $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v_\theta$ without
# dividing by $\sqrt{\bar\alpha_t}$ ($4.9\times10^{-5}$ at $t = T-1$). With $\epsilon$-prediction
# the first sampling steps amplify the network's error $2\times10^4$ times and our samples
# came out with bright, uniform skies; with $v$ their sky is the training images' zero flux.
#
# The images the prior sees are normalised to a fixed total flux and asinh-stretched
# (softening $a = 0.01$) into $[-1, 1]$; the flux scale is kept apart and restored by the
# likelihood. The published model was trained on TNG100 idealized galaxies at 256 px for
# 525k steps on 32 GPUs; here it is trained on the package's **synthetic** (GalSim)
# galaxies, at the size of the chosen profile (the quick checkpoint on one GPU, in minutes;
# the training device is printed below). Every figure says so.
#
# Sample quality is measured with the Fréchet distance between Gaussians fitted to the
# features of model samples and of training images. The paper used InceptionV3
# features; Inception is not available here, so the features are those of a small galaxy
# encoder trained on the training set to regress the galaxies' physical parameters. The
# values are therefore **not** on the paper's scale; what carries over is the trend with
# training and the comparison with the floor (two halves of the training set).

# %% tags=["parameters"]
profile = "quick"

# %%
import numpy as np
import torch

import diffdecon.config
from diffdecon import fid, galaxies, manuscript, plotting, training, umap_check
from diffdecon.prior import count_parameters, load_prior, unstretch

P = diffdecon.config.notebook_profile(profile)
torch.set_num_threads(2)

# %% [markdown]
# ## Training set and network
#
# Under `quick` the committed checkpoint `models/quick/` is used (train it again with
# `make train`); under `smoke` a tiny model is trained in seconds into the cache.

# %%
dataset = galaxies.build_dataset(P)
model_dir = training.prior_directory(P, dataset)
prior = load_prior(P, model_dir)
n_params = count_parameters(prior.unet)
print(f"{len(dataset)} training images of {P.image_size} px; UNet {n_params / 1e6:.2f} M parameters; "
      f"checkpoint sha256 {prior.checkpoint_sha256[:12]}")

# %% [markdown]
# ## Training curve

# %%
log = training.read_log(model_dir / training.LOG_FILE)
fig = training.training_curve_figure(
    log, title=f"{P.prediction}-prediction loss, profile {P.name} (synthetic galaxies)",
    prediction=P.prediction)
plotting.mark_synthetic(fig)
_ = plotting.save_figure(fig, "prior_training_curve")
print(f"{len(log)} steps of {P.batch_size} images, final running-mean loss "
      f"{np.mean([r['loss'] for r in log[-50:]]):.4f}, training wall time {log[-1]['elapsed_s'] / 60:.1f} min "
      f"(median {np.median([r['images_per_s'] for r in log]):.0f} images/s)")

# %% [markdown]
# ## FID against training length (Table 1)
#
# EMA snapshots are kept at the same fractions of the run as the paper's four FID
# checkpoints (300k, 375k, 450k and 525k of 525k steps). For each, $n$ unconditional DDIM
# samples are compared with $n$ training images; the floor is the distance between two
# further disjoint sets of $n$ training images, the value a perfect model would reach with
# the same number of samples.
#
# A single FID of $n$ samples is noisy, so each comes with its bootstrap standard deviation,
# and the change from the earliest snapshot with the standard deviation of that *change*
# over paired bootstrap replicates: the snapshots' samples start from the same noise $x_T$
# and are compared with the same training images, so resampling them together keeps the
# pairing and measures how well the trend, not each value, is determined. The FID "falls"
# when the final snapshot is below the earliest by more than two such standard deviations.

# %%
ev = fid.evaluate_prior(P, model_dir, dataset)
print(f"galaxy encoder hold-out R^2: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.encoder.holdout_r2.items()))

# %%
rows = manuscript.fid_table_rows(P, ev.fids, ev.floor, ev.fid_sd, ev.change)
table = manuscript.latex_table(
    ["fraction of run", "paper step", "paper FID (Inception)", f"{P.name} step", "FID (galaxy encoder)",
     "bootstrap sd", "change from first"],
    rows,
    caption=(f"FID of the prior against training length. Paper: InceptionV3 features, 1024 samples, "
             f"TNG100. This work (profile {P.name}): {fid.FEATURE_LABEL}, {ev.n} DDIM samples vs "
             f"{ev.n} training images, synthetic galaxies; floor: two disjoint halves of the "
             f"training set. Spreads: standard deviations over {ev.n_boot} bootstrap replicates; the "
             "change from the first snapshot is paired (same initial noise, same training images). "
             "The paper's and our FID columns are not on the same scale."),
    label="tab:fid", digits=3)
steps = ev.steps
delta, delta_sd = ev.change[steps[-1]]
verdict = "falls" if ev.falls(2.0) else "does not fall by more than 2 paired standard deviations"
print(f"FID from step {steps[0]} to {steps[-1]}: {delta:+.3f} +- {delta_sd:.3f} (paired bootstrap sd): "
      f"it {verdict}; floor {ev.floor:.3f}")
_ = manuscript.write_table("fid_steps", table)
_ = manuscript.write_variables("prior_training", {
    "PriorProfile": P.name,
    "PriorParamsM": round(n_params / 1e6, 2),
    "PriorTrainSteps": P.train_steps,
    "PriorBatch": P.batch_size,
    "PriorTrainMinutes": round(log[-1]["elapsed_s"] / 60, 1),
    "PriorFIDFirst": ev.fids[steps[0]],
    "PriorFIDFinal": ev.fids[steps[-1]],
    "PriorFIDFloor": ev.floor,
    "PriorFIDChange": delta,
    "PriorFIDChangeSD": delta_sd,
    "PriorFIDSamples": ev.n,
    "PriorEncoderRsq": float(np.nanmean(list(ev.encoder.holdout_r2.values()))),
})
print(table)

# %% [markdown]
# ## Samples next to training images

# %%
final = ev.samples[steps[-1]][:8]
shown = torch.cat([unstretch(ev.x_train[:8], P.asinh_a), unstretch(final, P.asinh_a)])
fig = plotting.galaxy_grid(shown, ncols=8,
                           titles=["training"] * 8 + [f"sample, step {steps[-1]}"] * 8)
fig.suptitle(f"training images (top) and prior samples (bottom), profile {P.name}", fontsize=9)
_ = plotting.save_figure(fig, "prior_samples")

# %% [markdown]
# ## Mode collapse: UMAP of training images and samples
#
# One UMAP is fitted to the galaxy-encoder features of the training images and of the
# samples of the earliest and the final snapshot, in 2D and in 3D as in the paper.
# "Coverage" is the fraction of training points with a sample inside their 5-nearest-
# neighbour radius: a collapsed model covers few of them.

# %%
for dim in (2, 3):
    embs = umap_check.umap_embedding(
        [ev.train_features, ev.sample_features[steps[0]], ev.sample_features[steps[-1]]],
        n_components=dim, seed=P.seed)
    fig = plotting.umap_figure(
        embs[0], {f"step {steps[0]}": embs[1], f"step {steps[-1]}": embs[2]},
        title=f"UMAP ({dim}D) of {fid.FEATURE_LABEL}: training (grey) vs samples, profile {P.name}")
    plotting.mark_synthetic(fig)
    plotting.save_figure(fig, f"prior_umap_{dim}d")
