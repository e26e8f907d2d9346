"""Tests of the synthetic galaxy universe (diffdecon.galaxies) and its cached datasets."""

from __future__ import annotations

import json
import math

import galsim
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from diffdecon import cache, galaxies as G, galaxy_catalog as GC, plotting, units  # noqa: E402
from diffdecon.config import get_profile  # noqa: E402

SMOKE = get_profile("smoke")
QUICK = get_profile("quick")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _simple(rng, n, **overrides):
    """Catalog rows from the documented distributions with some fields overridden."""
    cat = GC.sample_params(rng, n)
    for k, v in overrides.items():
        cat[k] = v
    GC._fill_totals(cat)
    return cat


def test_draw_shape_dtype_finite_nonnegative():
    cat = GC.sample_params(np.random.default_rng(0), 6)
    for p in cat:
        im = G.draw_galaxy(p, SMOKE)
        assert im.shape == (3, SMOKE.image_size, SMOKE.image_size)
        assert im.dtype == np.float32
        assert np.all(np.isfinite(im)) and im.min() >= 0.0 and im.sum() > 0


def test_sample_params_deterministic_and_validated():
    a = GC.sample_params(np.random.default_rng(3), 50)
    b = GC.sample_params(np.random.default_rng(3), 50)
    c = GC.sample_params(np.random.default_rng(4), 50)
    assert np.array_equal(a, b)
    assert not np.array_equal(a["disk_re_kpc"], c["disk_re_kpc"])
    with pytest.raises(ValueError, match="non-negative integer"):
        GC.sample_params(np.random.default_rng(0), -1)
    with pytest.raises(TypeError, match="Generator"):
        GC.sample_params(0, 3)


def test_total_flux_matches_requested_magnitude():
    # Galaxies of 3 kpc disks and 1 kpc bulges (all other parameters random, incl. n = 4
    # bulges, bars, arms, knots, inclination). The image sum misses only the flux outside
    # the 38.4 kpc field (<= 0.8% for a 1 kpc n = 4 Sersic, ~3e-4 for the disk) plus GalSim's
    # relaxed folding/maxk errors (~1e-3): hence 1% on the i-band flux, i.e. 0.011 mag.
    rng = np.random.default_rng(11)
    cat = _simple(rng, 12, disk_re_kpc=3.0, bulge_re_kpc=1.0)
    for p in cat:
        im = G.draw_galaxy(p, SMOKE).astype(np.float64)
        f_i = im[2].sum()
        assert f_i == pytest.approx(units.mag_to_flux(p["i_mag"]), rel=0.01)
        assert units.flux_to_mag(f_i) == pytest.approx(p["i_mag"], abs=0.011)
        # Colours from the image equal the catalog's (components truncate alike to <1%).
        g_r = -2.5 * math.log10(im[0].sum() / im[1].sum())
        r_i = -2.5 * math.log10(im[1].sum() / im[2].sum())
        assert g_r == pytest.approx(p["g_r"], abs=0.01)
        assert r_i == pytest.approx(p["r_i"], abs=0.01)


def test_bulge_redder_than_disk_and_knots_bluest():
    cat = GC.sample_params(np.random.default_rng(5), 500)
    assert np.all(cat["bulge_g_r"] > cat["disk_g_r"]) and np.all(cat["disk_g_r"] > cat["knot_g_r"])
    assert np.all(cat["bulge_r_i"] > cat["disk_r_i"]) and np.all(cat["disk_r_i"] > cat["knot_r_i"])


def test_colour_distribution_as_documented():
    cat = GC.sample_params(np.random.default_rng(6), 2000)
    lo, hi = GC.MEDIAN_G_R_RANGE
    assert lo <= np.median(cat["g_r"]) <= hi
    lo, hi = GC.MEDIAN_R_I_RANGE
    assert lo <= np.median(cat["r_i"]) <= hi
    # Redder galaxies are bulge-dominated: the colour tracks B/T.
    assert np.corrcoef(cat["bulge_frac"], cat["g_r"])[0, 1] > 0.5


