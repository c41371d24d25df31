"""Rival token attributions on the same embeddings as CORTEX's token saliency (issue #14).

Every function maps an information extractor f, embeddings E (B, d, m, m) and target classes to one
score per token position, (B, m, m), larger = more relevant to the target, so each can rank positions
for the deletion / insertion curves of :mod:`cortex_nb.method.faithfulness` exactly as the TSV does.
The attributions come from captum (the well-kept implementations); what is ours is how a position's d
channels become one score, said per method:

- :func:`gradient` -- captum ``Saliency``: |∂f_t / ∂E|, max over channels (the TSV without the noise);
- :func:`gradient_x_input` -- captum ``InputXGradient``: |E · ∂f_t / ∂E|, max over channels;
- :func:`integrated_gradients` -- captum ``IntegratedGradients`` from a baseline embedding (default: every
  position holds the codebook's mean vector), summed over channels (the sum over all positions then
  equals f_t(E) − f_t(baseline), completeness);
- :func:`occlusion` -- leave one token out: f_t(E) − f_t(E with position p's embedding replaced by
  ``fill``'s), one forward per position (captum ``FeatureAblation`` with one feature per position);
  with ``fill`` the embedding of each image's token in-fill this is the extractor-side analogue of the
  token fill of the masking;
- :func:`random_scores` and :func:`class_vs_rest_positions` -- the two controls: no information, and the
  class-vs-rest statistic of the id at each position for the image's class (no model at all).

The extractor is used in eval mode and left as it was; f_t is the target logit, as for the TSV.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine.inference import eval_mode

__all__ = ["gradient", "gradient_x_input", "integrated_gradients", "occlusion", "random_scores",
           "class_vs_rest_positions", "position_feature_mask"]


def _targets(target: Any, B: int, device) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    return t.expand(B).contiguous() if t.dim() == 0 else t


def _leaf(E: torch.Tensor) -> torch.Tensor:
    """A copy of E that requires grad (captum would set it on the caller's tensor, and warn)."""
    return E.detach().clone().requires_grad_(True)


def _check(E: torch.Tensor) -> None:
    if E.dim() != 4 or E.shape[-1] != E.shape[-2]:
        raise ValueError(f"E must be (B, d, m, m), got {tuple(E.shape)}")


def gradient(f: nn.Module, E: torch.Tensor, target: Any) -> torch.Tensor:
    """max_j |∂f_t(E) / ∂E(j, p)| per position (captum Saliency), (B, m, m)."""
    from captum.attr import Saliency

    _check(E)
    with eval_mode(f):
        a = Saliency(f).attribute(_leaf(E), target=_targets(target, len(E), E.device), abs=True)
    return a.detach().amax(1)


def gradient_x_input(f: nn.Module, E: torch.Tensor, target: Any) -> torch.Tensor:
    """max_j |E(j, p) · ∂f_t(E) / ∂E(j, p)| per position (captum InputXGradient), (B, m, m)."""
    from captum.attr import InputXGradient

    _check(E)
    with eval_mode(f):
        a = InputXGradient(f).attribute(_leaf(E), target=_targets(target, len(E), E.device))
    return a.detach().abs().amax(1)


def integrated_gradients(f: nn.Module, E: torch.Tensor, target: Any, baseline: torch.Tensor | None = None,
                         n_steps: int = 32, codebook: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_j IG(j, p) per position (captum IntegratedGradients, Gauss-Legendre, ``n_steps``), (B, m, m).
    ``baseline``: (B, d, m, m) or (d, m, m); default the codebook's mean vector at every position
    (``codebook`` (K, d) needed then), an embedding the extractor's input space contains on average."""
    from captum.attr import IntegratedGradients

    _check(E)
    if baseline is None:
        if codebook is None:
            raise ValueError("integrated_gradients needs a baseline or the codebook (its mean vector)")
        baseline = codebook.mean(0)[None, :, None, None].expand_as(E)
    baseline = torch.as_tensor(baseline, dtype=E.dtype, device=E.device).expand_as(E).contiguous()
    with eval_mode(f):
        a = IntegratedGradients(f).attribute(E, baselines=baseline, target=_targets(target, len(E), E.device),
                                             n_steps=int(n_steps), internal_batch_size=len(E))
    return a.detach().sum(1)


def position_feature_mask(d: int, m: int, device=None) -> torch.Tensor:
    """captum feature mask (1, d, m, m): every channel of position p is feature p (row-major)."""
    return torch.arange(m * m, device=device).view(1, 1, m, m).expand(1, d, m, m)


def occlusion(f: nn.Module, E: torch.Tensor, target: Any, fill: torch.Tensor, batch_positions: int = 16) -> torch.Tensor:
    """f_t(E) − f_t(E with position p replaced by ``fill``'s embedding at p), per position (captum
    FeatureAblation, ``batch_positions`` positions per forward), (B, m, m). ``fill``: (B, d, m, m), e.g.
    the embeddings of each image's in-fill token at every position."""
    from captum.attr import FeatureAblation

    _check(E)
    B, d, m, _ = E.shape
    fill = torch.as_tensor(fill, dtype=E.dtype, device=E.device).expand_as(E).contiguous()
    with eval_mode(f), torch.no_grad():
        a = FeatureAblation(f).attribute(E, baselines=fill, target=_targets(target, B, E.device),
                                         feature_mask=position_feature_mask(d, m, E.device),
                                         perturbations_per_eval=int(batch_positions))
    return a[:, 0].detach()                                              # every channel of p holds p's value


def random_scores(B: int, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores (B, m, m): the attribution that knows nothing."""
    return torch.rand(B, m, m, generator=generator)


def class_vs_rest_positions(tokens: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """score(label_b, tokens_b[p]) per position, (B, m, m) float64, from the (n_classes, K) class-vs-rest
    statistic (:func:`cortex_nb.method.saliency.class_vs_rest_scores`, fitted on the training split): which
    of an image's ids its class over-uses, with no model involved. Ids the class never holds: -inf."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return scores[labels[:, None, None], tokens]
