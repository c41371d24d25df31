"""Saliency-based token explanation, evaluated: CORTEX §4.3 (Fig. 2, 3, 5; Table 2) and, beyond
the paper, ground-truth localisation on the toy world.

- :func:`get_tsv` — token saliency values of a split under an extractor (cached, resumable).
- :func:`image_level` — Fig. 3: mask the n highest-TSV positions of each generated test image,
  watch every evaluator's true-class probability, against n random positions (several seeds).
- :func:`concept_level` — Table 2: T*_concept from the train split, mask every test patch whose
  id is in the class's set; against the paper's frequency baseline and a class-vs-rest baseline.
- :func:`localisation` — on real toy images with known part masks: how many of the top-n TSV
  positions fall on the head (the part that tells a head-only pair apart), against the baselines.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from . import distributed, masking
from .saliency import (TokenSaliency, class_vs_rest_baseline, concept_tokens, frequency_baseline,
                       top_n_positions)
from .stages import (DISPLAY, _cache, digest, embed_fn, evaluators_key, load_split, section, setup, store_key,
                     weights_key)
from .store import chunked_array
from .tables import mean_ci

__all__ = ["saliency_of", "tsv_key", "random_baseline_key", "get_tsv", "random_baseline", "image_level", "concept_sets",
           "concept_level", "localisation", "token_examples"]

log = logging.getLogger("cortex_nb")


def saliency_of(cfg: DictConfig, extractor, variant: str | None = None) -> TokenSaliency:
    """The profile's TokenSaliency for ``extractor`` ('paper' = eq. 4–5; 'reference' = scripts)."""
    s = cfg.saliency
    variant = variant or s.variant
    make = TokenSaliency.paper if variant == "paper" else TokenSaliency.reference
    return make(extractor, n_samples=int(s.n_samples), alpha=float(s.alpha), chunk_size=s.chunk_rows)


#: saliency keys that TSVs do not read (masking, concept sets, localisation; the variant is an
#: argument of get_tsv): a key missing here only costs a needless recompute, never a stale TSV
_TSV_IGNORES = ("variant", "mask_mode", "fill", "random_seeds", "n_concept", "k_concept", "n_localisation",
                "head_fraction")


def tsv_key(cfg: DictConfig, extractor, store, variant: str) -> str:
    """Key of the TSVs of ``store`` under ``extractor``: the extractor's weights, the split
    (its meta covers the VQGM whose codebook embeds the tokens), the variant, the SmoothGrad
    settings (chunk included: each chunk's noise is seeded by its start), the seed, and the
    device the noise is drawn on."""
    return digest({"extractor": weights_key(extractor), "store": store_key(store), "variant": variant,
                   "saliency": section(cfg, "saliency", drop=_TSV_IGNORES), "seed": int(cfg.seed),
                   "device": torch.device(cfg.device).type})


def random_baseline_key(cfg: DictConfig, evaluators: dict, test) -> str:
    """Key of Fig. 3's random baseline: the test split (images, labels, grid), the evaluators,
    the seed and the saliency settings it reads (seeds per n, fill); masks are drawn on the CPU."""
    return digest({"test": store_key(test), "evaluators": evaluators_key(evaluators), "seed": int(cfg.seed),
                   "saliency": {k: cfg.saliency[k] for k in ("random_seeds", "fill")}})


def _tokens(store) -> torch.Tensor:
    return torch.from_numpy(np.asarray(store.tokens).astype(np.int64))


def get_tsv(cfg: DictConfig, arch: str, extractor, vqgm, split: str, variant: str | None = None) -> np.ndarray:
    """TSV (N, m, m) float32 of every image of ``split`` for its own label, under ``arch``.
    Cached as .npy under cache/tsv/, computed in resumable chunks; the SmoothGrad noise of each
    chunk is seeded by (profile seed, chunk start), so results do not depend on interruptions.
    Under torchrun every rank calls this and computes its share of the chunks
    (:func:`cortex_nb.store.chunked_array`); the result equals a single process's."""
    setup(cfg)
    variant = variant or cfg.saliency.variant
    store = load_split(cfg, split, vqgm)
    # rank 0's key on every rank: the ranks must agree on the path even if their weights differed by a bit
    key = distributed.broadcast_object(tsv_key(cfg, extractor, store, variant))
    path = _cache(cfg, "tsv", f"{arch}-{key}", f"{split}-{variant}.npy")
    ts = saliency_of(cfg, extractor, variant)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    tokens, labels = _tokens(store), torch.from_numpy(store.labels)

    def compute(a: int, b: int) -> np.ndarray:
        gen = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed) * 1_000_003 + a)
        E = embed(tokens[a:b].to(cfg.device))
        return ts.attribute(E, labels[a:b].to(cfg.device), generator=gen).cpu().numpy().astype(np.float32)

    return chunked_array(path, len(store), int(cfg.saliency.chunk), compute, desc=f"TSV {arch} {split}",
                         progress=bool(cfg.progress))


