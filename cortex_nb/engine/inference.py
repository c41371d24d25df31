"""Batches and inference for any classifier, shared by the fit loop and every evaluation.

- :func:`iter_batches` — (x, y) batches from a tensor pair, a Dataset or a DataLoader, in the fit
  loop's order (one ``randperm`` per epoch, consecutive slices);
- :func:`eval_mode` — evaluation mode for a block, every submodule's own mode restored after;
- :func:`predict_logits`, :func:`evaluate`, :func:`topk_accuracy` — batched logits, mean loss and
  accuracy, top-k hits (Table 1 of the paper reports k = 1, 3, 5, 10).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["Transform", "as_tensor", "is_tensor_pair", "n_items", "check_pair", "iter_batches", "to_device",
           "loss_logits", "topk_accuracy", "eval_mode", "predict_logits", "evaluate", "evaluate_sums",
           "model_device"]


Transform = Callable[[torch.Tensor], torch.Tensor]


def as_tensor(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.as_tensor(a)


def is_tensor_pair(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, Dataset)


def n_items(data: Any) -> int | None:
    if is_tensor_pair(data):
        return len(data[0])
    try:
        return len(data.dataset) if isinstance(data, DataLoader) else len(data)
    except TypeError:
        return None


def check_pair(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (as_tensor(data[0]), as_tensor(data[1]))
    if len(x) != len(y):
        raise ValueError(f"{what}: x has {len(x)} items but y has {len(y)}")
    if y.dtype.is_floating_point:
        raise ValueError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    return x, y


def iter_batches(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield CPU (or wherever the data lives) batches ``(x, y)``.

    Tensor pairs and map-style Datasets: ``perm = torch.randperm(n, generator=generator)`` once
    per epoch, then consecutive slices of ``batch_size`` indices (the last batch may be smaller).
    A DataLoader is iterated as it is (its own sampler decides the order; checkpoints keep
    its ``generator=`` state when it has one, and torch's global RNG, which it uses otherwise).
    """
    if is_tensor_pair(data):
        x, y = check_pair(data, "data")
        n = len(x)
        if shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = None
        for step, start in enumerate(range(0, n, batch_size)):
            if max_steps is not None and step >= max_steps:
                return
            if order is None:
                yield x[start : start + batch_size], y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]
        return
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset):
        # same order as the tensor fast path: one randperm per epoch, consecutive slices
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        loader = DataLoader(data, batch_sampler=[
            order[i : i + batch_size].tolist() for i in range(0, n, batch_size)
        ])
    else:
        raise TypeError(
            "data must be a tuple (x, y) of tensors/arrays, a torch Dataset or a DataLoader; "
            f"got {type(data).__name__}"
        )
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("each batch of a Dataset/DataLoader must be (x, y, ...)")
        yield batch[0], batch[1]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True)


def loss_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits as the loss sees them: half / bfloat16 (autocast) upcast to float32, float32 and
    float64 as they are, so a float64 model trains and is scored in float64 throughout."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 3, 5, 10)
) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest logits, for each ``k``.

    Table 1 of the paper reports k = 1, 3, 5, 10. ``k`` larger than the number of classes
    counts every row as correct. Ties between logits are broken by ``torch.topk``.
    """
    logits = as_tensor(logits)
    labels = as_tensor(labels).long().to(logits.device)
    if logits.ndim != 2 or labels.ndim != 1 or len(labels) != len(logits):
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n, c = logits.shape
    if n == 0:
        raise ValueError("topk_accuracy of an empty batch")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]")
    kmax = min(max(ks), c)
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hit = top == labels[:, None]
    cum = hit.cumsum(dim=1).clamp_(max=1).float().mean(dim=0)  # acc@1..kmax
    return {int(k): float(cum[min(k, c) - 1]) for k in ks}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every submodule gets back the mode it
    had (also when a caller keeps some submodules, e.g. frozen BatchNorm, in eval mode)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in zip(model.modules(), modes):
            m.training = was_training


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Any,
    transform: Transform | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Logits of ``model`` for every item of ``x`` (tensor/array, or Dataset yielding (x, y)).

    Batched, no grad, eval mode (the model's train/eval mode is restored afterwards). The
    result is a float tensor on the CPU, rows in input order.
    """
    device = torch.device(device) if device is not None else model_device(model)
    outs = []
    with eval_mode(model):
        if isinstance(x, (Dataset, DataLoader)):
            it = (xb for xb, _ in iter_batches(x, batch_size, shuffle=False))
        else:
            xt = as_tensor(x)
            it = (xt[i : i + batch_size] for i in range(0, len(xt), batch_size))
        for xb in it:
            xb = to_device(xb, device)
            if transform is not None:
                xb = transform(xb)
            outs.append(model(xb).float().cpu())
    if not outs:
        raise ValueError("predict_logits got no items")
    return torch.cat(outs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    transform: Transform | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``data`` (batched, no grad, eval).

    Non-finite per-sample losses are kept (the mean is then NaN/Inf): evaluation hides nothing.
    """
    loss_sum, correct, n = evaluate_sums(model, data, transform, batch_size, device)
    if n == 0:
        raise ValueError("evaluate got no items")
    return loss_sum / n, correct / n


@torch.no_grad()
def evaluate_sums(model, data, transform, batch_size, device) -> tuple[float, int, int]:
    """(sum of cross-entropy, correct count, item count) of ``model`` on ``data``."""
    device = torch.device(device) if device is not None else model_device(model)
    loss_sum, correct, n = 0.0, 0, 0
    with eval_mode(model):
        for xb, yb in iter_batches(data, batch_size, shuffle=False):
            xb, yb = to_device(xb, device), to_device(yb, device).long()
            if transform is not None:
                xb = transform(xb)
            logits = loss_logits(model(xb))
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
            n += len(yb)
    return loss_sum, correct, n


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
