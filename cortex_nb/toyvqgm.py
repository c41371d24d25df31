"""Train the toy VQGM here: a taming VQGAN tokenizer and a class-conditional GPT prior.

CORTEX explains a VQGM G (PAPER.md §2.1): a codebook C in R^{K x d}, a transformer that predicts
m^2 tokens for a concept, and a decoder from the token-based embedding E to an image. The paper's
synthetic dataset (§4.1.1) is *sampled* from taming's class-conditional ImageNet model. The toy
profile needs the same kind of model at toy size, trained on this 2-core CPU in minutes, and read
back exactly like the official one. So this module

1. writes a taming config with the structure of the official class-conditional ImageNet ("cin")
   config (:func:`toy_cin_config`),
2. trains the first stage, taming's ``VQModel``, with our own plain loop (:func:`train_tokenizer`),
3. encodes freshly rendered ToyBirds with it and trains the prior, taming's mingpt ``GPT``, on
   ``[class token, z tokens in raster order]`` exactly as ``Net2NetTransformer.forward`` does
   (:func:`train_prior`), and
4. assembles both into a ``Net2NetTransformer`` saved as ``config.yaml`` + ``model.ckpt``
   (:func:`build_toy_vqgm`), which the project reads back only through
   :func:`cortex_nb.vqgm.load_vqgm` -- the same loader as the official checkpoint.

Why the tokenizer recipe is not taming's (measured here, NOTES.md "A toy-world tokenizer"):
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

Measured with the toy defaults (seed 0; AMD EPYC with AVX512-BF16, 2 cores shared with other
jobs, so the times are single-core CPU seconds): tokenizer 600 steps x 48 images ~290 s, encoding
24k images ~70 s, prior 1000 steps x 128 sequences ~380 s. On 2000 held-out images: L1 0.070,
all 512 codes used (perplexity ~430). A ResNet-18 trained on real ToyBirds (100 % on real
images) recognises 97.6 % of the reconstructions (99.7 % within a head-only pair: heads
survive), and 84 % of class-conditional prior samples (temperature 1, no top-k; 90 % with
top_p 0.92). Chance is 10 %.

Example::

    from cortex_nb.toyvqgm import build_toy_vqgm
    from cortex_nb.vqgm import load_vqgm
    paths = build_toy_vqgm("results/toy/cache/vqgm", seed=0)   # cached after the first run
    vq = load_vqgm(paths["config"], paths["ckpt"])
    tokens = vq.sample([0, 1, 2], seed=0)                         # (3, 8, 8)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import toyworld
from ._taming_compat import import_taming
from .files import atomic_path, progress

__all__ = [
    "TokenizerConfig",
    "PriorConfig",
    "SMOKE_TOKENIZER",
    "SMOKE_PRIOR",
    "toy_cin_config",
    "train_tokenizer",
    "train_prior",
    "codebook_usage",
    "restart_dead_codes",
    "prior_logits",
    "build_tokenizer",
    "build_prior",
    "encode_images",
    "build_toy_vqgm",
]

logger = logging.getLogger(__name__)

#: bump when the training code changes in a way that changes the trained weights: cached
#: builds and training checkpoints made by another recipe are then rebuilt, never reused.
RECIPE_VERSION = 1


# --------------------------------------------------------------------------------------------
# configs


@dataclass
class TokenizerConfig:
    """The toy VQGAN (taming ``VQModel``) and its training recipe. Defaults: the toy profile."""

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


@dataclass
class PriorConfig:
    """The class-conditional prior (taming mingpt ``GPT``). Defaults: the toy profile."""

    n_layer: int = 4                  # transformer blocks
    n_head: int = 4                   # attention heads
    n_embd: int = 128                 # width
    n_train: int = 24000              # fresh toy images encoded into training sequences
    steps: int = 1000                 # optimizer steps (~5 epochs of n_train; 600: -1 min, samples
                                      # recognised 71-77% instead of 84-90%)
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


#: CI / nbval size: proves the code runs end to end, measures nothing.
SMOKE_TOKENIZER = TokenizerConfig(n_embed=128, embed_dim=32, z_channels=32, ch_mult=(1, 1, 2),
                                  steps=60, batch_size=16, lr=3e-3, warmup=5, restart_every=5,
                                  ckpt_every=20, log_every=5)
SMOKE_PRIOR = PriorConfig(n_layer=1, n_head=2, n_embd=32, n_train=512, steps=40, batch_size=64,
                          lr=3e-3, warmup=5, ckpt_every=20, log_every=5)


def _config_dict(cfg: Any) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the taming config


def _first_stage_config(tok: TokenizerConfig) -> dict:
    return {
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": tok.embed_dim,
            "n_embed": tok.n_embed,
            "ddconfig": {
                "double_z": False,
                "z_channels": tok.z_channels,
                "resolution": 32,
                "in_channels": 3,
                "out_ch": 3,
                "ch": tok.ch,
                "ch_mult": list(tok.ch_mult),
                "num_res_blocks": tok.num_res_blocks,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        },
    }


def _transformer_config(prior: PriorConfig, K: int, m: int) -> dict:
    return {
        "target": "taming.modules.transformer.mingpt.GPT",
        "params": {
            "vocab_size": K,
            "block_size": m * m + 1,      # class token + m*m tokens (the last is never input)
            "n_layer": prior.n_layer,
            "n_head": prior.n_head,
            "n_embd": prior.n_embd,
        },
    }


def toy_cin_config(tok: TokenizerConfig, prior: PriorConfig, n_classes: int = 10) -> DictConfig:
    """The toy model's taming config, with the structure of the official class-conditional
    ImageNet ("cin") config: ``model.target`` Net2NetTransformer, ``first_stage_key: image``,
    ``cond_stage_key: class_label``, a mingpt GPT over the K codes (the class token shares the
    vocabulary, as in the official model), a VQModel first stage (loss: DummyLoss, no
    ``ckpt_path``) and a Labelator cond stage.
    """
    if n_classes > tok.n_embed:
        raise ValueError(f"n_classes={n_classes} > K={tok.n_embed}: the class token must be a "
                         f"valid GPT vocabulary id (the cin model shares one vocabulary)")
    return OmegaConf.create({
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.cond_transformer.Net2NetTransformer",
            "params": {
                "first_stage_key": "image",
                "cond_stage_key": "class_label",
                "transformer_config": _transformer_config(prior, tok.n_embed, tok.grid),
                "first_stage_config": _first_stage_config(tok),
                "cond_stage_config": {
                    "target": "taming.modules.util.Labelator",
                    "params": {"n_classes": int(n_classes)},
                },
            },
        },
    })


def _instantiate(node: Mapping) -> torch.nn.Module:
    tm = import_taming()
    return tm.main.instantiate_from_config(dict(node))


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


def _bf16_ok(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16 /
    AMX as oneDNN reports it); elsewhere it would be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _lr_at(step: int, lr: float, warmup: int, total: int, min_frac: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from lr to lr * min_frac at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _step_seed(seed: int, step: int, what: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(what), int(step)]).generate_state(1)[0])


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (build.json, the cache marker, is read back whole)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _load_state(path: Path, key: str) -> dict | None:
    """A training checkpoint written by this module, if it exists and belongs to ``key``."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken file means: start over
        logger.warning("ignoring unreadable training checkpoint %s (%s); starting over", path, exc)
        return None
    if state.get("key") != key:
        logger.info("training checkpoint %s belongs to other settings; starting over", path)
        return None
    return state


