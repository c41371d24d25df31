"""cortex_nb.vqgm.paper_dry: the released cin config at the paper's shapes, random-weight checkpoints written and read back
through the one loader, the dry marker, the refusal outside the paper-dry profile, and the evaluators built with
weights=None and the real preprocessing."""
import pytest
import torch
from omegaconf import OmegaConf

from cortex_nb.vqgm.paper_dry import (CIN_GPT, DRY_MARKER, VQGAN_F16, dry_imagenet_evaluators, released_cin_config,
                                 write_dry_vqgm)
from cortex_nb.vqgm.taming_config import instantiate, sanitize_config
from cortex_nb.vqgm import load_vqgm

#: small shapes with the released structure (two down-sampling levels, attention at 4 px): the real ones are
#: checked on the meta device below, without allocating 1.4 B parameters
SMALL = dict(gpt=dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
             vqgan=dict(n_embed=64, embed_dim=8, z_channels=8, resolution=16, ch=32, ch_mult=(1, 2, 2),
                        num_res_blocks=1, attn_resolutions=(4,)))


def test_the_released_config_has_the_papers_shapes():
    cfg = released_cin_config()
    p = cfg.model.params
    assert p.first_stage_config.params.n_embed == 16384 and p.first_stage_config.params.embed_dim == 256
    dd = p.first_stage_config.params.ddconfig
    assert dd.resolution == 256 and list(dd.ch_mult) == [1, 1, 2, 2, 4]        # 256 / 2**4 = 16 x 16 tokens
    assert p.cond_stage_config.params.n_classes == 1000
    assert dict(p.transformer_config.params) == {**CIN_GPT, "vocab_size": VQGAN_F16["n_embed"]}
    # as released: the LPIPS loss and a nested first-stage checkpoint, which the loader must drop
    assert "ckpt_path" in p.first_stage_config.params
    assert "LPIPS" in p.first_stage_config.params.lossconfig.target
    model_cfg, changed = sanitize_config(cfg)
    assert "ckpt_path" not in model_cfg.params.first_stage_config.params and changed
    with torch.device("meta"):
        model = instantiate(model_cfg)
    gpt = sum(t.numel() for t in model.transformer.parameters())
    assert 1.3e9 < gpt < 1.5e9                                                  # ~1.4 B (taming: 1.4 B)
    assert tuple(model.first_stage_model.quantize.embedding.weight.shape) == (16384, 256)


def test_a_dry_checkpoint_round_trips_through_the_loader(tmp_path):
    cfg = released_cin_config(n_classes=7, **SMALL)
    paths = write_dry_vqgm(tmp_path / "dry", cfg, seed=3)
    assert OmegaConf.load(paths["config"]) == cfg                              # the config as released, not sanitized
    raw = torch.load(paths["ckpt"], weights_only=False)
    assert DRY_MARKER in raw and "optimizer_states" in raw
    vq = load_vqgm(paths["config"], paths["ckpt"])
    assert vq.dry_run and vq.K == 64 and vq.m == 4
    # the weights written are the seeded model's
    torch.manual_seed(3)
    ref = instantiate(sanitize_config(cfg)[0])
    for k, v in ref.state_dict().items():
        if not k.startswith("first_stage_model.loss"):
            assert torch.equal(v, vq.model.state_dict()[k]), k
    tokens = vq.sample(torch.tensor([0, 6]), seed=1)
    assert tokens.shape == (2, 4, 4) and int(tokens.max()) < 64
    assert vq.decode(tokens).shape == (2, 3, 16, 16)
    mtime = paths["ckpt"].stat().st_mtime_ns
    assert write_dry_vqgm(tmp_path / "dry", cfg, seed=3) == paths and paths["ckpt"].stat().st_mtime_ns == mtime


def test_profiles_other_than_paper_dry_refuse_a_dry_checkpoint(tmp_path, monkeypatch):
    from cortex_nb import load_profile

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path / "results_root"))   # setup() writes profile.yaml there
    from cortex_nb.errors import CheckpointError
    from cortex_nb.pipeline.run import get_vqgm

    small = dict(gpt=SMALL["gpt"], vqgan={**SMALL["vqgan"], "n_embed": 1024})   # 1000 class ids need vocab >= 1000
    paths = write_dry_vqgm(tmp_path / "dry", released_cin_config(n_classes=1000, **small))
    cfg = load_profile("imagenet", **{"vqgm.config": str(paths["config"]), "vqgm.ckpt": str(paths["ckpt"]),
                                      "device": "cpu"})
    with pytest.raises(CheckpointError, match="random weights written for the paper-dry profile"):
        get_vqgm(cfg)


def test_dry_evaluators_have_random_weights_and_the_real_preprocessing():
    evs = dry_imagenet_evaluators(["resnet18"], seed=0)
    ev = evs["resnet18"]
    assert ev.spec["dry_run"] and ev.spec["crop"] == 224 and ev.spec["resize"] == 256
    assert ev.spec["mean"] == pytest.approx([0.485, 0.456, 0.406])
    again = dry_imagenet_evaluators(["resnet18"], seed=0)["resnet18"]
    w1, w2 = ev.model.conv1.weight, again.model.conv1.weight
    assert torch.equal(w1, w2)                                                  # seeded
    p = ev(torch.zeros(2, 3, 256, 256).uniform_(-1, 1))
    assert p.shape == (2, 1000)


def test_the_paper_dry_benchmark_runs_end_to_end_at_small_shapes(tmp_path):
    """benchmarks/paper_dry.py --quick: write -> load -> sample -> decode -> evaluators -> CE / RE step, TSV and
    Gumbel selection, through the same functions as at the real shapes; its JSON names every stage."""
    import importlib
    import json
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    bench = importlib.import_module("paper_dry")
    out = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cache", str(tmp_path / "vqgm"),
                      "--samples", "2"])
    written = json.loads((tmp_path / "paper_dry.json").read_text())
    assert written["quick"] and written["extra"]["checkpoint_gb"] > 0
    names = " | ".join(r["benchmark"] for r in written["rows"])
    for part in ("write the checkpoint", "through load_vqgm", "sample 2 grids", "vit_b_16 on 4 masked", "CE: TSV",
                 "RE: Gumbel"):
        assert part in names
    assert out["per_sample"] > 0 and "PAPER-DRY" in written["extra"]["note"]
    md = (tmp_path / "paper_dry.md").read_text()
    assert "PAPER-DRY" in md and "| sampling, s per sample |" in md


def test_the_loader_casts_a_checkpoint_stored_in_another_dtype(tmp_path):
    """A checkpoint whose tensors are float16 loads into the float32 model as before (the meta-device fast path
    would keep float16: the loader falls back to the CPU build and casts)."""
    cfg = released_cin_config(n_classes=7, **SMALL)
    paths = write_dry_vqgm(tmp_path / "dry", cfg, seed=3)
    raw = torch.load(paths["ckpt"], weights_only=False)
    raw["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in raw["state_dict"].items()}
    half = tmp_path / "half.ckpt"
    torch.save(raw, half)
    vq = load_vqgm(paths["config"], half)
    assert all(p.dtype == torch.float32 for p in vq.model.parameters())
    ref = load_vqgm(paths["config"], paths["ckpt"])
    w, w_ref = vq.model.transformer.head.weight, ref.model.transformer.head.weight
    assert torch.equal(w, w_ref.half().float()) and not torch.equal(w, w_ref)
