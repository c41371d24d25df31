"""Shipped pretrained toy artifacts (cortex_nb.vqgm.shipped): the registry holds the files' true digests,
the shipped VQGM is exactly what the toy profile would train and loads through the official loader,
it is installed only for matching settings and never under CORTEX_FROM_SCRATCH, and a damaged file
is refused by name."""
import json
import shutil

import pytest
import torch

from cortex_nb import load_profile
from cortex_nb.vqgm import shipped
from cortex_nb.errors import CheckpointError
from cortex_nb.io.files import file_sha256


def test_registry_matches_the_shipped_files_and_stays_small():
    reg = shipped.registry()
    assert "toy-vqgm" in reg
    total = 0
    for name, entry in reg.items():
        for fname, digest in entry["files"].items():
            path = shipped.ARTIFACTS / name / fname
            assert file_sha256(path) == digest, path
            total += path.stat().st_size
        assert entry["bytes"] == sum((shipped.ARTIFACTS / name / f).stat().st_size for f in entry["files"])
    assert total <= shipped.MAX_SHIPPED_BYTES


def test_shipped_vqgm_is_what_the_toy_profile_trains_and_loads_through_load_vqgm():
    from cortex_nb.toy.prior import PriorConfig
    from cortex_nb.toy.tokenizer import TokenizerConfig
    from cortex_nb.toy.vqgm import build_key
    from cortex_nb.vqgm import load_vqgm
    from omegaconf import OmegaConf

    cfg = load_profile("toy")
    key = build_key(TokenizerConfig(**OmegaConf.to_container(cfg.vqgm.tokenizer)),
                    PriorConfig(**OmegaConf.to_container(cfg.vqgm.prior)), seed=cfg.seed,
                    n_classes=cfg.world.n_classes, scene_bias=cfg.world.scene_bias, n_report=cfg.vqgm.n_report)
    entry = shipped.registry()["toy-vqgm"]
    assert entry["settings_hash"] == key
    assert json.loads((shipped.ARTIFACTS / "toy-vqgm" / "build.json").read_text())["hash"] == key
    d = shipped.ARTIFACTS / "toy-vqgm"
    vqgm = load_vqgm(d / "config.yaml", d / "model.ckpt")
    assert (vqgm.K, vqgm.m, vqgm.d, vqgm.n_classes) == (512, 8, 64, 10)
    # the smoke profile trains its own (other settings): nothing to install
    assert not shipped.install("toy-vqgm", "/nonexistent-never-written", "0" * 16)


@pytest.mark.parametrize("name", ["vit_p4", "vit_p8"])
def test_shipped_evaluators_are_what_the_toy_profile_trains_and_load_through_load_evaluator(name):
    from cortex_nb.pipeline.keys import evaluator_key
    from cortex_nb.toy.evaluators import load_evaluator

    cfg = load_profile("toy")
    entry = shipped.registry()[f"toy-evaluator-{name}"]
    assert entry["settings_hash"] == evaluator_key(cfg, name)
    assert name in cfg.evaluators.names
    d = shipped.ARTIFACTS / f"toy-evaluator-{name}"
    ev = load_evaluator(d / f"{name}.pt")                                   # verifies the .sha256 sidecar too
    assert ev.name == name and ev.n_classes == cfg.world.n_classes
    rep = json.loads((d / f"{name}.report.json").read_text())
    assert rep["source"].startswith("shipped") and 0.9 < rep["val_acc"] <= 1
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    p = ev.predict_proba(x)
    torch.testing.assert_close(p.sum(1), torch.ones(4))


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "artifacts"
    (root / "a").mkdir(parents=True)
    (root / "a" / "w.bin").write_bytes(b"weights" * 100)
    (root / "a" / "m.json").write_text('{"x": 1}')
    reg = {"a": {"settings_hash": "abc", "bytes": 712, "trained_on": "here",
                 "files": {f: file_sha256(root / "a" / f) for f in ("w.bin", "m.json")}}}
    (root / "registry.json").write_text(json.dumps(reg))
    return root


