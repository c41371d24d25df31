"""Section 07 (beyond the paper; issue #14): is CORTEX's token saliency faithful, by the field's tests?

On ``faithfulness.n_per_class`` generated test images per class, every attribution ranks each image's
m² positions -- the TSV of each extractor, and for the extractors of ``faithfulness.archs`` the rivals
of :mod:`cortex_nb.method.attributions` (gradient, gradient x input, Integrated Gradients, leave-one-token-out
occlusion with the token in-fill), plus the random and class-vs-rest controls -- and
:mod:`cortex_nb.method.faithfulness` draws the deletion and insertion curves (``faithfulness.steps`` steps,
the profile's headline fill; the TSV of ``faithfulness.archs`` and random also under every other fill of
``faithfulness.fills``)
under every evaluator. The unit is the image: one area per image, a bootstrap interval over images, and
each rival paired with its extractor's TSV on the same images.

- :func:`faith_batch`, :func:`fill_embeddings` -- the images, and the embedding of each image's in-fill token;
- :func:`attribution_maps` -- every map (B, m, m) and the seconds it took;
- :func:`curves` -- the curves (mean P(true) per k) and the per-image areas; a mask shared by several
  methods (nothing or everything removed) is scored once;
- :func:`auc_table`, :func:`faithfulness_fills_table`, :func:`cost_table`, :func:`fig_curves`, :func:`fig_auc`;
- :func:`rival_localisation` -- which attribution puts its top-n positions on the head (real toy images,
  known part masks), as the localisation table of section 04 scores the TSV;
- :func:`sanity_checks`, :func:`sanity_table`, :func:`fig_sanity` (module :mod:`.s07_sanity`, re-exported
  here) -- Adebayo et al.'s checks: cascading
  and independent randomisation of CE and RE (one step per block, :func:`cortex_nb.method.sanity.randomisable_blocks`)
  and extractors retrained on permuted labels (``faithfulness.permuted``), scored by the rank correlation
  of the TSV maps and the Jaccard overlap of T*_concept with the trained extractor's; the frequency
  baseline, which reads no model, is the negative control that must come out unchanged;
- :func:`run` -- all of it, as notebook 07 shows it.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..method import attributions as A
from ..method import masking
from ..method.faithfulness import auc, default_steps, perturbation_curve, rank_positions
from ..io.figures import save_figure
from ..method.saliency import class_vs_rest_scores
from ..io.tables import fmt_ci, mean_ci, paired_ci, write_table
from .keys import replicate_seed
from .run import (Run, SectionResult, class_ids, compose, display_name, embed_fn, load_split, saliency_of, setup,
                  store_tokens)
from .s04_concept_level import head_share_rows, localisation_batch
from .scoring import fill_of, score_masked
from .s07_sanity import fig_sanity, permuted_extractors, sanity_checks, sanity_table

__all__ = ["RIVALS", "faith_batch", "fill_embeddings", "attribution_maps", "curves", "auc_table", "auc_frame",
           "auc_display",
           "faithfulness_fills_table", "cost_table", "fig_curves", "fig_auc", "rival_localisation",
           "rival_localisation_table", "permuted_extractors", "sanity_checks", "sanity_table", "fig_sanity",
           "other_fills", "run"]

#: the rival attributions computed for each extractor of ``faithfulness.archs`` (beside its TSV)
RIVALS = ("gradient", "gradient x input", "integrated gradients", "occlusion")


def faith_batch(cfg: DictConfig, vqgm) -> dict:
    """The first ``faithfulness.n_per_class`` generated test images of each class: index into the test
    split, tokens (B, m, m) int64, labels (B,), images (B, H, W, 3) uint8."""
    test = load_split(cfg, "test", vqgm)
    n = int(cfg.faithfulness.n_per_class)
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:n] for c in class_ids(cfg)])
    return {"index": idx, "tokens": store_tokens(test)[idx], "labels": torch.from_numpy(test.labels[idx]).long(),
            "images": np.asarray(test.images)[idx]}


def fill_embeddings(vqgm, tokens: torch.Tensor) -> torch.Tensor:
    """(B, d, m, m): at every position, the codebook vector of the image's most common id -- what the
    token fill puts in place of a removed token, seen from the extractor's side."""
    bg = masking.background_tokens(tokens, torch.zeros_like(tokens, dtype=torch.bool))   # (B,)
    return embed_fn(vqgm.codebook)(bg[:, None, None].expand_as(tokens).contiguous())