def _score_all(evaluators: dict, images, labels, masks, cfg) -> dict[str, dict]:
    return {name: masking.evaluate_masked(e.predict_proba, images, labels, masks, batch_size=256,
                                          fill=cfg.saliency.fill) for name, e in evaluators.items()}


def _ci_row(cfg: DictConfig, method: str, n: int, res: dict[str, dict]) -> list[dict]:
    rows = []
    for name, r in res.items():
        ci = mean_ci(r["p_true"], seed=int(cfg.seed))
        rows.append({"method": method, "evaluator": DISPLAY.get(name, name), "n": n, "p": ci["mean"],
                     "p_lo": ci["lo"], "p_hi": ci["hi"], "acc": float(np.mean(r["correct"])),
                     "n_masked": float(np.mean(r["n_masked"]))})
    return rows


def random_baseline(cfg: DictConfig, evaluators: dict, vqgm) -> pd.DataFrame:
    """Fig. 3's random baseline: n random positions per test image (``saliency.random_seeds``
    seeds pooled) for every n of the grid, plus the unmasked row (n = 0). It depends on neither
    the extractor nor the mask mode, so it is computed once and cached (JSON) under cache/fig3/."""
    from .files import cached

    test = load_split(cfg, "test", vqgm)
    key = random_baseline_key(cfg, evaluators, test)

    def build() -> dict:
        images, labels = np.asarray(test.images), test.labels
        none = torch.zeros(len(labels), vqgm.m, vqgm.m, dtype=torch.bool)
        rows = _ci_row(cfg, "unmasked", 0, _score_all(evaluators, images, labels, none, cfg))
        for n in masking.image_level_grid(int(vqgm.m)):
            pooled: dict[str, dict] = {}
            for s in range(int(cfg.saliency.random_seeds)):
                gen = torch.Generator().manual_seed(int(cfg.seed) * 7919 + 31 * n + s)
                mask = masking.mask_random(len(labels), int(vqgm.m), n, generator=gen)
                for name, r in _score_all(evaluators, images, labels, mask, cfg).items():
                    acc = pooled.setdefault(name, {"p_true": [], "correct": [], "n_masked": []})
                    for k in acc:
                        acc[k].append(r[k])
            rows += _ci_row(cfg, "random", n, {name: {k: np.concatenate(v) for k, v in r.items()}
                                               for name, r in pooled.items()})
        return {"rows": rows}

    return pd.DataFrame(cached(_cache(cfg, "fig3", "random.json"), build, key=key)["rows"])


def image_level(cfg: DictConfig, tsvs: dict[str, np.ndarray], evaluators: dict, vqgm,
                mode: str | None = None) -> pd.DataFrame:
    """Fig. 3: mean true-class probability vs n masked positions, per evaluator, for each
    extractor's T*_image and for n random positions (:func:`random_baseline`, shared by both
    mask modes). Returns a long frame: method, evaluator, n, p, p_lo, p_hi, acc, n_masked (mean)."""
    test = load_split(cfg, "test", vqgm)
    images, labels = np.asarray(test.images), test.labels
    tokens = _tokens(test)
    mode = mode or cfg.saliency.mask_mode
    base = random_baseline(cfg, evaluators, vqgm)
    rows = base[base.method == "unmasked"].to_dict("records")
    for n in masking.image_level_grid(int(vqgm.m)):
        for arch, tsv in tsvs.items():
            mask = masking.mask_top_n(tokens, torch.from_numpy(np.asarray(tsv)), n, mode=mode)
            rows += _ci_row(cfg, arch, n, _score_all(evaluators, images, labels, mask, cfg))
        rows += base[(base.method == "random") & (base.n == n)].to_dict("records")
    df = pd.DataFrame(rows)
    df["mode"] = mode
    return df


def concept_sets(cfg: DictConfig, tsvs_train: dict[str, np.ndarray], vqgm) -> dict[str, torch.Tensor]:
    """T*_concept of each extractor (eq. 6: per class, the k most frequent ids among the top-n
    TSV positions of its training images) and the baselines, each (n_classes, k) with -1 padding.
    n and k are the paper's 20 and 100 scaled by m²/256 (same masked fraction of the grid)."""
    train = load_split(cfg, "train", vqgm)
    C, K, m = int(cfg.world.n_classes), int(vqgm.K), int(vqgm.m)
    n, k = masking.scaled_n(int(cfg.saliency.n_concept), m), masking.scaled_n(int(cfg.saliency.k_concept), m)
    tokens, labels = _tokens(train), torch.from_numpy(train.labels)
    sets = {arch: concept_tokens(tokens, labels, top_n_positions(torch.from_numpy(np.asarray(t)), n), C, K, k)
            for arch, t in tsvs_train.items()}
    sets["frequency"] = frequency_baseline(tokens, labels, C, K, k)
    sets["class-vs-rest"] = class_vs_rest_baseline(tokens, labels, C, K, k)
    return sets


