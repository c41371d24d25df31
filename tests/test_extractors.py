import pytest
import torch

from cortex_nb.extractors import CE, RE, ExtractorConfig, build_extractor, paper_sizes


@pytest.mark.parametrize("arch", ["CE", "RE"])
@pytest.mark.parametrize("size", [dict(), dict(d=64, m=8, n_classes=10, width=64)], ids=["paper", "toy"])
def test_output_shape(arch, size):
    cfg = ExtractorConfig(arch=arch, **size)
    model = build_extractor(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(2, cfg.d, cfg.m, cfg.m))
    assert out.shape == (2, cfg.n_classes)


def test_paper_size_parameter_counts_follow_appendix_a1():
    # CE, counted by hand from A.1.1: 8 convs (no bias) + BN, FC 512*4*4 -> 4096 -> 4096 -> 1000 + 2 BN
    conv = 256 * 512 * 9 + 7 * 512 * 512 * 9 + 8 * 2 * 512
    fc = (512 * 16 * 4096 + 4096) + 2 * 4096 + (4096 * 4096 + 4096) + 2 * 4096 + (4096 * 1000 + 1000)
    # RE from A.1.2 with our stem and stride-2 projections: stem conv+BN, 6 blocks of 2 convs + 2 BN + SE(512->32->512),
    # two 1x1 projections + BN, FC 512 -> 2048 (+BN) -> 1000
    se = 512 * 32 + 32 + 32 * 512 + 512
    block = 2 * 512 * 512 * 9 + 2 * 2 * 512 + se
    re = (256 * 512 * 9 + 2 * 512) + 6 * block + 2 * (512 * 512 + 2 * 512) + (512 * 2048 + 2048) + 2 * 2048 + (2048 * 1000 + 1000)
    assert paper_sizes() == {"CE": conv + fc, "RE": re}


def test_ce_needs_grid_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        CE(ExtractorConfig(m=10))


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown extractor"):
        build_extractor(ExtractorConfig(arch="XE"))


def test_eval_mode_is_per_sample():
    """In eval mode each output depends only on its own input (what batched TSV relies on)."""
    model = RE(ExtractorConfig(d=8, m=8, n_classes=5, width=32)).eval()
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


def test_embeddings_from_stored_tokens_equal_the_vqgms_own_lookup(tmp_path):
    """What the extractors train on (stages.embed_fn over stored uint16 ids) is the VQGM's own
    token-based embedding E: its quantizer's lookup (taming's get_codebook_entry) and vqgm.embed."""
    import numpy as np

    from cortex_nb.pipeline.run import embed_fn
    from cortex_nb.taming_ckpt import save_taming_checkpoint
    from cortex_nb.taming_config import build_from_config, tiny_cin_config
    from cortex_nb.vqgm import load_vqgm

    cfg = tiny_cin_config(n_embed=64, embed_dim=8)
    model = build_from_config(cfg)
    save_taming_checkpoint(model, tmp_path / "m.ckpt")
    vq = load_vqgm(cfg, tmp_path / "m.ckpt")
    stored = np.random.default_rng(0).integers(0, vq.K, size=(5, vq.m, vq.m)).astype(np.uint16)
    E = embed_fn(vq.codebook)(torch.from_numpy(stored))
    assert E.shape == (5, vq.d, vq.m, vq.m)
    torch.testing.assert_close(E, vq.embed(stored), rtol=0, atol=0)
    quantizer = vq.model.first_stage_model.quantize
    own = quantizer.get_codebook_entry(torch.from_numpy(stored.astype(np.int64)).flatten(), (5, vq.m, vq.m, vq.d))
    torch.testing.assert_close(E, own, rtol=0, atol=0)
