"""Live intervention on one image (issue #15): edit its token grid or its patches, decode, and judge.

The token browser's intervention panel calls these; they are plain functions of a VQGM, the evaluators and
an information extractor, so a notebook (or a test) gets the same numbers the panel shows.

- :func:`edit_image` -- remove the patches of some grid cells (``black`` / ``mean`` fill, as the masking of
  §4.3 does) or replace their tokens with a chosen id (``token``: the grid is edited, then decoded);
- :func:`swap_tokens` -- one id replaced by another everywhere in a batch of grids;
- :func:`judge` -- every evaluator's P(true class) and P(target class) and prediction for images, and the
  extractor's on their token grids (a pixel-space edit is re-encoded to tokens first: the extractor reads
  tokens, so it sees what the VQGM's encoder makes of the edited image);
- :func:`edit_toward` -- the Gumbel token selection of §3.4 for one image and a target class, in a region
  (:func:`cortex_nb.method.optimize.select_tokens`, with a per-step callback for a progress bar).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from . import masking
from ..io.figures import to_uint8

__all__ = ["MODES", "edit_image", "swap_tokens", "judge", "edit_toward"]

MODES = ("black", "mean", "token")


def _check_cells(cells: Any, m: int) -> torch.Tensor:
    c = torch.as_tensor(np.asarray(cells), dtype=torch.bool)
    if tuple(c.shape) != (m, m):
        raise ValueError(f"cells must be a ({m}, {m}) bool grid, got {tuple(c.shape)}")
    return c


def edit_image(vqgm, tokens: Any, image: Any, cells: Any, mode: str = "black", token: int | None = None
               ) -> tuple[torch.Tensor, np.ndarray]:
    """One image's edit: tokens (m, m) ids, image (H, W, 3) uint8 (its decoding), cells (m, m) bool.
    ``black`` / ``mean``: the cells' patches filled in pixel space (``masking.mask_images``), the grid re-encoded
    by the VQGM; ``token``: the cells' ids set to ``token``, the grid decoded. Returns (tokens (m, m) int64,
    image (H, W, 3) uint8). No cell selected: the inputs unchanged."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    m = int(vqgm.m)
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    cells = _check_cells(cells, m)
    image = np.asarray(image)
    if not cells.any():
        return tokens.clone(), image.copy()
    if mode == "token":
        if token is None or not 0 <= int(token) < int(vqgm.K):
            raise ValueError(f"mode 'token' needs a token id in [0, K = {vqgm.K}), got {token!r}")
        new = tokens.clone()
        new[cells] = int(token)
        return new, to_uint8(vqgm.decode(new[None]))[0]
    shown = masking.mask_images(image[None], cells[None], mode)[0]
    from ..toy.world import to_tensor   # uint8 (B, H, W, 3) -> taming's [-1, 1] (B, 3, H, W)

    return vqgm.encode(to_tensor(shown[None]).to(vqgm.device))[0].cpu().long(), shown


def swap_tokens(tokens: Any, old: int, new: int, K: int) -> torch.Tensor:
    """Every position holding ``old`` set to ``new``, in grids (..., m, m); ids checked against K."""
    for name, v in (("old", old), ("new", new)):
        if not 0 <= int(v) < int(K):
            raise ValueError(f"{name} token must lie in [0, K = {K}), got {v}")
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long).clone()
    t[t == int(old)] = int(new)
    return t


@torch.no_grad()
def judge(evaluators: dict, extractor, codebook: torch.Tensor, images: Any, tokens: Any, true: Any,
          target: Any = None) -> dict:
    """What the panel shows for images (B, H, W, 3) uint8 and their token grids (B, m, m): per evaluator
    ``{"p_true", "p_target", "pred"}`` (each (B,)), and the same for the extractor (key ``"extractor"``) on the
    embedded grids. ``target`` None: p_target is NaN."""
    images = np.asarray(images)
    true = np.broadcast_to(np.asarray(true, dtype=np.int64), (len(images),))
    rows = np.arange(len(images))
    out = {}

    def entry(p: torch.Tensor) -> dict:
        p = p.cpu().double().numpy()
        return {"p_true": p[rows, true], "pred": p.argmax(1),
                "p_target": p[rows, np.broadcast_to(np.asarray(target, dtype=np.int64), (len(images),))]
                if target is not None else np.full(len(images), np.nan)}

    for name, ev in evaluators.items():
        out[name] = entry(ev.predict_proba(images))
    if extractor is not None:
        t = torch.as_tensor(np.asarray(tokens), dtype=torch.long).to(codebook.device)
        E = codebook[t].permute(0, 3, 1, 2).contiguous()
        was = extractor.training
        extractor.eval()
        try:
            out["extractor"] = entry(extractor(E).softmax(1))
        finally:
            extractor.train(was)
    return out


def edit_toward(extractor, codebook: torch.Tensor, tokens: Any, region: Any, target: int, *, steps: int,
                lr: float = 0.01, tau: float = 1.0, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Gumbel token selection (§3.4) turning one grid (m, m) toward ``target`` within ``region`` (m, m) bool;
    returns the edited grid (m, m) int64 (the argmax-P tokens after ``steps`` steps). ``progress(step,
    steps)`` is called after every step (a progress bar)."""
    from .optimize import select_tokens

    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    region = _check_cells(region, t.shape[-1])
    if not region.any():
        raise ValueError("the region selects no cell")
    cb = (lambda i, row: progress(i + 1, steps)) if progress is not None else None
    res = select_tokens(extractor, t[None].to(codebook.device), codebook, region.to(codebook.device), int(target),
                        steps=int(steps), lr=lr, tau=tau, seed=seed, callback=cb)
    return res.tokens[0].cpu().long()
