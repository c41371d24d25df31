"""Section 05, the edits: which images are edited toward which class, in which region, by which method, and the
optimisation runs themselves (one batched, cached run per extractor, method and region; ``optimization.jobs`` at
once on the CPU), plus Table 3's controls as edits. Scored by :mod:`.s05_scoring`; the section is
:mod:`.s05_editing`."""
from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import DictConfig

from ..engine.pool import run_jobs
from ..io.files import save_json, save_npy
from ..method.optimize import central_region, optimize_embeddings, random_tokens, saliency_region, select_tokens
from .keys import cache_path, edit_key, replicate_seed
from .run import load_split, setup

__all__ = ["METHODS", "REGION_METHODS", "CONTROL_METHODS", "region_methods", "pairs_of", "regions_of", "edit_batch",
           "edit_region", "run_edits", "with_controls"]

log = logging.getLogger("cortex_nb")

METHODS = {"embedding": optimize_embeddings, "token": select_tokens, "token-original": select_tokens}


#: Methods run in each region: both in the paper's central block (Table 3); in the saliency-guided
#: block (beyond the paper) token selection only, since that table compares regions, not methods.
REGION_METHODS = {"central": ("embedding", "token"), "saliency": ("token",)}


#: the control run added to the central block when ``optimization.original_control`` is on: token
#: selection started from the original tokens (init: original) instead of random logits
CONTROL_METHODS = ("token-original",)


def region_methods(cfg: DictConfig) -> dict[str, tuple[str, ...]]:
    """The methods run in each region: :data:`REGION_METHODS`, plus :data:`CONTROL_METHODS` in the
    central block with ``optimization.original_control`` (unless the profile already starts from the
    original)."""
    out = dict(REGION_METHODS)
    if cfg.optimization.original_control and cfg.optimization.init != "original":
        out["central"] = out["central"] + CONTROL_METHODS
    return out


def pairs_of(cfg: DictConfig) -> list[tuple[int, int]]:
    """The class pairs of the protocol (toy: the head-only pairs; imagenet: Fig. 6's birds)."""
    return [tuple(int(c) for c in p) for p in cfg.optimization.pairs]


def regions_of(cfg: DictConfig) -> tuple[str, ...]:
    """The regions edited: the paper's central block, and the saliency-guided block when
    ``optimization.saliency_region`` is on."""
    return ("central", "saliency") if cfg.optimization.saliency_region else ("central",)


def edit_batch(cfg: DictConfig, vqgm) -> dict:
    """The test images of every source class with their target: tokens (B, m, m), source (B,),
    target (B,), index into the test split (B,)."""
    test = load_split(cfg, "test", vqgm)
    idx, src, tgt = [], [], []
    for a, b in pairs_of(cfg):
        for s, t in ((a, b), (b, a)):
            i = np.flatnonzero(test.labels == s)
            idx.append(i), src.append(np.full(len(i), s)), tgt.append(np.full(len(i), t))
    idx = np.concatenate(idx)
    return {"index": idx, "source": torch.from_numpy(np.concatenate(src)), "target": torch.from_numpy(np.concatenate(tgt)),
            "tokens": torch.from_numpy(np.asarray(test.tokens)[idx].astype(np.int64))}


def edit_region(cfg: DictConfig, kind: str, m: int, tsv: np.ndarray | None = None,
                idx: np.ndarray | None = None) -> torch.Tensor:
    """The profile's editable region: "central" (m, m) or "saliency" (B, m, m) around each top TSV."""
    size = cfg.optimization.region_size
    if kind == "central":
        return central_region(m, None if size is None else int(size))
    return saliency_region(torch.from_numpy(np.asarray(tsv)[idx]), None if size is None else int(size))


def _edit_job(method: str, f, tokens, codebook, region, target, kw: dict) -> dict:
    """One (extractor, method, region) run (:func:`cortex_nb.engine.pool.run_jobs`: in a worker process or in this
    one, single-threaded on the CPU). Returns the token tensors to cache and the history's last row."""
    res = METHODS[method](f, tokens, codebook, region, target, **kw)
    return {"final": res.tokens.cpu(), "checkpoints": torch.stack([t for _, t in res.checkpoints]).cpu(),
            "steps": torch.tensor([s for s, _ in res.checkpoints]),
            "history_tail": res.history.tail(1).to_dict("records")}


