"""Data parallelism under torchrun (issue #7), end to end on the CPU with the gloo backend.

The real thing runs in subprocesses: ``python -m torch.distributed.run --standalone
--nproc-per-node 2 -m cortex_nb STAGE --profile smoke`` against a plain ``python -m cortex_nb
STAGE`` in another results root (CORTEX_RESULTS). Both roots share one toy VQGM and its
evaluators (built once by the ``vqgm`` stage and copied), so only the stage under test differs.

What "equal up to rounding" can mean for training (issue #19). A float32 DDP run and a
single process add the same numbers in another order (two half-batch gradients, BatchNorm
statistics summed by GlobalBatchNorm instead of the native kernel), so every sum of n terms may
differ by up to n u sum|terms| (u: unit roundoff). Adam's step lr m/(sqrt(v) + eps) has slope
up to 1 / eps (eps = 1e-8) in the gradient, so one step can move a weight apart by
lr min(1, n u G / eps), G ~ 1 the gradient scale. In float32 (u = 6e-8, n = 63 x 64 = 4032 for
the largest sums) n u / eps = 24: saturated. Entries whose gradient is zero in exact arithmetic
(a Linear bias in front of BatchNorm) take rounding-noise steps of +-lr whose signs differ
between the runs, and how far the weights end apart depends on the CPU's kernels, not on
correctness: relative L2 distance of the CE weights 2e-5 (AVX-512 machine, AVX2 kernels but
MKL's own), 7e-5 to 2e-4 (the same machine, its own kernels), 1.8e-3 (a user's 2-core AVX2
CPU), 3e-3 to 5e-3 (AVX2 kernels including MKL's: ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``), with train accuracies 2 samples apart. No bound below Adam's own reach separates that from a
mistake. So the tests compare only what does not drift:

* the stage end to end (float32): crash, resume, the same number of Adam steps and the same
  learning-rate schedule (exact), every parameter within Adam's reach of the single-process run
  (a bound from lr and the step count alone, :func:`adam_reach`), Table 1 written once;
* :func:`cortex_nb.engine.train.fit` itself with 2 processes against 1, with a crash and resume, in
  float64 (u = 1.1e-16: n u G / eps = 4.5e-5, far from saturation): equal within the bound
  derived in :func:`test_fit_ddp_equals_single_process_within_float64_rounding`. Measured there
  (max |difference| over every tensor, bound 4.5e-7): 2e-12 to 3e-12 (CE), 7e-13 to 1.3e-12
  (RE), on this machine's own kernels and on AVX2 kernels alike, at 1 and 2 threads; the two
  plausible mistakes (per-rank BatchNorm statistics, per-rank Dropout masks) give 1e-2 to 0.25.

The profile is pinned to ``threads=1`` so both sides of the end-to-end comparison use one thread
per process (none of the bounds depends on it).

Token stores and TSVs are byte-identical whatever the thread count was in our runs, and must
be: their units are seeded by index, not by who computes them.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cortex_nb.engine import distributed

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
TIMEOUT = 300


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """``cmd`` in the repository root, output captured; past TIMEOUT its whole process group is
    killed (torchrun's ranks included, which a plain timeout would leave running) and the test
    fails."""
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{' '.join(cmd[:6])} ... timed out after {TIMEOUT} s:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
    proc = run(launcher + args, base)
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


def _checkpoints(root: Path) -> dict[str, tuple[dict, dict]]:
    """``{arch: (last.pt, best.pt)}`` of the extractors in ``root``. A finished run's last.pt may
    be compact (no weights, no optimiser state); best.pt always holds the weights returned."""
    return {p.parent.name: tuple(torch.load(p.parent / f, weights_only=True) for f in ("last.pt", "best.pt"))
            for p in sorted((cache(root) / "extractors").glob("*/last.pt"))}


def adam_reach(lrs, betas=(0.9, 0.999)) -> float:
    """How far ``len(lrs)`` steps of (PyTorch's default) Adam can move one weight, whatever the
    gradients (weight decay included: it only changes the gradient). Step t moves it by
    lr_t |m_t| / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps), and by Cauchy-Schwarz over
    m_t = (1 - b1) sum_k b1^k g_(t-k) against v_t = (1 - b2) sum_k b2^k g_(t-k)^2,
    |m_t| <= (1 - b1) sqrt(sum_(k<t) (b1^2 / b2)^k) sqrt(v_t / (1 - b2)). Adversarial gradient
    sequences come within 2 % of it (0.00544 of 0.00554 for the schedule below)."""
    b1, b2 = betas
    reach = 0.0
    for t, lr in enumerate(lrs, start=1):
        series = sum((b1 * b1 / b2) ** k for k in range(t))
        reach += lr * (1 - b1) / (1 - b1 ** t) * math.sqrt((1 - b2 ** t) / (1 - b2) * series)
    return reach


def test_train_extractors_ddp_resumes_and_takes_the_single_process_steps(roots, trained):
    """The stage with 2 processes (crashed after epoch 1, resumed) against 1 process, in float32.
    Exact: epochs, learning rates, and the training batches behind the returned weights (their
    BatchNorm ``num_batches_tracked``). Weights: both runs start from the same initialisation,
    so a parameter of run a after S_a Adam steps and of run b after S_b steps can be no further
    apart than reach(S_a) + reach(S_b) (:func:`adam_reach`; ~1.1e-2 for 5 steps at lr 1e-3 and
    5 at 1e-4), on any CPU (measured: up to 2.7e-3 with AVX2 kernels). A different
    initialisation (weights of order 1/sqrt(fan_in) ~ 0.06) exceeds it; so may more steps or a
    larger learning rate. That DDP reproduces the single-process step within rounding is tested
    in float64, where it does not drift (see the module docstring)."""
    # the crash left a resumable checkpoint after CE's first epoch; the rerun finished it
    assert trained["crash"].returncode != 0
    assert "CORTEX_FAULT_AFTER_EPOCHS=1: rank 0 fails after 1 epoch" in trained["crash"].stderr
    assert sorted(trained["epochs_after_crash"].values()) == [1]
    assert "train-extractors (smoke): extractors CE" in trained["two"].stdout
    assert "; 2 processes," in trained["two"].stdout and "; 1 process," in trained["one"].stdout
    one, two = _checkpoints(roots["one"]), _checkpoints(roots["two"])
    assert one.keys() == two.keys() and len(one) == 2
    n_train, batch = 300, 63  # smoke: 30 images x 10 classes; extractors.batch_size above
    per_epoch = math.ceil(n_train / batch)  # 5 Adam steps
    for name in one:
        (last_a, best_a), (last_b, best_b) = one[name], two[name]
        assert last_a["epoch"] == last_b["epoch"] == 2
        ha, hb = pd.DataFrame(last_a["history"]), pd.DataFrame(last_b["history"])
        assert list(ha.lr) == list(hb.lr) and list(ha.skipped) == list(hb.skipped) == [0, 0]
        lrs = [lr for lr in ha.lr for _ in range(per_epoch)]  # the learning rate of every step
        bound = 0.0
        for last, best in ((last_a, best_a), (last_b, best_b)):
            assert best["epoch"] == last["best_epoch"]
            steps = per_epoch * best["epoch"]
            for k, v in best["model"].items():
                if k.endswith("num_batches_tracked"):  # one per training batch: exactly the steps taken
                    assert int(v) == steps, (name, k)
            bound += adam_reach(lrs[:steps])
        for k, va in best_a["model"].items():
            if va.is_floating_point() and not k.endswith((".running_mean", ".running_var")):  # Adam-trained
                assert float((va.double() - best_b["model"][k].double()).abs().max()) <= bound, (name, k)
    # Table 1 was written once, by rank 0
    assert trained["two"].stdout.count("CNN-based Extractor (CE)") == 1
    assert (roots["two"] / "results" / PROFILE / "tables").exists()


# --------------------------------------------------------------------------------------
# fit with 2 processes against 1, in float64
# --------------------------------------------------------------------------------------

F64_N = (300, 100)  # train / val items: the smoke token stores
F64_BATCH = 63  # 32 + 31 rows per rank; the last batch of 300 is 48 (24 + 24)


def _f64_data():
    """Smoke-shaped data in float64: 8 x 8 tokens of a 128-entry, 32-d codebook, 10 classes
    (half of each image's tokens come from its class's 12 codes), embedded by a codebook lookup
    as the stage does."""
    g = torch.Generator().manual_seed(0)
    K, m, d, C = 128, 8, 32, 10
    codebook = torch.randn(K, d, generator=g, dtype=torch.float64)

    def split(n):
        y = torch.arange(n) % C
        noise = torch.randint(0, K, (n, m, m), generator=g)
        own = (y[:, None, None] * 12 + torch.randint(0, 12, (n, m, m), generator=g)) % K
        return torch.where(torch.rand(n, m, m, generator=g) < 0.5, own, noise).to(torch.uint16), y

    def embed(t):  # (B, m, m) ids -> (B, d, m, m), as stages.embed_fn
        return F.embedding(t.long(), codebook).permute(0, 3, 1, 2).contiguous()

    return split(F64_N[0]), split(F64_N[1]), embed


def _f64_fit(arch: str, epochs: int = 2, ckpt_dir: Path | None = None):
    """The stage's fit of a smoke-sized extractor (width 32, Adam lr 1e-3, StepLR every epoch),
    the model in float64."""
    from cortex_nb.method.extractors import ExtractorConfig, build_extractor
    from cortex_nb.engine.train import FitConfig, fit

    train, val, embed = _f64_data()
    torch.manual_seed(0)
    model = build_extractor(ExtractorConfig(arch=arch, d=32, m=8, n_classes=10, width=32)).double()
    cfg = FitConfig(epochs=epochs, lr=1e-3, weight_decay=1e-4, step_size=1, gamma=0.1, batch_size=F64_BATCH,
                    seed=0, progress=False)
    return fit(model, train, val, cfg, ckpt_dir=ckpt_dir, transform=embed)


def _f64_worker(out: Path) -> None:
    """Run under torchrun by the test below: each arch trains one epoch, stops, and a fresh
    model resumes from the checkpoint to epoch 2. Rank 0 saves the results to ``out``."""
    torch.set_num_threads(1)
    results = {}
    with distributed.session("cpu"):
        assert distributed.world() == 2
        for arch in ("CE", "RE"):
            ckpt = out.parent / f"f64-{arch}"
            assert _f64_fit(arch, epochs=1, ckpt_dir=ckpt).history.epoch.tolist() == [1]
            distributed.barrier()  # fit returns on rank 1 before rank 0 has written last.pt
            res = _f64_fit(arch, epochs=2, ckpt_dir=ckpt)  # resumes after epoch 1
            results[arch] = {"model": res.model.state_dict(), "history": res.history.to_dict("list"),
                             "best_epoch": res.best_epoch}
        if distributed.is_main():
            torch.save(results, out)


def test_fit_ddp_equals_single_process_within_float64_rounding(tmp_path):
    """``fit`` with 2 processes (uneven split 32 / 31 rows, crash after epoch 1 and resume)
    equals 1 process, in float64, within a bound derived from what may legitimately differ:

    * summation order: the largest sums of a step have n = 63 rows x 64 positions = 4032 terms
      (first-layer weight gradients, BatchNorm statistics); each may be off by n u (u = 2^-53)
      relative to the sum of |terms|, of order 1 here;
    * Adam: a gradient difference d moves the update by at most lr d / eps (eps = 1e-8), so
      one step parts a weight by at most lr n u / eps, and S = 10 steps by S lr n u / eps;
    * the differences of earlier steps reach later gradients through the forward pass; the
      worst case n u above is sqrt(n) = 63 times the typical sqrt(n) u, which covers that growth.

    Bound: S lr n u / eps = 4.5e-7 (4.5e-4 lr) on every tensor, running statistics included;
    the same relative bound on the losses, which are 2-Lipschitz in the logits.
    Accuracies and the best epoch must be equal: a prediction flips only where two logits are
    within ~1e-12, i.e. never in 400 images. In float32 the same derivation gives 24 lr per step
    (saturated: see the module docstring), which is why this comparison is made in float64."""
    out = tmp_path / "ddp.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
                "OMP_WAIT_POLICY": "PASSIVE"})
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
                "--f64-worker", str(out)], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    two = torch.load(out, weights_only=True)

    u, adam_eps, lr = torch.finfo(torch.float64).eps / 2, 1e-8, 1e-3
    steps = 2 * math.ceil(F64_N[0] / F64_BATCH)
    bound = steps * lr * (F64_BATCH * 64) * u / adam_eps  # 4.5e-7
    for arch in ("CE", "RE"):
        one = _f64_fit(arch)  # one process, uninterrupted
        a, b = one.model.state_dict(), two[arch]["model"]
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and (a[k].dtype == torch.float64 or not a[k].is_floating_point()), k
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=bound, msg=lambda m, k=k, arch=arch: f"{arch} {k}: {m}")
        ha, hb = one.history, pd.DataFrame(two[arch]["history"])
        assert hb.epoch.tolist() == ha.epoch.tolist() == [1, 2] and hb.lr.tolist() == ha.lr.tolist()
        assert hb.train_acc.tolist() == ha.train_acc.tolist() and hb.val_acc.tolist() == ha.val_acc.tolist()
        assert two[arch]["best_epoch"] == one.best_epoch
        np.testing.assert_allclose(hb.train_loss, ha.train_loss, rtol=bound, atol=0)
        np.testing.assert_allclose(hb.val_loss, ha.val_loss, rtol=bound, atol=0)


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
    from cortex_nb.io.store import TokenStore, chunked_array

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


if __name__ == "__main__" and sys.argv[1:2] == ["--f64-worker"]:  # torchrun's processes, see above
    _f64_worker(Path(sys.argv[2]))
