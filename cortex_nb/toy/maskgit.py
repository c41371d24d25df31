"""A second toy VQGM family, MaskGIT-style (PAPER.md §2.1 at toy size, with a *bidirectional* prior).

The taming toy model (:mod:`cortex_nb.toy.vqgm`) has an autoregressive prior; this one follows MaskGIT (Chang et al.,
CVPR 2022), and CORTEX sees it only through :class:`cortex_nb.vqgm.protocol.VQGMProtocol` (:class:`MaskGITVQGM`, with
the validation and messages of taming's :class:`cortex_nb.vqgm.taming.VQGM`):

* tokenizer: taming's ``Encoder`` / ``Decoder`` with 1x1 quant / post-quant convs and
  ``vector_quantize_pytorch.VectorQuantize`` (Euclidean, EMA codebook, k-means init, dead-code restarts, codebook_dim
  = d: no projection);
* prior: :class:`BidirectionalTransformer` (``nn.TransformerEncoder``) over [class token, m*m tokens], id K = [MASK];
* sampler: :func:`~cortex_nb.toy.maskgit_sampler.maskgit_decode` (:mod:`cortex_nb.toy.maskgit_sampler`), iterative
  parallel decoding on a cosine schedule.

Training, the cached build, :func:`~cortex_nb.toy.maskgit_training.save_maskgit` and ``load_maskgit``: see
:mod:`cortex_nb.toy.maskgit_training`.
"""
from __future__ import annotations

import copy
import hashlib
import numbers
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.files import progress as progress_bar, weights_key
from ..vqgm.protocol import TokenRangeError, as_index_tensor
from ..vqgm.taming_config import instantiate
from .maskgit_sampler import cosine_schedule, maskgit_decode, sample_categorical
from .training import config_dict

__all__ = ["MaskGITConfig", "Tokenizer", "BidirectionalTransformer", "MaskGITNet", "MaskGITVQGM", "build_maskgit",
           "nearest_code", "cosine_schedule", "sample_categorical", "maskgit_decode"]

_TAMING_MODEL = "taming.modules.diffusionmodules.model"
_QUANTIZE_BUDGET = 1 << 24      # max elements of one (rows x K) distance block, as in taming.py


