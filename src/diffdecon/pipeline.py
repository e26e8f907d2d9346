"""The notebook pipeline: Jupytext sources -> papermill execution -> ``paper/``.

Each section of the paper is a Jupytext ``py:percent`` notebook in ``notebooks/``
paired with its ``.ipynb``. This module syncs a pair, executes the notebook with
papermill under a profile into ``build/notebooks/<profile>/`` (atomically: a failed run
leaves the previous result in place), and can store the executed quick-profile notebook
back as the committed ``.ipynb`` so that readers see real results.

Command line::

    python -m diffdecon.pipeline run notebooks/02_tng_hsc_validation.py --profile quick
    python -m diffdecon.pipeline run-all --profile quick [--store]
    python -m diffdecon.pipeline sync
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import paths
from .cache import atomic_path
from .config import PROFILES, get_profile

KERNEL = "python3"
"""papermill always runs the ``python3`` kernel, i.e. the interpreter running papermill."""


def notebook_sources() -> list[Path]:
    """The notebook sources ``notebooks/NN_*.py``, in section order."""
    return sorted(p for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def sync(source: Path) -> Path:
    """Update the ``.ipynb`` twin of a ``py:percent`` source from it (outputs are kept)."""
    import jupytext

    source = Path(source)
    if source.suffix != ".py":
        raise ValueError(f"expected a py:percent notebook source, got {source}")
    ipynb = source.with_suffix(".ipynb")
    nb = jupytext.read(source)
    if ipynb.exists():
        # keep the stored outputs of cells whose source did not change
        from jupytext.combine import combine_inputs_with_outputs

        old = jupytext.read(ipynb)
        nb = combine_inputs_with_outputs(nb, old)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": KERNEL})
    with atomic_path(ipynb) as tmp:
        jupytext.write(nb, tmp, fmt="ipynb")
    return ipynb


def executed_path(source: Path, profile: str) -> Path:
    """Where the executed notebook of ``source`` under ``profile`` is written."""
    return paths.BUILD / "notebooks" / profile / (Path(source).stem + ".ipynb")


def _relative_papermill_paths(executed: Path, source: Path, out: Path) -> None:
    """Record papermill's input and output paths relative to the checkout (it writes the
    absolute paths of the machine that ran it, and the temporary file's name)."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    meta = nb.metadata.get("papermill")
    if meta is None:
        return
    meta["input_path"] = paths.shown(source)
    meta["output_path"] = paths.shown(out)
    nbformat.write(nb, str(executed))


def run(source: Path, profile: str = "quick", store: bool = False) -> Path:
    """Execute one notebook with papermill under ``profile``; return the executed notebook.

    Parameters
    ----------
    source : path
        ``notebooks/NN_name.py`` (or its ``.ipynb``).
    profile : str
        ``smoke``, ``quick`` or ``paper``; injected as the ``profile`` parameter.
    store : bool
        Also copy the executed notebook over the committed ``.ipynb`` (used for the
        quick profile, whose outputs are the ones committed).
    """
    import os

    import papermill

    profile = get_profile(profile).name
    source = Path(source).with_suffix(".py")
    if not source.exists():
        raise FileNotFoundError(f"notebook source {source} not found; sources: {[p.name for p in notebook_sources()]}")
    ipynb = sync(source)
    out = executed_path(source, profile)
    # the injected parameter decides: an inherited override would silently change the profile
    env_profile = os.environ.pop("DIFFDECON_PROFILE", None)
    print(f"[diffdecon] executing {source.name} under profile {profile!r} ...", flush=True)
    start = time.perf_counter()
    try:
        with atomic_path(out) as tmp:
            papermill.execute_notebook(
                str(ipynb), str(tmp), parameters={"profile": profile}, kernel_name=KERNEL,
                cwd=str(paths.NOTEBOOKS), progress_bar=False, log_output=False,
            )
            _relative_papermill_paths(tmp, ipynb, out)
    finally:
        if env_profile is not None:
            os.environ["DIFFDECON_PROFILE"] = env_profile
    elapsed = time.perf_counter() - start
    print(f"[diffdecon] {source.name}: {elapsed:.1f} s -> {out.relative_to(paths.ROOT)}", flush=True)
    if store:
        shutil.copyfile(out, ipynb)
        print(f"[diffdecon] stored executed outputs in {ipynb.relative_to(paths.ROOT)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffdecon.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute one notebook")
    p_run.add_argument("notebook", type=Path)
    p_all = sub.add_parser("run-all", help="execute every notebook in order")
    for p in (p_run, p_all):
        p.add_argument("--profile", default="quick", choices=list(PROFILES))
        p.add_argument("--store", action="store_true", help="store outputs in the committed .ipynb")
    sub.add_parser("sync", help="update every .ipynb from its .py source")
    args = parser.parse_args(argv)
    if args.command == "sync":
        for src in notebook_sources():
            print(f"synced {sync(src).relative_to(paths.ROOT)}")
    elif args.command == "run":
        run(args.notebook, args.profile, args.store)
    else:
        for src in notebook_sources():
            run(src, args.profile, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
