"""The run every section stands on, composed in one place: profile -> VQGM -> token stores ->
extractors -> evaluators, and the token saliency values they produce.

Each builder takes a profile (``load_profile``) and builds what it needs when it is missing
(cached under ``results/<profile>/cache``, keys in :mod:`cortex_nb.pipeline.keys`), so any
notebook can be opened first; :func:`compose` runs them in order and returns a :class:`Run`.

- :func:`setup` — seed, threads, plot style, logging; writes ``results/<profile>/profile.yaml``.
- :func:`get_vqgm` — the VQGM (§2.1; toy: trained here by :mod:`cortex_nb.toy.vqgm`; imagenet:
  the official taming checkpoint), always read back through :func:`cortex_nb.vqgm.load_vqgm`.
- :func:`generate_dataset`, :func:`load_split` — the synthetic dataset of §4.1.1 as token stores.
- :func:`get_extractors` — CE / RE (§3.2, A.1) trained on the train split.
- :func:`get_evaluators` — the classifiers that judge decoded images (§4.1: the paper's
  pretrained ResNet18/50, ViT-B/16, B/32, or their toy stand-ins trained on real toy images).
- :func:`get_tsv` — token saliency values of a split under an extractor (§3.3, eq. 4–5).

Every builder also runs under ``torchrun`` (see :mod:`cortex_nb.engine.distributed`): caches that one
process builds (the toy VQGM, the toy evaluators) are built by rank 0 while the others wait;
shards, TSV chunks and training batches are split between the ranks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..engine import distributed
from ..io.store import TokenStore, chunked_array
from ..method.evaluators import DISPLAY_NAMES
from ..method.saliency import TokenSaliency
from .context import bind_profile, log_stream, setup
from .keys import cache_path, extractor_key, replicate_seed, store_meta, tsv_key
from .models import check_n_classes, class_ids, get_evaluators, get_vqgm, real_toy_images

__all__ = ["setup", "bind_profile", "log_stream", "class_ids", "replicate_seed", "display_name", "class_names", "get_vqgm", "check_n_classes", "real_toy_images",
           "get_evaluators", "generate_dataset", "load_split", "store_tokens", "embed_fn", "extractor_config",
           "get_extractors", "saliency_of", "get_tsv", "Run", "compose", "SectionResult"]

log = logging.getLogger("cortex_nb")


def display_name(evaluator: str) -> str:
    """How tables and figures name an evaluator ('vit_b_16' -> 'ViT-B/16')."""
    return DISPLAY_NAMES.get(evaluator, evaluator)


def class_names(cfg: DictConfig) -> list[str]:
    """Human-readable class names: the toy species, or ImageNet's 1000 categories
    (from torchvision's weights metadata, available offline)."""
    if cfg.vqgm.source == "toy":
        from ..toy.world import SPECIES

        return list(SPECIES)[: cfg.world.n_classes]
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------------------
# the synthetic dataset (§4.1.1)
# --------------------------------------------------------------------------------------

def generate_dataset(cfg: DictConfig, vqgm=None, splits=("train", "val", "test")) -> dict[str, TokenStore]:
    """Sample the class-balanced train/val/test splits from the VQGM's class-conditional prior
    (CORTEX §4.1.1) and store them as token indices; the test split also stores its decoded
    images (uint8). Resumable and cached: see :class:`cortex_nb.io.store.TokenStore`. Under torchrun
    every rank calls this and makes its share of the shards; rank 0 writes the final arrays."""
    from ..io.figures import to_uint8

    setup(cfg)
    vqgm = check_n_classes(cfg, vqgm) if vqgm is not None else get_vqgm(cfg)
    d = cfg.data
    stores = {}
    for split in splits:
        labels = np.repeat(class_ids(cfg), int(d[f"n_{split}"]))
        meta = store_meta(cfg, vqgm, split)  # what the shards depend on, exactly as make_shard uses it

        def make_shard(chunk: np.ndarray, seed: int, split=split, meta=meta) -> dict:
            toks = vqgm.sample(torch.as_tensor(chunk), seed=seed, batch_size=meta["sample_batch"], **meta["sampler"])
            out = {"tokens": toks.cpu().numpy()}
            if split == "test":
                ims = [to_uint8(vqgm.decode(toks[i:i + 64])) for i in range(0, len(toks), 64)]
                out["images"] = np.concatenate(ims)
            return out

        t0 = time.time()
        stores[split] = TokenStore.generate(cache_path(cfg, "data", split), labels, make_shard, meta=meta,
                                            shard_size=int(d.shard_size), seed=int(cfg.seed), split=split,
                                            progress=bool(cfg.progress))
        log.info("split %s: %d samples (%.1f s)", split, len(stores[split]), time.time() - t0)
    return stores


def load_split(cfg: DictConfig, split: str, vqgm=None) -> TokenStore:
    """Open a finished split, checked against the VQGM (K, grid, codebook fingerprint) when given."""
    kw = {"K": vqgm.K, "m": vqgm.m, "fingerprint": vqgm.fingerprint()} if vqgm is not None else {}
    return TokenStore.open(cache_path(cfg, "data", split), **kw)


def store_tokens(store: TokenStore) -> torch.Tensor:
    """A store's tokens (N, m, m) as int64, in memory (the store keeps uint16)."""
    return torch.from_numpy(np.asarray(store.tokens).astype(np.int64))


# --------------------------------------------------------------------------------------
# information extractors (§3.2, §4.2, A.1)
# --------------------------------------------------------------------------------------

def embed_fn(codebook: torch.Tensor):
    """tokens (B, m, m) int -> E (B, d, m, m): one codebook lookup on the codebook's device.
    This is how every extractor sees data: stored token indices, embedded on the fly."""
    import torch.nn.functional as F

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens.long(), codebook).permute(0, 3, 1, 2).contiguous()

    return embed


