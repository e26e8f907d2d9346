import json

import numpy as np
import pytest

from diffdecon import cache


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    cache.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with cache.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left


def test_cached_hit_recompute_and_mismatch(tmp_path, capsys):
    calls = []

    def build(tmp):
        calls.append(1)
        np.save(tmp, np.arange(3))

    target = tmp_path / "a.npy"
    inputs = {"n": 3, "seed": 1}
    cache.cached(target, inputs, lambda t: build(t) or None, what="array")
    assert "recomputed" in capsys.readouterr().out
    cache.cached(target, inputs, build, what="array")
    assert "cache hit" in capsys.readouterr().out
    assert len(calls) == 1
    manifest = json.loads(cache.manifest_path(target).read_text())
    assert manifest["inputs"] == inputs
    with pytest.raises(cache.CacheMismatchError, match="seed"):
        cache.cached(target, {"n": 3, "seed": 2}, build)
    cache.cached(target, {"n": 3, "seed": 2}, build, force=True)
    assert len(calls) == 2


def test_failed_build_keeps_cached_product(tmp_path):
    target = tmp_path / "a.txt"
    cache.cached(target, {"v": 1}, lambda t: t.write_text("one"))

    def broken(t):
        t.write_text("partial")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        cache.cached(target, {"v": 2}, broken, force=True)
    assert target.read_text() == "one"
    assert cache.read_manifest(target)["inputs"] == {"v": 1}


def test_hash_is_order_independent():
    assert cache.hash_inputs({"a": 1, "b": 2}) == cache.hash_inputs({"b": 2, "a": 1})
    assert cache.hash_inputs({"a": 1}) != cache.hash_inputs({"a": 2})
