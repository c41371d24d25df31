"""Deletion and insertion curves over the token grid, batched (the start of issue #14's faithfulness tests).

An attribution (B, m, m) -- token saliency values, or any rival -- ranks each image's m² positions. The
**deletion** curve removes them in that order (most relevant first: a faithful attribution makes P(true)
fall fast) and the **insertion** curve starts from the image with every position removed and gives them
back in that order (a faithful attribution makes P(true) rise fast); Samek et al. 2017 (region
perturbation), Petsiuk et al. 2018 (RISE). Removing a position means what it means everywhere in this
project: its patch replaced by the profile's fill (``cortex_nb.pipeline.s04_concept_level.score_masked``),
so the curves inherit the fill check the other masking results rest on.

Everything is batched: one step of a curve is one masked batch shown to the evaluator, whatever B, where
the per-image loops of the evaluation libraries make one forward pass per image and step. The unit of
the result is the image: :func:`auc` gives one area per image, to be resampled as images (or classes).

- :func:`rank_positions` -- (B, m, m) scores -> (B, m²) flat positions, most relevant first (ties: the
  smaller flat index first, so the order is reproducible);
- :func:`step_mask` -- the removal mask after k steps of a deletion or insertion curve;
- :func:`perturbation_curve` -- P(true) at every k of ``ks`` (a ``score`` callable does the masking
  and judging);
- :func:`auc` -- the area under each image's curve over the removed (or revealed) fraction k / m²,
  trapezoidal, in [0, 1] for probabilities.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["rank_positions", "step_mask", "perturbation_curve", "auc", "default_steps"]


def rank_positions(scores: torch.Tensor, *, most_relevant_first: bool = True) -> torch.Tensor:
    """Flat positions (B, m²) of each image in decreasing (or increasing) order of ``scores`` (B, m, m);
    ties keep the smaller flat index first in both directions."""
    s = torch.as_tensor(scores)
    if s.dim() != 3 or s.shape[1] != s.shape[2]:
        raise ValueError(f"scores must be (B, m, m), got {tuple(s.shape)}")
    flat = s.flatten(1).double()
    return torch.sort(-flat if most_relevant_first else flat, dim=1, stable=True).indices


def step_mask(order: torch.Tensor, m: int, k: int, *, insertion: bool = False) -> torch.Tensor:
    """The positions removed after k steps, bool (B, m, m): deletion removes the first k positions of
    ``order`` (B, m²); insertion has revealed them and removes every other one."""
    B, n = order.shape
    if n != m * m or not 0 <= k <= n:
        raise ValueError(f"order must be (B, {m * m}) and 0 <= k <= {m * m}; got {tuple(order.shape)}, k = {k}")
    first = torch.zeros(B, n, dtype=torch.bool)
    first.scatter_(1, order[:, :k].cpu(), True)
    return (~first if insertion else first).view(B, m, m)


def default_steps(m: int, n_steps: int | None = None) -> list[int]:
    """k = 0 .. m² in ``n_steps`` (default m², i.e. every position) nearly equal strides, ends included."""
    n = m * m
    n_steps = n if n_steps is None else max(1, min(int(n_steps), n))
    return sorted({int(round(i * n / n_steps)) for i in range(n_steps + 1)})


def perturbation_curve(score: Callable[[torch.Tensor], np.ndarray], order: torch.Tensor, m: int,
                       ks: Sequence[int] | None = None, *, insertion: bool = False) -> tuple[list[int], np.ndarray]:
    """P(true) of every image after each k of ``ks`` (default every k): ``score(mask (B, m, m))`` removes
    the masked patches and judges the images, returning (B,) -- or (..., B), e.g. one row per evaluator,
    so one masked batch serves them all. Returns (ks, curve (len(ks), ..., B))."""
    ks = default_steps(m) if ks is None else [int(k) for k in ks]
    return ks, np.stack([np.asarray(score(step_mask(order, m, k, insertion=insertion)), dtype=np.float64)
                         for k in ks])


def auc(ks: Sequence[int], curve: np.ndarray, m: int) -> np.ndarray:
    """Area under each image's curve (len(ks), ..., B) over the fraction k / m² (trapezoid): one value
    per image (shape (..., B)), 1.0 for a curve that stays at 1, 0.5 for one falling linearly from 1 to 0.
    ``ks`` must run from 0 to m² (the whole curve)."""
    x = np.asarray(ks, dtype=np.float64) / (m * m)
    if x[0] != 0 or x[-1] != 1 or np.any(np.diff(x) <= 0):
        raise ValueError(f"ks must increase from 0 to m² = {m * m}, got {list(ks)}")
    y = np.asarray(curve, dtype=np.float64)
    dx = np.diff(x).reshape(-1, *[1] * (y.ndim - 1))
    return ((y[1:] + y[:-1]) / 2 * dx).sum(0)
