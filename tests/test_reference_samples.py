"""Tests of diffdecon.reference_samples: one cached reference of unconditional prior samples."""

from __future__ import annotations

import pytest
import torch

from diffdecon import reference_samples


@pytest.fixture
def hashed_prior(smoke_gaussian_prior, tmp_path, monkeypatch):
    """The exact Gaussian test prior with a (fake) checkpoint hash, caching into tmp_path."""
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    smoke_gaussian_prior.checkpoint_sha256 = "ab" * 32
    return smoke_gaussian_prior


def test_cached_by_every_input(hashed_prior, capsys):
    x = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert "recomputed" in capsys.readouterr().out
    again = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    assert "cache hit" in capsys.readouterr().out and torch.equal(x, again)
    # another seed, method or clip is another product (DDIM with eta = 0 is deterministic
    # given x_T, so equal seeds give equal samples and a new seed new ones)
    other = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=2, progress=False)
    clipped = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, x0_clip=(-1.0, 1.0),
                                              progress=False)
    ddpm = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, method="ddpm", progress=False)
    out = capsys.readouterr().out
    assert out.count("recomputed") == 3 and not torch.equal(x, other) and not torch.equal(x, ddpm)
    assert float(clipped.abs().max()) <= float(x.abs().max()) + 1e-6
    files = sorted(p.name for p in (reference_samples.paths.cache_dir() / "prior_samples").glob("*.npy"))
    assert len(files) == 4 and any("-clip-1_1" in f for f in files)


def test_defaults_and_errors(smoke_gaussian_prior, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFDECON_CACHE", str(tmp_path / "cache"))
    x = reference_samples.prior_samples(smoke_gaussian_prior, n=2, steps=2, progress=False)  # no hash: not cached
    assert x.shape[0] == 2 and "not cached" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="method='euler'; accepted: 'ancestral', 'ddim', 'ddpm'"):
        reference_samples.prior_samples(smoke_gaussian_prior, n=2, steps=2, method="euler")
    with pytest.raises(ValueError, match="accepted: positive integers"):
        reference_samples.prior_samples(smoke_gaussian_prior, n=0, steps=2)


def test_the_chain_follows_the_profiles_x0_draw(hashed_prior, capsys):
    """The ``ancestral`` reference is the posterior sampler's chain without data: with the
    profile's ``x0_draw`` each step starts from a draw of N(D, V_t), a cache product of its
    own (tag ``draw``, inputs naming the covariance); without it, from D."""
    import dataclasses

    hashed_prior.profile = dataclasses.replace(hashed_prior.profile, x0_draw=False, last_draw=False)
    mean = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    hashed_prior.profile = dataclasses.replace(hashed_prior.profile, x0_draw=True)
    drawn = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    assert capsys.readouterr().out.count("recomputed: prior samples") == 2 and not torch.equal(drawn, mean)
    files = sorted(p.name for p in (reference_samples.paths.cache_dir() / "prior_samples").glob("*.npy"))
    assert [("quaddraw4" in f, "quad4" in f) for f in files] == [(False, True), (True, False)]
    # the draws add the denoiser's own spread: the chain from D is narrower about the prior mean
    assert float(mean.std(0).mean()) < float(drawn.std(0).mean())


def test_the_chain_follows_the_profiles_last_draw(hashed_prior, capsys):
    """With ``x0_draw`` and ``last_draw`` the reference chain's last step is a draw too (the
    posterior sampler's with the profile's defaults): a product of its own (tag ``lastdraw``,
    keyed ``last_draw``), the same draws up to the last step's added spread; the products of
    the chain with a mean last step keep their key."""
    import dataclasses
    import json

    hashed_prior.profile = dataclasses.replace(hashed_prior.profile, x0_draw=True, last_draw=False)
    mean_last = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    hashed_prior.profile = dataclasses.replace(hashed_prior.profile, last_draw=True)
    drawn_last = reference_samples.prior_samples(hashed_prior, n=3, steps=4, seed=1, progress=False)
    assert capsys.readouterr().out.count("recomputed: prior samples") == 2 and not torch.equal(mean_last, drawn_last)
    folder = reference_samples.paths.cache_dir() / "prior_samples"
    files = sorted(p.name for p in folder.glob("*.npy"))
    assert len(files) == 2 and sum("-lastdraw" in f for f in files) == 1
    manifests = {f: json.loads((folder / (f + ".manifest.json")).read_text())["inputs"] for f in files}
    assert {("-lastdraw" in f, m.get("last_draw")) for f, m in manifests.items()} == {(False, None), (True, True)}


def test_last_draw_needs_x0_draw(smoke_gaussian_prior):
    from diffdecon.mmps import mmps_prior

    with pytest.raises(ValueError, match="last_draw=True needs x0_draw=True"):
        mmps_prior(smoke_gaussian_prior, torch.Generator().manual_seed(0), 2, steps=2, x0_draw=False, last_draw=True)
