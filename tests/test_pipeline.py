"""The run the pipeline composes (cortex_nb.pipeline.run) and its cache keys (cortex_nb.pipeline.keys,
issue #19): every cache is rebuilt when an input it depends on changes, and only then; finished
trainings keep one weights file per model; a profile whose world.n_classes does not match the VQGM
is refused by name; setup writes the resolved profile.

The VQGM here is a tiny, untrained taming model (``vqgm.tiny_cin_config``, 10 classes, an 8 x 8
grid) saved as a checkpoint and read back through the profile (``vqgm.source=taming``), so no
toy training runs; results go to a temporary CORTEX_RESULTS.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from cortex_nb.io.config import load_profile
from cortex_nb.errors import UserError
from cortex_nb.pipeline import keys
from cortex_nb.pipeline import run as pipeline
from cortex_nb.engine.train import FitConfig, fit
from cortex_nb.vqgm.taming_ckpt import save_taming_checkpoint
from cortex_nb.vqgm.taming_config import build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config

N_CLASSES = 10
# small enough for seconds: 2 / 1 / 1 images per class, shards of 8, one short epoch
TINY = {
    "threads": 1, "device": "cpu", "progress": False,
    "data.n_train": 2, "data.n_val": 1, "data.n_test": 1, "data.shard_size": 8, "data.batch_size": 512,
    "extractors.width": 8, "extractors.epochs": 1, "extractors.batch_size": 16,
    "evaluators.names": ["vit_p4"], "evaluators.n_train": 32, "evaluators.n_val": 16,
    "saliency.chunk": 8, "optimization.steps": 2, "optimization.record_every": 1,
}


@pytest.fixture(scope="module")
def vqgm_files(tmp_path_factory):
    """(config.yaml, model.ckpt) of a tiny untrained class-conditional VQGM with N_CLASSES classes."""
    d = tmp_path_factory.mktemp("tiny-vqgm")
    config = tiny_cin_config(n_classes=N_CLASSES, resolution=16)
    torch.manual_seed(0)
    save_taming_checkpoint(build_from_config(config), d / "model.ckpt", epoch=0, global_step=0)
    OmegaConf.save(config, d / "config.yaml")
    return d / "config.yaml", d / "model.ckpt"


@pytest.fixture
def profile(vqgm_files, tmp_path, monkeypatch):
    """``profile(**overrides)``: the smoke profile at TINY size on the tiny VQGM, results in tmp_path."""
    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    config, ckpt = vqgm_files

    def make(**overrides):
        return load_profile("smoke", **{**TINY, "vqgm.source": "taming", "vqgm.config": str(config),
                                         "vqgm.ckpt": str(ckpt), **overrides})
    return make


@pytest.fixture(scope="module")
def vqgm(vqgm_files):
    from cortex_nb.vqgm import load_vqgm

    return load_vqgm(*vqgm_files)


def _cache(cfg) -> Path:
    return Path(cfg.paths.cache)


# --------------------------------------------------------------------------------------
# end to end: a changed input rebuilds what depends on it
# --------------------------------------------------------------------------------------


def test_a_new_train_split_retrains_the_extractor(profile):
    """The defect: after data.n_train changed, the extractor trained on the old split was reused."""
    cfg = profile()
    v = pipeline.get_vqgm(cfg)
    pipeline.generate_dataset(cfg, v, splits=("train", "val"))
    pipeline.get_extractors(cfg, v, archs=["CE"])
    first = {p.name for p in (_cache(cfg) / "extractors").iterdir()}

    cfg3 = profile(**{"data.n_train": 3})
    pipeline.generate_dataset(cfg3, v, splits=("train", "val"))
    res = pipeline.get_extractors(cfg3, v, archs=["CE"])
    dirs = {p.name for p in (_cache(cfg) / "extractors").iterdir()}
    assert len(first) == 1 and len(dirs) == 2, dirs          # a second extractor, trained on 30 images
    new = (_cache(cfg) / "extractors" / (dirs - first).pop())
    assert torch.load(new / "last.pt", weights_only=True)["epoch"] == 1
    assert res["CE"].history.epoch.tolist() == [1]
    # and back: the first extractor (still the right one for n_train=2) is reused, not retrained
    pipeline.generate_dataset(cfg, v, splits=("train", "val"))
    pipeline.get_extractors(cfg, v, archs=["CE"])
    assert {p.name for p in (_cache(cfg) / "extractors").iterdir()} == dirs


def test_sampling_batch_size_changes_tokens_and_regenerates_the_store(profile, vqgm):
    """VQGM.sample's tokens depend on its batch size (the RNG is consumed batch by batch), so a
    store sampled with data.batch_size=512 must not be reused (or resumed) with batch_size=4."""
    labels = torch.arange(8) % N_CLASSES
    by8, by4 = vqgm.sample(labels, seed=5, batch_size=8), vqgm.sample(labels, seed=5, batch_size=4)
    assert not torch.equal(by8, by4)                           # the dependence is real
    assert torch.equal(by8, vqgm.sample(labels, seed=5, batch_size=512))  # any batch >= shard: same

    cfg = profile()
    v = pipeline.get_vqgm(cfg)
    big = np.array(pipeline.generate_dataset(cfg, v, splits=("train",))["train"].tokens)
    small = np.array(pipeline.generate_dataset(profile(**{"data.batch_size": 4}), v, splits=("train",))["train"].tokens)
    assert not np.array_equal(big, small)                      # regenerated with the new batch size
    # a batch size that is still >= shard_size samples exactly the same: the store is kept
    meta = (_cache(cfg) / "data" / "train" / "meta.json").read_text()
    same = pipeline.generate_dataset(profile(**{"data.batch_size": 4}), v, splits=("train",))["train"]
    assert (_cache(cfg) / "data" / "train" / "meta.json").read_text() == meta
    np.testing.assert_array_equal(np.array(same.tokens), small)
    assert keys.store_meta(profile(**{"data.batch_size": 8}), v, "train") == \
        keys.store_meta(profile(**{"data.batch_size": 100}), v, "train")
    assert keys.store_meta(cfg, v, "train")["device"] == "cpu"


# --------------------------------------------------------------------------------------
# key functions: each input changes exactly the keys of what depends on it
# --------------------------------------------------------------------------------------


class _Extractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)


def _keys(cfg, vqgm, extractor, evaluators) -> dict[str, str]:
    """Every cache key of the pipeline for profile ``cfg``. The stores are stand-ins holding the
    meta that generate_dataset stamps (store_meta plus what TokenStore.generate adds)."""
    stores = {s: SimpleNamespace(meta={**keys.store_meta(cfg, vqgm, s), "shard_size": int(cfg.data.shard_size),
                                       "seed": int(cfg.seed), "split": s}) for s in ("train", "val", "test")}
    tsv = np.zeros((N_CLASSES, vqgm.m, vqgm.m), np.float32)
    return {
        **{f"store {s}": keys.store_key(st) for s, st in stores.items()},
        "extractor": keys.extractor_key(cfg, "CE", stores["train"], stores["val"]),
        "tsv train": keys.tsv_key(cfg, extractor, stores["train"], "paper"),
        "tsv test": keys.tsv_key(cfg, extractor, stores["test"], "paper"),
        "random baseline": keys.random_baseline_key(cfg, evaluators, stores["test"], str(cfg.saliency.fill), vqgm),
        "edit token": keys.edit_key(cfg, extractor, stores["test"], "token", "central"),
        "edit embedding": keys.edit_key(cfg, extractor, stores["test"], "embedding", "central"),
        "edit saliency": keys.edit_key(cfg, extractor, stores["test"], "token", "saliency", tsv),
        "evaluators": keys.evaluators_cache_key(cfg),
        "evaluator": keys.evaluator_key(cfg, "vit_p4"),
        "quality": keys.quality_key(cfg, vqgm, evaluators),
    }


STORES = {"store train", "store val", "store test"}
TEST_SIDE = {"tsv test", "random baseline", "edit token", "edit embedding", "edit saliency"}
TRAIN_SIDE = {"extractor", "tsv train"}
EDITS = {"edit token", "edit embedding", "edit saliency"}
ALL = STORES | TEST_SIDE | TRAIN_SIDE | {"evaluators", "evaluator", "quality"}

# override -> the keys that must change (every other key must stay)
CASES = [
    ({"data.n_train": 3}, {"store train"} | TRAIN_SIDE),
    ({"data.n_test": 2}, {"store test"} | TEST_SIDE),
    ({"data.batch_size": 4}, STORES | TRAIN_SIDE | TEST_SIDE),   # 4 < shard_size 8: other samples
    ({"data.batch_size": 64}, set()),                            # >= shard_size: the same samples
    ({"data.temperature": 0.5}, STORES | TRAIN_SIDE | TEST_SIDE),
    ({"data.shard_size": 4}, STORES | TRAIN_SIDE | TEST_SIDE),   # shard seeds follow the shard index
    ({"extractors.width": 16}, {"extractor"}),  # (TSVs and edits follow the retrained weights)
    ({"extractors.lr": 0.01}, {"extractor"}),
    ({"extractors.archs": ["CE"]}, set()),
    ({"seed": 1}, ALL),
    ({"saliency.n_samples": 2}, {"tsv train", "tsv test"}),
    ({"saliency.chunk": 4}, {"tsv train", "tsv test"}),          # chunk noise is seeded by its start
    ({"saliency.fill": "black"}, {"random baseline"}),
    ({"saliency.fill": "token"}, {"random baseline"}),
    ({"saliency.random_seeds": 3}, {"random baseline"}),
    ({"saliency.n_concept": 10}, set()),
    ({"optimization.steps": 3}, EDITS),
    ({"optimization.tau": 0.5}, {"edit token", "edit saliency"}),
    ({"optimization.saliency_region": False}, set()),
    ({"optimization.controls": False}, set()),
    ({"optimization.original_control": True}, set()),
    ({"optimization.jobs": 1}, set()),
    ({"saliency.fills_n": [1, 2]}, set()),
    ({"saliency.fills_random_seeds": 1}, set()),
    ({"saliency.fills": ["black"]}, set()),
    ({"saliency.area_k": [1, 2]}, set()),
    ({"verdicts.equivalence_margin": 0.1}, set()),
    ({"replicates": 5}, set()),
    # a seed replicate redraws the extractors and every noise; the world, data and judges stay
    ({"replicate": 1}, TRAIN_SIDE | TEST_SIDE),
    ({"evaluators.n_train": 64}, {"evaluators", "evaluator"}),
    ({"evaluators.names": ["vit_p4", "vit_p8"]}, {"evaluators"}),  # one evaluator's key ignores the others
    ({"evaluators.preprocess": "reference"}, set()),             # toy evaluators do not read it
    ({"world.scene_bias": 0.5}, {"evaluators", "evaluator", "quality"}),
    ({"vqgm.n_report": 50}, {"quality"}),
]


@pytest.mark.parametrize("override,changed", CASES, ids=[f"{k}={v}" for o, _ in CASES for k, v in o.items()])
def test_each_input_changes_exactly_the_keys_that_depend_on_it(profile, vqgm, override, changed):
    extractor = _Extractor()
    evaluators = {"e": _Extractor()}
    base = _keys(profile(), vqgm, extractor, evaluators)
    new = _keys(profile(**override), vqgm, extractor, evaluators)
    got = {k for k in base if base[k] != new[k]}
    assert got == changed


def test_upstream_artifacts_enter_the_keys(profile, vqgm):
    """Weights, not settings: another extractor, evaluator or VQGM (here: the same shapes, other
    values -- e.g. a prior retrained with the same codebook) changes the keys below it."""
    cfg = profile()
    extractor, evaluators = _Extractor(), {"e": _Extractor()}
    base = _keys(cfg, vqgm, extractor, evaluators)
    other = copy.deepcopy(extractor)
    with torch.no_grad():
        other.lin.bias += 1
    k = _keys(cfg, vqgm, other, evaluators)
    assert {n for n in base if base[n] != k[n]} == {"tsv train", "tsv test"} | EDITS
    k = _keys(cfg, vqgm, extractor, {"e": other})
    assert {n for n in base if base[n] != k[n]} == {"random baseline", "quality"}
    # a VQGM whose prior differs but whose codebook (the old store fingerprint) is the same
    vq2 = copy.copy(vqgm)
    vq2.model = copy.deepcopy(vqgm.model)
    with torch.no_grad():
        next(vq2.model.transformer.parameters()).add_(1)
    assert vq2.fingerprint() == vqgm.fingerprint()
    k = _keys(cfg, vq2, extractor, evaluators)
    assert {n for n in base if base[n] != k[n]} == ALL - {"evaluators", "evaluator"}
    # the saliency region's key follows the TSV that places it
    test = SimpleNamespace(meta={"split": "test"})
    tsv = np.zeros((4, 8, 8), np.float32)
    tsv2 = tsv.copy()
    tsv2[0, 1, 2] = 1
    assert keys.edit_key(cfg, extractor, test, "token", "saliency", tsv) != \
        keys.edit_key(cfg, extractor, test, "token", "saliency", tsv2)


def test_tsv_cache_file_follows_the_extractor(profile):
    """get_tsv writes under a path named by its key: another extractor, another file."""
    cfg = profile()
    v = pipeline.get_vqgm(cfg)
    pipeline.generate_dataset(cfg, v, splits=("test",))
    from cortex_nb.method.extractors import build_extractor

    torch.manual_seed(0)
    f1 = build_extractor(pipeline.extractor_config(cfg, "CE", v)).eval()
    f2 = copy.deepcopy(f1)
    with torch.no_grad():
        next(f2.parameters()).mul_(2)
    t1 = pipeline.get_tsv(cfg, "CE", f1, v, "test")
    again = pipeline.get_tsv(cfg, "CE", f1, v, "test")
    t2 = pipeline.get_tsv(cfg, "CE", f2, v, "test")
    files = sorted((_cache(cfg) / "tsv").rglob("*.npy"))
    assert len(files) == 2
    np.testing.assert_array_equal(t1, again)
    assert not np.array_equal(t1, t2)


def test_setup_writes_the_resolved_profile_beside_the_results(profile):
    """results/<profile>/profile.yaml: every resolved value, plus what else the numbers depend on."""
    import yaml

    cfg = profile(seed=3)
    pipeline.setup(cfg)
    written = yaml.safe_load((Path(cfg.paths.results) / "profile.yaml").read_text())
    assert written["profile"]["name"] == "smoke" and written["profile"]["seed"] == 3
    assert written["profile"]["data"]["n_train"] == 2                   # overrides applied
    assert written["run"]["torch"] == torch.__version__
    assert written["run"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert written["run"]["threads"] == torch.get_num_threads() == 1


# --------------------------------------------------------------------------------------
# world.n_classes against the VQGM
# --------------------------------------------------------------------------------------


def test_world_n_classes_must_match_the_vqgm(profile, vqgm):
    cfg = profile(**{"world.n_classes": 7})
    with pytest.raises(UserError) as e:
        pipeline.get_vqgm(cfg)
    msg = str(e.value)
    assert "world.n_classes = 7" in e.value.message and f"{N_CLASSES} classes" in e.value.message
    assert "model.ckpt" in e.value.message                     # the checkpoint is named
    assert f"--set world.n_classes={N_CLASSES}" in e.value.fix and "CORTEX_VQGM_CKPT" in e.value.fix
    assert "out of range" not in msg
    # generate_dataset with a VQGM passed in refuses before it writes anything
    with pytest.raises(UserError, match="world.n_classes"):
        pipeline.generate_dataset(cfg, vqgm)
    assert not (_cache(cfg) / "data").exists()


# --------------------------------------------------------------------------------------
# finished trainings keep one copy of the weights
# --------------------------------------------------------------------------------------


def test_finished_toy_evaluators_keep_one_weights_file_each(profile, monkeypatch):
    cfg = profile(**{"evaluators.fit.max_steps_per_epoch": 1})
    first = pipeline.get_evaluators(cfg)
    d = _cache(cfg) / "evaluators"
    assert not [p for p in d.iterdir() if p.is_dir()]                      # no fit checkpoints left
    assert sorted(p.name for p in d.glob("*.pt")) == ["vit_p4.pt"] and (d / "report.json").exists()
    blob = torch.load(d / "vit_p4.pt", weights_only=True)
    assert set(blob) == {"spec", "state_dict", "format"}                       # weights only

    def must_not_train(*a, **k):
        raise AssertionError("finished evaluators must be loaded, not retrained")

    monkeypatch.setattr("cortex_nb.toy.evaluators.train_toy_evaluators", must_not_train)
    again = pipeline.get_evaluators(cfg)
    for k, v in first["vit_p4"].state_dict().items():
        torch.testing.assert_close(again["vit_p4"].state_dict()[k], v, atol=0, rtol=0)


def test_a_shipped_evaluator_with_the_profiles_settings_is_installed_not_trained(profile, monkeypatch, tmp_path):
    import json
    import shutil

    from cortex_nb.vqgm import shipped
    from cortex_nb.pipeline.keys import evaluator_key

    cfg = profile(**{"evaluators.fit.max_steps_per_epoch": 1})
    first = pipeline.get_evaluators(cfg)
    d = _cache(cfg) / "evaluators"
    # ship the trained vit_p4 into a private artifacts root, as tools/ship_artifacts.py does
    (d / "vit_p4.report.json").write_text(json.dumps({"val_acc": 0.5, "seconds": 1.0, "source": "shipped (test)"}))
    root = tmp_path / "artifacts"
    shipped.register("toy-evaluator-vit_p4", d, ["vit_p4.pt", "vit_p4.pt.sha256", "vit_p4.report.json"],
                     evaluator_key(cfg, "vit_p4"), trained_on="test", root=root)
    monkeypatch.setattr(shipped, "ARTIFACTS", root)
    monkeypatch.delenv("CORTEX_FROM_SCRATCH", raising=False)
    shutil.rmtree(d)
    trained = []
    import cortex_nb.toy.evaluators as toy
    orig = toy.train_toy_evaluators

    def spy(*a, names=(), **k):
        trained.extend(names)
        return orig(*a, names=names, **k)

    monkeypatch.setattr(toy, "train_toy_evaluators", spy)
    again = pipeline.get_evaluators(cfg)
    assert trained == []                                                   # installed, nothing trained
    for k, v in first["vit_p4"].state_dict().items():
        torch.testing.assert_close(again["vit_p4"].state_dict()[k], v, atol=0, rtol=0)
    rep = json.loads((d / "report.json").read_text())
    assert rep["vit_p4"]["source"] == "shipped (test)"
    # other settings (another seed) or CORTEX_FROM_SCRATCH: trained here
    monkeypatch.setenv("CORTEX_FROM_SCRATCH", "1")
    shutil.rmtree(d)
    pipeline.get_evaluators(cfg)
    assert trained == ["vit_p4"]
    assert json.loads((d / "report.json").read_text())["vit_p4"]["source"] == "trained here"
    monkeypatch.delenv("CORTEX_FROM_SCRATCH")
    assert evaluator_key(profile(seed=1), "vit_p4") != evaluator_key(cfg, "vit_p4")


def test_edit_runs_in_parallel_processes_equal_the_runs_one_after_another(profile):
    """optimization.jobs only decides how many edit runs go at once: each run is single-threaded on
    the CPU, so two worker processes give exactly the tokens of the runs made one after another, and
    the result is in the profile's order whatever order the runs finished in."""
    import shutil

    from cortex_nb.pipeline.s05_editing import run_edits

    cfg = profile(**{"optimization.jobs": 1, "optimization.steps": 3})
    v = pipeline.get_vqgm(cfg)
    pipeline.generate_dataset(cfg, v)
    ex = {a: r.model for a, r in pipeline.get_extractors(cfg, v).items()}
    one = run_edits(cfg, ex, v)
    shutil.rmtree(_cache(cfg) / "editing")
    two = run_edits(profile(**{"optimization.jobs": 2, "optimization.steps": 3}), ex, v)
    assert list(two) == list(one) == [(a, m, "central") for a in ("CE", "RE") for m in ("embedding", "token")]
    for k in one:
        for part in ("final", "checkpoints", "steps"):
            assert torch.equal(one[k][part], two[k][part]), (k, part)
    assert len(list((_cache(cfg) / "editing").glob("*/done.json"))) == 4   # every run cached


