"""Tests for cortex_nb.vqgm (PAPER.md §2.1): the taming VQGM loader and the VQGM interface,
with the taming file IO it relies on (cortex_nb.vqgm.taming_config, taming_ckpt, taming_compat).

A toy model with the official class-conditional ImageNet config's structure is built through
our own ``build_from_config``, given random weights, saved the way Lightning/taming files look
(loss weights, Lightning callbacks keyed by class, argparse/pathlib/numpy/OmegaConf
hyper-parameters), and loaded back. Every behaviour is checked against an independent
computation (codebook indexing, brute-force ``cdist`` argmin, an uncached greedy loop, hand-made
filtering cases).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cortex_nb.vqgm import taming_ckpt
from cortex_nb.vqgm import taming_compat
from cortex_nb.vqgm import taming_config
from cortex_nb.vqgm import taming as vqgm
from cortex_nb.errors import CheckpointError
from cortex_nb.vqgm.taming_ckpt import CODEBOOK_KEY, save_taming_checkpoint
from cortex_nb.vqgm.taming_compat import filter_top_k_top_p
from cortex_nb.vqgm.taming_config import ConfigMismatchError, build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config
from cortex_nb.vqgm import TokenRangeError, load_vqgm
from damage import flip_bytes_in_tensor

N_EMBED, EMBED_DIM, N_CLASSES, RES = 64, 8, 5, 16
M = RES // 2  # ch_mult [1, 2] -> one downsampling


class _Payload:
    """A custom object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.note = "arbitrary object"


class _FakeVQLPIPS(torch.nn.Module):
    """Parameter names like the released checkpoints' first_stage_model.loss.* tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.perceptual_loss = torch.nn.Module()
        self.perceptual_loss.lin0 = torch.nn.Sequential(torch.nn.Dropout(),
                                                        torch.nn.Conv2d(4, 1, 1))
        self.perceptual_loss.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.discriminator = torch.nn.Module()
        self.discriminator.main = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4))


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _lightning_extras() -> dict:
    """What released Lightning files hold besides tensors (plain, but not weights_only-safe)."""
    from lightning_fabric.utilities.data import AttributeDict
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    return {
        # Lightning 1.x keyed callback states by the callback class itself
        "callbacks": {
            ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "dirpath": "logs/x/ckpts"},
            LearningRateMonitor: {},
        },
        "hparams_name": "opt",
        "hyper_parameters": AttributeDict({
            "opt": argparse.Namespace(
                base=[pathlib.Path("configs/cin_transformer.yaml")],
                lr=np.float64(4.5e-6),
                seed=np.int64(23),
                gpus="0,",
            ),
            "config": OmegaConf.create({"model": {"base_learning_rate": 4.5e-6, "ch_mult": [1, 2]}}),
        }),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, randomised model, checkpoint path) with the official files' quirks."""
    cfg = tiny_cin_config(n_embed=N_EMBED, embed_dim=EMBED_DIM, n_classes=N_CLASSES,
                          resolution=RES, n_layer=2)
    model = build_from_config(cfg)
    _randomise(model)
    with_loss = copy.deepcopy(model)
    with_loss.first_stage_model.loss = _FakeVQLPIPS()
    path = tmp_path_factory.mktemp("vqgm") / "last.ckpt"
    save_taming_checkpoint(with_loss, path, epoch=7, global_step=1234, extra=_lightning_extras())
    return cfg, model, path


@pytest.fixture(scope="module")
def vq(tiny):
    cfg, _, path = tiny
    return load_vqgm(cfg, path)


def _tokens(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N_EMBED, (b, M, M), generator=g)


# ----------------------------------------------------------------------------- loading


def test_checkpoint_is_realistic_and_loads_with_weights_only(tiny, vq):
    cfg, model, path = tiny
    # the file really is one that plain weights_only loading refuses ...
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    raw = torch.load(path, weights_only=False)
    assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict",
            "optimizer_states", "lr_schedulers", "callbacks"} <= set(raw)
    assert raw["epoch"] == 7 and raw["global_step"] == 1234
    assert any(k.startswith("first_stage_model.loss.") for k in raw["state_dict"])
    # ... and our loader took it with weights_only=True (trust_checkpoint defaults to False)
    assert vq.ckpt_path == path


