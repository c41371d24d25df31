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

import numpy as np
import torch
from omegaconf import DictConfig

from ..io.figures import image_grid, save_figure
from .run import Run, SectionResult, class_names, compose, get_tsv, load_split, setup
from .s05_edits import (CONTROL_METHODS, METHODS, REGION_METHODS, edit_batch, edit_region, pairs_of,  # noqa: F401
                        region_methods, regions_of, run_edits, with_controls)
from .s05_scoring import (EDIT_COMPARISONS, _probs, best_of_checkpoints, controls_table, edit_paired,  # noqa: F401
                          score_checkpoints, score_edits, table3, table3_frame)

__all__ = ["METHODS", "REGION_METHODS", "CONTROL_METHODS", "EDIT_COMPARISONS", "region_methods", "with_controls",
           "edit_paired", "controls_table", "pairs_of", "regions_of", "edit_batch", "edit_region", "run_edits",
           "best_of_checkpoints", "score_edits", "table3_frame", "table3", "fig4", "fig6", "run"]


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
