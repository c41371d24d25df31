"""The VQGM protocol (cortex_nb.vqgm.protocol): a model that is not taming's enters the whole pipeline through it.

``TinyVQGM`` below is a third implementation written here, in a few dozen lines: a random codebook, a linear patch
encoder and decoder, a uniform sampler. The CLI runs Fig. 3, Table 2 and Table 3 end to end on it, chosen by the
profile (``vqgm.family=python``, ``vqgm.factory=<this module>:tiny_vqgm``), so nothing in the method layer or the
pipeline can reach past the protocol into a taming model (it has no ``.model``, no Labelator, no GPT).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cortex_nb.__main__ import main
from cortex_nb.io.files import digest, weights_key
from cortex_nb.vqgm.protocol import VQGMProtocol, check_vqgm


class TinyVQGM:
    """A VQGM that is not taming's: random codebook, linear decoder over p x p patches, uniform sampler."""

    def __init__(self, K=64, d=8, m=8, image_size=32, n_classes=10, seed=0):
        self.K, self.d, self.m, self.image_size, self.n_classes = K, d, m, image_size, n_classes
        self.p = p = image_size // m
        torch.manual_seed(seed)
        self.net = torch.nn.ModuleDict({"codebook": torch.nn.Embedding(K, d), "enc": torch.nn.Linear(3 * p * p, d),
                                        "dec": torch.nn.Linear(d, 3 * p * p)}).requires_grad_(False)

    device = property(lambda self: self.codebook.device)
    codebook = property(lambda self: self.net["codebook"].weight.detach())

    def to(self, device):
        self.net.to(device)
        return self

    def fingerprint(self):
        return digest(self.codebook.tolist())

    def identity(self):
        return {"family": "tiny", "weights": weights_key(self.net)}

    def encode(self, images, batch_size=64):
        patches = F.unfold(torch.as_tensor(images, dtype=torch.float32), self.p, stride=self.p)  # (B, 3pp, m*m)
        E = self.net["enc"](patches.transpose(1, 2)).transpose(1, 2)                              # (B, d, m*m)
        return self.quantize(E.reshape(-1, self.d, self.m, self.m))

    def embed(self, tokens):
        return F.embedding(torch.as_tensor(tokens), self.codebook).permute(0, 3, 1, 2).contiguous()

    def decode_embeddings(self, E, batch_size=64, clamp=True):
        x = self.net["dec"](E.flatten(2).transpose(1, 2)).transpose(1, 2)                         # (B, 3pp, m*m)
        x = torch.tanh(F.fold(x, self.image_size, self.p, stride=self.p))
        return x.clamp(-1, 1) if clamp else x

    def decode(self, tokens, batch_size=64):
        return self.decode_embeddings(self.embed(tokens))

    def quantize(self, E):
        flat = E.permute(0, 2, 3, 1).reshape(-1, self.d)
        return torch.cdist(flat, self.codebook).argmin(1).reshape(E.shape[0], *E.shape[2:])

    def sample(self, labels, temperature=1.0, top_k=None, top_p=None, seed=None, batch_size=256, progress=False):
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return torch.randint(self.K, (len(torch.as_tensor(labels).reshape(-1)), self.m, self.m), generator=gen)

    def with_prior(self, prior):
        return copy.copy(self)


def tiny_vqgm(cfg):
    """The factory a profile names (``vqgm.factory``): called with the profile."""
    return TinyVQGM(image_size=int(cfg.world.image_size), n_classes=int(cfg.world.n_classes), seed=int(cfg.seed))


def not_a_vqgm(cfg):
    return object()


def test_the_tiny_model_and_taming_implement_the_protocol():
    from cortex_nb.vqgm.taming import VQGM
    from cortex_nb.vqgm.taming_config import build_from_config
    from cortex_nb.vqgm.taming_shapes import tiny_cin_config

    tiny = TinyVQGM()
    assert isinstance(tiny, VQGMProtocol) and check_vqgm(tiny, "here") is tiny
    taming = VQGM(build_from_config(tiny_cin_config(n_classes=10, resolution=32, ch_mult=(1, 2, 2))))
    assert isinstance(taming, VQGMProtocol)
    # what cache keys digest for taming's model is what they always digested: its config and all weights
    assert taming.identity() == {"config": None, "weights": weights_key(taming.model)}
    # the tiny model round-trips its own codes: decode -> encode is not the identity (random weights), but
    # quantize(embed(t)) is, and embed equals the codebook rows
    t = tiny.sample([0, 1, 2], seed=3)
    assert torch.equal(tiny.quantize(tiny.embed(t)), t)
    assert torch.equal(tiny.embed(t)[1, :, 2, 5], tiny.codebook[t[1, 2, 5]])
    assert tiny.decode(t).shape == (3, 3, 32, 32) and tiny.encode(tiny.decode(t)).shape == (3, 8, 8)