@dataclass
class MaskGITConfig:
    """The toy MaskGIT: architecture, training recipe and sampler defaults (flat, so that a profile section can be
    checked against the fields). Sizes match the taming toy model: 32 px images, 8 x 8 tokens, K = 512, d = 64."""

    # -- tokenizer (taming Encoder / Decoder; GroupNorm(32): ch and every ch * ch_mult must be multiples of 32)
    image_size: int = 32              # H: images are H x H
    ch: int = 32                      # base channels of encoder / decoder
    ch_mult: tuple = (1, 2, 2)        # 3 resolutions: 32 px -> 8 x 8 tokens (m = H / 2**(len - 1))
    num_res_blocks: int = 1           # res blocks per resolution
    attn_resolutions: tuple = ()      # resolutions with self-attention (none: the toy world needs none)
    z_channels: int = 64              # encoder output channels before the 1x1 quant conv
    K: int = 512                      # codebook size
    d: int = 64                       # code dimension (= VectorQuantize codebook_dim: no projection)
    # -- quantiser (vector_quantize_pytorch.VectorQuantize)
    decay: float = 0.9                # EMA decay of the codebook (cluster sizes and sums)
    commitment_weight: float = 0.25   # encoder -> code commitment term
    threshold_ema_dead_code: float = 1.0   # codes whose EMA cluster size falls below this are re-seeded from the batch
    kmeans_iters: int = 10            # k-means initialisation of the codebook on the first batch
    rotation_trick: bool = True       # gradient through the quantiser by the rotation trick (library default) / STE
    # -- tokenizer training
    tok_steps: int = 600              # optimizer steps, each on tok_batch_size fresh ToyBirds
    tok_batch_size: int = 48          # images per step
    tok_lr: float = 2e-3              # Adam peak learning rate
    tok_warmup: int = 20              # linear warmup steps, then cosine decay
    l2_weight: float = 1.0            # reconstruction = L1 + l2_weight * L2 per pixel
    head_weight: float = 6.0          # extra pixel weight on head pixels (toy part masks only)
    body_weight: float = 1.0          # extra pixel weight on body pixels
    # -- prior (bidirectional transformer) and its training
    n_layer: int = 4                  # TransformerEncoder layers
    n_head: int = 4                   # attention heads
    n_embd: int = 128                 # width
    dropout: float = 0.0              # dropout in the transformer layers
    prior_n_train: int = 24000        # fresh toy images encoded into the prior's training grids
    prior_steps: int = 1000           # optimizer steps
    prior_batch_size: int = 128       # grids per step
    prior_lr: float = 1e-3            # AdamW peak learning rate
    prior_warmup: int = 30            # linear warmup steps, then cosine decay
    weight_decay: float = 0.01        # AdamW decay of weight matrices (not embeddings)
    grad_clip: float = 1.0            # global gradient-norm clip
    # -- both trainings
    min_lr_frac: float = 0.05         # cosine decays to lr * min_lr_frac
    amp: bool = True                  # bf16 autocast where the CPU / GPU has native bf16 (quantiser, loss in fp32)
    ckpt_every: int = 100             # steps between resumable checkpoints
    log_every: int = 10               # steps between history entries / progress updates
    n_report: int = 2000              # held-out real images in the build's report
    # -- sampler defaults (MaskGITVQGM.sample)
    steps: int = 8                    # decoding iterations (1: every token in one parallel step)
    temperature: float = 1.0          # logits / temperature before drawing a token
    top_k: int | None = None          # keep the top_k logits per position (None: all)
    choice_temperature: float = 4.5   # Gumbel noise on the confidences that pick what is re-masked (MaskGIT's 4.5)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(c) for c in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        bad = [c for c in (self.ch, *[self.ch * c for c in self.ch_mult]) if c % 32]
        if bad:
            raise ValueError(f"MaskGITConfig: ch={self.ch}, ch_mult={self.ch_mult} gives {bad[0]} channels; taming's "
                             f"GroupNorm(32) needs multiples of 32")
        if self.image_size % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"MaskGITConfig: image_size={self.image_size} is not divisible by "
                             f"2**(len(ch_mult)-1) = {2 ** (len(self.ch_mult) - 1)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"MaskGITConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        _check_knobs(self.temperature, self.top_k, None, self.steps, self.choice_temperature)

    @property
    def m(self) -> int:  # token grid side
        return self.image_size // 2 ** (len(self.ch_mult) - 1)

    def settings(self, part: str) -> dict:
        """The fields one part depends on, as plain data (cache keys): "tokenizer", "prior" or "sampler"."""
        prior = {"n_layer", "n_head", "n_embd", "dropout", "weight_decay", "grad_clip"} | \
            {f.name for f in fields(self) if f.name.startswith("prior_")}
        sampler = {"steps", "temperature", "top_k", "choice_temperature"}
        shared = {"min_lr_frac", "amp", "ckpt_every", "log_every"}
        names = {"tokenizer": {f.name for f in fields(self)} - prior - sampler - {"n_report"},
                 "prior": prior | shared, "sampler": sampler}[part]
        return {k: v for k, v in config_dict(self).items() if k in names}


def _check_knobs(temperature, top_k, top_p, steps, choice_temperature) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps (MaskGIT decoding iterations) must be an integer >= 1, got {steps!r}")
    if not choice_temperature >= 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature!r}")


# --------------------------------------------------------------------------------------------
# the networks


