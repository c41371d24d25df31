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
in the order the model registers them. :func:`randomisable_blocks` groups them as Adebayo et al. do for
deep networks: a normalisation layer with the layer it normalises, a residual block as one step. The extractor passed in is never modified: every model yielded
is a copy. The third check of the paper -- an extractor trained on permuted labels -- is a training
run (``cortex_nb.engine.train.fit`` on shuffled labels), not a transformation of the trained one.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

__all__ = ["randomisable_layers", "randomisable_blocks", "cascading_randomisation", "independent_randomisation", "rank_correlation",
           "jaccard"]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own and can re-initialise them, in
    registration order (input side first for the extractors here)."""
    return [name for name, mod in model.named_modules()
            if name and hasattr(mod, "reset_parameters") and any(True for _ in mod.parameters(recurse=False))]


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def randomisable_blocks(model: nn.Module, residual: tuple[str, ...] = ("layers",)) -> list[list[str]]:
    """:func:`randomisable_layers` in groups that are randomised together: a normalisation layer joins
    the layer before it (a batch norm re-scales that layer's output), and every layer inside one block of
    a ``residual`` container (``layers.3.body.0``, ``layers.3.shortcut.0``, ...: block ``layers.3``) is
    one group. For CE: each convolution with its batch norm, each linear layer with its norm; for RE: the
    stem, each residual block, the classifier's layers."""
    groups: list[list[str]] = []
    last_block = None
    for name in randomisable_layers(model):
        parts = name.split(".")
        block = ".".join(parts[:2]) if len(parts) > 2 and parts[0] in residual else None
        norm = isinstance(model.get_submodule(name), _NORMS)
        if groups and ((norm and not block) or (block is not None and block == last_block)):
            groups[-1].append(name)
        else:
            groups.append([name])
        last_block = block
    return groups


def _reset(model: nn.Module, names, seed: int) -> None:
    torch.manual_seed(seed)
    for name in [names] if isinstance(names, str) else names:
        mod = model.get_submodule(name)
        mod.reset_parameters()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()


def _groups(model: nn.Module, blocks: bool) -> list[list[str]]:
    return randomisable_blocks(model) if blocks else [[n] for n in randomisable_layers(model)]


def _label(group: list[str]) -> str:
    return group[0] if len(group) == 1 else f"{group[0]} .. {group[-1]}"


def cascading_randomisation(model: nn.Module, seed: int = 0, *, blocks: bool = False,
                            same_seed: bool = False) -> Iterator[tuple[str, nn.Module]]:
    """(layer, model with that layer and every layer after it re-initialised), from the output layer
    back to the input one. Each yielded model is its own copy (the next one randomises one layer more);
    ``model`` is untouched. Layer i (in :func:`randomisable_layers` order) is re-initialised from
    ``seed + i``, so a layer gets the same fresh weights in both checks. ``blocks``: one step per group
    of :func:`randomisable_blocks` (named 'first .. last layer' of the group) instead of per layer.
    ``same_seed``: every layer re-initialised from ``seed`` itself (Quantus's MPRT seeds each layer with
    its seed + 1; the tests compare the two this way)."""
    groups = _groups(model, blocks)
    work = copy.deepcopy(model)
    with torch.random.fork_rng():
        for i in reversed(range(len(groups))):
            _reset(work, groups[i], seed if same_seed else seed + i)
            yield _label(groups[i]), copy.deepcopy(work)


def independent_randomisation(model: nn.Module, seed: int = 0, *, blocks: bool = False,
                              same_seed: bool = False) -> Iterator[tuple[str, nn.Module]]:
    """(layer, a copy of ``model`` with only that layer re-initialised from ``seed + i``), every layer in
    turn, output side first as :func:`cascading_randomisation` (``blocks``: one group at a time;
    ``same_seed``: as there)."""
    groups = _groups(model, blocks)
    with torch.random.fork_rng():
        for i in reversed(range(len(groups))):
            work = copy.deepcopy(model)
            _reset(work, groups[i], seed if same_seed else seed + i)
            yield _label(groups[i]), work


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
