"""Every path the project uses, from one place.

Nothing in the package or the notebooks builds a path from the working directory:
they all come from here, so a notebook gives the same result wherever it is run.

Environment variables
---------------------
DIFFDECON_ROOT
    The project checkout (default: three levels above this file, i.e. the repository
    root of an editable install).
DIFFDECON_DATA
    Where the real observations live (default: ``<root>/data/external``, which is
    where ``make data`` downloads them). Layout below it:
    ``hsc_pdr3_cosmos/<target>/{cutout-HSC-*.fits, psf-calexp-*.fits, *.csv, HST-*.fits}``.
    In development and CI it points at ``../shared/data``.
DIFFDECON_CACHE
    Where built datasets and other expensive intermediate products are cached
    (default: ``<root>/data/cache``).
DIFFDECON_PAPER
    Where the notebooks write figures, tables and ``\\newcommand`` variables
    (default: ``<root>/paper``). The test suite points it at ``build/test-paper`` so
    that executing the notebooks under the smoke profile never overwrites the
    manuscript's quick-profile results.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


ROOT: Path = _env_path("DIFFDECON_ROOT", Path(__file__).resolve().parents[2])
"""The project checkout."""

NOTEBOOKS: Path = ROOT / "notebooks"
PAPER: Path = _env_path("DIFFDECON_PAPER", ROOT / "paper")
"""Output folder of the notebooks (figures, tables, variables)."""
FIGURES: Path = PAPER / "figures"
TABLES: Path = PAPER / "tables"
VARIABLES: Path = PAPER / "variables"
MANUSCRIPT: Path = ROOT / "paper"
"""The LaTeX sources (always in the checkout)."""
BUILD: Path = ROOT / "build"
MODELS: Path = ROOT / "models"
"""Committed checkpoints (``models/<profile>/``)."""
RESULTS: Path = ROOT / "results"
"""Benchmark results (``make bench``)."""
CHECKSUMS: Path = ROOT / "data" / "checksums"
"""Committed SHA-256 checksums of the public data files."""


def data_dir() -> Path:
    """Root of the real observations (``$DIFFDECON_DATA``, default ``<root>/data/external``)."""
    return _env_path("DIFFDECON_DATA", ROOT / "data" / "external")


def hsc_dir() -> Path:
    """Folder holding one sub-folder per HSC target (``<data_dir>/hsc_pdr3_cosmos``)."""
    return data_dir() / "hsc_pdr3_cosmos"


def cache_dir() -> Path:
    """Cache of built datasets and intermediate products (``$DIFFDECON_CACHE``)."""
    return _env_path("DIFFDECON_CACHE", ROOT / "data" / "cache")


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is an existing folder, else raise a clear error.

    Raises
    ------
    FileNotFoundError
        Naming the folder, what it should hold and how to set it.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} not found: {path} does not exist or is not a folder. "
            "Set DIFFDECON_DATA to the folder holding 'hsc_pdr3_cosmos/' "
            "(e.g. export DIFFDECON_DATA=../shared/data), or run `make data`."
        )
    return path


def shown(path: str | os.PathLike) -> str:
    """``path`` as printed by the package: relative to the checkout, or under
    ``$DIFFDECON_DATA`` / ``$DIFFDECON_CACHE`` when it lies there.

    Printed messages end up in the committed notebooks; an absolute path would carry one
    machine's layout into the repository.
    """
    p = Path(path).expanduser().resolve()
    for base, name in ((cache_dir(), "$DIFFDECON_CACHE"), (data_dir(), "$DIFFDECON_DATA")):
        if p.is_relative_to(base) and not base.is_relative_to(ROOT):
            return f"{name}/{p.relative_to(base).as_posix()}" if p != base else name
    if p.is_relative_to(ROOT):
        return p.relative_to(ROOT).as_posix() or "."
    return str(path)
