"""Masking token patches in decoded images: CORTEX §4.3 (Fig. 3 image level, Table 2 concept level).

A token at grid position (i, j) of an m×m grid owns the (H/m)×(W/m) pixel patch below it. The
paper blacks those patches out and asks pretrained classifiers how much the true-class
probability drops.

- which positions: ``mask_top_n`` (T*_image), ``mask_random`` (Fig. 3 baseline),
  ``mask_token_set`` (T*_concept or a baseline id set, Table 2) → bool (B, m, m)
- pixels: ``position_mask_to_pixels``, ``mask_images(images, mask, fill)``
- sizes: ``scaled_n``, ``image_level_grid`` (the paper's n = 5..50 on a 16×16 grid, scaled)
- judging: ``evaluate_masked(predict_proba, images, labels, masks)``

Images are float (B, 3, H, W) in [-1, 1] (taming's convention) or uint8 (B, H, W, 3) (the image
store), as torch tensors or numpy arrays; every function returns what it was given.

Where we differ from the authors' scripts (REFERENCE.md): their image-level method masks every
patch whose *token id* is among the ids at the top-n positions, so it can mask more than n
patches while the random baseline masks exactly n. Our default ``mode="equal_area"`` masks exactly
the n positions; ``mode="token_ids"`` is theirs.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import numpy as np
import torch

from .saliency import positions_to_mask, top_n_positions

__all__ = [
    "Fill", "MaskMode", "position_mask_to_pixels", "mask_images", "mask_top_n", "mask_random",
    "mask_token_set", "background_tokens", "infill_tokens", "scaled_n", "image_level_grid", "evaluate_masked",
]

PAPER_N = tuple(range(5, 55, 5))   # Fig. 3: n = 5, 10, ..., 50 masked tokens on a 16×16 grid


class Fill(str, Enum):
    """What replaces a masked patch."""
    BLACK = "black"  # RGB 0: -1 in [-1, 1] floats, 0 in uint8 (paper and scripts)
    MEAN = "mean"    # the image's own per-channel mean colour
    BLUR = "blur"    # the same image under a strong Gaussian blur (kernel 2p+1, σ p/2; p = patch side)


class MaskMode(str, Enum):
    """How ``mask_top_n`` turns the n highest-TSV positions into a mask."""
    EQUAL_AREA = "equal_area"  # exactly those n positions (ours; same area as the random baseline)
    TOKEN_IDS = "token_ids"    # every position holding an id found at those n positions (scripts)


# ---------------------------------------------------------------------- pixels
def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def position_mask_to_pixels(mask: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Token-grid mask (B, m, m) → pixel mask (B, 1, H, W): each position covers an (H/m)×(W/m) patch."""
    H, W = _hw(image_size)
    m_h, m_w = mask.shape[-2:]
    if H % m_h or W % m_w:
        raise ValueError(f"image size {H}x{W} is not a multiple of the token grid {m_h}x{m_w}")
    px = mask.bool().repeat_interleave(H // m_h, dim=1).repeat_interleave(W // m_w, dim=2)
    return px[:, None]                                                  # (B, 1, H, W)


def _to_bchw(images: Any) -> tuple[torch.Tensor, bool, bool]:
    """(B,3,H,W) view of the images; whether they came as numpy, whether as (B,H,W,3) uint8."""
    is_np = isinstance(images, np.ndarray)
    # a read-only array (a memory-mapped image store) is copied: torch warns on read-only buffers
    x = torch.from_numpy(images if images.flags.writeable else images.copy()) if is_np else images
    if x.dim() != 4:
        raise ValueError(f"images must be 4-d, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2), is_np, True
    if not x.is_floating_point() or x.shape[1] != 3:
        raise ValueError(f"images must be float (B, 3, H, W) in [-1, 1] or uint8 (B, H, W, 3); "
                         f"got {x.dtype} {tuple(x.shape)}")
    return x, is_np, False


def _from_bchw(x: torch.Tensor, is_np: bool, hwc: bool) -> Any:
    if hwc:
        x = x.permute(0, 2, 3, 1)
    x = x.contiguous()
    return x.numpy() if is_np else x


def _fill_values(x: torch.Tensor, fill: Fill, patch: tuple[int, int]) -> torch.Tensor:
    """The fill, broadcastable to x (B, 3, H, W) and of x's dtype."""
    is_u8 = x.dtype == torch.uint8
    if fill is Fill.BLACK:
        return torch.tensor(0 if is_u8 else -1.0, dtype=x.dtype, device=x.device)
    xf = x.float() if is_u8 else x
    if fill is Fill.MEAN:
        v = xf.mean(dim=(2, 3), keepdim=True)                           # (B, 3, 1, 1)
    else:
        from torchvision.transforms.functional import gaussian_blur
        ph, pw = patch
        v = gaussian_blur(xf, kernel_size=[2 * pw + 1, 2 * ph + 1], sigma=[max(pw / 2, 0.5), max(ph / 2, 0.5)])
    return v.round().clamp(0, 255).to(torch.uint8) if is_u8 else v.to(x.dtype)


def mask_images(images: Any, mask: torch.Tensor, fill: str | Fill = Fill.BLACK) -> Any:
    """Replace the pixel patches of the masked token positions; every other pixel is untouched.

    Args:
        images: float (B, 3, H, W) in [-1, 1] or uint8 (B, H, W, 3); tensor or numpy array.
        mask: bool (B, m, m), True = mask that token's patch.
        fill: ``"black"`` (RGB 0, the paper), ``"mean"`` (the image's own per-channel mean) or
            ``"blur"`` (the image blurred with a Gaussian of kernel 2p+1 and σ p/2, p the patch
            side, pasted into the masked patches).

    Returns:
        A new array of the same type, dtype and layout. Pixels outside the masked patches are
        bit-identical to the input.
    """
    fill = Fill(fill)
    x, is_np, hwc = _to_bchw(images)
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape[0] != x.shape[0] or mask.dim() != 3:
        raise ValueError(f"mask must be (B={x.shape[0]}, m, m), got {tuple(mask.shape)}")
    H, W = x.shape[-2:]
    px = position_mask_to_pixels(mask, (H, W))                          # (B, 1, H, W)
    patch = (H // mask.shape[1], W // mask.shape[2])
    out = torch.where(px, _fill_values(x, fill, patch), x)              # (B, 3, H, W)
    return _from_bchw(out, is_np, hwc)


def background_tokens(tokens: Any, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the most common token id among its UNMASKED positions (ties: the smallest id; an
    image masked everywhere: its most common id overall) -- the in-fill token of the "token" fill.
    It is drawn from what the image still shows, so it adds nothing the classifier has not seen
    (no class-conditional prior, no other image). tokens (B, m, m) int, mask (B, m, m) bool -> (B,)."""
    t = _long(tokens).flatten(1)                                          # (B, m²)
    keep = ~torch.as_tensor(mask, device=t.device).bool().flatten(1)      # (B, m²)
    keep = torch.where(keep.any(1, keepdim=True), keep, torch.ones_like(keep))
    B, K = t.shape[0], int(t.max()) + 1 if t.numel() else 1
    counts = torch.zeros(B, K, dtype=torch.long, device=t.device)
    counts.scatter_add_(1, t, keep.long())                                # (B, K) unmasked count per id
    return counts.argmax(1)                                               # first maximum = smallest id


def infill_tokens(tokens: Any, mask: torch.Tensor, fill_token: Any, K: int | None = None) -> torch.Tensor:
    """Token in-fill, the VQ model's own removal: replace the masked positions' token ids by
    ``fill_token`` (an int for every image, or (B,) one per image: a background token, the prior's
    most likely token) and leave every other id as it is. Decoding the result gives an image with
    the patches removed *by the model* (no black square the classifier has never seen; ROAD-style).

    tokens (B, m, m) int, mask (B, m, m) bool -> (B, m, m) int64.
    """
    t = _long(tokens)
    mask = torch.as_tensor(mask, device=t.device).bool()
    if mask.shape != t.shape:
        raise ValueError(f"mask must have the token grid's shape {tuple(t.shape)}, got {tuple(mask.shape)}")
    fill = torch.as_tensor(fill_token, dtype=torch.long, device=t.device)
    if fill.dim() not in (0, 1) or (fill.dim() == 1 and fill.shape[0] != t.shape[0]):
        raise ValueError(f"fill_token must be one id or one per image ({t.shape[0]}), got shape {tuple(fill.shape)}")
    if K is not None and fill.numel() and (int(fill.min()) < 0 or int(fill.max()) >= K):
        raise ValueError(f"fill_token ids must lie in [0, K = {K}), got {fill.tolist()}")
    fill = fill.view(-1, 1, 1) if fill.dim() == 1 else fill                 # broadcast over (m, m)
    return torch.where(mask, fill, t)


# ---------------------------------------------------------------------- which positions
def _long(x: Any) -> torch.Tensor:
    """int64 tensor from a tensor or numpy array (uint16 token stores included)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.astype(np.int64, copy=False))
    return torch.as_tensor(x).long()


def mask_top_n(tokens: torch.Tensor, tsv: torch.Tensor, n: int,
               mode: str | MaskMode = MaskMode.EQUAL_AREA) -> torch.Tensor:
    """T*_image as a mask, (B, m, m) bool.

    ``"equal_area"`` (default) masks exactly the n highest-TSV positions (ties by lower flat
    position, see ``saliency.top_n_positions``). ``"token_ids"`` (the scripts) masks every position
    whose token id is among the ids at those n positions: a superset, possibly larger than n.
    """
    mode = MaskMode(mode)
    m = tsv.shape[-1]
    pos = top_n_positions(tsv, n)                                       # (B, n)
    if mode is MaskMode.EQUAL_AREA:
        return positions_to_mask(pos, m)
    flat = _long(tokens).to(tsv.device).flatten(1)                      # (B, m·m)
    ids = flat.gather(1, pos)                                           # (B, n)
    return (flat[:, :, None] == ids[:, None, :]).any(-1).view(-1, m, m)


def mask_random(B: int, m: int, n: int, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Exactly n uniformly random positions per image, (B, m, m) bool (the Fig. 3 baseline).

    One argsort of (B, m·m) uniform draws; ``generator`` (on ``device``) makes it reproducible.
    """
    if not 0 <= n <= m * m:
        raise ValueError(f"n must be in [0, m·m = {m * m}], got {n}")
    r = torch.rand(B, m * m, generator=generator, device=device)
    return positions_to_mask(r.argsort(dim=1)[:, :n], m)


def mask_token_set(tokens: Any, labels: Any, concept: torch.Tensor, K: int | None = None) -> torch.Tensor:
    """Every position whose token id is in the set of the image's class, (B, m, m) bool (Table 2).

    Args:
        tokens: (B, m, m) ids; labels: (B,) classes.
        concept: (n_classes, k) ids per class (T*_concept or a baseline), -1 = padding (ignored).
        K: codebook size; default: large enough for the ids present.

    Builds an (n_classes, K) membership table once and indexes it with (label, id).
    """
    tokens = _long(tokens)
    labels, concept = _long(labels).to(tokens.device), _long(concept).to(tokens.device)
    if K is None:
        K = int(max(tokens.max().item() if tokens.numel() else 0, concept.max().item() if concept.numel() else 0)) + 1
    n_classes = concept.shape[0]
    hi = max(int(tokens.max()) if tokens.numel() else 0, int(concept.max()) if concept.numel() else 0)
    if (tokens.numel() and int(tokens.min()) < 0) or hi >= K:
        raise ValueError(f"token ids must lie in [0, K = {K}), found max {hi}; pass the codebook size")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) (the rows of concept); got max {int(labels.max())}")
    table = torch.zeros(n_classes, K, dtype=torch.bool, device=tokens.device)     # (n_classes, K)
    rows = torch.arange(n_classes, device=tokens.device)[:, None].expand_as(concept)
    valid = concept >= 0
    table[rows[valid], concept[valid]] = True
    return table[labels[:, None, None], tokens]                          # (B, m, m)


# ---------------------------------------------------------------------- sizes
def scaled_n(n_paper: int, m: int, paper_m: int = 16) -> int:
    """The paper's count of masked tokens on a 16×16 grid scaled to an m×m grid (same fraction).

    round(n_paper · m² / paper_m²), rounding halves UP (exact integer arithmetic; Python's
    ``round`` would send 2.5 to 2), and at least 1. m = 8: 5 → 1, 10 → 3, 20 → 5, 50 → 13.
    """
    num, den = n_paper * m * m, paper_m * paper_m
    return max(1, (2 * num + den) // (2 * den))


def image_level_grid(m: int, paper_m: int = 16) -> list[int]:
    """Fig. 3's n = 5, 10, ..., 50 scaled to an m×m grid, deduplicated and sorted.

    m = 16: [5, 10, ..., 50]; m = 8: [1, 3, 4, 5, 6, 8, 9, 10, 11, 13]; m = 4: [1, 2, 3].
    """
    return sorted({scaled_n(n, m, paper_m) for n in PAPER_N})


# ---------------------------------------------------------------------- judging
def evaluate_masked(
    predict_proba: Callable[[Any], Any],
    images: Any,
    labels: Any,
    masks: torch.Tensor,
    batch_size: int = 64,
    fill: str | Fill = Fill.BLACK,
) -> dict[str, np.ndarray]:
    """Mask each image's patches, classify, and return per-image results as numpy arrays.

    Args:
        predict_proba: callable mapping a batch of images (the type ``images`` has) to class
            probabilities (b, C).
        images: float (B, 3, H, W) in [-1, 1] or uint8 (B, H, W, 3).
        labels: (B,) true classes. masks: (B, m, m) bool (all False = the unmasked reference).
        batch_size: images per call of ``predict_proba``. fill: as ``mask_images``.

    Returns:
        ``{"p_true": (B,) float, "correct": (B,) bool (argmax == label), "pred": (B,) int (argmax),
        "n_masked": (B,) int}``.
    """
    labels_t = _long(labels)
    masks = torch.as_tensor(masks).bool()
    B = labels_t.shape[0]
    if len(images) != B or masks.shape[0] != B:
        raise ValueError(f"images ({len(images)}), labels ({B}) and masks ({masks.shape[0]}) must have the same length")
    p_true, correct, pred = [], [], []
    with torch.no_grad():
        for s in range(0, B, batch_size):
            masked = mask_images(images[s:s + batch_size], masks[s:s + batch_size], fill)
            probs = predict_proba(masked)                               # (b, C)
            p = probs.detach() if torch.is_tensor(probs) else torch.as_tensor(np.asarray(probs))
            y = labels_t[s:s + batch_size].to(p.device)
            p_true.append(p.gather(1, y[:, None]).squeeze(1).double().cpu())
            pred.append(p.argmax(1).cpu())
            correct.append((pred[-1] == y.cpu()))
    return {
        "p_true": torch.cat(p_true).numpy() if p_true else np.zeros(0),
        "correct": torch.cat(correct).numpy() if correct else np.zeros(0, dtype=bool),
        "pred": torch.cat(pred).numpy() if pred else np.zeros(0, dtype=np.int64),
        "n_masked": masks.flatten(1).sum(1).numpy(),
    }