def attribution_maps(cfg: DictConfig, extractors: dict, vqgm, batch: dict) -> tuple[dict, dict]:
    """{(extractor, method): scores (B, m, m) float64} and {(extractor, method): seconds}. The TSV of
    every extractor; the rivals for ``faithfulness.archs``; ("-", "random") and ("-", "class-vs-rest")
    (the statistic fitted on the training split)."""
    fc = cfg.faithfulness
    dev = cfg.device
    tokens, labels = batch["tokens"], batch["labels"]
    E = embed_fn(vqgm.codebook.to(dev))(tokens.to(dev))
    t = labels.to(dev)
    maps, seconds = {}, {}

    def timed(key, fn):
        t0 = time.perf_counter()
        maps[key] = fn().detach().cpu().double()
        seconds[key] = time.perf_counter() - t0

    for arch, f in extractors.items():
        gen = torch.Generator(device=dev).manual_seed(replicate_seed(cfg) + 29)
        timed((arch, "TSV"), lambda: saliency_of(cfg, f).attribute(E, t, generator=gen))
        if arch not in list(fc.archs):
            continue
        timed((arch, "gradient"), lambda: A.gradient(f, E, t))
        timed((arch, "gradient x input"), lambda: A.gradient_x_input(f, E, t))
        timed((arch, "integrated gradients"),
              lambda: A.integrated_gradients(f, E, t, n_steps=int(fc.ig_steps), codebook=vqgm.codebook.to(dev)))
        fill = fill_embeddings(vqgm, tokens).to(dev)
        timed((arch, "occlusion"), lambda: A.occlusion(f, E, t, fill))
    gen = torch.Generator().manual_seed(replicate_seed(cfg) + 31)
    timed(("-", "random"), lambda: A.random_scores(len(labels), int(vqgm.m), gen))
    train = load_split(cfg, "train", vqgm)
    cvr = class_vs_rest_scores(store_tokens(train), torch.from_numpy(train.labels), int(cfg.world.n_classes),
                               int(vqgm.K))
    timed(("-", "class-vs-rest"), lambda: A.class_vs_rest_positions(tokens, labels, cvr))
    return maps, seconds


