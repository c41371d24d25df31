"""benchmarks/scale.py (the paper-scale estimate): FLOP and traffic counting against independent
computations, disk arithmetic against bytes really written, and the estimate's internal
consistency. No timings are asserted."""
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cortex_nb.method.extractors import ExtractorConfig, build_extractor
from cortex_nb.method.saliency import TokenSaliency
from cortex_nb.io.store import TokenStore, chunked_array
from cortex_nb.vqgm.taming_compat import import_taming

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # benchmark-only modules, importable as `python benchmarks/x.py` sees them
    sys.path.insert(0, str(BENCHMARKS))
import scale as S  # noqa: E402  (benchmarks/scale.py)

SMALL_GPT = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=50, block_size=17)


def _flop_counter_total(fn) -> int:
    """torch's FlopCounterMode as documented (module tracking on): the independent count."""
    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    return fc.get_total_flops()


# ------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("T", [1, 5, 16])
def test_gpt_forward_flops_matches_flop_counter(T):
    gpt = S.build_cin_gpt("cpu", **SMALL_GPT)
    idx = torch.randint(0, 50, (3, T))
    with torch.no_grad():
        got = _flop_counter_total(lambda: gpt(idx))
    assert got == S.gpt_forward_flops(2, 32, 50, T, batch=3)


def test_gpt_forward_flops_with_cache_matches_flop_counter():
    gpt = S.build_cin_gpt("cpu", **SMALL_GPT)
    P = 7
    past = [torch.randn(2, 2, 3, 4, P, 8)]
    x = torch.randint(0, 50, (3, 1))
    with torch.no_grad():
        got = _flop_counter_total(lambda: gpt.forward_with_past(x, past=past, past_length=P))
    assert got == S.gpt_forward_flops(2, 32, 50, 1, n_past=P, batch=3)


def test_gpt_sample_flops_matches_taming_sampler():
    """The closed form and the meta-device count equal FlopCounterMode on taming's real sampler."""
    tm = import_taming()
    gpt = S.build_cin_gpt("cpu", **SMALL_GPT)
    c = torch.randint(0, 50, (4, 1))
    steps = 16
    got = _flop_counter_total(lambda: tm.mingpt.sample_with_past(c, gpt, steps=steps, top_k=10, top_p=0.9))
    analytic = S.gpt_sample_flops(2, 32, 50, steps)
    assert got == 4 * analytic
    cost = S.sampling_cost(S.build_cin_gpt("meta", **SMALL_GPT), 4, steps, top_k=10, top_p=0.9)
    assert cost.matmul_flops == analytic


def test_sampling_cost_interpolation_equals_every_step_counted():
    """Bytes and kernels of all steps (counted one by one) equal the two-point interpolation."""
    gpt = S.build_cin_gpt("meta", **SMALL_GPT)
    B, steps = 3, 12
    each = [S.sampling_step_cost(gpt, B, n, top_k=10, top_p=0.9) for n in range(steps)]
    cost = S.sampling_cost(gpt, B, steps, top_k=10, top_p=0.9)
    assert cost.matmul_flops == pytest.approx(sum(e.matmul_flops for e in each) / B, rel=1e-12)
    assert cost.bytes == pytest.approx(sum(e.bytes for e in each) / B, rel=1e-12)
    assert cost.ops == pytest.approx(sum(e.ops for e in each) / B, rel=1e-12)
    # the cache is read more than once per step: traffic grows with it
    assert each[-1].bytes > each[1].bytes


def test_sampling_traffic_at_least_weights_and_cache():
    """Each step reads every weight at least once and the whole cache at least once."""
    gpt = S.build_cin_gpt("meta", **SMALL_GPT)
    B, n = 2, 9
    params = sum(p.numel() for p in gpt.parameters()) - gpt.pos_emb.numel()
    kv = 2 * 2 * 32 * n * B * 4                                        # L, k+v, C, positions, batch, fp32
    step = S.sampling_step_cost(gpt, B, n, top_k=None)
    assert step.bytes >= 4 * params + kv


def _conv_flops(cin, cout, k, hw):
    return 2 * k * k * cin * cout * hw