def test_weights_round_trip_and_loss_keys_dropped(tiny, vq):
    _, model, _ = tiny
    want, got = model.state_dict(), vq.model.state_dict()
    assert set(want) == set(got)
    assert not any(k.startswith("first_stage_model.loss.") for k in got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert not vq.model.training and not vq.model.transformer.training
    assert not any(p.requires_grad for p in vq.model.parameters())


def test_config_sanitised_without_touching_the_callers_config(tiny, vq):
    cfg, _, _ = tiny
    fs = cfg.model.params.first_stage_config.params
    assert fs.ckpt_path.endswith("last.ckpt")  # the caller's config is unchanged
    assert fs.lossconfig.target.endswith("VQLPIPSWithDiscriminator")
    assert any("ckpt_path" in c for c in vq.changes)
    assert any("DummyLoss" in c for c in vq.changes)
    assert any("loss tensors" in c for c in vq.changes)
    assert type(vq.model.first_stage_model.loss).__name__ == "DummyLoss"
    c = OmegaConf.to_container(cfg)
    c["model"]["params"]["ckpt_path"] = "logs/2021-04-03T19-39-50_cin_transformer/last.ckpt"
    top, changed = taming_config.sanitize_config(c)
    assert "ckpt_path" not in top.params and any("model.params.ckpt_path" in c for c in changed)


def test_attributes_codebook_fingerprint(tiny, vq):
    _, model, _ = tiny
    assert (vq.K, vq.d, vq.m) == (N_EMBED, EMBED_DIM, M)
    assert (vq.image_size, vq.n_classes) == (RES, N_CLASSES)
    assert vq.device == torch.device("cpu")
    assert vq.codebook.shape == (N_EMBED, EMBED_DIM)
    assert torch.equal(vq.codebook, model.state_dict()[CODEBOOK_KEY])
    assert not vq.codebook.requires_grad
    fp = vq.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0 and fp == vq.fingerprint()
    other = vqgm.VQGM(copy.deepcopy(vq.model))
    assert other.fingerprint() == fp
    with torch.no_grad():
        other.model.first_stage_model.quantize.embedding.weight[3, 0] += 1e-3
    assert other.fingerprint() != fp


def test_config_from_yaml_path_and_env_var_checkpoint(tiny, tmp_path, monkeypatch):
    cfg, model, path = tiny
    yaml = tmp_path / "2021-04-03T19-39-50-project.yaml"
    OmegaConf.save(cfg, yaml)
    monkeypatch.setenv(taming_ckpt.CKPT_ENV_VAR, str(path))
    v = load_vqgm(str(yaml), None)
    assert torch.equal(v.codebook, model.state_dict()[CODEBOOK_KEY])


# ----------------------------------------------------------------------------- tokens / E / images


def test_embed_is_a_codebook_lookup_for_any_integer_dtype(vq):
    t = _tokens(3)
    cb = vq.codebook.numpy()
    want = np.transpose(cb[t.numpy()], (0, 3, 1, 2))  # (B,m,m,d) -> (B,d,m,m)
    E = vq.embed(t)
    assert E.shape == (3, EMBED_DIM, M, M)
    np.testing.assert_array_equal(E.numpy(), want)
    for alt in (t.numpy().astype(np.uint16), t.numpy().astype(np.int32), t.to(torch.int16),
                t.to(torch.uint8), t.to(torch.int32)):
        np.testing.assert_array_equal(vq.embed(alt).numpy(), want)


def test_encode_equals_bruteforce_nearest_code_and_decode_shapes(vq):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, RES, RES, generator=g) * 2 - 1
    tokens = vq.encode(x)
    assert tokens.shape == (3, M, M) and tokens.dtype == torch.int64
    fs = vq.model.first_stage_model
    with torch.no_grad():
        z = fs.quant_conv(fs.encoder(x)).permute(0, 2, 3, 1).reshape(-1, EMBED_DIM)
    ref = torch.cdist(z.double(), vq.codebook.double()).argmin(1).reshape(3, M, M)
    assert torch.equal(tokens, ref)
    assert torch.equal(vq.encode(x, batch_size=2), tokens)
    img = vq.decode(tokens)
    assert img.shape == (3, 3, RES, RES)
    assert img.min() >= -1 and img.max() <= 1
    assert torch.equal(vq.decode(tokens.numpy().astype(np.uint16)), img)
    # chunking changes only float rounding (batched convolutions)
    torch.testing.assert_close(vq.decode(tokens, batch_size=1), img, atol=1e-5, rtol=0)


