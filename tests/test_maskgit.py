"""Tests for the MaskGIT toy family: cortex_nb.toy.maskgit (model, sampler, protocol) and cortex_nb.toy.maskgit_training
(training, build, save / load).

Tiny configs, few steps: behaviour, not quality. Oracles: a brute-force ``torch.cdist`` argmin for quantisation,
``VectorQuantize``'s own indices, the cosine schedule written out with ``math``, the inputs the prior actually sees
during decoding (a forward hook), the prior's argmax for one-step greedy decoding, an uninterrupted run for resume.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cortex_nb.errors import CheckpointError
from cortex_nb.io.files import checksum_path
from cortex_nb.toy import world as toyworld
from cortex_nb.toy.maskgit import (BidirectionalTransformer, MaskGITConfig, MaskGITNet, MaskGITVQGM, build_maskgit,
                                   cosine_schedule, maskgit_decode, sample_categorical)
from cortex_nb.toy.maskgit_training import (build_toy_maskgit, load_maskgit, mask_tokens, save_maskgit,
                                            train_prior, train_tokenizer)
from cortex_nb.vqgm.protocol import VQGMProtocol, check_vqgm
from cortex_nb.vqgm.taming import TokenRangeError

TINY = MaskGITConfig(K=32, d=16, z_channels=16, ch=32, ch_mult=(1, 1, 1), tok_steps=20, tok_batch_size=8,
                     tok_warmup=3, n_layer=1, n_head=2, n_embd=32, prior_n_train=32, prior_steps=4,
                     prior_batch_size=16, prior_warmup=2, log_every=1, ckpt_every=5, n_report=16, amp=False)
N_CLASSES = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MaskGIT whose tokenizer trained TINY.tok_steps steps (a real codebook), with a random prior."""
    torch.set_num_threads(1)
    tok, stats = train_tokenizer(TINY, seed=0, ckpt_dir=tmp_path_factory.mktemp("mg"), n_classes=N_CLASSES,
                                 progress=False)
    prior = build_maskgit(TINY, N_CLASSES, seed=1).net.prior
    return MaskGITVQGM(MaskGITNet(tok, prior), TINY, N_CLASSES), stats


def _images(n, seed=123):
    return toyworld.to_tensor(toyworld.sample(n, seed, n_classes=N_CLASSES).images)


# ---- config and protocol ----------------------------------------------------------------------


def test_config_checks_and_its_parts():
    with pytest.raises(ValueError, match="GroupNorm"):
        MaskGITConfig(ch=48)
    with pytest.raises(ValueError, match="n_head"):
        MaskGITConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="steps"):
        MaskGITConfig(steps=0)
    cfg = MaskGITConfig()
    assert (cfg.m, cfg.K, cfg.d) == (8, 512, 64)
    tok, prior, sampler = (set(cfg.settings(p)) for p in ("tokenizer", "prior", "sampler"))
    assert tok & prior == {"min_lr_frac", "amp", "ckpt_every", "log_every"} and not (tok | prior) & sampler
    assert tok | prior | sampler | {"n_report"} == {f.name for f in dataclasses.fields(cfg)}
    assert {"tok_steps", "K", "decay"} <= tok and {"prior_steps", "n_embd"} <= prior


def test_the_model_implements_the_protocol(trained):
    vq, _ = trained
    assert isinstance(vq, VQGMProtocol) and check_vqgm(vq, "here") is vq
    assert (vq.K, vq.d, vq.m, vq.image_size, vq.n_classes) == (32, 16, 8, 32, N_CLASSES)
    assert torch.equal(vq.codebook, vq.net.tokenizer.quantize.codebook) and not vq.codebook.requires_grad
    assert vq.codebook.abs().sum() > 0                          # k-means initialised, not the zeros it starts as
    ident = vq.identity()
    assert ident["family"] == "maskgit" and ident["config"]["K"] == 32 and ident["config"]["n_classes"] == N_CLASSES
    fp = vq.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert vq.to("cpu") is vq and vq.device == torch.device("cpu")


