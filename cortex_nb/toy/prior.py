"""The toy VQGM's prior: taming's mingpt ``GPT`` trained here on token sequences (PAPER.md §2.1:
the class-conditional transformer that predicts m^2 tokens for a concept, at toy size).

:func:`train_prior` trains on ``[class token, z tokens in raster order]`` exactly as taming's
``Net2NetTransformer.forward`` does (:func:`prior_logits`; a test compares the two), so taming's
own sampler generates from these weights once :func:`cortex_nb.toy.vqgm.build_toy_vqgm` has put
them into a ``Net2NetTransformer``.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..io.files import digest, save_torch
from ..vqgm.taming_config import instantiate
from ..vqgm.taming_shapes import transformer_config
from .training import (RECIPE_VERSION, bf16_ok, config_dict, end_step, load_state, lr_at,
                           step_bar, step_seed)

__all__ = ["PriorConfig", "gpt_config", "build_prior", "prior_logits", "train_prior"]


@dataclass
class PriorConfig:
    """The class-conditional prior (taming mingpt ``GPT``) and its training recipe.

    Defaults: the toy profile's values (``cortex_nb/profiles/_base.yaml``; a test keeps them
    equal). Every profile sets every field, so a default only matters to direct Python calls.
    """

    n_layer: int = 4                  # transformer blocks
    n_head: int = 4                   # attention heads
    n_embd: int = 128                 # width
    n_train: int = 24000              # fresh toy images encoded into training sequences
    steps: int = 600                  # optimizer steps (~3 epochs of n_train; 1000: +1 min,
                                      # samples recognised 84-90% instead of 71-77%)
    batch_size: int = 128             # sequences per step
    lr: float = 2e-3                  # AdamW peak learning rate
    warmup: int = 30                  # linear warmup steps, then cosine decay
    min_lr_frac: float = 0.05         # cosine decays to lr * min_lr_frac
    weight_decay: float = 0.01        # on Linear weights only (minGPT / Net2NetTransformer)
    grad_clip: float = 1.0            # global gradient-norm clip
    amp: bool = True                  # bf16 autocast where the CPU/GPU has native bf16
                                      # (2-2.5x here); loss in fp32
    ckpt_every: int = 100             # steps between resumable checkpoints
    log_every: int = 10               # steps between history entries / progress updates


def gpt_config(prior: PriorConfig, K: int, m: int) -> dict:
    """The taming ``transformer_config`` node of the toy prior: K codes (class ids share the
    vocabulary, as in the official cin model), block of m*m + 1 (class token + m*m tokens; the
    last is never input)."""
    return transformer_config(vocab_size=K, block_size=m * m + 1, n_layer=prior.n_layer,
                              n_head=prior.n_head, n_embd=prior.n_embd)


def build_prior(prior: PriorConfig, K: int, m: int, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised taming mingpt ``GPT`` for ``prior`` (same init for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate(gpt_config(prior, K, m))


def prior_logits(gpt: torch.nn.Module, tokens: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits and targets exactly as ``Net2NetTransformer.forward`` computes them.

    The Labelator cond stage turns a class id c into the single token ``c`` (no offset: class
    ids share the GPT vocabulary with the codes, as in the official cin model); the permuter is
    the identity (raster order). Input ``[c, z_0 .. z_{n-2}]``, output i predicts ``z_i``.

    Args:
        gpt: taming mingpt GPT.  tokens: (B, m, m) int64.  labels: (B,) int64.

    Returns:
        logits (B, m*m, K), targets (B, m*m) (contiguous: mingpt uses ``.view``).
    """
    z = tokens.reshape(tokens.shape[0], -1)
    c = labels.reshape(-1, 1).to(z)                            # (B, 1): Labelator.encode
    cz = torch.cat((c, z), dim=1)
    logits, _ = gpt(cz[:, :-1])
    logits = logits[:, c.shape[1] - 1:]                        # drop the conditioning outputs
    return logits, z.contiguous()


