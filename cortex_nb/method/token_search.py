"""Search the codebook by ground truth (issue #15): which token ids sit on a part of a toy bird.

The toy world knows, for every pixel, whether it is background, body or head (``toyworld.ToyBatch.masks``)
and each image's species and scene. Encode real toy images to tokens, give every token position the part that
covers its patch, and every codebook id gets, for a query (a part, optionally restricted to a class or a
scene), the scores codebook-features' Code Browser ranks codes by:

- ``count`` -- positions holding the id (in the images the query keeps);
- ``precision`` -- the share of those positions that lie on the part;
- ``recall`` -- the share of the part's positions that hold the id.

Everything is one ``bincount`` over all positions, whatever the number of ids or images.

- :func:`position_parts` -- (B, H, W) pixel masks -> (B, m, m) part per position (the part covering the most
  pixels of the patch; ties go to the part with the larger id: head over body over background);
- :func:`search_tokens` -- the ranked table for a query.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..toy.world import BACKGROUND, BODY, HEAD, SCENES

__all__ = ["PARTS", "position_parts", "search_tokens"]

#: query name -> part id in ``toyworld`` masks
PARTS = {"background": BACKGROUND, "body": BODY, "head": HEAD}
RANK_BY = ("precision", "recall", "count")


def position_parts(masks: Any, m: int) -> np.ndarray:
    """The part of every token position: masks (B, H, W) with part ids 0..P-1, H = W = p·m ->
    (B, m, m) int64, the part covering most of the position's p x p patch (ties: the larger id)."""
    masks = np.asarray(masks)
    B, H, W = masks.shape
    if H % m or W % m:
        raise ValueError(f"image {H}x{W} is not a grid of {m}x{m} patches")
    p = H // m
    n_parts = int(masks.max()) + 1 if masks.size else 1
    onehot = np.eye(n_parts, dtype=np.int32)[masks.reshape(B, m, p, m, p)]       # (B, m, p, m, p, P)
    counts = onehot.sum(axis=(2, 4))                                            # (B, m, m, P)
    return (n_parts - 1 - np.argmax(counts[..., ::-1], axis=-1)).astype(np.int64)  # larger id wins ties


def search_tokens(tokens: Any, parts: Any, K: int, part: str = "head", *, labels: Any = None, scenes: Any = None,
                  cls: int | None = None, scene: int | str | None = None, rank_by: str = "precision",
                  min_count: int = 1, top: int | None = None) -> pd.DataFrame:
    """Rank codebook ids for a query. tokens, parts: (B, m, m) ids and part ids; ``part``: a key of
    :data:`PARTS`; ``cls`` / ``scene`` keep only the images of that class (needs ``labels``) / scene (an
    index or a name of ``toyworld.SCENES``; needs ``scenes``). Ids with fewer than ``min_count`` positions
    are left out (a token seen once on the head has precision 1). Returns a frame (token, count, on_part,
    precision, recall) sorted by ``rank_by`` (then count, then token id), best first, ``top`` rows."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    tokens, parts = np.asarray(tokens).astype(np.int64), np.asarray(parts)
    if tokens.shape != parts.shape or tokens.ndim != 3:
        raise ValueError(f"tokens and parts must both be (B, m, m), got {tokens.shape} and {parts.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= K):
        raise ValueError(f"token ids must lie in [0, K = {K}), got [{tokens.min()}, {tokens.max()}]")
    keep = np.ones(len(tokens), dtype=bool)
    if cls is not None:
        if labels is None:
            raise ValueError("a class query needs labels")
        keep &= np.asarray(labels) == int(cls)
    if scene is not None:
        if scenes is None:
            raise ValueError("a scene query needs scenes")
        s = SCENES.index(scene) if isinstance(scene, str) else int(scene)
        keep &= np.asarray(scenes) == s
    ids = tokens[keep].ravel()
    on = parts[keep].ravel() == PARTS[part]
    count = np.bincount(ids, minlength=K)
    on_part = np.bincount(ids[on], minlength=K)
    total_part = int(on.sum())
    df = pd.DataFrame({"token": np.arange(K), "count": count, "on_part": on_part,
                       "precision": np.divide(on_part, count, out=np.zeros(K), where=count > 0),
                       "recall": on_part / total_part if total_part else np.zeros(K)})
    df = df[df["count"] >= max(1, int(min_count))]
    keys = [rank_by] + [c for c in ("count", "precision") if c != rank_by]
    df = df.sort_values(keys + ["token"], ascending=[False] * len(keys) + [True], kind="stable")
    return df.head(top).reset_index(drop=True) if top else df.reset_index(drop=True)