def _progress(total: int, initial: int, desc: str, enabled: bool):
    """A step bar (:func:`cortex_nb.files.progress`), or None when disabled."""
    if not enabled or os.environ.get("CORTEX_PROGRESS", "").lower() == "off":
        return None
    return progress(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(tok: TokenizerConfig, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised taming ``VQModel`` for ``tok`` (same init for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _instantiate(_first_stage_config(tok))


def _pixel_weights(masks: np.ndarray, tok: TokenizerConfig) -> torch.Tensor:
    """(B, 1, H, W) per-pixel loss weights from ToyBirds part masks."""
    m = torch.as_tensor(masks, dtype=torch.int64)
    w = (1.0 + tok.head_weight * (m == toyworld.HEAD).float()
         + tok.body_weight * (m == toyworld.BODY).float())
    return w[:, None]


def _tokenizer_batch(tok: TokenizerConfig, seed: int, step: int, device, n_classes: int,
                     scene_bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    b = toyworld.sample(tok.batch_size, _step_seed(seed, step, 1), n_classes=n_classes,
                        scene_bias=scene_bias)
    return toyworld.to_tensor(b.images).to(device), _pixel_weights(b.masks, tok).to(device)



def _end_step(step: int, cfg, stats: Callable[[], dict], history: list, bar, callback, save: Callable[[], None],
              postfix: Callable[[dict], dict]) -> None:
    """After optimizer step ``step`` (counted from 1) of either toy loop: every ``cfg.log_every``
    steps and at the last one append ``stats()`` to history, show ``postfix(stats)`` on the bar and
    call ``callback(step, stats)``; advance the bar; every ``cfg.ckpt_every`` steps and at the
    last one ``save()``."""
    if step % cfg.log_every == 0 or step == cfg.steps:
        row = stats()
        history.append(row)
        if bar is not None:
            bar.set_postfix(**postfix(row))
        if callback is not None:
            callback(step, row)
    if bar is not None:
        bar.update(1)
    if step % cfg.ckpt_every == 0 or step == cfg.steps:
        save()

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
        n_classes, scene_bias: passed to :func:`cortex_nb.toyworld.sample`.
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
    key = _hash(dict(part="tokenizer", v=RECIPE_VERSION, tok=_config_dict(tok), seed=seed,
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
    gen = torch.Generator().manual_seed(_step_seed(seed, 0, 2))
    counts = torch.zeros(K, dtype=torch.int64, device=device)        # usage in this window
    ema_n = torch.zeros(K, device=device)                              # EMA cluster sizes
    ema_s = torch.zeros(K, d, device=device)                           # EMA cluster sums
    step, seconds, restarts, history, window_z = 0, 0.0, 0, [], []
    window_hist = None                                                 # usage of the last window

    state = _load_state(path, key)
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
        _atomic_save(dict(key=key, model=model.state_dict(), opt=opt.state_dict(),
                          gen=gen.get_state(), counts=counts.cpu(), ema_n=ema_n.cpu(),
                          ema_s=ema_s.cpu(), window_z=[z.cpu() for z in window_z],
                          window_hist=None if window_hist is None else window_hist.cpu(), step=step,
                          seconds=seconds, restarts=restarts, history=history,
                          done=step >= tok.steps), path)

    amp = tok.amp and _bf16_ok(device)
    bar = _progress(tok.steps, step, "tokenizer", progress and step < tok.steps)
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
                g["lr"] = _lr_at(step, tok.lr, tok.warmup, tok.steps, tok.min_lr_frac)

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

            _end_step(step, tok, row_stats, history, bar, callback, save,
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


# --------------------------------------------------------------------------------------------
# prior


def build_prior(prior: PriorConfig, K: int, m: int, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised taming mingpt ``GPT`` for ``prior`` (same init for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _instantiate(_transformer_config(prior, K, m))


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
    every ``ckpt_every`` steps and resumes like :func:`train_tokenizer`.

    Args:
        prior: architecture and recipe.  tokens: (N, m, m) int64 codes.  labels: (N,) class ids.
        K: codebook size (GPT vocabulary).  n_classes: number of classes (checked).
        seed, device, ckpt_dir, progress, callback: as in :func:`train_tokenizer`.

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
    key = _hash(dict(part="prior", v=RECIPE_VERSION, prior=_config_dict(prior), K=K, seed=seed,
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
    state = _load_state(path, key)
    if state is not None:
        gpt.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        recent = state.get("recent", [])

    def save() -> None:
        _atomic_save(dict(key=key, model=gpt.state_dict(), opt=opt.state_dict(), step=step,
                          seconds=seconds, history=history, recent=recent,
                          done=step >= prior.steps), path)

    per_epoch = max(1, N // prior.batch_size)
    perm, perm_epoch = None, -1
    amp = prior.amp and _bf16_ok(device)
    bar = _progress(prior.steps, step, "prior", progress and step < prior.steps)
    gpt.train()
    try:
        while step < prior.steps:
            t0 = time.perf_counter()
            epoch, i = divmod(step, per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(_step_seed(seed, epoch, 3))
                perm, perm_epoch = torch.randperm(N, generator=g), epoch
            sel = perm[i * prior.batch_size:(i + 1) * prior.batch_size]
            for pg in opt.param_groups:
                pg["lr"] = _lr_at(step, prior.lr, prior.warmup, prior.steps, prior.min_lr_frac)
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
            _end_step(step, prior, lambda: dict(step=step, loss=sum(recent) / len(recent),
                                                lr=opt.param_groups[0]["lr"]),
                      history, bar, callback, save, lambda r: dict(loss=f"{r['loss']:.3f}"))
    finally:
        if bar is not None:
            bar.close()
    gpt.eval()
    stats = dict(steps=step, seconds=seconds,
                 final_loss=history[-1]["loss"] if history else None, history=history)
    return gpt, stats


# --------------------------------------------------------------------------------------------
# the whole toy VQGM


def _build_key(tok, prior, seed, n_classes, scene_bias, n_report) -> dict:
    return dict(v=RECIPE_VERSION, tokenizer=_config_dict(tok), prior=_config_dict(prior),
                seed=int(seed), n_classes=int(n_classes), scene_bias=float(scene_bias),
                n_report=int(n_report))


@torch.no_grad()
def _recon_report(model, tok: TokenizerConfig, seed: int, n: int, n_classes: int,
                  scene_bias: float) -> dict:
    """Reconstruction error and codebook usage on n held-out real toy images."""
    b = toyworld.sample(n, _step_seed(seed, 0, 5), n_classes=n_classes, scene_bias=scene_bias)
    x = toyworld.to_tensor(b.images)
    dev = next(model.parameters()).device
    l1, l2, head, toks = [], [], [], []
    masks = torch.as_tensor(b.masks)
    for xs, ms in zip(x.split(256), masks.split(256)):
        quant, _, (_, _, idx) = model.encode(xs.to(dev))
        r = model.decode(quant).clamp(-1, 1).cpu()
        e = (r - xs).abs().mean(1)                                 # (b, H, W) per-pixel L1
        l1.append(e.flatten(1).mean(1))
        l2.append((r - xs).pow(2).flatten(1).mean(1))
        hm = (ms == toyworld.HEAD).float()
        head.append((e * hm).flatten(1).sum(1) / hm.flatten(1).sum(1).clamp(min=1))
        toks.append(idx.reshape(xs.shape[0], -1).cpu())
    u = codebook_usage(torch.cat(toks), tok.n_embed)
    return dict(n_images=n, recon_l1=float(torch.cat(l1).mean()),
                recon_mse=float(torch.cat(l2).mean()), recon_l1_head=float(torch.cat(head).mean()),
                perplexity=u["perplexity"], used=u["used"], dead=u["dead"])


def build_toy_vqgm(out_dir: str | os.PathLike, tok: TokenizerConfig | None = None,
                   prior: PriorConfig | None = None, *, seed: int = 0,
                   device: str | torch.device = "cpu", n_classes: int = 10,
                   scene_bias: float = 0.65, n_report: int = 2000,
                   progress: bool = True) -> dict:
    """Train (or reuse) the toy VQGM and save it as a taming ``config.yaml`` + ``model.ckpt``.

    Cached: when ``out_dir`` holds config.yaml, model.ckpt and a ``build.json`` whose hash
    matches these settings, nothing is trained. Otherwise the tokenizer and the prior are
    trained (each resumable from ``out_dir/train``), assembled into a ``Net2NetTransformer``
    built from :func:`toy_cin_config` through :func:`cortex_nb.vqgm.build_from_config`
    (weights loaded strictly), and saved with :func:`cortex_nb.vqgm.save_taming_checkpoint`.
    Read it back with ``cortex_nb.vqgm.load_vqgm(paths["config"], paths["ckpt"])``.

    Args:
        out_dir: where config.yaml, model.ckpt, report.json, build.json and train/ go.
        tok, prior: configs (default: the toy profile's).
        seed: all randomness (init, data, restarts, batches).  device: torch device.
        n_classes, scene_bias: the ToyBirds world.  n_report: held-out images for the report.
        progress: tqdm bars.

    Returns:
        dict(config=Path, ckpt=Path, report=dict) -- the report also lies in report.json: recon
        L1/MSE (and L1 on head pixels) on held-out real images, codebook perplexity/used/dead,
        training seconds per part, the prior's final loss, and whether it came from the cache.
    """
    from .vqgm import build_from_config, save_taming_checkpoint

    tok = tok or TokenizerConfig()
    prior = prior or PriorConfig()
    out = Path(out_dir)
    paths = dict(config=out / "config.yaml", ckpt=out / "model.ckpt")
    report_path, build_path = out / "report.json", out / "build.json"
    spec = _build_key(tok, prior, seed, n_classes, scene_bias, n_report)
    key = _hash(spec)
    if all(p.is_file() for p in (*paths.values(), report_path, build_path)):
        try:
            cached = json.loads(build_path.read_text()).get("hash") == key
        except (OSError, ValueError):
            cached = False
        if cached:
            report = json.loads(report_path.read_text())
            logger.info("toy VQGM: reusing %s (settings hash %s)", out, key)
            return dict(**paths, report=dict(report, cached=True))

    device = torch.device(device)
    train_dir = out / "train"
    logger.info("toy VQGM: training tokenizer (%d steps)", tok.steps)
    first_stage, tok_stats = train_tokenizer(tok, seed=seed, device=device, ckpt_dir=train_dir,
                                             progress=progress, n_classes=n_classes,
                                             scene_bias=scene_bias)
    # the prior's training set: fresh images, encoded once (cached beside the checkpoints)
    tok_path = train_dir / "prior_tokens.pt"
    t0 = time.perf_counter()
    tok_key = _hash(dict(part="prior_tokens", v=RECIPE_VERSION, tokenizer=spec["tokenizer"],
                         n_train=prior.n_train, seed=seed, n_classes=n_classes,
                         scene_bias=scene_bias))   # other prior settings: not re-encoded
    cached_tokens = _load_state(tok_path, tok_key)
    if cached_tokens is None:
        logger.info("toy VQGM: encoding %d toy images for the prior", prior.n_train)
        b = toyworld.sample(prior.n_train, _step_seed(seed, 0, 4), n_classes=n_classes,
                            scene_bias=scene_bias)
        tokens = encode_images(first_stage, toyworld.to_tensor(b.images))
        labels = torch.as_tensor(b.labels, dtype=torch.int64)
        _atomic_save(dict(key=tok_key, tokens=tokens, labels=labels), tok_path)
    else:
        tokens, labels = cached_tokens["tokens"], cached_tokens["labels"]
    encode_seconds = time.perf_counter() - t0
    logger.info("toy VQGM: training prior (%d steps)", prior.steps)
    gpt, prior_stats = train_prior(prior, tokens, labels, K=tok.n_embed, n_classes=n_classes,
                                   seed=seed, device=device, ckpt_dir=train_dir, progress=progress)

    config = toy_cin_config(tok, prior, n_classes)
    model = build_from_config(config)
    model.first_stage_model.load_state_dict(first_stage.state_dict(), strict=True)
    model.transformer.load_state_dict(gpt.state_dict(), strict=True)
    with atomic_path(paths["config"]) as tmp:
        OmegaConf.save(config, tmp)
    save_taming_checkpoint(model, paths["ckpt"], epoch=0,
                           global_step=tok_stats["steps"] + prior_stats["steps"])

    report = dict(
        _recon_report(first_stage, tok, seed, n_report, n_classes, scene_bias),
        tokenizer_seconds=tok_stats["seconds"], encode_seconds=encode_seconds,
        prior_seconds=prior_stats["seconds"], tokenizer_steps=tok_stats["steps"],
        tokenizer_final_loss=tok_stats["final_loss"], tokenizer_restarts=tok_stats["restarts"],
        prior_steps=prior_stats["steps"], prior_final_loss=prior_stats["final_loss"],
        prior_n_train=int(tokens.shape[0]), K=tok.n_embed, m=tok.grid, d=tok.embed_dim,
        settings=spec, hash=key,
    )
    _write_text(report_path, json.dumps(report, indent=2))
    _write_text(build_path, json.dumps(dict(hash=key, settings=spec), indent=2))
    return dict(**paths, report=dict(report, cached=False))