class Tokenizer(nn.Module):
    """taming Encoder -> 1x1 conv -> VectorQuantize -> 1x1 conv -> taming Decoder."""

    def __init__(self, cfg: MaskGITConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        dd = dict(ch=cfg.ch, out_ch=3, ch_mult=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks,
                  attn_resolutions=list(cfg.attn_resolutions), dropout=0.0, in_channels=3,
                  resolution=cfg.image_size, z_channels=cfg.z_channels, double_z=False)
        # built through import_taming's shims, taming's print()s kept in the debug log (taming_config.instantiate)
        self.encoder = instantiate(dict(target=f"{_TAMING_MODEL}.Encoder", params=dd))
        self.decoder = instantiate(dict(target=f"{_TAMING_MODEL}.Decoder", params=dd))
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.d, 1)
        self.post_quant_conv = nn.Conv2d(cfg.d, cfg.z_channels, 1)
        self.quantize = VectorQuantize(
            dim=cfg.d, codebook_size=cfg.K, codebook_dim=cfg.d, decay=cfg.decay, kmeans_init=True,
            kmeans_iters=cfg.kmeans_iters, threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            commitment_weight=cfg.commitment_weight, rotation_trick=cfg.rotation_trick, accept_image_fmap=True)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) the VectorQuantize codebook (its EMA ``embed`` buffer)."""
        return self.quantize.codebook

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, H) -> pre-quantisation embeddings (B, d, m, m)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, E: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, d, m, m) -> images (B, 3, H, H), unclamped."""
        return self.decoder(self.post_quant_conv(E))


