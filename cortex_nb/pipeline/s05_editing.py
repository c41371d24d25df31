"""Section 05 (notebook 05_optimization_editing): optimisation-based explanation, evaluated —
CORTEX §3.4, §4.4, appendix A.2, A.4 (Table 3, Fig. 4, Fig. 6).

Five pairs of classes, each class in turn source and target: every test image of the source class
is edited toward the target inside a region of the token grid, by token selection (Gumbel-softmax
over the codebook, the paper's method) and by the baseline (optimise the region's embeddings,
then quantise). The edited tokens are decoded and every evaluator scores P(original class) and
P(target class) before and after (eq. 10).

All images of all pairs are optimised in ONE batched run per (extractor, method, region): the
target is per image. Results are cached (token indices only) under cache/editing/, one directory
per run named by :func:`cortex_nb.pipeline.keys.edit_key`.

Two protocols are reported: the **final state** (ours, default) and, labelled as such, the
reference's **best-of-checkpoints** (per image and evaluator, the checkpoint with the highest
target probability, chosen with the evaluator itself), so readers see what that choice adds.

Writes tables/<p>/table3_optimization (+ _all) and figures/<p>/fig4_editing, fig6_pairs.
:func:`run` computes everything the notebook shows; ``python -m cortex_nb table3`` calls it.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..io.figures import image_grid, save_figure
from ..io.files import save_json, save_npy
from ..method.optimize import central_region, optimize_embeddings, random_tokens, saliency_region, select_tokens
from ..io.tables import cluster_and_unit_ci, fmt_ci, write_table
from .keys import cache_path, edit_key, replicate_seed
from .run import Run, SectionResult, class_names, compose, display_name, get_tsv, load_split, setup

__all__ = ["METHODS", "REGION_METHODS", "CONTROL_METHODS", "EDIT_COMPARISONS", "region_methods", "with_controls",
           "edit_paired", "controls_table", "pairs_of", "regions_of", "edit_batch", "edit_region", "run_edits",
           "best_of_checkpoints", "score_edits", "table3_frame", "table3", "fig4", "fig6", "run"]

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


def _edit_job(method: str, f, tokens, codebook, region, target, kw: dict, threads: int | None) -> dict:
    """One (extractor, method, region) run; in a worker process (or in-process) at ``threads`` torch
    threads (None: as set). Returns the token tensors to cache and the history's last row."""
    if threads is not None:
        torch.set_num_threads(threads)
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
    separate processes: small extractors use two threads poorly (token selection at width 32, AVX2:
    0.100 s/step on 2 threads, 0.133 on 1, two 1-thread processes side by side 0.142 each, so 1.4x
    the throughput), and a run's result does not depend on how many run beside it. On a GPU the
    runs go one after another in this process.

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
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_edit_job, *args, 1): (name, d) for name, d, args in todo}
            for fut in as_completed(futures):
                save(*futures[fut], fut.result())
    else:
        threads = torch.get_num_threads()
        try:
            for name, d, args in todo:
                save(name, d, _edit_job(*args, 1 if cpu else None))
        finally:
            torch.set_num_threads(threads)
    return _ordered(out, extractors, regions, methods or region_methods(cfg))


def _ordered(out: dict, extractors: dict, regions, methods: dict) -> dict:
    """``out`` in the order (extractor, region, method) of the profile, whatever order runs finished in."""
    return {(a, m, r): out[(a, m, r)] for a in extractors for r in regions for m in methods[r] if (a, m, r) in out}


