"""The VQGM seen by CORTEX (PAPER.md §2.1, "Vector quantized image generative model").

CORTEX looks at a VQGM G through three parts: a codebook ``C`` in R^{K x d} (the token
vocabulary ``t_0 .. t_{K-1}``), a class-conditional transformer that predicts ``m^2`` tokens for a
concept, and a decoder that turns the token-based embedding ``E`` in R^{d x m x m}
(the codebook rows of the tokens, arranged on the grid) into an H x H image.

:class:`VQGM` exposes exactly that, batched, for a taming-transformers ``Net2NetTransformer``
(first stage ``taming.models.vqgan.VQModel``, cond stage ``taming.modules.util.Labelator``,
transformer ``taming.modules.transformer.mingpt.GPT``). The same loader, :func:`load_vqgm`,
serves our small toy model and taming's official class-conditional ImageNet model
(16384 x 256 codebook, 16 x 16 grid for 256 x 256 images, 1000 classes).

Vocabulary used throughout:
    ``tokens``   LongTensor (B, m, m) of codebook ids in [0, K)
    ``E``        float tensor (B, d, m, m), the token-based embedding
    ``codebook`` float tensor (K, d)
    ``images``   float tensor (B, 3, H, W) in [-1, 1], H = W = ``image_size``

Reading taming's files is not this module's business: :mod:`cortex_nb.vqgm.taming_config` (configs:
allow-list, sanitising, the official structure), :mod:`cortex_nb.vqgm.taming_ckpt` (checkpoints: safe
unpickling, integrity, checks against the config) and :mod:`cortex_nb.vqgm.taming_compat` (taming's
import-time breakages on Lightning 2 / recent transformers / torch 2). :func:`load_vqgm` strings
them together.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..io.files import progress as progress_bar, weights_key
from .kv_sampler import sample_with_kv_cache
from .taming_ckpt import (LOSS_PREFIXES, check_against_checkpoint, extract_state_dict,
                          read_checkpoint, resolve_ckpt_path)
from .taming_compat import import_taming
from .taming_config import ConfigMismatchError, check_supported, instantiate, sanitize_config
from .protocol import TokenDtypeError, TokenRangeError, as_index_tensor  # noqa: F401 - also imported from here

__all__ = ["VQGM", "load_vqgm", "TokenRangeError"]

logger = logging.getLogger(__name__)

_QUANTIZE_BUDGET = 1 << 24  # max elements of one (rows x K) distance block in quantize()


# --------------------------------------------------------------------------------------------
# loading


def _check_grid(vq: "VQGM", block_size: int) -> None:
    m = vq.m
    fs = vq.model.first_stage_model
    with torch.no_grad():
        probe = torch.zeros(1, 3, vq.image_size, vq.image_size, device=vq.device)
        quant, _, _ = fs.encode(probe)
    if tuple(quant.shape[1:]) != (vq.d, m, m):
        raise ConfigMismatchError(
            f"encoding a {vq.image_size} x {vq.image_size} image gives a "
            f"{' x '.join(str(s) for s in quant.shape[1:])} embedding, expected {vq.d} x {m} x {m} "
            f"(resolution / 2**(len(ch_mult)-1))"
        )
    # a Labelator prepends 1 class token; sampling feeds positions 0 .. m*m-1 (training m*m+1)
    if not m * m <= block_size <= m * m + 1:
        raise ConfigMismatchError(
            f"grid m={m} (ddconfig resolution={vq.image_size}) needs a transformer block_size of "
            f"{m * m + 1} (m*m image tokens + 1 class token), but it is {block_size}: the config's "
            f"resolution/ch_mult do not match the checkpoint's transformer"
        )
    if vq.model.transformer.config.vocab_size != vq.K:
        raise ConfigMismatchError(
            f"transformer vocab_size={vq.model.transformer.config.vocab_size} differs from the "
            f"codebook size K={vq.K}: sampled ids would not be codebook rows"
        )
    if vq.n_classes > vq.model.transformer.config.vocab_size:
        raise ConfigMismatchError(
            f"Labelator n_classes={vq.n_classes} exceeds the transformer vocab_size "
            f"{vq.model.transformer.config.vocab_size} (class ids are fed as tokens)"
        )


def _build_and_load(model_cfg, sd, path):
    """(model, load result): the config's model built on the meta device (no memory, no random init: 1.4 B
    parameters of the cin GPT would take ~15 s and 5.6 GB to initialise only to be overwritten) and given the
    checkpoint's tensors (``assign=True``). A module whose state the checkpoint does not hold (a non-persistent
    buffer) would stay on meta, and a tensor stored in another dtype would keep it: then the model is built the
    ordinary way, on the CPU, and loaded into (cast to its dtypes)."""
    with torch.device("meta"):
        model = instantiate(model_cfg).eval()
    check_against_checkpoint(model, sd, model_cfg, path)
    want = {k: v.dtype for k, v in model.state_dict().items()}
    if all(v.dtype == want.get(k, v.dtype) for k, v in sd.items()):    # assign keeps the file's dtype: only if equal
        result = model.load_state_dict(sd, strict=False, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model, result
    logger.debug("meta-device load left tensors unset; building %s on the CPU", path)
    model = instantiate(model_cfg).eval()
    return model, model.load_state_dict(sd, strict=False)


def load_vqgm(
    config: Any,
    ckpt: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> "VQGM":
    """Build a taming class-conditional model from ``config`` and load ``ckpt`` into it.

    Args:
        config: the taming YAML (path, dict or OmegaConf) with a top-level ``model:``.
        ckpt: path to the Lightning checkpoint (``None``: the ``CORTEX_VQGM_CKPT`` env var).
        device: where the model lives.
        trust_checkpoint: load with ``weights_only=False`` and build any ``target`` the config
            names (arbitrary code can run!). Only for files you trust; the default allow-lists
            the plain types Lightning files hold and taming's own config targets. Profiles:
            ``vqgm.trust_checkpoint`` (CLI ``--set vqgm.trust_checkpoint=true``).

    Returns:
        A :class:`VQGM` in eval mode with frozen parameters.

    Raises:
        CheckpointError: missing / truncated / damaged file (checksum sidecar or zip CRC, see
            :func:`cortex_nb.io.files.verify_file`), or objects we will not unpickle.
        ConfigMismatchError: config and checkpoint describe different models, or the config
            names a ``target`` outside the allow-list (checked before anything is imported).
    """
    path = resolve_ckpt_path(ckpt)
    model_cfg, changed = sanitize_config(config, trust_checkpoint=trust_checkpoint)
    check_supported(model_cfg)
    for msg in changed:
        logger.info("taming config: %s", msg)
    raw = read_checkpoint(path, trust_checkpoint)
    from .paper_dry import DRY_BANNER, DRY_MARKER

    dry_run = isinstance(raw, dict) and DRY_MARKER in raw          # random weights (cortex_nb.vqgm.paper_dry)
    sd = extract_state_dict(raw, path)
    del raw
    loss_keys = [k for k in sd if k.startswith(LOSS_PREFIXES)]
    for k in loss_keys:
        del sd[k]
    if loss_keys:
        logger.info("dropped %d training-loss tensors (%s*) from %s", len(loss_keys),
                    LOSS_PREFIXES[0], path)

    model, result = _build_and_load(model_cfg, sd, path)
    if result.missing_keys or result.unexpected_keys:
        parts = [
            f"{label}: {keys[:6]}" + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            for label, keys in (("missing from the checkpoint", result.missing_keys),
                                ("not in the config's model", result.unexpected_keys))
            if keys
        ]
        raise ConfigMismatchError(
            f"config and checkpoint {path} describe different models: " + "; ".join(parts)
            + ": use the config that came with this checkpoint"
        )
    model.to(torch.device(device)).eval().requires_grad_(False)
    vq = VQGM(model, config=model_cfg, ckpt_path=path, changes=changed + (
        [f"dropped {len(loss_keys)} loss tensors"] if loss_keys else []))
    _check_grid(vq, int(model.transformer.get_block_size()))
    vq.dry_run = dry_run
    logger.info("loaded %r from %s", vq, path)
    if dry_run:
        logger.warning("%s: %s", path, DRY_BANNER)
    return vq


# --------------------------------------------------------------------------------------------
# the model seen by CORTEX


class VQGM:
    """A taming class-conditional VQGM as CORTEX sees it: codebook, grid, encode/decode, sample.

    Attributes:
        model: the wrapped ``Net2NetTransformer`` (eval mode, parameters frozen).
        K: codebook size.  d: embedding dimension.  m: token grid side (m x m tokens).
        image_size: image side H in pixels.  n_classes: number of class labels.
        config: the sanitised ``model:`` config.  ckpt_path: the checkpoint loaded (or None).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        config: DictConfig | None = None,
        ckpt_path: Path | None = None,
        changes: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.config = config
        self.ckpt_path = ckpt_path
        self.dry_run = False      # True: random weights from cortex_nb.vqgm.paper_dry (load_vqgm sets it)
        self.changes = list(changes)
        fs = model.first_stage_model
        emb = getattr(fs.quantize, "embedding", None)
        if emb is None:
            raise ConfigMismatchError(
                f"first stage quantizer {type(fs.quantize).__name__} has no codebook embedding "
                f"(Gumbel quantizers are not supported)"
            )
        self.K, self.d = (int(s) for s in emb.weight.shape)
        enc = fs.encoder
        self.image_size = int(enc.resolution)
        self.m = self.image_size // 2 ** (enc.num_resolutions - 1)
        self.n_classes = int(model.cond_stage_model.n_classes)

    # -- basics ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) the quantizer's embedding weight (detached, shares storage with the model)."""
        return self.model.first_stage_model.quantize.embedding.weight.detach()

    def to(self, device: str | torch.device) -> "VQGM":
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(torch.device(device))
        return self

    def fingerprint(self) -> str:
        """Short sha256 (16 hex chars) of the codebook bytes, to stamp token stores."""
        cb = self.codebook.to("cpu", torch.float32).contiguous().numpy()
        h = hashlib.sha256(f"codebook {self.K}x{self.d} float32\n".encode())
        h.update(cb.tobytes())
        return h.hexdigest()[:16]

    def identity(self) -> dict:
        """The config and a digest of every weight (tokenizer, prior, decoder): what cache keys digest."""
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(self.config, resolve=True) if self.config is not None else None
        return {"config": config, "weights": weights_key(self.model)}

    def with_prior(self, prior: torch.nn.Module) -> "VQGM":
        """The same tokenizer and Labelator with ``prior`` as the transformer (a GPT of the same vocabulary and block
        size); this VQGM keeps its own."""
        if not isinstance(prior, torch.nn.Module):
            raise TypeError(f"prior must be a torch module (taming's GPT), got {type(prior).__name__}")
        other = copy.copy(self)
        other.model = copy.copy(self.model)
        other.model._modules = dict(self.model._modules)   # a shallow copy shares the dict: ours keeps its GPT
        other.model.transformer = prior.to(self.device).eval()
        return other

    def __repr__(self) -> str:
        return (f"VQGM(K={self.K}, d={self.d}, m={self.m}, image_size={self.image_size}, "
                f"n_classes={self.n_classes}, device={self.device})")

    # -- validation --------------------------------------------------------------------------

    def _tokens(self, tokens: Any) -> torch.Tensor:
        t = as_index_tensor(tokens, "tokens")
        if t.dim() != 3 or tuple(t.shape[1:]) != (self.m, self.m):
            raise TokenRangeError(
                f"tokens must have shape (B, {self.m}, {self.m}) for this VQGM's {self.m} x "
                f"{self.m} grid, got {tuple(t.shape)}"
            )
        if t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.K:
                bad = hi if hi >= self.K else lo
                raise TokenRangeError(
                    f"token id {bad} out of range: this codebook has K={self.K} entries "
                    f"(ids 0..{self.K - 1}); were these tokens made with another VQGM? "
                    f"(fingerprint {self.fingerprint()})"
                )
        return t.to(self.device)

    def _images(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(images)
        if not x.dtype.is_floating_point:
            raise TypeError(f"images must be float in [-1, 1], got dtype {x.dtype}")
        H = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, H, H):
            raise ValueError(f"images must have shape (B, 3, {H}, {H}), got {tuple(x.shape)}")
        return x.to(self.device, self.codebook.dtype)

    def _embeddings(self, E: Any) -> torch.Tensor:
        E = torch.as_tensor(E)
        if E.dim() != 4 or E.shape[1] != self.d:
            raise ValueError(f"E must have shape (B, {self.d}, h, w), got {tuple(E.shape)}")
        return E.to(self.device)

    # -- tokens <-> embeddings <-> images ----------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> tokens (B, m, m), via the VQGAN encoder + quantizer."""
        x = self._images(images)
        fs = self.model.first_stage_model
        out = []
        for chunk in x.split(batch_size):
            quant, _, info = fs.encode(chunk)
            out.append(info[2].reshape(chunk.shape[0], self.m, self.m))
        if not out:
            return torch.empty(0, self.m, self.m, dtype=torch.int64, device=self.device)
        return torch.cat(out).to(torch.int64)

    def embed(self, tokens: Any) -> torch.Tensor:
        """Tokens (B, m, m) -> token-based embedding E (B, d, m, m): one codebook lookup."""
        t = self._tokens(tokens)
        return F.embedding(t, self.codebook).permute(0, 3, 1, 2).contiguous()

    def decode_embeddings(self, E: Any, batch_size: int = 64, clamp: bool = True) -> torch.Tensor:
        """Decode any E (B, d, h, w) -> images (B, 3, h*f, w*f), without quantising.

        Runs under the caller's grad mode, so gradients flow to ``E`` (the model's own
        parameters are frozen): this is the embedding-optimisation baseline's decoder.
        """
        E = self._embeddings(E)
        fs = self.model.first_stage_model
        out = [fs.decode(chunk) for chunk in E.split(batch_size)]
        if not out:
            return torch.empty(0, 3, self.image_size, self.image_size, device=self.device)
        x = torch.cat(out)
        return x.clamp(-1.0, 1.0) if clamp else x

    @torch.no_grad()
    def decode(self, tokens: Any, batch_size: int = 64) -> torch.Tensor:
        """Tokens (B, m, m), any integer dtype -> images (B, 3, H, W) clamped to [-1, 1]."""
        return self.decode_embeddings(self.embed(tokens), batch_size=batch_size, clamp=True)

    @torch.no_grad()
    def quantize(self, E: Any) -> torch.Tensor:
        """E (B, d, h, w) -> tokens (B, h, w): nearest codebook entry (Euclidean) per position.

        Chunked over positions so that one distance block holds at most 2**24 floats.
        """
        E = self._embeddings(E)
        B, d, h, w = E.shape
        flat = E.permute(0, 2, 3, 1).reshape(-1, d)
        cb = self.codebook.to(flat.dtype)
        cb_sq = (cb * cb).sum(1)
        rows = max(1, _QUANTIZE_BUDGET // self.K)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row
        idx = [torch.addmm(cb_sq, chunk, cb.T, alpha=-2.0).argmin(1) for chunk in flat.split(rows)]
        if not idx:
            return torch.empty(B, h, w, dtype=torch.int64, device=self.device)
        return torch.cat(idx).reshape(B, h, w)

    # -- class-conditional sampling ----------------------------------------------------------

    def _labels(self, labels: Any) -> torch.Tensor:
        y = as_index_tensor(labels, "labels").reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            bad = int(y.max()) if int(y.max()) >= self.n_classes else int(y.min())
            raise ValueError(f"class label {bad} out of range 0..{self.n_classes - 1}")
        return y

    def sample(
        self,
        labels: Any,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> torch.Tensor:
        """Class-conditional token sampling: taming's KV-cached sampler (``sample_with_past``) as
        :func:`cortex_nb.vqgm.kv_sampler.sample_with_kv_cache` computes it -- the same tokens, without
        re-concatenating the cache at every step (2.4x faster on the toy prior).

        Args:
            labels: class ids, int or (B,) integers in [0, n_classes).
            temperature: logits are divided by this (> 0).
            top_k: keep the k most likely tokens per step (``None``: no top-k). ``top_k=1`` is
                greedy decoding.
            top_p: nucleus sampling mass in (0, 1] applied after top-k (``None``: off).
            seed: if given, sampling runs on a forked RNG seeded with it (the global RNG is left
                untouched) and is deterministic for a given (seed, batch_size, device); if None,
                the global RNG is used.
            batch_size: sequences per sampler call.
            progress: show a tqdm bar over batches.

        Returns:
            tokens (B, m, m) int64 on ``self.device``.

        The README recipe for taming's ImageNet model is top_k=600, top_p=0.92, temperature=1.0.
        """
        import_taming()  # the compatibility shim (top_k_top_p_filtering) before the first sample
        y = self._labels(labels)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # sample_with_past filters only when top_k is not None: top_k=0 means "top-p only"
        k_arg = int(top_k) if top_k is not None else (0 if top_p is not None else None)
        steps = self.m * self.m
        dev = self.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
            if dev.type == "cuda" else []
        starts = range(0, y.numel(), batch_size)
        if progress:
            starts = progress_bar(starts, desc="sampling", unit="batch")
        out = []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
            if seed is not None:  # seed only the generators fork_rng restores
                torch.random.default_generator.manual_seed(int(seed))
                if dev.type == "cuda":
                    with torch.cuda.device(devices[0]):
                        torch.cuda.manual_seed(int(seed))
            for s in starts:
                c = y[s:s + batch_size].to(dev)
                _, c_idx = self.model.encode_to_c(c)  # Labelator: (b, 1) class tokens
                x = sample_with_kv_cache(  # = taming's sample_with_past, without its O(T^2) cache copies
                    c_idx, self.model.transformer, steps=steps, temperature=float(temperature),
                    sample_logits=True, top_k=k_arg, top_p=top_p,
                )
                x = self.model.permuter(x, reverse=True)
                out.append(x.reshape(-1, self.m, self.m))
        if not out:
            return torch.empty(0, self.m, self.m, dtype=torch.int64, device=dev)
        return torch.cat(out).to(torch.int64)


