"""Benchmark: paper-scale estimate (issue #7) — time and disk of the imagenet profile.

The imagenet profile samples 1,000,000 / 300,000 / 50,000 token grids from taming's class-conditional
ImageNet transformer, trains CE and RE for 80 epochs on the train split and computes TSVs (N = 20)
for every training image. No GPU and no weights here, so the estimate is built from:

1. FLOPs per sample, counted with ``torch.utils.flop_counter`` on the meta device at the paper's
   sizes (cin GPT 1.41 B parameters, VQGAN f16 decoder, CE 72.2 M, RE 33.3 M parameters), plus the
   bytes and kernels of one KV-cached sampling step (the memory and launch bounds);
2. this CPU's achieved FLOP/s on each workload, measured on random-weight models: CE / RE at the
   paper's size (training step, validation forward, TSV), the VQGAN decoder at the paper's size
   (one 16 x 16 -> 256 x 256 decode), and a 4-layer slice of the GPT at full width, batch 64, with
   a 128-token cache;
3. stated GPU peaks and efficiencies (``benchmarks/scale.py``'s ``default_assumptions``).

Writes ``results/benchmarks/paper_scale.json`` and ``paper_scale.md`` (the README's table, the
assumptions in prose, the machine). Full mode takes about a minute on 2 cores; ``--quick`` measures
tiny stand-in models instead (a smoke run for tests: its CPU column means nothing).
Run: ``python benchmarks/paper_scale.py [--quick] [--threads 2] [--out DIR]``.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import _common as C  # sets OMP_WAIT_POLICY and sys.path before torch; --quick/--threads/--out; machine
import torch
import torch.nn.functional as F

from cortex_nb.vqgm.taming_compat import filter_top_k_top_p
from cortex_nb.method.extractors import ExtractorConfig, build_extractor
from cortex_nb.method.saliency import TokenSaliency
import scale as S  # benchmarks/scale.py (benchmarks/ is sys.path[0])

ARCHS = ("CE", "RE")


def _best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones (the machine is shared:
    the minimum is the least disturbed run)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------- extractors
def _extractor_workloads(arch: str, quick: bool, sizes: dict) -> tuple[dict[str, dict], dict[str, int]]:
    """Paper-size FLOPs (meta) and CPU time of a probe (the paper-size model itself unless quick)
    for the training step, the validation forward and TSV of one extractor."""
    paper = ExtractorConfig(arch=arch, d=sizes["d"], m=sizes["m"], n_classes=sizes["n_classes"])
    probe = paper if not quick else ExtractorConfig(arch=arch, d=sizes["d"], m=sizes["m"], n_classes=100, width=32)
    B_train, B_tsv, reps = (8, 2, 2) if not quick else (2, 1, 1)
    m, d = sizes["m"], sizes["d"]

    def flops(cfg: ExtractorConfig, B: int) -> dict[str, tuple[int, int]]:
        with torch.device("meta"):
            f = build_extractor(cfg)
        E = torch.zeros(B, d, m, m, device="meta")
        y = torch.zeros(B, dtype=torch.long, device="meta")
        f.train()
        train = S.split_flops(S.count_flops(lambda: F.cross_entropy(f(E), y).backward()))
        f.eval()
        with torch.no_grad():
            ev = S.split_flops(S.count_flops(lambda: f(E)))
        tsv = S.split_flops(S.count_flops(lambda: TokenSaliency.paper(f, n_samples=20).attribute(E, y)))
        return {"train": train, "eval": ev, "tsv": tsv}

    # per sample, counted on 2 samples (BatchNorm refuses a training batch of one)
    paper_flops = {k: (c / 2, mm / 2) for k, (c, mm) in flops(paper, 2).items()}
    probe_flops = {k: (c / 2, mm / 2) for k, (c, mm) in flops(probe, 2).items()}

    torch.manual_seed(0)
    f = build_extractor(probe)
    opt = torch.optim.Adam(f.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    E = torch.randn(B_train, d, m, m, generator=g)
    y = torch.randint(0, probe.n_classes, (B_train,), generator=g)

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(f(E), y).backward()

    f.train()
    t_fb = _best_time(fwd_bwd, reps)
    t_opt = _best_time(opt.step, reps)
    f.eval()
    with torch.no_grad():
        t_eval = _best_time(lambda: f(E), reps)
    ts = TokenSaliency.paper(f, n_samples=20)
    Et, yt = E[:B_tsv], y[:B_tsv]
    t_tsv = _best_time(lambda: ts.attribute(Et, yt, generator=torch.Generator().manual_seed(1)), reps, warmup=1 if not quick else 0)

    # per-sample CPU seconds of the probe; the optimizer step is paid once per batch of 256
    probe_s = {"train": t_fb / B_train + t_opt / sizes["train_batch"], "eval": t_eval / B_train, "tsv": t_tsv / B_tsv}
    out = {}
    for k in ("train", "eval", "tsv"):
        flops_per_s = sum(probe_flops[k]) / probe_s[k]
        conv, mm = paper_flops[k]
        out[f"{k}_{arch}"] = {"conv_flops": conv, "matmul_flops": mm, "cpu_flops_per_s": flops_per_s,
                              "cpu_seconds": (conv + mm) / flops_per_s,
                              "probe": f"{probe.arch} width {probe.width}, {probe.n_classes} classes, batch "
                                       f"{B_tsv if k == 'tsv' else B_train}" + (", N 20" if k == "tsv" else ""),
                              "probe_seconds_per_sample": probe_s[k]}
    out[f"train_{arch}"]["optimizer_step_s"] = t_opt
    with torch.device("meta"):
        pm = build_extractor(paper)
    state = {"params": sum(p.numel() for p in pm.parameters()), "buffers": sum(b.numel() for b in pm.buffers())}
    return out, state


# ---------------------------------------------------------------------- generation
def _sampling_workload(quick: bool, sizes: dict) -> dict[str, Any]:
    """Per-sample cost of taming's KV-cached sampler at the cin GPT's shape (meta), and this CPU's
    FLOP/s on one step of a slice: 4 layers at full width, batch 64, 128 cached tokens."""
    B, steps = sizes["sample_batch"], sizes["m"] ** 2
    filt = {"top_k": sizes["top_k"], "top_p": sizes["top_p"]}
    gpt = S.build_cin_gpt("meta")
    cost = S.sampling_cost(gpt, B, steps, **filt)
    analytic = S.gpt_sample_flops(S.CIN_GPT["n_layer"], S.CIN_GPT["n_embd"], S.CIN_GPT["vocab_size"], steps)

    probe_kw = dict(n_layer=4) if not quick else dict(n_layer=1, n_embd=128, n_head=4, vocab_size=1024)
    pB, past, reps = (B, 128, 3) if not quick else (8, 16, 1)
    probe_meta = S.build_cin_gpt("meta", **probe_kw)
    step_flops = S.sampling_step_cost(probe_meta, pB, past + 1, **filt).matmul_flops
    torch.manual_seed(0)
    probe = S.build_cin_gpt("cpu", **probe_kw)
    cfg = probe.config
    x = torch.randint(0, cfg.vocab_size, (pB, 1))
    cache = [torch.randn(cfg.n_layer, 2, pB, cfg.n_head, past, cfg.n_embd // cfg.n_head)]
    top_k = min(filt["top_k"], cfg.vocab_size) if filt["top_k"] else None

    def step():
        with torch.no_grad():
            logits, _, _ = probe.forward_with_past(x, past=cache, past_length=past)
            logits = filter_top_k_top_p(logits[:, -1, :], top_k=top_k, top_p=filt["top_p"])
            torch.multinomial(torch.softmax(logits, -1), 1)

    t = _best_time(step, reps)
    fps = step_flops / t
    # eager dispatch per op on this CPU: a tiny GPT where compute is negligible
    tiny_kw = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=64)
    tiny_ops = S.sampling_step_cost(S.build_cin_gpt("meta", **tiny_kw), 1, 9, top_k=8, top_p=0.9).ops
    tiny = S.build_cin_gpt("cpu", **tiny_kw)
    tc = [torch.randn(2, 2, 1, 2, 8, 16)]
    tx = torch.zeros(1, 1, dtype=torch.long)

    def tiny_step():
        with torch.no_grad():
            lg, _, _ = tiny.forward_with_past(tx, past=tc, past_length=8)
            torch.softmax(filter_top_k_top_p(lg[:, -1, :], top_k=8, top_p=0.9), -1)

    t_tiny = _best_time(tiny_step, 20 if not quick else 3, warmup=3)
    return {"sample": {"matmul_flops": cost.matmul_flops, "conv_flops": 0.0, "bytes": cost.bytes, "ops": cost.ops,
                       "cpu_flops_per_s": fps, "cpu_seconds": cost.matmul_flops / fps,
                       "analytic_matmul_flops": analytic / 1.0,
                       "probe": f"GPT {probe_kw}, batch {pB}, {past} cached tokens, one step",
                       "probe_seconds_per_step": t},
            "_dispatch_us_per_op": 1e6 * t_tiny / tiny_ops,
            "_sampler_gpu_bytes": S.sampler_memory_bytes(sum(p.numel() for p in gpt.parameters()), S.CIN_GPT["n_layer"],
                                                         S.CIN_GPT["n_embd"], steps + 1, B),
            "_gpt_params": sum(p.numel() for p in gpt.parameters())}


def _decode_workload(quick: bool, sizes: dict) -> dict[str, Any]:
    """One VQGAN f16 decode (quantised latent 16 x 16 x 256 -> 256 x 256 image): FLOPs at the
    paper's size on meta, this CPU's FLOP/s on the real (random-weight) decoder at that size."""
    m = sizes["m"]
    vq = S.build_vqgan("meta")
    conv, mm = S.split_flops(S.count_flops(lambda: vq.decode(torch.zeros(1, 256, m, m, device="meta"))))
    probe_kw, pm = ({}, m) if not quick else (dict(ch=32), 4)
    probe_meta = S.build_vqgan("meta", **probe_kw)
    probe_flops = sum(S.split_flops(S.count_flops(lambda: probe_meta.decode(torch.zeros(1, 256, pm, pm, device="meta")))))
    torch.manual_seed(0)
    probe = S.build_vqgan("cpu", **probe_kw)
    z = torch.randn(1, 256, pm, pm)
    with torch.no_grad():
        probe.decode(torch.randn(1, 256, 2, 2))            # warm-up at a small size
        t = _best_time(lambda: probe.decode(z), 1, warmup=0)
    fps = probe_flops / t
    return {"conv_flops": conv, "matmul_flops": mm, "cpu_flops_per_s": fps, "cpu_seconds": (conv + mm) / fps,
            "probe": f"VQGAN decoder {probe_kw or 'paper size'}, latent {pm} x {pm}, batch 1",
            "probe_seconds_per_sample": t, "decoder_params": sum(p.numel() for p in vq.decoder.parameters())
            + sum(p.numel() for p in vq.post_quant_conv.parameters())}


# ---------------------------------------------------------------------- report
def _costs(measured: dict[str, dict]) -> dict[str, S.SampleCost]:
    keys = ("conv_flops", "matmul_flops", "bytes", "ops", "cpu_seconds")
    return {k: S.SampleCost(**{f: float(v.get(f, 0.0)) for f in keys}) for k, v in measured.items()}


def _assumption_prose(a: dict, sizes: dict, gpt_params: int, dispatch_us: float, ref: dict,
                      sampler_bytes: float) -> list[str]:
    g = S.GPUS
    mfu = a["mfu"]
    return [
        f"**Work.** The imagenet profile: {sizes['n_train']:,} / {sizes['n_val']:,} / {sizes['n_test']:,} token grids "
        f"({sizes['m']} x {sizes['m']}) sampled with top-k {sizes['top_k']}, top-p {sizes['top_p']}, "
        f"{sizes['sample_batch']} sequences per batch; only the test split is decoded (its images are stored). "
        f"CE and RE: {sizes['epochs']} epochs on the train split, batch {sizes['train_batch']}, each epoch also "
        f"validates on the val split (one forward per sample). TSV: N = 20 noisy copies per image, one forward and "
        f"one input-gradient pass each, for every training image, per extractor.",
        f"**Models (assumed shapes, random weights).** cin transformer = taming's minGPT with vocab "
        f"{S.CIN_GPT['vocab_size']}, block {S.CIN_GPT['block_size']}, {S.CIN_GPT['n_layer']} layers, "
        f"{S.CIN_GPT['n_head']} heads, width {S.CIN_GPT['n_embd']} ({gpt_params / 1e9:.2f} B parameters); first stage "
        f"VQGAN f16 with a 16384 x 256 codebook, ch 128, ch_mult [1, 1, 2, 2, 4], 2 res blocks, attention at 16, "
        f"z 256. These are the values we believe the released config holds; they were not checked against the file "
        f"(no network here).",
        "**FLOPs** are counted by `torch.utils.flop_counter` on the meta device (matrix products and convolutions, "
        "forward and backward; normalisations, activations, softmax, sampling and the Adam update are not counted). "
        "The sampler's count equals the closed form of `scale.gpt_sample_flops` exactly.",
        "**Precision: cortex-nb as shipped** (float32, PyTorch defaults): convolutions may use TF32 (cuDNN's default), "
        "matrix products run in strict FP32 (`torch.backends.cuda.matmul.allow_tf32` is False). The second table shows "
        "what `torch.set_float32_matmul_precision('high')` (TF32) and bf16 would change.",
        f"**GPU peaks (dense, datasheet):** {g['A100'].source}. {g['H100'].source}.",
        f"**Utilisation (assumed):** achieved / peak FLOP/s = {mfu['train']} for extractor training, {mfu['eval']} "
        f"for validation, {mfu['tsv']} for TSV, {mfu['decode']} for VQGAN decoding, {mfu['sample']} for the sampler's "
        f"matrix products; HBM at {a['bandwidth_efficiency']:.0%} of its peak bandwidth.",
        f"**Sampling is not compute-bound.** Per step, taming's `sample_with_past` reads every weight once per batch, "
        f"re-concatenates the whole KV cache (`torch.cat(past)`), then once more per layer (`torch.cat((past_key, k))`), "
        f"and reads it in attention: about 5x the cache per step. Bytes and kernels are counted per step on the meta "
        f"device (every non-view op reads its inputs and writes its outputs once); the time per sample is the largest of "
        f"compute, memory (bytes / bandwidth) and launch (kernels x {a['launch_overhead_s'] * 1e6:.0f} µs of eager "
        f"host overhead per kernel; this CPU measures {dispatch_us:.0f} µs per op for a tiny GPT, without CUDA). "
        f"At batch {sizes['sample_batch']} in float32 the sampler holds about {sampler_bytes / 1e9:.0f} GB (weights, the "
        f"cache list and its concatenation at the last step): it fits an 80 GB GPU, a 4x larger batch would not.",
        f"**8 GPUs** = 1 GPU / 8 / efficiency. Generation and TSV are independent shards / chunks (torchrun: rank r "
        f"takes units p with p % 8 == r; efficiency {a['parallel_efficiency']} times the shard balance "
        f"units / (8 x ceil(units / 8)): {sizes['shard_size']} grids a shard, {sizes['tsv_chunk']} images a TSV chunk). "
        f"Extractor training is DDP with synchronised BatchNorm at efficiency {a['ddp_efficiency']} (32 samples per GPU "
        f"per step). Loading the model and the data, and the concatenation at the end, are not counted.",
        "**CPU (this machine)** = counted FLOPs / the FLOP/s measured here on the same workload: CE and RE and the "
        "VQGAN decoder at the paper's size with random weights; the sampler on a 4-layer slice of the GPT at full width "
        "(batch 64, 128 cached tokens, one step incl. top-k/top-p filtering). The Adam step is timed separately and paid "
        f"once per batch of {sizes['train_batch']}.",
        f"**Disk, cortex-nb:** token stores are uint16 (m² x 2 = {sizes['m'] ** 2 * 2} B a grid) + int64 labels, "
        f"exact `.npy` sizes with headers (meta.json < 1 kB not counted); the test split also stores its decoded images "
        f"as uint8 (196,608 B each); TSVs are float32 .npy (m² x 4 = {sizes['m'] ** 2 * 4} B an image) per extractor; "
        f"checkpoints: last.pt (weights, BatchNorm buffers, Adam's two moments) + best.pt (weights, buffers), "
        f"float32. Resumable writes keep shards / chunks until the final array is written: the peak during a job is "
        f"about twice its row.",
        f"**Disk, reference layout** (REFERENCE.md): per sample a float32 256 x 16 x 16 embedding `.npy` "
        f"({ref['embedding_npy']:,.0f} B measured with numpy, header included), a CSV row with the token ids as a Python "
        f"literal ({ref['token_csv_row']:,.0f} B on average, measured on random ids) and a PNG, assumed "
        f"{a['png_bytes'] / 1e3:.0f} kB (a 256 x 256 RGB ImageNet-like image; raw is 196.6 kB; PNGs of such images "
        f"are typically 100–180 kB); TSVs as CSV rows of Python-literal floats ({ref['tsv_csv_row']:,.0f} B measured); "
        f"checkpoints: the best weights only.",
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    t0 = time.perf_counter()
    try:
        from cortex_nb.io.config import load_profile
        sizes = S.sizes_from_profile(load_profile("imagenet"))
    except Exception as e:  # noqa: BLE001 - the defaults are the same numbers
        print(f"imagenet profile not readable ({e}); using scale.default_sizes()")
        sizes = S.default_sizes()

    timings = {}
    measured: dict[str, dict] = {}
    states = {}
    for arch in ARCHS:
        t = time.perf_counter()
        out, states[arch] = _extractor_workloads(arch, args.quick, sizes)
        measured.update(out)
        timings[arch] = time.perf_counter() - t
    t = time.perf_counter()
    samp = _sampling_workload(args.quick, sizes)
    measured["sample"] = samp["sample"]
    timings["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    measured["decode"] = _decode_workload(args.quick, sizes)
    timings["decode"] = time.perf_counter() - t

    costs = _costs(measured)
    a = S.default_assumptions()
    df = S.estimate(costs, states, sizes=sizes, assumptions=a)
    by_precision = {}
    for prec in S.PRECISIONS:
        d = S.estimate(costs, states, sizes=sizes, assumptions={**a, "precision": prec})
        for g in S.GPUS:
            by_precision[f"{g} x1 {prec}"] = d[f"{g} x1 [h]"]
    by_precision = {k: by_precision[k] for g in S.GPUS for k in by_precision if k.startswith(g + " ")}
    ref = S.reference_sample_bytes(sizes["m"], sizes["d"], sizes["K"])
    wall = time.perf_counter() - t0
    mach = C.machine()

    per_sample = []
    for k, v in measured.items():
        c = costs[k]
        row = {"workload": k, "flops": c.flops, "conv_share": c.conv_flops / c.flops if c.flops else 0.0,
               "bytes": c.bytes, "kernels": c.ops, "cpu_gflop_s": v["cpu_flops_per_s"] / 1e9,
               "cpu_seconds": c.cpu_seconds, "probe": v["probe"]}
        for g in S.GPUS:
            gs = S.gpu_seconds(c, S.GPUS[g], a["precision"], a["mfu"][k.split("_")[0]], a["bandwidth_efficiency"],
                               a["launch_overhead_s"])
            row[f"{g}_seconds"], row[f"{g}_bound"] = gs["seconds"], gs["bound"]
        per_sample.append(row)

    result = {
        "name": "paper_scale", "title": "Paper-scale estimate: time and disk of the imagenet profile",
        "quick": bool(args.quick), "threads": torch.get_num_threads(), "machine": mach, "wall_s": round(wall, 1),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
        "sizes": sizes, "assumptions": a, "measured": measured, "extractors": states,
        "gpt_params": samp["_gpt_params"], "dispatch_us_per_op": samp["_dispatch_us_per_op"],
        "sampler_gpu_bytes": samp["_sampler_gpu_bytes"],
        "extractor_params_as_documented": {"CE": states["CE"]["params"] == 72_156_136,
                                           "RE": states["RE"]["params"] == 33_334_440},
        "reference_bytes": ref, "per_sample": per_sample,
        "table": json.loads(df.to_json(orient="index")),
        "by_precision_h": {name: {k: float(v[name]) for k, v in by_precision.items()} for name in df.index},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paper_scale.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / "paper_scale.md").write_text(_markdown(result, df, by_precision, args.quick, mach))
    print(S.markdown_table(df))
    print(f"[{'QUICK, ' if args.quick else ''}{C.describe(mach)}; {wall:.0f} s] -> {args.out / 'paper_scale.md'}")
    return result


def _markdown(result: dict, df, by_precision: dict, quick: bool, mach: dict) -> str:
    a, sizes = result["assumptions"], result["sizes"]
    lines = [
        "# Paper-scale estimate: the imagenet profile",
        "",
        ("**QUICK RUN: tiny stand-in models were timed; the CPU column means nothing.**\n" if quick else "")
        + f"Generated by `benchmarks/paper_scale.py` in {result['wall_s']:.0f} s on {C.describe(mach)}. "
        "Times are estimates from counted FLOPs and bytes, stated GPU peaks and assumed efficiencies "
        "(below); the CPU column uses FLOP/s measured on this machine. cortex-nb as shipped (float32).",
        "",
        S.markdown_table(df),
        "",
        "What limits the 1-GPU time (A100 / H100): " + "; ".join(
            f"{name} {df.loc[name, 'bound A100']} / {df.loc[name, 'bound H100']}" for name in df.index if name != "total")
        + ". Memory-bound generation means the sampler, not the GPU's arithmetic, sets the pace (see Assumptions).",
        "",
        "## What precision buys (1 GPU)",
        "",
        "| job | " + " | ".join(k.replace(" x1 ", " ") for k in by_precision) + " |",
        "|---|" + "---:|" * len(by_precision),
    ]
    for name in df.index:
        lines.append(f"| {name} | " + " | ".join(S.format_seconds(v[name] * 3600) for v in by_precision.values()) + " |")
    lines += ["", "fp32 = as shipped (TF32 convolutions, FP32 matrix products); tf32 = "
              "`torch.set_float32_matmul_precision('high')`; bf16 = bf16 weights and activations (not implemented).", "",
              "## Per-sample costs", "",
              "| workload | GFLOP | conv share | GB moved | kernels | CPU GFLOP/s | CPU s | A100 s (bound) | H100 s (bound) | CPU probe |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["per_sample"]:
        moved = f"{r['bytes'] / 1e9:,.1f}" if r["bytes"] else "–"
        kernels = f"{r['kernels']:,.0f}" if r["kernels"] else "–"
        lines.append(f"| {r['workload']} | {r['flops'] / 1e9:,.1f} | {r['conv_share']:.0%} | {moved} | {kernels} | "
                     f"{r['cpu_gflop_s']:.1f} | {r['cpu_seconds']:.3g} | {r['A100_seconds']:.3g} ({r['A100_bound']}) | {r['H100_seconds']:.3g} ({r['H100_bound']}) | {r['probe']} |")
    lines += ["", "Per sample: one sampled 16 x 16 grid (batch 64), one decode, one training sample (forward + "
              "backward), one validation forward, one image's TSV (N = 20). GB moved and kernels only for the sampler.",
              "", "## Assumptions", ""]
    lines += [f"- {s}" for s in _assumption_prose(a, sizes, result["gpt_params"], result["dispatch_us_per_op"],
                                                  result["reference_bytes"], result["sampler_gpu_bytes"])]
    ok = all(result["extractor_params_as_documented"].values())
    lines += ["", f"Extractors: CE {result['extractors']['CE']['params']:,} parameters, RE "
              f"{result['extractors']['RE']['params']:,} ({'as' if ok else 'NOT as'} documented in "
              f"`cortex_nb/method/extractors.py`). Benchmark stages (s): {result['stage_seconds']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
