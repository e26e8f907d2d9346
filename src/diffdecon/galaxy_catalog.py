"""The catalogue of the synthetic galaxy universe: the parameters of each galaxy.

:func:`sample_params` draws them; :mod:`diffdecon.galaxies` draws the images.

Distributions (``sample_params``; sizes are half-light radii, colours are observed-frame
HSC colours typical of galaxies at z ~ 0.1-0.2; U = uniform, LN = lognormal by median
and sigma of ln):

================  ===========================================================  ========
quantity          distribution                                                 unit
================  ===========================================================  ========
i_mag             U(17.5, 21.0) total i-band magnitude (HSC coadd zero point 27)  AB mag
disk_re_kpc       LN(median 3.0, sigma_ln 0.35), clipped to [1, 6]               kpc
disk_h_over_r     U(0.08, 0.15) disk scale height / scale radius                 --
bulge_frac        Beta(1, 2.5): bulge-to-total (i band), mean 0.29               --
bulge_re_kpc      LN(median 1.0, sigma_ln 0.4), clipped to [0.3, min(3, 0.8 r_d)] kpc
bulge_n           uniform on {1.5, 2, 2.5, 3, 3.5, 4}                            --
bulge_q0          U(0.6, 0.9) intrinsic axis ratio                               --
cos_i             U(0, 1) (random orientation); inclination_deg = arccos         --
pa_deg            U(0, 180) position angle of the major axis from +x            deg
knot_frac         U(0.03, 0.2) x (1 - bulge_frac): knots' share of the total     --
n_knots           integers U[10, 60]                                             --
has_bar           p = 0.3 if bulge_frac < 0.6, else 0                            --
bar_frac          U(0.05, 0.15) of the total (i band), taken from the disk       --
bar_re_kpc        U(0.4, 0.8) x disk_re_kpc; bar_q U(0.2, 0.35); bar_n {0.5, 1}  kpc
has_arms          p = 0.6 if bulge_frac < 0.5, 0.2 if < 0.7, else 0              --
n_arms, pitch     2 (70%), 3 (20%), 4 (10%); pitch U(10, 30)                     deg
arm_amp, arm_s    U(0.3, 0.9) amplitude A; U(1, 4) sharpness s                   --
bulge g-r, r-i    N(0.85, 0.06) clipped [0.65, 1.05]; N(0.40, 0.04)              mag
disk g-r, r-i     bulge - U(0.20, 0.45); bulge - U(0.08, 0.20)                   mag
knot g-r, r-i     disk - U(0.20, 0.40); disk - U(0.05, 0.15)                     mag
bar g-r, r-i      bulge - 0.05; bulge - 0.02                                     mag
================  ===========================================================  ========

The resulting total colours (catalog ``g_r``, ``r_i``, flux-weighted) have medians of about
0.57 and 0.29 mag; ``MEDIAN_G_R_RANGE`` and ``MEDIAN_R_I_RANGE`` are the documented ranges
that the tests check. Fluxes are in HSC coadd units (:mod:`diffdecon.units`).
"""

from __future__ import annotations

import numpy as np

from .units import mag_to_flux

__all__ = ["CATALOG_DTYPE", "BULGE_N_GRID", "DISK_RE_MEDIAN_KPC", "BULGE_RE_MEDIAN_KPC", "MEDIAN_G_R_RANGE",
           "MEDIAN_R_I_RANGE", "sample_params", "component_fluxes", "band_weights"]

