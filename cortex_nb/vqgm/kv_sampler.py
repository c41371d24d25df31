"""taming's ``sample_with_past`` with a preallocated key/value cache.

taming's KV-cached sampler (``taming.modules.transformer.mingpt.sample_with_past``) keeps the past as
a list of per-step tensors and, at every step, concatenates the whole list (``torch.cat(past)`` in
``GPT.forward_with_past``) and then each layer's keys and values again (``torch.cat((past_key, k))``
in ``CausalSelfAttention``): O(T^2) copying over a sequence of T tokens. On the toy prior (4 layers,
batch 512, 64 tokens, 2-core AVX2 CPU) those copies were 59 % of the sampling time; on the 16 x 16
ImageNet grid they grow four times as fast.

:func:`sample_with_kv_cache` is the same computation -- the same modules of the same GPT, the same
operations in the same order, the same filtering and ``torch.multinomial`` draws, so the same RNG
consumption -- with each layer's keys and values written once into a buffer allocated for the
whole sequence and attended to through a view. ``tests/test_vqgm.py`` checks that it returns exactly
the tokens of taming's own sampler, which stays the oracle.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sample_with_kv_cache"]


def _attend(attn, x: torch.Tensor, K: torch.Tensor, V: torch.Tensor, start: int) -> torch.Tensor:
    """taming's ``CausalSelfAttention.forward`` for the new positions [start, start + T) of x, with
    their keys / values written into K, V (B, nh, T_max, hs) and the past read from there."""
    B, T, C = x.size()
    nh = attn.n_head
    k = attn.key(x).view(B, T, nh, C // nh).transpose(1, 2)
    q = attn.query(x).view(B, T, nh, C // nh).transpose(1, 2)
    v = attn.value(x).view(B, T, nh, C // nh).transpose(1, 2)
    K[:, :, start:start + T] = k
    V[:, :, start:start + T] = v
    k, v = K[:, :, :start + T], V[:, :, :start + T]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    if start == 0:  # taming masks only the first call (no past); later calls see one new position
        att = att.masked_fill(attn.mask[:, :, :T, :T] == 0, float("-inf"))
    att = attn.attn_drop(F.softmax(att, dim=-1))
    y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
    return attn.resid_drop(attn.proj(y))


@torch.no_grad()
def sample_with_kv_cache(x: torch.Tensor, model, steps: int, temperature: float = 1.0, sample_logits: bool = True,
                         top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``sample_with_past(x, model, steps, temperature, sample_logits, top_k, top_p)`` of taming: ``x``
    (B, cond_len) conditioning tokens, ``model`` taming's mingpt GPT (eval mode). Returns the sampled
    (B, steps) tokens."""
    from .taming_compat import import_taming

    filt = import_taming().mingpt.top_k_top_p_filtering
    assert not model.training
    B, cond_len = x.shape
    cfg = model.config
    hs = cfg.n_embd // cfg.n_head
    total = cond_len + steps
    dev, dtype = x.device, model.pos_emb.dtype
    kv = [(torch.empty(B, cfg.n_head, total, hs, device=dev, dtype=dtype),
           torch.empty(B, cfg.n_head, total, hs, device=dev, dtype=dtype)) for _ in model.blocks]
    sample = x
    for n in range(steps):
        start = 0 if n == 0 else n + cond_len - 1          # taming's past_length
        tok = model.tok_emb(x)
        pos = model.pos_emb[:, :tok.shape[1], :] if n == 0 else model.pos_emb[:, start, :]
        h = model.drop(tok + pos)
        for block, (K, V) in zip(model.blocks, kv):
            h = h + _attend(block.attn, block.ln1(h), K, V, start)
            h = h + block.mlp(block.ln2(h))
        logits = model.head(model.ln_f(h))[:, -1, :] / temperature
        if top_k is not None:
            logits = filt(logits, top_k=top_k, top_p=top_p)
        probs = F.softmax(logits, dim=-1)
        if not sample_logits:
            _, x = torch.topk(probs, k=1, dim=-1)
        else:
            x = torch.multinomial(probs, num_samples=1)
        sample = torch.cat((sample, x), dim=1)
    return sample[:, cond_len:]
