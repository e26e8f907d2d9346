"""The code map of the README and the module table of docs/design.md name every module."""

from __future__ import annotations

import pytest

from diffdecon import paths

PACKAGE = paths.ROOT / "src" / "diffdecon"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") + ["plotting"]


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md"])
def test_every_module_is_documented(doc):
    text = (paths.ROOT / doc).read_text()
    missing = [m for m in MODULES if f"`{m}`" not in text]
    assert not missing, f"{doc} does not name the module(s) {missing}: add them to its code map"
