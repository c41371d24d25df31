"""Section 04 (notebook 04_concept_level_saliency): Table 2 — concept-level saliency (§3.3 eq. 6,
§4.3) and, beyond the paper, ground-truth localisation on the toy world.

- :func:`concept_sets` — T*_concept of each extractor from the train split's TSVs, and the
  frequency / class-vs-rest baselines (also Fig. 2's tokens, section 03).
- :func:`concept_level` — mask every test patch whose id is in the class's set; ΔA, ΔP per evaluator.
- :func:`localisation` — on real toy images with known part masks: how many of the top-n TSV
  positions fall on the head (the part that tells a head-only pair apart), against the baselines.
- :func:`score_masked` — every evaluator on masked images (also Fig. 3, section 03).

Writes tables/<p>/table2_concept_level and localisation. :func:`run` computes everything the
notebook shows; ``python -m cortex_nb table2`` calls it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from .. import masking
from ..saliency import class_vs_rest_baseline, concept_tokens, frequency_baseline, top_n_positions
from ..tables import fmt_ci, mean_ci, write_table
from .run import (Run, SectionResult, compose, display_name, embed_fn, get_tsv, load_split, real_toy_images,
                  saliency_of, setup, store_tokens)

__all__ = ["METHOD_LABEL", "score_masked", "concept_sets", "concept_level", "table2", "head_positions",
           "concept_rank_scores", "head_share_of_top_n", "localisation", "localisation_table", "run"]

#: how tables and figures name each token source
METHOD_LABEL = {"CE": "CORTEX (CE)", "RE": "CORTEX (RE)", "random": "random", "frequency": "frequency baseline",
                "class-vs-rest": "class-vs-rest baseline"}


def score_masked(cfg: DictConfig, evaluators: dict, images, labels, masks) -> dict[str, dict]:
    """``{evaluator: {"p_true", "correct", "n_masked"}}`` (each (B,)) on ``images`` (B, H, W, 3)
    with the patches of ``masks`` (B, m, m) filled as ``saliency.fill`` says."""
    return {name: masking.evaluate_masked(e.predict_proba, images, labels, masks, batch_size=256,
                                          fill=cfg.saliency.fill) for name, e in evaluators.items()}


def concept_sets(cfg: DictConfig, tsvs_train: dict[str, np.ndarray], vqgm) -> dict[str, torch.Tensor]:
    """T*_concept of each extractor (eq. 6: per class, the k most frequent ids among the top-n
    TSV positions of its training images) and the baselines, each (n_classes, k) with -1 padding.
    n and k are the paper's 20 and 100 scaled by m²/256 (same masked fraction of the grid)."""
    train = load_split(cfg, "train", vqgm)
    C, K, m = int(cfg.world.n_classes), int(vqgm.K), int(vqgm.m)
    n, k = masking.scaled_n(int(cfg.saliency.n_concept), m), masking.scaled_n(int(cfg.saliency.k_concept), m)
    tokens, labels = store_tokens(train), torch.from_numpy(train.labels)
    sets = {arch: concept_tokens(tokens, labels, top_n_positions(torch.from_numpy(np.asarray(t)), n), C, K, k)
            for arch, t in tsvs_train.items()}
    sets["frequency"] = frequency_baseline(tokens, labels, C, K, k)
    sets["class-vs-rest"] = class_vs_rest_baseline(tokens, labels, C, K, k)
    return sets


