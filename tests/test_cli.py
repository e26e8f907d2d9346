"""Tests of the command line (diffdecon.cli): end to end on small FITS files, and bad inputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from conftest import tan_wcs_of
from diffdecon import cli, mock, physics
from diffdecon.config import BANDS, get_profile

Z = 0.3
OBS = 72  # observation side [px]: holds the smoke window at z = 0.3 (ceil(m) + 8 = 60 px)
CRVAL = (150.1, 2.2)


def _wcs(scale_arcsec: float = 0.168, n: int = OBS) -> WCS:
    return tan_wcs_of(scale_arcsec, n, CRVAL)


def _write_image(path, data, band, wcs=None):
    primary = fits.PrimaryHDU()
    primary.header["FILTER"] = f"HSC-{band.upper()}"
    hdr = wcs.to_header() if wcs is not None else fits.Header()
    fits.HDUList([primary, fits.ImageHDU(np.asarray(data, np.float32), header=hdr)]).writeto(path)


def _write_psf(path, psf, band):
    hdu = fits.PrimaryHDU(np.asarray(psf, np.float32))
    hdu.header["FILTER"] = band
    hdu.writeto(path)


@pytest.fixture
def obs_files(tmp_path, smoke_galaxy, generator):
    """A mock smoke observation of a Gaussian galaxy at z = 0.3 (Gaussian PSF FWHM 0.7",
    sigma 0.01) written as 3 images with a TAN WCS and 3 PSFs, each with its FILTER keyword."""
    ref = mock.gaussian_reference(0.7, 0.01, size=15)
    obs = mock.make_mock(smoke_galaxy, Z, "smoke", ref, generator, obs_size=OBS)
    images, psfs = [], []
    for c, b in enumerate(BANDS):
        images.append(tmp_path / f"img_{b}.fits")
        psfs.append(tmp_path / f"psf_{b}.fits")
        _write_image(images[-1], obs.y[c].numpy(), b, _wcs())
        _write_psf(psfs[-1], ref.psfs[c], b)
    return {"images": images, "psfs": psfs, "y": obs.y.numpy(), "ref": ref, "dir": tmp_path}


@pytest.fixture
def test_prior(smoke_gaussian_prior, tmp_path, monkeypatch):
    """The exact Gaussian test prior with a checkpoint hash (so provenance and the prior-sample
    cache are exercised); the cache goes to tmp_path."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    smoke_gaussian_prior.checkpoint_sha256 = hashlib.sha256(b"isotropic Gaussian test prior").hexdigest()
    return smoke_gaussian_prior


def _args(files, out, *extra, images=None, psfs=None, redshift=True):
    z = ["--redshift", str(Z)] if redshift else []
    return ["deconvolve", "--image", *map(str, images or files["images"]), "--psf", *map(str, psfs or files["psfs"]),
            *z, "--profile", "smoke", "--steps", "3", "--samples", "2", "--prior-samples", "6", "--quiet",
            "-o", str(out), *extra]


def _no_leftovers(folder, out):
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{out.name}")], "temporary file left behind"


# ------------------------------------------------------------------ help