def run_edits(cfg: DictConfig, extractors: dict, vqgm, tsv_test: dict | None = None,
              regions=("central",), methods: dict | None = None) -> dict:
    """Run every (extractor, method, region) once over the whole edit batch; cached (a run is saved
    as soon as it finishes, so an interruption loses only the runs in flight).
    ``methods`` maps a region to the methods run there (default :func:`region_methods`).

    On the CPU every run is single-threaded, and ``optimization.jobs`` of them run at once as
    separate processes (:mod:`cortex_nb.engine.pool`: small extractors use two threads poorly), and a
    run's result does not depend on how many run beside it. On a GPU the runs go one after another in
    this process.

    Returns {(arch, method, region): {"final": tokens (B,m,m), "checkpoints": (S, B, m, m),
    "steps": (S,)}} as int tensors (uint16 on disk)."""
    setup(cfg)
    o = cfg.optimization
    batch = edit_batch(cfg, vqgm)
    codebook = vqgm.codebook.to(cfg.device)
    test = load_split(cfg, "test", vqgm)
    out, todo = {}, []
    for arch, f in extractors.items():
        for region in regions:
            reg = edit_region(cfg, region, int(vqgm.m), None if tsv_test is None else tsv_test[arch], batch["index"])
            for method in (methods or region_methods(cfg))[region]:
                tsv = None if region != "saliency" else np.asarray(tsv_test[arch])[batch["index"]]
                key = edit_key(cfg, f, test, method, region, tsv)
                d = cache_path(cfg, "editing", f"{arch}-{method}-{region}-{key}")
                if (d / "done.json").exists():
                    out[(arch, method, region)] = {k: torch.from_numpy(np.load(d / f"{k}.npy").astype(np.int64))
                                                   for k in ("final", "checkpoints", "steps")}
                    continue
                kw = dict(steps=int(o.steps), lr=float(o.lr), alpha=float(o.alpha), seed=replicate_seed(cfg),
                          record_every=int(o.record_every))
                if method.startswith("token"):
                    kw.update(tau=float(o.tau), init="original" if method == "token-original" else str(o.init))
                todo.append(((arch, method, region), d, (method, f, batch["tokens"].to(cfg.device), codebook,
                                                         reg.to(cfg.device), batch["target"].to(cfg.device), kw)))

    def save(name, d, r):
        for k in ("final", "checkpoints", "steps"):
            save_npy(d / f"{k}.npy", r[k].numpy().astype(np.uint16 if k != "steps" else np.int64))
        save_json(d / "done.json", {"history_tail": r["history_tail"]})
        out[name] = {k: r[k] for k in ("final", "checkpoints", "steps")}

    cpu = torch.device(cfg.device).type == "cpu"
    jobs = min(int(o.jobs), len(todo)) if cpu else 1
    for name, _, _ in todo:
        log.info("editing: %s %s %s region, %d images, %d steps%s", *name, len(batch["index"]), int(o.steps),
                 f" ({jobs} runs at once, 1 thread each)" if jobs > 1 else "")
    for (name, d), r in run_jobs(_edit_job, {(name, d): args for name, d, args in todo}, jobs,
                                 threads=1 if cpu else None):
        save(name, d, r)
    return _ordered(out, extractors, regions, methods or region_methods(cfg))


def _ordered(out: dict, extractors: dict, regions, methods: dict) -> dict:
    """``out`` in the order (extractor, region, method) of the profile, whatever order runs finished in."""
    return {(a, m, r): out[(a, m, r)] for a in extractors for r in regions for m in methods[r] if (a, m, r) in out}


def with_controls(cfg: DictConfig, edits: dict, vqgm) -> dict:
    """``edits`` plus Table 3's controls in the central region, as edit entries (final tokens only):
    ("-", "random-tokens"): the region's ids drawn uniformly from the codebook, no extractor, no
    optimisation (seeded by the replicate); (arch, "token-step0"): token selection's state before
    its first update (argmax of the initial logits, the first checkpoint)."""
    out = dict(edits)
    batch = edit_batch(cfg, vqgm)
    region = edit_region(cfg, "central", int(vqgm.m))
    out[("-", "random-tokens", "central")] = {"final": random_tokens(batch["tokens"], region, int(vqgm.K),
                                                                     seed=replicate_seed(cfg) + 4099)}
    for (arch, method, reg), r in edits.items():
        if method == "token" and reg == "central" and int(r["steps"][0]) == 0:
            out[(arch, "token-step0", "central")] = {"final": r["checkpoints"][0]}
    return out
