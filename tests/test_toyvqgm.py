"""Tests for the toy VQGM trained here (PAPER.md §2.1, §4.1.1): cortex_nb.toy.vqgm (build and
cache), toy_tokenizer, toy_prior.

Tiny configs, few steps: these check behaviour, not quality (the quality gate -- a classifier
recognising reconstructions -- is measured outside the test suite, see the module docstring).
Oracles: taming's own ``Net2NetTransformer.forward`` for the prior's logits, the official config
layout as ``cortex_nb.vqgm.taming_shapes.tiny_cin_config`` reproduces it, hand-computed usage statistics, an
uninterrupted run for resume, and the project's general loader ``load_vqgm`` for the saved model.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from cortex_nb.toy import vqgm as V
from cortex_nb.toy import world as toyworld
from cortex_nb.io.config import load_profile
from cortex_nb.vqgm.taming_ckpt import save_taming_checkpoint
from cortex_nb.vqgm.taming_config import build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config
from cortex_nb.toy.prior import PriorConfig, prior_logits, train_prior
from cortex_nb.toy.tokenizer import (TokenizerConfig, build_tokenizer, codebook_usage, encode_images,
                                     restart_dead_codes, train_tokenizer)
from cortex_nb.toy.training import config_dict
from cortex_nb.vqgm import load_vqgm

TOK = TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, embed_dim=16,
                        n_embed=32, steps=4, batch_size=8, warmup=2, restart_every=2,
                        ckpt_every=2, log_every=1)
PRIOR = PriorConfig(n_layer=1, n_head=2, n_embd=32, n_train=64, steps=4, batch_size=16,
                      warmup=2, ckpt_every=2, log_every=1)
N_CLASSES = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny toy VQGM, built once for the tests that only read it."""
    out = tmp_path_factory.mktemp("toy_vqgm")
    res = V.build_toy_vqgm(out, TOK, PRIOR, seed=0, n_classes=N_CLASSES, n_report=32,
                           progress=False)
    return out, res


# ---- config ---------------------------------------------------------------------------------


def _layout(node):
    """Keys and targets of a config tree (values of other leaves ignored)."""
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        return {k: (_layout(v) if k != "target" else v) for k, v in node.items()}
    return None


def test_config_has_the_official_cin_structure():
    cfg = V.toy_cin_config(TOK, PRIOR, n_classes=N_CLASSES)
    official = tiny_cin_config(first_stage_ckpt_path=None)  # the released layout, toy sized
    ours, theirs = _layout(cfg.model), _layout(official.model)
    # the only difference: our first stage trains without LPIPS, so its loss is DummyLoss
    theirs["params"]["first_stage_config"]["params"]["lossconfig"] = {
        "target": "taming.modules.losses.vqperceptual.DummyLoss"}
    assert ours == theirs
    p = cfg.model.params
    assert (p.first_stage_key, p.cond_stage_key) == ("image", "class_label")
    assert p.transformer_config.params.vocab_size == TOK.n_embed
    assert p.transformer_config.params.block_size == TOK.grid ** 2 + 1
    assert p.first_stage_config.params.n_embed == TOK.n_embed
    assert p.first_stage_config.params.embed_dim == TOK.embed_dim
    assert p.first_stage_config.params.ddconfig.ch_mult == list(TOK.ch_mult)
    assert p.first_stage_config.params.ddconfig.double_z is False
    assert p.cond_stage_config.params.n_classes == N_CLASSES
    assert "ckpt_path" not in p and "ckpt_path" not in p.first_stage_config.params


def _profile_configs(name: str) -> tuple[TokenizerConfig, PriorConfig]:
    vqgm = load_profile(name).vqgm
    return (TokenizerConfig(**OmegaConf.to_container(vqgm.tokenizer, resolve=True)),
            PriorConfig(**OmegaConf.to_container(vqgm.prior, resolve=True)))


@pytest.mark.parametrize("profile", ["toy", "smoke"])
def test_profile_configs_build_an_8x8_model(profile):
    tok, prior = _profile_configs(profile)
    model = build_from_config(V.toy_cin_config(tok, prior))
    assert tok.grid == 8
    assert model.first_stage_model.quantize.embedding.weight.shape == (tok.n_embed, tok.embed_dim)
    assert model.transformer.get_block_size() == 8 * 8 + 1
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        assert encode_images(model.first_stage_model, x).shape == (1, 8, 8)


