"""Section 04 (notebook 04_concept_level_saliency): Table 2 — concept-level saliency (§3.3 eq. 6,
§4.3) and, beyond the paper, ground-truth localisation on the toy world.

- :func:`concept_sets` — T*_concept of each extractor from the train split's TSVs, and the
  frequency / class-vs-rest baselines (also Fig. 2's tokens, section 03).
- :func:`concept_level` — mask every test patch whose id is in the class's set; ΔA, ΔP per evaluator.
- :func:`localisation` — on real toy images with known part masks: how many of the top-n TSV
  positions fall on the head (the part that tells a head-only pair apart), against the baselines.
- :func:`~cortex_nb.pipeline.scoring.score_masked` — every evaluator on masked images (also Fig. 3, section 03).

Writes tables/<p>/table2_concept_level and localisation. :func:`run` computes everything the
notebook shows; ``python -m cortex_nb table2`` calls it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..method import masking
from ..method.saliency import class_vs_rest_baseline, concept_tokens, frequency_baseline, top_n_positions
from ..io.tables import cluster_and_unit_ci, cluster_bootstrap_ci, fmt_ci, mean_ci, write_table
from .run import (Run, SectionResult, compose, display_name, embed_fn, get_tsv, load_split, real_toy_images,
                  saliency_of, setup, store_tokens)
from .scoring import fill_of, masked_images, score_masked

__all__ = ["METHOD_LABEL", "COMPARISONS", "fill_of", "masked_images", "score_masked", "concept_sets", "concept_scores",
           "concept_level", "robust_evaluator", "concept_paired", "area_curve", "area_matched", "fig_area", "table2",
           "paired_table", "fills_table", "concept_frames", "head_positions",
           "concept_rank_scores", "head_share_of_top_n", "localisation_batch", "head_share_rows", "localisation", "localisation_table", "run"]

#: how tables and figures name each token source
METHOD_LABEL = {"CE": "CORTEX (CE)", "RE": "CORTEX (RE)", "random": "random", "frequency": "frequency baseline",
                "class-vs-rest": "class-vs-rest baseline"}


def concept_sets(cfg: DictConfig, tsvs_train: dict[str, np.ndarray], vqgm, k: int | None = None) -> dict[str, torch.Tensor]:
    """T*_concept of each extractor (eq. 6: per class, the k most frequent ids among the top-n
    TSV positions of its training images) and the baselines, each (n_classes, k) with -1 padding.
    n and k are the paper's 20 and 100 scaled by m²/256 (same masked fraction of the grid) unless
    ``k`` is given. k counts codebook ids, not positions: the masked area follows from how often
    each id occurs (an id of the background can cover half the grid), hence :func:`area_curve`.
    Ranked best first with a stable sort, so the sets for a smaller k are the first k columns."""
    train = load_split(cfg, "train", vqgm)
    C, K, m = int(cfg.world.n_classes), int(vqgm.K), int(vqgm.m)
    n = masking.scaled_n(int(cfg.saliency.n_concept), m)
    k = int(k) if k is not None else masking.scaled_n(int(cfg.saliency.k_concept), m)
    tokens, labels = store_tokens(train), torch.from_numpy(train.labels)
    sets = {arch: concept_tokens(tokens, labels, top_n_positions(torch.from_numpy(np.array(t)), n), C, K, k)
            for arch, t in tsvs_train.items()}
    sets["frequency"] = frequency_baseline(tokens, labels, C, K, k)
    sets["class-vs-rest"] = class_vs_rest_baseline(tokens, labels, C, K, k)
    return sets


def concept_scores(cfg: DictConfig, sets: dict[str, torch.Tensor], evaluators: dict, vqgm,
                   fill: str | None = None, base: dict | None = None) -> dict:
    """Every evaluator on the generated test images, unmasked and with each token set's patches
    removed by ``fill``: {"base": {evaluator: result}, "masked": {method: {evaluator: result}},
    "labels": (N,)} (results as :func:`score_masked`). ``base``: the unmasked results of an earlier
    call (the same test images), reused; only images a set masks are shown to the evaluators again."""
    test = load_split(cfg, "test", vqgm)
    images, labels, tokens = np.asarray(test.images), test.labels, store_tokens(test)
    if base is None:
        none = torch.zeros(len(labels), vqgm.m, vqgm.m, dtype=torch.bool)
        base = score_masked(cfg, evaluators, images, labels, none, fill="black")
    out = {"base": base, "masked": {}, "labels": np.asarray(labels)}
    for method, concept in sets.items():
        mask = masking.mask_token_set(tokens, torch.from_numpy(labels), concept, K=int(vqgm.K))
        out["masked"][method] = score_masked(cfg, evaluators, images, labels, mask, fill=fill, tokens=tokens,
                                             vqgm=vqgm, base=base)
    return out


def _ci_cols(prefix: str, x: np.ndarray, clusters: np.ndarray, seed: int) -> dict:
    """{prefix, prefix_lo, prefix_hi} with the class-cluster interval, and prefix_img_lo / _hi
    resampling images (what the tables showed before; narrower, and wrong for concept sets)."""
    c = cluster_and_unit_ci(x, clusters, seed=seed)
    return {prefix: c["mean"], f"{prefix}_lo": c["lo"], f"{prefix}_hi": c["hi"], f"{prefix}_img_lo": c["img_lo"],
            f"{prefix}_img_hi": c["img_hi"]}


def concept_level(cfg: DictConfig, sets: dict[str, torch.Tensor], evaluators: dict, vqgm,
                  fill: str | None = None, scores: dict | None = None) -> pd.DataFrame:
    """Table 2: per evaluator, Acc and P unmasked, and for each token set ΔA, ΔP (paired
    per-image differences) and the mean number of masked patches. Intervals resample CLASSES
    (a cluster bootstrap: each class has its own concept set, so its images are not independent);
    the image-resampling intervals are kept in the *_img_lo / *_img_hi columns."""
    fill = fill_of(cfg, fill)
    sc = scores or concept_scores(cfg, sets, evaluators, vqgm, fill)
    labels, seed = sc["labels"], int(cfg.seed)
    rows = []
    for method, res in sc["masked"].items():
        for name, r in res.items():
            b = sc["base"][name]
            acc, p = mean_ci(b["correct"].astype(float), seed=seed), mean_ci(b["p_true"], seed=seed)
            nm = mean_ci(r["n_masked"].astype(float), seed=seed)
            rows.append({"evaluator": display_name(name), "method": method, "fill": fill,
                         "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                         "p": p["mean"], "p_lo": p["lo"], "p_hi": p["hi"],
                         **_ci_cols("dA", r["correct"].astype(float) - b["correct"].astype(float), labels, seed),
                         **_ci_cols("dP", r["p_true"] - b["p_true"], labels, seed),
                         "n_masked": nm["mean"], "n_masked_lo": nm["lo"], "n_masked_hi": nm["hi"],
                         "masked_fraction": nm["mean"] / vqgm.m ** 2})
    return pd.DataFrame(rows)


#: Table 2's between-method comparisons (a minus b, on the same images)
COMPARISONS = (("CE", "frequency"), ("CE", "class-vs-rest"), ("RE", "frequency"), ("RE", "class-vs-rest"),
               ("CE", "RE"))


def robust_evaluator(evaluators) -> str | None:
    """The paper's most robust classifier, ViT-B/16, or its toy stand-in ViT-p4, when present."""
    return next((n for n in ("vit_b_16", "vit_p4") if n in evaluators), None)