def test_install_copies_only_for_matching_settings_and_not_from_scratch(fake_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CORTEX_FROM_SCRATCH", raising=False)
    dest = tmp_path / "cache"
    assert not shipped.install("a", dest, "other", root=fake_root) and not dest.exists()
    monkeypatch.setenv("CORTEX_FROM_SCRATCH", "1")
    assert not shipped.install("a", dest, "abc", root=fake_root) and not dest.exists()
    monkeypatch.setenv("CORTEX_FROM_SCRATCH", "0")
    assert shipped.install("a", dest, "abc", root=fake_root)
    assert (dest / "w.bin").read_bytes() == b"weights" * 100 and (dest / "m.json").read_text() == '{"x": 1}'
    assert sorted(p.name for p in dest.iterdir()) == [".shipped.a", "m.json", "w.bin"]   # no temporaries left


def test_reconcile_keeps_the_cache_true_to_the_mode(fake_root, tmp_path, monkeypatch):
    """Without FROM_SCRATCH a model trained here under the shipped settings gives way to the shipped copy; under it
    the shipped copy leaves the cache (the caller trains) and a model trained here is kept; other settings: nothing."""
    monkeypatch.delenv("CORTEX_FROM_SCRATCH", raising=False)
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "w.bin").write_bytes(b"trained here")                  # a FROM_SCRATCH run's model, same settings
    (dest / "m.json").write_text('{"x": 2}')
    assert shipped.reconcile("a", dest, "other", built=True, root=fake_root) is None
    assert (dest / "w.bin").read_bytes() == b"trained here"         # other settings: left alone
    assert shipped.reconcile("a", dest, "abc", built=True, root=fake_root) == "shipped"
    assert (dest / "w.bin").read_bytes() == b"weights" * 100        # replaced by the shipped bytes
    before = (dest / "w.bin").stat().st_mtime_ns
    assert shipped.reconcile("a", dest, "abc", built=True, root=fake_root) == "shipped"
    assert (dest / "w.bin").stat().st_mtime_ns == before            # already there: not copied again
    monkeypatch.setenv("CORTEX_FROM_SCRATCH", "1")
    assert shipped.reconcile("a", dest, "abc", built=True, root=fake_root) == "removed"
    assert list(dest.iterdir()) == []                               # the shipped copy is gone: the caller trains
    (dest / "w.bin").write_bytes(b"trained here")
    assert shipped.reconcile("a", dest, "abc", built=True, root=fake_root) is None
    assert (dest / "w.bin").read_bytes() == b"trained here"         # FROM_SCRATCH keeps its own model


def test_the_evaluators_follow_the_mode_through_get_evaluators(tmp_path, monkeypatch):
    """The smoke evaluators with one of them 'shipped' (a fake registry whose copy differs from what smoke trains):
    a plain run uses the shipped copy, FROM_SCRATCH trains it again, and the plain run after that returns to the
    shipped copy instead of reusing the model FROM_SCRATCH left in the cache under the same key."""
    from cortex_nb.pipeline import models
    from cortex_nb.pipeline.keys import evaluator_key
    from cortex_nb.toy.evaluators import save_evaluator

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path / "res"))
    monkeypatch.delenv("CORTEX_FROM_SCRATCH", raising=False)
    cfg = load_profile("smoke", **{"evaluators.names": ["vit_p4"]})    # one small evaluator keeps the test quick
    name = "vit_p4"
    trained = models.get_evaluators(cfg)[name]                     # trained here (no artifact for smoke)
    own = {k: v.clone() for k, v in trained.model.state_dict().items()}
    root = tmp_path / "artifacts"
    art = root / f"toy-evaluator-{name}"
    art.mkdir(parents=True)
    with torch.no_grad():
        next(iter(trained.model.parameters())).add_(1.0)           # the "shipped" copy: other weights
    save_evaluator(trained, art / f"{name}.pt")
    (art / f"{name}.report.json").write_text(json.dumps({"val_acc": 1.0, "seconds": 0.0, "source": "shipped (test)"}))
    files = [f"{name}.pt", f"{name}.pt.sha256", f"{name}.report.json"]
    (root / "registry.json").write_text(json.dumps({f"toy-evaluator-{name}": {
        "settings_hash": evaluator_key(cfg, name), "bytes": 0, "trained_on": "test",
        "files": {f: file_sha256(art / f) for f in files}}}))
    monkeypatch.setattr(shipped, "ARTIFACTS", root)
    monkeypatch.setattr(shipped, "REGISTRY", root / "registry.json")

    def first_param(evs):
        return next(iter(evs[name].model.state_dict().values()))

    shipped_w = next(iter(torch.load(art / f"{name}.pt", weights_only=True)["state_dict"].values()))
    own_w = next(iter(own.values()))
    assert torch.equal(first_param(models.get_evaluators(cfg)), shipped_w)          # plain: the shipped copy
    monkeypatch.setenv("CORTEX_FROM_SCRATCH", "1")
    assert torch.equal(first_param(models.get_evaluators(cfg)), own_w)              # retrained: smoke's own
    monkeypatch.delenv("CORTEX_FROM_SCRATCH")
    assert torch.equal(first_param(models.get_evaluators(cfg)), shipped_w)          # and back to the shipped one


def test_a_damaged_or_missing_shipped_file_is_refused_by_name(fake_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CORTEX_FROM_SCRATCH", raising=False)
    w = fake_root / "a" / "w.bin"
    w.write_bytes(b"Weights" * 100)                                               # one byte flipped
    with pytest.raises(CheckpointError, match=r"w\.bin does not match the registry") as e:
        shipped.install("a", tmp_path / "cache", "abc", root=fake_root)
    assert "FROM_SCRATCH=1" in e.value.fix and not (tmp_path / "cache" / "w.bin").exists()
    w.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        shipped.verify("a", fake_root)


def test_register_refuses_to_ship_more_than_the_limit(fake_root, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"0" * 1000)
    monkeypatch.setattr(shipped, "MAX_SHIPPED_BYTES", 1500)
    with pytest.raises(ValueError, match="over"):
        shipped.register("b", src, ["big.bin"], "h", trained_on="x", root=fake_root)
    monkeypatch.setattr(shipped, "MAX_SHIPPED_BYTES", 2000)
    entry = shipped.register("b", src, ["big.bin"], "h", trained_on="x", root=fake_root)
    assert entry["files"]["big.bin"] == file_sha256(src / "big.bin") and shipped.verify("b", fake_root)
    shutil.rmtree(src)
