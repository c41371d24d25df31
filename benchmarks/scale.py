"""Paper-scale cost estimate: time and disk of the imagenet profile (CORTEX §4.1, A.1.3).

The paper's setting is 1,000,000 / 300,000 / 50,000 images sampled from taming's class-conditional
ImageNet transformer (§4.1.1), two information extractors trained for 80 epochs (A.1.3), and token
saliency values (TSV, §3.3 eq. 4–5, N = 20) for every training image. Nobody should start that
without knowing what it costs, so this module turns *per-sample* costs into a table:

    per-sample FLOPs (counted) ─┬─► GPU seconds = max(compute, memory, launch)  ─► 1 GPU, 8 GPUs
    per-sample bytes, kernels ──┘        (stated peaks and efficiencies)
    per-sample CPU seconds (measured on this machine) ─────────────────────────► CPU column
    array shapes and dtypes ────────────────────────────────────────────────────► disk column

Pieces, small and pure where they can be:

- ``count_flops(fn)``: matmul/conv FLOPs of running ``fn`` (``torch.utils.flop_counter``),
  works on the meta device, so the 1.4 B-parameter transformer is never allocated.
- ``count_traffic(fn)``: bytes read + written and kernels launched by ``fn`` in eager mode (every
  non-view op reads its inputs and writes its outputs once): the memory and launch bounds.
- ``gpt_forward_flops`` / ``gpt_sample_flops``: the same FLOPs in closed form for minGPT.
- ``build_cin_gpt`` / ``build_vqgan``: the official model shapes, without weights.
- ``sampling_cost``: one KV-cached sample of taming's ``sample_with_past`` per sequence.
- ``npy_bytes`` / ``token_store_bytes`` / ``checkpoint_bytes`` / ``reference_sample_bytes``: disk.
- ``gpu_seconds`` and ``estimate(costs, extractors)`` → a DataFrame (one row per job); the
  assumptions are ``default_assumptions()`` (also in ``df.attrs["assumptions"]``).

FLOPs are "model FLOPs": 2·M·N·K per matrix product and the convolution equivalent (forward and
backward), as FlopCounterMode counts them; normalisations, activations, softmax and the optimizer
step are elementwise and not counted (they show up in the assumed utilisation instead).
``benchmarks/paper_scale.py`` measures the CPU side and writes the README's table.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.utils._python_dispatch
import torch.utils._pytree
from torch import nn

__all__ = [
    "CIN_GPT", "VQGAN_F16", "GPUS", "GPU", "PRECISIONS", "SampleCost", "StepCost",
    "count_flops", "count_traffic", "split_flops", "gpt_forward_flops", "gpt_sample_flops",
    "build_cin_gpt", "build_vqgan", "sampling_step_cost", "sampling_cost", "sampler_memory_bytes",
    "npy_bytes", "token_store_bytes", "checkpoint_bytes", "reference_sample_bytes",
    "default_assumptions", "default_sizes", "sizes_from_profile", "gpu_seconds", "estimate",
    "format_seconds", "markdown_table",
]

# ---------------------------------------------------------------------------------- model shapes
#: taming's class-conditional ImageNet transformer ("cin transformer", 2020-11-20T21-45-44 project
#: config), as we assume it: ~1.41 B parameters; one definition, shared with the paper-dry profile's models
#: (cortex_nb.vqgm.paper_dry). Not checked against the released YAML here (no network); block_size only changes the
#: positional table (256 vs 257 rows).
from cortex_nb.vqgm.paper_dry import CIN_GPT, VQGAN_F16 as _F16  # noqa: E402

#: its first stage: VQGAN f16 with a 16384 x 256 codebook (16 x 16 tokens for 256 x 256 images)
VQGAN_F16: dict[str, Any] = dict(
    n_embed=_F16["n_embed"], embed_dim=_F16["embed_dim"],
    ddconfig=dict(double_z=False, z_channels=_F16["z_channels"], resolution=_F16["resolution"], in_channels=3,
                  out_ch=3, ch=_F16["ch"], ch_mult=list(_F16["ch_mult"]), num_res_blocks=_F16["num_res_blocks"],
                  attn_resolutions=list(_F16["attn_resolutions"]), dropout=0.0),
)


# ---------------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class GPU:
    """Datasheet peaks (dense, no sparsity) of one GPU."""
    name: str
    fp32_tflops: float      # plain FP32 (CUDA cores): what strict-fp32 matmuls get
    tf32_tflops: float      # TF32 tensor cores, dense
    bf16_tflops: float      # BF16 tensor cores, dense
    mem_tb_s: float         # HBM bandwidth, TB/s
    memory_gb: float
    source: str


GPUS: dict[str, GPU] = {
    "A100": GPU("A100 80GB SXM", 19.5, 156.0, 312.0, 2.039, 80,
                "NVIDIA A100 datasheet: FP32 19.5 TFLOPS, TF32 156 (312 with sparsity), BF16 312 (624 with "
                "sparsity), HBM2e 2,039 GB/s (80GB SXM)"),
    "H100": GPU("H100 SXM", 67.0, 494.7, 989.4, 3.35, 80,
                "NVIDIA H100 datasheet (SXM5): FP32 67 TFLOPS, TF32 989 and BF16 1,979 TFLOPS with sparsity "
                "(dense: half), HBM3 3.35 TB/s"),
}

#: precision modes: (peak used for convolutions, peak used for matmuls, bytes per float element)
PRECISIONS: dict[str, tuple[str, str, int]] = {
    # cortex-nb as shipped: float32 everywhere, PyTorch defaults -> cuDNN convolutions may use TF32
    # (torch.backends.cudnn.allow_tf32 is True), matmuls may not (cuda.matmul.allow_tf32 is False)
    "fp32": ("tf32", "fp32", 4),
    # torch.set_float32_matmul_precision("high"): matmuls on TF32 tensor cores too
    "tf32": ("tf32", "tf32", 4),
    # bf16 weights and activations (autocast + bf16 sampling); not implemented in cortex-nb
    "bf16": ("bf16", "bf16", 2),
}


def _peak(gpu: GPU, kind: str) -> float:
    return {"fp32": gpu.fp32_tflops, "tf32": gpu.tf32_tflops, "bf16": gpu.bf16_tflops}[kind] * 1e12


# ---------------------------------------------------------------------------------- counting
class _NoModuleTracking:
    """Stands in for FlopCounterMode's ModuleTracker: everything is attributed to 'Global'.
    The tracker's backward hooks break ``torch.autograd.grad`` (which TSV uses): "A leaf node was
    passed to _will_engine_execute_node ...", so we count without per-module attribution."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn()`` per aten op (``{"aten.addmm": n, "aten.convolution": n, ...}``).

    ``torch.utils.flop_counter.FlopCounterMode`` with module attribution switched off (so that
    ``torch.autograd.grad`` works inside ``fn``). Runs on any device, the meta device included.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}