class BidirectionalTransformer(nn.Module):
    """Class-conditional masked-token predictor: [class token, m*m tokens (id K = [MASK])] -> logits (B, m*m, K)."""

    def __init__(self, K: int, m: int, n_classes: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.K, self.m, self.n_classes, self.mask_id = K, m, n_classes, K
        self.tok_emb = nn.Embedding(K + 1, n_embd)                      # id K = mask_id: [MASK]
        self.cls_emb = nn.Embedding(n_classes, n_embd)                  # the class, prepended as a token
        self.pos_emb = nn.Parameter(torch.zeros(1, m * m + 1, n_embd))  # learned, class position first
        layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, K)
        for name, p in self.named_parameters():     # GPT-style init; TransformerEncoder's layers are deep copies
            if p.dim() >= 2 or name == "pos_emb":   # of one layer, so re-drawing also makes them differ
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, m*m) in [0, K], labels (B,) -> logits (B, m*m, K); ``where`` (B, m*m) bool: only the logits of
        those positions, (M, K) in row-major order (``logits[where]``, without the output layer for the others)."""
        x = torch.cat([self.cls_emb(labels)[:, None], self.tok_emb(tokens)], dim=1) + self.pos_emb  # (B, 1+n, C)
        h = self.ln_f(self.blocks(x))[:, 1:]
        return self.head(h if where is None else h[where])


class MaskGITNet(nn.Module):
    """Tokenizer and prior in one module: what ``weights_key`` digests and ``model.pt`` holds."""

    def __init__(self, tokenizer: Tokenizer, prior: BidirectionalTransformer) -> None:
        super().__init__()
        self.tokenizer, self.prior = tokenizer, prior


def build_maskgit(cfg: MaskGITConfig | None = None, n_classes: int = 10, seed: int = 0,
                  device: str | torch.device = "cpu") -> "MaskGITVQGM":
    """A MaskGITVQGM with freshly initialised weights (same weights for the same seed; global RNG untouched). Its
    codebook is all zeros until the tokenizer has seen a training batch (k-means initialisation)."""
    cfg = cfg or MaskGITConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = Tokenizer(cfg)
        prior = BidirectionalTransformer(cfg.K, cfg.m, n_classes, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)
    return MaskGITVQGM(MaskGITNet(tok, prior), cfg, n_classes).to(device)


# --------------------------------------------------------------------------------------------
# quantisation and the sampler


def nearest_code(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """flat (N, d) -> (N,) id of the nearest codebook row (Euclidean), in blocks of at most 2**24 distances."""
    cb = codebook.to(flat.dtype)
    cb_sq = (cb * cb).sum(1)
    rows = max(1, _QUANTIZE_BUDGET // cb.shape[0])
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row
    idx = [torch.addmm(cb_sq, chunk, cb.T, alpha=-2.0).argmin(1) for chunk in flat.split(rows)]
    return torch.cat(idx) if idx else torch.empty(0, dtype=torch.int64, device=flat.device)


# --------------------------------------------------------------------------------------------
# the VQGM seen by CORTEX


class MaskGITVQGM:
    """A toy MaskGIT as CORTEX sees it (:class:`cortex_nb.vqgm.protocol.VQGMProtocol`): ``net`` (a
    :class:`MaskGITNet`, eval mode, frozen), its ``config`` and the protocol's sizes K, d, m, image_size, n_classes."""

    def __init__(self, net: MaskGITNet, config: MaskGITConfig, n_classes: int) -> None:
        self.net = net.eval().requires_grad_(False)
        self.config = config
        self.K, self.d, self.m, self.image_size = config.K, config.d, config.m, config.image_size
        self.n_classes = int(n_classes)

    device = property(lambda self: self.codebook.device)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) the quantiser's codebook (detached, shares storage with the model)."""
        return self.net.tokenizer.codebook.detach()

    def to(self, device: str | torch.device) -> "MaskGITVQGM":
        """Move the model to ``device`` (in place) and return self."""
        self.net.to(torch.device(device))
        return self

    def fingerprint(self) -> str:
        """Short sha256 (16 hex chars) of the codebook bytes, to stamp token stores (as taming's VQGM)."""
        h = hashlib.sha256(f"codebook {self.K}x{self.d} float32\n".encode())
        h.update(self.codebook.to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def settings(self) -> dict:
        """The configuration as plain data (what config.json holds): the config's fields and n_classes."""
        return dict(config_dict(self.config), n_classes=self.n_classes)

    def identity(self) -> dict:
        """Family, configuration, how the sampler draws tokens and a digest of every weight (tokenizer and prior):
        what cache keys digest (samples drawn with torch.multinomial, before 2026-12-07, are not reused)."""
        return {"family": "maskgit", "draw": "inverse-cdf", "config": self.settings(),
                "weights": weights_key(self.net)}

    def with_prior(self, prior: nn.Module) -> "MaskGITVQGM":
        """The same tokenizer with ``prior`` (a :class:`BidirectionalTransformer` of the same K, m, classes); this
        VQGM keeps its own."""
        if not isinstance(prior, BidirectionalTransformer):
            raise TypeError(f"prior must be a BidirectionalTransformer, got {type(prior).__name__}")
        if (prior.K, prior.m, prior.n_classes) != (self.K, self.m, self.n_classes):
            raise ValueError(f"prior has K={prior.K}, m={prior.m}, n_classes={prior.n_classes}; this model needs "
                             f"K={self.K}, m={self.m}, n_classes={self.n_classes}")
        other = copy.copy(self)
        other.net = copy.copy(self.net)
        other.net._modules = dict(self.net._modules)   # a shallow copy shares the dict: ours keeps its prior
        other.net.prior = prior.to(self.device).eval()
        return other

    def __repr__(self) -> str:
        return (f"MaskGITVQGM(K={self.K}, d={self.d}, m={self.m}, image_size={self.image_size}, "
                f"n_classes={self.n_classes}, device={self.device})")

    # -- validation (taming's rules and messages) --------------------------------------------

    def _tokens(self, tokens: Any) -> torch.Tensor:
        t = as_index_tensor(tokens, "tokens")
        if t.dim() != 3 or tuple(t.shape[1:]) != (self.m, self.m):
            raise TokenRangeError(f"tokens must have shape (B, {self.m}, {self.m}) for this VQGM's {self.m} x "
                                  f"{self.m} grid, got {tuple(t.shape)}")
        if t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.K:
                raise TokenRangeError(f"token id {hi if hi >= self.K else lo} out of range: this codebook has "
                                      f"K={self.K} entries (ids 0..{self.K - 1}); were these tokens made with "
                                      f"another VQGM? (fingerprint {self.fingerprint()})")
        return t.to(self.device)

    def _images(self, images: Any) -> torch.Tensor:
        x, H = torch.as_tensor(images), self.image_size
        if not x.dtype.is_floating_point:
            raise TypeError(f"images must be float in [-1, 1], got dtype {x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, H, H):
            raise ValueError(f"images must have shape (B, 3, {H}, {H}), got {tuple(x.shape)}")
        return x.to(self.device, self.codebook.dtype)

    def _embeddings(self, E: Any) -> torch.Tensor:
        E = torch.as_tensor(E)
        if E.dim() != 4 or E.shape[1] != self.d:
            raise ValueError(f"E must have shape (B, {self.d}, h, w), got {tuple(E.shape)}")
        return E.to(self.device)

    def _labels(self, labels: Any) -> torch.Tensor:
        y = as_index_tensor(labels, "labels").reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"class label {int(y.max()) if int(y.max()) >= self.n_classes else int(y.min())} "
                             f"out of range 0..{self.n_classes - 1}")
        return y

    # -- tokens <-> embeddings <-> images ----------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Images (B, 3, H, H) in [-1, 1] -> tokens (B, m, m): the nearest code of each encoder output."""
        x = self._images(images)
        out = [self.quantize(self.net.tokenizer.features(chunk)) for chunk in x.split(batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.m, self.m, dtype=torch.int64, device=self.device)

    def embed(self, tokens: Any) -> torch.Tensor:
        """Tokens (B, m, m) -> E (B, d, m, m): one codebook lookup."""
        return F.embedding(self._tokens(tokens), self.codebook).permute(0, 3, 1, 2).contiguous()

    def decode_embeddings(self, E: Any, batch_size: int = 64, clamp: bool = True) -> torch.Tensor:
        """Any E (B, d, h, w) -> images (B, 3, h*f, w*f), without quantising; under the caller's grad mode."""
        E = self._embeddings(E)
        out = [self.net.tokenizer.decode(chunk) for chunk in E.split(batch_size)]
        x = torch.cat(out) if out else torch.empty(0, 3, self.image_size, self.image_size, device=self.device)
        return x.clamp(-1.0, 1.0) if clamp else x

    @torch.no_grad()
    def decode(self, tokens: Any, batch_size: int = 64) -> torch.Tensor:
        """Tokens (B, m, m), any integer dtype -> images (B, 3, H, H) clamped to [-1, 1]."""
        return self.decode_embeddings(self.embed(tokens), batch_size=batch_size, clamp=True)

    @torch.no_grad()
    def quantize(self, E: Any) -> torch.Tensor:
        """E (B, d, h, w) -> tokens (B, h, w): nearest codebook entry (Euclidean) per position."""
        E = self._embeddings(E)
        B, d, h, w = E.shape
        return nearest_code(E.permute(0, 2, 3, 1).reshape(-1, d), self.codebook).reshape(B, h, w)

    # -- class-conditional sampling ----------------------------------------------------------

    def sample(self, labels: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, batch_size: int = 256, progress: bool = False, steps: int | None = None,
               choice_temperature: float | None = None) -> torch.Tensor:
        """Class-conditional tokens by MaskGIT decoding (:func:`maskgit_decode`).

        Args:
            labels: class ids, int or (B,) integers in [0, n_classes).
            temperature: logits are divided by this (> 0).  top_k: keep the k best logits (None: all; with
                ``choice_temperature=0``, ``top_k=1`` is greedy and ignores the seed).  top_p: nucleus mass in (0, 1]
                after top-k (None: off).
            seed: draws come from a local generator seeded with it (None: a seed from the global RNG); the same
                (seed, batch_size, device) gives the same tokens.  batch_size: grids per decoding call.
            progress: a bar over batches.  steps, choice_temperature: decoding iterations, re-masking noise (None:
                the config's).

        Returns: tokens (B, m, m) int64 on ``self.device``.
        """
        y = self._labels(labels)
        steps = self.config.steps if steps is None else steps
        choice = self.config.choice_temperature if choice_temperature is None else float(choice_temperature)
        _check_knobs(temperature, top_k, top_p, steps, choice)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, ()))
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        starts = progress_bar(range(0, y.numel(), batch_size), enabled=progress, desc="sampling", unit="batch")
        out = [maskgit_decode(self.net.prior, y[s:s + batch_size].to(self.device), steps=int(steps),
                              temperature=float(temperature), top_k=None if top_k is None else int(top_k),
                              top_p=top_p, choice_temperature=choice, generator=gen) for s in starts]
        return torch.cat(out).reshape(-1, self.m, self.m) if out else \
            torch.empty(0, self.m, self.m, dtype=torch.int64, device=self.device)
