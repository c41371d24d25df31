"""Data parallelism under torchrun (issue #7), end to end on the CPU with the gloo backend.

The real thing runs in subprocesses: ``python -m torch.distributed.run --standalone
--nproc-per-node 2 -m cortex_nb STAGE --profile smoke`` against a plain ``python -m cortex_nb
STAGE`` in another results root (CORTEX_RESULTS). Both roots share one toy VQGM and its
evaluators (built once by the ``vqgm`` stage and copied), so only the stage under test differs.

Why the profile is pinned to ``threads=1``: with 2 processes each uses max(1, threads // 2)
threads, and the thread count alone changes float rounding. Measured here (smoke, 2 epochs,
10 Adam steps): a single process with 2 threads against one with 1 thread ends with RE weights
up to 3.4e-3 apart (relative L2 2.7e-3) -- Adam's normalised update turns rounding-level
differences of near-cancelling gradients into differences of order lr. One thread per process
on both sides isolates what data parallelism itself changes. Measured, relative L2 distance of
all weights / largest |difference| (running statistics included):

  full smoke VQGM, 2 processes vs 1:            CE 1.4e-5 / 1.2e-4   RE 1.2e-4 / 7.5e-4
  this file's settings, with crash + resume:    CE 6.8e-6 / 3.8e-5   RE 4.2e-6 / 8.3e-5
  the same DDP with per-rank BatchNorm stats:   CE 3.2e-2 / 0.23     RE 2.7e-2 / 0.07
  the same DDP with per-rank Dropout masks:     CE 3.9e-2 / 0.27     RE 3.2e-2 / 0.07

so the test's bounds (relative L2 < 1e-3, every |difference| < 2 lr = 2e-3) pass the right thing
with margin 8x and fail both plausible mistakes by more than 25x.
Token stores and TSVs are byte-identical whatever the thread count was in our runs, and must
be: their units are seeded by index, not by who computes them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from cortex_nb import distributed

REPO = Path(__file__).resolve().parents[1]
PROFILE = "smoke"
# A smaller VQGM and one evaluator (what they are worth is not under test), more and smaller
# shards / TSV chunks so both ranks get several, and a global batch of 63 so ranks get 32 and 31
# rows (the uneven split) -- the last batch of 300 is 48 (24 / 24).
SETS = [
    "threads=1",
    "vqgm.tokenizer.steps=10", "vqgm.tokenizer.ckpt_every=10", "vqgm.prior.steps=10",
    "vqgm.prior.ckpt_every=10", "vqgm.prior.n_train=128", "vqgm.n_report=50",
    "evaluators.names=[vit_p4]", "evaluators.n_train=64", "evaluators.n_val=32",
    "data.shard_size=32", "saliency.chunk=64", "extractors.batch_size=63",
]
LR = 1e-3  # extractors.lr of the smoke profile
TIMEOUT = 300


def cortex(root: Path, stage: str, nproc: int = 1, env: dict | None = None, check: bool = True,
           extra: tuple = ()) -> subprocess.CompletedProcess:
    """Run one stage in results root ``root`` with ``nproc`` processes (torchrun when > 1)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    base.update({"CORTEX_RESULTS": str(root), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": "0",
                 "OMP_NUM_THREADS": "1"}, **(env or {}))
    args = ["-m", "cortex_nb", stage, "--profile", PROFILE, *extra]
    for s in SETS:
        args += ["--set", s]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run(launcher + args, check=False, cwd=REPO, env=base, capture_output=True, text=True,
                          timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{stage} ({nproc} proc) failed with {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def cache(root: Path) -> Path:
    return root / "results" / PROFILE / "cache"


def seeded_root(base: Path, root: Path) -> Path:
    """A results root holding the shared VQGM and evaluators of ``base`` (not their training state)."""
    (cache(root) / "evaluators").mkdir(parents=True)
    shutil.copytree(cache(base) / "vqgm", cache(root) / "vqgm")
    for f in (cache(base) / "evaluators").iterdir():
        if f.is_file():
            shutil.copy2(f, cache(root) / "evaluators" / f.name)
    return root


def store_files(root: Path) -> dict[str, bytes]:
    data = cache(root) / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------
# fixtures: each stage once per root (module scope)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("vqgm")
    out = cortex(base, "vqgm")
    assert "1 process" in out.stdout
    one = seeded_root(base, tmp_path_factory.mktemp("one"))  # single process
    two = seeded_root(base, tmp_path_factory.mktemp("two"))  # torchrun, 2 processes
    crash = seeded_root(base, tmp_path_factory.mktemp("crash"))  # 2 processes, one rank dies
    return {"one": one, "two": two, "crash": crash}


@pytest.fixture(scope="module")
def generated(roots):
    return {"one": cortex(roots["one"], "generate"), "two": cortex(roots["two"], "generate", nproc=2)}


@pytest.fixture(scope="module")
def crashed(roots, generated):
    """generate with 2 processes where rank 1 fails after its first shard, then a 1-process rerun."""
    root = roots["crash"]
    proc = cortex(root, "generate", nproc=2, check=False,
                  env={"CORTEX_FAULT_AFTER_SHARDS": "1", "CORTEX_FAULT_RANK": "1"})
    train = cache(root) / "data" / "train"
    after = {
        "rc": proc.returncode, "log": proc.stdout + proc.stderr,
        "meta": json.loads((train / "meta.json").read_text()),
        "final": sorted(p.name for p in train.glob("*.npy")),
        "shards": {p.name: dict(np.load(p)) for p in sorted((train / "shards").glob("*.npz"))},
    }
    rerun = cortex(root, "generate")
    return {"after": after, "rerun": rerun}


@pytest.fixture(scope="module")
def trained(roots, generated):
    """train-extractors: 1 process; 2 processes that crash after their first epoch (rank 0, the
    writer, fails once its checkpoint is written) and are rerun to the end."""
    one = cortex(roots["one"], "train-extractors")
    crash = cortex(roots["two"], "train-extractors", nproc=2, check=False,
                   env={"CORTEX_FAULT_AFTER_EPOCHS": "1", "CORTEX_FAULT_RANK": "0"})
    ckpts = {p.parent.name: torch.load(p, weights_only=True)["epoch"]
             for p in (cache(roots["two"]) / "extractors").glob("*/last.pt")}
    two = cortex(roots["two"], "train-extractors", nproc=2)
    return {"one": one, "two": two, "crash": crash, "epochs_after_crash": ckpts}


@pytest.fixture(scope="module")
def tsvs(roots, crashed, trained):
    """tsv with 1 and 2 processes from the same extractors (the 1-process run's, copied into the
    crash root, whose token store equals the 1-process one)."""
    src, dst = cache(roots["one"]) / "extractors", cache(roots["crash"]) / "extractors"
    shutil.copytree(src, dst)
    return {"one": cortex(roots["one"], "tsv"), "two": cortex(roots["crash"], "tsv", nproc=2)}


# --------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------


def test_generate_two_processes_byte_identical_to_one(roots, generated):
    one, two = store_files(roots["one"]), store_files(roots["two"])
    assert set(one) == {f"{s}/{f}" for s in ("train", "val", "test") for f in ("tokens.npy", "labels.npy",
                                                                               "meta.json")} | {"test/images.npy"}
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], f"{name} differs between 1 and 2 processes"
    # rank 0 alone printed the summary and the evaluator table
    out = generated["two"].stdout
    assert out.count("generate (smoke): token stores train 300, val 100, test 100; 2 processes") == 1
    assert out.count("ViT-p4") == 1


def test_crashed_rank_leaves_resumable_shards_and_rerun_with_one_process_completes(roots, generated, crashed):
    after = crashed["after"]
    assert after["rc"] != 0 and "CORTEX_FAULT_AFTER_SHARDS=1: rank 1 fails after 1 shard" in after["log"]
    assert after["meta"]["complete"] is False and after["final"] == []  # incomplete: no final arrays
    # train has 10 shards of 32: rank 1 owns 1, 3, 5, ... and finished exactly its first
    assert "00001.npz" in after["shards"] and not {"00003.npz", "00005.npz"} & after["shards"].keys()
    ref = np.load(cache(roots["one"]) / "data" / "train" / "tokens.npy")
    for name, shard in after["shards"].items():  # every surviving shard is final and correct
        i = int(name[:5])
        np.testing.assert_array_equal(shard["tokens"], ref[32 * i:32 * (i + 1)])
    # the rerun (1 process) made only the missing shards and equals the uninterrupted run
    n_done = len(after["shards"])
    assert f"generate train: making {10 - n_done} of 10 shards ({n_done} already done)" in crashed["rerun"].stderr
    assert store_files(roots["crash"]) == store_files(roots["one"])


def _weights(root: Path) -> dict[str, dict]:
    return {p.parent.name: torch.load(p, weights_only=True)
            for p in sorted((cache(root) / "extractors").glob("*/last.pt"))}


def test_train_extractors_ddp_equals_single_process_within_rounding(roots, trained):
    # the crash left a resumable checkpoint after CE's first epoch; the rerun finished it
    assert trained["crash"].returncode != 0
    assert "CORTEX_FAULT_AFTER_EPOCHS=1: rank 0 fails after 1 epoch" in trained["crash"].stderr
    assert sorted(trained["epochs_after_crash"].values()) == [1]
    one, two = _weights(roots["one"]), _weights(roots["two"])
    assert one.keys() == two.keys() and len(one) == 2
    for name in one:
        a, b = one[name], two[name]
        assert a["epoch"] == b["epoch"] == 2 and a["best_epoch"] == b["best_epoch"]
        params = [k for k, v in a["model"].items() if v.is_floating_point()]
        va = torch.cat([a["model"][k].double().flatten() for k in params])
        vb = torch.cat([b["model"][k].double().flatten() for k in params])
        # measured: relative L2 <= 1.2e-4, max |diff| <= 7.5e-4 (< 1 Adam step of lr 1e-3); see the docstring
        assert float((va - vb).norm() / va.norm()) < 1e-3, name
        assert float((va - vb).abs().max()) < 2 * LR, name
        for k in params:  # every tensor, including BatchNorm running statistics
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0.05, atol=2 * LR, msg=k)
        ha, hb = pd.DataFrame(a["history"]), pd.DataFrame(b["history"])
        # accuracies: the same up to one sample (300 train, 100 val); losses up to rounding
        assert (abs(ha.train_acc - hb.train_acc) * 300 <= 1 + 1e-9).all(), name
        assert (abs(ha.val_acc - hb.val_acc) * 100 <= 1 + 1e-9).all(), name
        np.testing.assert_allclose(hb.train_loss, ha.train_loss, rtol=1e-3)
        np.testing.assert_allclose(hb.val_loss, ha.val_loss, rtol=1e-3)
        assert list(ha.lr) == list(hb.lr)
    # Table 1 was written once, by rank 0
    assert trained["two"].stdout.count("CNN-based Extractor (CE)") == 1
    assert (roots["two"] / "results" / PROFILE / "tables").exists()