def curves(cfg: DictConfig, maps: dict, evaluators: dict, vqgm, batch: dict,
           fill: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Deletion and insertion curves of every map under every evaluator (``fill``: default the headline
    fill). Returns the long frame (extractor, method, direction, evaluator, k, fraction, p) of mean
    P(true) and {(extractor, method, direction, evaluator): per-image area (B,)}."""
    fill = fill_of(cfg, fill)
    m = int(vqgm.m)
    ks = default_steps(m, int(cfg.faithfulness.steps))
    images, labels, tokens = batch["images"], batch["labels"].numpy(), batch["tokens"]
    memo: dict[bytes, dict] = {}

    def scored(mask: torch.Tensor) -> dict:
        key = np.packbits(mask.numpy()).tobytes()
        if key not in memo:                     # nothing / everything removed: the same mask for every method
            memo[key] = score_masked(cfg, evaluators, images, labels, mask, fill=fill, tokens=tokens, vqgm=vqgm)
        return memo[key]

    names = list(evaluators)
    rows, areas = [], {}
    for (arch, method), s in maps.items():
        order = rank_positions(s)
        for direction in ("deletion", "insertion"):
            # one masked batch per step for every evaluator: curve (len(ks), evaluators, B)
            _, curve = perturbation_curve(lambda mask: np.stack([scored(mask)[ev]["p_true"] for ev in names]),
                                          order, m, ks, insertion=direction == "insertion")
            for j, a in enumerate(auc(ks, curve, m)):
                areas[(arch, method, direction, names[j])] = a
            rows += [{"extractor": arch, "method": method, "direction": direction, "evaluator": display_name(ev),
                      "k": k, "fraction": k / m ** 2, "p": float(curve[i, j].mean()), "fill": fill}
                     for j, ev in enumerate(names) for i, k in enumerate(ks)]
    return pd.DataFrame(rows), areas


def _auc_rows(cfg: DictConfig, areas: dict, fill: str) -> list[dict]:
    seed = int(cfg.seed)
    archs = [a for a, _, _, _ in areas if a != "-"]
    rows = []
    for (arch, method, direction, ev), a in areas.items():
        ci = mean_ci(a, seed=seed)
        ref = ("CE" if "CE" in archs else archs[0]) if arch == "-" else arch
        tsv = areas.get((ref, "TSV", direction, ev))
        d = paired_ci(a, tsv, seed=seed) if method != "TSV" and tsv is not None else \
            {"mean": np.nan, "lo": np.nan, "hi": np.nan}
        rows.append({"fill": fill, "extractor": arch, "method": method, "direction": direction,
                     "evaluator": display_name(ev), "n": len(a), "auc": ci["mean"], "auc_lo": ci["lo"],
                     "auc_hi": ci["hi"], "vs_tsv_of": ref, "d_tsv": d["mean"], "d_tsv_lo": d["lo"], "d_tsv_hi": d["hi"]})
    return rows


def auc_frame(cfg: DictConfig, areas: dict, fill: str | None = None) -> pd.DataFrame:
    """The rows of :func:`auc_table` (per method, direction and evaluator: area, interval, paired d_tsv), unwritten."""
    return pd.DataFrame(_auc_rows(cfg, areas, fill_of(cfg, fill)))


def _auc_display(df: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    disp = df.assign(AUC=[fmt_ci(a, lo, hi) for a, lo, hi in zip(df.auc, df.auc_lo, df.auc_hi)])
    return disp.pivot_table(index=index, columns="evaluator", values="AUC", aggfunc="first",
                            sort=False).reset_index().rename_axis(columns=None)


def auc_table(cfg: DictConfig, areas: dict, name: str = "faithfulness_auc", fill: str | None = None) -> pd.DataFrame:
    """Per method, direction and evaluator: the mean area with its interval over images, and the paired
    difference to the TSV of the method's extractor (controls: to CE's TSV, or the first extractor's).
    A faithful ranking has a LOW deletion area and a HIGH insertion area."""
    df = auc_frame(cfg, areas, fill)
    write_table(df, cfg.paths.tables, name, display=_auc_display(df, ["direction", "extractor", "method"]),
                caption=f"Deletion (lower = more faithful) and insertion (higher = more faithful) areas over the "
                        f"removed fraction ({fill_of(cfg, fill)} fill), per image, 95% intervals over images; "
                        "d_tsv in the CSV: paired difference to the extractor's TSV on the same images")
    return df


def auc_display(df: pd.DataFrame) -> pd.DataFrame:
    """The AUC frame as the notebook shows it: a row per direction / extractor / method, a column per
    evaluator, 'mean [lo, hi]'."""
    return _auc_display(df, ["direction", "extractor", "method"])


def faithfulness_fills_table(cfg: DictConfig, areas_by_fill: dict, name: str = "faithfulness_fills") -> pd.DataFrame:
    """The TSVs' and random's areas under every fill measured ({fill: areas}), and TSV − random paired
    per image: does the ranking's advantage survive the choice of what replaces a patch?"""
    df = pd.DataFrame([r for fill, areas in areas_by_fill.items() for r in _auc_rows(cfg, areas, fill)])
    seed = int(cfg.seed)
    gap = []
    for fill, areas in areas_by_fill.items():
        for (arch, method, direction, ev), a in areas.items():
            if method == "TSV" and ("-", "random", direction, ev) in areas:
                d = paired_ci(a, areas[("-", "random", direction, ev)], seed=seed)
                gap.append({"fill": fill, "direction": direction, "extractor": arch, "evaluator": display_name(ev),
                            "TSV − random": fmt_ci(d["mean"], d["lo"], d["hi"])})
    gap = pd.DataFrame(gap)
    disp = gap.pivot_table(index=["fill", "direction", "extractor"], columns="evaluator", values="TSV − random",
                           aggfunc="first", sort=False).reset_index().rename_axis(columns=None) if len(gap) else gap
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="TSV − random area per fill, paired per image (deletion: negative = TSV removes what "
                        "matters first; insertion: positive = TSV restores it first); every area in the CSV")
    return disp