def test_quantize_inverts_embed_and_matches_cdist(vq, monkeypatch):
    t = _tokens(4, seed=2)
    assert torch.equal(vq.quantize(vq.embed(t)), t)
    g = torch.Generator().manual_seed(3)
    E = torch.randn(5, EMBED_DIM, M, M, generator=g) * 0.3
    flat = E.permute(0, 2, 3, 1).reshape(-1, EMBED_DIM).double()
    ref = torch.cdist(flat, vq.codebook.double()).argmin(1).reshape(5, M, M)
    got = vq.quantize(E)
    assert got.dtype == torch.int64 and torch.equal(got, ref)
    monkeypatch.setattr(vqgm, "_QUANTIZE_BUDGET", 7 * N_EMBED)  # 7-row chunks
    assert torch.equal(vq.quantize(E), ref)


def test_decode_embeddings_matches_decode_and_passes_gradients(vq):
    t = _tokens(2, seed=4)
    E = vq.embed(t).requires_grad_(True)
    img = vq.decode_embeddings(E)
    assert torch.equal(img.detach(), vq.decode(t))
    img.square().sum().backward()
    assert E.grad is not None and E.grad.abs().sum() > 0
    assert all(p.grad is None for p in vq.model.parameters())
    # arbitrary (non-codebook) embeddings decode too, without quantising
    raw = vq.decode_embeddings(torch.randn(2, EMBED_DIM, M, M), clamp=False)
    assert raw.shape == (2, 3, RES, RES)


# ----------------------------------------------------------------------------- sampling


def _greedy_uncached(vq, labels):
    """Slow reference: re-run the GPT on the whole prefix at every position, argmax."""
    gpt = vq.model.transformer
    x = torch.as_tensor(labels).reshape(-1, 1)
    with torch.no_grad():
        for _ in range(M * M):
            logits, _ = gpt(x)
            x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[:, 1:].reshape(-1, M, M)