def test_count_flops_tiny_ce_by_hand():
    d, m, w, h, C = 4, 4, 8, 16, 3
    f = build_extractor(ExtractorConfig(arch="CE", d=d, m=m, width=w, fc=h, n_classes=C)).eval()
    by_hand = (_conv_flops(d, w, 3, m * m) + 3 * _conv_flops(w, w, 3, m * m)
               + 4 * _conv_flops(w, w, 3, (m // 2) ** 2)
               + 2 * w * (m // 4) ** 2 * h + 2 * h * h + 2 * h * C)
    with torch.no_grad():
        counts = S.count_flops(lambda: f(torch.randn(2, d, m, m)))
    assert sum(counts.values()) == 2 * by_hand
    conv, mm = S.split_flops(counts)
    assert mm == 2 * (2 * w * (m // 4) ** 2 * h + 2 * h * h + 2 * h * C)
    assert conv + mm == 2 * by_hand


@pytest.mark.parametrize("arch", ["CE", "RE"])
def test_count_flops_train_step_equals_flop_counter_mode(arch):
    f = build_extractor(ExtractorConfig(arch=arch, d=8, m=8, width=32, n_classes=5)).train()
    E, y = torch.randn(4, 8, 8, 8), torch.randint(0, 5, (4,))
    step = lambda: F.cross_entropy(f(E), y).backward()  # noqa: E731
    assert sum(S.count_flops(step).values()) == _flop_counter_total(step)
    # the same on the meta device
    with torch.device("meta"):
        fm = build_extractor(ExtractorConfig(arch=arch, d=8, m=8, width=32, n_classes=5)).train()
    Em, ym = E.to("meta"), y.to("meta")
    assert sum(S.count_flops(lambda: F.cross_entropy(fm(Em), ym).backward()).values()) == _flop_counter_total(step)


@pytest.mark.parametrize("arch", ["CE", "RE"])
def test_tsv_flops_are_n_forward_and_input_backward(arch):
    """TSV = N noisy forwards + one input-gradient pass each; the oracle counts one forward and a
    plain .backward() to the input (frozen weights) with FlopCounterMode, then multiplies by N."""
    N, B = 5, 2
    f = build_extractor(ExtractorConfig(arch=arch, d=8, m=8, width=32, n_classes=5)).eval()
    E, y = torch.randn(B, 8, 8, 8), torch.randint(0, 5, (B,))
    got = sum(S.count_flops(lambda: TokenSaliency.paper(f, n_samples=N).attribute(E, y)).values())
    for p in f.parameters():
        p.requires_grad_(False)

    def one_pass():
        X = E.clone().requires_grad_(True)
        f(X).gather(1, y[:, None]).sum().backward()

    assert got == N * _flop_counter_total(one_pass)


def test_count_traffic_matmul_and_views():
    a, b = torch.randn(6, 5), torch.randn(5, 7)
    nbytes, ops = S.count_traffic(lambda: a @ b)
    assert (nbytes, ops) == (4 * (6 * 5 + 5 * 7 + 6 * 7), 1)
    assert S.count_traffic(lambda: a.t().reshape(5, 6)[1:]) == (0, 0)       # views move nothing
    assert S.count_traffic(lambda: a.t().contiguous()) == (2 * 4 * 30, 1)    # a copy reads and writes


def test_vqgan_decoder_shape_and_flops_on_meta():
    vq = S.build_vqgan("meta")
    z = torch.zeros(1, 256, 16, 16, device="meta")
    assert vq.decode(z).shape == (1, 3, 256, 256)
    conv, mm = S.split_flops(S.count_flops(lambda: vq.decode(z)))
    # the first conv alone (z 256 -> 512 channels at 16 x 16, 3 x 3) is part of it
    assert conv > _conv_flops(256, 512, 3, 256) and mm > 0
    assert sum(p.numel() for p in S.build_cin_gpt("meta").parameters()) == 1_410_640_896


# ------------------------------------------------------------------------------ disk
@pytest.mark.parametrize("shape,dtype", [((0,), np.int64), ((3, 4, 4), np.uint16), ((1000, 16, 16), np.float32),
                                         ((2, 8, 8, 3), np.uint8)])
def test_npy_bytes_exact(shape, dtype):
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype))
    assert S.npy_bytes(shape, dtype) == len(buf.getvalue())


def test_npy_bytes_paper_size(tmp_path):
    """The train split's tokens.npy at full size, as numpy writes it (a sparse file: nothing allocated)."""
    shape = (1_000_000, 16, 16)
    np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.uint16, shape=shape).flush()
    assert (tmp_path / "t.npy").stat().st_size == S.npy_bytes(shape, np.uint16) == 512_000_128


@pytest.mark.parametrize("with_images", [False, True])
def test_token_store_bytes_match_files_written(tmp_path, with_images):
    m, H, n = 4, 8, 23
    labels = np.arange(n) % 5

    def make_shard(chunk, seed):
        rng = np.random.default_rng(seed)
        out = {"tokens": rng.integers(0, 64, (len(chunk), m, m))}
        if with_images:
            out["images"] = rng.integers(0, 256, (len(chunk), H, H, 3), dtype=np.uint8)
        return out

    store = TokenStore.generate(tmp_path / "split", labels, make_shard, meta={"K": 64, "m": m}, shard_size=10,
                                seed=0, split="test", progress=False)
    files = ["tokens.npy", "labels.npy"] + (["images.npy"] if with_images else [])
    written = sum((store.path / f).stat().st_size for f in files)
    assert written == S.token_store_bytes(n, m, H if with_images else None)


def test_tsv_bytes_match_chunked_array(tmp_path):
    n, m = 17, 4
    arr = chunked_array(tmp_path / "tsv.npy", n, 5, lambda a, b: np.zeros((b - a, m, m), np.float32), progress=False)
    assert arr.shape == (n, m, m)
    assert (tmp_path / "tsv.npy").stat().st_size == S.npy_bytes((n, m, m), np.float32)


def test_checkpoint_bytes_match_torch_save():
    """last.pt (weights, buffers, Adam moments) + best.pt (weights, buffers), float32, within pickle overhead."""
    f = build_extractor(ExtractorConfig(arch="RE", d=16, m=8, width=64, n_classes=10))
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    F.cross_entropy(f(torch.randn(4, 16, 8, 8)), torch.randint(0, 10, (4,))).backward()
    opt.step()
    sizes = []
    for obj in ({"model": f.state_dict(), "optimizer": opt.state_dict()}, {"model": f.state_dict()}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        sizes.append(len(buf.getvalue()))
    params = sum(p.numel() for p in f.parameters())
    buffers = sum(b.numel() for b in f.buffers() if b.is_floating_point())
    n_int_buffers = sum(1 for b in f.buffers() if not b.is_floating_point())   # num_batches_tracked (int64)
    predicted = S.checkpoint_bytes(params, buffers)
    assert predicted <= sum(sizes) <= predicted * 1.10 + 8 * n_int_buffers + 100_000


def test_reference_sample_bytes():
    ref = S.reference_sample_bytes()
    assert ref["embedding_npy"] == 256 * 16 * 16 * 4 + 128
    # a row of 256 ids below 16384 is at least 256 digits plus separators
    assert 256 * 3 < ref["token_csv_row"] < 256 * 8
    assert ref["tsv_csv_row"] > ref["token_csv_row"]


def test_sampler_memory_bytes():
    assert S.sampler_memory_bytes(10, 2, 4, 3, 5, elem=2) == 10 * 2 + 2 * (2 * 2 * 4 * 3 * 5 * 2)


# ------------------------------------------------------------------------------ estimate
def _costs(scale=1.0):
    c = {"sample": S.SampleCost(matmul_flops=7e11 * scale, bytes=1.2e11, ops=3500, cpu_seconds=40.0),
         "decode": S.SampleCost(conv_flops=2.5e11, matmul_flops=5e8, cpu_seconds=3.5)}
    for arch, k in (("CE", 1.0), ("RE", 0.5)):
        c[f"train_{arch}"] = S.SampleCost(conv_flops=1.6e10 * k, matmul_flops=3e8 * k, cpu_seconds=0.2 * k)
        c[f"eval_{arch}"] = S.SampleCost(conv_flops=5.4e9 * k, matmul_flops=1e8 * k, cpu_seconds=0.07 * k)
        c[f"tsv_{arch}"] = S.SampleCost(conv_flops=2.2e11 * k, matmul_flops=4e9 * k, cpu_seconds=3.7 * k)
    return c


EXTRACTORS = {"CE": {"params": 72_156_136, "buffers": 20_000}, "RE": {"params": 33_334_440, "buffers": 10_000}}


def test_estimate_rows_columns_and_total():
    df = S.estimate(_costs(), EXTRACTORS)
    assert list(df.index) == ["generate train (1,000,000)", "generate val (300,000)", "generate test (50,000) + decode",
                              "train CE (80 epochs)", "train RE (80 epochs)", "TSV CE (train split)",
                              "TSV RE (train split)", "total"]
    for col in ["A100 x1 [h]", "A100 x8 [h]", "H100 x1 [h]", "H100 x8 [h]", "CPU [h]", "disk [GB]", "disk reference [GB]"]:
        assert df.loc["total", col] == pytest.approx(df[col].iloc[:-1].sum())
        assert (df[col] > 0).all()
    assert df.attrs["assumptions"]["precision"] == "fp32"


def test_estimate_eight_gpus_is_one_over_eight_over_efficiency():
    df = S.estimate(_costs(), EXTRACTORS).iloc[:-1]
    for g in ("A100", "H100"):
        assert np.allclose(df[f"{g} x8 [h]"], df[f"{g} x1 [h]"] / 8 / df["8-GPU efficiency"])
    assert df.loc["train CE (80 epochs)", "8-GPU efficiency"] == 0.9
    # 245 shards of 4096 over 8 GPUs: 31 rounds for 30.6 shards' worth of work
    assert df.loc["generate train (1,000,000)", "8-GPU efficiency"] == pytest.approx(245 / 8 / 31)
    assert df.loc["TSV CE (train split)", "8-GPU efficiency"] == 1.0            # 200 chunks: 25 each
    assert (df["8-GPU efficiency"] <= 1).all()


def test_estimate_cpu_and_disk_arithmetic():
    c = _costs()
    df = S.estimate(c, EXTRACTORS)
    assert df.loc["generate train (1,000,000)", "CPU [h]"] == pytest.approx(1e6 * 40 / 3600)
    assert df.loc["train CE (80 epochs)", "CPU [h]"] == pytest.approx(80 * (1e6 * 0.2 + 3e5 * 0.07) / 3600)
    assert df.loc["generate train (1,000,000)", "disk [GB]"] == pytest.approx((1e6 * 512 + 1e6 * 8 + 256) / 1e9)
    assert df.loc["generate test (50,000) + decode", "disk [GB]"] == pytest.approx(
        (5e4 * (512 + 8 + 256 * 256 * 3) + 3 * 128) / 1e9)
    assert df.loc["TSV CE (train split)", "disk [GB]"] == pytest.approx((1e6 * 1024 + 128) / 1e9)
    p, b = EXTRACTORS["CE"]["params"], EXTRACTORS["CE"]["buffers"]
    assert df.loc["train CE (80 epochs)", "disk [GB]"] == pytest.approx(4 * (2 * (p + b) + 2 * p) / 1e9)
    # the reference layout stores 256 KiB embeddings and PNGs: hundreds of times more per grid
    assert df.loc["generate train (1,000,000)", "disk reference [GB]"] > 500 * df.loc["generate train (1,000,000)", "disk [GB]"]


def test_estimate_monotonic():
    base = S.estimate(_costs(), EXTRACTORS)
    twice = S.estimate(_costs(), EXTRACTORS, sizes={"n_train": 2_000_000})
    row, row2 = "generate train (1,000,000)", "generate train (2,000,000)"
    assert twice.loc[row2, "H100 x1 [h]"] == pytest.approx(2 * base.loc[row, "H100 x1 [h]"])
    assert twice.loc[row2, "disk [GB]"] > 1.99 * base.loc[row, "disk [GB]"]
    assert twice.loc["train CE (80 epochs)", "H100 x1 [h]"] > base.loc["train CE (80 epochs)", "H100 x1 [h]"]
    # a faster GPU is faster on every row; lower precision never slower
    assert (base["H100 x1 [h]"] < base["A100 x1 [h]"]).all()
    t = {p: S.estimate(_costs(), EXTRACTORS, assumptions={"precision": p})["H100 x1 [h]"] for p in S.PRECISIONS}
    assert (t["bf16"] <= t["tf32"]).all() and (t["tf32"] <= t["fp32"]).all()
    # more utilisation, less time (compute-bound rows)
    hi = S.estimate(_costs(), EXTRACTORS, assumptions={"mfu": {"train": 1.0}})
    assert hi.loc["train CE (80 epochs)", "A100 x1 [h]"] < base.loc["train CE (80 epochs)", "A100 x1 [h]"]
    assert hi.loc["TSV CE (train split)", "A100 x1 [h]"] == base.loc["TSV CE (train split)", "A100 x1 [h]"]


def test_gpu_seconds_is_the_largest_bound():
    g = S.GPUS["H100"]
    c = S.SampleCost(conv_flops=1e12, matmul_flops=1e12, bytes=1e10, ops=1000)
    t = S.gpu_seconds(c, g, "fp32", mfu=0.5, bandwidth_efficiency=0.8, launch_overhead_s=1e-5)
    assert t["compute"] == pytest.approx(1e12 / (494.7e12 * 0.5) + 1e12 / (67e12 * 0.5))
    assert t["memory"] == pytest.approx(1e10 / (3.35e12 * 0.8))
    assert t["launch"] == pytest.approx(1e-2)
    assert t["seconds"] == max(t["compute"], t["memory"], t["launch"]) and t["bound"] == "compute"
    bf = S.gpu_seconds(c, g, "bf16", mfu=0.5, bandwidth_efficiency=0.8, launch_overhead_s=1e-5)
    assert bf["memory"] == pytest.approx(t["memory"] / 2)
    slow = S.gpu_seconds(S.SampleCost(matmul_flops=1e9, bytes=1e11), g)
    assert slow["bound"] == "memory" and slow["seconds"] == slow["memory"]


def test_estimate_names_missing_costs():
    c = _costs()
    del c["tsv_RE"]
    with pytest.raises(KeyError, match="tsv_RE"):
        S.estimate(c, EXTRACTORS)


def test_formatting():
    assert [S.format_seconds(s) for s in (5, 125, 3 * 3600, 3 * 86400, 400 * 86400, math.nan)] == \
        ["5 s", "2 min", "3.0 h", "3.0 d", "1.1 y", "–"]
    md = S.markdown_table(S.estimate(_costs(), EXTRACTORS))
    assert md.count("\n") == 1 + 8 and "| **total** |" in md and "A100 ×8" in md


def test_sizes_from_profile_match_defaults():
    from cortex_nb.io.config import load_profile

    assert S.sizes_from_profile(load_profile("imagenet")) == S.default_sizes()


def test_benchmark_quick_smoke(tmp_path, monkeypatch):
    """benchmarks/paper_scale.py --quick runs end to end and writes its JSON and Markdown."""
    import importlib.util
    import json

    path = BENCHMARKS / "paper_scale.py"
    monkeypatch.syspath_prepend(str(path.parent))   # as `python benchmarks/paper_scale.py`: _common importable
    spec = importlib.util.spec_from_file_location("paper_scale_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "paper_scale.json").read_text())
    assert saved["quick"] is True and saved["extractor_params_as_documented"] == {"CE": True, "RE": True}
    assert saved["measured"]["sample"]["matmul_flops"] == saved["measured"]["sample"]["analytic_matmul_flops"]
    assert set(out["table"]) == set(saved["table"]) and "total" in saved["table"]
    md = (tmp_path / "paper_scale.md").read_text()
    assert "QUICK RUN" in md and "| **total** |" in md and "## Assumptions" in md