def concept_paired(cfg: DictConfig, scores: dict, fill: str | None = None,
                   matched: dict | None = None) -> pd.DataFrame:
    """Paired between-method intervals of Table 2 (a minus b on the same test images, ΔP and ΔA;
    class-cluster bootstrap, the image-resampling interval beside it): :data:`COMPARISONS`, each
    evaluator against the most robust one (:func:`robust_evaluator`, CE's sets), and, with
    ``matched`` ({(a, b): (b's k, b's scores)} from :func:`area_matched`), a against b at matched
    masked area. Columns: kind, evaluator, a, b, metric, mean, lo, hi, img_lo, img_hi, fill."""
    fill = fill_of(cfg, fill)
    labels, seed = scores["labels"], int(cfg.seed)
    rows = []

    def add(kind, ev, a, b, ra, rb, ba, bb):
        for metric, key in (("dP", "p_true"), ("dA", "correct")):
            da = ra[key].astype(float) - ba[key].astype(float)
            db = rb[key].astype(float) - bb[key].astype(float)
            rows.append({"kind": kind, "evaluator": display_name(ev), "a": a, "b": b, "metric": metric,
                         **cluster_and_unit_ci(da - db, labels, seed=seed), "fill": fill})

    base, masked = scores["base"], scores["masked"]
    for ev in base:
        for a, b in COMPARISONS:
            if a in masked and b in masked:
                add("method", ev, a, b, masked[a][ev], masked[b][ev], base[ev], base[ev])
        for (a, b), (k_b, sc_b) in (matched or {}).items():
            add("area-matched", ev, a, f"{b}@k={k_b}", masked[a][ev], sc_b["masked"][b][ev], base[ev], sc_b["base"][ev])
    robust = robust_evaluator(base)
    if robust is not None and "CE" in masked:
        for ev in base:
            if ev != robust:
                add("evaluator", robust, display_name(robust), display_name(ev), masked["CE"][robust],
                    masked["CE"][ev], base[robust], base[ev])
    return pd.DataFrame(rows)


