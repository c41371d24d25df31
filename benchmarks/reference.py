"""The authors' algorithms, re-implemented from their description (REFERENCE.md), FOR COMPARISON ONLY.

Nothing in the pipeline calls this module. It exists so that ``benchmarks/`` can time our batched
code against the way the authors' scripts compute the same numbers, on the same inputs, and so
that ``tests/test_reference.py`` can check that both give the same results. It was written from
REFERENCE.md's description of the scripts' behaviour, not from their code.

- :func:`tsv_reference` — the scripts' token saliency: per batch of 25 a batch-wide σ, a loop
  over the noise samples and inside it a loop over the batch with one ``autograd.grad`` per sample
  (``create_graph=True``): B·N backward passes. Ours: ``TokenSaliency.reference(f).attribute``
  (one backward pass for all B·N noisy copies).
- :func:`mask_image_pil` / :func:`evaluate_masked_reference` — the scripts' image-level evaluation:
  one image at a time through PIL (black rectangles, PIL resize, ToTensor + Normalize, one forward
  pass each). Ours: ``masking.evaluate_masked`` (batched tensors).
- :func:`sample_uncached` — taming's own uncached sampler
  (``Net2NetTransformer.sample``: the whole prefix is re-run at every position). Ours:
  ``VQGM.sample`` (taming's KV-cached ``sample_with_past``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cortex_nb.engine.inference import eval_mode

__all__ = ["evaluate_masked_reference", "mask_image_pil", "sample_uncached", "tsv_reference"]


# ---------------------------------------------------------------------- TSV (the scripts' loop)
def tsv_reference(
    f: nn.Module,
    E: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    n_samples: int = 20,
    alpha: float = 0.2,
    batch_size: int = 25,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The authors' token saliency values, (B, m, m). For comparison only (slow on purpose).

    For each batch of ``batch_size`` embeddings: σ = α (max − min) over the whole batch; for each
    of the N noise samples one forward pass of the noisy batch, then one ``autograd.grad`` of each
    sample's target-class logit (pre-softmax) w.r.t. the noisy batch, ``create_graph=True``, keeping
    that sample's own row. The N gradients are averaged and reduced by the signed max over the d
    channels. f runs in eval mode (its modes are restored afterwards).

    Args:
        f: extractor, E (B, d, m, m) → logits (B, C).
        E: embeddings (B, d, m, m); any B (split into batches of ``batch_size``).
        target: class index, or one per embedding (B,).
        noise: standard-normal draws z (N, B, d, m, m); noise = σ · z. If None, drawn once as
            ``torch.randn((N, B, d, m, m), generator=generator)`` — the draw
            ``TokenSaliency.attribute_grad`` makes, so with B ≤ ``batch_size`` and the same
            generator state both see the same noise.
    """
    if E.dim() != 4:
        raise ValueError(f"E must be (B, d, m, m), got shape {tuple(E.shape)}")
    E = E.detach()
    B, N = E.shape[0], int(n_samples)
    t = torch.as_tensor(target, dtype=torch.long, device=E.device)
    t = t.expand(B) if t.dim() == 0 else t
    if t.shape != (B,):
        raise ValueError(f"target must be an int or have shape ({B},), got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn((N, *E.shape), generator=generator, dtype=E.dtype, device=E.device)
    if noise.shape != (N, *E.shape):
        raise ValueError(f"noise must have shape {(N, *E.shape)}, got {tuple(noise.shape)}")

    out_tsv = []
    with eval_mode(f), torch.enable_grad():
        for s in range(0, B, batch_size):
            Eb, zb, tb = E[s:s + batch_size], noise[:, s:s + batch_size], t[s:s + batch_size]
            sigma = alpha * (Eb.max() - Eb.min())                      # one σ for the whole batch
            grad = torch.zeros_like(Eb)
            for i in range(N):                                          # loop over noise samples
                X = (Eb + sigma * zb[i]).requires_grad_(True)
                logits = f(X)
                for b in range(Eb.shape[0]):                            # one backward per sample
                    (g,) = torch.autograd.grad(logits[b, tb[b]], X, create_graph=True)
                    grad[b] += g[b].detach()
                del logits, X
            out_tsv.append((grad / N).amax(dim=1))                      # signed max over channels
    return torch.cat(out_tsv) if out_tsv else E.new_zeros(0, *E.shape[2:])


# ---------------------------------------------------------------------- masking through PIL
def mask_image_pil(image: np.ndarray, mask: Any):
    """One uint8 (H, W, 3) image → a PIL image with the patches of the masked positions black.

    ``mask`` (m, m) bool; position (i, j) owns pixel rows i·H/m … (i+1)·H/m − 1 and the same for
    columns (RGB 0, 0, 0, as the scripts paint them). For comparison only.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    mask = np.asarray(mask, dtype=bool)
    m_h, m_w = mask.shape
    W, H = img.size
    ph, pw = H // m_h, W // m_w
    draw = ImageDraw.Draw(img)
    for i, j in zip(*np.nonzero(mask)):
        draw.rectangle([int(j) * pw, int(i) * ph, (int(j) + 1) * pw - 1, (int(i) + 1) * ph - 1], fill=(0, 0, 0))
    return img


def evaluate_masked_reference(
    model: nn.Module,
    images: np.ndarray,
    labels: Any,
    masks: Any,
    *,
    size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """The scripts' image-level evaluation, one image at a time. For comparison only.

    Per image: PIL image from the uint8 array, black out the masked patches
    (:func:`mask_image_pil`), resize to ``size`` = (h, w) with PIL bilinear (PIL returns a copy
    when the size is already right), ``ToTensor`` + ``Normalize(mean, std)``, one forward pass of
    a batch of one, softmax.

    Args:
        model: a classifier on normalised (1, 3, h, w) tensors, or a ``cortex_nb.method.evaluators.Evaluator``
            (then its ``.model`` is used and ``size``/``mean``/``std`` default to its spec; its
            ``resize`` must be an exact (h, w), as the toy evaluators' and the ``"reference"``
            ImageNet preprocessing are).
        images: uint8 (B, H, W, 3). labels: (B,). masks: bool (B, m, m).

    Returns:
        As ``masking.evaluate_masked``: ``{"p_true", "correct", "n_masked"}``.
    """
    from torchvision.transforms import functional as TF

    net = model
    spec = getattr(model, "spec", None)
    if spec is not None:
        net = model.model
        if size is None:
            r = spec.get("resize")
            if not isinstance(r, (list, tuple)) or spec.get("crop") is not None:
                raise ValueError(f"evaluator {spec.get('name')!r} resizes the short side and crops "
                                 f"(resize={r}, crop={spec.get('crop')}); pass size=(h, w) explicitly")
            size = (int(r[0]), int(r[1]))
        mean = spec["mean"] if mean is None else mean
        std = spec["std"] if std is None else std
    if size is None or mean is None or std is None:
        raise ValueError("size, mean and std are required unless model is an Evaluator")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    labels = np.asarray(labels).astype(np.int64)
    masks = np.asarray(masks, dtype=bool)
    h, w = size
    device = next(net.parameters()).device
    p_true, correct = [], []
    with eval_mode(net), torch.no_grad():
        for i in range(len(images)):                                    # one image at a time, as the scripts
            img = mask_image_pil(images[i], masks[i])
            if img.size != (w, h):
                img = img.resize((w, h), resample=2)                   # PIL.Image.BILINEAR
            x = TF.normalize(TF.to_tensor(img), list(mean), list(std))
            p = net(x[None].to(device)).float().softmax(1)[0].cpu()
            p_true.append(float(p[labels[i]]))
            correct.append(bool(int(p.argmax()) == labels[i]))
    return {"p_true": np.asarray(p_true, dtype=np.float64), "correct": np.asarray(correct, dtype=bool),
            "n_masked": masks.reshape(len(masks), -1).sum(1)}


# ---------------------------------------------------------------------- sampling without a KV cache
def sample_uncached(vqgm, labels: Any, *, temperature: float = 1.0, top_k: int | None = 1,
                    sample: bool = False) -> torch.Tensor:
    """Class-conditional tokens (B, m, m) from taming's uncached ``Net2NetTransformer.sample``.

    Every step re-runs the transformer on the whole prefix (no KV cache). ``sample=False`` with
    the default ``top_k=1`` is greedy decoding, which ``VQGM.sample(labels, top_k=1)`` must
    reproduce exactly. For comparison only.
    """
    y = vqgm._labels(labels).to(vqgm.device)
    model = vqgm.model
    with torch.no_grad():
        _, c_idx = model.encode_to_c(y)                                # (B, 1) class tokens
        x0 = c_idx[:, :0]                                              # empty prefix of image tokens
        x = model.sample(x0, c_idx, steps=vqgm.m * vqgm.m, temperature=temperature, sample=sample,
                         top_k=top_k)
        x = model.permuter(x, reverse=True)
    return x.reshape(-1, vqgm.m, vqgm.m).to(torch.int64)
