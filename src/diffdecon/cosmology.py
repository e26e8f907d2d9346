"""Cosmology and geometry of an observation: the angular scale at redshift z, the observed
size m(z, p) of the model field, and the side of the observation window around it.

``m(z, p) = image_size * pixel_scale_kpc * arcsec_per_kpc(z) / p`` [obs px]: the model field
(``image_size`` px of ``pixel_scale_kpc`` proper kpc) seen at redshift ``z`` through
observation pixels of ``p`` arcsec. The window the likelihood uses adds
:data:`WINDOW_MARGIN` pixels on each side of it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import HSC_PIXEL_SCALE
from .errors import InputValueError

__all__ = ["MIN_OBSERVED_SIZE", "WINDOW_MARGIN", "arcsec_per_kpc", "observed_size", "window_side",
           "check_z", "check_positive", "check_size"]

MIN_OBSERVED_SIZE: float = 8.0
"""Smallest accepted observed size m(z, p) of the model field [obs px].

Below about 8 observation pixels the whole model image collapses into a few HSC pixels
(smaller than the HSC PSF FWHM of about 4 px): the observation carries almost no
information about the galaxy's structure and the inverse problem is meaningless."""


def _accepted_cosmologies() -> tuple[str, ...]:
    from astropy.cosmology import realizations

    return tuple(realizations.available)


def _get_cosmology(cosmology: Any):
    """Resolve ``cosmology`` (a name of an astropy built-in realisation or an instance)."""
    from astropy.cosmology import Cosmology

    if isinstance(cosmology, Cosmology):
        return cosmology
    accepted = _accepted_cosmologies()
    if isinstance(cosmology, str) and cosmology in accepted:
        import astropy.cosmology

        return getattr(astropy.cosmology, cosmology)
    raise ValueError(
        f"unknown cosmology {cosmology!r}; accepted: an astropy.cosmology.Cosmology "
        f"instance or one of the built-in realisations {', '.join(accepted)}"
    )


def check_z(z: Any) -> float:
    """``z`` as a float; :class:`InputValueError` unless it is a finite redshift > 0."""
    return check_positive("z", z, accepted="z > 0 (a finite redshift)")


def check_positive(name: str, value: Any, unit: str = "", accepted: str | None = None) -> float:
    """``value`` as a float; :class:`InputValueError` naming ``name`` unless it is a finite
    number > 0 [``unit``] (``accepted`` overrides the description of what is accepted)."""
    accepted = accepted or f"finite and > 0 [{unit}]"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputValueError(name, value, accepted, reason="not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise InputValueError(name, value, accepted)
    return v


def check_size(name: str, value: Any) -> int:
    """``value`` as an int; ValueError naming ``name`` unless a positive integer [px]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"invalid {name}={value!r}; accepted: a positive integer [px]")
    return int(value)


def arcsec_per_kpc(z: float, cosmology: Any = "Planck15") -> float:
    """Angular size of one proper kpc at redshift ``z`` [arcsec/kpc].

    Parameters
    ----------
    z : float
        Redshift, > 0.
    cosmology : str or astropy.cosmology.Cosmology
        A built-in astropy realisation by name (``"Planck15"`` as in the reference code,
        ``"Planck18"``, ``"WMAP9"``, ...) or a ``Cosmology`` instance.

    Raises
    ------
    ValueError
        If ``z`` is not finite and > 0, or ``cosmology`` is not accepted.
    """
    zf = check_z(z)
    cosmo = _get_cosmology(cosmology)
    return float(cosmo.arcsec_per_kpc_proper(zf).value)


def observed_size(
    z: float,
    image_size: int,
    pixel_scale_kpc: float,
    pixel_scale_arcsec: float = HSC_PIXEL_SCALE,
    cosmology: Any = "Planck15",
) -> float:
    """Observed size m(z, p) of the model field [obs px].

    ``m = image_size * pixel_scale_kpc * arcsec_per_kpc(z) / pixel_scale_arcsec``:
    the angular size of the model field (``image_size`` px of ``pixel_scale_kpc`` proper
    kpc) at redshift ``z``, in observation pixels of ``pixel_scale_arcsec`` arcsec.
    The paper's configuration (256 px, 0.4 kpc/px, p = 0.168 arcsec/px, Planck15) gives
    m = 82.9 at z = 0.7, m = 80 at z = 0.769 (z = 0.744 with p = 0.17) and m = 77.5 at
    z = 0.8463: an upsampling factor ``image_size / m`` above 3 where the paper reports
    hallucinations ("m < 80 at z > 0.7" in the paper is a rounded statement). Beyond
    z ~ 1.6 the angular size of a fixed proper length grows again, so m is not monotonic.

    Raises
    ------
    ValueError
        If ``z`` is not finite and > 0, a size or scale is not positive, or
        ``m < MIN_OBSERVED_SIZE``.
    """
    zf = check_z(z)
    n = check_size("image_size", image_size)
    s_kpc = check_positive("pixel_scale_kpc", pixel_scale_kpc, "kpc/px")
    p = check_positive("pixel_scale_arcsec", pixel_scale_arcsec, "arcsec/px")
    m = n * s_kpc * arcsec_per_kpc(zf, cosmology) / p
    if m < MIN_OBSERVED_SIZE:
        raise ValueError(
            f"at z={zf:g} the model field ({n} px of {s_kpc:g} kpc) is only m={m:.3g} "
            f"observation pixels of {p:g} arcsec wide; accepted: m >= MIN_OBSERVED_SIZE="
            f"{MIN_OBSERVED_SIZE:g} obs px (lower z or a larger field)"
        )
    return float(m)


WINDOW_MARGIN: int = 4
"""Pixels added on each side of the model field m(z, p) to make the observation window
[obs px]: the light the PSF (FWHM about 4 HSC px) scatters out of the model field."""


def window_side(m: float, margin: int = WINDOW_MARGIN) -> int:
    """Side ``n = ceil(m) + 2 margin`` [obs px] of the observation window around a model
    field of ``m`` obs px (:func:`observed_size`), ``margin`` an integer >= 0 [obs px]."""
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin={margin!r}; accepted: an integer >= 0 [obs px]")
    return int(math.ceil(m)) + 2 * int(margin)