@pytest.mark.parametrize("cls, section", [(TokenizerConfig, "tokenizer"), (PriorConfig, "prior")])
def test_dataclass_defaults_are_the_toy_profile_and_profiles_set_every_field(cls, section):
    """Defaults live once: the dataclass defaults equal the toy profile's values, and the toy-model
    profiles set every field (so a default never decides a profile-driven run)."""
    toy = OmegaConf.to_container(load_profile("toy").vqgm[section], resolve=True)
    assert config_dict(cls()) == toy
    for name in ("toy", "smoke"):
        assert set(load_profile(name).vqgm[section]) == {f.name for f in dataclasses.fields(cls)}


def test_cache_key_is_unchanged(built):
    """The settings hash that finds an existing toy VQGM cache (build.json) must not drift: a
    changed key silently retrains. Bump RECIPE_VERSION (and this value) only on purpose."""
    _, res = built
    assert res["report"]["hash"] == "361ce2ca97582a0e"


def test_config_rejects_bad_channels_and_classes():
    with pytest.raises(ValueError, match="GroupNorm"):
        TokenizerConfig(ch=48)
    with pytest.raises(ValueError, match="n_classes"):
        V.toy_cin_config(TokenizerConfig(n_embed=8), PRIOR, n_classes=10)


# ---- small pieces ---------------------------------------------------------------------------


def test_codebook_usage_hand_computed():
    tokens = torch.tensor([[[0, 0], [1, 3]]])               # counts 2, 1, 0, 1, 0
    u = codebook_usage(tokens, K=5)
    assert u["usage_hist"].tolist() == [2, 1, 0, 1, 0]
    assert (u["used"], u["dead"]) == (3, 2)
    p = [0.5, 0.25, 0.25]
    assert u["perplexity"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    assert codebook_usage(torch.arange(7), K=7)["perplexity"] == pytest.approx(7.0)
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([5]), K=5)


def test_restart_dead_codes_moves_only_unused_codes_onto_encoder_outputs():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(8, 3, generator=g)
    before = codebook.clone()
    counts = torch.tensor([4, 0, 2, 0, 0, 1, 7, 0])
    z = torch.randn(20, 3, generator=g) + 10.0                # far from every code
    dead = restart_dead_codes(codebook, counts, z, torch.Generator().manual_seed(1))
    assert sorted(dead.tolist()) == [1, 3, 4, 7]
    used = counts > 0
    assert torch.equal(codebook[used], before[used])         # used codes untouched
    for k in dead.tolist():                                   # each dead code is an output row
        assert (codebook[k] == z).all(1).any()
    rows = [int((codebook[k] == z).all(1).nonzero()[0]) for k in dead.tolist()]
    assert len(set(rows)) == len(rows)                        # distinct outputs while N allows
    # nothing dead: nothing changes
    again = codebook.clone()
    assert restart_dead_codes(codebook, torch.ones(8), z).numel() == 0
    assert torch.equal(codebook, again)


def test_prior_logits_match_net2net_forward():
    """Our training objective is exactly taming's: same logits and targets as
    Net2NetTransformer.forward, so taming's samplers generate from our weights."""
    model = build_from_config(V.toy_cin_config(TOK, PRIOR, n_classes=N_CLASSES))
    b = toyworld.sample(3, seed=5, n_classes=N_CLASSES)
    x, c = toyworld.to_tensor(b.images), torch.as_tensor(b.labels)
    with torch.no_grad():
        ref_logits, ref_target = model(x, c)
        tokens = encode_images(model.first_stage_model, x)
        logits, target = prior_logits(model.transformer, tokens, c)
    assert torch.equal(target, ref_target)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)


# ---- the saved model ------------------------------------------------------------------------


def test_saved_model_loads_and_encodes_like_the_trained_tokenizer(built):
    out, res = built
    assert res["config"].is_file() and res["ckpt"].is_file()
    vq = load_vqgm(res["config"], res["ckpt"])
    assert (vq.K, vq.d, vq.m, vq.n_classes) == (TOK.n_embed, TOK.embed_dim, TOK.grid, N_CLASSES)
    # the finished training checkpoint gives back the in-memory tokenizer (no retraining)
    tokenizer, stats = train_tokenizer(TOK, seed=0, ckpt_dir=out / "train", progress=False,
                                         n_classes=N_CLASSES)
    assert stats["steps"] == TOK.steps
    x = toyworld.to_tensor(toyworld.sample(16, seed=123, n_classes=N_CLASSES).images)
    assert torch.equal(vq.encode(x), encode_images(tokenizer, x))
    torch.testing.assert_close(vq.codebook, tokenizer.quantize.embedding.weight.detach(),
                               rtol=0, atol=0)
    report = json.loads((out / "report.json").read_text())
    for key in ("recon_l1", "recon_mse", "perplexity", "used", "dead", "tokenizer_seconds",
                "prior_seconds", "prior_final_loss"):
        assert key in report
    assert report["used"] + report["dead"] == TOK.n_embed
    tokens = vq.sample([0, 1, 2, 3], seed=0)
    assert tokens.shape == (4, TOK.grid, TOK.grid)


