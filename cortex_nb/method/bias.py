"""Bias detection with concept tokens (the published version's application of CORTEX), as array functions.

The published version finds the concept tokens of an attribute (say, a gender) with the method and then asks
how often a generator's images for groups of prompts contain them, comparing the groups with a rank effect
size, Cliff's delta. In the toy world the attribute is the *scene* (sky, foliage, water, ground) and the groups
are the species; section 08 (:mod:`cortex_nb.pipeline.s08_bias`) feeds these functions. Here:

- :func:`cliffs_delta` — δ = P(X > Y) − P(X < Y) for two samples, batched over leading dimensions with one
  sort and two ``torch.searchsorted`` (no pairwise loop: O((n + m) log m), not O(n m));
- :func:`cliffs_delta_ci` — δ with a percentile bootstrap interval (both samples resampled, B at once);
- :func:`scene_token_counts` — per image, how many positions hold one of each scene's concept tokens;
- :func:`detected_scenes` / :func:`scene_rates` — the scene a set of counts points to, and per group the share
  of images given each scene (token-detected, or measured by a pixel classifier);
- :func:`group_deltas` — per (group, scene), Cliff's delta of the group's counts against every other group's,
  with its interval, and the group's detected preferred scene;
- :func:`rates_correlation_ci` — Pearson r between two (group, scene) rate tables, with a bootstrap interval
  over images resampled within each group.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["cliffs_delta", "cliffs_delta_ci", "scene_token_counts", "scene_onehot", "detected_scenes", "scene_rates",
           "group_deltas", "preferred_from_deltas", "rates_correlation_ci", "NEGLIGIBLE_DELTA"]

#: |Cliff's delta| below this is "negligible" (Romano et al. 2006's thresholds: 0.147 / 0.33 / 0.474)
NEGLIGIBLE_DELTA = 0.147


def cliffs_delta(x: Any, y: Any) -> torch.Tensor:
    """Cliff's delta of samples x (..., n) and y (..., m): (#(x_i > y_j) − #(x_i < y_j)) / (n m), over all
    pairs, batched over the leading dimensions (float64). +1: every x above every y; 0: no dominance."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if x.shape[-1] == 0 or y.shape[-1] == 0:
        raise ValueError(f"both samples need at least one value, got n = {x.shape[-1]}, m = {y.shape[-1]}")
    lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    x = x.expand(*lead, x.shape[-1]).contiguous()
    ys = y.expand(*lead, y.shape[-1]).sort(dim=-1).values.contiguous()
    m = ys.shape[-1]
    below = torch.searchsorted(ys, x, right=False)                   # #(y_j < x_i)
    above = m - torch.searchsorted(ys, x, right=True)                # #(y_j > x_i)
    return (below - above).sum(-1).double() / (x.shape[-1] * m)


def cliffs_delta_ci(x: Any, y: Any, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                    max_levels: int = 512) -> tuple[float, float, float]:
    """(δ, lo, hi): Cliff's delta of 1-d samples x and y and its percentile bootstrap interval (each sample
    resampled with replacement, ``n_boot`` replicates at once).

    Samples with at most ``max_levels`` distinct values (counts, 0/1 indicators: every use in section 08) are
    resampled as histograms: a bootstrap resample of a sample is a multinomial draw of its value counts, and δ of
    two histograms is one cumulative sum, O(B · levels) instead of sorting B resamples. Otherwise the resamples are
    drawn as indices and compared with :func:`cliffs_delta`. Both are the same bootstrap (in distribution)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    d = float(cliffs_delta(x, y))
    rng = np.random.default_rng(seed)
    n, m = len(x), len(y)
    levels = np.union1d(x, y)                                           # sorted distinct values
    if len(levels) <= max_levels:
        V = len(levels)
        px = np.bincount(np.searchsorted(levels, x), minlength=V) / n
        py = np.bincount(np.searchsorted(levels, y), minlength=V) / m
        hx = rng.multinomial(n, px, size=n_boot)                        # (B, V) resampled value counts
        hy = rng.multinomial(m, py, size=n_boot)
        cum = np.cumsum(hy, 1)
        below, above = cum - hy, m - cum                                # #(y < v), #(y > v) per level
        boots = (hx * (below - above)).sum(1) / (n * m)
    else:
        xb = x[rng.integers(0, n, (n_boot, n))]
        yb = y[rng.integers(0, m, (n_boot, m))]
        boots = cliffs_delta(xb, yb).numpy()
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return d, float(lo), float(hi)


def scene_token_counts(tokens: Any, scene_sets: Any, K: int) -> np.ndarray:
    """(N, S) int64: for each image (tokens (N, m, m)), how many of its positions hold one of scene s's concept
    tokens (``scene_sets`` (S, k) ids, -1 = padding). An id in two scenes' sets counts for both."""
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long).flatten(1)               # (N, m²)
    sets = torch.as_tensor(np.asarray(scene_sets), dtype=torch.long)                   # (S, k)
    if t.numel() and (t.min() < 0 or t.max() >= K):
        raise ValueError(f"token ids must lie in [0, K = {K})")
    member = torch.zeros(sets.shape[0], K, dtype=torch.bool)                          # (S, K)
    s_idx, j_idx = torch.nonzero(sets >= 0, as_tuple=True)
    member[s_idx, sets[s_idx, j_idx]] = True
    return member.T.long()[t].sum(1).numpy()                                           # (N, S)