def test_sample_shapes_range_and_seeding(vq):
    labels = [0, 1, 2, 3, 4, 0]
    rng_before = torch.get_rng_state()
    a = vq.sample(labels, seed=11, batch_size=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert a.shape == (6, M, M) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() < N_EMBED
    assert torch.equal(vq.sample(labels, seed=11, batch_size=4), a)
    assert not torch.equal(vq.sample(labels, seed=12, batch_size=4), a)
    assert vq.sample(np.array([3], dtype=np.uint16), seed=0).shape == (1, M, M)
    assert vq.sample(2, seed=0).shape == (1, M, M)


def test_greedy_cached_sampler_equals_uncached_loop(vq):
    labels = [0, 1, 2, 3, 4]
    ref = _greedy_uncached(vq, labels)
    assert torch.equal(vq.sample(labels, top_k=1), ref)
    assert torch.equal(vq.sample(labels, top_k=1, batch_size=2), ref)
    # top_p alone must filter too (taming's sampler only filters when top_k is not None):
    # a nucleus this small keeps only the most likely token -> greedy
    assert torch.equal(vq.sample(labels, top_p=1e-6, seed=5), ref)
    # and different classes condition the model
    assert len({tuple(r.flatten().tolist()) for r in ref}) > 1


@pytest.mark.parametrize("top_k,top_p,temperature", [(None, None, 1.0), (5, None, 0.7), (8, 0.9, 1.3), (0, 0.5, 1.0)])
def test_kv_cache_sampler_draws_exactly_tamings_tokens(vq, top_k, top_p, temperature):
    """cortex_nb.vqgm.kv_sampler against taming's own sample_with_past (the oracle): the same RNG state in,
    the same tokens out, for stochastic sampling with and without top-k / top-p filtering."""
    from cortex_nb.vqgm.kv_sampler import sample_with_kv_cache
    from cortex_nb.vqgm.taming_compat import import_taming

    mingpt = import_taming().mingpt
    gpt = vq.model.transformer
    _, c = vq.model.encode_to_c(torch.tensor([0, 1, 2, 3, 4, 0, 2]))
    kw = dict(steps=M * M, temperature=temperature, top_k=top_k, top_p=top_p)
    torch.manual_seed(7)
    want = mingpt.sample_with_past(c, gpt, **kw)
    after = torch.get_rng_state()
    torch.manual_seed(7)
    got = sample_with_kv_cache(c, gpt, **kw)
    assert torch.equal(got, want)
    assert torch.equal(torch.get_rng_state(), after)                      # the same draws were consumed
    assert len({tuple(r.tolist()) for r in got}) > 1


def test_sample_argument_errors(vq):
    with pytest.raises(ValueError, match="out of range"):
        vq.sample([N_CLASSES])
    with pytest.raises(ValueError, match="temperature"):
        vq.sample([0], temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        vq.sample([0], top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        vq.sample([0], top_k=0)


# ----------------------------------------------------------------------------- top-k / top-p


def _kept(logits):
    return torch.isfinite(logits)


def test_filter_top_k_top_p_hand_made():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.2, 0.1])  # ranks: 1, 3, 0, 4, 2
    logits = probs.log()[None].repeat(2, 1)
    before = logits.clone()
    keep = lambda *idx: torch.tensor([i in idx for i in range(5)])[None].repeat(2, 1)  # noqa: E731
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_k=2)), keep(1, 3))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_k=1)), keep(1))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_k=9)), keep(0, 1, 2, 3, 4))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_k=0, top_p=1.0)), keep(0, 1, 2, 3, 4))
    # minimal prefix with cumulative probability >= p (0.5, 0.7, 0.85, 0.95, 1.0)
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_p=0.45)), keep(1))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_p=0.69)), keep(1, 3))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_p=0.71)), keep(1, 3, 0))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_p=0.9)), keep(1, 3, 0, 4))
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_p=0.1, min_tokens_to_keep=3)),
                       keep(1, 3, 0))
    # top-p acts on the renormalised top-k survivors: 0.5/0.85=0.59, then 0.82 >= 0.8
    assert torch.equal(_kept(filter_top_k_top_p(logits, top_k=3, top_p=0.8)), keep(1, 3))
    assert torch.equal(logits, before)  # input untouched
    out = filter_top_k_top_p(logits, top_k=2, filter_value=-123.0)
    assert torch.equal(out[0], torch.where(keep(1, 3)[0], logits[0], torch.tensor(-123.0)))


def test_filter_matches_a_slow_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 50, generator=g) * 2
    for k, p in [(0, 0.3), (0, 0.9), (7, 1.0), (10, 0.5), (1, 0.99)]:
        got = _kept(filter_top_k_top_p(logits, top_k=k, top_p=p))
        for r in range(logits.shape[0]):
            order = logits[r].argsort(descending=True).tolist()
            cand = order[:k] if k else order
            pr = logits[r, cand].softmax(0)
            cum, n = 0.0, 0
            while n < len(cand) and (n == 0 or cum < p):
                cum += float(pr[n]); n += 1
            want = torch.zeros(50, dtype=torch.bool)
            want[cand[:n]] = True
            assert torch.equal(got[r], want), (k, p, r)


