"""The token browser's data model (notebook 06, CORTEX §3.3 eq. 6): what the app shows and how it ranks tokens.

- :class:`BrowserData` — everything the browser shows, as plain arrays (no model needed once built);
  :func:`cortex_nb.pipeline.s06_browser.browser_data` builds it from the pipeline.
- :func:`rank_concepts` — every class's k concept tokens for one source, best first, with the count
  they were ranked by (CE / RE: occurrences at the top-n TSV positions, eq. 6; ``frequency``: the
  paper's Table 2 baseline, occurrences over all positions; ``class-vs-rest``: our tf-idf-like
  control, its log-ratio score). The saliency functions rank every class in one bincount.

Both the app (:mod:`cortex_nb.browser.app`) and the pipeline section import this module; it imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..method.saliency import class_vs_rest_baseline, concept_tokens, frequency_baseline, top_n_positions

__all__ = ["BASELINES", "BrowserData", "Ranking", "rank_concepts"]

BASELINES = ("frequency", "class-vs-rest")   # sources that need no TSV (n is ignored for them)


@dataclass
class BrowserData:
    """Everything the browser shows, as plain arrays (no model needed once built).

    ``token_image(t)`` is what token id t looks like decoded on its own, uint8 (h, w, 3); cache it
    (``browser_data`` does) — the browser calls it on every token change.
    """
    class_names: list[str]              # (C,) display names, index = label
    K: int                              # codebook size
    m: int                              # token grid side
    train_tokens: np.ndarray            # (N, m, m) ids the concept sets are computed from
    train_labels: np.ndarray            # (N,)
    train_tsv: dict[str, np.ndarray]    # {"CE": (N, m, m), "RE": (N, m, m)} token saliency values
    gallery_tokens: np.ndarray          # (G, m, m) ids of the images shown (generated test images)
    gallery_labels: np.ndarray          # (G,)
    gallery_images: np.ndarray          # (G, H, W, 3) uint8, H = W = p·m
    token_image: Callable[[int], np.ndarray]  # token id -> uint8 (h, w, 3)
    # ground truth for the search panel (toy world only; None hides it): real toy images encoded to tokens,
    # {"tokens": (R, m, m), "parts": (R, m, m) part per position, "labels": (R,), "scenes": (R,)}
    search: dict | None = None

    def check(self) -> None:
        """Raise ValueError when the arrays disagree in shape (called by TokenBrowser)."""
        N, G, m = len(self.train_labels), len(self.gallery_labels), self.m
        if tuple(np.shape(self.train_tokens)) != (N, m, m):
            raise ValueError(f"train_tokens must be (N={N}, {m}, {m}), got {np.shape(self.train_tokens)}")
        for name, tsv in self.train_tsv.items():
            if tuple(np.shape(tsv)) != (N, m, m):
                raise ValueError(f"train_tsv[{name!r}] must be (N={N}, {m}, {m}), got {np.shape(tsv)}")
            if name in BASELINES:
                raise ValueError(f"train_tsv key {name!r} clashes with a baseline source name")
        if tuple(np.shape(self.gallery_tokens)) != (G, m, m):
            raise ValueError(f"gallery_tokens must be (G={G}, {m}, {m}), got {np.shape(self.gallery_tokens)}")
        shp = np.shape(self.gallery_images)
        if len(shp) != 4 or shp[0] != G or shp[3] != 3 or shp[1] % m or shp[2] % m:
            raise ValueError(f"gallery_images must be (G={G}, H, W, 3) uint8 with H, W multiples of m={m}, got {shp}")


@dataclass
class Ranking:
    """One source at one n, every class: ids (C, k) best first (-1 padding), the value they were
    ranked by (count or class-vs-rest score) and their count (C, k)."""
    ids: np.ndarray
    value: np.ndarray
    freq: np.ndarray


def rank_concepts(tokens: torch.Tensor, labels: torch.Tensor, n_classes: int, K: int, k: int, source: str,
                  tsv: np.ndarray | None = None, n: int | None = None,
                  usage: Callable[[], np.ndarray] | None = None) -> Ranking:
    """Every class's k best ids for ``source`` over tokens (N, m, m) int64 with labels (N,).

    TSV sources (``tsv`` (N, m, m) given): eq. 6 at the top-``n`` positions; ``"frequency"`` and
    ``"class-vs-rest"``: the baselines (n ignored). ``usage()`` returns the (C, K) positions of each
    class holding each id (:func:`cortex_nb.method.saliency.token_class_usage`): the class-vs-rest counts.
    """
    if tsv is not None:
        a = np.asarray(tsv, dtype=np.float32)                           # (N, m, m)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())      # a memmap is read-only
        ids, cnt = concept_tokens(tokens, labels, top_n_positions(t, n), n_classes, K, k, return_counts=True)
        value = freq = cnt.numpy()
    elif source == "frequency":
        ids, cnt = frequency_baseline(tokens, labels, n_classes, K, k, return_counts=True)
        value = freq = cnt.numpy()
    elif source == "class-vs-rest":
        ids, score = class_vs_rest_baseline(tokens, labels, n_classes, K, k, return_scores=True)
        value = score.numpy()
        freq = np.take_along_axis(usage(), ids.clamp(min=0).numpy(), 1) * (ids.numpy() >= 0)
    else:
        raise ValueError(f"unknown source {source!r}; a TSV source needs its tsv, or one of {BASELINES}")
    return Ranking(ids.numpy(), value, np.asarray(freq))
