"""The error family: every exception class of the package derives from DiffdeconError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import diffdecon
from diffdecon.errors import DataError, DiffdeconError, DivergenceError, InputValueError


def _exception_classes():
    found = {}
    for info in pkgutil.walk_packages(diffdecon.__path__, "diffdecon."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("diffdecon"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_of_the_package_is_a_diffdecon_error():
    classes = _exception_classes()
    assert "diffdecon.errors.DivergenceError" in classes and len(classes) >= 8
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, DiffdeconError))
    assert not outside, f"exception classes outside the family: {outside}"


def test_one_divergence_error_under_its_old_names():
    from diffdecon import samplers, targets

    assert samplers.SamplerDivergenceError is DivergenceError is targets.DeconvolutionError
    err = DivergenceError(3, 899, 2, 4, "mmps")
    assert (err.step, err.t, err.n_bad, err.n, err.sampler) == (3, 899, 2, 4, "mmps")
    assert "mmps: 2 of 4 samples became non-finite" in str(err) and "at step 3 (diffusion time t=899)" in str(err)
    after = DivergenceError(None, None, 1, 2, "dps", max_abs=31.0, threshold=10.0, context="mock")
    assert str(after).startswith("mock: dps: 1 of 2") and "|x| <= 10" in str(after) and "up to 31" in str(after)
    assert str(DivergenceError("forced")) == "forced" and isinstance(after, FloatingPointError)
    with pytest.raises(TypeError, match="step, t, n_bad, n, sampler"):
        DivergenceError(1, 2)


def test_input_value_error_carries_the_value_and_what_is_accepted():
    err = InputValueError("sampler", "langevin", "mmps, dps", reason="unknown", context="test1")
    assert (err.name, err.value, err.accepted) == ("sampler", "langevin", "mmps, dps")
    assert str(err) == "test1: sampler='langevin'; accepted: mmps, dps (unknown)"
    assert isinstance(err, ValueError) and isinstance(DataError("x"), ValueError)