def area_curve(cfg: DictConfig, tsvs_train: dict[str, np.ndarray], evaluators: dict, vqgm,
               fill: str | None = None, base: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """ΔP against masked area as the concept-set size k varies (``saliency.area_k``), for every
    method: k counts codebook ids, so equal k masks very different areas (the frequency baseline's
    common ids cover far more of the grid). Returns the long frame (method, k, evaluator,
    n_masked, masked_fraction, dP with class-cluster interval) and {k: scores} for
    :func:`area_matched`. ``base``: the unmasked results (:func:`concept_scores`), reused."""
    fill = fill_of(cfg, fill)
    ks = sorted(int(k) for k in cfg.saliency.area_k if int(k) <= int(vqgm.K))
    full = concept_sets(cfg, tsvs_train, vqgm, k=max(ks))
    rows, by_k = [], {}
    for k in ks:
        sets = {mth: s[:, :k] for mth, s in full.items()}
        sc = concept_scores(cfg, sets, evaluators, vqgm, fill, base=base)
        base = sc["base"]
        by_k[k] = sc
        for method, res in sc["masked"].items():
            for name, r in res.items():
                dp = cluster_bootstrap_ci(r["p_true"] - sc["base"][name]["p_true"], sc["labels"], seed=int(cfg.seed))
                rows.append({"method": method, "k": k, "evaluator": display_name(name),
                             "n_masked": float(r["n_masked"].mean()), "masked_fraction": float(r["n_masked"].mean()) / vqgm.m ** 2,
                             "dP": dp[0], "dP_lo": dp[1], "dP_hi": dp[2], "fill": fill})
    return pd.DataFrame(rows), by_k


def area_matched(curve: pd.DataFrame, by_k: dict, target_area: dict[str, float],
                 baselines=("frequency", "class-vs-rest")) -> dict:
    """For each extractor a (``target_area``: its mean masked patches at the profile's k) and each
    baseline b, the k of b's curve whose masked area is closest to a's: {(a, b): (k, scores at k)}."""
    out = {}
    for a, area in target_area.items():
        for b in baselines:
            d = curve[curve.method == b].groupby("k").n_masked.first()
            if d.empty:
                continue
            k_b = int((d - area).abs().idxmin())
            out[(a, b)] = (k_b, by_k[k_b])
    return out


def fig_area(cfg: DictConfig, curve: pd.DataFrame, name: str = "table2_area_curve"):
    """ΔP against the share of the grid masked, a panel per evaluator, one line per method (its
    points are the k of ``saliency.area_k``): the concept-level comparison at matched area."""
    import matplotlib.pyplot as plt

    from ..io.figures import save_figure

    evs = list(dict.fromkeys(curve.evaluator))
    fig, axes = plt.subplots(1, len(evs), figsize=(3.1 * len(evs), 2.8), squeeze=False, sharey=True)
    for ax, ev in zip(axes[0], evs):
        for method, g in curve[curve.evaluator == ev].groupby("method", sort=False):
            g = g.sort_values("k")
            line, = ax.plot(100 * g.masked_fraction, g.dP, "-o", ms=2.5, label=METHOD_LABEL.get(method, method))
            ax.fill_between(100 * g.masked_fraction, g.dP_lo, g.dP_hi, color=line.get_color(), alpha=0.15)
        ax.set(title=ev, xlabel="masked area (% of the grid)")
    axes[0, 0].set_ylabel(f"ΔP ({curve['fill'].iloc[0]} fill)")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(curve, cfg.paths.tables, name, caption="ΔP against masked area as k varies (class-cluster 95% intervals)")
    return fig


def table2(cfg: DictConfig, df: pd.DataFrame, name: str = "table2_concept_level") -> pd.DataFrame:
    """Table 2 in the paper's layout: per evaluator Acc, P, then n, ΔA, ΔP for each token set."""
    methods = list(dict.fromkeys(df.method))
    rows = []
    for ev, g in df.groupby("evaluator", sort=False):
        g = g.set_index("method")
        first = g.iloc[0]
        row = {"Evaluator": ev, "Acc": f"{100 * first.acc:.1f}%", "P": f"{first.p:.3f}"}
        for mth in methods:
            r = g.loc[mth]
            lab = METHOD_LABEL.get(mth, mth)
            row[f"{lab}: n"] = f"{r.n_masked:.2f}"
            row[f"{lab}: ΔA"] = f"{100 * r.dA:+.1f}% [{100 * r.dA_lo:+.1f}, {100 * r.dA_hi:+.1f}]"
            row[f"{lab}: ΔP"] = f"{r.dP:+.3f} [{r.dP_lo:+.3f}, {r.dP_hi:+.3f}]"
        rows.append(row)
    disp = pd.DataFrame(rows)
    m2 = None if df.empty else df.n_masked.iloc[0] / df.masked_fraction.iloc[0]
    fill = df["fill"].iloc[0] if "fill" in df and not df.empty else cfg.saliency.fill
    cap = ("Table 2: concept-level evaluation (Acc, P unmasked; n = mean masked patches of "
           f"{m2:.0f}; ΔA, ΔP with 95% intervals resampling classes; {fill} fill)" if m2 else "Table 2")
    write_table(df, cfg.paths.tables, name, display=disp, caption=cap)
    return disp


def paired_table(cfg: DictConfig, df: pd.DataFrame, name: str = "table2_paired") -> pd.DataFrame:
    """The paired comparisons (:func:`concept_paired`) as a table: a row per comparison, a column
    per evaluator, ΔP(a) - ΔP(b) with its class-cluster interval."""
    d = df[df.metric == "dP"]
    disp = d.assign(comparison=[f"{a} − {b}" + (" (area-matched)" if k == "area-matched" else "")
                                for a, b, k in zip(d.a, d.b, d.kind)],
                    value=[fmt_ci(m, lo, hi) for m, lo, hi in zip(d["mean"], d.lo, d.hi)])
    disp = disp[disp.kind != "evaluator"].pivot_table(index="comparison", columns="evaluator", values="value",
                                                      aggfunc="first", sort=False).reset_index()
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="Table 2, paired: ΔP(a) − ΔP(b) on the same test images (negative: a hurts more), "
                        "95% intervals resampling classes")
    return disp


