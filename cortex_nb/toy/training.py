"""What the two toy VQGM training loops share (PAPER.md §2.1, the toy stand-in for §4.1.1's model).

:mod:`cortex_nb.toy.tokenizer` and :mod:`cortex_nb.toy.prior` both train resumably on this CPU:
seeds derived from (seed, step, purpose), linear warmup + cosine learning rate, bf16 autocast where
the hardware has it, a checkpoint keyed by every setting (:data:`RECIPE_VERSION` included) that a
later call resumes from, and one rule for when a step is logged and checkpointed
(:func:`end_step`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io.files import progress

__all__ = ["RECIPE_VERSION", "config_dict", "step_seed", "lr_at", "bf16_ok",
           "load_state", "step_bar", "end_step"]

logger = logging.getLogger(__name__)

#: bump when the training code changes in a way that changes the trained weights: cached
#: builds and training checkpoints made by another recipe are then rebuilt, never reused.
RECIPE_VERSION = 1


def config_dict(cfg: Any) -> dict:
    """A config dataclass as a JSON-able dict (tuples as lists), for cache keys and reports."""
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def step_seed(seed: int, step: int, what: int) -> int:
    """The seed of one purpose (``what``: 1 tokenizer batches, 2 k-means and restarts, 3 prior epochs,
    4 prior images, 5 report images) at one step, derived from the run's ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(what), int(step)]).generate_state(1)[0])


def lr_at(step: int, lr: float, warmup: int, total: int, min_frac: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from lr to lr * min_frac at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def bf16_ok(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16 /
    AMX as oneDNN reports it); elsewhere it would be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def load_state(path: Path, key: str) -> dict | None:
    """A training checkpoint written by :func:`cortex_nb.io.files.save_torch`, if it exists and belongs to ``key``."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken file means: start over
        logger.warning("ignoring unreadable training checkpoint %s (%s); starting over", path, exc)
        return None
    if state.get("key") != key:
        logger.info("training checkpoint %s belongs to other settings; starting over", path)
        return None
    return state


def step_bar(total: int, initial: int, desc: str, enabled: bool):
    """A step bar (:func:`cortex_nb.io.files.progress`), or None when disabled."""
    if not enabled or os.environ.get("CORTEX_PROGRESS", "").lower() == "off":
        return None
    return progress(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def end_step(step: int, cfg, stats: Callable[[], dict], history: list, bar, callback,
             save: Callable[[], None], postfix: Callable[[dict], dict]) -> None:
    """After optimizer step ``step`` (counted from 1) of either toy loop: every ``cfg.log_every``
    steps and at the last one append ``stats()`` to history, show ``postfix(stats)`` on the bar and
    call ``callback(step, stats)``; advance the bar; every ``cfg.ckpt_every`` steps and at the
    last one ``save()``."""
    if step % cfg.log_every == 0 or step == cfg.steps:
        row = stats()
        history.append(row)
        if bar is not None:
            bar.set_postfix(**postfix(row))
        if callback is not None:
            callback(step, row)
    if bar is not None:
        bar.update(1)
    if step % cfg.ckpt_every == 0 or step == cfg.steps:
        save()
