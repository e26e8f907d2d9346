"""numpy <-> torch conversions used across the package (one set, so every module treats
tensors on any device and arrays alike)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_numpy", "to_tensor", "like_input"]


def to_numpy(a, dtype=np.float64, name: str | None = None) -> np.ndarray:
    """A numpy array of ``dtype`` (default float64) from a numpy array, a number or a torch
    tensor (detached, moved to the CPU). With ``name``, non-finite values raise a
    ``ValueError`` naming the argument."""
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    out = np.asarray(a, dtype=dtype)
    if name is not None and not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains non-finite values; accepted: finite values")
    return out


def to_tensor(a) -> tuple[torch.Tensor, bool]:
    """``(tensor, was_tensor)``: a tensor input detached as it is, anything else as a float64
    tensor; ``was_tensor`` lets :func:`like_input` give the result back in the caller's kind."""
    if torch.is_tensor(a):
        return a.detach(), True
    return torch.as_tensor(np.asarray(a, dtype=np.float64)), False


def like_input(t: torch.Tensor, was_tensor: bool):
    """``t`` as a tensor when the input was one, else as a numpy array (see :func:`to_tensor`)."""
    return t if was_tensor else t.cpu().numpy()
