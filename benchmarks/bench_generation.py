"""Benchmark 4: class-conditional generation and dataset storage.

Generation — contenders on the same VQGM (random weights) and the same class labels:
- ours: ``VQGM.sample(labels, top_k=1)``: taming's KV-cached ``sample_with_past``.
- uncached: ``sample_uncached`` (``benchmarks/reference.py``): taming's ``Net2NetTransformer.sample``, which
  re-runs the transformer on the whole prefix at every one of the m² steps.
Greedy decoding (top-k 1) on both, so the tokens must be IDENTICAL (asserted). The VQGM is built
from ``cortex_nb.vqgm.taming_shapes.tiny_cin_config`` at the toy profile's size (GPT 4 layers, 4 heads, 128 dims,
64 tokens, K 512, 10 classes; VQGAN 32 x 32 → 8 x 8, d 64). The ratio is reported; no goal.

Storage — bytes per sample: our token store keeps token ids, uint16 m x m (``tokens.npy`` of N
samples, measured by writing it with numpy, its header shared by all N); the scripts keep one
float32 d x m x m embedding ``.npy`` per sample (measured by writing one file with numpy, header
included). Toy (m 8, d 64) and paper size (m 16, d 256).
Run: ``python benchmarks/bench_generation.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import _common as C
import numpy as np
import torch

from cortex_nb.vqgm.taming_config import build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config
from cortex_nb.vqgm import VQGM
from reference import sample_uncached  # benchmarks/reference.py (benchmarks/ is sys.path[0])


def toy_vqgm() -> VQGM:
    torch.manual_seed(0)
    cfg = tiny_cin_config(n_embed=512, embed_dim=64, z_channels=64, resolution=32, ch=32, ch_mult=(1, 2, 2),
                          n_classes=10, n_layer=4, n_head=4, n_embd=128)
    logging.getLogger("cortex_nb").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        return VQGM(build_from_config(cfg))


def storage(m: int, d: int, n: int = 10_000) -> dict:
    """Bytes per sample: ours (uint16 tokens of n samples in one .npy) vs one float32 embedding .npy."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "tokens.npy"
        np.save(ours, rng.integers(0, 16384, (n, m, m)).astype(np.uint16))
        ref = Path(tmp) / "000000.npy"
        np.save(ref, rng.standard_normal((d, m, m)).astype(np.float32))
        o, r = ours.stat(), ref.stat()
        return {"m": m, "d": d, "ours_bytes_per_sample": o.st_size / n, "ours_header_bytes": o.st_size - n * m * m * 2,
                "reference_bytes_per_sample": r.st_size, "reference_bytes_on_disk": r.st_blocks * 512,
                "ratio": r.st_size / (o.st_size / n)}


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    B, B_warm, repeats = (4, 2, 1) if args.quick else (128, 16, 3)
    vq = toy_vqgm()
    labels = torch.arange(B) % vq.n_classes
    res = C.compare({"ours": lambda: vq.sample(labels, top_k=1),
                     "uncached": lambda: sample_uncached(vq, labels)},
                    repeats=repeats,
                    warmup_calls={"ours": lambda: vq.sample(labels[:B_warm], top_k=1),
                                  "uncached": lambda: sample_uncached(vq, labels[:B_warm])})
    a, b = res["first"]["ours"], res["first"]["uncached"]
    assert a.shape == (B, vq.m, vq.m) and torch.equal(a, b), "greedy KV-cached and uncached samplers disagree"
    distinct = len({tuple(t.flatten().tolist()) for t in a})
    gpt_params = sum(p.numel() for p in vq.model.transformer.parameters())
    rows = [C.row("generation: KV cache vs uncached", f"toy GPT 4×4×128 ({gpt_params / 1e6:.2g} M), "
                  f"{vq.m * vq.m} tokens, K={vq.K}, B={B}", "ours", "uncached",
                  res["median"]["ours"], res["median"]["uncached"], goal="— (reported)",
                  agreement=f"greedy: tokens identical ({distinct} distinct grids)", repeats=repeats,
                  times=res["times"])]
    store = [dict(size="toy", **storage(8, 64)), dict(size="paper", **storage(16, 256))]
    for s in store:
        print(f"  storage {s['size']}: ours {s['ours_bytes_per_sample']:.1f} B/sample, reference "
              f"{s['reference_bytes_per_sample']} B/sample (x{s['ratio']:.0f})")
    notes = [
        "ours = VQGM.sample(labels, top_k=1) (taming's sample_with_past, KV cache); uncached = taming's "
        "Net2NetTransformer.sample(sample=False) via benchmarks/reference.py's sample_uncached.",
        "Random GPT weights (taming's init); greedy decoding makes both deterministic, so tokens must match exactly.",
        "The warm-up round samples a smaller batch; timed rounds sample all B labels in one call.",
        "Storage: ours per sample = tokens.npy size / N (N = 10 000; labels.npy adds 8 B/sample); reference = "
        "one float32 .npy written with numpy (header included; on a 4 KiB-block file system it occupies "
        "reference_bytes_on_disk). The scripts also keep a CSV row per sample with the ids as text.",
    ]
    C.write_result(args, "generation", "Generation (KV cache) and storage", rows, notes=notes,
                   extra={"storage": store})
    return {"rows": rows, "storage": store}


if __name__ == "__main__":
    main()