def train_prior(prior: PriorConfig, tokens: torch.Tensor, labels: torch.Tensor, *, K: int,
                n_classes: int, seed: int, device: str | torch.device = "cpu",
                ckpt_dir: str | os.PathLike, progress: bool = True,
                callback: Callable[[int, dict], None] | None = None,
                ) -> tuple[torch.nn.Module, dict]:
    """Train the class-conditional prior (taming mingpt ``GPT``) on token sequences; resumable.

    Cross-entropy of :func:`prior_logits` (the z part only, as ``Net2NetTransformer``), AdamW
    with minGPT's decay groups, warmup + cosine, gradient clipping. Batches walk through a
    per-epoch permutation derived from (seed, epoch). Checkpoints to ``ckpt_dir/prior.pt``
    every ``ckpt_every`` steps and resumes like :func:`cortex_nb.toy.tokenizer.train_tokenizer`.

    Args:
        prior: architecture and recipe.  tokens: (N, m, m) int64 codes.  labels: (N,) class ids.
        K: codebook size (GPT vocabulary).  n_classes: number of classes (checked).
        seed, device, ckpt_dir, progress, callback: as in
            :func:`cortex_nb.toy.tokenizer.train_tokenizer`.

    Returns:
        (gpt, stats): the GPT in eval mode, dict(steps, seconds, final_loss (mean of the last
        ``log_every`` steps), history).
    """
    device = torch.device(device)
    tokens = torch.as_tensor(tokens).to(torch.int64)
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    if tokens.dim() != 3 or tokens.shape[1] != tokens.shape[2] or tokens.shape[0] != labels.numel():
        raise ValueError(f"tokens must be (N, m, m) with N = len(labels); got {tuple(tokens.shape)}"
                         f" and {labels.numel()} labels")
    if int(tokens.min()) < 0 or int(tokens.max()) >= K:
        raise ValueError(f"token ids must lie in [0, {K})")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes or n_classes > K:
        raise ValueError(f"labels must lie in [0, {n_classes}) and n_classes <= K={K}")
    N, m = tokens.shape[0], tokens.shape[1]
    data_hash = hashlib.sha256(tokens.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    key = digest(dict(part="prior", v=RECIPE_VERSION, prior=config_dict(prior), K=K, seed=seed,
                      n_classes=n_classes, data=data_hash))
    path = Path(ckpt_dir) / "prior.pt"

    gpt = build_prior(prior, K, m, seed).to(device)
    decay, no_decay = [], []
    for mn, mod in gpt.named_modules():
        for pn, p in mod.named_parameters(recurse=False):
            (decay if pn == "weight" and isinstance(mod, torch.nn.Linear) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": prior.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=prior.lr, betas=(0.9, 0.95))
    step, seconds, history, recent = 0, 0.0, [], []
    state = load_state(path, key)
    if state is not None:
        gpt.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        recent = state.get("recent", [])

    def save() -> None:
        save_torch(dict(key=key, model=gpt.state_dict(), opt=opt.state_dict(), step=step,
                        seconds=seconds, history=history, recent=recent,
                        done=step >= prior.steps), path)

    per_epoch = max(1, N // prior.batch_size)
    perm, perm_epoch = None, -1
    amp = prior.amp and bf16_ok(device)
    bar = step_bar(prior.steps, step, "prior", progress and step < prior.steps)
    gpt.train()
    try:
        while step < prior.steps:
            t0 = time.perf_counter()
            epoch, i = divmod(step, per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(step_seed(seed, epoch, 3))
                perm, perm_epoch = torch.randperm(N, generator=g), epoch
            sel = perm[i * prior.batch_size:(i + 1) * prior.batch_size]
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, prior.lr, prior.warmup, prior.steps, prior.min_lr_frac)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                logits, target = prior_logits(gpt, tokens[sel].to(device), labels[sel].to(device))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if prior.grad_clip:
                torch.nn.utils.clip_grad_norm_(gpt.parameters(), prior.grad_clip)
            opt.step()
            step += 1
            seconds += time.perf_counter() - t0
            recent = (recent + [loss.item()])[-prior.log_every:]
            end_step(step, prior, lambda: dict(step=step, loss=sum(recent) / len(recent),
                                               lr=opt.param_groups[0]["lr"]),
                     history, bar, callback, save, lambda r: dict(loss=f"{r['loss']:.3f}"))
    finally:
        if bar is not None:
            bar.close()
    gpt.eval()
    stats = dict(steps=step, seconds=seconds,
                 final_loss=history[-1]["loss"] if history else None, history=history)
    return gpt, stats
