"""Tests of diffdecon.data: real HSC targets (when present) and files the tests make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from diffdecon import data, units

# Catalogue values of the targets (HSC PDR3 UltraDeep COSMOS catalogue rows).
CATALOGUE = {
    "test1": dict(ra=150.45538, dec=2.38853, z=0.21677, i_mag=19.00),
    "test2": dict(ra=150.01817, dec=2.36686, z=0.186, i_mag=18.74),
    "test_high_z2": dict(ra=150.01194, dec=2.03721, z=0.8463, i_mag=20.46),
}


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_list_and_missing_targets(hsc_root):
    present, missing = data.list_targets(hsc_root), data.missing_targets(hsc_root)
    listed = sorted({rel.split("/")[0] for rel in data.read_checksums(data.CHECKSUMS_FILE)})
    assert sorted(present + missing) == listed
    shared_sums = hsc_root / "SHA256SUMS-all-targets"
    if shared_sums.exists():  # the shared development copy: three of the five targets
        assert present == ["test1", "test2", "test_high_z2"]
        assert missing == ["test3", "test_high_z"]
        # The committed copy lists the same files as the shared one.
        assert data.read_checksums(data.CHECKSUMS_FILE) == data.read_checksums(shared_sums)


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_load_target_real(hsc_root, name):
    facts = CATALOGUE[name]
    t = data.load_target(name, hsc_root)
    n = t.images.shape[1]
    assert t.images.shape == (3, n, n) and t.images.dtype == np.float64
    assert t.psfs.shape == (3, 43, 43)
    # PSFs are normalised to 1 up to float64 rounding.
    np.testing.assert_allclose(t.psfs.sum(axis=(1, 2)), 1.0, atol=1e-12)
    # Catalogue values agree with the rows above to the digits quoted there.
    assert t.z == pytest.approx(facts["z"], abs=1e-4)
    assert t.i_mag == pytest.approx(facts["i_mag"], abs=0.01)
    assert t.ra == pytest.approx(facts["ra"], abs=1e-5) and t.dec == pytest.approx(facts["dec"], abs=1e-5)
    # HSC PDR3 coadd pixels are 0.168 arcsec; the WCS stores it to ~1e-12.
    assert t.pixel_scale_arcsec == pytest.approx(0.168, rel=1e-6)
    # The cutouts are centred on the object: within 3 px (0.5 arcsec) of the image centre.
    x, y = data.catalog_position_pixel(t)
    assert abs(x - (n - 1) / 2) < 3 and abs(y - (n - 1) / 2) < 3
    # Background sigma, sources masked: HSC UltraDeep coadds have about 0.006-0.016 coadd
    # units per pixel; 0.004-0.02 catches a wrong HDU or unit.
    assert np.all((t.noise_sigma > 0.004) & (t.noise_sigma < 0.02)), t.noise_sigma
    # g is the least noisy band and i the noisiest on these coadds.
    assert t.noise_sigma[0] < t.noise_sigma[2]


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_aperture_flux_matches_catalogue(hsc_root, name):
    """mag = 27 - 2.5 log10(flux): a 20 px (3.4 arcsec) radius aperture in i vs the Kron magnitude.

    Measured aperture - Kron: +0.10 (test2), -0.10 (test_high_z2) and -0.20 mag (test1, a large
    disk whose light extends beyond the Kron aperture); a circular aperture is not the
    Kron ellipse, so 0.3 mag is allowed. A wrong unit or zero point (e.g. nJy, 31.4) would
    be off by magnitudes.
    """
    t = data.load_target(name, hsc_root)
    flux = data.aperture_flux(t.images[2], data.catalog_position_pixel(t), 20.0)
    assert units.flux_to_mag(flux) == pytest.approx(t.i_mag, abs=0.3)


@pytest.mark.realdata
def test_hst_only_for_high_z2(hsc_root):
    for name in data.list_targets(hsc_root):
        t = data.load_target(name, hsc_root)
        if name == "test_high_z2":
            assert t.hst is not None and t.hst.band == "F814W"
            # COSMOS ACS mosaic: 0.03 arcsec/px.
            assert t.hst.pixel_scale_arcsec == pytest.approx(0.03, rel=1e-4)
            assert t.hst.image.shape == (669, 669)
        else:
            assert t.hst is None


@pytest.mark.realdata
def test_square_crop_keeps_wcs(hsc_root):
    """test2 is 228 x 239 px: the crop must move the catalogue pixel by the column offset."""
    full = data.load_target("test2", hsc_root, square=False)
    cropped = data.load_target("test2", hsc_root)
    assert full.images.shape == (3, 228, 239) and cropped.images.shape == (3, 228, 228)
    row0, col0 = cropped.crop_offset
    np.testing.assert_array_equal(cropped.images, full.images[:, row0 : row0 + 228, col0 : col0 + 228])
    xf, yf = data.catalog_position_pixel(full)
    xc, yc = data.catalog_position_pixel(cropped)
    assert (xf - xc, yf - yc) == pytest.approx((col0, row0), abs=1e-6)


# --------------------------------------------------------------------------- synthetic files


def _write_hsc_cutout(path: Path, image: np.ndarray, band: str, with_image_hdu: bool = True) -> None:
    primary = fits.PrimaryHDU()
    primary.header["FILTER"] = band
    header = fits.Header()
    for key, value in dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0,
                           CRPIX1=image.shape[1] / 2 + 0.5, CRPIX2=image.shape[0] / 2 + 0.5,
                           CD1_1=-0.168 / 3600, CD2_2=0.168 / 3600, CD1_2=0.0, CD2_1=0.0).items():
        header[key] = value
    hdus = [primary]
    if with_image_hdu:
        hdus += [fits.ImageHDU(image.astype(np.float32), header=header), fits.ImageHDU(), fits.ImageHDU()]
    fits.HDUList(hdus).writeto(path)


def _make_target(root: Path, name: str = "fake", size: int = 33, nan: bool = False,
                 shapes: dict | None = None, drop_image_hdu: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.csv").write_text(
        "# object_id,ra,dec,i_kronflux_mag,i_kronflux_magerr,specz_redshift\n\n1,150.0,2.0,20.0,0.001,0.3\n"
    )
    rng = np.random.default_rng(0)
    yy, xx = np.indices((43, 43))
    psf = np.exp(-((xx - 21) ** 2 + (yy - 21) ** 2) / (2 * 2.0**2))
    for band in "GRI":
        shape = (shapes or {}).get(band, (size, size))
        image = rng.normal(0, 0.01, shape)
        if nan and band == "R":
            image[3, 4] = np.nan
        _write_hsc_cutout(folder / f"cutout-HSC-{band}-9813-pdr3_dud_rev-7.fits", image, band.lower(),
                          with_image_hdu=(band != drop_image_hdu))
        fits.PrimaryHDU(psf * 3.0).writeto(folder / f"psf-calexp-pdr3_dud_rev-HSC-{band}-9813-7.fits")
    return folder


def test_synthetic_target_loads(tmp_path):
    _make_target(tmp_path)
    assert data.list_targets(tmp_path) == ["fake"]
    t = data.load_target("fake", tmp_path)
    assert t.images.shape == (3, 33, 33) and t.z == 0.3 and t.object_id == 1
    np.testing.assert_allclose(t.psfs.sum(axis=(1, 2)), 1.0, atol=1e-12)
    x, y = data.catalog_position_pixel(t)
    assert (x, y) == pytest.approx((16.0, 16.0), abs=1e-6)  # CRVAL at CRPIX = 17 (1-based)
    # Pure N(0, 0.01) noise on 33^2 px: the estimate's relative error is ~1/sqrt(2 * 1089) = 2%;
    # clipping at 3 sigma biases it low by ~1.5%: 10% tolerance.
    np.testing.assert_allclose(t.noise_sigma, 0.01, rtol=0.1)
    assert t.hst is None


def test_missing_extension_names_file(tmp_path):
    _make_target(tmp_path, drop_image_hdu="I")
    with pytest.raises(data.DataError, match=r"cutout-HSC-I.*HDU 1.*extensions found: \[0\] PRIMARY"):
        data.load_target("fake", tmp_path)


def test_mismatched_shapes_and_nans(tmp_path):
    _make_target(tmp_path, "shapes", shapes={"R": (33, 31)})
    with pytest.raises(data.DataError, match=r"shapes differ.*\(33, 31\)"):
        data.load_target("shapes", tmp_path)
    _make_target(tmp_path, "nans", nan=True)
    with pytest.raises(data.DataError, match=r"cutout-HSC-R.*1 non-finite"):
        data.load_target("nans", tmp_path)


def test_missing_data_dir(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*DIFFDECON_DATA"):
        data.list_targets(missing)
    monkeypatch.setenv("DIFFDECON_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*DIFFDECON_DATA"):
        data.load_target("test1")


def test_unknown_target(tmp_path):
    _make_target(tmp_path)
    with pytest.raises(data.DataError, match=r"'nope'.*\['fake'\]"):
        data.load_target("nope", tmp_path)


def test_load_tng_idealized(tmp_path):
    mags = {"G": 20.0, "R": 19.0, "I": 18.5}
    hdus = [fits.PrimaryHDU()]
    for band, m in mags.items():
        arr = np.full((8, 10), m)
        arr[0, 0] = np.inf  # empty pixel
        arr[0, 1] = np.nan
        arr[0, 2] = 60.0  # fainter than faint_mag = 40
        hdus.append(fits.ImageHDU(arr, name=f"SUBARU_HSC.{band}"))
    path = tmp_path / "tng.fits"
    fits.HDUList(hdus).writeto(path)
    flux = data.load_tng_idealized(path)
    assert flux.shape == (3, 8, 10) and flux.dtype == np.float64
    # 20 AB mag = 10**(-0.4 * (20 - 8.9)) Jy = 3.63e-5 Jy, exact to float rounding.
    np.testing.assert_allclose(flux[:, 5, 5], [10 ** (-0.4 * (m - 8.9)) for m in mags.values()], rtol=1e-12)
    assert flux[0, 5, 5] == pytest.approx(3.6308e-5, rel=1e-4)
    np.testing.assert_array_equal(flux[:, 0, :3], 0.0)
    # A missing band names the file and the extensions found.
    with pytest.raises(data.DataError, match=r"tng\.fits.*SUBARU_HSC\.Z.*SUBARU_HSC\.G"):
        data.load_tng_idealized(path, bands=("g", "z"))