def split_flops(counts: Mapping[str, int]) -> tuple[int, int]:
    """(convolution FLOPs, matmul FLOPs) of a ``count_flops`` result: convolutions and their
    backward run on cuDNN, everything else counted (mm, addmm, bmm, attention) is a matmul."""
    conv = sum(v for k, v in counts.items() if "conv" in k)
    return conv, sum(counts.values()) - conv


_NO_TRAFFIC = {"aten._unsafe_view", "aten.detach", "aten.alias", "aten.lift_fresh"}  # no data moved


class _Traffic(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if not func.is_view and name not in _NO_TRAFFIC:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
            self.bytes += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
            self.ops += 1
        return out


def count_traffic(fn: Callable[[], Any]) -> tuple[int, int]:
    """(bytes moved, kernels) of ``fn()`` in eager mode: every op that is not a view reads each
    input tensor and writes each output tensor once and is one kernel launch. An upper-ish bound
    for eager PyTorch on a GPU (caches hold little of a 1.4 B-parameter model or its KV cache)."""
    mode = _Traffic()
    with mode:
        fn()
    return mode.bytes, mode.ops


# ---------------------------------------------------------------------------------- GPT
def gpt_forward_flops(n_layer: int, n_embd: int, vocab_size: int, n_new: int, n_past: int = 0,
                      batch: int = 1) -> int:
    """Matmul FLOPs of one minGPT forward of ``n_new`` tokens attending to ``n_past`` cached ones.

    Per layer and token: q, k, v and the output projection 4·2·C², the MLP (C → 4C → C) 16·C²;
    attention q·kᵀ and att·v 2·2·C per key (summed over heads); then the head 2·C·V per token.
    Without a cache (n_past 0) the T x T attention is computed in full (masked, not skipped).
    """
    C, T, keys = n_embd, n_new, n_past + n_new
    return batch * (n_layer * (24 * T * C * C + 4 * T * keys * C) + 2 * T * C * vocab_size)


def gpt_sample_flops(n_layer: int, n_embd: int, vocab_size: int, steps: int, cond_len: int = 1) -> int:
    """Matmul FLOPs of one sequence of taming's ``sample_with_past``: step 0 forwards the
    ``cond_len`` conditioning tokens, step n ≥ 1 one token with ``n + cond_len - 1`` cached."""
    total = gpt_forward_flops(n_layer, n_embd, vocab_size, cond_len)
    for n in range(1, steps):
        total += gpt_forward_flops(n_layer, n_embd, vocab_size, 1, n + cond_len - 1)
    return total


def build_cin_gpt(device: str | torch.device = "meta", **overrides: int) -> nn.Module:
    """taming's minGPT at the cin transformer's shape (``CIN_GPT`` with ``overrides``), random
    weights, eval mode. On the meta device nothing is allocated."""
    from cortex_nb.vqgm.taming_compat import import_taming

    tm = import_taming()
    with torch.device(device):
        gpt = tm.mingpt.GPT(**{**CIN_GPT, **overrides})
    return gpt.eval()


def build_vqgan(device: str | torch.device = "meta", **ddconfig: Any) -> nn.Module:
    """taming's VQModel at the f16 / 16384 shape (``VQGAN_F16``; ``ddconfig`` overrides), random
    weights, the LPIPS loss replaced by DummyLoss (no download). Decode with ``.decode(quant)``."""
    from cortex_nb.vqgm.taming_compat import import_taming
    from cortex_nb.vqgm.taming_config import DUMMY_LOSS_TARGET

    tm = import_taming()
    dd = {**VQGAN_F16["ddconfig"], **ddconfig}
    with torch.device(device), contextlib.redirect_stdout(io.StringIO()):   # taming prints z's shape
        vq = tm.vqgan.VQModel(ddconfig=dd, lossconfig={"target": DUMMY_LOSS_TARGET}, n_embed=VQGAN_F16["n_embed"],
                              embed_dim=VQGAN_F16["embed_dim"])
    return vq.eval()


@dataclass(frozen=True)
class StepCost:
    """Cost of one sampling step for a whole batch."""
    matmul_flops: int
    bytes: int
    ops: int


def sampling_step_cost(gpt: nn.Module, batch: int, n: int, *, cond_len: int = 1, top_k: int | None = 600,
                       top_p: float | None = 0.92) -> StepCost:
    """Step ``n`` of taming's ``sample_with_past`` for ``batch`` sequences, as it runs: a
    ``forward_with_past`` of the newest token against the concatenated cache, top-k / top-p
    filtering, softmax (the multinomial draw is one more small kernel, not counted). Best on meta."""
    from cortex_nb.vqgm.taming_compat import filter_top_k_top_p

    dev = gpt.pos_emb.device
    cfg = gpt.config
    hs = cfg.n_embd // cfg.n_head
    past_len = n + cond_len - 1
    x = torch.zeros(batch, cond_len if n == 0 else 1, dtype=torch.long, device=dev)
    # sample_with_past keeps a list of per-step presents and concatenates it every step; one tensor
    # of the same total size moves the same bytes through the same single cat
    past = None if n == 0 else [torch.zeros(cfg.n_layer, 2, batch, cfg.n_head, past_len, hs, device=dev)]

    def step():
        with torch.no_grad():
            logits, _, _ = gpt.forward_with_past(x, past=past, past_length=past_len)
            logits = logits[:, -1, :]
            if top_k is not None:
                logits = filter_top_k_top_p(logits, top_k=top_k, top_p=top_p)
            torch.softmax(logits, dim=-1)

    traffic: list[tuple[int, int]] = []
    _, mm = split_flops(count_flops(lambda: traffic.append(count_traffic(step))))   # one pass, both counts
    return StepCost(mm, *traffic[0])


@dataclass(frozen=True)
class SampleCost:
    """Cost of one sample of one workload (per image, per training sample, ...)."""
    conv_flops: float = 0.0      # convolutions and their backward (cuDNN)
    matmul_flops: float = 0.0    # mm / addmm / bmm
    bytes: float = 0.0           # memory traffic at 4-byte floats; 0: not modelled (compute bound)
    ops: float = 0.0             # kernel launches; 0: not modelled
    cpu_seconds: float = math.nan  # measured on this machine

    @property
    def flops(self) -> float:
        return self.conv_flops + self.matmul_flops


def sampling_cost(gpt: nn.Module, batch: int, steps: int, *, cond_len: int = 1, **filtering: Any) -> SampleCost:
    """Per-sequence cost of sampling ``steps`` tokens with ``batch`` sequences at a time.

    Steps n ≥ 1 differ only in the cache length, and every count is affine in it (the cache is
    read and copied a fixed number of times per step), so step 1 and step ``steps - 1`` give all
    of them; step 0 (no cache) is counted on its own."""
    first = sampling_step_cost(gpt, batch, 0, cond_len=cond_len, **filtering)
    tot = np.array([first.matmul_flops, first.bytes, first.ops], dtype=np.float64)
    if steps > 1:
        a = sampling_step_cost(gpt, batch, 1, cond_len=cond_len, **filtering)
        va = np.array([a.matmul_flops, a.bytes, a.ops], dtype=np.float64)
        if steps > 2:
            b = sampling_step_cost(gpt, batch, steps - 1, cond_len=cond_len, **filtering)
            vb = np.array([b.matmul_flops, b.bytes, b.ops], dtype=np.float64)
            slope = (vb - va) / (steps - 2)
        else:
            slope = np.zeros(3)
        k = steps - 1                                   # steps 1 .. steps-1, offsets 0 .. k-1
        tot += k * va + slope * (k * (k - 1) / 2)
    mm, nbytes, ops = tot / batch
    return SampleCost(matmul_flops=float(mm), bytes=float(nbytes), ops=float(ops))


def sampler_memory_bytes(n_params: int, n_layer: int, n_embd: int, positions: int, batch: int, elem: int = 4) -> int:
    """GPU memory of taming's sampler at its last step: the weights, plus the KV cache twice (the
    list of per-step presents and its concatenation); activations of one token are negligible."""
    kv = 2 * n_layer * n_embd * positions * batch * elem          # keys and values, every layer
    return n_params * elem + 2 * kv


# ---------------------------------------------------------------------------------- disk
def npy_bytes(shape: Sequence[int], dtype: Any) -> int:
    """Exact size of ``np.save(array)`` for an array of this shape and dtype (header included),
    without making the array."""
    dtype = np.dtype(dtype)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(int(s) for s in shape)})
    return len(header.getvalue()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def token_store_bytes(n: int, m: int = 16, image_size: int | None = None) -> int:
    """One split of a token store (``cortex_nb.io.store``): tokens.npy uint16 (n, m, m), labels.npy
    int64 (n,), and for the test split images.npy uint8 (n, H, H, 3). meta.json (< 1 kB) not counted."""
    total = npy_bytes((n, m, m), np.uint16) + npy_bytes((n,), np.int64)
    if image_size:
        total += npy_bytes((n, image_size, image_size, 3), np.uint8)
    return total


def checkpoint_bytes(n_params: int, n_buffers: int = 0, *, adam: bool = True, best: bool = True) -> int:
    """Float32 bytes of ``cortex_nb.engine.train.fit``'s checkpoints (pickle overhead not counted):
    last.pt = weights + buffers + Adam's two moments; best.pt = weights + buffers."""
    state = 4 * (n_params + n_buffers)
    return state + (8 * n_params if adam else 0) + (state if best else 0)


@functools.lru_cache(maxsize=8)
def reference_sample_bytes(m: int = 16, d: int = 256, K: int = 16384, n_rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """What the authors' scripts write per sample (REFERENCE.md), measured with numpy/Python:
    the float32 (d, m, m) embedding .npy, the CSV row (file name, label, the m² token ids as a
    Python-literal list), and a TSV CSV row (m² floats as a Python-literal list; values like
    gradients, log-uniform in [1e-5, 1e-1], written from float32 as Python floats)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.save(buf, np.zeros((d, m, m), np.float32))
    ids = rng.integers(0, K, (n_rows, m * m))
    tok_rows = [f"{i:07d}.npy,{rng.integers(1000)},\"{ids[i].tolist()}\"\n" for i in range(n_rows)]
    vals = (10.0 ** rng.uniform(-5, -1, (n_rows, m * m))).astype(np.float32).astype(np.float64)
    tsv_rows = [f"{i:07d}.npy,\"{vals[i].tolist()}\"\n" for i in range(n_rows)]
    return {"embedding_npy": float(len(buf.getvalue())),
            "token_csv_row": float(np.mean([len(r) for r in tok_rows])),
            "tsv_csv_row": float(np.mean([len(r) for r in tsv_rows]))}


# ---------------------------------------------------------------------------------- assumptions
def default_sizes() -> dict[str, Any]:
    """The imagenet profile's sizes (cortex_nb/profiles/imagenet.yaml; see ``sizes_from_profile``)."""
    return dict(n_classes=1000, n_train=1_000_000, n_val=300_000, n_test=50_000, m=16, d=256, K=16384,
                image_size=256, epochs=80, train_batch=256, sample_batch=64, shard_size=4096,
                tsv_chunk=5000, top_k=600, top_p=0.92)


def sizes_from_profile(cfg: Any) -> dict[str, Any]:
    """``default_sizes()`` read from a loaded profile (per-class counts times classes)."""
    c = int(cfg.world.n_classes)
    return {**default_sizes(), "n_classes": c, "n_train": c * int(cfg.data.n_train), "n_val": c * int(cfg.data.n_val),
            "n_test": c * int(cfg.data.n_test), "image_size": int(cfg.world.image_size),
            "epochs": int(cfg.extractors.epochs), "train_batch": int(cfg.extractors.batch_size),
            "sample_batch": int(cfg.data.batch_size), "shard_size": int(cfg.data.shard_size),
            "tsv_chunk": int(cfg.saliency.chunk), "top_k": cfg.data.top_k, "top_p": cfg.data.top_p}


def default_assumptions() -> dict[str, Any]:
    """Every number the estimate assumes rather than measures (the README states them)."""
    return {
        "precision": "fp32",       # cortex-nb as shipped (see PRECISIONS)
        # model FLOP utilisation: achieved / datasheet peak, per workload (assumed, not measured)
        "mfu": {"sample": 0.5, "decode": 0.4, "train": 0.5, "eval": 0.5, "tsv": 0.5},
        "bandwidth_efficiency": 0.8,   # achieved / datasheet HBM bandwidth for the memory bound
        "launch_overhead_s": 10e-6,    # host time per eager kernel (Python + dispatcher + launch)
        "n_gpus": 8,
        "ddp_efficiency": 0.9,         # DDP training on 8 GPUs (global batch 256 = 32 per GPU)
        "parallel_efficiency": 1.0,    # generation and TSV: independent shards / chunks per GPU
        "png_bytes": 130_000,          # a 256 x 256 RGB PNG of an ImageNet-like image (~2/3 of raw)
        "gpus": {k: asdict(v) for k, v in GPUS.items()},
    }


# ---------------------------------------------------------------------------------- time
def gpu_seconds(cost: SampleCost, gpu: GPU, precision: str = "fp32", mfu: float = 0.5,
                bandwidth_efficiency: float = 0.8, launch_overhead_s: float = 10e-6) -> dict[str, Any]:
    """Seconds per sample on one GPU: the largest of the compute bound (FLOPs / (peak · mfu), with
    the peak of each op kind in this precision), the memory bound (bytes / (bandwidth · efficiency);
    bytes scale with the element size) and the launch bound (kernels · overhead)."""
    conv_kind, mm_kind, elem = PRECISIONS[precision]
    compute = cost.conv_flops / (_peak(gpu, conv_kind) * mfu) + cost.matmul_flops / (_peak(gpu, mm_kind) * mfu)
    memory = cost.bytes * (elem / 4) / (gpu.mem_tb_s * 1e12 * bandwidth_efficiency)
    launch = cost.ops * launch_overhead_s
    bounds = {"compute": compute, "memory": memory, "launch": launch}
    bound = max(bounds, key=bounds.get)
    return {**bounds, "seconds": bounds[bound], "bound": bound}


@dataclass
class _Job:
    name: str
    parts: list[tuple[str, float]]         # (cost key, samples)
    units: int | None                      # independent work units for 8 GPUs (None: DDP)
    disk: float
    disk_reference: float


def _jobs(costs: Mapping[str, SampleCost], extractors: Mapping[str, Mapping[str, int]], s: Mapping[str, Any],
          a: Mapping[str, Any]) -> list[_Job]:
    ref = reference_sample_bytes(s["m"], s["d"], s["K"])
    ref_gen = ref["embedding_npy"] + ref["token_csv_row"] + a["png_bytes"]
    shards = lambda n: math.ceil(n / s["shard_size"])  # noqa: E731
    jobs = [
        _Job(f"generate train ({s['n_train']:,})", [("sample", s["n_train"])], shards(s["n_train"]),
             token_store_bytes(s["n_train"], s["m"]), s["n_train"] * ref_gen),
        _Job(f"generate val ({s['n_val']:,})", [("sample", s["n_val"])], shards(s["n_val"]),
             token_store_bytes(s["n_val"], s["m"]), s["n_val"] * ref_gen),
        _Job(f"generate test ({s['n_test']:,}) + decode", [("sample", s["n_test"]), ("decode", s["n_test"])],
             shards(s["n_test"]), token_store_bytes(s["n_test"], s["m"], s["image_size"]), s["n_test"] * ref_gen),
    ]
    for arch, st in extractors.items():
        ck = checkpoint_bytes(st["params"], st.get("buffers", 0))
        ref_ck = 4 * (st["params"] + st.get("buffers", 0))           # the scripts keep the best weights
        jobs.append(_Job(f"train {arch} ({s['epochs']} epochs)",
                         [(f"train_{arch}", s["epochs"] * s["n_train"]), (f"eval_{arch}", s["epochs"] * s["n_val"])],
                         None, ck, ref_ck))
    for arch in extractors:
        jobs.append(_Job(f"TSV {arch} (train split)", [(f"tsv_{arch}", s["n_train"])], math.ceil(s["n_train"] / s["tsv_chunk"]),
                         npy_bytes((s["n_train"], s["m"], s["m"]), np.float32), s["n_train"] * ref["tsv_csv_row"]))
    missing = {k for j in jobs for k, _ in j.parts} - set(costs)
    if missing:
        raise KeyError(f"estimate() needs per-sample costs for {sorted(missing)}; got {sorted(costs)}")
    return jobs


def _kind(key: str) -> str:
    return key.split("_")[0]


def estimate(costs: Mapping[str, SampleCost], extractors: Mapping[str, Mapping[str, int]], *,
             gpus: Sequence[str] = ("A100", "H100"), sizes: Mapping[str, Any] | None = None,
             assumptions: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Time and disk of the imagenet profile's jobs, one row each plus a total.

    Args:
        costs: per-sample costs keyed ``sample`` (one KV-cached sequence), ``decode`` (one 16 x 16
            → 256 x 256 VQGAN decode), and per extractor ``train_<arch>`` (forward + backward +
            optimizer, per sample), ``eval_<arch>`` (validation forward), ``tsv_<arch>`` (N = 20
            noisy forward + input-gradient passes).
        extractors: ``{arch: {"params": n, "buffers": n}}`` for the checkpoint sizes.
        gpus: keys of ``GPUS``.
        sizes: overrides of ``default_sizes()``; assumptions: overrides of ``default_assumptions()``.

    Returns:
        DataFrame indexed by job: ``<gpu> x1 [h]``, ``<gpu> x<n> [h]`` per GPU, ``8-GPU efficiency``,
        ``CPU [h]`` (this machine), ``disk [GB]`` (cortex-nb) and ``disk reference [GB]`` (the
        authors' layout), ``bound <gpu>`` (what limits the 1-GPU time). ``df.attrs`` holds
        ``assumptions`` and ``sizes``.
    """
    s = {**default_sizes(), **(sizes or {})}
    a = {**default_assumptions(), **(assumptions or {})}
    a["mfu"] = {**default_assumptions()["mfu"], **a["mfu"]}
    n = int(a["n_gpus"])
    rows = {}
    for job in _jobs(costs, extractors, s, a):
        row: dict[str, Any] = {}
        eff = a["ddp_efficiency"] if job.units is None else \
            a["parallel_efficiency"] * (job.units / n) / math.ceil(job.units / n)
        for g in gpus:
            secs, bound_s = 0.0, {}
            for key, count in job.parts:
                t = gpu_seconds(costs[key], GPUS[g], a["precision"], a["mfu"][_kind(key)],
                                a["bandwidth_efficiency"], a["launch_overhead_s"])
                secs += t["seconds"] * count
                bound_s[t["bound"]] = bound_s.get(t["bound"], 0.0) + t["seconds"] * count
            row[f"{g} x1 [h]"] = secs / 3600
            row[f"{g} x{n} [h]"] = secs / 3600 / n / eff
            row[f"bound {g}"] = max(bound_s, key=bound_s.get)
        row[f"{n}-GPU efficiency"] = eff
        row["CPU [h]"] = sum(costs[k].cpu_seconds * c for k, c in job.parts) / 3600
        row["disk [GB]"] = job.disk / 1e9
        row["disk reference [GB]"] = job.disk_reference / 1e9
        rows[job.name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    total = {c: df[c].sum() for c in df.columns if c.endswith("]")}
    for g in gpus:
        total[f"bound {g}"] = ""
    total[f"{n}-GPU efficiency"] = sum(df[f"{gpus[0]} x1 [h]"]) / n / sum(df[f"{gpus[0]} x{n} [h]"]) if gpus else math.nan
    df.loc["total"] = pd.Series(total)
    cols = [c for g in gpus for c in (f"{g} x1 [h]", f"{g} x{n} [h]")] + [f"{n}-GPU efficiency", "CPU [h]",
                                                                         "disk [GB]", "disk reference [GB]"]
    df = df[cols + [f"bound {g}" for g in gpus]]
    df.attrs.update(assumptions=a, sizes=s)
    return df


# ---------------------------------------------------------------------------------- formatting
def format_seconds(seconds: float) -> str:
    """42 s, 12 min, 5.3 h (below 2 days), 9.1 d (below a year), 3.4 y."""
    if not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365.25 * 86400:
        return f"{seconds / 86400:.1f} d"
    return f"{seconds / (365.25 * 86400):.1f} y"


def _format_bytes(gb: float) -> str:
    if gb >= 1000:
        return f"{gb / 1000:.2f} TB"
    if gb >= 1:
        return f"{gb:.1f} GB"
    return f"{gb * 1000:.0f} MB"


def markdown_table(df: pd.DataFrame) -> str:
    """The estimate as a Markdown table with human units (times from hours, disk from GB)."""
    head = ["job"] + [c.replace(" [h]", "").replace(" x", " ×") for c in df.columns if c.endswith("[h]") and c != "CPU [h]"]
    head += ["CPU (this machine)", "disk (cortex-nb)", "disk (reference layout)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in df.iterrows():
        cells = [f"**{name}**" if name == "total" else str(name)]
        cells += [format_seconds(r[c] * 3600) for c in df.columns if c.endswith("[h]") and c != "CPU [h]"]
        cells += [format_seconds(r["CPU [h]"] * 3600), _format_bytes(r["disk [GB]"]), _format_bytes(r["disk reference [GB]"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