def fills_table(cfg: DictConfig, frames: list[pd.DataFrame], name: str = "table2_fills") -> pd.DataFrame:
    """Table 2's ΔP under every fill: a row per (fill, evaluator), a column per method."""
    df = pd.concat(frames, ignore_index=True)
    disp = df.assign(value=[f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] (n {n:.1f})" for m, lo, hi, n in
                            zip(df.dP, df.dP_lo, df.dP_hi, df.n_masked)])
    disp = disp.pivot_table(index=["fill", "evaluator"], columns="method", values="value", aggfunc="first",
                            sort=False).reset_index()
    disp.columns = [METHOD_LABEL.get(c, c) for c in disp.columns]
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="Table 2 under every fill: ΔP (class-cluster 95% interval) and mean masked patches n")
    return disp


def head_positions(head_pixels: np.ndarray, m: int, fraction: float) -> torch.Tensor:
    """(B, H, W) bool head pixels -> (B, m²) bool: a grid position is 'head' when at least
    ``fraction`` of its (H/m x W/m) patch is head pixels."""
    p = head_pixels.shape[-1] // m
    head = torch.from_numpy(np.asarray(head_pixels, dtype=np.float32))
    share = head.view(-1, m, p, m, p).mean((2, 4))                      # (B, m, m) head share per patch
    return (share >= fraction).flatten(1)