# ----------------------------------------------------------------------------- the shim


_SHIMMED = ("transformers", "pytorch_lightning.utilities.distributed", "torch._six")


def test_shim_provides_names_only_during_the_import_and_restores():
    before = {n: sys.modules.get(n) for n in _SHIMMED}
    keys_before = set(sys.modules)
    with taming_compat.taming_import_shims():
        from transformers import top_k_top_p_filtering
        from pytorch_lightning.utilities.distributed import rank_zero_only
        import torch._six as six

        assert top_k_top_p_filtering is filter_top_k_top_p
        assert callable(rank_zero_only) and six.string_classes
    assert {n: sys.modules.get(n) for n in _SHIMMED} == before
    assert set(sys.modules) == keys_before
    with pytest.raises(RuntimeError):  # restored on errors too
        with taming_compat.taming_import_shims():
            raise RuntimeError("boom")
    assert {n: sys.modules.get(n) for n in _SHIMMED} == before
    import pytorch_lightning.utilities as plu
    assert not hasattr(plu, "distributed") or plu.distributed is before[_SHIMMED[1]]


@pytest.fixture
def fresh_taming():
    """Forget taming's modules for one test, then put the originals back."""
    saved = {k: v for k, v in sys.modules.items() if k == "taming" or k.startswith("taming.")}
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "taming" or k.startswith("taming.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("has_old_function", [False, True])
def test_taming_imports_with_a_transformers_that_lacks_the_function(
    fresh_taming, monkeypatch, has_old_function
):
    fake = types.ModuleType("transformers")
    fake.__version__ = "4.99.0"
    sentinel = lambda *a, **k: None  # noqa: E731
    if has_old_function:
        fake.top_k_top_p_filtering = sentinel
    monkeypatch.setitem(sys.modules, "transformers", fake)
    tm = taming_compat.import_taming()
    assert tm.mingpt.top_k_top_p_filtering is filter_top_k_top_p
    assert tm.cond_transformer.Net2NetTransformer is not None
    assert sys.modules["transformers"] is fake
    if has_old_function:
        assert fake.top_k_top_p_filtering is sentinel
    else:
        assert not hasattr(fake, "top_k_top_p_filtering")
    assert importlib.util.find_spec("pytorch_lightning.utilities.distributed") is None


# ----------------------------------------------------------------------------- errors


def test_missing_checkpoint_names_path_and_where_to_put_it(tiny, tmp_path, monkeypatch):
    cfg, _, _ = tiny
    missing = tmp_path / "logs" / "cin" / "last.ckpt"
    with pytest.raises(CheckpointError, match="not found") as e:
        load_vqgm(cfg, missing)
    assert str(missing) in str(e.value) and taming_ckpt.CKPT_ENV_VAR in str(e.value)
    monkeypatch.delenv(taming_ckpt.CKPT_ENV_VAR, raising=False)
    with pytest.raises(CheckpointError, match=taming_ckpt.CKPT_ENV_VAR):
        load_vqgm(cfg, None)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_checkpoint_error(tiny, tmp_path, damage):
    cfg, _, path = tiny
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                     "empty": b""}[damage])
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
            load_vqgm(cfg, bad, trust_checkpoint=trust)
        assert str(bad) in str(e.value)


