"""The exceptions of diffdecon: one family under :class:`DiffdeconError`.

Every exception the package raises on purpose derives from :class:`DiffdeconError`, so a
caller can catch all of them at once; each also derives from the builtin exception it
specialises (``ValueError``, ``RuntimeError``, ``FloatingPointError``, ...), so code that
catches the builtin keeps working. Errors about an input carry the offending value and
what would have been accepted (as GalSim's ``GalSimValueError`` does).

=========================  ===================================  =============================
class                      builtin base                         raised when
=========================  ===================================  =============================
:class:`DiffdeconError`    ``Exception``                        (base of all below)
:class:`InputValueError`   ``ValueError``                       an argument is out of range
:class:`DivergenceError`   ``FloatingPointError``               a sampler's samples blew up
:class:`DataError`         ``ValueError``                       a data file is missing/malformed
=========================  ===================================  =============================

Module-specific errors (``download.DataDownloadError``,
``cache.CacheMismatchError``, ``training.CheckpointMismatchError``, ``cli.CLIError``, ...)
live beside the code that raises them and derive from :class:`DiffdeconError` too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffdeconError", "InputValueError", "DivergenceError", "DataError"]


class DiffdeconError(Exception):
    """Base class of every exception raised by diffdecon on purpose."""


class InputValueError(DiffdeconError, ValueError):
    """An argument has a value that is not accepted.

    The message reads ``"<name>=<value!r>; accepted: <accepted>"``, preceded by ``context``
    (e.g. the target's name) and followed by ``reason`` when given.

    Attributes
    ----------
    name : str
        The argument's name.
    value : object
        The value that was passed.
    accepted : str
        What would have been accepted (a range, a list of choices, a shape, with units).
    """

    def __init__(self, name: str, value: Any, accepted: str, *, reason: str = "", context: str = ""):
        self.name, self.value, self.accepted = name, value, accepted
        text = f"{name}={value!r}; accepted: {accepted}"
        if reason:
            text = f"{text} ({reason})"
        super().__init__(f"{context}: {text}" if context else text)


class DivergenceError(DiffdeconError, FloatingPointError):
    """Samples of a sampler became non-finite or left the accepted range: it diverged.

    Raised by the samplers while sampling (with the step and diffusion time at which it was
    seen) and by :func:`diffdecon.deconvolution.deconvolve` on the finished samples (step
    and time None). One class for both, so a caller catches divergence in one place.

    Attributes
    ----------
    step : int or None
        Index of the sampling step (0 = first, noisiest) at which it was detected.
    t : int or None
        Diffusion time index of that step.
    n_bad, n : int
        Diverged samples and samples of the batch.
    sampler : str
        Name of the sampler.
    max_abs : float or None
        The largest |x| [prior space] among the samples, when known.
    """

    def __init__(self, *args: Any, max_abs: float | None = None, threshold: float | None = None,
                 context: str = "",
                 hint: str = "lower the guidance scale (zeta), use more steps or check the prior "
                             "checkpoint; the samplers also accept on_divergence='mask' to keep "
                             "the finite samples"):
        if len(args) == 1:  # a ready message, e.g. DivergenceError("forced divergence")
            self.step = self.t = self.n_bad = self.n = None
            self.sampler, self.max_abs = "", max_abs
            super().__init__(f"{context}: {args[0]}" if context else str(args[0]))
            return
        if len(args) != 5:
            raise TypeError("DivergenceError(message) or DivergenceError(step, t, n_bad, n, sampler)")
        step, t, n_bad, n, sampler = args
        self.step, self.t, self.n_bad, self.n, self.sampler, self.max_abs = step, t, n_bad, n, sampler, max_abs
        where = f" at step {step} (diffusion time t={t})" if step is not None else ""
        limit = f" |x| <= {threshold:g}" if threshold is not None else " the divergence threshold"
        seen = f" (prior-space values up to {max_abs:.3g})" if max_abs is not None else ""
        text = (f"{sampler}: {n_bad} of {n} samples became non-finite or left{limit}{where}{seen}; "
                f"the sampler diverged: {hint}")
        super().__init__(f"{context}: {text}" if context else text)


class DataError(DiffdeconError, ValueError):
    """A data file is missing, malformed or inconsistent (the message names the file)."""