def concept_rank_scores(concept: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, K: int) -> torch.Tensor:
    """A position score from a per-class ranked token set: minus the rank of the position's token id
    in its image's class set (best = 0; ids outside the set, and -1 padding, rank k + 1).
    concept (C, k) ids best first, labels (B,), tokens (B, m, m) -> (B, m, m) float."""
    k = concept.shape[1]
    rank = torch.full((concept.shape[0], K), float(k + 1))              # (C, K), lower = better
    rows = torch.arange(concept.shape[0])[:, None].expand_as(concept)
    valid = concept >= 0
    rank[rows[valid], concept[valid]] = torch.arange(k, dtype=torch.float32).expand_as(concept)[valid]
    return -rank[labels[:, None, None], tokens]                          # ties (same id) broken by position


def head_share_of_top_n(scores: torch.Tensor, is_head: torch.Tensor, n: int) -> torch.Tensor:
    """Per image, the share of its n top-scoring positions that are head: scores (B, m, m),
    is_head (B, m²) bool -> (B,) float."""
    top = top_n_positions(scores, n)                                     # (B, n) flat positions
    return is_head.gather(1, top).float().mean(1)


def localisation_batch(cfg: DictConfig, vqgm, n_images: int | None = None) -> dict:
    """The ground truth of the localisation scores: ``n_images`` (default ``saliency.n_localisation``)
    real toy images (the 'report' stream) encoded to tokens (B, m, m), their labels (B,), which
    positions are head, ``is_head`` (B, m²) bool (at least ``saliency.head_fraction`` of the patch is
    head pixels), and ``n``, the number of top positions scored (the paper's n scaled to the grid)."""
    from ..toy import world as toyworld

    real = real_toy_images(cfg, int(n_images or cfg.saliency.n_localisation), "report")
    m = int(vqgm.m)
    return {"tokens": vqgm.encode(toyworld.to_tensor(real.images).to(vqgm.device)).cpu(),
            "labels": torch.as_tensor(real.labels).long(),
            "is_head": head_positions(real.masks == toyworld.HEAD, m, float(cfg.saliency.head_fraction)),
            "n": masking.scaled_n(int(cfg.saliency.n_concept), m)}