def _half_light_radius_kpc(img: np.ndarray, profile, total: float) -> float:
    """Radius [kpc] of the circle around the centre holding half of ``total`` (curve of growth)."""
    x, y = G._pixel_coords(profile)
    r = np.hypot(x, y).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order])
    return float(np.interp(0.5 * total, cum, r[order]))


def test_disk_size_distribution_as_documented():
    # Face-on pure exponential disks (no bulge, bar, arms or knots) drawn at the quick
    # profile's 0.6 kpc/px. The median of the image-measured half-light radii must be within
    # 10% of the documented median (3 kpc): with 300 lognormal draws (sigma_ln 0.35) the
    # sampling error of the median is ~2.5%, pixelisation of a 5 px radius a few %.
    rng = np.random.default_rng(7)
    cat = _simple(rng, 300, bulge_frac=0.0, knot_frac=0.0, has_bar=False, has_arms=False, cos_i=1.0)
    cat["inclination_deg"] = 0.0
    re = np.array([
        _half_light_radius_kpc(G.draw_components(p, QUICK)["disk"], QUICK, units.mag_to_flux(p["i_mag"]))
        for p in cat
    ])
    assert np.median(re) == pytest.approx(GC.DISK_RE_MEDIAN_KPC, rel=0.10)
    # Each galaxy matches its own catalog radius (pixelisation: 5% per galaxy in the median).
    assert np.median(np.abs(re / cat["disk_re_kpc"] - 1)) < 0.05


def test_knots_match_galsim_fft_drawing():
    # The closed-form pixel-integrated Gaussians equal GalSim's FFT drawing of
    # Convolve(RandomKnots, Gaussian); tolerance 2e-3 of the peak covers GalSim's default
    # FFT accuracy (folding / maxk thresholds 5e-3 / 1e-3).
    p = _simple(np.random.default_rng(8), 1, bulge_frac=0.0, has_bar=False, has_arms=False, cos_i=0.6)[0]
    mine = G.draw_components(p, QUICK)["knots"]
    flux = GC.component_fluxes(p)["knots"]
    prof = galsim.Exponential(half_light_radius=float(p["disk_re_kpc"]), flux=flux)
    knots = galsim.RandomKnots(int(p["n_knots"]), profile=prof, rng=galsim.BaseDeviate(int(p["knot_seed"])))
    knots = knots.transform(1.0, 0.0, 0.0, float(p["cos_i"])).rotate(float(p["pa_deg"]) * galsim.degrees)
    knots = knots.withFlux(flux)  # transform() scales the flux by det J
    sigma = G.KNOT_SIGMA_PX * QUICK.pixel_scale_kpc
    ref = galsim.Convolve(knots, galsim.Gaussian(sigma=sigma)).drawImage(
        nx=QUICK.image_size, ny=QUICK.image_size, scale=QUICK.pixel_scale_kpc).array
    assert np.abs(mine - ref).max() < 2e-3 * ref.max()


def test_arms_and_bar_change_the_disk_but_not_its_flux():
    p = _simple(np.random.default_rng(9), 1, bulge_frac=0.1, cos_i=0.9, has_arms=False, has_bar=False)[0]
    q = p.copy()
    q["has_arms"] = True
    plain, armed = G.draw_components(p, QUICK)["disk"], G.draw_components(q, QUICK)["disk"]
    assert armed.sum() == pytest.approx(plain.sum(), rel=1e-9)  # the arms redistribute light
    assert np.abs(armed - plain).max() > 0.05 * plain.max()
    q = p.copy()
    q["has_bar"], q["bar_frac"] = True, 0.1
    assert G.draw_components(q, QUICK)["bar"].sum() == pytest.approx(0.1 * units.mag_to_flux(p["i_mag"]), rel=0.01)