def test_untrusted_object_refused_then_loaded_when_trusted(tiny, tmp_path):
    cfg, model, _ = tiny
    path = tmp_path / "payload.ckpt"
    save_taming_checkpoint(model, path, extra={"hyper_parameters": {"obj": _Payload()}})
    with pytest.raises(CheckpointError, match="trust_checkpoint=True") as e:
        load_vqgm(cfg, path)
    assert "_Payload" in e.value.message and str(path) in e.value.message
    # both ways to say "I trust it": the profile/CLI key and the Python argument
    assert "--set vqgm.trust_checkpoint=true" in e.value.fix
    assert "load_vqgm(..., trust_checkpoint=True)" in e.value.fix
    v = load_vqgm(cfg, path, trust_checkpoint=True)
    assert torch.equal(v.codebook, model.state_dict()[CODEBOOK_KEY])


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"n_embed": 32}, r"config n_embed=32 but checkpoint codebook is 64 x 8 \(" + CODEBOOK_KEY),
        ({"embed_dim": 4}, r"config embed_dim=4 but checkpoint codebook is 64 x 8"),
        ({"resolution": 32}, r"block_size=257 but checkpoint transformer.pos_emb is 1 x 65 x 32"),
        ({"resolution": 32, "block_size": M * M + 1}, r"grid m=16 .*block_size of 257"),
        ({"n_layer": 1}, r"not in the config's model: \['transformer.blocks.1"),
        ({"n_layer": 3}, r"missing from the checkpoint: \['transformer.blocks.2"),
        ({"ch_mult": (1, 1)}, r"disagree on \d+ tensor shapes"),
    ],
)
def test_config_checkpoint_mismatch(tiny, change, pattern):
    _, _, path = tiny
    kw = dict(n_embed=N_EMBED, embed_dim=EMBED_DIM, n_classes=N_CLASSES, resolution=RES, n_layer=2)
    kw.update(change)
    with pytest.raises(ConfigMismatchError, match=pattern) as e:
        load_vqgm(tiny_cin_config(**kw), path)
    assert str(path) in str(e.value) or "grid" in str(e.value)


def test_first_stage_only_checkpoint_is_explained(tiny, tmp_path):
    cfg, model, _ = tiny
    path = save_taming_checkpoint(model.first_stage_model, tmp_path / "vqgan.ckpt")
    with pytest.raises(ConfigMismatchError, match="first-stage VQGAN checkpoint"):
        load_vqgm(cfg, path)


def test_unsupported_configs(tiny):
    cfg, _, path = tiny
    c = OmegaConf.to_container(cfg)
    c["model"]["params"]["cond_stage_config"] = "__is_unconditional__"
    with pytest.raises(ConfigMismatchError, match="class labels"):
        load_vqgm(c, path)
    c = OmegaConf.to_container(cfg)
    c["model"]["target"] = "taming.models.vqgan.VQModel"
    with pytest.raises(ConfigMismatchError, match="Net2NetTransformer"):
        load_vqgm(c, path)


def test_token_validation(vq):
    good = _tokens(2)
    for bad_value in (N_EMBED, -1):
        bad = good.clone()
        bad[1, 2, 3] = bad_value
        for fn in (vq.decode, vq.embed):
            with pytest.raises(TokenRangeError, match=f"token id {bad_value} out of range"):
                fn(bad)
    with pytest.raises(TokenRangeError, match=rf"\(B, {M}, {M}\)"):
        vq.decode(good[:, :4, :4])
    with pytest.raises(TokenRangeError, match=rf"\(B, {M}, {M}\)"):
        vq.embed(good.reshape(2, -1))
    with pytest.raises(TypeError, match="integer"):
        vq.decode(good.float())
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        vq.encode(torch.zeros(1, 3, 32, 32))


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    _, model, _ = tiny
    path = save_taming_checkpoint(model.first_stage_model, tmp_path / "a.ckpt", epoch=1)
    first, first_sum = path.read_bytes(), (tmp_path / "a.ckpt.sha256").read_text()
    # a plain checkpoint without extras is readable with stock weights_only loading
    assert torch.load(path, weights_only=True)["epoch"] == 1

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_taming_checkpoint(model.first_stage_model, path, epoch=2)
    assert path.read_bytes() == first
    assert (tmp_path / "a.ckpt.sha256").read_text() == first_sum  # still the file's checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "a.ckpt.sha256"]
    with pytest.raises(ValueError, match="state_dict"):
        save_taming_checkpoint(model, tmp_path / "b.ckpt", extra={"state_dict": {}})


# ----------------------------------------------------------------------------- hostile configs