BULGE_N_GRID = np.array([1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
"""Allowed bulge Sersic indices (a grid, so that GalSim's Sersic tables are reused)."""

DISK_RE_MEDIAN_KPC = 3.0
BULGE_RE_MEDIAN_KPC = 1.0
MEDIAN_G_R_RANGE = (0.5, 0.8)
"""Documented range [mag] of the median total g - r of a catalog."""
MEDIAN_R_I_RANGE = (0.2, 0.4)
"""Documented range [mag] of the median total r - i of a catalog."""

CATALOG_DTYPE = np.dtype(
    [
        ("i_mag", "f8"), ("g_r", "f8"), ("r_i", "f8"),
        ("flux_g", "f8"), ("flux_r", "f8"), ("flux_i", "f8"),
        ("disk_re_kpc", "f8"), ("disk_h_over_r", "f8"),
        ("bulge_frac", "f8"), ("bulge_re_kpc", "f8"), ("bulge_n", "f8"), ("bulge_q0", "f8"),
        ("cos_i", "f8"), ("inclination_deg", "f8"), ("pa_deg", "f8"),
        ("knot_frac", "f8"), ("n_knots", "i8"), ("knot_seed", "i8"),
        ("has_bar", "?"), ("bar_frac", "f8"), ("bar_re_kpc", "f8"), ("bar_q", "f8"),
        ("bar_n", "f8"), ("bar_angle_deg", "f8"),
        ("has_arms", "?"), ("n_arms", "i8"), ("arm_pitch_deg", "f8"), ("arm_amp", "f8"),
        ("arm_sharpness", "f8"), ("arm_phase_deg", "f8"),
        ("bulge_g_r", "f8"), ("bulge_r_i", "f8"), ("disk_g_r", "f8"), ("disk_r_i", "f8"),
        ("knot_g_r", "f8"), ("knot_r_i", "f8"), ("bar_g_r", "f8"), ("bar_r_i", "f8"),
    ]
)
"""Fields of a catalog (one row per galaxy); units as in the module docstring."""


def band_weights(g_r, r_i) -> np.ndarray:
    """Flux in (g, r, i) per unit i-band flux for colours g - r, r - i [mag]."""
    f_r = 10.0 ** (-0.4 * np.asarray(r_i, dtype=np.float64))
    f_g = f_r * 10.0 ** (-0.4 * np.asarray(g_r, dtype=np.float64))
    return np.stack([f_g, f_r, np.ones_like(f_r)], axis=-1)


def component_fluxes(p) -> dict[str, float]:
    """i-band flux [HSC units] of each component of one catalog row."""
    f_i = float(mag_to_flux(p["i_mag"]))
    bulge = float(p["bulge_frac"]) * f_i
    bar = float(p["bar_frac"]) * f_i if p["has_bar"] else 0.0
    knots = float(p["knot_frac"]) * f_i
    disk = f_i - bulge - bar - knots
    return {"bulge": bulge, "disk": disk, "knots": knots, "bar": bar}


def sample_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` galaxies' parameters from the documented distributions.

    Parameters
    ----------
    rng : numpy.random.Generator
        Seeded generator (all randomness, including the knots' GalSim seed, comes from it).
    n : int
        Number of galaxies (>= 0).

    Returns
    -------
    numpy structured array of dtype :data:`CATALOG_DTYPE`, shape ``(n,)``. Sizes in kpc,
    angles in degrees, magnitudes/colours in AB mag, fluxes in HSC coadd units.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    n = int(n)
    c = np.zeros(n, dtype=CATALOG_DTYPE)
    _sample_disk_and_bulge(rng, n, c)
    _sample_bar_and_arms(rng, n, c)
    _sample_colours(rng, n, c)
    _fill_totals(c)
    return c


def _sample_disk_and_bulge(rng: np.random.Generator, n: int, c: np.ndarray) -> None:
    """Magnitude, disk, bulge, orientation and knots of ``n`` rows of ``c`` (in place)."""
    c["i_mag"] = rng.uniform(17.5, 21.0, n)
    c["disk_re_kpc"] = np.clip(DISK_RE_MEDIAN_KPC * np.exp(0.35 * rng.standard_normal(n)), 1.0, 6.0)
    c["disk_h_over_r"] = rng.uniform(0.08, 0.15, n)
    bt = rng.beta(1.0, 2.5, n)
    c["bulge_frac"] = bt
    bre = BULGE_RE_MEDIAN_KPC * np.exp(0.4 * rng.standard_normal(n))
    c["bulge_re_kpc"] = np.clip(bre, 0.3, np.minimum(3.0, 0.8 * c["disk_re_kpc"]))
    c["bulge_n"] = BULGE_N_GRID[rng.integers(0, len(BULGE_N_GRID), n)]
    c["bulge_q0"] = rng.uniform(0.6, 0.9, n)
    c["cos_i"] = rng.uniform(0.0, 1.0, n)
    c["inclination_deg"] = np.degrees(np.arccos(c["cos_i"]))
    c["pa_deg"] = rng.uniform(0.0, 180.0, n)
    c["knot_frac"] = rng.uniform(0.03, 0.2, n) * (1.0 - bt)
    c["n_knots"] = rng.integers(10, 61, n)
    c["knot_seed"] = rng.integers(1, 2**31 - 1, n)


def _sample_bar_and_arms(rng: np.random.Generator, n: int, c: np.ndarray) -> None:
    """Bar and spiral arms of ``n`` rows of ``c`` (in place; needs ``bulge_frac``, ``disk_re_kpc``)."""
    bt = c["bulge_frac"]
    # Bar: only where a disk dominates enough.
    c["has_bar"] = (rng.uniform(size=n) < 0.3) & (bt < 0.6)
    bar_frac = rng.uniform(0.05, 0.15, n)
    c["bar_frac"] = np.where(c["has_bar"], bar_frac, 0.0)
    c["bar_re_kpc"] = rng.uniform(0.4, 0.8, n) * c["disk_re_kpc"]
    c["bar_q"] = rng.uniform(0.2, 0.35, n)
    c["bar_n"] = np.where(rng.uniform(size=n) < 0.5, 0.5, 1.0)
    c["bar_angle_deg"] = rng.uniform(0.0, 180.0, n)
    # Spiral arms: likelier in disk-dominated galaxies.
    p_arms = np.where(bt < 0.5, 0.6, np.where(bt < 0.7, 0.2, 0.0))
    c["has_arms"] = rng.uniform(size=n) < p_arms
    c["n_arms"] = rng.choice([2, 3, 4], size=n, p=[0.7, 0.2, 0.1])
    c["arm_pitch_deg"] = rng.uniform(10.0, 30.0, n)
    c["arm_amp"] = rng.uniform(0.3, 0.9, n)
    c["arm_sharpness"] = rng.uniform(1.0, 4.0, n)
    c["arm_phase_deg"] = rng.uniform(0.0, 360.0, n)


def _sample_colours(rng: np.random.Generator, n: int, c: np.ndarray) -> None:
    """Per-component colours of ``n`` rows of ``c`` (in place)."""
    # Colours: bulge red, disk bluer, knots bluest, bar between bulge and disk.
    c["bulge_g_r"] = np.clip(rng.normal(0.85, 0.06, n), 0.65, 1.05)
    c["bulge_r_i"] = rng.normal(0.40, 0.04, n)
    c["disk_g_r"] = c["bulge_g_r"] - rng.uniform(0.20, 0.45, n)
    c["disk_r_i"] = c["bulge_r_i"] - rng.uniform(0.08, 0.20, n)
    c["knot_g_r"] = c["disk_g_r"] - rng.uniform(0.20, 0.40, n)
    c["knot_r_i"] = c["disk_r_i"] - rng.uniform(0.05, 0.15, n)
    c["bar_g_r"] = c["bulge_g_r"] - 0.05
    c["bar_r_i"] = c["bulge_r_i"] - 0.02


def _fill_totals(c: np.ndarray) -> None:
    """Set total fluxes ``flux_g/r/i`` and colours ``g_r``, ``r_i`` from the components."""
    f_i = mag_to_flux(c["i_mag"])
    bulge = c["bulge_frac"] * f_i
    bar = np.where(c["has_bar"], c["bar_frac"], 0.0) * f_i
    knots = c["knot_frac"] * f_i
    disk = f_i - bulge - bar - knots
    if np.any(disk < 0):
        bad = np.flatnonzero(disk < 0)
        raise ValueError(f"bulge_frac + bar_frac + knot_frac exceeds 1 for rows {bad.tolist()}")
    tot = (
        bulge[:, None] * band_weights(c["bulge_g_r"], c["bulge_r_i"])
        + disk[:, None] * band_weights(c["disk_g_r"], c["disk_r_i"])
        + knots[:, None] * band_weights(c["knot_g_r"], c["knot_r_i"])
        + bar[:, None] * band_weights(c["bar_g_r"], c["bar_r_i"])
    )
    c["flux_g"], c["flux_r"], c["flux_i"] = tot[:, 0], tot[:, 1], tot[:, 2]
    c["g_r"] = -2.5 * np.log10(tot[:, 0] / tot[:, 1])
    c["r_i"] = -2.5 * np.log10(tot[:, 1] / tot[:, 2])