def test_build_dataset_deterministic_cached_and_splits(tmp_cache, capsys):
    a = G.build_dataset("smoke", n=12, seed=1, workers=1)
    out = capsys.readouterr().out
    assert "recomputed" in out
    assert a.images.shape == (12, 3, 32, 32) and a.images.dtype == np.float32 and len(a) == 12
    assert np.all(np.isfinite(a.images)) and a.images.min() >= 0
    assert a.path.parent == tmp_cache / "galaxies" and a.path.name.startswith("smoke-train-")
    m = a.manifest["inputs"]
    assert m["n"] == 12 and m["seed"] == 1 and m["split"] == "train" and m["pixel_scale_kpc"] == 1.2
    assert m["galsim"] == galsim.__version__ and m["generator"] == G.GENERATOR_VERSION
    assert a.manifest_hash == cache.hash_inputs(m)
    # The images are those of draw_galaxy for the catalog rows.
    assert np.array_equal(a.images[3], G.draw_galaxy(a.catalog[3], "smoke"))
    # Second call: a cache hit with identical data.
    b = G.build_dataset("smoke", n=12, seed=1, workers=1)
    assert "cache hit" in capsys.readouterr().out
    assert np.array_equal(a.images, b.images) and np.array_equal(a.catalog, b.catalog)
    # Forced rebuild reproduces it bit for bit.
    c = G.build_dataset("smoke", n=12, seed=1, workers=1, force=True)
    assert "recomputed" in capsys.readouterr().out and np.array_equal(np.asarray(a.images), c.images)
    # Another seed gives other images; the test split differs from train.
    d = G.build_dataset("smoke", n=12, seed=2, workers=1)
    t = G.build_dataset("smoke", n=12, seed=1, split="test", workers=1)
    assert not np.array_equal(a.images, d.images)
    assert t.path != a.path
    flat_a = a.images.reshape(12, -1)
    flat_t = t.images.reshape(12, -1)
    assert not any(np.array_equal(x, y) for x in flat_a for y in flat_t)


def test_build_dataset_independent_of_workers(tmp_cache, monkeypatch):
    # Three chunks (chunk size shrunk to 4 for speed, the same for both builds): 2 worker
    # processes give the same bytes as 1.
    monkeypatch.setattr(G, "CHUNK_SIZE", 4)
    n = 10
    one = np.array(G.build_dataset("smoke", n=n, seed=5, workers=1).images)
    two = G.build_dataset("smoke", n=n, seed=5, workers=2, force=True).images
    assert np.array_equal(one, two)


def test_mismatching_manifest_raises(tmp_cache):
    a = G.build_dataset("smoke", n=4, seed=0, workers=1)
    mpath = cache.manifest_path(a.path)
    manifest = json.loads(mpath.read_text())
    manifest["inputs"]["n"] = 5
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(cache.CacheMismatchError, match="n"):
        G.build_dataset("smoke", n=4, seed=0, workers=1)


def test_failed_build_leaves_no_file(tmp_cache, monkeypatch):
    def boom(task):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(G, "_draw_chunk", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        G.build_dataset("smoke", n=4, seed=0, workers=1)
    folder = tmp_cache / "galaxies"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        G.build_dataset("smoke", n=2, split="validation")
    with pytest.raises(ValueError, match="profile"):
        G.build_dataset("tiny", n=2)
    with pytest.raises(ValueError, match="n must be"):
        G.build_dataset("smoke", n=0)
    with pytest.raises(ValueError, match="workers"):
        G.build_dataset("smoke", n=2, workers=0)


def test_galaxy_grid_figure():
    cat = GC.sample_params(np.random.default_rng(10), 5)
    ims = np.stack([G.draw_galaxy(p, SMOKE) for p in cat])
    fig = plotting.galaxy_grid(ims, ncols=3, titles=[f"{x:.1f}" for x in cat["i_mag"]])
    assert len(fig.axes) == 6 and any("SYNTHETIC" in t.get_text() for t in fig.texts)
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="N, 3, H, W"):
        plotting.galaxy_grid(ims[:, :2])