def extractor_config(cfg: DictConfig, arch: str, vqgm):
    """The profile's :class:`cortex_nb.method.extractors.ExtractorConfig` of ``arch`` on the VQGM's grid
    (``extractors.re_variant`` picks RE's variant; CE has one)."""
    from ..method.extractors import ExtractorConfig

    e = cfg.extractors
    return ExtractorConfig(arch=arch, d=int(vqgm.d), m=int(vqgm.m), n_classes=int(cfg.world.n_classes),
                           width=int(e.width), fc=None if e.fc is None else int(e.fc),
                           variant=str(e.re_variant) if arch == "RE" else "paper")


def get_extractors(cfg: DictConfig, vqgm=None, *, archs=None, permuted: bool = False) -> dict:
    """``{arch: FitResult}`` for CE and RE trained on the synthetic train split (validated on
    val; best epoch by validation top-1 kept; resumable from
    ``cache/extractors/<arch>-<extractor_key>/last.pt``). A finished run is loaded, not retrained;
    its directory then holds best.pt (weights) and a small last.pt (history, no optimiser state).
    Each result's ``.model`` is in eval mode on the device.
    Under torchrun every rank calls this: :func:`cortex_nb.engine.train.fit` trains data-parallel (DDP, a
    slice of each global batch per rank, see :mod:`cortex_nb.engine.distributed`) and only rank 0 writes
    checkpoints.

    ``permuted``: the same recipe on labels permuted at random (train and val, one fixed permutation
    each), the extractor of the sanity check of Adebayo et al. (section 07): it can only memorise, so
    an attribution that still looks like the trained extractor's does not explain the model. Cached
    beside the real ones (``<arch>-permuted-<key>``)."""
    from ..method.extractors import build_extractor
    from ..engine.train import FitConfig, fit

    setup(cfg)
    vqgm = vqgm if vqgm is not None else get_vqgm(cfg)
    train, val = load_split(cfg, "train", vqgm), load_split(cfg, "val", vqgm)
    e = cfg.extractors
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    y_train, y_val = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    if permuted:
        gen = torch.Generator().manual_seed(replicate_seed(cfg) + 37)
        y_train, y_val = (y[torch.randperm(len(y), generator=gen)] for y in (y_train, y_val))
    out = {}
    for arch in archs or list(e.archs):
        torch.manual_seed(replicate_seed(cfg))
        model = build_extractor(extractor_config(cfg, arch, vqgm))
        fit_cfg = FitConfig(epochs=int(e.epochs), lr=float(e.lr), weight_decay=float(e.weight_decay),
                            step_size=max(1, int(e.epochs) // 4), gamma=0.1, batch_size=int(e.batch_size),
                            seed=replicate_seed(cfg), device=cfg.device, progress=bool(cfg.progress))
        ckpt_dir = cache_path(cfg, "extractors", f"{arch}{'-permuted' * permuted}-"
                                                 f"{extractor_key(cfg, arch, train, val)}")
        res = fit(model, (torch.from_numpy(np.array(train.tokens)), y_train),
                  (torch.from_numpy(np.array(val.tokens)), y_val), fit_cfg,
                  ckpt_dir=ckpt_dir, transform=embed, compact=True)
        res.model.eval()
        out[arch] = res
    return out


# --------------------------------------------------------------------------------------
# token saliency values (§3.3, eq. 4-5): read by sections 03-06
# --------------------------------------------------------------------------------------

def saliency_of(cfg: DictConfig, extractor, variant: str | None = None) -> TokenSaliency:
    """The profile's TokenSaliency for ``extractor`` ('paper' = eq. 4–5; 'reference' = scripts)."""
    s = cfg.saliency
    variant = variant or s.variant
    make = TokenSaliency.paper if variant == "paper" else TokenSaliency.reference
    return make(extractor, n_samples=int(s.n_samples), alpha=float(s.alpha), chunk_size=s.chunk_rows)


def get_tsv(cfg: DictConfig, arch: str, extractor, vqgm, split: str, variant: str | None = None) -> np.ndarray:
    """TSV (N, m, m) float32 of every image of ``split`` for its own label, under ``arch``.
    Cached as .npy under cache/tsv/, computed in resumable chunks; the SmoothGrad noise of each
    chunk is seeded by (profile seed, chunk start), so results do not depend on interruptions.
    Under torchrun every rank calls this and computes its share of the chunks
    (:func:`cortex_nb.io.store.chunked_array`); the result equals a single process's."""
    setup(cfg)
    variant = variant or cfg.saliency.variant
    store = load_split(cfg, split, vqgm)
    # rank 0's key on every rank: the ranks must agree on the path even if their weights differed by a bit
    key = distributed.broadcast_object(tsv_key(cfg, extractor, store, variant))
    path = cache_path(cfg, "tsv", f"{arch}-{key}", f"{split}-{variant}.npy")
    ts = saliency_of(cfg, extractor, variant)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    tokens, labels = store_tokens(store), torch.from_numpy(store.labels)

    def compute(a: int, b: int) -> np.ndarray:
        gen = torch.Generator(device=cfg.device).manual_seed(replicate_seed(cfg) * 1_000_003 + a)
        E = embed(tokens[a:b].to(cfg.device))                          # (b - a, d, m, m)
        return ts.attribute(E, labels[a:b].to(cfg.device), generator=gen).cpu().numpy().astype(np.float32)

    return chunked_array(path, len(store), int(cfg.saliency.chunk), compute, desc=f"TSV {arch} {split}",
                         progress=bool(cfg.progress))


# --------------------------------------------------------------------------------------
# the composed run, and what a section returns
# --------------------------------------------------------------------------------------

@dataclass
class Run:
    """What the sections stand on, built (or loaded from the cache) by :func:`compose`."""
    cfg: DictConfig
    vqgm: Any                                   # a VQGMProtocol (cortex_nb.vqgm.protocol)
    stores: dict = field(default_factory=dict)  # {"train" | "val" | "test": TokenStore}
    fits: dict = field(default_factory=dict)    # {"CE" | "RE": cortex_nb.engine.train.FitResult}
    evaluators: dict = field(default_factory=dict)  # {name: Evaluator}

    @property
    def extractors(self) -> dict[str, torch.nn.Module]:
        """``{arch: model}``: each fit's best model, in eval mode on the device."""
        return {arch: r.model for arch, r in self.fits.items()}


def compose(cfg: DictConfig, *, stores: bool = True, extractors: bool = True, evaluators: bool = True) -> Run:
    """The run in its one order: :func:`get_vqgm` -> :func:`generate_dataset` (all three splits)
    -> :func:`get_extractors` -> :func:`get_evaluators`, each cached; leave out the later parts a
    section does not need. Under torchrun every rank calls this (each builder splits its work)."""
    vqgm = get_vqgm(cfg)
    run = Run(cfg, vqgm)
    if stores:
        run.stores = generate_dataset(cfg, vqgm)
    if extractors:
        run.fits = get_extractors(cfg, vqgm)
    if evaluators:
        run.evaluators = get_evaluators(cfg)
    return run


@dataclass
class SectionResult:
    """Everything one section (notebook) shows, by name: its tables as displayed, its figures
    (matplotlib, already saved under figures/<profile>/) and other values."""
    section: str
    tables: dict = field(default_factory=dict)   # {name: pandas.DataFrame}
    figures: dict = field(default_factory=dict)  # {name: matplotlib Figure}
    values: dict = field(default_factory=dict)   # {name: anything else the notebook shows}

    def summary(self) -> str:
        """One line: the section and what it wrote."""
        parts = [f"{len(self.tables)} table{'s' * (len(self.tables) != 1)}",
                 f"{len(self.figures)} figure{'s' * (len(self.figures) != 1)}"]
        return f"{self.section}: " + ", ".join(parts)
