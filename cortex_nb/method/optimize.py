"""Optimisation-based token explanation: CORTEX §3.4, eq. 7–9, appendix A.2 (Table 3, Fig. 4).

Given an information extractor f (E (B, d, m, m) -> logits (B, C)), a target class and an editable
``region`` of the token grid, find the codebook tokens for the region that maximise the target logit:

- ``select_tokens`` (the paper's method, eq. 7–9): a token-selection logit matrix P over the codebook
  for each editable position; each step draws a hard Gumbel-softmax sample (straight-through, eq.
  11–14), embeds it (one-hot @ codebook, eq. 7), splices it into the original embedding and takes an
  Adam step on ``loss = -f(E)[target] + alpha * ||E||^2`` (eq. 8). The explanation is argmax P (eq. 9).
- ``optimize_embeddings`` (the Table 3 baseline): Adam directly on the region's d-dim vectors, then
  nearest-codebook quantisation (``nearest_tokens``).
- ``central_region`` (the fixed 4x4 block of Table 3) and ``saliency_region`` (a block at each
  image's top-TSV position) build the editable region.

Both methods are batched over all images of a source class; the only Python loops per step are the step loop
(inherent) and, in ``select_tokens``, the per-image Gumbel draws (see "Reproducible noise").

Where we differ from the authors' script (REFERENCE.md, "Optimization-based explanation"):

- P holds the editable positions only, shape (B, R, K), not (m², K) per image. The script's fixed
  rows carry logits +300 / -300, so their hard sample is always the original token and its
  straight-through value exactly one-hot: optimising (B, R, K) is the same optimisation, with a
  m²/R smaller matrix (16x at paper size).
- The loss is summed over images for the backward pass, so each image's P receives exactly its own
  gradient. (With a mean, image b's gradient would be scaled by 1/B; Adam is scale-invariant only up
  to its eps, so batch size would leak into the result.) ``history`` reports means over images.
- ``||E||^2`` is ``mean(E**2)`` over the whole (d, m, m) embedding of an image, as the script does
  (``reg * mean(E^2)``, reg = alpha = 0 for Table 3); the fixed positions add a constant.
- The result is argmax P (eq. 9). The script returns the last Gumbel *sample* and scores, every 500
  steps, the sample drawn at that step; our ``checkpoints`` hold argmax P at those steps, and the
  best-of-checkpoints choice (per evaluator) is left to the evaluation.
- Gumbel(0, 1) draws come from torch (``-log Exp(1)``, as ``F.gumbel_softmax``), not the script's
  ``-log(-log(U + eps) + eps)``: the same distribution.

Reproducible noise. Image b of a batch owns a ``torch.Generator`` seeded with ``seeds[b]``
(``seed + b`` for an int ``seed``). Its random init ``randn(R, K)`` and then, every step, its
Gumbel draws ``-log(Exp(1))`` of shape (R, K) come from that generator alone, and the straight-through
step (``_hard_gumbel_softmax``) is ``F.gumbel_softmax(hard=True)``'s own sequence of operations with
the draws passed in. Hence

1. an image's run does not depend on the batch it is in (batched == one image at a time with
   ``seed = seeds[b]``), and
2. a one-image run is exactly the naive loop ``torch.manual_seed(s); P = torch.randn(R, K);
   y = F.gumbel_softmax(P, tau, hard=True) ...`` on the global RNG (the tests check both).

Everything else (straight-through step, embedding, splice, Adam) is elementwise or per-row, so (1)
is exact as far as f's own per-image outputs do not depend on the batch size. In float64 that holds
to ~1e-15. In float32 f's batched rounding (~1e-8) can flip a near-tie of a Gumbel argmax or the
sign of a near-zero Adam gradient, after which that image follows a different, equally valid
sample path (different P, occasionally different tokens); use float64 where bit-level agreement
matters.

torch has no vectorised multi-stream RNG, so the draws loop over the B generators (one
``exponential_`` of R·K numbers each per step; the forward/backward pass stays batched). The global
RNG is neither read nor advanced, so no ``fork_rng`` is needed.

Example::

    region = central_region(m)                                        # Table 3's block
    res = select_tokens(f, tokens, codebook, region, target=20, steps=5000, record_every=500)
    res.tokens            # (B, m, m) int64, region replaced by argmax P (eq. 9)
    res.history.tail()    # step, loss, target_logit, target_prob, n_changed
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from ..engine.inference import eval_mode

__all__ = ["OptimResult", "select_tokens", "optimize_embeddings", "random_tokens", "nearest_tokens",
           "central_region", "saliency_region"]


@dataclass
class OptimResult:
    """What an optimisation returns; all tensors on the CPU."""

    tokens: torch.Tensor          # (B, m, m) int64: input tokens, region replaced; outside bit-identical
    region_tokens: torch.Tensor   # (B, R) int64: T*_concept of each image (eq. 9), row-major region order
    positions: torch.Tensor       # (B, R) int64: flat indices (row * m + col) of the region positions
    history: pd.DataFrame         # one row per step: step, loss, target_logit, target_prob (means over images)
    checkpoints: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, tokens (B, m, m))
    P: torch.Tensor | None = None  # (B, R, K) final selection logits (select_tokens only)
    extras: dict = field(default_factory=dict)  # method-specific (optimize_embeddings: "E_final")


# ----------------------------------------------------------------------------------------- regions

def _default_size(m: int) -> int:
    """The paper's 4 of 16, scaled: max(1, round(4m/16)), halves rounded up (m = 8 -> 2, 10 -> 3)."""
    return max(1, (m + 2) // 4)


def central_region(m: int, size: int | None = None) -> torch.Tensor:
    """The fixed block of Table 3 (§4.4, A.4), as an (m, m) bool mask.

    The authors' script edits rows and columns 7..10 *zero-based*, inclusive (its mask runs from
    top-left (7, 7) to bottom-right (10, 10)): the cells [7, 11) of 16, whose centre sits at 9/16 of
    the grid, one cell below/right of the exact centre (6..9). We keep that centre on every grid:
    ``start = floor(9m/16 - size/2)``, clipped, with ``size = max(1, round(4m/16))`` by default.
    m = 16 gives rows/cols 7..10 (the reference), m = 32 gives 14..21 (the reference, scaled exactly),
    m = 8 gives 3..4 (the exact centre: there the offset is half a cell and the floor drops it).
    """
    s = _default_size(m) if size is None else int(size)
    if not 1 <= s <= m:
        raise ValueError(f"region size {s} must lie in 1..{m}")
    start = min(max((9 * m - 8 * s) // 16, 0), m - s)
    mask = torch.zeros(m, m, dtype=torch.bool)
    mask[start:start + s, start:start + s] = True
    return mask


def saliency_region(tsv: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """A size x size block around each image's top-TSV position (§3.3 meets §3.4): (B, m, m) bool.

    The top position sits at offset (size - 1) // 2 inside its block (as the reference block sits
    around cell m/2 = 8), and the block is shifted, not cut, where it would leave the grid, so every
    image edits exactly size² positions and its top position is always among them.
    """
    B, m, _ = tsv.shape
    s = _default_size(m) if size is None else int(size)
    if not 1 <= s <= m:
        raise ValueError(f"region size {s} must lie in 1..{m}")
    top = tsv.flatten(1).argmax(1)                                        # (B,)
    r0 = (top // m - (s - 1) // 2).clamp(0, m - s)[:, None]              # (B, 1)
    c0 = (top % m - (s - 1) // 2).clamp(0, m - s)[:, None]
    ar = torch.arange(m, device=tsv.device)
    rows = (ar >= r0) & (ar < r0 + s)                                     # (B, m)
    cols = (ar >= c0) & (ar < c0 + s)
    return rows[:, :, None] & cols[:, None, :]                            # (B, m, m)


# ------------------------------------------------------------------------------------- quantiser

@torch.no_grad()
def nearest_tokens(vectors: torch.Tensor, codebook: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """Nearest codebook entry (Euclidean) of each d-vector: (..., d) -> (...) int64.

    Rows are processed ``chunk`` at a time (default: about 2^24 distances, 64 MiB in float32), so the
    (N, K) distance matrix never exists whole. Ties go to the lowest index (``argmin``).
    """
    K, d = codebook.shape
    flat = vectors.detach().reshape(-1, d).to(codebook.device, codebook.dtype)
    rows = chunk or max(1, 2 ** 24 // K)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for i in range(0, flat.shape[0], rows):
        out[i:i + rows] = torch.cdist(flat[i:i + rows], codebook.detach()).argmin(1)
    return out.view(vectors.shape[:-1])


def random_tokens(tokens: torch.Tensor, region: torch.Tensor, K: int, seed: int = 0) -> torch.Tensor:
    """Table 3's control: the region's ids replaced by ids drawn uniformly from the codebook, no
    optimisation. Token selection from a random start (``init="random"``) has already replaced
    nearly every region token at step 0; this control says how much of a method's ΔP any K-way
    random replacement gives. tokens (B, m, m) int, region (m, m) or (B, m, m) bool -> (B, m, m)
    int64 on the CPU; one generator seeded with ``seed`` draws the (B, R) ids."""
    flat, _, positions, _, _ = _setup(tokens, torch.zeros(int(K), 1), region, 0)
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(int(K), tuple(positions.shape), generator=g)      # (B, R)
    return _splice(flat, positions, ids)


# -------------------------------------------------------------------------------------- plumbing

def _setup(tokens, codebook, region, target):
    """Inputs -> tokens (B, m²) int64, E0 (B, m², d) constant, positions (B, R), target (B,)."""
    C = codebook.detach()
    dev = C.device
    tokens = torch.as_tensor(tokens).to(dev, torch.long)
    B, m, m2 = tokens.shape
    if m != m2:
        raise ValueError(f"tokens must be (B, m, m), got {tuple(tokens.shape)}")
    region = torch.as_tensor(region, dtype=torch.bool, device=dev)
    if region.shape == (m, m):
        region = region.expand(B, m, m)
    elif region.shape != (B, m, m):
        raise ValueError(f"region must be (m, m) or (B, m, m) = {(B, m, m)}, got {tuple(region.shape)}")
    counts = region.flatten(1).sum(1)
    if int(counts.min()) != int(counts.max()) or int(counts[0]) == 0:
        raise ValueError(f"every image needs the same, non-zero number of region positions; got {counts.tolist()}")
    positions = region.flatten(1).nonzero()[:, 1].view(B, -1)             # (B, R), row-major per image
    target = torch.as_tensor(target, dtype=torch.long, device=dev).expand(B).contiguous()
    flat = tokens.flatten(1)                                              # (B, m²)
    E0 = C[flat]                                                          # (B, m², d)
    return flat, E0, positions, target, C


def _compose(E0: torch.Tensor, positions: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """E0 (B, m², d) with rows ``positions`` (B, R) replaced by emb (B, R, d) -> E (B, d, m, m).

    Out-of-place scatter: the other rows are E0's values and carry no gradient."""
    B, n, d = E0.shape
    m = math.isqrt(n)
    flat = E0.scatter(1, positions[..., None].expand(-1, -1, d), emb)      # (B, m², d)
    return flat.view(B, m, m, d).permute(0, 3, 1, 2).contiguous()         # (B, d, m, m)


def _splice(flat_tokens: torch.Tensor, positions: torch.Tensor, region_tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, m²) with the region replaced -> (B, m, m) int64 on the CPU."""
    B, n = flat_tokens.shape
    m = math.isqrt(n)
    return flat_tokens.scatter(1, positions, region_tokens).view(B, m, m).cpu()


def _seeds(seed: int | Sequence[int], B: int) -> list[int]:
    if isinstance(seed, int):
        return [seed + b for b in range(B)]
    seeds = [int(s) for s in seed]
    if len(seeds) != B:
        raise ValueError(f"need one seed per image ({B}), got {len(seeds)}")
    return seeds


def _hard_gumbel_softmax(P: torch.Tensor, gumbels: torch.Tensor, tau: float):
    """``F.gumbel_softmax(P, tau, hard=True, dim=-1)`` with its Gumbel(0, 1) draws passed in.

    The same operations in the same order as torch's function (eq. 12–14), so given the draws torch
    would make, the output and its gradient are identical. Returns (y, index): y (..., K) is one-hot
    in value and softmax((P + g) / tau) in gradient (eq. 15); index (...) is the sampled token."""
    y_soft = ((P + gumbels) / tau).softmax(-1)
    index = y_soft.max(-1, keepdim=True)[1]
    y_hard = torch.zeros_like(P).scatter_(-1, index, 1.0)
    return y_hard - y_soft.detach() + y_soft, index.squeeze(-1)


@contextmanager
def _eval_mode(f: nn.Module):
    """f in eval mode for the run, its mode restored afterwards. Gradients are taken only w.r.t. the
    optimised tensor (``autograd.grad``), so nothing accumulates in f's parameters."""
    with eval_mode(f), torch.enable_grad():
        yield f


def _objective(f, E, target, alpha):
    """Per-image loss -f(E)[target] + alpha * mean(E²) (eq. 8) and the target logit / probability."""
    logits = f(E)                                                         # (B, C)
    t_logit = logits.gather(1, target[:, None]).squeeze(1)                # (B,)
    loss = -t_logit
    if alpha:
        loss = loss + alpha * E.pow(2).mean((1, 2, 3))
    t_prob = logits.detach().softmax(1).gather(1, target[:, None]).squeeze(1)
    return loss, t_logit.detach(), t_prob


def _history(rows: list[torch.Tensor], columns: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=["step", *columns])
    df = pd.DataFrame(torch.stack(rows).cpu().double().numpy(), columns=columns)
    df.insert(0, "step", range(len(df)))
    return df


def _at_checkpoint(s: int, steps: int, record_every: int | None) -> bool:
    return bool(record_every) and (s % record_every == 0 or s == steps)


# ------------------------------------------------------------------------------- token selection

def select_tokens(
    f: nn.Module,
    tokens: torch.Tensor,
    codebook: torch.Tensor,
    region: torch.Tensor,
    target: int | torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,            # Adam learning rate (reference: 0.01)
    tau: float = 1.0,            # Gumbel-softmax temperature (reference: 1.0)
    alpha: float = 0.0,          # weight of mean(E²) (reference: 0)
    init: str = "random",        # "random": N(0, 1) logits (reference); "original": log K at the original token
    seed: int | Sequence[int] = 0,  # int: image b uses seed + b; or one seed per image
    record_every: int | None = None,  # keep argmax-P tokens at steps 0, n, 2n, ..., steps
    callback: Callable[[int, dict], None] | None = None,  # called after every step with the history row
) -> OptimResult:
    """Token-selection optimisation (§3.4, eq. 7–9) for a batch of images.

    Args:
        f: information extractor, E (B, d, m, m) -> logits (B, C); run in eval mode, left unchanged.
        tokens: (B, m, m) int token grids (the starting images).
        codebook: (K, d) codebook; its dtype and device are the run's.
        region: (m, m) bool shared by the batch, or (B, m, m) with the same count R per image.
        target: the class to maximise, int or (B,).
        steps: number of Adam steps.
        init: ``"random"`` draws P ~ N(0, 1) as the reference; ``"original"`` sets P = log K at the
            original token and 0 elsewhere, so softmax(P) gives it probability K / (2K - 1) ≈ 1/2:
            the first samples are mostly the original image, and the gradient is not saturated.

    Returns:
        ``OptimResult`` with tokens (B, m, m), region_tokens = argmax P (B, R), history (step, loss,
        target_logit, target_prob, n_changed — means over images of the step's Gumbel sample before
        its update; n_changed counts region positions whose argmax P differs from the input),
        checkpoints (step, argmax-P tokens after ``step`` updates) and P (B, R, K).
    """
    if steps < 0 or tau <= 0:
        raise ValueError("steps must be >= 0 and tau > 0")
    flat, E0, positions, target, C = _setup(tokens, codebook, region, target)
    B, R = positions.shape
    K = C.shape[0]
    original = flat.gather(1, positions)                                  # (B, R)
    gens = [torch.Generator(device=C.device).manual_seed(s) for s in _seeds(seed, B)]

    if init == "random":   # per-image streams; a loop over images at setup only
        P = torch.stack([torch.randn(R, K, generator=g, dtype=C.dtype, device=C.device) for g in gens])
    elif init == "original":
        P = torch.zeros(B, R, K, dtype=C.dtype, device=C.device).scatter_(-1, original[..., None], math.log(K))
    else:
        raise ValueError(f"init must be 'random' or 'original', got {init!r}")
    P.requires_grad_(True)                                                # (B, R, K)
    opt = torch.optim.Adam([P], lr=lr)
    gumbels = torch.empty(B, R, K, dtype=C.dtype, device=C.device)

    rows, checkpoints = [], []

    def snapshot(s):
        checkpoints.append((s, _splice(flat, positions, P.detach().argmax(-1))))

    with _eval_mode(f):
        if _at_checkpoint(0, steps, record_every):
            snapshot(0)
        for step in range(steps):
            for b, g in enumerate(gens):                                  # noise only: see module docstring
                gumbels[b].exponential_(generator=g)
            g_noise = -gumbels.log()                                      # (B, R, K) ~ Gumbel(0, 1)
            y, _ = _hard_gumbel_softmax(P, g_noise, tau)                  # (B, R, K), eq. 11–14
            E = _compose(E0, positions, y @ C)                            # (B, d, m, m), eq. 7
            loss, t_logit, t_prob = _objective(f, E, target, alpha)
            (P.grad,) = torch.autograd.grad(loss.sum(), P)                # eq. 8 (sum: see docstring)
            n_changed = (P.detach().argmax(-1) != original).sum(1).to(C.dtype)
            opt.step()
            rows.append(torch.stack([loss.detach().mean(), t_logit.mean(), t_prob.mean(), n_changed.mean()]))
            if callback is not None:
                callback(step, dict(zip(["loss", "target_logit", "target_prob", "n_changed"], rows[-1].tolist())))
            if _at_checkpoint(step + 1, steps, record_every):
                snapshot(step + 1)

    region_tokens = P.detach().argmax(-1)                                 # (B, R), eq. 9
    return OptimResult(
        tokens=_splice(flat, positions, region_tokens),
        region_tokens=region_tokens.cpu(),
        positions=positions.cpu(),
        history=_history(rows, ["loss", "target_logit", "target_prob", "n_changed"]),
        checkpoints=checkpoints,
        P=P.detach().cpu(),
    )


# --------------------------------------------------------------------------- embedding baseline

def optimize_embeddings(
    f: nn.Module,
    tokens: torch.Tensor,
    codebook: torch.Tensor,
    region: torch.Tensor,
    target: int | torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,            # Adam learning rate (reference: 0.01)
    alpha: float = 0.0,          # weight of mean(E²) (reference: 0)
    seed: int | Sequence[int] = 0,  # unused (the baseline is deterministic); kept so both methods share a call
    record_every: int | None = None,  # keep quantised tokens at steps 0, n, 2n, ..., steps
    callback: Callable[[int, dict], None] | None = None,  # called after every step with the history row
) -> OptimResult:
    """Embedding-optimisation baseline of Table 3 (§4.4).

    Adam on the region's d-dim vectors, initialised from the original embedding, with the loss of
    eq. 8 on the continuous E; at the end (and at checkpoints) each vector is quantised to its
    nearest codebook entry (``nearest_tokens``). Same arguments as ``select_tokens``; history has
    step, loss, target_logit, target_prob of the continuous E; ``extras["E_final"]`` is the final
    continuous embedding (B, d, m, m); ``P`` is None.
    """
    del seed
    if steps < 0:
        raise ValueError("steps must be >= 0")
    flat, E0, positions, target, C = _setup(tokens, codebook, region, target)
    d = C.shape[1]
    V = E0.gather(1, positions[..., None].expand(-1, -1, d)).clone().requires_grad_(True)  # (B, R, d)
    opt = torch.optim.Adam([V], lr=lr)
    rows, checkpoints = [], []

    def snapshot(s):
        checkpoints.append((s, _splice(flat, positions, nearest_tokens(V, C))))

    with _eval_mode(f):
        if _at_checkpoint(0, steps, record_every):
            snapshot(0)
        for step in range(steps):
            loss, t_logit, t_prob = _objective(f, _compose(E0, positions, V), target, alpha)
            (V.grad,) = torch.autograd.grad(loss.sum(), V)
            opt.step()
            rows.append(torch.stack([loss.detach().mean(), t_logit.mean(), t_prob.mean()]))
            if callback is not None:
                callback(step, dict(zip(["loss", "target_logit", "target_prob"], rows[-1].tolist())))
            if _at_checkpoint(step + 1, steps, record_every):
                snapshot(step + 1)

    region_tokens = nearest_tokens(V, C)                                  # (B, R)
    return OptimResult(
        tokens=_splice(flat, positions, region_tokens),
        region_tokens=region_tokens.cpu(),
        positions=positions.cpu(),
        history=_history(rows, ["loss", "target_logit", "target_prob"]),
        checkpoints=checkpoints,
        P=None,
        extras={"E_final": _compose(E0, positions, V.detach()).cpu()},
    )
