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
plotting.save_figure(fig, "fig1_forward_operator")
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