def test_faithfulness_section_end_to_end_on_a_tiny_run(profile):
    """Section 07 on the tiny run: every map scored in both directions under every evaluator, areas in
    [0, 1], a shared mask scored once, the TSV's areas equal to scoring its curve directly, the tables
    and the figure written."""
    from cortex_nb.method.faithfulness import auc, default_steps, rank_positions, step_mask
    from cortex_nb.pipeline import s07_faithfulness as S7
    from cortex_nb.pipeline.s04_concept_level import score_masked

    cfg = profile(**{"faithfulness.n_per_class": 1, "faithfulness.steps": 2, "faithfulness.ig_steps": 4})
    composed = pipeline.compose(cfg)
    res = S7.run(cfg, composed)
    areas, maps = res.values["areas"], res.values["maps"]
    methods = {("CE", "TSV"), ("RE", "TSV"), ("-", "random"), ("-", "class-vs-rest")} | {("CE", r) for r in S7.RIVALS}
    assert set(maps) == methods
    assert {(a, m) for a, m, _, _ in areas} == methods and {d for _, _, d, _ in areas} == {"deletion", "insertion"}
    for a in areas.values():
        assert a.shape == (N_CLASSES,) and np.all((a >= 0) & (a <= 1))
    # the TSV's deletion area, scored here without the section's memo
    batch = S7.faith_batch(cfg, composed.vqgm)
    m = composed.vqgm.m
    ks, order = default_steps(m, 2), rank_positions(maps[("CE", "TSV")])
    curve = np.stack([score_masked(cfg, composed.evaluators, batch["images"], batch["labels"].numpy(),
                                   step_mask(order, m, k), tokens=batch["tokens"], vqgm=composed.vqgm)["vit_p4"]["p_true"]
                      for k in ks])
    np.testing.assert_allclose(areas[("CE", "TSV", "deletion", "vit_p4")], auc(ks, curve, m), rtol=0, atol=1e-6)
    for name in ("faithfulness_auc", "faithfulness_cost", "faithfulness_curves", "faithfulness_fills",
                 "faithfulness_sanity"):
        assert (Path(cfg.paths.tables) / f"{name}.csv").exists()
    for name in ("faithfulness_curves", "faithfulness_auc", "faithfulness_sanity"):
        assert (Path(cfg.paths.figures) / f"{name}.png").exists()
    assert not (Path(cfg.paths.tables) / "faithfulness_localisation.csv").exists()      # toy world only
    # every other fill: the TSV of faithfulness.archs and random, in both directions, per evaluator
    by_fill = res.values["areas_by_fill"]
    assert list(by_fill) == [str(cfg.saliency.fill)] + [f for f in cfg.saliency.fills if f != cfg.saliency.fill]
    for fill, fa in list(by_fill.items())[1:]:
        assert {(a, m) for a, m, _, _ in fa} == {("CE", "TSV"), ("-", "random")}, fill

    # sanity checks: the trained extractor against itself is 1 / 1, the frequency control never moves,
    # one cascading / independent step per block, the permuted-label extractor scored
    from cortex_nb.method.sanity import cascading_randomisation, randomisable_blocks, rank_correlation

    sanity = res.values["sanity"]
    trained = sanity[sanity.check == "trained"]
    assert np.allclose(trained.spearman, 1) and np.allclose(trained.jaccard, 1)
    control = sanity[sanity.method == "frequency (control)"]
    assert len(control) > 4 and np.allclose(control.spearman, 1) and np.allclose(control.jaccard, 1)
    for arch, f in composed.extractors.items():
        tsv = sanity[(sanity.extractor == arch) & (sanity.method == "TSV")]
        n_blocks = len(randomisable_blocks(f))
        assert (tsv.check == "cascading").sum() == (tsv.check == "independent").sum() == n_blocks
    assert set(sanity[sanity.check == "permuted labels"].extractor) == set(cfg.faithfulness.permuted)
    # one cascading step recomputed here: the whole CE randomised, its TSV with the section's noise seed
    *_, (_, g) = cascading_randomisation(composed.extractors["CE"], seed=int(cfg.seed), blocks=True)
    E = pipeline.embed_fn(composed.vqgm.codebook)(batch["tokens"])

    def tsv_of(model):
        gen = torch.Generator().manual_seed(keys.replicate_seed(cfg) + 29)
        return pipeline.saliency_of(cfg, model.eval()).attribute(E, batch["labels"], generator=gen).double()

    rho = rank_correlation(tsv_of(composed.extractors["CE"]), tsv_of(g)).numpy()
    last = sanity[(sanity.extractor == "CE") & (sanity.method == "TSV") & (sanity.check == "cascading")].iloc[-1]
    assert last.spearman == pytest.approx(float(np.nanmean(rho)), abs=1e-9)


