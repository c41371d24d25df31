"""Token saliency values, CORTEX §3.3, eq. 4–6 (T*_image, T*_concept) and the §4.3 baselines.

- ``TokenSaliency(f).attribute(E, target)`` → TSV (B, m, m)  (eq. 4 SmoothGrad, eq. 5 channel max)
- ``top_n_positions(tsv, n)`` → the n highest-TSV positions of each image (T*_image, eq. 6)
- ``concept_tokens(tokens, labels, top_positions, n_classes, K, k)`` → T*_concept (eq. 6)
- ``frequency_baseline`` (the paper's Table 2 baseline), ``class_vs_rest_baseline`` (ours)
- ``token_class_usage`` → (n_classes, K) counts, shared with the token browser

Where we differ from the authors' scripts (REFERENCE.md), the paper is the default and the
scripts' behaviour is a named mode: σ per embedding (eq. 4) vs over the whole batch
(``sigma="batch"``), and max |·| over channels (eq. 5) vs the signed max
(``reduce="signed_max"``). ``TokenSaliency.reference(f)`` selects both.

Batching: the N noise samples are folded into the batch (N·B rows, chunked by ``chunk_size``)
and one backward pass of the *sum* of the target outputs gives every row's own gradient. That is
exact because an extractor in eval mode maps each row independently (BatchNorm uses running
statistics, dropout is off); the scripts' B·N per-sample backward passes give the same numbers
(tests/test_saliency.py checks both this and captum's ``NoiseTunnel(Saliency(f))``).
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.inference import eval_mode

__all__ = [
    "TokenSaliency", "Sigma", "Reduce", "Output",
    "top_n_positions", "positions_to_mask",
    "concept_tokens", "frequency_baseline", "class_vs_rest_baseline", "class_vs_rest_scores", "token_class_usage",
]


class Sigma(str, Enum):
    """How σ of the SmoothGrad noise is measured (σ = α · (max E − min E))."""
    PER_EMBEDDING = "per_embedding"  # max/min over each embedding's own d·m·m values (paper, eq. 4)
    BATCH = "batch"                  # one σ from the whole batch (the authors' scripts)


class Reduce(str, Enum):
    """How the d channels of the mean gradient become one score per token (eq. 5)."""
    ABS_MAX = "abs_max"        # max_j |∇E(j, p)|  (paper, eq. 5)
    SIGNED_MAX = "signed_max"  # max_j ∇E(j, p)    (the authors' scripts)


class Output(str, Enum):
    """Which output of f_Y is differentiated."""
    LOGIT = "logit"              # the target-class logit, pre-softmax (paper and scripts)
    PROBABILITY = "probability"  # the target-class softmax probability


class TokenSaliency:
    """SmoothGrad token saliency of an information extractor (CORTEX §3.3, eq. 4–5).

    Eq. 4: ∇̄E = (1/N) Σ_l ∇_E f_Y(E + ε_l), ε_l ~ N(0, σ²I), σ = α (max E − min E).
    Eq. 5: TSV(p) = max_j |∇̄E(j, p)|.

    Args:
        extractor: ``nn.Module`` mapping E (B, d, m, m) → logits (B, C). It is put in eval mode
            for the attribution (rows must be independent for the batched backward pass) and every
            submodule's previous mode is restored afterwards. Its parameters' ``.grad`` are never
            touched (gradients are taken w.r.t. the noisy input only).
        n_samples: N, noise samples per embedding (paper: 20).
        alpha: α, the noise spread relative to the value range (paper: 0.2).
        sigma: ``"per_embedding"`` (eq. 4; default) or ``"batch"`` (scripts; σ then depends on
            which embeddings share the batch).
        reduce: ``"abs_max"`` (eq. 5; default) or ``"signed_max"`` (scripts).
        output: ``"logit"`` (default) or ``"probability"``.
        chunk_size: rows (noisy copies) per forward/backward pass; ``None`` = all N·B at once.
            The result does not depend on it (the noise is drawn for the whole batch first).

    Example::

        >>> f = build_extractor(ExtractorConfig(d=64, m=8, n_classes=10, width=64))
        >>> E = vq.embed(tokens)                                   # (B, 64, 8, 8)
        >>> tsv = TokenSaliency.paper(f).attribute(E, labels, generator=torch.Generator().manual_seed(0))
        >>> tsv.shape                                              # (B, 8, 8)
    """

    def __init__(
        self,
        extractor: nn.Module,
        n_samples: int = 20,
        alpha: float = 0.2,
        sigma: str | Sigma = Sigma.PER_EMBEDDING,
        reduce: str | Reduce = Reduce.ABS_MAX,
        output: str | Output = Output.LOGIT,
        chunk_size: int | None = None,
    ):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.extractor = extractor
        self.n_samples = int(n_samples)
        self.alpha = float(alpha)
        self.sigma = Sigma(sigma)
        self.reduce = Reduce(reduce)
        self.output = Output(output)
        self.chunk_size = chunk_size

    @classmethod
    def paper(cls, extractor: nn.Module, **kw: Any) -> "TokenSaliency":
        """As the paper states it: N 20, α 0.2, σ per embedding, max |·| over channels, logit."""
        return cls(extractor, **{"n_samples": 20, "alpha": 0.2, "sigma": Sigma.PER_EMBEDDING,
                                 "reduce": Reduce.ABS_MAX, "output": Output.LOGIT, **kw})

    @classmethod
    def reference(cls, extractor: nn.Module, **kw: Any) -> "TokenSaliency":
        """As the authors' scripts compute it: σ over the whole batch, signed max over channels."""
        return cls(extractor, **{"n_samples": 20, "alpha": 0.2, "sigma": Sigma.BATCH,
                                 "reduce": Reduce.SIGNED_MAX, "output": Output.LOGIT, **kw})

    def __repr__(self) -> str:
        return (f"TokenSaliency(n_samples={self.n_samples}, alpha={self.alpha}, sigma={self.sigma.value!r}, "
                f"reduce={self.reduce.value!r}, output={self.output.value!r}, chunk_size={self.chunk_size})")

    # ------------------------------------------------------------------ pieces
    def sigma_of(self, E: torch.Tensor) -> torch.Tensor:
        """σ for each embedding, (B,): α·(max − min) of the embedding itself, or of the whole batch."""
        if self.sigma is Sigma.BATCH:
            return (self.alpha * (E.amax() - E.amin())).expand(E.shape[0])
        flat = E.flatten(1)                                           # (B, d·m·m)
        return self.alpha * (flat.amax(1) - flat.amin(1))             # (B,)

    def _targets(self, target: Any, B: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(target, dtype=torch.long, device=device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"target must be an int or have shape ({B},), got shape {tuple(t.shape)}")
        return t

    def _target_output(self, X: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.extractor(X)                                       # (rows, C)
        if self.output is Output.PROBABILITY:
            out = out.softmax(dim=1)
        return out.gather(1, t[:, None]).squeeze(1)                   # (rows,)

    # ------------------------------------------------------------------ verbs
    def attribute_grad(
        self,
        E: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Eq. 4: the mean gradient ∇̄E over the N noisy copies, (B, d, m, m).

        Args:
            E: embeddings (B, d, m, m), float. Not modified; its ``.grad`` is not touched.
            target: class index (int) or one per embedding, (B,).
            generator: ``torch.Generator`` on E's device for the noise (global RNG if ``None``).
            noise: optional standard-normal draws z (N, B, d, m, m); then ε_l = σ_b · z[l, b] and
                ``generator`` is unused. For tests and for comparing methods on identical noise.
        """
        if E.dim() != 4:
            raise ValueError(f"E must be (B, d, m, m), got shape {tuple(E.shape)}")
        if not E.is_floating_point():
            raise TypeError(f"E must be a float tensor, got {E.dtype}")
        E = E.detach()
        B, N = E.shape[0], self.n_samples
        t = self._targets(target, B, E.device)
        if noise is None:
            noise = torch.randn((N, *E.shape), generator=generator, dtype=E.dtype, device=E.device)
        elif noise.shape != (N, *E.shape):
            raise ValueError(f"noise must have shape (N={N}, {', '.join(map(str, E.shape))}), "
                             f"got {tuple(noise.shape)}")
        sigma = self.sigma_of(E).to(E.dtype)                           # (B,)
        z = noise.to(E.device, E.dtype).reshape(N * B, *E.shape[1:])           # row r = (l, b) = (r // B, r % B)
        row_b = torch.arange(N * B, device=E.device) % B               # (N·B,) embedding of each row
        step = self.chunk_size or N * B

        grad_sum = torch.zeros_like(E)                                 # (B, d, m, m)
        with eval_mode(self.extractor), torch.enable_grad():
            for s in range(0, N * B, step):
                b = row_b[s:s + step]
                X = (E[b] + sigma[b, None, None, None] * z[s:s + step]).requires_grad_(True)
                y = self._target_output(X, t[b]).sum()
                (g,) = torch.autograd.grad(y, X)                       # (rows, d, m, m), one pass
                grad_sum.index_add_(0, b, g)
        return grad_sum / N

    def attribute(
        self,
        E: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token saliency values (eq. 5), (B, m, m): the mean gradient reduced over the d channels.

        Arguments as :meth:`attribute_grad`.
        """
        g = self.attribute_grad(E, target, generator=generator, noise=noise)   # (B, d, m, m)
        return (g.abs() if self.reduce is Reduce.ABS_MAX else g).amax(dim=1)   # (B, m, m)


# ---------------------------------------------------------------------- T*_image
def top_n_positions(tsv: torch.Tensor, n: int) -> torch.Tensor:
    """T*_image (eq. 6): flat positions (row-major over m×m) of each image's n highest TSVs, (B, n).

    Ordered by decreasing TSV. Ties are broken by the lower flat position, on every device: a
    stable descending sort is used rather than ``torch.topk``, whose order among equal values is
    unspecified (and differs between CPU and CUDA).
    """
    flat = tsv.flatten(1)                                              # (B, m·m)
    if not 0 <= n <= flat.shape[1]:
        raise ValueError(f"n must be in [0, m·m = {flat.shape[1]}], got {n}")
    return torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :n]


def positions_to_mask(pos: torch.Tensor, m: int) -> torch.Tensor:
    """Flat positions (B, n) → bool mask (B, m, m), True at the given positions."""
    mask = torch.zeros(pos.shape[0], m * m, dtype=torch.bool, device=pos.device)
    mask.scatter_(1, pos.long(), True)
    return mask.view(-1, m, m)


# ---------------------------------------------------------------------- counting
def _as_long(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x.astype(np.int64, copy=False))
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integer ids, got dtype {t.dtype}")
    return t.long()


def _check_range(t: torch.Tensor, hi: int, what: str, fix: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= hi):
        raise ValueError(f"{what} must lie in [0, {hi}), found values in [{int(t.min())}, {int(t.max())}]; {fix}")


def _tokens_labels(tokens: Any, labels: Any, n_classes: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, labels = _as_long(tokens, "tokens"), _as_long(labels, "labels")
    if labels.dim() != 1 or tokens.shape[0] != labels.shape[0]:
        raise ValueError(f"tokens (B, m, m) and labels (B,) disagree: {tuple(tokens.shape)} vs {tuple(labels.shape)}")
    _check_range(tokens, K, "token ids", "is K the codebook size of the VQGM that made these tokens?")
    _check_range(labels, n_classes, "labels", "pass n_classes of the dataset")
    return tokens, labels.to(tokens.device)


def _class_token_bincount(ids: torch.Tensor, labels: torch.Tensor, n_classes: int, K: int,
                          keep: torch.Tensor | None = None) -> torch.Tensor:
    """One bincount over (class, token) pairs: flat index class·K + token → (n_classes, K) int64.

    Images are taken in chunks of ~4M positions so that the int64 flat index of a million-image
    ImageNet split (256 positions each) never exists whole; the chunk loop is over slices, not images.
    """
    ids = ids.flatten(1)                                               # (B, P)
    step = max(1, (1 << 22) // max(1, ids.shape[1]))
    counts = torch.zeros(n_classes * K, dtype=torch.long, device=ids.device)
    for s in range(0, ids.shape[0], step):
        flat = labels[s:s + step, None] * K + ids[s:s + step]          # (b, P)
        if keep is not None:
            flat = flat[keep[s:s + step]]
        counts += torch.bincount(flat.flatten(), minlength=n_classes * K)
    return counts.view(n_classes, K)


def _top_k_ids(score: torch.Tensor, eligible: torch.Tensor, k: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the k highest-scoring eligible columns, ties by lower column; -1 where fewer exist."""
    if not 0 <= k <= score.shape[1]:
        raise ValueError(f"{what}: k must be in [0, K = {score.shape[1]}], got {k}")
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]   # (n_classes, k)
    ok = eligible.gather(1, order)
    return torch.where(ok, order, torch.full_like(order, -1)), score.gather(1, order)


def token_class_usage(tokens: Any, labels: Any, n_classes: int, K: int) -> torch.Tensor:
    """How often each token id occurs in each class's images, over all positions: (n_classes, K) int64.

    One ``bincount`` over (class, token) pairs. Reused by ``frequency_baseline``,
    ``class_vs_rest_baseline`` and the token browser.
    """
    tokens, labels = _tokens_labels(tokens, labels, n_classes, K)
    return _class_token_bincount(tokens, labels, n_classes, K)


def concept_tokens(
    tokens: Any,
    labels: Any,
    top_positions: torch.Tensor,
    n_classes: int,
    K: int,
    k: int,
    *,
    count: str = "positions",
    return_counts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """T*_concept (eq. 6): per class, the k token ids most frequent among the ids at each
    training image's top-n positions. (n_classes, k) int64, most frequent first.

    Args:
        tokens: (B, m, m) token ids of the training images; labels: (B,) their classes.
        top_positions: (B, n) flat positions from ``top_n_positions(tsv, n)`` (paper: n = 20).
        n_classes, K: number of classes, codebook size. k: ids kept per class (paper: 100).
        count: ``"positions"`` (default, as the scripts) counts an id once per top-n position it
            fills, so an id filling three of an image's top positions counts three times;
            ``"images"`` counts it once per image (T*_image read as a set).
        return_counts: also return the (n_classes, k) counts of the returned ids.

    Ties are broken by the lower token id. A class with fewer than k ids of nonzero count is
    padded with -1 (count 0); ``masking.mask_token_set`` ignores -1.
    """
    tokens, labels = _tokens_labels(tokens, labels, n_classes, K)
    pos = _as_long(top_positions, "top_positions").to(tokens.device)
    if pos.dim() != 2 or pos.shape[0] != tokens.shape[0]:
        raise ValueError(f"top_positions must be (B={tokens.shape[0]}, n), got {tuple(pos.shape)}")
    ids = tokens.flatten(1).gather(1, pos)                             # (B, n) ids at T*_image
    if count == "images":
        ids, _ = ids.sort(dim=1)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[:, 1:] = ids[:, 1:] != ids[:, :-1]                        # first of each repeated id
    elif count == "positions":
        keep = None
    else:
        raise ValueError(f"count must be 'positions' or 'images', got {count!r}")
    counts = _class_token_bincount(ids, labels, n_classes, K, keep)    # (n_classes, K)
    top, top_counts = _top_k_ids(counts, counts > 0, k, "concept_tokens")
    return (top, top_counts) if return_counts else top


def frequency_baseline(
    tokens: Any, labels: Any, n_classes: int, K: int, k: int, *, return_counts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The paper's Table 2 baseline: per class, the k most frequent ids over ALL positions of the
    class's training images, (n_classes, k). Ties by lower id; -1 padding as ``concept_tokens``."""
    counts = token_class_usage(tokens, labels, n_classes, K)
    top, top_counts = _top_k_ids(counts, counts > 0, k, "frequency_baseline")
    return (top, top_counts) if return_counts else top


def class_vs_rest_baseline(
    tokens: Any, labels: Any, n_classes: int, K: int, k: int, smoothing: float = 1.0,
    *, return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beyond the paper: per class, the k ids most over-represented in the class against the rest.

    With c(y, t) the number of positions of class-y images holding id t, N_y = Σ_t c(y, t) the
    class's positions, r(y, t) = Σ_{y'≠y} c(y', t), R_y = Σ_t r(y, t), s = ``smoothing``:

        score(y, t) = log((c(y, t) + s) / (N_y + s·K)) − log((r(y, t) + s) / (R_y + s·K)),

    the log-ratio of the id's add-s smoothed frequency inside the class and in all other classes
    (a tf-idf-like contrast that no extractor is involved in). Only ids with c(y, t) ≥ 1 are
    eligible; ties by lower id; -1 padding when a class has fewer than k distinct ids.
    ``return_scores`` also returns the (n_classes, k) float64 scores (-inf at padding).
    """
    score = class_vs_rest_scores(tokens, labels, n_classes, K, smoothing)
    top, top_scores = _top_k_ids(score, torch.isfinite(score), k, "class_vs_rest_baseline")
    return (top, top_scores) if return_scores else top


def class_vs_rest_scores(tokens: Any, labels: Any, n_classes: int, K: int, smoothing: float = 1.0) -> torch.Tensor:
    """:func:`class_vs_rest_baseline`'s score(y, t) for every class and id, (n_classes, K) float64;
    -inf where class y never holds id t."""
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    c = token_class_usage(tokens, labels, n_classes, K).double()      # (n_classes, K)
    r = c.sum(0, keepdim=True) - c                                     # (n_classes, K) rest counts
    n_y, n_r = c.sum(1, keepdim=True), r.sum(1, keepdim=True)          # (n_classes, 1)
    s = float(smoothing)
    score = torch.log((c + s) / (n_y + s * K)) - torch.log((r + s) / (n_r + s * K))
    return score.masked_fill(c == 0, float("-inf"))
