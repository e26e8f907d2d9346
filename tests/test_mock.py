import numpy as np
import pytest
import torch

from diffdecon import config, mock, paths


def _blob(P, total=100.0):
    yy, xx = np.mgrid[: P.image_size, : P.image_size] - (P.image_size - 1) / 2
    img = np.exp(-(xx**2 + yy**2) / (2 * 3.0**2))
    img = img / img.sum() * total
    return np.stack([img * 0.5, img * 0.8, img])


def test_fallback_reference_when_no_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIFFDECON_DATA", str(tmp_path / "nowhere"))
    ref = mock.hsc_reference()
    assert not ref.real and ref.source.startswith("fallback")
    assert "not found" in capsys.readouterr().out
    assert ref.psfs.shape == (3, mock.PSF_SIZE, mock.PSF_SIZE)
    np.testing.assert_allclose(ref.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-12)


def test_real_reference_when_present():
    if not paths.hsc_dir().is_dir():
        pytest.skip(f"real HSC data not found under {paths.hsc_dir()} (set DIFFDECON_DATA)")
    ref = mock.hsc_reference()
    assert ref.real and ref.source.startswith("HSC PDR3")
    # HSC UltraDeep background sigma is about 0.006-0.016 per band; allow a factor of 2 either way
    assert np.all((ref.sigma > 0.003) & (ref.sigma < 0.032)), ref.sigma


def test_mock_noise_free_flux_and_noise_level(monkeypatch, tmp_path, generator):
    monkeypatch.setenv("DIFFDECON_DATA", str(tmp_path / "nowhere"))
    P = config.get_profile("smoke")
    ref = mock.hsc_reference()
    truth = _blob(P)
    obs = mock.make_mock(truth, 0.2, P, ref, generator)
    noise_free = obs.operator.A(obs.truth)
    # a compact blob well inside the field: PSF + rebinning conserve flux to < 0.1 %
    assert float(noise_free.sum(dim=(-1, -2)).sum()) == pytest.approx(truth.sum(), rel=1e-3)
    resid = (obs.y - noise_free) / obs.sigma.view(-1, 1, 1)
    # whitened residual: unit variance within 5 sigma of its sampling error (n ~ 3 * 40^2)
    n = resid.numel()
    assert abs(float(resid.var()) - 1.0) < 5 * np.sqrt(2.0 / n)


def test_mock_rejects_wrong_shape(generator):
    P = config.get_profile("smoke")
    ref = mock.gaussian_reference(0.7, 0.01)
    with pytest.raises(ValueError, match="accepted: \\(3, 32, 32\\)"):
        mock.make_mock(np.zeros((3, 16, 16)), 0.2, P, ref, generator)


def test_unknown_target_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFDECON_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="test9"):
        mock.hsc_reference("test9")