def test_embed_is_the_codebook_rows_and_quantize_the_nearest_code(trained):
    vq, _ = trained
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, vq.K, (3, vq.m, vq.m), generator=g)
    E = vq.embed(t)
    assert E.shape == (3, vq.d, vq.m, vq.m)
    assert torch.equal(E[1, :, 2, 5], vq.codebook[t[1, 2, 5]])
    assert torch.equal(vq.quantize(E), t)                      # a code quantises to itself
    F = torch.randn(2, vq.d, 3, 5, generator=g)                # any grid, not only m x m
    brute = torch.cdist(F.permute(0, 2, 3, 1).reshape(-1, vq.d), vq.codebook).argmin(1).reshape(2, 3, 5)
    assert torch.equal(vq.quantize(F), brute)
    assert torch.equal(vq.embed(t.to(torch.int32).numpy().astype("uint16")), E)   # any integer dtype


def test_encode_is_the_nearest_code_of_the_encoder_output_and_what_vectorquantize_returns(trained):
    vq, _ = trained
    x = _images(6)
    tokens = vq.encode(x, batch_size=6)
    assert tokens.shape == (6, vq.m, vq.m) and tokens.dtype == torch.int64
    with torch.no_grad():
        h = vq.net.tokenizer.features(x)                                        # (6, d, m, m)
        before = vq.codebook.clone()
        _, idx, _ = vq.net.tokenizer.quantize(h)                                # the library, in eval mode
    assert torch.equal(vq.codebook, before)                                     # eval: no EMA update
    brute = torch.cdist(h.permute(0, 2, 3, 1).reshape(-1, vq.d), vq.codebook).argmin(1).reshape(6, vq.m, vq.m)
    assert torch.equal(tokens, brute) and torch.equal(tokens, idx) and torch.equal(tokens, vq.quantize(h))


def test_decode_shapes_range_gradients_and_validation(trained):
    vq, _ = trained
    t = vq.encode(_images(3))
    img = vq.decode(t)
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    E = vq.embed(t).requires_grad_(True)
    vq.decode_embeddings(E, clamp=False).square().sum().backward()             # the caller's grad mode
    assert E.grad is not None and E.grad.abs().sum() > 0
    assert all(p.grad is None for p in vq.net.parameters())
    assert torch.equal(vq.decode_embeddings(vq.embed(t), clamp=True), img)
    assert vq.encode(torch.empty(0, 3, 32, 32)).shape == (0, 8, 8)
    assert vq.decode(torch.empty(0, 8, 8, dtype=torch.int64)).shape == (0, 3, 32, 32)
    with pytest.raises(TokenRangeError, match="K=32"):
        vq.decode(torch.full((1, 8, 8), 32))
    with pytest.raises(TokenRangeError, match="out of range"):
        vq.embed(torch.full((1, 8, 8), -1))
    with pytest.raises(TokenRangeError, match=r"\(B, 8, 8\)"):
        vq.embed(torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError):
        vq.embed(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        vq.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 16, h, w\)"):
        vq.quantize(torch.zeros(1, 3, 8, 8))


# ---- sampling --------------------------------------------------------------------------------