def test_cache_hit_does_not_retrain(built, monkeypatch):
    out, res = built
    mtime = res["ckpt"].stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retrained on a cache hit")

    monkeypatch.setattr(V, "train_tokenizer", boom)
    monkeypatch.setattr(V, "train_prior", boom)
    again = V.build_toy_vqgm(out, TOK, PRIOR, seed=0, n_classes=N_CLASSES, n_report=32,
                             progress=False)
    assert again["report"]["cached"] is True
    assert res["ckpt"].stat().st_mtime_ns == mtime
    # other settings: not a cache hit
    with pytest.raises(AssertionError, match="retrained"):
        V.build_toy_vqgm(out, TOK, PRIOR, seed=1, n_classes=N_CLASSES, n_report=32,
                         progress=False)


# ---- prior ----------------------------------------------------------------------------------


def test_prior_memorises_and_loaded_vqgm_samples_it_greedily(tmp_path):
    """One fixed sequence per class: loss falls, and the loaded VQGM's taming sampler with
    top_k=1 reproduces each class's sequence."""
    tok = TokenizerConfig(ch=32, ch_mult=(1, 2, 2), z_channels=32, embed_dim=16, n_embed=32)
    m, K, n_cls = tok.grid, tok.n_embed, 3
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(K, (n_cls, m, m), generator=g)
    labels = torch.arange(n_cls).repeat(32)
    tokens = seqs[labels]
    prior = PriorConfig(n_layer=2, n_head=2, n_embd=64, steps=150, batch_size=48, lr=3e-3,
                          warmup=10, ckpt_every=1000, log_every=10)
    gpt, stats = train_prior(prior, tokens, labels, K=K, n_classes=n_cls, seed=0,
                               ckpt_dir=tmp_path / "train", progress=False)
    losses = [h["loss"] for h in stats["history"]]
    assert losses[-1] < 0.05 < losses[0]

    model = build_from_config(V.toy_cin_config(tok, prior, n_classes=n_cls))
    model.first_stage_model.load_state_dict(build_tokenizer(tok).state_dict(), strict=True)
    model.transformer.load_state_dict(gpt.state_dict(), strict=True)
    OmegaConf.save(V.toy_cin_config(tok, prior, n_classes=n_cls), tmp_path / "config.yaml")
    save_taming_checkpoint(model, tmp_path / "model.ckpt")
    vq = load_vqgm(tmp_path / "config.yaml", tmp_path / "model.ckpt")
    sampled = vq.sample([2, 0, 1], top_k=1, seed=0)
    assert torch.equal(sampled, seqs[[2, 0, 1]])


# ---- resume ---------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _stop_at(k):
    def cb(step, stats):
        if step == k:
            raise _Interrupt

    return cb


def test_tokenizer_resume_equals_uninterrupted(tmp_path):
    tok = dataclasses.replace(TOK, steps=6, ckpt_every=2)
    ref, _ = train_tokenizer(tok, seed=3, ckpt_dir=tmp_path / "a", progress=False)
    with pytest.raises(_Interrupt):   # killed after step 5: the checkpoint holds step 4
        train_tokenizer(tok, seed=3, ckpt_dir=tmp_path / "b", progress=False,
                          callback=_stop_at(5))
    assert torch.load(tmp_path / "b" / "tokenizer.pt", weights_only=True)["step"] == 4
    resumed, stats = train_tokenizer(tok, seed=3, ckpt_dir=tmp_path / "b", progress=False)
    assert stats["steps"] == 6
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_prior_resume_equals_uninterrupted(tmp_path):
    prior = dataclasses.replace(PRIOR, steps=6, ckpt_every=2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(TOK.n_embed, (40, TOK.grid, TOK.grid), generator=g)
    labels = torch.arange(40) % N_CLASSES
    kw = dict(K=TOK.n_embed, n_classes=N_CLASSES, seed=1, progress=False)
    ref, _ = train_prior(prior, tokens, labels, ckpt_dir=tmp_path / "a", **kw)
    with pytest.raises(_Interrupt):
        train_prior(prior, tokens, labels, ckpt_dir=tmp_path / "b", callback=_stop_at(3), **kw)
    resumed, stats = train_prior(prior, tokens, labels, ckpt_dir=tmp_path / "b", **kw)
    assert stats["steps"] == 6
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)
