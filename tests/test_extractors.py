import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cortex_nb.method.extractors import CE, RE, RE_VARIANTS, ExtractorConfig, REScripts, build_extractor, paper_sizes
from cortex_nb.method.saliency import TokenSaliency


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
    res = (256 * 512 * 9 + 2 * 512) + 6 * block + 2 * (512 * 512 + 2 * 512) + (512 * 2048 + 2048) + 2 * 2048 + (2048 * 1000 + 1000)
    sizes = paper_sizes()
    assert {a: sizes[a] for a in ("CE", "RE")} == {"CE": conv + fc, "RE": res}   # RE-scripts: see below


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
    from cortex_nb.vqgm.taming_ckpt import save_taming_checkpoint
    from cortex_nb.vqgm.taming_config import build_from_config
    from cortex_nb.vqgm.taming_shapes import tiny_cin_config
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


# ---------------------------------------------------------------------- RE as the authors' scripts build it
SCRIPTS = dict(arch="RE", variant="scripts")


def test_scripts_variant_layers_at_paper_size():
    """ClassificationNet3 (REFERENCE.md): no stem, 2 stages x 3 blocks, the first block of each stage
    stride 2 with a 1x1 conv + BN projection (256 -> 512, then 512 -> 512), bias-free convs, dropout 0.4."""
    model = build_extractor(ExtractorConfig(**SCRIPTS))
    assert isinstance(model, REScripts) and not hasattr(model, "stem")
    assert [len(stage) for stage in model.layers] == [3, 3]
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage):
            conv1, conv2 = block.body[0], block.body[3]
            cin = 256 if (s, b) == (0, 0) else 512
            assert (conv1.in_channels, conv1.out_channels, conv2.in_channels, conv2.out_channels) == (cin, 512, 512, 512)
            assert conv1.stride == ((2, 2) if b == 0 else (1, 1)) and conv2.stride == (1, 1)
            assert conv1.bias is None and conv2.bias is None
            if b == 0:
                proj, bn = block.shortcut
                assert (proj.kernel_size, proj.stride, proj.in_channels, proj.out_channels) == ((1, 1), (2, 2), cin, 512)
                assert proj.bias is None and isinstance(bn, nn.BatchNorm2d)
            else:
                assert isinstance(block.shortcut, nn.Identity)
            assert (block.se.gate[2].in_features, block.se.gate[2].out_features) == (512, 32)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.4]
    assert [m.p for m in build_extractor(ExtractorConfig(arch="RE")).modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert [m.p for m in build_extractor(ExtractorConfig(arch="CE")).modules() if isinstance(m, nn.Dropout)] == [0.5]


def test_scripts_variant_parameter_count_by_formula():
    d, w, h, C, r = 256, 512, 2048, 1000, 16
    conv3 = lambda cin, cout: cin * cout * 9      # noqa: E731  (bias-free)
    bn = lambda c: 2 * c                           # noqa: E731  (weight, bias)
    se = w * (w // r) + w // r + (w // r) * w + w
    block = lambda cin, proj: conv3(cin, w) + bn(w) + conv3(w, w) + bn(w) + se + proj * (cin * w + bn(w))  # noqa: E731
    stages = block(d, True) + 2 * block(w, False) + block(w, True) + 2 * block(w, False)
    head = (w * h + h) + bn(h) + (h * C + C)
    assert paper_sizes()["RE-scripts"] == stages + head == 30_843_048   # REFERENCE.md: 30.84 M


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN running statistic drawn at random (so that a wrong port shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 1.5 + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * (0.3 if t.dim() < 2 else 0.1))
    return model


def test_scripts_block_gates_the_sum_then_relus():
    """SE on body(x) + shortcut(x), computed by hand from the block's own submodules:
    relu(s · sigmoid(W2 relu(W1 mean(s) + b1) + b2)), s = body(x) + shortcut(x)."""
    from cortex_nb.method.extractors import ResidualSEAfterSum

    torch.manual_seed(0)
    block = _randomise(ResidualSEAfterSum(8, 32, 2, 16).double()).eval()
    x = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        s = block.body(x) + block.shortcut(x)                       # (3, 32, 4, 4)
        fc1, fc2 = block.se.gate[2], block.se.gate[4]
        assert fc1.out_features == 2                                 # 32 // 16: no floor of 4 as in RE's SE
        z = torch.relu(s.mean((2, 3)) @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
        expected = torch.relu(s * torch.sigmoid(z)[:, :, None, None])
        seen = []
        block.se.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
        out = block(x)
        before = torch.relu(block.se(block.body(x)) + block.shortcut(x))   # RE's order, for contrast
    torch.testing.assert_close(seen[0], s, rtol=0, atol=1e-13)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert (out - before).abs().max() > 1e-3


@pytest.mark.parametrize("m", [8, 16])
def test_scripts_variant_at_toy_width(m):
    cfg = ExtractorConfig(d=8, m=m, n_classes=5, width=32, **SCRIPTS)
    model = build_extractor(cfg).eval()
    x = torch.randn(4, 8, m, m)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
        assert model.layers(x).shape == (4, 32, m // 4, m // 4)
    assert full.shape == (4, 5)
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


def test_variant_names_and_refusals():
    from cortex_nb.io.schema import SCHEMA

    assert SCHEMA["extractors.re_variant"].choices == RE_VARIANTS
    assert type(build_extractor(ExtractorConfig(arch="RE"))) is RE           # the default stays A.1.2's RE
    with pytest.raises(ValueError, match="unknown RE variant 'authors'"):
        build_extractor(ExtractorConfig(arch="RE", variant="authors"))
    with pytest.raises(ValueError, match="CE has one variant"):
        build_extractor(ExtractorConfig(arch="CE", variant="scripts"))
    assert ExtractorConfig(dropout=0.2, **SCRIPTS).p_dropout == 0.2


class _ScriptsBlock(nn.Module):
    """A residual block as REFERENCE.md describes the scripts': conv1-bn1-relu-conv2-bn2, + shortcut,
    SE (fc1, fc2) on the sum, relu. Written here from the description, as an oracle."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.se = nn.Module()
        self.se.fc1, self.se.fc2 = nn.Linear(cout, cout // 16), nn.Linear(cout // 16, cout)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        gate = torch.sigmoid(self.se.fc2(torch.relu(self.se.fc1(out.mean(dim=(2, 3))))))
        return torch.relu(out * gate[:, :, None, None])


class _ScriptsRE(nn.Module):
    """ClassificationNet3 as REFERENCE.md describes it: layer1 (d -> w), layer2 (w -> w), three blocks
    each, the first of stride 2; GAP, fc1 (+ bn_fc1, relu), dropout 0.4, fc2."""

    def __init__(self, d, w, h, n_classes):
        super().__init__()
        self.layer1 = nn.Sequential(_ScriptsBlock(d, w, 2), _ScriptsBlock(w, w, 1), _ScriptsBlock(w, w, 1))
        self.layer2 = nn.Sequential(_ScriptsBlock(w, w, 2), _ScriptsBlock(w, w, 1), _ScriptsBlock(w, w, 1))
        self.fc1, self.bn_fc1, self.fc2 = nn.Linear(w, h), nn.BatchNorm1d(h), nn.Linear(h, n_classes)
        self.dropout = nn.Dropout(0.4)

    def forward(self, x):
        x = self.layer2(self.layer1(x)).mean(dim=(2, 3))
        return self.fc2(self.dropout(torch.relu(self.bn_fc1(self.fc1(x)))))


#: the scripts' state-dict names -> ours (REScripts)
_PORT = [(r"^layer(\d)\.(\d)\.", lambda mt: f"layers.{int(mt[1]) - 1}.{mt[2]}."),
         (r"\.conv1\.", ".body.0."), (r"\.bn1\.", ".body.1."), (r"\.conv2\.", ".body.3."), (r"\.bn2\.", ".body.4."),
         (r"\.se\.fc1\.", ".se.gate.2."), (r"\.se\.fc2\.", ".se.gate.4."),
         (r"^fc1\.", "classifier.2."), (r"^bn_fc1\.", "classifier.3."), (r"^fc2\.", "classifier.6.")]


def _port(state: dict) -> dict:
    out = {}
    for name, t in state.items():
        for pattern, repl in _PORT:
            name = re.sub(pattern, repl, name)
        out[name] = t
    return out


@pytest.mark.parametrize("m", [8, 16])
def test_scripts_weights_port_with_equal_logits_and_smoothgrad(m):
    """A scripts-style RE, randomly initialised (BN statistics too), ported by name into REScripts: the
    same eval-mode logits and the same SmoothGrad TSVs (eq. 4-5, and the scripts' variant) on the same noise."""
    d, w, h, C = 16, 32, 64, 7
    theirs = _randomise(_ScriptsRE(d, w, h, C).double(), seed=1).eval()
    ours = REScripts(ExtractorConfig(d=d, m=m, n_classes=C, width=w, fc=h, **SCRIPTS)).double().eval()
    ported = _port(theirs.state_dict())
    assert set(ported) == set(ours.state_dict())
    ours.load_state_dict(ported, strict=True)
    E = torch.randn(3, d, m, m, dtype=torch.float64)
    with torch.no_grad():
        ya, yb = ours(E), theirs(E)
    assert ya.abs().max() > 1e-2                                       # not a degenerate net
    assert (ya - yb).abs().max() < 1e-12
    target = torch.tensor([0, 3, 6])
    for make_ts in (TokenSaliency.paper, TokenSaliency.reference):
        ta, tb = (make_ts(f, n_samples=4).attribute(E, target, generator=torch.Generator().manual_seed(5))
                  for f in (ours, theirs))
        assert ta.shape == (3, m, m) and ta.abs().max() > 0
        assert (ta - tb).abs().max() <= 1e-12 * tb.abs().max()           # relative: TSVs here are ~1e-6


# ---------------------------------------------------------------------- extractors.re_variant in the profile
def _stores():
    return (SimpleNamespace(meta={"split": "train", "n": 10}), SimpleNamespace(meta={"split": "val", "n": 5}))


def _key_without_re_variant(cfg, arch, train, val):
    """extractor_key as it was before extractors.re_variant existed (the section less archs)."""
    from omegaconf import OmegaConf

    from cortex_nb.io.files import digest
    from cortex_nb.pipeline.keys import replicate_seed, store_key

    section = {k: v for k, v in OmegaConf.to_container(cfg.extractors, resolve=True).items()
               if k not in ("archs", "re_variant")}
    return digest({"arch": arch, "extractors": section, "seed": replicate_seed(cfg),
                   "n_classes": int(cfg.world.n_classes), "train": store_key(train), "val": store_key(val)})


def test_re_variant_profile_key_builds_the_variant():
    from cortex_nb.io.config import load_profile
    from cortex_nb.pipeline.run import extractor_config

    vq = SimpleNamespace(d=8, m=8)
    assert load_profile("toy").extractors.re_variant == "paper"
    cfg = load_profile("smoke")
    assert type(build_extractor(extractor_config(cfg, "RE", vq))) is RE
    cfg = load_profile("smoke", **{"extractors.re_variant": "scripts"})
    assert extractor_config(cfg, "RE", vq).variant == "scripts"
    assert extractor_config(cfg, "CE", vq).variant == "paper"
    model = build_extractor(extractor_config(cfg, "RE", vq))
    assert type(model) is REScripts and [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.4]
    assert type(build_extractor(extractor_config(cfg, "CE", vq))) is CE


def test_a_bad_re_variant_is_refused():
    from cortex_nb.io.config import ProfileError, load_profile

    with pytest.raises(ProfileError, match="extractors.re_variant = 'authors' is not allowed; expected one of "
                                           "paper, scripts"):
        load_profile("smoke", **{"extractors.re_variant": "authors"})


def test_re_variant_keeps_the_default_keys_and_changes_only_res():
    from cortex_nb.io.config import load_profile
    from cortex_nb.pipeline.keys import extractor_key, profile_section

    train, val = _stores()
    paper, scripts = load_profile("smoke"), load_profile("smoke", **{"extractors.re_variant": "scripts"})
    for arch in ("CE", "RE"):   # the default: the keys that existing caches carry
        assert extractor_key(paper, arch, train, val) == _key_without_re_variant(paper, arch, train, val)
    assert "re_variant" not in profile_section(paper, "extractors")          # e.g. the scene CE of s08_bias
    assert extractor_key(scripts, "CE", train, val) == extractor_key(paper, "CE", train, val)
    assert extractor_key(scripts, "RE", train, val) != extractor_key(paper, "RE", train, val)
