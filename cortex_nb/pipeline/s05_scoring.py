"""Section 05, the scores: every evaluator on the edited images (each checkpoint against the one before it), ΔP per
image with class-clustered intervals, the paired comparisons of Table 3 and its controls, and the tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..io.tables import cluster_and_unit_ci, fmt_ci, write_table
from .run import display_name, load_split
from .s05_edits import edit_batch

__all__ = ["EDIT_COMPARISONS", "score_checkpoints", "best_of_checkpoints", "score_edits", "edit_paired",
           "controls_table", "table3_frame", "table3"]

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