def test_tsv_two_processes_equal_one(roots, tsvs):
    one = sorted((cache(roots["one"]) / "tsv").rglob("*.npy"))
    two = sorted((cache(roots["crash"]) / "tsv").rglob("*.npy"))
    rel = [p.relative_to(cache(roots["one"]) / "tsv") for p in one]
    assert rel == [p.relative_to(cache(roots["crash"]) / "tsv") for p in two]
    assert sorted(p.name for p in one) == ["test-paper.npy"] * 2 + ["train-paper.npy"] * 2  # CE, RE
    for p, q in zip(one, two):
        a, b = np.load(p), np.load(q)
        assert a.shape[1:] == (8, 8) and len(a) in (100, 300)
        np.testing.assert_array_equal(a, b)  # chunks are seeded by their start: identical
    assert not list((cache(roots["crash"]) / "tsv").rglob("*.parts"))  # chunk dirs cleaned up
    assert tsvs["two"].stdout.count("tsv (smoke): TSV CE/train (300, 8, 8)") == 1


# --------------------------------------------------------------------------------------
# in-process: the pieces, with a fake rank / world
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (10, 3), (63, 2), (64, 4), (7, 8)])
def test_owned_and_batch_slice_partition(monkeypatch, n, world):
    got, rows = [], []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world", lambda: world)
        mine = distributed.owned(list(range(n)))
        assert all(i % world == r for i in mine)
        got += mine
        lo, hi = distributed.batch_slice(n)
        rows.append((lo, hi))
    assert sorted(got) == list(range(n))  # disjoint and complete
    assert [hi - lo for lo, hi in rows] == [len(a) for a in np.array_split(np.arange(n), world)]
    assert rows[0][0] == 0 and rows[-1][1] == n and all(rows[i][1] == rows[i + 1][0] for i in range(world - 1))