def head_share_rows(cfg: DictConfig, scores: dict, batch: dict) -> list[dict]:
    """{method: scores (B, m, m)} -> one row per method (head share of the top-n positions, interval over
    images), and a last row 'random': the head's share of the grid, what random positions score."""
    out = []
    for method, s in scores.items():
        ci = mean_ci(head_share_of_top_n(s, batch["is_head"], batch["n"]).numpy(), seed=int(cfg.seed))
        out.append({"method": method, "n": batch["n"], "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    ci = mean_ci(batch["is_head"].float().mean(1).numpy(), seed=int(cfg.seed))
    out.append({"method": "random", "n": batch["n"], "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    return out


def localisation(cfg: DictConfig, extractors: dict, vqgm, sets: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Beyond the paper: on real toy images (known part masks) encoded to tokens, the share of the
    top-n positions that lie on the head — the species-distinctive part — for each extractor's TSV,
    for positions ranked by the frequency / class-vs-rest baselines (a position scores by its token
    id's rank in the class's set), and for random positions (= the head's share of the grid).
    A position is 'head' when at least ``saliency.head_fraction`` of its patch is head pixels."""
    batch = localisation_batch(cfg, vqgm)
    tokens, labels = batch["tokens"], batch["labels"]
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    scores: dict[str, torch.Tensor] = {}
    for arch, f in extractors.items():
        gen = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed) + 17)
        scores[arch] = saliency_of(cfg, f).attribute(embed(tokens.to(cfg.device)), labels.to(cfg.device),
                                                     generator=gen).cpu()
    for method in ("frequency", "class-vs-rest"):
        scores[method] = concept_rank_scores(sets[method], labels, tokens, int(vqgm.K))
    return pd.DataFrame(head_share_rows(cfg, scores, batch))


def localisation_table(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """The localisation frame as a table (results/<p>/tables/localisation.*)."""
    disp = pd.DataFrame({"Method": [METHOD_LABEL.get(m, m) for m in df.method], "n": df.n,
                         "Share of top-n positions on the head": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in
                                                                  zip(df.head_share, df.lo, df.hi)]})
    write_table(df, cfg.paths.tables, "localisation", display=disp,
                caption="Ground-truth localisation on real toy images (beyond the paper)")
    return disp


def concept_frames(cfg: DictConfig, tsv_train: dict[str, np.ndarray], evaluators: dict, vqgm,
                   fills: bool | None = None) -> dict:
    """Every frame of Table 2 under the headline fill: the concept sets, Table 2's long frame, the
    area curve, the paired comparisons (area-matched included) and, with ``fills`` (default: the
    profile's ``robustness``), Table 2 under every fill of ``saliency.fills`` (else ``[]``).
    Returns {"sets", "table2", "curve", "paired", "fills"}."""
    fills = bool(cfg.robustness) if fills is None else fills
    sets = concept_sets(cfg, tsv_train, vqgm)
    scores = concept_scores(cfg, sets, evaluators, vqgm)
    df = concept_level(cfg, sets, evaluators, vqgm, scores=scores)
    curve, by_k = area_curve(cfg, tsv_train, evaluators, vqgm, base=scores["base"])
    area = {a: float(df[df.method == a].n_masked.iloc[0]) for a in tsv_train}
    paired = concept_paired(cfg, scores, matched=area_matched(curve, by_k, area))
    frames = [df] + ([concept_level(cfg, sets, evaluators, vqgm, fill=str(f),
                                    scores=concept_scores(cfg, sets, evaluators, vqgm, str(f), base=scores["base"]))
                      for f in cfg.saliency.fills if str(f) != fill_of(cfg)] if fills else [])
    return {"sets": sets, "table2": df, "curve": curve, "paired": paired, "fills": frames}


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 04 shows: T*_concept and the baselines, Table 2 (class-cluster
    intervals) with its paired comparisons (area-matched included), the area curve, Table 2 under
    every fill (with ``robustness``) and (toy) the localisation table. ``composed``: a
    :func:`~cortex_nb.pipeline.run.compose` result."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors = composed.vqgm, composed.extractors
    out = SectionResult("table2")
    tsv_train = {arch: get_tsv(cfg, arch, f, vqgm, "train") for arch, f in extractors.items()}
    fr = concept_frames(cfg, tsv_train, composed.evaluators, vqgm)
    out.values["concept_sets"] = fr["sets"]
    out.tables["table2_concept_level"] = table2(cfg, fr["table2"])
    out.tables["table2_paired"] = paired_table(cfg, fr["paired"])
    out.figures["table2_area_curve"] = fig_area(cfg, fr["curve"])
    if fr["fills"]:
        out.tables["table2_fills"] = fills_table(cfg, fr["fills"])
    if cfg.vqgm.source == "toy":
        out.tables["localisation"] = localisation_table(cfg, localisation(cfg, extractors, vqgm, fr["sets"]))
    return out