def _blobs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(n, 8, generator=g), y


def _mlp():
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


def _fit_cfg(**kw):
    return FitConfig(**{**dict(epochs=4, batch_size=32, lr=1e-2, step_size=2, gamma=0.5, progress=False, seed=7), **kw})


def _load(p):
    return torch.load(p, map_location="cpu", weights_only=True)


def test_compact_fit_keeps_best_weights_and_a_small_record(tmp_path):
    train, val = _blobs(96), _blobs(48, seed=1)
    init = _mlp()
    full = fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "full")
    res = fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "c", compact=True)
    last = _load(tmp_path / "c" / "last.pt")
    assert not {"model", "optimizer", "scheduler", "rng"} & last.keys() and last["compact"] is True
    assert last["epoch"] == 4 and last["best_epoch"] == res.best_epoch == full.best_epoch
    for k, v in full.model.state_dict().items():                # same training, same result
        torch.testing.assert_close(res.model.state_dict()[k], v, atol=0, rtol=0)
        torch.testing.assert_close(_load(tmp_path / "c" / "best.pt")["model"][k], v, atol=0, rtol=0)
    size = {d: sum(f.stat().st_size for f in (tmp_path / d).iterdir()) for d in ("full", "c")}
    assert size["c"] < 0.5 * size["full"], size

    def must_not_run(x):
        raise AssertionError("a finished run must not train again")

    again = fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "c", augment=must_not_run,
                compact=True)
    for k, v in res.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v, atol=0, rtol=0)
    assert again.history.drop(columns="seconds").equals(res.history.drop(columns="seconds"))
    # a full run met with compact=True is compacted then
    fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "full", augment=must_not_run, compact=True)
    assert "optimizer" not in _load(tmp_path / "full" / "last.pt")


