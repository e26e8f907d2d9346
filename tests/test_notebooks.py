"""The notebook pipeline's conventions (the notebooks themselves run under nbval)."""

import json
import re

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


# An absolute path into a checkout, its cache or its models (as /home/u/diffdecon/data/cache/...)
_MACHINE_PATH = re.compile(r"(?<![\w$.])/(?:[\w.-]+/)+(?:data/cache|data/external|models|paper|build|notebooks)/")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_stored_notebook_carries_no_machine_paths(source):
    nb = json.loads(source.with_suffix(".ipynb").read_text())
    for key in ("input_path", "output_path"):
        value = nb["metadata"].get("papermill", {}).get(key)
        assert value is None or not value.startswith("/"), f"{source.stem}: papermill {key} {value!r} is absolute"
    for i, cell in enumerate(nb["cells"]):
        text = json.dumps(cell.get("outputs", []))
        hit = _MACHINE_PATH.search(text)
        assert hit is None, f"{source.stem} cell {i} prints a path of the machine that ran it: {hit.group(0)!r}"


def test_machine_path_pattern():
    assert _MACHINE_PATH.search("cache hit: x /home/u/diffdecon/data/cache/a.npy")
    assert _MACHINE_PATH.search("PosixPath('/srv/x/paper/figures/a.png')")
    assert not _MACHINE_PATH.search("cache hit: x data/cache/a.npy")
    assert not _MACHINE_PATH.search("cache hit: x $DIFFDECON_CACHE/a.npy")


def test_papermill_paths_made_relative(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/abs/x.ipynb", "output_path": "/abs/.x.tmp.ipynb"}
    executed = tmp_path / "x.ipynb"
    nbformat.write(nb, str(executed))
    pipeline._relative_papermill_paths(executed, paths.NOTEBOOKS / "01_a.ipynb", paths.BUILD / "notebooks" / "quick" / "01_a.ipynb")
    meta = nbformat.read(str(executed), as_version=4).metadata["papermill"]
    assert meta == {"input_path": "notebooks/01_a.ipynb", "output_path": "build/notebooks/quick/01_a.ipynb"}
