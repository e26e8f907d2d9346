"""The notebook pipeline's conventions (the notebooks themselves run under nbval)."""

import json

import pytest

from diffdecon import paths, pipeline

SOURCES = pipeline.notebook_sources()


def test_there_are_notebooks():
    assert SOURCES, f"no notebook sources in {paths.NOTEBOOKS}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_pair_exists_and_parameters_cell(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{source.name} has no paired {ipynb.name}: run `make sync`"
    nb = json.loads(ipynb.read_text())
    assert "py:percent" in nb["metadata"]["jupytext"]["formats"]
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    code = "".join(tagged[0]["source"])
    namespace: dict = {}
    exec(compile(code, "parameters", "exec"), {}, namespace)  # literals only: no imports needed
    assert namespace.get("profile") in ("smoke", "quick", "paper")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_matches_its_source(source):
    import jupytext

    py = jupytext.read(source)
    nb = jupytext.read(source.with_suffix(".ipynb"))
    # papermill's injected-parameters cell (stored quick-profile outputs) is no part of the source
    cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    strip = lambda cells: [(c.cell_type, c.source.strip()) for c in cells]  # noqa: E731
    assert strip(py.cells) == strip(cells), f"{source.name} and its .ipynb differ: run `make sync`"