def test_with_prior_leaves_the_taming_model_as_it_was():
    from cortex_nb.vqgm.taming import VQGM
    from cortex_nb.vqgm.taming_config import build_from_config
    from cortex_nb.vqgm.taming_shapes import tiny_cin_config

    vq = VQGM(build_from_config(tiny_cin_config(n_classes=10, resolution=32, ch_mult=(1, 2, 2))))
    gpt = copy.deepcopy(vq.model.transformer)
    torch.nn.init.zeros_(gpt.head.weight)
    other = vq.with_prior(gpt)
    assert other.model.transformer is gpt and vq.model.transformer is not gpt
    assert other.model.first_stage_model is vq.model.first_stage_model       # the same tokenizer
    assert other.identity()["weights"] != vq.identity()["weights"]            # caches keyed apart


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    return tmp_path


TINY = ["threads=1", "device=cpu", "progress=false", "data.n_train=2", "data.n_val=1", "data.n_test=1",
        "data.shard_size=8", "data.batch_size=512", "extractors.width=8", "extractors.epochs=1",
        "extractors.batch_size=16", "evaluators.names=[vit_p4]", "evaluators.n_train=32", "evaluators.n_val=16",
        "evaluators.fit.max_steps_per_epoch=1", "saliency.chunk=8", "saliency.n_samples=2",
        "saliency.random_seeds=1", "optimization.steps=2", "optimization.record_every=1", "robustness=false"]


def test_fig3_table2_table3_run_end_to_end_on_a_model_that_is_not_taming(results, capsys):
    sets = [a for s in [*TINY, "vqgm.family=python", f"vqgm.factory={__name__}:tiny_vqgm"] for a in ("--set", s)]
    for command in ("fig3", "table2", "table3"):
        assert main([command, "--profile", "smoke", *sets]) == 0, capsys.readouterr().err
    tables = results / "results" / "smoke" / "tables"
    for name in ("fig3_image_level", "table2_concept_level", "table2_paired", "table3_optimization_all"):
        assert (tables / f"{name}.csv").stat().st_size > 0, name
    stores = list((results / "results" / "smoke" / "cache").rglob("meta.json"))
    assert stores and all(TinyVQGM().fingerprint() in p.read_text() for p in stores)   # stamped with this codebook


def test_a_factory_that_returns_no_vqgm_is_one_line_naming_what_is_missing(results, capsys):
    sets = [a for s in [*TINY, "vqgm.family=python", f"vqgm.factory={__name__}:not_a_vqgm"] for a in ("--set", s)]
    assert main(["vqgm", "--profile", "smoke", *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lacks K, d, m, image_size, n_classes" in err and "Traceback" not in err
    sets = [a for s in [*TINY, "vqgm.family=python", "vqgm.factory=no_such_module:f"] for a in ("--set", s)]
    assert main(["vqgm", "--profile", "smoke", *sets]) == 2
    assert "cannot be imported" in capsys.readouterr().err
    assert main(["vqgm", "--profile", "smoke", "--set", "vqgm.family=python"]) == 2
    assert "vqgm.factory" in capsys.readouterr().err


def _guide_code() -> str:
    """The Python block of docs/your-model.md (the worked example of the guide)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "your-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_guides_example_is_under_60_lines_and_runs_fig3_through_the_cli(results, tmp_path, monkeypatch, capsys):
    code = _guide_code()
    assert len(code.strip().splitlines()) < 60
    (tmp_path / "my_vqgm.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_vqgm

    assert isinstance(my_vqgm.MyVQGM(), VQGMProtocol)
    sets = [a for s in [*TINY, "vqgm.family=python", "vqgm.factory=my_vqgm:load"] for a in ("--set", s)]
    assert main(["fig3", "--profile", "smoke", *sets]) == 0, capsys.readouterr().err
    assert (results / "results" / "smoke" / "tables" / "fig3_image_level.csv").stat().st_size > 0


def test_a_model_of_another_image_size_is_refused_by_name(results, capsys):
    sets = [a for s in [*TINY, "vqgm.family=python", f"vqgm.factory={__name__}:tiny_vqgm", "world.image_size=64"]
            for a in ("--set", s)]
    assert main(["generate", "--profile", "smoke", *sets]) == 0     # the factory follows the profile: 64 px
    sets = [a for s in [*TINY, "vqgm.family=python", f"vqgm.factory={__name__}:fixed_32px"] for a in ("--set", s)]
    assert main(["generate", "--profile", "smoke", *sets, "--set", "world.image_size=64"]) == 2
    err = capsys.readouterr().err
    assert "world.image_size = 64" in err and "images of 32" in err


def fixed_32px(cfg):
    return TinyVQGM(image_size=32, n_classes=int(cfg.world.n_classes))
