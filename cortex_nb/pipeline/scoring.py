"""Every evaluator on masked images, the measurement behind Fig. 3 (section 03), Table 2 (04), the faithfulness
curves (07) and the atlas: patches removed by a fill (black / mean / blur pixels, or the VQGM's own token in-fill),
each masked batch shown once to every evaluator."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from ..method import masking

__all__ = ["fill_of", "masked_images", "score_masked"]


def fill_of(cfg: DictConfig, fill: str | None = None) -> str:
    """The fill to use: ``fill`` or the profile's headline ``saliency.fill``."""
    return str(fill or cfg.saliency.fill)


def masked_images(images, masks, fill: str, tokens=None, vqgm=None, batch_size: int = 256):
    """``images`` (B, H, W, 3) uint8 with the patches of ``masks`` (B, m, m) removed by ``fill``:
    black / mean / blur replace pixels (:func:`cortex_nb.method.masking.mask_images`); "token" replaces
    the masked token ids by each image's most common unmasked id
    (:func:`~cortex_nb.method.masking.background_tokens`) and decodes the grid with the VQGM -- the
    model's own removal (ROAD-style), which needs ``tokens`` (B, m, m) and ``vqgm``."""
    from ..io.figures import to_uint8

    masks = torch.as_tensor(masks).bool()
    if fill != "token":
        return masking.mask_images(images, masks, fill)
    if tokens is None or vqgm is None:
        raise ValueError("the token fill needs the images' tokens and the VQGM that decodes them")
    out = np.array(images, copy=True)
    rows = torch.nonzero(masks.flatten(1).any(1)).squeeze(1)            # images with something masked
    t = torch.as_tensor(tokens).long()
    for s in range(0, len(rows), batch_size):
        r = rows[s:s + batch_size]
        filled = masking.infill_tokens(t[r], masks[r], masking.background_tokens(t[r], masks[r]))
        with torch.no_grad():
            out[r.numpy()] = to_uint8(vqgm.decode(filled.to(vqgm.device)))
    return out


def score_masked(cfg: DictConfig, evaluators: dict, images, labels, masks, *, fill: str | None = None,
                 tokens=None, vqgm=None, batch_size: int = 256, base: dict | None = None) -> dict[str, dict]:
    """``{evaluator: {"p_true", "correct", "pred", "n_masked"}}`` (each (B,)) on ``images`` (B, H, W, 3)
    with the patches of ``masks`` (B, m, m) removed by ``fill`` (default: the profile's headline
    ``saliency.fill``; "token" needs the images' ``tokens`` and the ``vqgm``, see :func:`masked_images`).
    Batched: each batch is masked (or in-filled and decoded) once and shown to every evaluator.

    ``base``: this function's result on the same images unmasked. With it, only the images the mask
    changes are shown to the evaluators; an image with nothing masked takes its unmasked result
    (ΔP exactly 0, as it is: the image is the same). A concept set masks nothing in many images."""
    fill = fill_of(cfg, fill)
    masks = torch.as_tensor(masks).bool()
    labels = np.asarray(labels)
    n_masked = masks.flatten(1).sum(1).numpy()
    rows = np.flatnonzero(n_masked > 0) if base is not None else np.arange(len(labels))
    parts: dict[str, list] = {name: [] for name in evaluators}
    for s in range(0, len(rows), batch_size):
        r = rows[s:s + batch_size]
        shown = masked_images(np.asarray(images)[r], masks[r], fill, None if tokens is None else tokens[r], vqgm)
        none = torch.zeros_like(masks[r])
        for name, e in evaluators.items():
            parts[name].append(masking.evaluate_masked(e.predict_proba, shown, labels[r], none, batch_size=batch_size))
    out = {}
    for name, rs in parts.items():
        if base is None:
            res = {k: np.concatenate([x[k] for x in rs]) for k in ("p_true", "correct", "pred")}
        else:
            res = {k: np.array(base[name][k], copy=True) for k in ("p_true", "correct", "pred")}
            for k in res:
                if len(rows):
                    res[k][rows] = np.concatenate([x[k] for x in rs])
        out[name] = res | {"n_masked": n_masked}
    return out
