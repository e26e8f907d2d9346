import pytest

from diffdecon import config, paths


def test_profiles_exist_and_paper_is_published_configuration():
    assert set(config.PROFILES) == {"smoke", "quick", "paper"}
    paper = config.get_profile("paper")
    assert paper.image_size == 256 and paper.pixel_scale_kpc == 0.4
    assert paper.bands == ("g", "r", "i")
    assert paper.block_out_channels == (192, 192, 384, 384, 768, 768)
    assert paper.layers_per_block == 3 and paper.attention_resolutions == (16, 8)
    assert paper.diffusion_steps == 1000 and paper.n_posterior == 256 and paper.n_prior == 1024
    assert paper.aperture_radius_px == 30.0


def test_quick_profile_field_and_resolution_tradeoff():
    # the docstring's promise: quick keeps the field of view of smoke and a pixel finer
    # than the HSC PSF FWHM (>= 0.6 arcsec) at the paper's low-z targets
    from diffdecon.physics import arcsec_per_kpc

    quick, smoke = config.get_profile("quick"), config.get_profile("smoke")
    assert quick.field_of_view_kpc == pytest.approx(smoke.field_of_view_kpc)
    for z in (0.166, 0.186, 0.21677):
        pixel_arcsec = quick.pixel_scale_kpc * arcsec_per_kpc(z)
        assert pixel_arcsec < 0.6 / 2  # at least two model pixels per PSF FWHM


def test_unknown_profile_names_accepted_values():
    with pytest.raises(ValueError, match="smoke, quick, paper"):
        config.get_profile("fast")


@pytest.mark.parametrize("field, value, accepted", [
    ("prediction", "x0", "epsilon, v"),
    ("lr_schedule", "step", "constant, cosine"),
    ("shift_start_fraction", 1.5, "a fraction of the run in [0, 1]"),
    ("cg_tol", 1.0, "None or a float in (0, 1)"),
    ("last_newton", 0, "a positive int (1: MMPS's one linearisation)"),
])
def test_profile_refuses_values_it_does_not_accept(field, value, accepted):
    import dataclasses

    from diffdecon.errors import InputValueError

    with pytest.raises(InputValueError) as err:
        dataclasses.replace(config.get_profile("smoke"), **{field: value})
    assert (err.value.name, err.value.value, err.value.accepted) == (field, value, accepted)


def test_notebook_profile_env_override(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.notebook_profile("quick").name == "smoke"
    monkeypatch.delenv(config.PROFILE_ENV)
    assert config.notebook_profile("quick").name == "quick"


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFDECON_DATA", str(tmp_path))
    assert paths.data_dir() == tmp_path.resolve()
    assert paths.hsc_dir() == tmp_path.resolve() / "hsc_pdr3_cosmos"
    with pytest.raises(FileNotFoundError, match="DIFFDECON_DATA"):
        paths.require_dir(tmp_path / "missing", "HSC data")


def test_shown_paths_carry_no_machine_layout(monkeypatch, tmp_path):
    data = tmp_path / "observations"
    monkeypatch.setenv("DIFFDECON_DATA", str(data))
    monkeypatch.delenv("DIFFDECON_CACHE", raising=False)
    assert paths.shown(data / "hsc_pdr3_cosmos" / "test1") == "$DIFFDECON_DATA/hsc_pdr3_cosmos/test1"
    assert paths.shown(data) == "$DIFFDECON_DATA"
    # the default cache lies in the checkout: shown relative to it
    assert paths.shown(paths.cache_dir() / "prior_samples" / "a.npy") == "data/cache/prior_samples/a.npy"
    assert paths.shown(paths.MODELS / "quick") == "models/quick"
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    assert paths.shown(tmp_path / "cache" / "fid" / "e.pt") == "$DIFFDECON_CACHE/fid/e.pt"
    # anything else is left as given
    assert paths.shown(tmp_path / "elsewhere.txt") == str(tmp_path / "elsewhere.txt")
