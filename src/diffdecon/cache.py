"""Atomic writes and cached products with a manifest of their inputs.

A cached product is a file plus ``<file>.manifest.json`` recording what it was made
from. A lookup whose inputs differ from the manifest is refused (never silently
reused), and every lookup says loudly whether it was a cache hit or a recomputation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import paths
from .errors import DiffdeconError


class CacheMismatchError(DiffdeconError, RuntimeError):
    """A cached product exists but was made from other inputs than the ones asked for."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    A failed or interrupted write leaves any existing ``path`` untouched and no
    partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files: give the product the usual permissions (umask applied)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variation (for hashing)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_inputs(inputs: dict[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of ``inputs`` (16 hex digits)."""
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest that sits beside a cached product."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a cached product, or ``None`` if there is none."""
    m = manifest_path(path)
    return json.loads(m.read_text()) if m.exists() else None


def check_manifest(path: str | os.PathLike, inputs: dict[str, Any]) -> bool:
    """True if ``path`` exists with a manifest recording exactly ``inputs``.

    Raises
    ------
    CacheMismatchError
        If the product exists but its manifest records other inputs: the keys that
        differ are named. Delete the file (or pass ``force``) to rebuild it.
    """
    path = Path(path)
    if not path.exists():
        return False
    manifest = read_manifest(path)
    if manifest is None:
        raise CacheMismatchError(f"{path} exists but has no manifest; delete it to rebuild")
    recorded = manifest.get("inputs", {})
    if canonical_json(recorded) != canonical_json(json.loads(canonical_json(inputs))):
        keys = sorted(set(recorded) | set(inputs))
        diff = [k for k in keys if canonical_json(recorded.get(k)) != canonical_json(inputs.get(k))]
        raise CacheMismatchError(
            f"{path} was built from other inputs (differing: {', '.join(diff)}); "
            "delete it or rebuild with force=True"
        )
    return True


def write_manifest(path: str | os.PathLike, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Write the manifest of ``path`` atomically and return it."""
    manifest = {"inputs": json.loads(canonical_json(inputs)), "inputs_hash": hash_inputs(inputs), **extra}
    atomic_write_text(manifest_path(path), json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def cached(
    path: str | os.PathLike,
    inputs: dict[str, Any],
    build: Callable[[Path], None],
    *,
    force: bool = False,
    what: str = "product",
) -> Path:
    """Return ``path``, building it with ``build(tmp_path)`` unless a matching cache exists.

    ``build`` writes the product to the temporary path it is given; the product and its
    manifest are then moved into place atomically. Prints ``cache hit`` or
    ``recomputed`` with the path.
    """
    path = Path(path)
    if not force and check_manifest(path, inputs):
        print(f"[diffdecon] cache hit: {what} {paths.shown(path)}")
        return path
    with atomic_path(path) as tmp:
        build(tmp)
    write_manifest(path, inputs)
    print(f"[diffdecon] recomputed: {what} {paths.shown(path)}")
    return path