def test_help_texts(capsys):
    # the module runs as a program (what the `diffdecon` entry point calls)
    r = subprocess.run([sys.executable, "-m", "diffdecon.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "deconvolve" in r.stdout, r.stdout + r.stderr
    for argv, needle in ((["deconvolve", "--help"], "example:"), (["targets", "--help"], "DIFFDECON_DATA")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0 and needle in capsys.readouterr().out
    assert cli.main([]) == 2  # no command: the help, and a non-zero status


# ------------------------------------------------------------------ end to end


def test_deconvolve_end_to_end(obs_files, test_prior, capsys):
    out = obs_files["dir"] / "post.fits"
    rc = cli.main(_args(obs_files, out, "--seed", "7", "--save-samples", "--batch-size", "1"), prior=test_prior)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 0, err
    assert "chain lookahead" in captured.out  # the profile's default: measured on the prior's chain, cached
    assert "wrote" in err
    P = get_profile("smoke")
    with fits.open(out) as hdul:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "MEAN", "STD", "VARRATIO", "SAMPLES"]
        h0 = hdul[0].header
        assert h0["CKPTSHA"] == test_prior.checkpoint_sha256
        assert (h0["SAMPLER"], h0["STEPS"], h0["SEED"], h0["NSAMPLE"]) == ("mmps", 3, 7, 2)
        assert h0["MMPSCOV"] == get_profile("smoke").mmps_covariance
        assert h0["LOOKAHD"] is get_profile("smoke").lookahead is True
        assert h0["PROFILE"] == "smoke" and h0["REDSHIFT"] == pytest.approx(Z)
        assert h0["PIXSCALE"] == pytest.approx(0.168, rel=1e-6)
        assert h0["DDVERS"] == __import__("diffdecon").__version__
        for b in BANDS:
            assert np.isfinite(h0[f"CHI2_{b.upper()}"])
        assert h0["FLUXSCL"] > 0 and np.isfinite(h0["VRAPER"])
        mean = hdul["MEAN"].data
        assert mean.shape == (3, P.image_size, P.image_size)
        assert hdul["STD"].data.shape == mean.shape
        assert hdul["VARRATIO"].data.shape == (P.image_size, P.image_size)
        assert hdul["SAMPLES"].data.shape == (2, 3, P.image_size, P.image_size)
        # the posterior mean holds the galaxy's flux (100 units) within 10% (noise, prior, 3 steps)
        assert float(mean.sum()) == pytest.approx(100.0, rel=0.1)
        # model-grid WCS: centred on the galaxy (here the image centre), model pixel scale
        w = WCS(hdul["MEAN"].header).celestial
        c = (P.image_size - 1) / 2
        ra, dec = w.pixel_to_world_values(c, c)
        ra0, dec0 = _wcs().pixel_to_world_values((OBS - 1) / 2, (OBS - 1) / 2)
        assert ra == pytest.approx(float(ra0), abs=1e-9) and dec == pytest.approx(float(dec0), abs=1e-9)
        scale = P.pixel_scale_kpc * physics.arcsec_per_kpc(Z) / 3600  # [deg/px]
        assert np.allclose(np.abs(np.diag(w.pixel_scale_matrix)), scale, rtol=1e-9)
        assert w.pixel_scale_matrix[0, 0] < 0  # east to the left, like the input
    # the prior samples were cached (key: checkpoint hash, n, steps, seed): a second run is a cache hit
    out2 = obs_files["dir"] / "post2.fits"
    assert cli.main(_args(obs_files, out2, "--seed", "7"), prior=test_prior) == 0
    assert "cache hit" in capsys.readouterr().out
    # overwrite: refused without --overwrite (file untouched), accepted with it
    mtime = out.stat().st_mtime_ns
    assert cli.main(_args(obs_files, out), prior=test_prior) == 2
    assert "exists" in capsys.readouterr().err and out.stat().st_mtime_ns == mtime
    assert cli.main(_args(obs_files, out, "--overwrite", "--covariance", "isotropic"), prior=test_prior) == 0
    with fits.open(out) as hdul:
        assert "SAMPLES" not in [h.name for h in hdul]
        assert hdul[0].header["MMPSCOV"] == "isotropic"
    # the annulus covariance: the same table (cached), with its annulus term
    assert cli.main(_args(obs_files, out, "--overwrite", "--covariance", "annuli"), prior=test_prior) == 0
    with fits.open(out) as hdul:
        assert hdul[0].header["MMPSCOV"] == "annuli"
    # without the chain's lookahead (diffdecon.lookahead), as the header says
    assert cli.main(_args(obs_files, out, "--overwrite", "--lookahead", "off"), prior=test_prior) == 0
    with fits.open(out) as hdul:
        assert hdul[0].header["LOOKAHD"] is False


# ------------------------------------------------------------------ bad inputs


def _fails(argv, needle, capsys, prior, out):
    rc = cli.main(argv, prior=prior)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err, err
    _no_leftovers(out.parent, out)


def test_bad_band_counts_shapes_and_psf_band(obs_files, test_prior, capsys, tmp_path):
    out = tmp_path / "out.fits"
    _fails(_args(obs_files, out, images=obs_files["images"][:2]), "--image got 2 file(s)", capsys, test_prior, out)
    _fails(_args(obs_files, out, psfs=obs_files["psfs"][:2]), "--psf got 2 file(s)", capsys, test_prior, out)
    odd = tmp_path / "odd_r.fits"
    _write_image(odd, np.zeros((OBS, OBS + 1)), "r", _wcs())
    imgs = [obs_files["images"][0], odd, obs_files["images"][2]]
    _fails(_args(obs_files, out, images=imgs), "images differ in shape", capsys, test_prior, out)
    # a PSF of band i given in the position of band g
    psfs = [obs_files["psfs"][2], obs_files["psfs"][1], obs_files["psfs"][2]]
    _fails(_args(obs_files, out, psfs=psfs), "is for band 'i'", capsys, test_prior, out)
    # images given in the wrong order
    imgs = list(reversed(obs_files["images"]))
    _fails(_args(obs_files, out, images=imgs), "given in position of band 'g'", capsys, test_prior, out)


def test_covariance_is_for_mmps_only(obs_files, test_prior, capsys, tmp_path):
    out = tmp_path / "o.fits"
    _fails(_args(obs_files, out, "--sampler", "dps", "--covariance", "isotropic"), "--covariance applies to --sampler mmps",
           capsys, test_prior, out)
    _fails(_args(obs_files, out, "--sampler", "dps", "--lookahead", "on"), "--lookahead applies to --sampler mmps",
           capsys, test_prior, out)
    _fails(_args(obs_files, out, "--covariance", "tweedie", "--lookahead", "on"), "with a diagonal covariance only",
           capsys, test_prior, out)
    with pytest.raises(SystemExit):  # argparse names the accepted values
        cli.main(_args(obs_files, out, "--covariance", "full"), prior=test_prior)
    assert "invalid choice: 'full'" in capsys.readouterr().err


def test_bad_redshift(obs_files, test_prior, capsys, tmp_path):
    out = tmp_path / "out.fits"
    for z in ("0", "-0.5", "nan"):
        _fails(_args(obs_files, out, "--redshift", z), "--redshift", capsys, test_prior, out)
    # missing --redshift: argparse's own error (exit status 2, names the option)
    with pytest.raises(SystemExit) as exc:
        cli.main(_args(obs_files, out, redshift=False), prior=test_prior)
    assert exc.value.code == 2 and "--redshift" in capsys.readouterr().err
    _no_leftovers(tmp_path, out)


def test_too_small_observed_size(obs_files, test_prior, capsys, tmp_path):
    """No WCS, 2 arcsec pixels: at z = 0.8 the 38 kpc field is m = 2.5 px < MIN_OBSERVED_SIZE."""
    out = tmp_path / "out.fits"
    imgs = []
    for c, b in enumerate(BANDS):
        imgs.append(tmp_path / f"nowcs_{b}.fits")
        _write_image(imgs[-1], obs_files["y"][c], b)
    _fails(_args(obs_files, out, "--redshift", "0.8", images=imgs), "no celestial WCS: give --pixel-scale",
           capsys, test_prior, out)
    _fails(_args(obs_files, out, "--redshift", "0.8", "--pixel-scale", "2.0", images=imgs), "MIN_OBSERVED_SIZE",
           capsys, test_prior, out)
    # a --pixel-scale that contradicts the WCS
    _fails(_args(obs_files, out, "--redshift", str(Z), "--pixel-scale", "0.2"), "disagrees with the WCS",
           capsys, test_prior, out)


def test_nan_image(obs_files, test_prior, capsys, tmp_path):
    out = tmp_path / "out.fits"
    nan = tmp_path / "nan_g.fits"
    _write_image(nan, np.full((OBS, OBS), np.nan), "g", _wcs())
    imgs = [nan, *obs_files["images"][1:]]
    _fails(_args(obs_files, out, "--redshift", str(Z), images=imgs), "holds no finite pixel", capsys, test_prior, out)
    missing = tmp_path / "absent.fits"
    _fails(_args(obs_files, out, "--redshift", str(Z), images=[missing, *obs_files["images"][1:]]), "no such file",
           capsys, test_prior, out)


def test_output_exists_refused_before_work(obs_files, capsys, tmp_path):
    out = tmp_path / "exists.fits"
    out.write_bytes(b"keep me")
    rc = cli.main(_args(obs_files, out, "--redshift", str(Z)))  # no prior needed: refused first
    assert rc == 2 and "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_untrained_checkpoint_warns_and_divergence_fails_cleanly(obs_files, capsys, tmp_path, monkeypatch):
    """A checkpoint file loaded through load_prior: an untrained smoke UNet gives samples
    that do not fit the data (the x0 sanity clip keeps them finite), which the command
    must say; a sampler divergence must end in one error line and no output file, not a
    traceback or a file of NaNs."""
    from diffdecon import samplers
    from diffdecon.prior import DiffusionPrior

    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)  # network initialisation
    ckpt = tmp_path / "untrained.pt"
    torch.save(DiffusionPrior("smoke").unet.state_dict(), ckpt)
    out = tmp_path / "out.fits"
    rc = cli.main(_args(obs_files, out, "--redshift", str(Z), "--checkpoint", str(ckpt)))
    err = capsys.readouterr().err
    assert rc == 0 and out.exists() and "warning: the posterior samples do not fit the data" in err, err
    assert "where the posterior mean misses the data, residual sources" in err, err
    with fits.open(out) as hdul:
        h = hdul[0].header
        assert h["CONVERGD"] is False and h["CHI2SMED"] > 2
        assert {"RESGAL", "RESNEI", "RESOUT", "RESNSRC", "CHI2O_G", "CHI2O_R", "CHI2O_I"} <= set(h)
        assert 0 <= h["RESGAL"] + h["RESNEI"] + h["RESOUT"] <= 1 + 1e-9
    out.unlink()

    def diverging(*args, **kwargs):
        raise samplers.SamplerDivergenceError(3, 899, 2, 2, "mmps")

    monkeypatch.setattr(samplers, "mmps", diverging)
    rc = cli.main(_args(obs_files, out, "--redshift", str(Z), "--checkpoint", str(ckpt)))
    err = capsys.readouterr().err
    assert rc == 2 and "diffdecon: error: sampling failed" in err and "non-finite" in err, err
    _no_leftovers(tmp_path, out)
    # a checkpoint that does not exist
    rc = cli.main(_args(obs_files, out, "--redshift", str(Z), "--checkpoint", str(tmp_path / "nope.pt")))
    assert rc == 2 and "cannot load the prior" in capsys.readouterr().err
    _no_leftovers(tmp_path, out)


# ------------------------------------------------------------------ real data


def test_targets_command(hsc_root, capsys):
    from diffdecon import data

    assert cli.main(["targets", "--root", str(hsc_root)]) == 0
    text = capsys.readouterr().out
    for name in data.list_targets(hsc_root):
        assert name in text


def test_deconvolve_target_with_hst(hsc_root, test_prior, capsys, tmp_path):
    """`deconvolve-target` on the first target that has an HST cutout: the header carries the
    HST comparison and the window position; the model WCS is centred on the catalogue RA/Dec."""
    from diffdecon import data

    with_hst = [n for n in data.list_targets(hsc_root) if data.load_target(n, hsc_root).hst is not None]
    if not with_hst:
        pytest.skip(f"no target with an HST cutout under {hsc_root} (DIFFDECON_DATA)")
    t = data.load_target(with_hst[0], hsc_root)
    out = tmp_path / "target.fits"
    argv = ["deconvolve-target", t.name, "--root", str(hsc_root), "--profile", "smoke", "--steps", "2",
            "--samples", "2", "--prior-samples", "4", "--quiet", "-o", str(out)]
    assert cli.main(argv, prior=test_prior) == 0, capsys.readouterr().err
    with fits.open(out) as hdul:
        h0 = hdul[0].header
        assert -1 <= h0["HSTCORR"] <= 1 and h0["HSTFRAT"] > 0
        assert h0["REDSHIFT"] == pytest.approx(t.z) and h0["WIN_N"] > 0
        w = WCS(hdul["MEAN"].header).celestial
        c = (get_profile("smoke").image_size - 1) / 2
        ra, dec = w.pixel_to_world_values(c, c)
        assert (float(ra), float(dec)) == pytest.approx((t.ra, t.dec), abs=1e-9)
    assert cli.main(["deconvolve-target", "no-such-target", "--root", str(hsc_root), "-o", str(tmp_path / "x.fits")]) == 2
    assert "unknown target 'no-such-target'" in capsys.readouterr().err