def concept_level(cfg: DictConfig, sets: dict[str, torch.Tensor], evaluators: dict, vqgm) -> pd.DataFrame:
    """Table 2: per evaluator, Acc and P unmasked, and for each token set ΔA, ΔP (paired
    per-image differences, 95 % bootstrap intervals) and the mean number of masked patches."""
    test = load_split(cfg, "test", vqgm)
    images, labels, tokens = np.asarray(test.images), test.labels, store_tokens(test)
    none = torch.zeros(len(labels), vqgm.m, vqgm.m, dtype=torch.bool)
    base = score_masked(cfg, evaluators, images, labels, none)
    rows = []
    for method, concept in sets.items():
        mask = masking.mask_token_set(tokens, torch.from_numpy(labels), concept, K=int(vqgm.K))
        res = score_masked(cfg, evaluators, images, labels, mask)
        for name, r in res.items():
            b = base[name]
            acc, p = mean_ci(b["correct"].astype(float), seed=int(cfg.seed)), mean_ci(b["p_true"], seed=int(cfg.seed))
            da = mean_ci(r["correct"].astype(float) - b["correct"].astype(float), seed=int(cfg.seed))
            dp = mean_ci(r["p_true"] - b["p_true"], seed=int(cfg.seed))
            nm = mean_ci(r["n_masked"].astype(float), seed=int(cfg.seed))
            rows.append({"evaluator": display_name(name), "method": method,
                         "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                         "p": p["mean"], "p_lo": p["lo"], "p_hi": p["hi"],
                         "dA": da["mean"], "dA_lo": da["lo"], "dA_hi": da["hi"],
                         "dP": dp["mean"], "dP_lo": dp["lo"], "dP_hi": dp["hi"],
                         "n_masked": nm["mean"], "n_masked_lo": nm["lo"], "n_masked_hi": nm["hi"],
                         "masked_fraction": nm["mean"] / vqgm.m ** 2})
    return pd.DataFrame(rows)


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
    cap = ("Table 2: concept-level evaluation (Acc, P unmasked; n = mean masked patches of "
           f"{m2:.0f}; ΔA, ΔP with 95% bootstrap intervals)" if m2 else "Table 2")
    write_table(df, cfg.paths.tables, name, display=disp, caption=cap)
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


def localisation(cfg: DictConfig, extractors: dict, vqgm, sets: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Beyond the paper: on real toy images (known part masks) encoded to tokens, the share of the
    top-n positions that lie on the head — the species-distinctive part — for each extractor's TSV,
    for positions ranked by the frequency / class-vs-rest baselines (a position scores by its token
    id's rank in the class's set), and for random positions (= the head's share of the grid).
    A position is 'head' when at least ``saliency.head_fraction`` of its patch is head pixels."""
    from .. import toyworld

    real = real_toy_images(cfg, int(cfg.saliency.n_localisation), "report")
    x = toyworld.to_tensor(real.images).to(vqgm.device)
    tokens = vqgm.encode(x).cpu()                                       # (B, m, m)
    labels = torch.as_tensor(real.labels)
    m = int(vqgm.m)
    is_head = head_positions(real.masks == toyworld.HEAD, m, float(cfg.saliency.head_fraction))  # (B, m²)
    n = masking.scaled_n(int(cfg.saliency.n_concept), m)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    scores: dict[str, torch.Tensor] = {}
    for arch, f in extractors.items():
        gen = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed) + 17)
        scores[arch] = saliency_of(cfg, f).attribute(embed(tokens.to(cfg.device)), labels.to(cfg.device),
                                                     generator=gen).cpu()
    for method in ("frequency", "class-vs-rest"):
        scores[method] = concept_rank_scores(sets[method], labels, tokens, int(vqgm.K))
    out = []
    for method, s in scores.items():
        ci = mean_ci(head_share_of_top_n(s, is_head, n).numpy(), seed=int(cfg.seed))
        out.append({"method": method, "n": n, "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    chance = is_head.float().mean(1).numpy()
    ci = mean_ci(chance, seed=int(cfg.seed))
    out.append({"method": "random", "n": n, "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    return pd.DataFrame(out)


def localisation_table(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """The localisation frame as a table (results/<p>/tables/localisation.*)."""
    disp = pd.DataFrame({"Method": [METHOD_LABEL.get(m, m) for m in df.method], "n": df.n,
                         "Share of top-n positions on the head": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in
                                                                  zip(df.head_share, df.lo, df.hi)]})
    write_table(df, cfg.paths.tables, "localisation", display=disp,
                caption="Ground-truth localisation on real toy images (beyond the paper)")
    return disp


def run(cfg: DictConfig, composed: Run | None = None) -> SectionResult:
    """Everything notebook 04 shows: T*_concept and the baselines, Table 2 and (toy) the
    localisation table. ``composed``: a :func:`~cortex_nb.pipeline.run.compose` result."""
    setup(cfg)
    composed = composed or compose(cfg)
    vqgm, extractors = composed.vqgm, composed.extractors
    out = SectionResult("table2")
    tsv_train = {arch: get_tsv(cfg, arch, f, vqgm, "train") for arch, f in extractors.items()}
    sets = concept_sets(cfg, tsv_train, vqgm)
    out.values["concept_sets"] = sets
    out.tables["table2_concept_level"] = table2(cfg, concept_level(cfg, sets, composed.evaluators, vqgm))
    if cfg.vqgm.source == "toy":
        out.tables["localisation"] = localisation_table(cfg, localisation(cfg, extractors, vqgm, sets))
    return out
