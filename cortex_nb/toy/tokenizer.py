"""The toy VQGM's tokenizer: a taming VQGAN first stage trained here (PAPER.md §2.1: the codebook
C in R^{K x d} and the decoder from E to an image, at toy size).

:func:`train_tokenizer` trains taming's ``VQModel`` with our own plain loop on freshly rendered
ToyBirds. Why the recipe is not taming's (measured here, NOTES.md "A toy-world tokenizer"):
taming's quantizer collapses on this data (~90 of 512 codes), and with a plain L1 + codebook loss
the species-distinctive heads survive reconstruction only after ~10 minutes. The recipe here:

* **dead-code restart** (:func:`restart_dead_codes`): codes unused over a window of steps are
  re-seeded from that window's encoder outputs; with **k-means initialisation** of the codebook
  from the first batch's encoder outputs, codebook usage is high from the first steps;
* **EMA codebook** (``ema_decay``): codebook rows are running means of the encoder outputs
  assigned to them (VQ-VAE-2 style), written into taming's ``quantize.embedding.weight``; the
  encoder gets only the commitment term;
* **part-weighted reconstruction loss** (``head_weight``, ``body_weight``): ToyBirds come with
  ground-truth part masks, and we use them to weight L1 + L2 on head and body pixels. This is a
  legitimate trick of the toy world only (there are no masks for ImageNet): it spends the small
  model's capacity on the part that carries the class, instead of on background texture;
* Adam with linear warmup + cosine decay, fresh images every step (infinite data, no
  overfitting), and bf16 autocast for the convolutions where the CPU has native bf16
  (``amp``; 1.7x here, the quantizer and the loss stay fp32; the saved model runs in fp32).

No perceptual or GAN loss: LPIPS' VGG weights cannot be downloaded here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import world as toyworld
from ..io.files import digest, save_torch
from ..vqgm.taming_config import instantiate
from ..vqgm.taming_shapes import first_stage_config
from .training import (RECIPE_VERSION, bf16_ok, config_dict, end_step, load_state, lr_at,
                           step_bar, step_seed)

__all__ = ["TokenizerConfig", "vqgan_config", "build_tokenizer", "train_tokenizer",
           "encode_images", "codebook_usage", "restart_dead_codes"]


@dataclass
class TokenizerConfig:
    """The toy VQGAN (taming ``VQModel``) and its training recipe.

    Defaults: the toy profile's values (``cortex_nb/profiles/_base.yaml``; a test keeps them
    equal). Every profile sets every field, so a default only matters to direct Python calls.
    """

    # -- architecture (taming ddconfig; GroupNorm(32): ch and every ch*ch_mult multiple of 32)
    ch: int = 32                      # base channels of encoder/decoder
    ch_mult: tuple = (1, 2, 2)        # 3 levels: 32 px -> 8 x 8 tokens (m = 32 / 2**(len-1))
    num_res_blocks: int = 1           # res blocks per level (taming's cin VQGAN: 2)
    z_channels: int = 64              # encoder output channels before quant_conv
    embed_dim: int = 64               # d, codebook vector size
    n_embed: int = 512                # K, codebook size
    # -- optimisation
    steps: int = 600                  # optimizer steps (batch_size fresh images each)
    batch_size: int = 48              # images per step
    lr: float = 2e-3                  # Adam peak learning rate
    warmup: int = 20                  # linear warmup steps, then cosine decay
    min_lr_frac: float = 0.05         # cosine decays to lr * min_lr_frac
    # -- loss
    l2_weight: float = 1.0            # reconstruction = L1 + l2_weight * L2 (per pixel)
    head_weight: float = 6.0          # extra pixel weight on head pixels (toy masks only)
    body_weight: float = 1.0          # extra pixel weight on body pixels (toy masks only)
    beta: float = 0.25                # commitment weight (encoder -> codebook) in EMA mode
    # -- codebook
    ema_decay: float = 0.9            # EMA codebook (0 = taming's gradient codebook loss)
    kmeans_init: bool = True          # initialise the codebook by k-means of first encodings
    restart_every: int = 10           # restart codes unused over this many steps (0 = never)
    # -- speed
    amp: bool = True                  # bf16 autocast for encoder/decoder where the CPU/GPU has
                                      # native bf16 (1.7x here); quantizer and loss stay fp32
    # -- bookkeeping
    ckpt_every: int = 100             # steps between resumable checkpoints
    log_every: int = 10               # steps between history entries / progress updates

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(c) for c in self.ch_mult)
        for c in (self.ch, *[self.ch * c for c in self.ch_mult]):
            if c % 32:
                raise ValueError(f"TokenizerConfig: ch={self.ch}, ch_mult={self.ch_mult} gives "
                                 f"{c} channels; taming's GroupNorm(32) needs multiples of 32")

    @property
    def grid(self) -> int:
        """m: token grid side for 32 x 32 images."""
        return 32 // 2 ** (len(self.ch_mult) - 1)


def vqgan_config(tok: TokenizerConfig) -> dict:
    """The taming ``first_stage_config`` node of the toy tokenizer (32 x 32 images, DummyLoss)."""
    return first_stage_config(n_embed=tok.n_embed, embed_dim=tok.embed_dim,
                              z_channels=tok.z_channels, resolution=32, ch=tok.ch,
                              ch_mult=tok.ch_mult, num_res_blocks=tok.num_res_blocks)


# --------------------------------------------------------------------------------------------
# small pieces (each tested on its own)


def codebook_usage(tokens: torch.Tensor, K: int) -> dict:
    """Codebook usage of a batch of tokens.

    Args:
        tokens: integer tensor of any shape (e.g. (N, m, m)) with ids in [0, K).
        K: codebook size.

    Returns:
        dict(perplexity=exp(entropy of the token histogram) (float, 1..K),
        used=#codes that occur (int), dead=K - used (int), usage_hist=(K,) int64 counts).
    """
    t = torch.as_tensor(tokens).reshape(-1).to(torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= K):
        raise ValueError(f"token ids must lie in [0, {K}), got [{int(t.min())}, {int(t.max())}]")
    hist = torch.bincount(t, minlength=K).cpu()
    p = hist.double() / max(int(hist.sum()), 1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((hist > 0).sum())
    return dict(perplexity=float(entropy.exp()), used=used, dead=K - used, usage_hist=hist)


def _hist_usage(hist: torch.Tensor) -> dict:
    p = hist.double() / max(int(hist.sum()), 1)
    used = int((hist > 0).sum())
    return dict(perplexity=float((-(p[p > 0] * p[p > 0].log()).sum()).exp()), used=used)


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, counts: torch.Tensor, z: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Re-seed every code with ``counts == 0`` from recent encoder outputs, in place.

    Args:
        codebook: (K, d) codebook weight, modified in place.
        counts: (K,) how often each code was chosen over the last window.
        z: (N, d) recent (pre-quantisation) encoder outputs.
        generator: RNG for picking the outputs (distinct rows while N allows).

    Returns:
        (n_dead,) int64 indices of the codes that were re-seeded (untouched rows: the others).
    """
    dead = (counts == 0).nonzero().flatten()
    if dead.numel() == 0 or z.shape[0] == 0:
        return dead[:0]
    n = dead.numel()
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    if z.shape[0] >= n:
        pick = torch.randperm(z.shape[0], generator=generator, device=gen_dev)[:n]
    else:
        pick = torch.randint(z.shape[0], (n,), generator=generator, device=gen_dev)
    codebook[dead.to(codebook.device)] = z[pick.to(z.device)].to(codebook.dtype)
    return dead


@torch.no_grad()
def _kmeans(x: torch.Tensor, K: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Plain Lloyd k-means of x (N, d) into K centres (empty clusters keep their centre)."""
    pick = torch.randperm(x.shape[0], generator=generator)[:K]
    if pick.numel() < K:  # fewer points than codes: repeat points
        extra = torch.randint(x.shape[0], (K - pick.numel(),), generator=generator)
        pick = torch.cat([pick, extra])
    c = x[pick.to(x.device)].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        n = torch.bincount(a, minlength=K).to(x.dtype)
        s = torch.zeros_like(c).index_add_(0, a, x)
        c = torch.where(n[:, None] > 0, s / n.clamp(min=1)[:, None], c)
    return c


# --------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(tok: TokenizerConfig, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised taming ``VQModel`` for ``tok`` (same init for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return instantiate(vqgan_config(tok))


def _pixel_weights(masks: np.ndarray, tok: TokenizerConfig) -> torch.Tensor:
    """(B, 1, H, W) per-pixel loss weights from ToyBirds part masks."""
    m = torch.as_tensor(masks, dtype=torch.int64)
    w = (1.0 + tok.head_weight * (m == toyworld.HEAD).float()
         + tok.body_weight * (m == toyworld.BODY).float())
    return w[:, None]


def _tokenizer_batch(tok: TokenizerConfig, seed: int, step: int, device, n_classes: int,
                     scene_bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    b = toyworld.sample(tok.batch_size, step_seed(seed, step, 1), n_classes=n_classes,
                        scene_bias=scene_bias)
    return toyworld.to_tensor(b.images).to(device), _pixel_weights(b.masks, tok).to(device)


def train_tokenizer(tok: TokenizerConfig, *, seed: int, device: str | torch.device = "cpu",
                    ckpt_dir: str | os.PathLike, progress: bool = True, n_classes: int = 10,
                    scene_bias: float = 0.65,
                    callback: Callable[[int, dict], None] | None = None,
                    ) -> tuple[torch.nn.Module, dict]:
    """Train the toy VQGAN's first stage (taming ``VQModel``) with our own loop; resumable.

    Every step renders ``tok.batch_size`` fresh ToyBirds (seed derived from (seed, step)), runs
    encoder -> quant_conv -> quantize -> post_quant_conv -> decoder, and minimises the
    part-weighted L1 + L2 reconstruction error plus the commitment term (EMA codebook) or
    taming's codebook + commitment loss (``ema_decay=0``). Codes unused for
    ``restart_every`` steps are re-seeded from that window's encoder outputs.

    Every ``ckpt_every`` steps the model, optimizer, step, codebook statistics and RNG state go
    atomically to ``ckpt_dir/tokenizer.pt``; a later call with the same settings resumes from
    there (a killed run loses at most ``ckpt_every`` steps) and a finished run is just loaded.

    Args:
        tok: architecture and recipe.  seed: model init, data and restart randomness.
        device: torch device.  ckpt_dir: where the resumable checkpoint lives.
        progress: tqdm bar with loss, perplexity and used codes.
        n_classes, scene_bias: passed to :func:`cortex_nb.toy.world.sample`.
        callback: called as ``callback(step, stats)`` after each logged step (stats: step,
            loss, rec, perplexity, used, restarted, lr); an exception there stops training (the
            last checkpoint is kept).

    Returns:
        (model, stats): the trained ``VQModel`` in eval mode on ``device``, and dict(steps,
        seconds (training time summed over resumes), final_loss, perplexity, used, dead
        (of the last window), restarts, history (list of logged stats)).
    """
    device = torch.device(device)
    K, d = tok.n_embed, tok.embed_dim
    key = digest(dict(part="tokenizer", v=RECIPE_VERSION, tok=config_dict(tok), seed=seed,
                      n_classes=n_classes, scene_bias=scene_bias))
    path = Path(ckpt_dir) / "tokenizer.pt"

    model = build_tokenizer(tok, seed).to(device)
    codebook = model.quantize.embedding.weight
    ema = tok.ema_decay > 0
    params = [p for n, p in model.named_parameters()
              if not (ema and n == "quantize.embedding.weight")]
    if ema:
        codebook.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=tok.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(step_seed(seed, 0, 2))
    counts = torch.zeros(K, dtype=torch.int64, device=device)        # usage in this window
    ema_n = torch.zeros(K, device=device)                              # EMA cluster sizes
    ema_s = torch.zeros(K, d, device=device)                           # EMA cluster sums
    step, seconds, restarts, history, window_z = 0, 0.0, 0, [], []
    window_hist = None                                                 # usage of the last window

    state = load_state(path, key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        counts.copy_(state["counts"])
        ema_n.copy_(state["ema_n"])
        ema_s.copy_(state["ema_s"])
        window_z = [z.to(device) for z in state["window_z"]]
        window_hist = state.get("window_hist")
        step, seconds = state["step"], state["seconds"]
        restarts, history = state["restarts"], state["history"]

    def save() -> None:
        save_torch(dict(key=key, model=model.state_dict(), opt=opt.state_dict(),
                        gen=gen.get_state(), counts=counts.cpu(), ema_n=ema_n.cpu(),
                        ema_s=ema_s.cpu(), window_z=[z.cpu() for z in window_z],
                        window_hist=None if window_hist is None else window_hist.cpu(), step=step,
                        seconds=seconds, restarts=restarts, history=history,
                        done=step >= tok.steps), path)

    amp = tok.amp and bf16_ok(device)
    bar = step_bar(tok.steps, step, "tokenizer", progress and step < tok.steps)
    model.train()
    try:
        while step < tok.steps:
            t0 = time.perf_counter()
            x, w = _tokenizer_batch(tok, seed, step, device, n_classes, scene_bias)
            if step == 0 and tok.kmeans_init:
                with torch.no_grad():
                    h0 = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1).reshape(-1, d)
                    codebook.data.copy_(_kmeans(h0, K, 10, gen))
                    if ema:
                        ema_n.fill_(1.0)
                        ema_s.copy_(codebook.data)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tok.lr, tok.warmup, tok.steps, tok.min_lr_frac)

            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                h = model.quant_conv(model.encoder(x)).float()          # (B, d, m, m)
            zq, qloss, (_, _, idx) = model.quantize(h)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                xrec = model.decoder(model.post_quant_conv(zq)).float()  # (B, 3, H, W)
            err = xrec - x
            rec = (w * (err.abs() + tok.l2_weight * err * err)).mean() / w.mean()
            if ema:  # commitment only; the codebook follows the EMA below
                vq = tok.beta * F.mse_loss(h, zq.detach())
            else:
                vq = qloss
            loss = rec + vq
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            with torch.no_grad():
                idx = idx.reshape(-1)
                zf = h.detach().permute(0, 2, 3, 1).reshape(-1, d)
                n = torch.bincount(idx, minlength=K)
                counts += n
                if ema:
                    ema_n.mul_(tok.ema_decay).add_(n.to(ema_n.dtype), alpha=1 - tok.ema_decay)
                    s = torch.zeros_like(ema_s).index_add_(0, idx, zf)
                    ema_s.mul_(tok.ema_decay).add_(s, alpha=1 - tok.ema_decay)
                    codebook.data.copy_(ema_s / ema_n.clamp(min=1e-5)[:, None])
                window_z = (window_z + [zf])[-max(1, tok.restart_every):]
                n_restart = 0
                if tok.restart_every and (step + 1) % tok.restart_every == 0:
                    dead = restart_dead_codes(codebook.data, counts, torch.cat(window_z), gen)
                    n_restart = dead.numel()
                    restarts += n_restart
                    if ema and n_restart:
                        ema_n[dead] = 1.0
                        ema_s[dead] = codebook.data[dead]
                    window_hist = counts.clone()
                    counts.zero_()
                    window_z = []
            step += 1
            seconds += time.perf_counter() - t0

            def row_stats() -> dict:
                u = (codebook_usage(idx, K) if window_hist is None
                     else _hist_usage(window_hist.cpu()))
                return dict(step=step, loss=loss.item(), rec=rec.item(),
                            perplexity=u["perplexity"], used=u["used"], restarted=n_restart,
                            lr=opt.param_groups[0]["lr"])

            end_step(step, tok, row_stats, history, bar, callback, save,
                     lambda r: dict(loss=f"{r['loss']:.4f}", ppl=f"{r['perplexity']:.0f}", used=r["used"]))
    finally:
        if bar is not None:
            bar.close()

    model.eval()
    last = history[-1] if history else {}
    stats = dict(steps=step, seconds=seconds, final_loss=last.get("loss"), restarts=restarts,
                 perplexity=last.get("perplexity"), used=last.get("used"),
                 dead=K - last["used"] if last else None, history=history)
    return model, stats


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [-1, 1] -> tokens (N, m, m) int64 with a taming ``VQModel``."""
    dev = next(model.parameters()).device
    out = []
    for x in images.split(batch_size):
        quant, _, (_, _, idx) = model.encode(x.to(dev))
        out.append(idx.reshape(x.shape[0], quant.shape[2], quant.shape[3]))
    return torch.cat(out).cpu()


