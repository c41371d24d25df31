"""Section 03 (notebook 03_image_level_saliency): Fig. 3 — image-level saliency (§3.3, §4.3) —
and Fig. 2 / 5, the same concept token across images.

- :func:`image_level` — mask the n highest-TSV positions of each generated test image, watch every
  evaluator's true-class probability, against n random positions (:func:`random_baseline`).
- :func:`token_examples` — per class, the concept token found at the top-n TSV positions of the
  most test images, and where (Fig. 2 / 5; the concept sets come from section 04's
  :func:`~cortex_nb.pipeline.s04_concept_level.concept_sets`).

Writes figures/<p>/fig3_image_level (+ the token_ids mode), fig2_token_visualisation,
fig5_token_visualisation and their data tables. :func:`run` computes everything the notebook
shows; ``python -m cortex_nb fig3`` calls it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from .. import masking
from ..figures import image_grid, save_figure
from ..files import cached
from ..saliency import top_n_positions
from ..tables import mean_ci, write_table
from .keys import cache_path, random_baseline_key
from .run import (Run, SectionResult, class_names, compose, display_name, get_tsv, load_split, saliency_of, setup,
                  store_tokens)
from .s04_concept_level import METHOD_LABEL, concept_sets, score_masked

__all__ = ["random_baseline", "image_level", "fig3", "masked_counts", "token_examples", "token_figure",
           "fig2", "fig5", "run"]


#: the columns of an image-level frame, in table order (a cached JSON row comes back key-sorted)
COLUMNS = ["method", "evaluator", "n", "p", "p_lo", "p_hi", "acc", "n_masked"]


def _ci_rows(cfg: DictConfig, method: str, n: int, res: dict[str, dict]) -> list[dict]:
    rows = []
    for name, r in res.items():
        ci = mean_ci(r["p_true"], seed=int(cfg.seed))
        rows.append({"method": method, "evaluator": display_name(name), "n": n, "p": ci["mean"],
                     "p_lo": ci["lo"], "p_hi": ci["hi"], "acc": float(np.mean(r["correct"])),
                     "n_masked": float(np.mean(r["n_masked"]))})
    return rows


def random_baseline(cfg: DictConfig, evaluators: dict, vqgm) -> pd.DataFrame:
    """Fig. 3's random baseline: n random positions per test image (``saliency.random_seeds``
    seeds pooled) for every n of the grid, plus the unmasked row (n = 0). It depends on neither
    the extractor nor the mask mode, so it is computed once and cached (JSON) under cache/fig3/."""
    test = load_split(cfg, "test", vqgm)
    key = random_baseline_key(cfg, evaluators, test)

    def build() -> dict:
        images, labels = np.asarray(test.images), test.labels
        none = torch.zeros(len(labels), vqgm.m, vqgm.m, dtype=torch.bool)
        rows = _ci_rows(cfg, "unmasked", 0, score_masked(cfg, evaluators, images, labels, none))
        for n in masking.image_level_grid(int(vqgm.m)):
            pooled: dict[str, dict] = {}
            for s in range(int(cfg.saliency.random_seeds)):
                gen = torch.Generator().manual_seed(int(cfg.seed) * 7919 + 31 * n + s)
                mask = masking.mask_random(len(labels), int(vqgm.m), n, generator=gen)   # (B, m, m)
                for name, r in score_masked(cfg, evaluators, images, labels, mask).items():
                    acc = pooled.setdefault(name, {"p_true": [], "correct": [], "n_masked": []})
                    for k in acc:
                        acc[k].append(r[k])
            rows += _ci_rows(cfg, "random", n, {name: {k: np.concatenate(v) for k, v in r.items()}
                                                for name, r in pooled.items()})
        return {"rows": rows}

    return pd.DataFrame(cached(cache_path(cfg, "fig3", "random.json"), build, key=key)["rows"], columns=COLUMNS)


def image_level(cfg: DictConfig, tsvs: dict[str, np.ndarray], evaluators: dict, vqgm,
                mode: str | None = None) -> pd.DataFrame:
    """Fig. 3: mean true-class probability vs n masked positions, per evaluator, for each
    extractor's T*_image and for n random positions (:func:`random_baseline`, shared by both
    mask modes). Returns a long frame: method, evaluator, n, p, p_lo, p_hi, acc, n_masked (mean)."""
    test = load_split(cfg, "test", vqgm)
    images, labels = np.asarray(test.images), test.labels
    tokens = store_tokens(test)
    mode = mode or cfg.saliency.mask_mode
    base = random_baseline(cfg, evaluators, vqgm)
    rows = base[base.method == "unmasked"].to_dict("records")
    for n in masking.image_level_grid(int(vqgm.m)):
        for arch, tsv in tsvs.items():
            mask = masking.mask_top_n(tokens, torch.from_numpy(np.asarray(tsv)), n, mode=mode)
            rows += _ci_rows(cfg, arch, n, score_masked(cfg, evaluators, images, labels, mask))
        rows += base[(base.method == "random") & (base.n == n)].to_dict("records")
    df = pd.DataFrame(rows, columns=COLUMNS)  # the same columns whether the baseline was cached or not
    df["mode"] = mode
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
    axes[0, 0].set_ylabel("mean true-class probability")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(df, cfg.paths.tables, name, caption="Fig. 3 data: true-class probability vs masked tokens")
    return fig


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
    top = top_n_positions(torch.from_numpy(np.asarray(tsv)), n)        # (N, n)
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
    return out


def token_figure(cfg: DictConfig, examples: list[dict], vqgm, name: str = "fig2_token_visualisation", per_row: int = 6):
    """Fig. 2 / 5: a row per class, images with a red box on the same concept token."""
    test_images = np.asarray(load_split(cfg, "test", vqgm).images)     # (N, H, W, 3) uint8
    p = test_images.shape[1] // vqgm.m
    blank = np.full_like(test_images[0], 255)
    imgs, boxes, labels = [], [], []
    names = class_names(cfg)
    for ex in examples:
        row = [test_images[i] for i in ex["images"]] + [blank] * (per_row - len(ex["images"]))
        bx = [[(c * p, r * p, p, p)] for r, c in ex["positions"]] + [[]] * (per_row - len(ex["images"]))
        imgs += row
        boxes += bx
        labels.append(f"{names[ex['class']]}\ntoken {ex['token']}")
    fig = image_grid(np.stack(imgs), per_row, row_labels=labels, boxes=boxes, scale=1.1,
                     title="Red box: the same high-TSV concept token in each image of the row")
    save_figure(fig, cfg.paths.figures, name)
    return fig


def fig2(cfg: DictConfig, tsv_test: np.ndarray, concept: torch.Tensor, vqgm):
    """Fig. 2: :func:`token_examples` and :func:`token_figure` for the first six classes."""
    examples = token_examples(cfg, tsv_test, concept, vqgm, classes=range(min(6, cfg.world.n_classes)))
    return token_figure(cfg, examples, vqgm)


def fig5(cfg: DictConfig, tsv_test: np.ndarray, concept: torch.Tensor, vqgm):
    """Fig. 5 (appendix A.3): the same for the classes after the first six (all of them when
    there are no more than six)."""
    n = cfg.world.n_classes
    examples = token_examples(cfg, tsv_test, concept, vqgm, classes=range(min(6, n), n) if n > 6 else range(n))
    return token_figure(cfg, examples, vqgm, name="fig5_token_visualisation")


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 03 shows: the test TSVs, Fig. 3 in both mask modes (random baseline
    included), and Fig. 2 / 5 from CE's concept tokens. ``composed``: a
    :func:`~cortex_nb.pipeline.run.compose` result."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors, evaluators = composed.vqgm, composed.extractors, composed.evaluators
    out = SectionResult("fig3")
    out.values["saliency"] = saliency_of(cfg, extractors["CE"])
    tsv_test = {arch: get_tsv(cfg, arch, f, vqgm, "test") for arch, f in extractors.items()}
    curves = image_level(cfg, tsv_test, evaluators, vqgm)
    out.figures["fig3_image_level"] = fig3(cfg, curves)
    curves_ids = image_level(cfg, tsv_test, evaluators, vqgm, mode="token_ids")
    out.figures["fig3_image_level_token_ids_mode"] = fig3(cfg, curves_ids, name="fig3_image_level_token_ids_mode")
    out.tables["masked_counts_token_ids_mode"] = masked_counts(curves_ids)
    sets = concept_sets(cfg, {"CE": get_tsv(cfg, "CE", extractors["CE"], vqgm, "train")}, vqgm)
    out.figures["fig2_token_visualisation"] = fig2(cfg, tsv_test["CE"], sets["CE"], vqgm)
    out.figures["fig5_token_visualisation"] = fig5(cfg, tsv_test["CE"], sets["CE"], vqgm)
    return out
