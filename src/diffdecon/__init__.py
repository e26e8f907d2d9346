"""diffdecon: Bayesian deconvolution of galaxy images with diffusion-model priors.

The package is organised in floors, imports pointing down (see README, "Code map"):
physics, posterior, config, paths at the base; galaxies, data, prior, samplers in the
core; training, targets, calibration in the sections; cli at the top.
"""

__version__ = "0.1.0"