def test_compact_fit_interrupted_resumes_to_the_uninterrupted_result(tmp_path):
    train, val = _blobs(96), _blobs(48, seed=1)
    init = _mlp()
    straight = fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "a", compact=True,
                   augment=lambda x: x + 0.1 * torch.randn_like(x))
    calls = {"n": 0}

    def crashing(x):  # 3 batches an epoch: call 8 is in epoch 3
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated crash")
        return x + 0.1 * torch.randn_like(x)

    with pytest.raises(KeyboardInterrupt):
        fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "b", compact=True, augment=crashing)
    state = _load(tmp_path / "b" / "last.pt")
    assert state["epoch"] == 2 and "optimizer" in state       # unfinished: everything to resume
    torch.manual_seed(999)
    resumed = fit(copy.deepcopy(init), train, val, _fit_cfg(), ckpt_dir=tmp_path / "b", compact=True,
                  augment=crashing)
    assert calls["n"] == 8 + 2 * 3                              # only epochs 3 and 4 trained again
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-6, rtol=0)
    assert "optimizer" not in _load(tmp_path / "b" / "last.pt")


def test_compacted_run_refuses_to_continue_and_a_lost_best_is_named(tmp_path):
    train, val = _blobs(64), _blobs(32, seed=1)
    fit(_mlp(), train, val, _fit_cfg(epochs=1), ckpt_dir=tmp_path, compact=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UserError) as e:
        fit(_mlp(), train, val, _fit_cfg(epochs=2), ckpt_dir=tmp_path, compact=True)
    assert "cannot continue to cfg.epochs=2" in e.value.message and "resume=False" in e.value.fix
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # nothing touched
    res = fit(_mlp(), train, val, _fit_cfg(epochs=2), ckpt_dir=tmp_path, compact=True, resume=False)
    assert res.history.epoch.tolist() == [1, 2]
    (tmp_path / "best.pt").unlink()
    with pytest.raises(UserError, match="best.pt is missing") as e:
        fit(_mlp(), train, val, _fit_cfg(epochs=2), ckpt_dir=tmp_path, compact=True)
    assert str(tmp_path) in e.value.fix