def cost_table(cfg: DictConfig, seconds: dict, n: int) -> pd.DataFrame:
    """Seconds per attribution method for the batch (and per 1000 images)."""
    df = pd.DataFrame([{"extractor": a, "method": m, "images": n, "seconds": s, "per_1000": 1000 * s / max(n, 1)}
                       for (a, m), s in seconds.items()])
    write_table(df, cfg.paths.tables, "faithfulness_cost", display=df.round(3),
                caption=f"Time to compute each attribution for {n} images (this machine; see profile.yaml)")
    return df


def fig_curves(cfg: DictConfig, frame: pd.DataFrame, arch: str = "CE", name: str = "faithfulness_curves"):
    """Mean P(true) against the removed (deletion) / revealed (insertion) fraction, a panel per
    evaluator and direction, a line per method (``arch``'s maps and the controls)."""
    import matplotlib.pyplot as plt

    evs = list(dict.fromkeys(frame.evaluator))
    fig, axes = plt.subplots(2, len(evs), figsize=(3.0 * len(evs), 5.4), squeeze=False, sharex=True, sharey=True)
    d = frame[frame.extractor.isin([arch, "-"])]
    for r, direction in enumerate(("deletion", "insertion")):
        for c, ev in enumerate(evs):
            ax = axes[r, c]
            for method, g in d[(d.direction == direction) & (d.evaluator == ev)].groupby("method", sort=False):
                ax.plot(g.fraction, g.p, "-" if method not in ("random", "class-vs-rest") else "--", lw=1.2,
                        label=method)
            ax.set(title=f"{ev}: {direction}", xlabel="fraction " + ("removed" if direction == "deletion"
                                                                      else "revealed"))
    axes[0, 0].set_ylabel("mean P(true)")
    axes[1, 0].set_ylabel("mean P(true)")
    axes[0, 0].set_ylim(-0.02, 1.02)         # a probability: one scale for every run (shared by every panel)
    axes[0, -1].legend(fontsize=6)
    fig.suptitle(f"Deletion and insertion curves, {arch}'s attributions ({fill_of(cfg)} fill)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(frame, cfg.paths.tables, name, caption="Deletion and insertion curves: mean P(true) per step")
    return fig


def fig_auc(cfg: DictConfig, df: pd.DataFrame, name: str = "faithfulness_auc"):
    """The areas as bars with their 95% intervals: a panel per direction, a group per method, a bar
    per evaluator (deletion: lower = more faithful; insertion: higher)."""
    import matplotlib.pyplot as plt

    d = df.assign(label=[m if a == "-" else f"{a} {m}" for a, m in zip(df.extractor, df.method)])
    labels = list(dict.fromkeys(d.label))
    evs = list(dict.fromkeys(d.evaluator))
    w = 0.8 / len(evs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, direction in zip(axes, ("deletion", "insertion")):
        g = d[d.direction == direction].set_index(["label", "evaluator"])
        for j, ev in enumerate(evs):
            r = g.xs(ev, level="evaluator").reindex(labels)
            x = np.arange(len(labels)) + (j - (len(evs) - 1) / 2) * w
            ax.bar(x, r.auc, w, yerr=[r.auc - r.auc_lo, r.auc_hi - r.auc], capsize=1.5, label=ev,
                   error_kw={"lw": 0.7})
        ax.set_xticks(np.arange(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{direction} AUC ({'lower' if direction == 'deletion' else 'higher'} = more faithful)")
    axes[0].set_ylabel("area under P(true)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    return fig


# --------------------------------------------------------------------------------------
# which attribution finds the head (real toy images, known part masks)
# --------------------------------------------------------------------------------------

def rival_localisation(cfg: DictConfig, extractors: dict, vqgm) -> pd.DataFrame:
    """On ``faithfulness.n_localisation`` real toy images encoded to tokens: the share of each
    attribution's top-n positions on the head (section 04's score), for every map of
    :func:`attribution_maps` (the random map replaced by its exact expectation, the head's share of
    the grid: the row 'random')."""
    lb = localisation_batch(cfg, vqgm, int(cfg.faithfulness.n_localisation))
    maps, _ = attribution_maps(cfg, extractors, vqgm, {"tokens": lb["tokens"], "labels": lb["labels"]})
    rows = head_share_rows(cfg, {key: s for key, s in maps.items() if key != ("-", "random")}, lb)
    return pd.DataFrame([{**r, "extractor": r["method"][0] if isinstance(r["method"], tuple) else "-",
                          "method": r["method"][1] if isinstance(r["method"], tuple) else r["method"]}
                         for r in rows])


def rival_localisation_table(cfg: DictConfig, df: pd.DataFrame, name: str = "faithfulness_localisation") -> pd.DataFrame:
    """The rival localisation frame as a table."""
    disp = pd.DataFrame({"extractor": df.extractor, "method": df.method, "n": df.n,
                         "share of top-n positions on the head": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in
                                                                  zip(df.head_share, df.lo, df.hi)]})
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="Ground-truth localisation of every attribution on real toy images (random: the head's "
                        "share of the grid)")
    return disp


# --------------------------------------------------------------------------------------
# sanity checks (Adebayo et al. 2018)
# --------------------------------------------------------------------------------------

def other_fills(cfg: DictConfig, maps: dict, areas: dict, evaluators: dict, vqgm, batch: dict) -> dict:
    """{fill: areas}: the headline fill's ``areas`` and, for every other fill of ``faithfulness.fills``
    (null: ``saliency.fills``), the areas of the TSV of the extractors of ``faithfulness.archs`` and of
    random under it."""
    fc = cfg.faithfulness
    by_fill = {fill_of(cfg): areas}
    sub = {key: s for key, s in maps.items() if key in [(a, "TSV") for a in fc.archs] + [("-", "random")]}
    for f in (fc.fills if fc.fills is not None else cfg.saliency.fills):
        if str(f) not in by_fill:
            by_fill[str(f)] = curves(cfg, sub, evaluators, vqgm, batch, fill=str(f))[1]
    return by_fill


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 07 shows: the maps and their cost, the curves and areas under the headline
    fill (table, curves, bars), with ``robustness`` the TSVs and random under the other fills, the rivals' localisation
    (toy), and the sanity checks (table, degradation plot)."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors, evaluators = composed.vqgm, composed.extractors, composed.evaluators
    out = SectionResult("faithfulness")
    batch = faith_batch(cfg, vqgm)
    maps, seconds = attribution_maps(cfg, extractors, vqgm, batch)
    frame, areas = curves(cfg, maps, evaluators, vqgm, batch)
    auc = auc_table(cfg, areas)
    out.tables["faithfulness_auc"] = auc_display(auc)
    out.tables["faithfulness_cost"] = cost_table(cfg, seconds, len(batch["labels"]))
    out.figures["faithfulness_curves"] = fig_curves(cfg, frame, arch=next(iter(extractors)))
    out.figures["faithfulness_auc"] = fig_auc(cfg, auc)
    by_fill = None
    if cfg.robustness:   # the robustness reports (`make robustness` on the toy profile)
        by_fill = other_fills(cfg, maps, areas, evaluators, vqgm, batch)
        out.tables["faithfulness_fills"] = faithfulness_fills_table(cfg, by_fill)
    if cfg.vqgm.source == "toy":
        out.tables["faithfulness_localisation"] = rival_localisation_table(cfg, rival_localisation(cfg, extractors, vqgm))
    sanity = sanity_checks(cfg, extractors, vqgm, batch, permuted_extractors(cfg, vqgm))
    out.tables["faithfulness_sanity"] = sanity_table(cfg, sanity)
    out.figures["faithfulness_sanity"] = fig_sanity(cfg, sanity)
    out.values.update(maps=maps, areas=areas, curves=frame, sanity=sanity, areas_by_fill=by_fill)
    return out
