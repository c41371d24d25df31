"""Section 01 (notebook 01_generate_dataset): the synthetic dataset of §4.1.1 — class-balanced
train / val / test splits sampled from the VQGM's prior and stored as token indices.

Writes tables/<p>/dataset_sizes, generated_test_accuracy and figures/<p>/generated_samples.
:func:`run` computes everything the notebook shows; ``python -m cortex_nb generate`` calls it
after every rank made its share of the shards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ..io.store import TokenStore
from ..io.tables import fmt_ci, write_table
from .run import Run, SectionResult, compose, get_evaluators, setup
from .s00_vqgm import evaluator_scores, samples_figure

__all__ = ["dataset_table", "generated_accuracy_table", "run"]


def dataset_table(cfg: DictConfig, stores: dict[str, TokenStore]) -> pd.DataFrame:
    """Size of each split on disk against the reference's float32 embedding files."""
    rows = []
    for split, st in stores.items():
        tok_bytes = (Path(st.path) / "tokens.npy").stat().st_size
        img = Path(st.path) / "images.npy"
        rows.append({"split": split, "samples": len(st), "per_class": st.meta["n_per_class"],
                     "token_bytes_per_sample": st.tokens[0].nbytes,
                     "tokens_file_MB": tok_bytes / 2**20,
                     "images_file_MB": img.stat().st_size / 2**20 if img.exists() else 0.0,
                     # the reference writes one float32 d x m x m embedding per sample
                     "reference_embedding_MB": len(st) * 4 * st.meta["d"] * st.tokens[0].size / 2**20})
    df = pd.DataFrame(rows)
    write_table(df.round(3), cfg.paths.tables, "dataset_sizes",
                caption="Synthetic dataset: token indices (uint16) on disk vs the reference's float32 embeddings")
    return df


def generated_accuracy_table(cfg: DictConfig, evaluators: dict, test: TokenStore) -> pd.DataFrame:
    """Evaluators' accuracy and mean true-class probability on the generated test images
    (the Acc and P columns of the paper's Table 2), with 95 % bootstrap intervals."""
    df = evaluator_scores(evaluators, np.asarray(test.images), test.labels, seed=int(cfg.seed))
    disp = pd.DataFrame({"Evaluator": df.evaluator,
                         "Acc": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in zip(df.acc, df.acc_lo, df.acc_hi)],
                         "P": [fmt_ci(a, lo, hi) for a, lo, hi in zip(df.p, df.p_lo, df.p_hi)]})
    write_table(df, cfg.paths.tables, "generated_test_accuracy", display=disp,
                caption=f"Evaluators on the {len(test)} generated test images (chance: {1 / cfg.world.n_classes:.0%})")
    return disp


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 01 shows: the splits' sizes, the generated test images and how the
    evaluators score them. ``composed``: a :func:`~cortex_nb.pipeline.run.compose` result
    holding the stores (built here when not given)."""
    setup(cfg)
    composed = composed or compose(cfg, extractors=False, evaluators=False)
    out = SectionResult("generate")
    stores = composed.stores
    out.tables["dataset_sizes"] = dataset_table(cfg, stores)
    test = stores["test"]
    out.figures["generated_samples"] = samples_figure(cfg, test.images, test.labels, name="generated_samples",
                                                      title="Generated test images, a row per class")
    evaluators = composed.evaluators or get_evaluators(cfg)
    out.tables["generated_test_accuracy"] = generated_accuracy_table(cfg, evaluators, test)
    return out
