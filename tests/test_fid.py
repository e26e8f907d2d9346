"""Frechet distance against closed forms; feature extractors' fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffdecon import fid, manuscript


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


def test_paired_bootstrap_keeps_the_pairing():
    """Identical paired sets differ by exactly 0 in every replicate; a set shifted by a
    known mean offset (per dimension 0.5, D = 4, so FID ~ 4 * 0.25 = 1 above the other)
    stays above it in every replicate; the spread of the difference is far below the spread
    of each FID (pairing removes the common noise of the reference and sample draws)."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(400, 4))
    a = rng.normal(size=(300, 4))
    b = a + 0.5
    bs = fid.paired_bootstrap_fid(ref, [a, a.copy(), b], n_boot=60, seed=1)
    assert bs.shape == (60, 3)
    np.testing.assert_array_equal(bs[:, 0], bs[:, 1])
    d = bs[:, 2] - bs[:, 0]
    assert np.all(d > 0)
    assert abs(np.median(d) - 1.0) < 0.3  # ||0.5 1||^2 = 1 (tolerance: sampling noise of 300 rows)
    # same seed, same replicates; another seed, other replicates
    np.testing.assert_array_equal(bs, fid.paired_bootstrap_fid(ref, [a, a.copy(), b], n_boot=60, seed=1))
    assert not np.array_equal(bs, fid.paired_bootstrap_fid(ref, [a, a.copy(), b], n_boot=60, seed=2))


def test_paired_bootstrap_rejects_unpaired_sets():
    ref = np.zeros((10, 3)) + np.arange(10)[:, None]
    with pytest.raises(ValueError, match="paired sets need the same rows"):
        fid.paired_bootstrap_fid(ref, [np.ones((8, 3)), np.ones((9, 3))])
    with pytest.raises(ValueError, match="feature dimension"):
        fid.paired_bootstrap_fid(ref, [np.ones((8, 2))])
    with pytest.raises(ValueError, match="sets is empty"):
        fid.paired_bootstrap_fid(ref, [])
    with pytest.raises(ValueError, match="n_boot"):
        fid.paired_bootstrap_fid(ref, [np.ones((8, 3))], n_boot=1)


def test_fid_table_rows_and_fall_criterion():
    steps = [2400, 3000, 3600, 4200]  # quick profile's snapshots (4/7 .. 1 of 4200)
    fids = dict(zip(steps, [7.0, 6.8, 6.7, 6.5]))
    sd = {s: 1.0 for s in steps}
    change = {s: (fids[s] - 7.0, 0.1) for s in steps}
    rows = manuscript.fid_table_rows("quick", fids, 0.4, sd, change)
    assert [r[3] for r in rows[:4]] == steps and rows[0][6] == "" and rows[3][6] == r"-0.500 $\pm$ 0.100"
    assert rows[-1][:5] == ["floor", "", "", "", 0.4] and len(rows[-1]) == len(rows[0]) == 7
    assert len(manuscript.fid_table_rows("quick", fids, 0.4)[0]) == 5
    ev = SimpleNamespace(steps=steps, change=change)
    assert fid.PriorEvaluation.falls(ev, 2.0)  # 0.5 > 2 x 0.1
    assert not fid.PriorEvaluation.falls(ev, 6.0)  # 0.5 < 6 x 0.1