TRUST_FIX = "--set vqgm.trust_checkpoint=true"


@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    """A module on sys.path whose import, and whose function, each leave a marker file.

    Returns (module name, import marker, call marker). A config target naming
    ``<module>.run`` must be refused before the module is imported, let alone called.
    """
    name = f"cortex_hostile_{tmp_path.name.replace('-', '_')}"
    imported, called = tmp_path / "imported.marker", tmp_path / "called.marker"
    (tmp_path / f"{name}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(imported)!r}).write_text('imported')\n"
        "def run(*args, **kwargs):\n"
        f"    pathlib.Path({str(called)!r}).write_text('called')\n"
        "    raise RuntimeError('hostile code ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, imported, called
    sys.modules.pop(name, None)


def _with_target(cfg, keys, target):
    """A plain copy of ``cfg`` with ``{'target': target}`` (or a target) put at ``keys``."""
    c = OmegaConf.to_container(cfg)
    node = c
    for k in keys[:-1]:
        node = node[k]
    if keys[-1] == "target":
        node["target"] = target
    else:
        node[keys[-1]] = {"target": target, "params": {"args": ["touch", "/tmp/pwned"]}}
    return c


_HOSTILE_PLACES = [
    ("model", "params", "permuter_config"),
    ("model", "params", "transformer_config", "target"),
    ("model", "params", "first_stage_config", "target"),
    ("model", "params", "first_stage_config", "params", "lossconfig", "target"),
]


@pytest.mark.parametrize("keys", _HOSTILE_PLACES, ids=lambda k: ".".join(k))
def test_hostile_config_target_is_refused_before_anything_is_imported(tiny, hostile_module, keys):
    cfg, _, path = tiny
    name, imported, called = hostile_module
    hostile = _with_target(cfg, keys, f"{name}.run")
    where = ".".join(keys) + ("" if keys[-1] == "target" else ".target")
    for attempt in (lambda: load_vqgm(hostile, path), lambda: build_from_config(hostile)):
        with pytest.raises(ConfigMismatchError) as e:
            attempt()
        msg = str(e.value)
        assert f"{where} = '{name}.run'" in msg, msg
        assert "only load configs you trust" in e.value.fix
        assert TRUST_FIX in e.value.fix and "load_vqgm(..., trust_checkpoint=True)" in e.value.fix
    assert not imported.exists() and not called.exists()
    assert name not in sys.modules


def test_hostile_target_in_a_list_outside_the_model_is_refused(tiny, hostile_module):
    """Every target counts, lists included, even in sections we never instantiate."""
    cfg, _, path = tiny
    name, imported, called = hostile_module
    c = OmegaConf.to_container(cfg)
    c["data"]["params"]["wrap"] = [{"target": "taming.data.imagenet.ImageNetTrain"},
                                   {"target": f"{name}.run"}]
    where = rf"data\.params\.wrap\[1\]\.target = '{name}\.run'"
    with pytest.raises(ConfigMismatchError, match=where):
        load_vqgm(c, path)
    assert not imported.exists() and not called.exists()


def test_data_targets_are_not_allowed_inside_the_model(tiny):
    """A data-module class would be instantiated if it stood in the model: refused there."""
    cfg, _, path = tiny
    c = _with_target(cfg, ("model", "params", "permuter_config"), "main.DataModuleFromConfig")
    where = r"model\.params\.permuter_config\.target = 'main\.DataModuleFromConfig'"
    with pytest.raises(ConfigMismatchError, match=where):
        load_vqgm(c, path)


def test_unknown_config_target_loads_only_when_trusted(tiny, tmp_path, monkeypatch):
    cfg, model, path = tiny
    (tmp_path / "my_permuter.py").write_text(
        "import torch\n"
        "class Reverse(torch.nn.Module):\n"
        "    def forward(self, x, reverse=False):\n"
        "        return x.flip(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my_permuter" not in sys.modules
    c = _with_target(cfg, ("model", "params", "permuter_config"), "my_permuter.Reverse")
    del c["model"]["params"]["permuter_config"]["params"]
    yaml = tmp_path / "project.yaml"
    OmegaConf.save(OmegaConf.create(c), yaml)
    with pytest.raises(ConfigMismatchError, match=str(yaml)) as e:
        load_vqgm(yaml, path)
    assert "model.params.permuter_config.target = 'my_permuter.Reverse'" in str(e.value)
    assert "my_permuter" not in sys.modules
    try:
        v = load_vqgm(yaml, path, trust_checkpoint=True)
    finally:
        sys.modules.pop("my_permuter", None)
    assert type(v.model.permuter).__name__ == "Reverse"
    assert torch.equal(v.codebook, model.state_dict()[CODEBOOK_KEY])
    # taming's own permuter, named explicitly as in released configs, needs no trust
    ok = _with_target(cfg, ("model", "params", "permuter_config"),
                      "taming.modules.transformer.permuter.Identity")
    del ok["model"]["params"]["permuter_config"]["params"]
    assert type(load_vqgm(ok, path).model.permuter).__name__ == "Identity"


# ----------------------------------------------------------------------------- damaged files


def test_save_writes_a_checksum_sidecar(tiny, tmp_path):
    import hashlib

    _, model, _ = tiny
    path = save_taming_checkpoint(model, tmp_path / "model.ckpt")
    side = tmp_path / "model.ckpt.sha256"
    assert side.read_text() == hashlib.sha256(path.read_bytes()).hexdigest() + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.ckpt.sha256"]


@pytest.mark.parametrize("trust", [False, True])
def test_flipped_bytes_without_sidecar_fail_the_crc_check(tiny, tmp_path, trust):
    cfg, model, _ = tiny
    path = save_taming_checkpoint(model, tmp_path / "model.ckpt")
    (tmp_path / "model.ckpt.sha256").unlink(missing_ok=True)  # as official files: no checksum
    key = "first_stage_model.decoder.conv_out.weight"
    member = flip_bytes_in_tensor(path, model.state_dict()[key])
    with pytest.raises(CheckpointError) as e:
        load_vqgm(cfg, path, trust_checkpoint=trust)
    assert str(path) in e.value.message and repr(member) in e.value.message
    assert "CRC" in e.value.message
    assert e.value.fix.startswith("the file is damaged (truncated or altered): re-download")


def test_flipped_bytes_with_sidecar_fail_the_sha256_check(tiny, tmp_path):
    import hashlib

    cfg, model, _ = tiny
    path = save_taming_checkpoint(model, tmp_path / "model.ckpt")
    recorded = (tmp_path / "model.ckpt.sha256").read_text().strip()
    flip_bytes_in_tensor(path, model.state_dict()["transformer.tok_emb.weight"])
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError) as e:
        load_vqgm(cfg, path)
    assert recorded in e.value.message and actual in e.value.message
    assert str(path) in e.value.message
    assert f"delete {path} (and {path}.sha256)" in e.value.fix and "rerun" in e.value.fix
    # an intact but different checkpoint under the old sidecar is refused the same way
    save_taming_checkpoint(model, tmp_path / "other.ckpt", epoch=3)
    (tmp_path / "other.ckpt").replace(path)
    with pytest.raises(CheckpointError, match=recorded):
        load_vqgm(cfg, path)


def test_legacy_non_zip_checkpoint_still_loads(tiny, tmp_path):
    """The CRC check applies to torch's zip format only; legacy files load as before."""
    cfg, model, _ = tiny
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    v = load_vqgm(cfg, path)
    assert torch.equal(v.codebook, model.state_dict()[CODEBOOK_KEY])


def test_saved_checkpoint_gets_the_umask_mode(tiny, tmp_path):
    import os

    _, model, _ = tiny
    old = os.umask(0o022)
    try:
        path = save_taming_checkpoint(model.first_stage_model, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.ckpt.sha256").stat().st_mode & 0o777 == 0o644
