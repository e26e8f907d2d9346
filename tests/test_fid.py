"""Frechet distance against closed forms; feature extractors' fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffdecon import fid


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads are several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2 exactly.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)  # float64 sqrtm of a diagonal: round-off only


def test_frechet_distance_rotated_and_commuting():
    # S2 = c^2 S1 commute with S1: tr(S1 + S2 - 2 sqrt(S1 S2)) = (1 - c)^2 tr(S1), any rotation.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    S1 = q @ np.diag([0.5, 1.0, 2.0, 4.0]) @ q.T
    c = 1.7
    got = fid.frechet_distance(np.zeros(4), S1, np.ones(4), c**2 * S1)
    assert got == pytest.approx(4.0 + (1 - c) ** 2 * np.trace(S1), rel=1e-8)
    assert fid.frechet_distance(np.zeros(4), S1, np.zeros(4), S1) == pytest.approx(0.0, abs=1e-8)


def test_fid_from_features_converges_to_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    # Exact: 3 * 1^2 + 3 * (1 - 2)^2 = 6; sampling error of 20000 draws is ~1e-2 relative.
    assert fid.fid_from_features(a, b) == pytest.approx(6.0, rel=0.03)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="expected"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        fid.gaussian_stats(np.zeros((1, 3)))


def test_inception_reports_why_unavailable():
    ok, why = fid.inception_available()
    assert isinstance(why, str) and why
    if not ok:
        with pytest.raises(RuntimeError, match="galaxy-encoder"):
            fid.inception_features(torch.zeros(1, 3, 32, 32))


def test_encoder_features_shape_and_catalog_targets():
    from diffdecon.galaxies import CATALOG_DTYPE

    cat = np.zeros(4, dtype=CATALOG_DTYPE)
    cat["disk_re_kpc"] = cat["bulge_re_kpc"] = 1.0
    cat["bulge_n"] = 4
    y = fid.catalog_targets(cat)
    assert y.shape == (4, len(fid.TARGET_FIELDS)) and np.isfinite(y).all()
    enc = fid.GalaxyEncoder()
    assert enc.features(torch.zeros(2, 3, 32, 32)).shape == (2, fid.FEATURE_DIM)


def test_galaxy_encoder_cached_and_floor(tmp_path, monkeypatch):
    from diffdecon import paths
    from diffdecon.galaxies import CATALOG_DTYPE

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path))
    rng = np.random.default_rng(3)
    cat = np.zeros(40, dtype=CATALOG_DTYPE)
    cat["disk_re_kpc"] = rng.uniform(1, 3, 40)
    cat["bulge_re_kpc"] = 1.0
    cat["g_r"] = rng.uniform(0, 1, 40)
    imgs = rng.random((40, 3, 32, 32)).astype(np.float32) * cat["g_r"][:, None, None, None].astype(np.float32) + 0.01
    ds = SimpleNamespace(images=imgs, catalog=cat, manifest_hash="t")
    enc = fid.galaxy_encoder("smoke", ds, steps=3, progress=False)
    assert enc.path.is_relative_to(paths.cache_dir()) and enc.path.exists()
    assert set(enc.holdout_r2) == set(fid.TARGET_FIELDS)
    again = fid.galaxy_encoder("smoke", ds, steps=3, progress=False)  # cache hit: same weights
    assert all(torch.equal(a, b) for a, b in zip(enc.model.parameters(), again.model.parameters()))
    x = torch.from_numpy(imgs) * 2 - 1
    floor = fid.training_floor(enc, x, 20, seed=0)
    assert np.isfinite(floor) and floor >= -1e-9
    with pytest.raises(ValueError, match="need 2 n"):
        fid.training_floor(enc, x, 21, seed=0)
