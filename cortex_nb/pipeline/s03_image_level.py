"""Section 03 (notebook 03_image_level_saliency): Fig. 3 — image-level saliency (§3.3, §4.3) —
and Fig. 2 / 5, the same concept token across images.

- :func:`image_level` — mask the n highest-TSV positions of each generated test image, watch every
  evaluator's true-class probability, against n random positions (:func:`random_baseline`).
- :func:`token_examples` — per class, the concept token found at the top-n TSV positions of the
  most test images, and where (Fig. 2 / 5; the concept sets come from section 04's
  :func:`~cortex_nb.pipeline.s04_concept_level.concept_sets`).

Every curve is under the profile's headline fill (``saliency.fill``) and, for comparison, under
every fill of ``saliency.fills`` (:func:`fills_frame`; :func:`fill_check` asks whether a fill is
itself a class feature). Each method is compared with random on the same images (d_random, a
paired interval; random seeds averaged per image).

Writes figures/<p>/fig3_image_level (+ the token_ids mode), fig3_fills, fig2_token_visualisation,
fig5_token_visualisation and their data tables, and tables/<p>/fill_check. :func:`run` computes everything the notebook
shows; ``python -m cortex_nb fig3`` calls it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..method import masking
from ..io.config import ProfileError
from ..io.figures import image_grid, save_figure
from ..io.files import save_npy
from ..method.saliency import top_n_positions
from ..io.tables import fmt_ci, mean_ci, paired_ci, write_table
from .keys import cache_path, random_baseline_key, replicate_seed
from .run import (Run, SectionResult, class_ids, class_names, compose, display_name, get_tsv, load_split, saliency_of,
                  setup, store_tokens)
from .s04_concept_level import METHOD_LABEL, concept_sets
from .scoring import fill_of, score_masked

__all__ = ["COLUMNS", "modal_share", "fill_levels", "random_baseline", "image_level", "fig3", "fills_frame", "fig3_fills",
           "fill_check", "masked_counts", "token_examples", "token_figure",
           "fig2", "fig5", "run"]


#: the columns of an image-level frame, in table order. d_random: the method's mean p minus the random
#: baseline's on the same images (each image's random seeds averaged first), a paired 95 % interval
COLUMNS = ["method", "evaluator", "n", "p", "p_lo", "p_hi", "acc", "n_masked", "d_random", "d_random_lo",
           "d_random_hi", "modal_share"]


def modal_share(pred: np.ndarray) -> float:
    """The share of images assigned to the single most-predicted class: 1 / C for predictions spread
    evenly over C balanced classes, 1.0 when one class takes every image (a fill that is itself a
    class feature: the black fill turns the toy ResNets' answer to the black-headed species)."""
    pred = np.asarray(pred)
    return float(np.bincount(pred).max() / len(pred)) if len(pred) else float("nan")


def _row(cfg: DictConfig, method: str, evaluator: str, n: int, p: np.ndarray, correct: np.ndarray,
         n_masked: np.ndarray, pred: np.ndarray | None, base_p: np.ndarray | None = None) -> dict:
    seed = int(cfg.seed)
    ci = mean_ci(p, seed=seed)
    d = paired_ci(p, base_p, seed=seed) if base_p is not None else {"mean": np.nan, "lo": np.nan, "hi": np.nan}
    return {"method": method, "evaluator": display_name(evaluator), "n": n, "p": ci["mean"], "p_lo": ci["lo"],
            "p_hi": ci["hi"], "acc": float(np.mean(correct)), "n_masked": float(np.mean(n_masked)),
            "d_random": d["mean"], "d_random_lo": d["lo"], "d_random_hi": d["hi"],
            "modal_share": modal_share(pred) if pred is not None else np.nan}


def fill_levels(cfg: DictConfig, m: int) -> list[int]:
    """The n of Fig. 3's grid (:func:`cortex_nb.method.masking.image_level_grid`) at which the fills other than
    the headline one are measured: ``saliency.fills_n`` intersected with the grid (null: the whole
    grid). Raises ProfileError when none of them is on the grid."""
    grid = masking.image_level_grid(m)
    keep = cfg.saliency.fills_n
    if keep is None:
        return grid
    out = [n for n in grid if n in {int(k) for k in keep}]
    if not out:
        raise ProfileError(f"saliency.fills_n {list(keep)} has no n on Fig. 3's grid {grid} (m = {m})",
                           fix=f"saliency.fills_n: {grid[::2]} (or null for the whole grid)")
    return out


def random_baseline(cfg: DictConfig, evaluators: dict, vqgm, fill: str | None = None, *,
                    levels: list[int] | None = None, seeds: int | None = None) -> dict:
    """Fig. 3's random baseline under ``fill`` (default: the headline fill): for n = 0 (unmasked)
    and every n of ``levels`` (default: the whole grid), ``seeds`` (default ``saliency.random_seeds``)
    random draws of n positions per test image. The unit is the image: its seeds are averaged before
    anything is resampled (pooling seeds x images as independent rows would narrow the interval by
    ~sqrt(seeds)). Draw s at n is the same mask whatever ``levels`` and ``seeds`` (seeded by n and s).
    It depends on neither the extractor nor the mask mode, so it is computed once per fill, levels
    and replicate and cached (.npy, under cache/fig3/).

    Returns {"n": [0, *levels], "p": {evaluator: (L, N) seed-mean P(true)}, "correct": {evaluator:
    (L, N) seed-mean top-1 correct}, "pred": {evaluator: (L, N) the first seed's argmax}}."""
    fill = fill_of(cfg, fill)
    test = load_split(cfg, "test", vqgm)
    names = list(evaluators)
    grid = masking.image_level_grid(int(vqgm.m))
    levels = grid if levels is None else [int(n) for n in levels]
    seeds = int(seeds if seeds is not None else cfg.saliency.random_seeds)
    key = random_baseline_key(cfg, evaluators, test, fill, vqgm, seeds=seeds, levels=None if levels == grid else levels)
    whole = cache_path(cfg, "fig3", f"random-{fill}-{random_baseline_key(cfg, evaluators, test, fill, vqgm, seeds=seeds)}.npy")
    levels = [0, *levels]
    path = cache_path(cfg, "fig3", f"random-{fill}-{key}.npy")
    if path.exists():
        arr = np.load(path)
    elif whole.exists():   # the whole grid's baseline holds the same draws at these n: take its rows
        arr = np.load(whole)[[[0, *grid].index(n) for n in levels]]
    else:
        images, labels, tokens = np.asarray(test.images), test.labels, store_tokens(test)
        arr = np.zeros((len(levels), len(names), 3, len(labels)))          # p, correct, pred per level / evaluator
        for i, n in enumerate(levels):
            for s in range(seeds if n else 1):
                gen = torch.Generator().manual_seed(replicate_seed(cfg) * 7919 + 31 * n + s)
                mask = masking.mask_random(len(labels), int(vqgm.m), n, generator=gen)   # (B, m, m)
                res = score_masked(cfg, evaluators, images, labels, mask, fill=fill, tokens=tokens, vqgm=vqgm)
                for j, name in enumerate(names):
                    arr[i, j, 0] += res[name]["p_true"] / (seeds if n else 1)
                    arr[i, j, 1] += res[name]["correct"] / (seeds if n else 1)
                    if s == 0:
                        arr[i, j, 2] = res[name]["pred"]
        save_npy(path, arr)
    return {"n": levels, "p": {name: arr[:, j, 0] for j, name in enumerate(names)},
            "correct": {name: arr[:, j, 1] for j, name in enumerate(names)},
            "pred": {name: arr[:, j, 2].astype(np.int64) for j, name in enumerate(names)}}


def image_level(cfg: DictConfig, tsvs: dict[str, np.ndarray], evaluators: dict, vqgm,
                mode: str | None = None, fill: str | None = None, *, levels: list[int] | None = None,
                seeds: int | None = None) -> pd.DataFrame:
    """Fig. 3: mean true-class probability vs n masked positions, per evaluator, for each
    extractor's T*_image and for n random positions (:func:`random_baseline`, shared by both
    mask modes), the patches removed by ``fill`` (default: the headline fill). Each method's row
    carries its paired difference to the random baseline on the same images (d_random) and the
    share of images given to the most-predicted class (modal_share). ``levels`` / ``seeds``: the n
    measured and the random seeds per n (default: the whole grid, ``saliency.random_seeds``).
    Returns a long frame (:data:`COLUMNS` + mode, fill)."""
    fill = fill_of(cfg, fill)
    test = load_split(cfg, "test", vqgm)
    images, labels = np.asarray(test.images), test.labels
    tokens = store_tokens(test)
    mode = mode or cfg.saliency.mask_mode
    base = random_baseline(cfg, evaluators, vqgm, fill, levels=levels, seeds=seeds)
    m2 = int(vqgm.m) ** 2
    rows = [_row(cfg, "unmasked", name, 0, base["p"][name][0], base["correct"][name][0], np.zeros(1),
                 base["pred"][name][0]) for name in evaluators]
    for i, n in enumerate(base["n"][1:], start=1):
        for arch, tsv in tsvs.items():
            mask = masking.mask_top_n(tokens, torch.from_numpy(np.array(tsv)), n, mode=mode)
            res = score_masked(cfg, evaluators, images, labels, mask, fill=fill, tokens=tokens, vqgm=vqgm)
            rows += [_row(cfg, arch, name, n, r["p_true"], r["correct"], r["n_masked"], r["pred"],
                          base["p"][name][i] if mode == "equal_area" else None) for name, r in res.items()]
        rows += [_row(cfg, "random", name, n, base["p"][name][i], base["correct"][name][i], np.full(1, n),
                      base["pred"][name][i]) for name in evaluators]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["masked_fraction"] = df.n_masked / m2
    df["mode"], df["fill"] = mode, fill
    return df


def fig3(cfg: DictConfig, df: pd.DataFrame, name: str = "fig3_image_level"):
    """Fig. 3: mean true-class probability vs n masked tokens, a panel per evaluator, CE, RE and
    random with 95 % bands; the CSV beside the figure in results/<profile>/tables/."""
    import matplotlib.pyplot as plt

    evs = list(dict.fromkeys(df.evaluator))
    fig, axes = plt.subplots(1, len(evs), figsize=(3.1 * len(evs), 2.8), squeeze=False, sharey=True)
    base = df[df.method == "unmasked"].set_index("evaluator")
    for ax, ev in zip(axes[0], evs):
        for method, style in (("CE", "-o"), ("RE", "-s"), ("random", "--^")):
            d = df[(df.evaluator == ev) & (df.method == method)].sort_values("n")
            if d.empty:
                continue
            line, = ax.plot(d.n, d.p, style, ms=3, label=METHOD_LABEL[method])
            ax.fill_between(d.n, d.p_lo, d.p_hi, color=line.get_color(), alpha=0.2)
        ax.axhline(base.loc[ev, "p"], color="grey", lw=0.8, ls=":", label="unmasked")
        ax.set(title=ev, xlabel="masked tokens n")
    fill = df["fill"].iloc[0] if "fill" in df else cfg.saliency.fill
    axes[0, 0].set_ylabel(f"mean true-class probability\n({fill} fill)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(df, cfg.paths.tables, name,
                caption=f"Fig. 3 data: true-class probability vs masked tokens ({fill} fill); d_random = method "
                        "minus random on the same images (random seeds averaged per image), paired 95% interval")
    return fig


def fills_frame(cfg: DictConfig, tsvs: dict[str, np.ndarray], evaluators: dict, vqgm,
                headline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fig. 3 (equal-area mode) under every fill of ``saliency.fills``: one long frame with a fill
    column. The headline fill's frame is reused when given (the whole grid); the other fills are
    measured at the n of :func:`fill_levels` with ``saliency.fills_random_seeds`` random seeds."""
    frames = []
    levels = fill_levels(cfg, int(vqgm.m))
    seeds = cfg.saliency.fills_random_seeds
    for fill in cfg.saliency.fills:
        if headline is not None and fill == headline["fill"].iloc[0] and headline["mode"].iloc[0] == "equal_area":
            frames.append(headline)
        else:
            frames.append(image_level(cfg, tsvs, evaluators, vqgm, mode="equal_area", fill=str(fill), levels=levels,
                                      seeds=None if seeds is None else int(seeds)))
    return pd.concat(frames, ignore_index=True)


def fig3_fills(cfg: DictConfig, df: pd.DataFrame, name: str = "fig3_fills"):
    """Fig. 3 under every fill: a panel per evaluator, CORTEX (CE, solid) and random (dashed) in one
    colour per fill -- whether the effect survives a fill that is not itself a class feature.
    Also writes the fill-check table (fill_check): per fill and evaluator, the share of images given
    to the most-predicted class, unmasked, after CE masking and after random masking at the
    largest n."""
    import matplotlib.pyplot as plt

    evs = list(dict.fromkeys(df.evaluator))
    fills = list(dict.fromkeys(df["fill"]))
    fig, axes = plt.subplots(1, len(evs), figsize=(3.1 * len(evs), 2.8), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ev in zip(axes[0], evs):
        for c, fill in zip(colours, fills):
            for method, ls in (("CE", "-"), ("random", "--")):
                d = df[(df.evaluator == ev) & (df.method == method) & (df["fill"] == fill)].sort_values("n")
                ax.plot(d.n, d.p, ls, color=c, lw=1.2, label=f"{fill}: {METHOD_LABEL[method]}")
        ax.set(title=ev, xlabel="masked tokens n")
    axes[0, 0].set_ylabel("mean true-class probability")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(df, cfg.paths.tables, name, caption="Fig. 3 under every fill (equal-area mode)")
    fill_check(cfg, df)
    return fig


def fill_check(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Is a fill itself a class feature? Per fill and evaluator: the share of the test images given to
    the single most-predicted class (10 % for balanced predictions over 10 classes), unmasked and at
    the largest n after CORTEX (CE) and random masking, and CE's paired drop against random there."""
    n_max = int(df.n.max())
    methods = [m for m in dict.fromkeys(df.method) if m not in ("unmasked", "random")]
    arch = "CE" if "CE" in methods else methods[0]          # CE, or the profile's only extractor
    rows = []
    for (fill, ev), g in df.groupby(["fill", "evaluator"], sort=False):
        ce, rnd = g[(g.method == arch) & (g.n == n_max)].iloc[0], g[(g.method == "random") & (g.n == n_max)].iloc[0]
        un = g[g.method == "unmasked"].iloc[0]
        rows.append({"fill": fill, "evaluator": ev, "extractor": arch, "n": n_max, "modal_unmasked": un.modal_share,
                     "modal_CE": ce.modal_share, "modal_random": rnd.modal_share, "p_CE": ce.p, "p_random": rnd.p,
                     "d_random": ce.d_random, "d_random_lo": ce.d_random_lo, "d_random_hi": ce.d_random_hi})
    out = pd.DataFrame(rows)
    disp = out.assign(**{c: [f"{100 * v:.0f}%" for v in out[c]] for c in ("modal_unmasked", "modal_CE", "modal_random")},
                      d_random=[fmt_ci(a, lo, hi) for a, lo, hi in zip(out.d_random, out.d_random_lo, out.d_random_hi)])
    disp = disp.drop(columns=["d_random_lo", "d_random_hi"]).round(3)
    write_table(out, cfg.paths.tables, "fill_check", display=disp,
                caption=f"Is the fill a class feature? Share of test images given to the most-predicted class "
                        f"(balanced: {100 / cfg.world.n_classes:.0f}%), unmasked and after masking n = {n_max} "
                        "positions; d_random = CE minus random (paired 95% interval)")
    return disp


def masked_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Mean number of masked patches per n (rows) and extractor (columns) of an image-level frame:
    in the token_ids mode more than n patches go, every one holding a top-n id."""
    return df[df.method.isin(["CE", "RE"])].pivot_table(index="n", columns=["method"], values="n_masked").round(2)


def token_examples(cfg: DictConfig, tsv: np.ndarray, concept: torch.Tensor, vqgm, classes, per_row: int = 6,
                   n_top: int | None = None) -> list[dict]:
    """Fig. 2 / 5: for each class, the concept token (from ``concept``, best first) that sits in
    the top-n TSV positions of the most test images, and up to ``per_row`` such images with that
    token's position. Returns [{class, token, images: [idx], positions: [(row, col)]}]."""
    test = load_split(cfg, "test", vqgm)
    tokens, labels = store_tokens(test), torch.from_numpy(test.labels)
    m = int(vqgm.m)
    n = n_top or masking.scaled_n(int(cfg.saliency.n_concept), m)
    top = top_n_positions(torch.from_numpy(np.array(tsv)), n)        # (N, n)
    ids_at_top = tokens.flatten(1).gather(1, top)                       # (N, n)
    out = []
    for c in classes:
        idx = torch.nonzero(labels == c).squeeze(1)
        cand = concept[c][concept[c] >= 0]
        if len(idx) == 0 or len(cand) == 0:
            continue
        present = (ids_at_top[idx][:, :, None] == cand[None, None, :]).any(1)  # (n_c, k) image has token in top-n
        best = int(present.sum(0).argmax())
        tok = int(cand[best])
        chosen = idx[present[:, best]][:per_row]
        pos = []
        for i in chosen.tolist():
            j = int((ids_at_top[i] == tok).nonzero()[0])
            flat = int(top[i, j])
            pos.append((flat // m, flat % m))
        out.append({"class": int(c), "token": tok, "images": chosen.tolist(), "positions": pos})
    # a class none of whose images has a concept token among its top n has nothing to show (tiny runs)
    return [ex for ex in out if ex["images"]] or out


def token_figure(cfg: DictConfig, examples: list[dict], vqgm, name: str = "fig2_token_visualisation", per_row: int = 6):
    """Fig. 2 / 5: a row per class, images with a red box on the same concept token."""
    test_images = np.asarray(load_split(cfg, "test", vqgm).images)     # (N, H, W, 3) uint8
    p = test_images.shape[1] // vqgm.m
    blank = np.full_like(test_images[0], 255)
    if not any(ex["images"] for ex in examples):    # a tiny run: say so rather than draw empty rows
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6, 0.6))
        fig.text(0.5, 0.5, "No image of these classes has one of its class's concept tokens among its top n "
                           "(a run too small to show one)", ha="center", va="center", fontsize=9)
        save_figure(fig, cfg.paths.figures, name)
        return fig
    per_row = max(1, min(per_row, max(len(ex["images"]) for ex in examples)))  # no column empty in every row
    imgs, boxes, labels = [], [], []
    names = class_names(cfg)
    for ex in examples:
        shown = ex["images"][:per_row]
        row = [test_images[i] for i in shown] + [blank] * (per_row - len(shown))
        bx = [[(c * p, r * p, p, p)] for r, c in ex["positions"][:per_row]] + [[]] * (per_row - len(shown))
        imgs += row
        boxes += bx
        labels.append(f"{names[ex['class']]}\ntoken {ex['token']}")
    fig = image_grid(np.stack(imgs), per_row, row_labels=labels, boxes=boxes, scale=1.1,
                     title="Red box: the same high-TSV concept token in each image of the row")
    save_figure(fig, cfg.paths.figures, name)
    return fig


def fig2(cfg: DictConfig, tsv_test: np.ndarray, concept: torch.Tensor, vqgm):
    """Fig. 2: :func:`token_examples` and :func:`token_figure` for the first six classes of the run."""
    examples = token_examples(cfg, tsv_test, concept, vqgm, classes=class_ids(cfg)[:6].tolist())
    return token_figure(cfg, examples, vqgm)


def fig5(cfg: DictConfig, tsv_test: np.ndarray, concept: torch.Tensor, vqgm):
    """Fig. 5 (appendix A.3): the same for the next classes of the run, up to six more (all of them when there
    are no more than six; ImageNet's 1000 would not fit a figure)."""
    ids = class_ids(cfg).tolist()
    examples = token_examples(cfg, tsv_test, concept, vqgm, classes=ids[6:12] if len(ids) > 6 else ids)
    return token_figure(cfg, examples, vqgm, name="fig5_token_visualisation")


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 03 shows: the test TSVs, Fig. 3 in both mask modes (random baseline
    included) under the headline fill, with ``robustness`` Fig. 3 under every fill with the fill check and in the
    scripts' token-id masking mode, and Fig. 2 / 5
    from CE's concept tokens. ``composed``: a
    :func:`~cortex_nb.pipeline.run.compose` result."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors, evaluators = composed.vqgm, composed.extractors, composed.evaluators
    out = SectionResult("fig3")
    out.values["saliency"] = saliency_of(cfg, extractors["CE"])
    tsv_test = {arch: get_tsv(cfg, arch, f, vqgm, "test") for arch, f in extractors.items()}
    curves = image_level(cfg, tsv_test, evaluators, vqgm)
    out.figures["fig3_image_level"] = fig3(cfg, curves)
    if cfg.robustness:   # the robustness reports (`make robustness` on the toy profile)
        fills = fills_frame(cfg, tsv_test, evaluators, vqgm, headline=curves)
        out.figures["fig3_fills"] = fig3_fills(cfg, fills)
        out.tables["fill_check"] = fill_check(cfg, fills)
        curves_ids = image_level(cfg, tsv_test, evaluators, vqgm, mode="token_ids",
                                 levels=fill_levels(cfg, int(vqgm.m)))
        out.figures["fig3_image_level_token_ids_mode"] = fig3(cfg, curves_ids, name="fig3_image_level_token_ids_mode")
        out.tables["masked_counts_token_ids_mode"] = masked_counts(curves_ids)
    sets = concept_sets(cfg, {"CE": get_tsv(cfg, "CE", extractors["CE"], vqgm, "train")}, vqgm)
    out.figures["fig2_token_visualisation"] = fig2(cfg, tsv_test["CE"], sets["CE"], vqgm)
    out.figures["fig5_token_visualisation"] = fig5(cfg, tsv_test["CE"], sets["CE"], vqgm)
    return out
