"""Cache keys and cache paths of the pipeline: each cache is named by a digest of exactly what
its result depends on.

A key covers (1) the profile values the step reads, and (2) the keys of the artifacts it consumes
-- the VQGM's weights (:func:`vqgm_key`), a token store's meta (:func:`store_key`), an extractor's
or evaluator's weights (:func:`weights_key`) -- so a change anywhere upstream reaches every cache
below it. Profile sections enter whole minus the keys the step is known not to read: a new
profile key then costs at worst a needless rebuild, never a stale result.

The device enters only where a result is *drawn* on it from a seeded RNG (token sampling,
SmoothGrad noise, Gumbel noise): another device draws another sample, and resumable chunks from
two devices must not mix. Trained models and deterministic computations differ across devices by
float rounding only, as they do across CPUs, and train.fit resumes on another device by design;
their keys leave the device out.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..io.files import digest, weights_key
from ..io.store import TokenStore

__all__ = [
    "cache_path", "replicate_seed", "profile_section", "weights_key", "vqgm_key", "evaluators_key", "array_key",
    "store_meta", "store_key", "evaluators_cache_key", "evaluator_key", "quality_key", "extractor_key",
    "tsv_key", "random_baseline_key", "edit_key",
]

def replicate_seed(cfg: DictConfig) -> int:
    """The seed of everything a seed replicate redraws -- the extractors' initialisation and data
    order, SmoothGrad noise, random baselines, Gumbel noise, the random-token control: ``seed`` for
    the headline run (``replicate: 0``, so its cache keys are unchanged), ``seed + 7919 r`` for
    replicate r. The VQGM, the dataset and the evaluators always use ``seed``: replicates measure
    the spread that the extractor and the noise add."""
    return int(cfg.seed) + 7919 * int(cfg.replicate)


def cache_path(cfg: DictConfig, *parts: str) -> Path:
    """``results/<profile>/cache/<parts...>``: where every cache of the profile lives."""
    return Path(cfg.paths.cache).joinpath(*parts)


#: keys added to a section after caches were keyed on it, with the default that is the behaviour before them:
#: at that default a key stays out of the section's digest, so existing caches keep their keys; set to anything
#: else it enters like every other key (as store_meta does with world.classes)
SINCE_KEYED = {"extractors": {"re_variant": "paper"}}


def profile_section(cfg: DictConfig, name: str, drop: tuple[str, ...] = ()) -> dict:
    """Profile section ``name`` as a plain dict, without the keys in ``drop`` and the keys of
    :data:`SINCE_KEYED` that are at their default."""
    late = SINCE_KEYED.get(name, {})
    return {k: v for k, v in OmegaConf.to_container(cfg[name], resolve=True).items()
            if k not in drop and not (k in late and v == late[k])}


def vqgm_key(vqgm) -> str:
    """Digest of the whole VQGM -- its :meth:`~cortex_nb.vqgm.protocol.VQGMProtocol.identity` (taming's: the config
    and all weights: tokenizer, prior, decoder), not only the codebook that ``fingerprint`` stamps."""
    return digest(vqgm.identity())


def evaluators_key(evaluators: dict) -> str:
    """Digest of a set of evaluators: names, specs (preprocessing, classes) and weights."""
    return digest({name: {"spec": dict(getattr(e, "spec", {})), "weights": weights_key(e)}
                   for name, e in evaluators.items()})


def array_key(a) -> str:
    """Digest of an array's dtype, shape and bytes (a TSV an edit region was built from)."""
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype} {a.shape}\n".encode())
    h.update(a)  # C-contiguous: hashed through the buffer protocol, no copy
    return h.hexdigest()[:16]


def store_meta(cfg: DictConfig, vqgm, split: str) -> dict:
    """What a split's tokens depend on, stamped in its meta.json (``TokenStore.generate`` adds
    n, shard_size, seed and split): a complete store with other meta is regenerated, and an
    incomplete one is never resumed with shards sampled differently.

    ``sample_batch`` is ``min(data.batch_size, data.shard_size)``: :meth:`VQGM.sample` draws a
    shard in batches of ``batch_size`` and its tokens depend on that split, but a shard never
    holds more than ``shard_size`` rows, so any larger batch samples exactly the same."""
    d = cfg.data
    return {"K": int(vqgm.K), "d": int(vqgm.d), "m": int(vqgm.m), "fingerprint": vqgm.fingerprint(),
            "vqgm": vqgm_key(vqgm), "device": vqgm.device.type,
            "sampler": {"temperature": float(d.temperature), "top_k": d.top_k, "top_p": d.top_p},
            "sample_batch": min(int(d.batch_size), int(d.shard_size)),
            "n_per_class": int(d[f"n_{split}"]), "n_classes": int(cfg.world.n_classes),
            # only when a profile restricts them (paper-dry): the other profiles' keys stay as they were
            **({"classes": [int(c) for c in cfg.world.classes]} if cfg.world.get("classes") is not None else {})}


def store_key(store: TokenStore) -> str:
    """Digest of a finished split's meta: everything its tokens (and images) depend on."""
    return digest({k: v for k, v in store.meta.items() if k != "complete"})


def evaluators_cache_key(cfg: DictConfig) -> str:
    """Key of the toy evaluators: they are trained on real toy images (seed, world) with the
    evaluators section's settings (weights_dir and preprocess are the pretrained ones')."""
    return digest(_evaluator_settings(cfg))