def _probs(evaluators: dict, vqgm, tokens: torch.Tensor, source, target, original: torch.Tensor | None = None,
           before: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode tokens once and score: {evaluator: (P(source) (B,), P(target) (B,))}. With ``original``
    (tokens already scored: the unedited ones, or the previous checkpoint's) and ``before``
    ({evaluator: (P(source), P(target), ...)} of those), only the images whose tokens differ from
    ``original`` are decoded and shown to the evaluators; an unchanged image keeps its probabilities
    (against the unedited images: ΔP exactly 0, the image is the same)."""
    rows = torch.arange(len(tokens)) if original is None else \
        torch.nonzero((tokens != original).flatten(1).any(1)).squeeze(1)
    images = vqgm.decode(tokens[rows].to(vqgm.device)).cpu() if len(rows) else None
    out = {}
    for name, e in evaluators.items():
        ps = before[name][0].copy() if original is not None else np.zeros(len(tokens), np.float32)
        pt = before[name][1].copy() if original is not None else np.zeros(len(tokens), np.float32)
        if images is not None:
            p = e.predict_proba(images).cpu()
            ps[rows.numpy()] = p.gather(1, source[rows][:, None]).squeeze(1).numpy()
            pt[rows.numpy()] = p.gather(1, target[rows][:, None]).squeeze(1).numpy()
        out[name] = (ps, pt)
    return out


def score_checkpoints(evaluators: dict, vqgm, checkpoints, source, target, original: torch.Tensor,
                      before: dict) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """:func:`_probs` of each checkpoint (S, B, m, m) in order, each scored against the one before it (the first
    against ``original`` with ``before``): an image whose tokens did not change since keeps its probabilities (it
    is the same image), so only the images an optimisation step changed are decoded and shown again."""
    out, prev, prev_p = [], original, before
    for t in checkpoints:
        prev_p = _probs(evaluators, vqgm, t, source, target, prev, prev_p)
        prev = t
        out.append(prev_p)
    return out


def best_of_checkpoints(p_orig: np.ndarray, p_targ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's protocol: per image, the checkpoint with the highest P(target) (the first
    on ties), and that checkpoint's P(orig) and P(target). (S, B), (S, B) -> (B,), (B,)."""
    best = p_targ.argmax(0)                                              # (B,)
    cols = np.arange(p_targ.shape[1])
    return p_orig[best, cols], p_targ[best, cols]


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


def _edit_deltas(cfg: DictConfig, edits: dict, evaluators: dict, vqgm) -> tuple[dict, dict, dict]:
    """Per image: before = {evaluator: (P(src), P(tgt), correct)}; deltas = {(arch, method, region,
    protocol, evaluator): (ΔP_orig (B,), ΔP_targ (B,))}; batch (edit_batch)."""
    batch = edit_batch(cfg, vqgm)
    src, tgt = batch["source"], batch["target"]
    test_images = np.asarray(load_split(cfg, "test", vqgm).images)[batch["index"]]
    before = {}
    for name, e in evaluators.items():
        p = e.predict_proba(test_images).cpu()
        before[name] = (p.gather(1, src[:, None]).squeeze(1).numpy(), p.gather(1, tgt[:, None]).squeeze(1).numpy(),
                        (p.argmax(1) == src).float().numpy())
    deltas, original = {}, batch["tokens"]
    for (arch, method, region), r in edits.items():
        # best-of-checkpoints is the reference's protocol for the paper's (central) region only
        ck = (score_checkpoints(evaluators, vqgm, r["checkpoints"], src, tgt, original, before)
              if region == "central" and "checkpoints" in r else [])
        # the last checkpoint is the final state when steps is a multiple of record_every: score it once
        same = len(ck) > 0 and torch.equal(r["checkpoints"][-1], r["final"])
        final = ck[-1] if same else _probs(evaluators, vqgm, r["final"], src, tgt, original, before)
        for name in evaluators:
            p0o, p0t, _ = before[name]
            protocols = {"final": final[name]}
            if ck:  # best-of-checkpoints (the reference): per image, the checkpoint with the highest P(target)
                protocols["best-of-checkpoints"] = best_of_checkpoints(np.stack([c[name][0] for c in ck]),
                                                                       np.stack([c[name][1] for c in ck]))
            for protocol, (qo, qt) in protocols.items():
                deltas[(arch, method, region, protocol, name)] = (qo - p0o, qt - p0t)
    return before, deltas, batch


def score_edits(cfg: DictConfig, edits: dict, evaluators: dict, vqgm, *, paired: bool = False):
    """Per evaluator x (arch, method, region) x protocol: ΔP_orig, ΔP_targ (paired per image),
    plus Acc_orig, P_orig, P_targ before editing (from the stored test images). Intervals resample
    SOURCE CLASSES (a cluster bootstrap; the image-resampling interval in *_img_lo / *_img_hi).
    Protocols: "final" everywhere, "best-of-checkpoints" in the central region (the paper's).
    With ``paired``, also returns :func:`edit_paired`'s frame: (scores, paired)."""
    before, deltas, batch = _edit_deltas(cfg, edits, evaluators, vqgm)
    clusters, seed = batch["source"].numpy(), int(cfg.seed)
    rows = []
    for (arch, method, region, protocol, name), (do, dt) in deltas.items():
        p0o, p0t, acc0 = before[name]
        co, ct = cluster_and_unit_ci(do, clusters, seed=seed), cluster_and_unit_ci(dt, clusters, seed=seed)
        rows.append({"evaluator": display_name(name), "extractor": arch, "method": method,
                     "region": region, "protocol": protocol, "n": len(clusters),
                     "acc_orig": float(acc0.mean()), "p_orig": float(p0o.mean()), "p_targ": float(p0t.mean()),
                     "dP_orig": co["mean"], "dP_orig_lo": co["lo"], "dP_orig_hi": co["hi"],
                     "dP_targ": ct["mean"], "dP_targ_lo": ct["lo"], "dP_targ_hi": ct["hi"],
                     "dP_orig_img_lo": co["img_lo"], "dP_orig_img_hi": co["img_hi"],
                     "dP_targ_img_lo": ct["img_lo"], "dP_targ_img_hi": ct["img_hi"]})
    df = pd.DataFrame(rows)
    return (df, edit_paired(cfg, deltas, clusters, list(evaluators))) if paired else df


#: Table 3's paired comparisons (a minus b, final state, central region): the paper's (token vs
#: embedding) and the controls' (how much each method adds to a random replacement of the region)
EDIT_COMPARISONS = (("token", "embedding"), ("token", "random-tokens"), ("embedding", "random-tokens"),
                    ("token", "token-step0"), ("token-original", "embedding"), ("token-original", "random-tokens"))


def edit_paired(cfg: DictConfig, deltas: dict, clusters: np.ndarray, evaluators: list[str]) -> pd.DataFrame:
    """Paired intervals of :data:`EDIT_COMPARISONS` per extractor and evaluator (final state, central
    region): mean of ΔP(a) - ΔP(b) on the same images for ΔP_orig and ΔP_targ, resampling source
    classes (lo, hi) and images (img_lo, img_hi)."""
    seed = int(cfg.seed)
    archs = sorted({k[0] for k in deltas if k[0] != "-"})
    rows = []

    def get(arch, method, name):
        return deltas.get(("-" if method == "random-tokens" else arch, method, "central", "final", name))

    for arch in archs:
        for name in evaluators:
            for a, b in EDIT_COMPARISONS:
                da, db = get(arch, a, name), get(arch, b, name)
                if da is None or db is None:
                    continue
                for i, metric in enumerate(("dP_orig", "dP_targ")):
                    rows.append({"evaluator": display_name(name), "extractor": arch, "a": a, "b": b, "metric": metric,
                                 **cluster_and_unit_ci(da[i] - db[i], clusters, seed=seed)})
    return pd.DataFrame(rows)


def controls_table(cfg: DictConfig, df: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Table 3's controls: per evaluator, ΔP_Orig / ΔP_Targ of the random-token control, the step-0
    state and token selection from the original tokens, and each method's gain over the random-token
    control (paired, class-cluster intervals)."""
    d = df[(df.protocol == "final") & (df.region == "central")]
    rows = []
    for ev, g in d.groupby("evaluator", sort=False):
        row = {"Model": ev}
        for arch, method, label in (("-", "random-tokens", "random tokens (no optimisation)"),
                                    ("CE", "token-step0", "token selection, step 0 (CE)"),
                                    ("CE", "token", "token selection (CE)"),
                                    ("CE", "token-original", "token selection from the original (CE)"),
                                    ("CE", "embedding", "embedding optimisation (CE)")):
            r = g[(g.extractor == arch) & (g.method == method)]
            if not r.empty:
                r = r.iloc[0]
                row[label] = f"{r.dP_orig:+.3f} / {r.dP_targ:+.3f}"
        for a in ("token", "embedding", "token-original"):
            for arch in ("CE", "RE"):
                p = paired[(paired.evaluator == ev) & (paired.extractor == arch) & (paired.a == a)
                           & (paired.b == "random-tokens")]
                if len(p) == 2:
                    po, pt = (p[p.metric == k].iloc[0] for k in ("dP_orig", "dP_targ"))
                    row[f"{a} − random tokens ({arch})"] = (f"{fmt_ci(po['mean'], po.lo, po.hi)} / "
                                                            f"{fmt_ci(pt['mean'], pt.lo, pt.hi)}")
        rows.append(row)
    disp = pd.DataFrame(rows)
    write_table(paired, cfg.paths.tables, "table3_paired",
                caption="Table 3, paired: ΔP(a) − ΔP(b) on the same images (final state, central region), "
                        "95% intervals resampling source classes")
    write_table(disp, cfg.paths.tables, "table3_controls",
                caption="Table 3 with controls: ΔP_Orig / ΔP_Targ (final state, central region); last columns: "
                        "gain over replacing the region by random tokens (paired, 95% intervals resampling "
                        "source classes)")
    return disp


def table3_frame(df: pd.DataFrame, protocol: str = "final", region: str = "central") -> pd.DataFrame:
    """Table 3 in the paper's layout: a row per evaluator; Acc_Orig, P_Orig, P_Targ; then
    'ΔP_Orig / ΔP_Targ' for {embedding optimisation, token selection} x {CE, RE}."""
    d = df[(df.protocol == protocol) & (df.region == region)]
    rows = []
    for ev, g in d.groupby("evaluator", sort=False):
        first = g.iloc[0]
        row = {"Model": ev, "Acc_Orig": f"{100 * first.acc_orig:.1f}%", "P_Orig": f"{first.p_orig:.3f}",
               "P_Targ": f"{first.p_targ:.3f}"}
        for method, label in (("embedding", "Embedding Optimization"), ("token", "Token Selection")):
            for arch in ("CE", "RE"):
                r = g[(g.method == method) & (g.extractor == arch)]
                if r.empty:
                    continue
                r = r.iloc[0]
                row[f"{label} {arch}"] = (f"{r.dP_orig:+.3f} [{r.dP_orig_lo:+.3f}, {r.dP_orig_hi:+.3f}] / "
                                          f"{r.dP_targ:+.3f} [{r.dP_targ_lo:+.3f}, {r.dP_targ_hi:+.3f}]")
        rows.append(row)
    return pd.DataFrame(rows)


def table3(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (final state, central region) in the paper's layout, written beside every result
    (both protocols and regions: table3_optimization_all)."""
    write_table(df, cfg.paths.tables, "table3_optimization_all",
                caption="All optimisation results (both protocols and regions), one row per evaluator x setting")
    disp = table3_frame(df, "final", "central")
    write_table(disp, cfg.paths.tables, "table3_optimization",
                caption=(f"Table 3: ΔP_Orig / ΔP_Targ after editing the central region of {int(df.n.iloc[0])} test "
                         f"images toward their paired class ({cfg.optimization.steps} steps, final state; "
                         "95% intervals resampling source classes)"))
    return disp


def _box(mask: torch.Tensor, p: int) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, w, h) around the True cells of an (m, m) mask of p-pixel patches."""
    cells = torch.nonzero(mask)
    r0, c0 = int(cells[:, 0].min()), int(cells[:, 1].min())
    return c0 * p, r0 * p, (int(cells[:, 1].max()) - c0 + 1) * p, (int(cells[:, 0].max()) - r0 + 1) * p


def fig4(cfg: DictConfig, edits: dict, vqgm, batch: dict, arch: str = "CE", tsv_test: dict | None = None,
         n_steps: int = 4):
    """Fig. 4: editing sequences (token selection), the first image of each source class per row: the
    original, then argmax P at ``n_steps`` checkpoints in the paper's central block and, when the
    saliency-guided block was edited (``tsv_test`` given), in that block too (red: the edited block).
    The central block often misses the toy birds' heads; the saliency-guided block sits on each image's
    top TSV position, so the edit is where the concept is (Table 3 reports both)."""
    regions = [reg for reg in ("central", "saliency") if (arch, "token", reg) in edits
               and (reg == "central" or tsv_test is not None)]
    m, p = int(vqgm.m), int(vqgm.image_size) // int(vqgm.m)
    names = class_names(cfg)
    src, tgt = batch["source"].numpy(), batch["target"].numpy()
    central = _box(edit_region(cfg, "central", m), p)
    rows, labels, boxes, cols = [], [], [], ["original"]
    picks = {}
    for reg in regions:
        S = len(edits[(arch, "token", reg)]["steps"])
        picks[reg] = np.unique(np.linspace(0, S - 1, n_steps).round().astype(int))
        cols += [f"{'central' if reg == 'central' else 'saliency'} block\nstep {int(edits[(arch, 'token', reg)]['steps'][j])}"
                 for j in picks[reg]]
    for s in dict.fromkeys(src.tolist()):
        i = int(np.flatnonzero(src == s)[0])
        toks, bx = [batch["tokens"][i:i + 1]], [[]]
        for reg in regions:
            r = edits[(arch, "token", reg)]
            toks.append(r["checkpoints"][picks[reg], i])
            box = central if reg == "central" else _box(
                edit_region(cfg, "saliency", m, tsv_test[arch], batch["index"][i:i + 1])[0], p)
            bx += [[box]] * len(picks[reg])
        rows.append(vqgm.decode(torch.cat(toks).to(vqgm.device)).cpu())
        labels.append(f"{names[s]} →\n{names[tgt[i]]}")
        boxes += bx
    fig = image_grid(torch.cat(rows), len(cols), row_labels=labels, boxes=boxes, scale=1.0, col_labels=cols,
                     title=f"Token selection ({arch}) toward the paired class: argmax P at checkpoints, "
                           "red: the edited block")
    save_figure(fig, cfg.paths.figures, "fig4_editing")
    return fig


def fig6(cfg: DictConfig, vqgm):
    """Fig. 6: the pairing design — each pair's two classes, one generated test image each."""
    test = load_split(cfg, "test", vqgm)
    names = class_names(cfg)
    pairs = pairs_of(cfg)
    imgs = [np.asarray(test.images)[np.flatnonzero(test.labels == c)[0]] for row in (0, 1) for c in (p[row] for p in pairs)]
    fig = image_grid(np.stack(imgs), len(pairs), row_labels=["source / target", "target / source"], scale=1.2,
                     title="Pairs: each column is a pair; each class is edited toward the other",
                     col_labels=[f"{names[a]}\n↕\n{names[b]}" for a, b in pairs], col_fontsize=6)
    save_figure(fig, cfg.paths.figures, "fig6_pairs")
    return fig


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 05 shows: Fig. 6, both methods' edits, Table 3 in both protocols (and
    the saliency-guided region when on), Fig. 4. ``composed``: a
    :func:`~cortex_nb.pipeline.run.compose` result."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors, evaluators = composed.vqgm, composed.extractors, composed.evaluators
    out = SectionResult("table3")
    out.values["pairs"] = pairs_of(cfg)
    out.figures["fig6_pairs"] = fig6(cfg, vqgm)
    regions = regions_of(cfg)
    tsv_test = {arch: get_tsv(cfg, arch, f, vqgm, "test") for arch, f in extractors.items()}
    edits = run_edits(cfg, extractors, vqgm, tsv_test, regions=regions)
    scores, paired = score_edits(cfg, with_controls(cfg, edits, vqgm), evaluators, vqgm, paired=True)
    out.tables["table3_optimization"] = table3(cfg, scores)
    out.tables["table3_controls"] = controls_table(cfg, scores, paired)
    out.tables["table3_best_of_checkpoints"] = table3_frame(scores, "best-of-checkpoints", "central")
    if "saliency" in regions:
        out.tables["table3_saliency_region"] = table3_frame(scores, "final", "saliency")
    out.figures["fig4_editing"] = fig4(cfg, edits, vqgm, edit_batch(cfg, vqgm),
                                      tsv_test=tsv_test if "saliency" in regions else None)
    return out