def test_sampling_is_seeded_in_range_and_leaves_the_global_rng_alone(trained):
    vq, _ = trained
    labels = torch.tensor([0, 1, 2, 3, 0])
    state = torch.random.get_rng_state()
    a = vq.sample(labels, seed=7, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (5, 8, 8) and a.dtype == torch.int64 and 0 <= int(a.min()) and int(a.max()) < vq.K
    assert torch.equal(vq.sample(labels, seed=7, batch_size=2), a)
    assert not torch.equal(vq.sample(labels, seed=8, batch_size=2), a)
    assert vq.sample(torch.zeros(0, dtype=torch.int64), seed=0).shape == (0, 8, 8)


@pytest.mark.parametrize("steps", [1, 3, 8, 12])
def test_decoding_follows_the_cosine_schedule_and_keeps_fixed_tokens(trained, steps):
    vq, _ = trained
    n = vq.m * vq.m
    want = [math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)) for t in range(steps)]
    want[-1] = 0
    assert cosine_schedule(n, steps) == want
    seen = []                                   # what the prior is fed at every step
    hook = vq.net.prior.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    record = []
    try:
        out = maskgit_decode(vq.net.prior, torch.tensor([0, 1, 2]), steps=steps, choice_temperature=4.5,
                             generator=torch.Generator().manual_seed(0), record=record)
    finally:
        hook.remove()
    assert [r.tolist() for r in record] == [[c] * 3 for c in want]
    K = vq.K
    assert [(x == K).sum(1).tolist() for x in seen] == [[c] * 3 for c in [n] + want[:-1]]
    for x, y in zip(seen, seen[1:] + [out]):
        fixed = x != K
        assert torch.equal(y[fixed], x[fixed])   # a token once fixed is never re-masked or changed
    assert int(out.max()) < K and int(out.min()) >= 0


def test_chunked_and_deduplicated_prior_calls_give_the_tokens_of_one_call_per_step(trained, monkeypatch):
    """The sampler calls the prior in chunks of _DECODE_ROWS rows and, at the all-[MASK] first step, once per distinct
    label; oracle: the same decoding with one plain prior call per step (repeated labels, more than two chunks)."""
    from cortex_nb.toy import maskgit_sampler as sampler

    vq, _ = trained
    B = 2 * sampler._DECODE_ROWS + 22
    labels = torch.randint(0, N_CLASSES, (B,), generator=torch.Generator().manual_seed(3))
    calls = []
    hook = vq.net.prior.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        fast = vq.sample(labels, seed=11, batch_size=B, steps=4)
    finally:
        hook.remove()
    assert calls == [N_CLASSES] + [sampler._DECODE_ROWS, sampler._DECODE_ROWS, 22] * 3
    monkeypatch.setattr(sampler, "_prior_logits", lambda prior, x, y, masked, all_masked=False: prior(x, y)[masked])
    assert torch.equal(vq.sample(labels, seed=11, batch_size=B, steps=4), fast)


def test_categorical_draws_follow_the_probabilities_and_never_a_zero_one():
    """Oracle: the probabilities themselves (each id's frequency within 5 binomial standard errors over 200,000 draws),
    unnormalised rows, ids of zero mass (first, inner, last), one-hot rows, and the generator's seed."""
    p = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0]) * 3.0           # unnormalised, zeros at both ends and inside
    n = 200_000
    draws = sample_categorical(p.expand(n, -1), torch.Generator().manual_seed(0))
    assert draws.dtype == torch.int64 and draws.shape == (n,)
    freq = torch.bincount(draws, minlength=6).double() / n
    want = (p / p.sum()).double()
    assert torch.all(freq[want == 0] == 0)
    se = (want * (1 - want) / n).sqrt()
    assert torch.all((freq - want).abs() <= 5 * se + 1e-12), (freq, want)
    onehot = torch.eye(5)[torch.tensor([4, 0, 2, 2])]
    assert sample_categorical(onehot, torch.Generator().manual_seed(1)).tolist() == [4, 0, 2, 2]
    q = torch.rand(50, 7, generator=torch.Generator().manual_seed(9))
    a = sample_categorical(q, torch.Generator().manual_seed(2))
    assert torch.equal(sample_categorical(q, torch.Generator().manual_seed(2)), a)
    assert not torch.equal(sample_categorical(q, torch.Generator().manual_seed(3)), a)


