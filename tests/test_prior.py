"""The prior: schedule, normalisation round trips, Tweedie, network layout, loading."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from diffdecon.config import get_profile
from diffdecon.prior import (DiffusionPrior, NoiseSchedule, build_unet, cosine_alphas_cumprod, load_candidate,
                             load_prior, normalise, stretch, to_flux, unstretch)


SMOKE = get_profile("smoke")


def test_cosine_schedule():
    abar = cosine_alphas_cumprod(1000)
    assert abar.dtype == np.float64 and abar.shape == (1000,)
    assert np.all(np.diff(abar) < 0) and 0.999 < abar[0] < 1 and abar[-1] < 1e-4
    betas = NoiseSchedule.cosine(1000).betas
    assert float(betas.max()) <= 0.999 + 1e-12 and float(betas.min()) > 0
    # Nichol & Dhariwal eq. 17 at mid-schedule (before any clipping): f(t)/f(0).
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(500) / f(0), rel=1e-12)


def test_stretch_round_trip():
    f = torch.logspace(-6, 3, 200, dtype=torch.float64)
    f = torch.cat([-f, torch.zeros(1, dtype=torch.float64), f])
    # float64: the asinh/sinh pair round-trips to ~1e-15 relative; 1e-12 leaves headroom.
    torch.testing.assert_close(unstretch(stretch(f, 0.01), 0.01), f, rtol=1e-12, atol=1e-15)
    x = torch.linspace(-1, 2, 101, dtype=torch.float32)
    # float32 round trip x -> f -> x: ~10 ulp of values of order 1.
    torch.testing.assert_close(stretch(unstretch(x, 0.01), 0.01), x, rtol=0, atol=1e-5)
    assert float(stretch(torch.tensor(0.0), 0.01)) == -1.0 and float(stretch(torch.tensor(1.0), 0.01)) == pytest.approx(1.0)
    # numpy arrays too
    assert np.allclose(unstretch(stretch(np.array([0.3]), 0.01), 0.01), 0.3, rtol=1e-12)


def test_normalise_to_flux_round_trip(generator):
    flux = torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1)
    x, scale = normalise(flux, SMOKE)
    assert scale.shape == (3,)
    torch.testing.assert_close(scale, flux.sum(dim=(1, 2, 3)) / SMOKE.flux_norm)
    torch.testing.assert_close(unstretch(x, SMOKE.asinh_a).sum(dim=(1, 2, 3)),
                               torch.full((3,), SMOKE.flux_norm, dtype=torch.float64))
    torch.testing.assert_close(to_flux(x, scale, SMOKE), flux, rtol=1e-12, atol=1e-14)  # float64
    x1, s1 = normalise(flux[0], SMOKE)
    assert x1.shape == (3, 8, 8) and s1.shape == ()
    with pytest.raises(ValueError, match="total flux"):
        normalise(torch.zeros(2, 3, 4, 4), SMOKE)
    with pytest.raises(ValueError, match="shape"):
        normalise(torch.ones(4, 4), SMOKE)


def test_x0_hat_inverts_forward_noising_with_exact_eps(generator):
    prior = DiffusionPrior(SMOKE)
    x0 = torch.rand(4, 3, 32, 32, generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 980])
    x_t = prior.schedule.q_sample(x0, t, eps)
    # float64 with exact eps; 1/sqrt(abar) at t=980 is ~1e2, so errors stay ~1e-13.
    torch.testing.assert_close(prior.x0_hat(x_t, t, eps=eps), x0, rtol=0, atol=1e-10)


def test_v_prediction_recovers_x0_and_eps_at_every_t(generator):
    """With a network that returns the exact v, x0_hat and eps are exact even at t = T - 1."""
    import dataclasses
    from types import SimpleNamespace

    prof = dataclasses.replace(SMOKE, prediction="v")
    x0 = torch.rand(4, 3, 32, 32, generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 500, 980, 999])
    holder = {}

    class ExactV(torch.nn.Module):
        def forward(self, x_t, tt):
            a = holder["prior"].schedule.abar(tt, x_t)
            return SimpleNamespace(sample=a.sqrt() * eps - (1 - a).sqrt() * x0)  # v, eq. 9

    prior = DiffusionPrior(prof, unet=ExactV())
    holder["prior"] = prior
    x_t = prior.schedule.q_sample(x0, t, eps)
    # float64, no division by sqrt(abar) (4.9e-5 at t = 999): errors ~1e-15.
    torch.testing.assert_close(prior.x0_hat(x_t, t), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(prior.eps(x_t, t), eps, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="prediction='x0'; accepted: epsilon, v"):
        dataclasses.replace(SMOKE, prediction="x0")


def test_score_and_x0_hat_consistent_with_network(generator):
    prior = DiffusionPrior(SMOKE).eval()
    x = torch.randn(2, 3, 32, 32, generator=generator)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        e, s, x0 = prior.eps(x, t), prior.score(x, t), prior.x0_hat(x, t)
    a = prior.schedule.abar(t, x)
    torch.testing.assert_close(s, -e / (1 - a).sqrt())
    # Tweedie with the score form: (x_t + (1 - abar) s) / sqrt(abar); float32 tolerance.
    torch.testing.assert_close(x0, (x + (1 - a) * s) / a.sqrt(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        prior.eps(x, torch.tensor([0, 1000]))
    with pytest.raises(TypeError, match="integer"):
        prior.eps(x, torch.tensor([0.5, 1.0]))


def test_unet_layout_quick():
    q = get_profile("quick")
    unet = build_unet(q)
    assert unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    from diffusers.models.attention_processor import Attention

    attns = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attns and all(m.heads == 4 for m in attns)
    assert {m.inner_dim for m in attns} == {96, 128}
    x = torch.zeros(1, 3, 64, 64)
    assert unet(x, torch.tensor([5])).sample.shape == x.shape
    bad = dataclasses.replace(q, block_out_channels=(32, 64, 98, 128))
    with pytest.raises(ValueError, match="divisible"):
        build_unet(bad)


def test_load_prior_missing_names_path_and_make_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train PROFILE=smoke"):
        load_prior("smoke", tmp_path / "nowhere")


def test_load_prior_round_trip_and_hash(tmp_path):
    prior = DiffusionPrior(SMOKE)
    torch.save(prior.unet.state_dict(), tmp_path / "ema_weights.pt")
    loaded = load_prior(SMOKE, tmp_path)
    assert len(loaded.checkpoint_sha256) == 64 and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(prior.unet.parameters(), loaded.unet.parameters()))
    other = dataclasses.replace(SMOKE, block_out_channels=(16, 16))
    torch.save({"ema": build_unet(other).state_dict(), "config": other.to_dict()}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="block_out_channels"):
        load_prior(SMOKE, tmp_path / "c.pt")


def test_load_candidate_takes_its_own_unet_and_refuses_other_data(tmp_path):
    # an exported folder of another width loads with its own UNet (the profile's would not take
    # its weights); a record of another image size or stretch is refused by name
    wide = dataclasses.replace(SMOKE, block_out_channels=(16, 24))
    torch.manual_seed(0)  # network initialisation
    net = build_unet(wide)
    torch.save(net.state_dict(), tmp_path / "ema_weights.pt")
    (tmp_path / "config.json").write_text(json.dumps({"config": wide.to_dict(), "step": 7}))
    loaded = load_candidate(SMOKE, tmp_path)
    assert loaded.profile.block_out_channels == (16, 24) and loaded.profile.name == SMOKE.name
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), loaded.unet.parameters()))
    with pytest.raises(RuntimeError):  # the profile's own UNet cannot hold these weights
        load_prior(SMOKE, tmp_path)
    for field, value in (("image_size", SMOKE.image_size * 2), ("asinh_a", SMOKE.asinh_a * 2)):
        bad = {**wide.to_dict(), field: value}
        (tmp_path / "config.json").write_text(json.dumps({"config": bad}))
        with pytest.raises(ValueError, match=field):
            load_candidate(SMOKE, tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_candidate(SMOKE, tmp_path / "nowhere")


def test_load_prior_reads_half_precision_weights(tmp_path):
    # the float16 training snapshots load through the one loader, as float32 weights equal
    # to the stored half-precision values (the cast is exact)
    torch.manual_seed(0)  # network initialisation
    prior = DiffusionPrior("smoke")
    half = {k: v.half() if v.is_floating_point() else v for k, v in prior.unet.state_dict().items()}
    torch.save(half, tmp_path / "snap.pt")
    loaded = load_prior("smoke", tmp_path / "snap.pt")
    for k, v in loaded.unet.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, half[k].float()), k
    assert loaded.checkpoint_sha256 and loaded.checkpoint_path == tmp_path / "snap.pt"