def test_without_torchrun_there_is_no_group(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.launched() and not distributed.init_from_env("cpu")
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()  # no-op
    assert distributed.broadcast_object([1, 2]) == [1, 2]
    assert distributed.threads_per_process(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.threads_per_process(2) == 1 and distributed.threads_per_process(8) == 2


@pytest.mark.parametrize("shape,p", [((63, 48), 0.5), ((10, 4, 3, 3), 0.3)])
def test_global_batch_dropout_takes_this_ranks_rows_of_the_single_process_mask(shape, p):
    x = torch.randn(shape)
    drop = distributed.GlobalBatchDropout(p)
    torch.manual_seed(7)
    full = nn.Dropout(p).train()(x)  # what one process computes for the whole batch
    state_after = torch.get_rng_state()
    for lo, hi in [(0, 5), (5, len(x)), (3, 3)]:
        torch.manual_seed(7)
        drop.rows = (len(x), lo)
        part = drop.train()(x[lo:hi])
        torch.testing.assert_close(part, full[lo:hi], rtol=0, atol=0)
        assert torch.equal(torch.get_rng_state(), state_after)  # the RNG advanced as in one process


def test_help_lists_stages_and_torchrun():
    from cortex_nb.__main__ import STAGES, parser

    text = parser().format_help()
    for stage in STAGES:
        assert stage in text
    assert "tsv" in STAGES and "torchrun --standalone --nproc-per-node N -m cortex_nb" in text


def test_temporary_files_of_a_killed_writer_do_not_block_completion(tmp_path):
    # SIGTERM / SIGKILL (torchrun stopping the other ranks) skips atomic_path's cleanup
    from cortex_nb.store import TokenStore, chunked_array

    labels = np.repeat(np.arange(2), 3)
    shards = tmp_path / "s" / "shards"
    shards.mkdir(parents=True)
    (shards / ".00001.npz.abc.tmp").write_bytes(b"half a shard")
    st = TokenStore.generate(tmp_path / "s", labels, lambda lab, seed: {"tokens": np.zeros((len(lab), 2, 2))},
                             meta={"K": 4, "m": 2}, shard_size=4, seed=0, split="train", progress=False)
    assert len(st) == 6 and not shards.exists()
    parts = tmp_path / "t.npy.parts"
    parts.mkdir()
    (parts / ".000000000.npy.xyz.tmp").write_bytes(b"")
    arr = chunked_array(tmp_path / "t.npy", 5, 2, lambda a, b: np.arange(a, b), progress=False)
    np.testing.assert_array_equal(arr, np.arange(5))
    assert not parts.exists()