def evaluator_key(cfg: DictConfig, name: str) -> str:
    """Key of ONE toy evaluator: :func:`evaluators_cache_key`'s inputs less the list of names, plus
    the name. Each evaluator trains from its own seed, whatever else is trained beside it (a shipped
    evaluator, :mod:`cortex_nb.vqgm.shipped`, is installed when this key matches)."""
    return digest({**_evaluator_settings(cfg, drop=("names",)), "name": str(name)})


#: world keys that real toy images (the toy evaluators' data, the quality report) do not depend on: which classes a
#: run generates (world.classes) changes neither, and keeping it out keeps the shipped evaluators' keys
WORLD_IGNORES = ("classes",)


def _evaluator_settings(cfg: DictConfig, drop: tuple[str, ...] = ()) -> dict:
    """What toy evaluators are trained from: the seed, the world and the evaluators section (less the
    pretrained ones' weights_dir and preprocess, and ``drop``)."""
    return {"seed": int(cfg.seed), "world": profile_section(cfg, "world", drop=WORLD_IGNORES),
            "evaluators": profile_section(cfg, "evaluators", drop=("weights_dir", "preprocess", *drop))}


def quality_key(cfg: DictConfig, vqgm, evaluators: dict) -> str:
    """Key of the tokenizer's quality report (:func:`cortex_nb.pipeline.s00_vqgm.vqgm_report`):
    held-out real images (seed, world, vqgm.n_report), the VQGM that reconstructs them and the
    evaluators that judge them."""
    return digest({"seed": int(cfg.seed), "world": profile_section(cfg, "world", drop=WORLD_IGNORES),
                   "n_report": int(cfg.vqgm.n_report), "vqgm": vqgm_key(vqgm),
                   "evaluators": evaluators_key(evaluators)})


def extractor_key(cfg: DictConfig, arch: str, train: TokenStore, val: TokenStore) -> str:
    """Key of one trained extractor: its settings (the extractors section but the list of
    archs, and RE's variant unless ``arch`` is RE), the seed, the number of classes and the
    train / val splits it learns from (their meta covers the VQGM, whose codebook embeds the tokens)."""
    drop = ("archs",) if arch == "RE" else ("archs", "re_variant")
    return digest({"arch": arch, "extractors": profile_section(cfg, "extractors", drop=drop),
                   "seed": replicate_seed(cfg), "n_classes": int(cfg.world.n_classes),
                   "train": store_key(train), "val": store_key(val)})


#: saliency keys that TSVs do not read (masking, concept sets, localisation; the variant is an
#: argument of get_tsv): a key missing here only costs a needless recompute, never a stale TSV
TSV_IGNORES = ("variant", "mask_mode", "fill", "fills", "fills_n", "fills_random_seeds", "area_k", "random_seeds",
               "n_concept", "k_concept",
               "n_localisation", "head_fraction")


def tsv_key(cfg: DictConfig, extractor, store, variant: str) -> str:
    """Key of the TSVs of ``store`` under ``extractor``: the extractor's weights, the split
    (its meta covers the VQGM whose codebook embeds the tokens), the variant, the SmoothGrad
    settings (chunk included: each chunk's noise is seeded by its start), the seed, and the
    device the noise is drawn on."""
    return digest({"extractor": weights_key(extractor), "store": store_key(store), "variant": variant,
                   "saliency": profile_section(cfg, "saliency", drop=TSV_IGNORES), "seed": replicate_seed(cfg),
                   "device": torch.device(cfg.device).type})


def random_baseline_key(cfg: DictConfig, evaluators: dict, test, fill: str, vqgm=None, *,
                        seeds: int | None = None, levels: list[int] | None = None) -> str:
    """Key of Fig. 3's random baseline under ``fill``: the test split (images, labels, grid), the
    evaluators, the replicate's seed and the seeds per n (default ``saliency.random_seeds``), the
    n measured when not the whole grid (``levels``); for the token fill also the VQGM that decodes
    the in-filled tokens. Masks are drawn on the CPU."""
    key = {"test": store_key(test), "evaluators": evaluators_key(evaluators), "seed": replicate_seed(cfg),
           "random_seeds": int(seeds if seeds is not None else cfg.saliency.random_seeds), "fill": fill,
           "per_image": True, "vqgm": vqgm_key(vqgm) if fill == "token" else None}
    if levels is not None:  # the whole grid keeps the key it always had
        key["levels"] = [int(n) for n in levels]
    return digest(key)


#: optimization keys that an edit run does not read: which regions run is decided by the caller
EDIT_IGNORES = ("saliency_region", "controls", "original_control", "jobs")
#: optimization settings that only token selection reads
TOKEN_ONLY = ("tau", "init")


def edit_key(cfg: DictConfig, extractor, test, method: str, region: str, tsv: np.ndarray | None = None) -> str:
    """Key of one (extractor, method, region) run over the edit batch: the extractor's weights,
    the test split (tokens, labels; its meta covers the codebook), the optimisation settings the
    method reads, the seed, the TSV rows that place a saliency region, and, for token selection,
    the device its Gumbel noise is drawn on."""
    drop = EDIT_IGNORES + (() if method.startswith("token") else TOKEN_ONLY)
    opt = profile_section(cfg, "optimization", drop=drop)
    if method == "token-original":  # Table 3's control: token selection started from the original tokens
        opt["init"] = "original"
    return digest({"extractor": weights_key(extractor), "test": store_key(test), "method": method, "region": region,
                   "optimization": opt, "seed": replicate_seed(cfg),
                   "tsv": array_key(tsv) if region == "saliency" else None,
                   "device": torch.device(cfg.device).type if method.startswith("token") else None})