def test_one_step_greedy_decoding_is_the_priors_argmax(trained):
    vq, _ = trained
    labels = torch.tensor([0, 3, 1])
    with torch.no_grad():
        x = torch.full((3, vq.m * vq.m), vq.K)
        want = vq.net.prior(x, labels).argmax(-1).reshape(3, vq.m, vq.m)
    for seed in (0, 1):
        assert torch.equal(vq.sample(labels, top_k=1, steps=1, seed=seed), want)


def test_greedy_ignores_the_seed_and_a_tiny_top_p_is_greedy(trained):
    vq, _ = trained
    labels = torch.tensor([0, 1, 2, 3])
    g = vq.sample(labels, top_k=1, choice_temperature=0, seed=0)
    assert torch.equal(vq.sample(labels, top_k=1, choice_temperature=0, seed=123), g)
    assert torch.equal(vq.sample(labels, top_p=1e-6, choice_temperature=0, seed=5), g)
    assert not torch.equal(vq.sample(labels, seed=0), vq.sample(labels, seed=0, choice_temperature=0))


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=-1.0), dict(top_k=0), dict(top_k=1.5),
                                dict(top_k=True), dict(steps=0), dict(steps=2.0), dict(top_p=0.0),
                                dict(top_p=1.5), dict(choice_temperature=-1.0), dict(batch_size=0)])
def test_sampling_knobs_are_validated(trained, kw):
    vq, _ = trained
    with pytest.raises(ValueError):
        vq.sample([0, 1], seed=0, **kw)


def test_labels_are_validated(trained):
    vq, _ = trained
    with pytest.raises(ValueError, match="out of range 0..3"):
        vq.sample([0, N_CLASSES], seed=0)
    with pytest.raises(TypeError):
        vq.sample(torch.tensor([0.0]), seed=0)


