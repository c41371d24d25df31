"""Section 02 (notebook 02_train_extractors): Table 1 — the information extractors CE and RE
(§3.2, §4.2, A.1), trained on the synthetic train split, scored top-k on the test split.

Writes tables/<p>/table1_extractor_accuracy and figures/<p>/extractor_training_curves.
:func:`run` computes everything the notebook shows; ``python -m cortex_nb train-extractors``
calls it after every rank took part in the (data-parallel) training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..io.figures import save_figure
from ..io.tables import mean_ci, write_table
from .run import Run, SectionResult, compose, embed_fn, load_split, setup

__all__ = ["extractor_accuracy", "table1", "training_curves_figure", "run"]

EXTRACTOR_NAMES = {"CE": "CNN-based Extractor (CE)", "RE": "ResNet-based Extractor (RE)"}


def extractor_accuracy(cfg: DictConfig, results: dict, vqgm, ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """Table 1: top-k accuracy of each extractor on the test split, 95 % bootstrap intervals.
    Point estimates come from :func:`cortex_nb.engine.inference.topk_accuracy`; intervals resample the
    per-image hits (rank of the true class < k)."""
    from ..engine.inference import predict_logits, topk_accuracy

    test = load_split(cfg, "test", vqgm)
    labels = torch.from_numpy(test.labels)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    rows = []
    for arch, res in results.items():
        logits = predict_logits(res.model, torch.from_numpy(np.array(test.tokens)), transform=embed).cpu()
        acc = topk_accuracy(logits, labels, ks)
        rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes scored above the true one
        row = {"extractor": EXTRACTOR_NAMES.get(arch, arch)}
        for k in ks:
            ci = mean_ci((rank < k).float().numpy(), seed=int(cfg.seed))
            row.update({f"top{k}": acc[k], f"top{k}_lo": ci["lo"], f"top{k}_hi": ci["hi"]})
        rows.append(row)
    return pd.DataFrame(rows)


def table1(cfg: DictConfig, acc: pd.DataFrame, ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """Table 1 in the paper's layout (accuracy in %), with 95 % bootstrap intervals, written as
    results/<profile>/tables/table1_extractor_accuracy.{csv,md,tex}."""
    disp = pd.DataFrame({"Model": acc.extractor})
    for k in ks:
        disp[f"Top {k}"] = [f"{100 * v:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                            for v, lo, hi in zip(acc[f"top{k}"], acc[f"top{k}_lo"], acc[f"top{k}_hi"])]
    n = int(cfg.world.n_classes)
    cap = (f"Table 1: information extractor prediction accuracy (%) on the generated test split "
           f"({cfg.data.n_test} per class, {n} classes; 95% bootstrap intervals)"
           + (f". With {n} classes, top-{n} is 100% by construction." if n <= max(ks) else ""))
    write_table(acc, cfg.paths.tables, "table1_extractor_accuracy", display=disp, caption=cap)
    return disp


def training_curves_figure(cfg: DictConfig, results: dict):
    """Training / validation loss and top-1 accuracy per epoch for each extractor."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for arch, res in results.items():
        h = res.history
        for ax, col in zip(axes, ("loss", "acc")):
            line, = ax.plot(h.epoch, h[f"train_{col}"], label=f"{arch} train")
            ax.plot(h.epoch, h[f"val_{col}"], "--", color=line.get_color(), label=f"{arch} val")
            ax.axvline(res.best_epoch, color=line.get_color(), alpha=0.25)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[1].set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy (vertical: best epoch)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, "extractor_training_curves")
    return fig


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 02 shows: the trained extractors, their training curves and Table 1.
    ``composed``: a :func:`~cortex_nb.pipeline.run.compose` result holding the fits."""
    setup(cfg)
    composed = composed or compose(cfg, evaluators=False)
    out = SectionResult("train-extractors")
    fits = composed.fits
    out.values["fits"] = {arch: f"best epoch {r.best_epoch}, val top-1 {r.best_val_acc:.3f}, {r.seconds:.0f} s"
                          for arch, r in fits.items()}
    out.figures["extractor_training_curves"] = training_curves_figure(cfg, fits)
    out.tables["table1_extractor_accuracy"] = table1(cfg, extractor_accuracy(cfg, fits, composed.vqgm))
    return out
