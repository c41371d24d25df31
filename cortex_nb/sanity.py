"""Sanity checks for token attributions (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"; issue #14).

An attribution that explains the model must change when the model is destroyed. The checks re-initialise
the information extractor's layers and compare the attributions before and after:

- :func:`cascading_randomisation` -- re-initialise the layers one at a time from the output back to the
  input, keeping the earlier re-initialisations (the map should degrade as more layers go);
- :func:`independent_randomisation` -- re-initialise one layer at a time, every other layer trained;
- :func:`rank_correlation` -- Spearman's rank correlation of two maps per image (average ranks on ties);
- :func:`jaccard` -- overlap of two concept sets per class (T*_concept before and after).

A layer is a module with its own parameters that ``reset_parameters`` re-initialises (convolutions,
linear layers, batch norms -- a batch norm goes back to the identity with fresh running statistics),
in the order the model registers them. The extractor passed in is never modified: every model yielded
is a copy. The third check of the paper -- an extractor trained on permuted labels -- is a training
run (``cortex_nb.train.fit`` on shuffled labels), not a transformation of the trained one.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

__all__ = ["randomisable_layers", "cascading_randomisation", "independent_randomisation", "rank_correlation",
           "jaccard"]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own and can re-initialise them, in
    registration order (input side first for the extractors here)."""
    return [name for name, mod in model.named_modules()
            if name and hasattr(mod, "reset_parameters") and any(True for _ in mod.parameters(recurse=False))]


def _reset(model: nn.Module, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    model.get_submodule(name).reset_parameters()
    if isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm):
        model.get_submodule(name).reset_running_stats()


def cascading_randomisation(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """(layer, model with that layer and every layer after it re-initialised), from the output layer
    back to the input one. Each yielded model is its own copy (the next one randomises one layer more);
    ``model`` is untouched. Layer i (in :func:`randomisable_layers` order) is re-initialised from
    ``seed + i``, so a layer gets the same fresh weights in both checks."""
    layers = randomisable_layers(model)
    work = copy.deepcopy(model)
    with torch.random.fork_rng():
        for i in reversed(range(len(layers))):
            _reset(work, layers[i], seed + i)
            yield layers[i], copy.deepcopy(work)


def independent_randomisation(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """(layer, a copy of ``model`` with only that layer re-initialised from ``seed + i``), every layer in
    turn, output side first as :func:`cascading_randomisation`."""
    layers = randomisable_layers(model)
    with torch.random.fork_rng():
        for i in reversed(range(len(layers))):
            work = copy.deepcopy(model)
            _reset(work, layers[i], seed + i)
            yield layers[i], work


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) along the last dimension, ties sharing the mean of their ranks."""
    x = x.double()
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64).expand_as(x)
    # for each run of equal values, the mean of its positions
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    run_id = new_run.cumsum(-1) - 1                                      # (..., n)
    sums = torch.zeros_like(pos).scatter_add_(-1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(-1, run_id, torch.ones_like(pos))
    avg = (sums / counts.clamp_min(1)).gather(-1, run_id)
    return torch.zeros_like(avg).scatter_(-1, order, avg)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of two maps per image: a, b (B, m, m) (or (B, n)) -> (B,), the
    Pearson correlation of their average ranks; NaN for an image whose map is constant."""
    ra, rb = _ranks(torch.as_tensor(a).flatten(1)), _ranks(torch.as_tensor(b).flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|A_c ∩ B_c| / |A_c ∪ B_c| per class of two concept-set tensors (C, k) (-1 = padding, ignored);
    1.0 for two empty sets."""
    out = []
    for ra, rb in zip(torch.as_tensor(a).tolist(), torch.as_tensor(b).tolist()):
        sa, sb = {t for t in ra if t >= 0}, {t for t in rb if t >= 0}
        out.append(len(sa & sb) / len(sa | sb) if sa | sb else 1.0)
    return torch.tensor(out, dtype=torch.float64)
