"""Shared fixtures: seeded generators, the slow marker, real-data discovery."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator (seed 0): every random draw in a test goes through it."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    """Tests run on the CPU: CI has no GPU."""
    return torch.device("cpu")


@pytest.fixture
def hsc_root():
    """The real HSC data folder (``paths.hsc_dir()``); skips when it is absent."""
    from diffdecon import paths

    root = paths.hsc_dir()
    if not root.is_dir():
        pytest.skip(f"real HSC data not found at {root}: set DIFFDECON_DATA to the folder holding hsc_pdr3_cosmos/")
    return root