def scene_onehot(scenes: np.ndarray, n_scenes: int) -> np.ndarray:
    """(N, S) int64 indicators of per-image scenes (N,); a scene of -1 (none) is a row of zeros."""
    scenes = np.asarray(scenes)
    return (scenes[:, None] == np.arange(n_scenes)[None]).astype(np.int64)


def detected_scenes(counts: np.ndarray) -> np.ndarray:
    """(N,) the scene with the most concept-token positions in each image (ties: the lower scene id); -1 when
    the image holds none."""
    counts = np.asarray(counts)
    out = counts.argmax(1)
    out[counts.max(1) == 0] = -1
    return out


def scene_rates(scenes: np.ndarray, groups: np.ndarray, n_groups: int, n_scenes: int) -> np.ndarray:
    """(G, S) float: per group, the share of its images given each scene (an image with scene -1 counts in
    the denominator only)."""
    scenes, groups = np.asarray(scenes), np.asarray(groups)
    out = np.zeros((n_groups, n_scenes))
    ok = scenes >= 0
    np.add.at(out, (groups[ok], scenes[ok]), 1.0)
    return out / np.maximum(np.bincount(groups, minlength=n_groups), 1)[:, None]


def group_deltas(counts: np.ndarray, groups: np.ndarray, n_groups: int, *, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """One row per (group, scene): Cliff's delta of the group's per-image counts of the scene's tokens against
    all other groups' (``delta``, ``lo``, ``hi``), and ``holds`` (lo > 0: the group's images hold the scene's
    tokens more often than the others'). Bootstrap seeds differ per row (seed, group, scene)."""
    counts, groups = np.asarray(counts), np.asarray(groups)
    rows = []
    for g in range(n_groups):
        inside = groups == g
        for s in range(counts.shape[1]):
            d, lo, hi = cliffs_delta_ci(counts[inside, s], counts[~inside, s], n_boot=n_boot, alpha=alpha,
                                        seed=seed * 1_000_003 + g * 101 + s)
            rows.append({"group": g, "scene": s, "delta": d, "lo": lo, "hi": hi, "holds": lo > 0})
    return pd.DataFrame(rows)


def preferred_from_deltas(deltas: pd.DataFrame) -> dict[int, int]:
    """Per group, the scene of the largest delta among those whose interval lies above 0 (-1: none does)."""
    out = {}
    for g, d in deltas.groupby("group"):
        ok = d[d.lo > 0]
        out[int(g)] = int(ok.loc[ok.delta.idxmax(), "scene"]) if len(ok) else -1
    return out


def rates_correlation_ci(a_scenes: np.ndarray, b_scenes: np.ndarray, groups: np.ndarray, n_groups: int,
                         n_scenes: int, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
                         ) -> tuple[float, float, float]:
    """(r, lo, hi): Pearson r between the (group, scene) rate tables of two scene assignments of the same
    images (say token-detected and pixel-measured), with a percentile bootstrap interval: the images resampled
    with replacement within each group, both tables recomputed from the same draw (B replicates batched)."""
    a, b, groups = np.asarray(a_scenes), np.asarray(b_scenes), np.asarray(groups)
    r = float(np.corrcoef(scene_rates(a, groups, n_groups, n_scenes).ravel(),
                          scene_rates(b, groups, n_groups, n_scenes).ravel())[0, 1])
    rng = np.random.default_rng(seed)
    oa, ob = scene_onehot(a, n_scenes).astype(float), scene_onehot(b, n_scenes).astype(float)
    ta, tb = np.zeros((n_boot, n_groups, n_scenes)), np.zeros((n_boot, n_groups, n_scenes))
    for g in range(n_groups):
        idx = np.flatnonzero(groups == g)
        pick = idx[rng.integers(0, len(idx), (n_boot, len(idx)))]                     # (B, n_g)
        ta[:, g], tb[:, g] = oa[pick].mean(1), ob[pick].mean(1)
    fa, fb = ta.reshape(n_boot, -1), tb.reshape(n_boot, -1)
    fa, fb = fa - fa.mean(1, keepdims=True), fb - fb.mean(1, keepdims=True)
    rs = (fa * fb).sum(1) / np.sqrt((fa ** 2).sum(1) * (fb ** 2).sum(1))
    lo, hi = np.nanquantile(rs, [alpha / 2, 1 - alpha / 2])
    return r, float(lo), float(hi)