def concept_level(cfg: DictConfig, sets: dict[str, torch.Tensor], evaluators: dict, vqgm) -> pd.DataFrame:
    """Table 2: per evaluator, Acc and P unmasked, and for each token set ΔA, ΔP (paired
    per-image differences, 95 % bootstrap intervals) and the mean number of masked patches."""
    test = load_split(cfg, "test", vqgm)
    images, labels, tokens = np.asarray(test.images), test.labels, _tokens(test)
    none = torch.zeros(len(labels), vqgm.m, vqgm.m, dtype=torch.bool)
    base = _score_all(evaluators, images, labels, none, cfg)
    rows = []
    for method, concept in sets.items():
        mask = masking.mask_token_set(tokens, torch.from_numpy(labels), concept, K=int(vqgm.K))
        res = _score_all(evaluators, images, labels, mask, cfg)
        for name, r in res.items():
            b = base[name]
            acc, p = mean_ci(b["correct"].astype(float), seed=int(cfg.seed)), mean_ci(b["p_true"], seed=int(cfg.seed))
            da = mean_ci(r["correct"].astype(float) - b["correct"].astype(float), seed=int(cfg.seed))
            dp = mean_ci(r["p_true"] - b["p_true"], seed=int(cfg.seed))
            nm = mean_ci(r["n_masked"].astype(float), seed=int(cfg.seed))
            rows.append({"evaluator": DISPLAY.get(name, name), "method": method,
                         "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                         "p": p["mean"], "p_lo": p["lo"], "p_hi": p["hi"],
                         "dA": da["mean"], "dA_lo": da["lo"], "dA_hi": da["hi"],
                         "dP": dp["mean"], "dP_lo": dp["lo"], "dP_hi": dp["hi"],
                         "n_masked": nm["mean"], "n_masked_lo": nm["lo"], "n_masked_hi": nm["hi"],
                         "masked_fraction": nm["mean"] / vqgm.m ** 2})
    return pd.DataFrame(rows)


def localisation(cfg: DictConfig, extractors: dict, vqgm, sets: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Beyond the paper: on real toy images (known part masks) encoded to tokens, the share of the
    top-n positions that lie on the head — the species-distinctive part — for each extractor's TSV,
    for positions ranked by the frequency / class-vs-rest baselines (a position scores by its token
    id's rank in the class's set), and for random positions (= the head's share of the grid).
    A position is 'head' when at least ``saliency.head_fraction`` of its patch is head pixels."""
    from . import toyworld
    from .stages import real_toy_images

    real = real_toy_images(cfg, int(cfg.saliency.n_localisation), "report")
    x = toyworld.to_tensor(real.images).to(vqgm.device)
    tokens = vqgm.encode(x).cpu()
    labels = torch.as_tensor(real.labels)
    m = int(vqgm.m)
    p = real.masks.shape[-1] // m
    head = torch.from_numpy((real.masks == toyworld.HEAD).astype(np.float32))
    head_share = head.view(-1, m, p, m, p).mean((2, 4))                 # (B, m, m) head pixels per patch
    is_head = (head_share >= float(cfg.saliency.head_fraction)).flatten(1)  # (B, m²)
    n = masking.scaled_n(int(cfg.saliency.n_concept), m)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    scores: dict[str, torch.Tensor] = {}
    for arch, f in extractors.items():
        gen = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed) + 17)
        scores[arch] = saliency_of(cfg, f).attribute(embed(tokens.to(cfg.device)), labels.to(cfg.device),
                                                     generator=gen).cpu()
    for method in ("frequency", "class-vs-rest"):
        concept = sets[method]                                          # (C, k) ids, best first
        k = concept.shape[1]
        rank = torch.full((concept.shape[0], int(vqgm.K)), float(k + 1))  # lower = better
        rows = torch.arange(concept.shape[0])[:, None].expand_as(concept)
        valid = concept >= 0
        rank[rows[valid], concept[valid]] = torch.arange(k, dtype=torch.float32).expand_as(concept)[valid]
        # a position's score is minus its token's rank; ties (same id) broken by position
        scores[method] = -rank[labels[:, None, None], tokens]
    out = []
    for method, s in scores.items():
        top = top_n_positions(s, n)
        hit = is_head.gather(1, top).float().mean(1).numpy()
        ci = mean_ci(hit, seed=int(cfg.seed))
        out.append({"method": method, "n": n, "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    chance = is_head.float().mean(1).numpy()
    ci = mean_ci(chance, seed=int(cfg.seed))
    out.append({"method": "random", "n": n, "head_share": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]})
    return pd.DataFrame(out)


def token_examples(cfg: DictConfig, tsv: np.ndarray, concept: torch.Tensor, vqgm, classes, per_row: int = 6,
                   n_top: int | None = None) -> list[dict]:
    """Fig. 2 / 5: for each class, the concept token (from ``concept``, best first) that sits in
    the top-n TSV positions of the most test images, and up to ``per_row`` such images with that
    token's position. Returns [{class, token, images: [idx], positions: [(row, col)]}]."""
    test = load_split(cfg, "test", vqgm)
    tokens, labels = _tokens(test), torch.from_numpy(test.labels)
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