# --------------------------------------------------------------------------------------
# atomic writes go through files.atomic_path
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("module, saver", [("io.files", "save_torch")])
def test_checkpoint_files_get_the_umask_mode_and_no_temporaries(tmp_path, module, saver):
    """Checkpoints are written through files.atomic_path: mode 0o666 & ~umask (as ``open`` gives,
    not mkstemp's 0600), and a failed write leaves the old file and no temporary."""
    import importlib

    save = getattr(importlib.import_module(f"cortex_nb.{module}"), saver)
    old = os.umask(0o022)
    try:
        save({"x": torch.zeros(2)}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save({"x": Unpicklable()}, tmp_path / "a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
    assert torch.equal(_load(tmp_path / "a.pt")["x"], torch.zeros(2))


def test_weights_key_is_remembered_until_the_weights_change_in_place():
    """weights_key hashes a module once per state: an optimiser step, an in-place edit or
    load_state_dict gives a new key, equal to the key of an independent copy in that state."""
    import copy

    from cortex_nb.pipeline.keys import weights_key

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    k0 = weights_key(net)
    assert weights_key(net) == k0 == weights_key(copy.deepcopy(net))
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0
    k1 = weights_key(net)
    assert k1 != k0 and k1 == weights_key(copy.deepcopy(net))
    net.train()(torch.randn(5, 4))                         # BatchNorm running stats update in place
    k2 = weights_key(net)
    assert k2 not in (k0, k1) and k2 == weights_key(copy.deepcopy(net))
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].bias.zero_()
    net.load_state_dict(other.state_dict())
    assert weights_key(net) == weights_key(other) != k2


def test_token_atlas_from_a_tiny_run(profile):
    """The atlas on the tiny run: one page per concept token of CE, and a token's ΔP on its page equals
    scoring its class's gallery images holding it directly (masked vs unmasked), here."""
    import re

    from cortex_nb.pipeline.atlas import atlas_data, build_atlas
    from cortex_nb.pipeline.s04_concept_level import score_masked

    cfg = profile()
    composed = pipeline.compose(cfg)
    data = atlas_data(cfg, composed)
    ids = {int(t) for t in data.concepts.ravel() if t >= 0}
    assert set(data.tokens) == ids and ids
    index = build_atlas(cfg, composed, out=Path(cfg.paths.results) / "atlas")
    assert all((index.parent / f"token_{t}.html").exists() for t in ids)
    test = pipeline.load_split(cfg, "test", composed.vqgm)
    toks, labs, imgs = np.asarray(test.tokens).astype(np.int64), np.asarray(test.labels), np.asarray(test.images)
    checked = 0
    for t, page in data.tokens.items():
        for c, d in page.delta_p.items():
            rows = np.flatnonzero((labs == c) & (toks == t).any((1, 2)))
            if not len(rows):
                assert all(n == 0 for _, n in d.values())
                continue
            mask = torch.from_numpy(toks[rows] == t)
            before = score_masked(cfg, composed.evaluators, imgs[rows], labs[rows], torch.zeros_like(mask))
            after = score_masked(cfg, composed.evaluators, imgs[rows], labs[rows], mask)
            expect = float(np.mean(after["vit_p4"]["p_true"] - before["vit_p4"]["p_true"]))
            assert d["ViT-p4"] == (pytest.approx(expect, abs=1e-6), len(rows))
            checked += 1
    assert checked
    page = (index.parent / f"token_{next(iter(ids))}.html").read_text()
    assert re.search(r"ΔP ViT-p4", page)


def test_log_records_go_to_stdout_inside_a_kernel_and_stderr_outside(monkeypatch):
    """JupyterLab shows stderr in a red box: inside a kernel the pipeline's log records go to stdout."""
    import sys
    import types

    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert pipeline.log_stream() is sys.stderr
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))
    assert pipeline.log_stream() is sys.stdout
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace())     # a terminal IPython
    assert pipeline.log_stream() is sys.stderr