def test_with_prior_leaves_the_original_in_place(trained):
    vq, _ = trained
    before, own = vq.identity(), vq.net.prior
    other_prior = build_maskgit(TINY, N_CLASSES, seed=2).net.prior
    other = vq.with_prior(other_prior)
    assert other.net.prior is other_prior and vq.net.prior is own
    assert other.net.tokenizer is vq.net.tokenizer and other.fingerprint() == vq.fingerprint()
    assert vq.identity() == before and other.identity()["weights"] != before["weights"]
    assert not torch.equal(other.sample([0, 1], seed=0), vq.sample([0, 1], seed=0))
    with pytest.raises(ValueError, match="K=32"):
        vq.with_prior(BidirectionalTransformer(K=16, m=8, n_classes=N_CLASSES, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(TypeError):
        vq.with_prior(torch.nn.Linear(2, 2))


# ---- save / load -----------------------------------------------------------------------------


def test_save_load_round_trip(trained, tmp_path):
    vq, _ = trained
    paths = save_maskgit(vq, tmp_path)
    assert paths["model"].is_file() and checksum_path(paths["model"]).is_file()
    back = load_maskgit(tmp_path)
    assert torch.equal(back.codebook, vq.codebook) and back.fingerprint() == vq.fingerprint()
    assert back.identity() == vq.identity()
    x = _images(4)
    assert torch.equal(back.encode(x), vq.encode(x))
    assert torch.equal(back.sample([0, 1, 2], seed=3), vq.sample([0, 1, 2], seed=3))
    assert torch.allclose(back.decode(vq.encode(x)), vq.decode(vq.encode(x)))


def test_sampler_knobs_are_the_loaders_not_the_builds(trained, tmp_path):
    """The build key (what decides whether a shipped / cached model is reused or trained) ignores the sampler's
    knobs and follows a training setting; load_maskgit's ``sampler`` replaces the saved defaults, and sampling then
    decodes in that many steps (the same as passing ``steps`` to sample; temperature and top_k are sample's own
    arguments, as in the protocol, which the pipeline passes from the profile's data section)."""
    from cortex_nb.toy.maskgit_training import build_key

    vq, _ = trained
    base = MaskGITConfig()
    assert build_key(dataclasses.replace(base, steps=3, temperature=0.7, top_k=5, choice_temperature=0.0)) == \
        build_key(base)
    assert build_key(dataclasses.replace(base, prior_steps=base.prior_steps + 1)) != build_key(base)
    save_maskgit(vq, tmp_path)
    back = load_maskgit(tmp_path, sampler={"steps": 2, "temperature": 0.5})
    assert (back.config.steps, back.config.temperature) == (2, 0.5) and vq.config.steps != 2
    assert back.identity() != vq.identity()                       # caches keyed on the VQGM see the knobs
    assert torch.equal(back.sample([0, 1, 2], seed=3), vq.sample([0, 1, 2], seed=3, steps=2))
    assert not torch.equal(back.sample([0, 1, 2], seed=3), vq.sample([0, 1, 2], seed=3))
    with pytest.raises(ValueError, match="unknown knob"):
        load_maskgit(tmp_path, sampler={"prior_steps": 5})
    with pytest.raises(ValueError):
        load_maskgit(tmp_path, sampler={"steps": 0})


def test_damaged_or_missing_files_raise_checkpoint_error(trained, tmp_path):
    vq, _ = trained
    paths = save_maskgit(vq, tmp_path)
    model = paths["model"]
    blob = model.read_bytes()
    model.write_bytes(blob[: len(blob) // 2])                    # truncated, sidecar kept: checksum mismatch
    with pytest.raises(CheckpointError) as err:
        load_maskgit(tmp_path)
    assert str(model) in str(err.value) and "\n" not in str(err.value)
    checksum_path(model).unlink()                                 # truncated, no sidecar: unreadable
    with pytest.raises(CheckpointError) as err:
        load_maskgit(tmp_path)
    assert str(model) in str(err.value) and "\n" not in str(err.value)
    model.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_maskgit(tmp_path)
    save_maskgit(vq, tmp_path)
    paths["config"].write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_maskgit(tmp_path)


# ---- training --------------------------------------------------------------------------------


def test_a_short_tokenizer_run_lowers_the_reconstruction_loss(trained):
    _, stats = trained
    rec = [r["rec"] for r in stats["history"]]
    assert stats["steps"] == TINY.tok_steps and len(rec) == TINY.tok_steps
    assert sum(rec[-3:]) / 3 < 0.8 * sum(rec[:3]) / 3
    assert stats["history"][-1]["used"] > TINY.K // 2            # dead-code restarts keep the codebook in use


def test_tokenizer_training_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = dataclasses.replace(TINY, tok_steps=4, ckpt_every=2)
    whole, _ = train_tokenizer(cfg, seed=3, ckpt_dir=tmp_path / "a", n_classes=N_CLASSES, progress=False)

    def stop(step, row):
        if step == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(cfg, seed=3, ckpt_dir=tmp_path / "b", n_classes=N_CLASSES, progress=False, callback=stop)
    resumed, stats = train_tokenizer(cfg, seed=3, ckpt_dir=tmp_path / "b", n_classes=N_CLASSES, progress=False)
    assert stats["steps"] == 4 and [r["step"] for r in stats["history"]] == [1, 2, 3, 4]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mask_tokens_masks_ceil_cos_of_the_grid():
    z = torch.arange(6 * 64).reshape(6, 64) % 32
    inp, mask = mask_tokens(z, 32, torch.Generator().manual_seed(5))
    r = torch.rand(6, generator=torch.Generator().manual_seed(5))            # the same first draw
    want = [max(1, math.ceil(math.cos(math.pi / 2 * float(v)) * 64)) for v in r]
    assert mask.sum(1).tolist() == want
    assert torch.equal(inp[mask], torch.full((int(mask.sum()),), 32)) and torch.equal(inp[~mask], z[~mask])


def test_a_short_prior_run_learns_class_c_is_token_c(tmp_path):
    cfg = dataclasses.replace(TINY, prior_steps=80, prior_lr=3e-3, prior_warmup=5, ckpt_every=100)
    labels = torch.arange(64) % N_CLASSES
    tokens = labels[:, None, None].expand(64, 8, 8).clone()
    prior, stats = train_prior(cfg, tokens, labels, n_classes=N_CLASSES, seed=0, ckpt_dir=tmp_path, progress=False)
    assert stats["history"][-1]["loss"] < 0.5 * stats["history"][0]["loss"]
    vq = build_maskgit(cfg, N_CLASSES).with_prior(prior)
    out = vq.sample(torch.arange(N_CLASSES), top_k=1, choice_temperature=0, seed=0)
    assert torch.equal(out, torch.arange(N_CLASSES)[:, None, None].expand(N_CLASSES, 8, 8))


def test_build_saves_reports_and_is_cached(tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, tok_steps=3, prior_steps=3)
    res = build_toy_maskgit(tmp_path, cfg, seed=0, n_classes=N_CLASSES)
    rep = res["report"]
    assert not rep["cached"] and rep["n_images"] == cfg.n_report and rep["K"] == cfg.K
    assert 0 < rep["recon_l1"] < 2 and rep["recon_mse"] > 0 and 1 <= rep["used"] <= cfg.K
    vq = load_maskgit(res["dir"])
    assert vq.fingerprint() == rep["fingerprint"] and vq.n_classes == N_CLASSES
    import cortex_nb.toy.maskgit_training as T

    monkeypatch.setattr(T, "train_tokenizer", lambda *a, **k: pytest.fail("retrained a cached build"))
    again = build_toy_maskgit(tmp_path, cfg, seed=0, n_classes=N_CLASSES)
    assert again["report"]["cached"] and again["report"]["recon_l1"] == rep["recon_l1"]


# --------------------------------------------------------------------------------------------
# the profile's family through the pipeline and the command line


def test_the_maskgit_family_runs_fig3_and_table3_through_the_cli(tmp_path, monkeypatch, capsys):
    """vqgm.family=maskgit: the pipeline trains (here: a tiny) toy MaskGIT, caches it, and every section runs on
    it through the protocol; its build is reused by the next command, and the model gates alone are gates."""
    import json

    from cortex_nb.__main__ import main
    from cortex_nb.pipeline import gates

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
    sets = ["threads=1", "device=cpu", "progress=false", "world.n_classes=4", "optimization.pairs=[[0, 1], [2, 3]]",
            "data.n_train=2", "data.n_val=1", "data.n_test=1", "data.shard_size=8", "extractors.width=8",
            "extractors.epochs=1", "extractors.batch_size=16", "evaluators.names=[vit_p4]", "evaluators.n_train=32",
            "evaluators.n_val=16", "evaluators.fit.max_steps_per_epoch=1", "saliency.chunk=8", "saliency.n_samples=2",
            "saliency.random_seeds=1", "optimization.steps=2", "optimization.record_every=1", "robustness=false",
            "vqgm.family=maskgit", f"vqgm.maskgit={json.dumps(tiny)}"]
    args = [a for s in sets for a in ("--set", s)]
    for command in ("fig3", "table3"):
        assert main([command, "--profile", "smoke", *args]) == 0, capsys.readouterr().err
    tables = tmp_path / "results" / "smoke" / "tables"
    assert (tables / "fig3_image_level.csv").stat().st_size > 0 and (tables / "table3_paired.csv").stat().st_size > 0
    build = tmp_path / "results" / "smoke" / "cache" / "vqgm-maskgit"
    assert {"config.json", "model.pt", "report.json", "build.json"} <= {p.name for p in build.iterdir()}
    from cortex_nb.io.config import load_profile

    cfg = load_profile("smoke", **{"vqgm.family": "maskgit"})
    assert not gates.science(cfg) and gates.science(load_profile("smoke"))
    assert set(gates.check(tables, science=False).gate) <= set(gates.MODEL_GATES)
