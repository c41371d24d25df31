"""The run every section stands on, composed in one place: profile -> VQGM -> token stores ->
extractors -> evaluators, and the token saliency values they produce.

Each builder takes a profile (``load_profile``) and builds what it needs when it is missing
(cached under ``results/<profile>/cache``, keys in :mod:`cortex_nb.pipeline.keys`), so any
notebook can be opened first; :func:`compose` runs them in order and returns a :class:`Run`.

- :func:`setup` — seed, threads, plot style, logging; writes ``results/<profile>/profile.yaml``.
- :func:`get_vqgm` — the VQGM (§2.1; toy: trained here by :mod:`cortex_nb.toyvqgm`; imagenet:
  the official taming checkpoint), always read back through :func:`cortex_nb.vqgm.load_vqgm`.
- :func:`generate_dataset`, :func:`load_split` — the synthetic dataset of §4.1.1 as token stores.
- :func:`get_extractors` — CE / RE (§3.2, A.1) trained on the train split.
- :func:`get_evaluators` — the classifiers that judge decoded images (§4.1: the paper's
  pretrained ResNet18/50, ViT-B/16, B/32, or their toy stand-ins trained on real toy images).
- :func:`get_tsv` — token saliency values of a split under an extractor (§3.3, eq. 4–5).

Every builder also runs under ``torchrun`` (see :mod:`cortex_nb.distributed`): caches that one
process builds (the toy VQGM, the toy evaluators) are built by rank 0 while the others wait;
shards, TSV chunks and training batches are split between the ranks.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import distributed, shipped
from ..evaluators import DISPLAY_NAMES
from ..files import load_cache_json, load_json, save_json
from ..saliency import TokenSaliency
from ..store import TokenStore, chunked_array
from .keys import cache_path, evaluator_key, evaluators_cache_key, extractor_key, replicate_seed, store_meta, tsv_key

__all__ = ["setup", "replicate_seed", "display_name", "class_names", "get_vqgm", "check_n_classes", "real_toy_images",
           "get_evaluators", "generate_dataset", "load_split", "store_tokens", "embed_fn", "extractor_config",
           "get_extractors", "saliency_of", "get_tsv", "Run", "compose", "SectionResult"]

log = logging.getLogger("cortex_nb")


def setup(cfg: DictConfig) -> None:
    """Seed, thread count, plot style and logging for a step; the results directories are checked
    for writing first (:func:`cortex_nb.config.ensure_writable`), so a read-only place fails before
    any work. Writes the resolved profile (with seed, threads, torch version, CPU capability) as
    ``results/<profile>/profile.yaml`` and, under `make all`, registers the record of the modules
    this process used (:mod:`cortex_nb.deps`). With N processes on the machine (torchrun) each uses
    ``max(1, cfg.threads // N)`` threads and log lines name their rank."""
    from .. import config, deps
    from ..figures import set_style

    config.ensure_writable(cfg)
    deps.record_on_exit()
    bind_profile(cfg)
    set_style()
    torch.set_num_threads(distributed.threads_per_process(int(cfg.threads)))
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    if distributed.is_main():
        config.write_resolved(cfg)
    if not logging.getLogger().handlers:
        who = f" [rank {os.environ.get('RANK', '0')}]" if distributed.launched() else ""
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{who} %(name)s: %(message)s", datefmt="%H:%M:%S",
                            stream=log_stream())


def bind_profile(cfg: DictConfig) -> None:
    """What every table and figure this process writes from now on takes from the profile: its provenance record
    names the profile and its hash, and under paper-dry it says its numbers are meaningless. :func:`setup` calls
    it, and the command line for every command (ledger and gates never call setup)."""
    from .. import provenance

    provenance.set_profile(cfg)      # the table and figure writers read the dry-run banner from it


def log_stream():
    """Where log records go: stdout inside a Jupyter kernel (JupyterLab shows stderr in a red box, as if
    something had failed; these are progress records), stderr everywhere else."""
    import sys

    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is not None:
            return sys.stdout
    except ImportError:
        pass
    return sys.stderr


def display_name(evaluator: str) -> str:
    """How tables and figures name an evaluator ('vit_b_16' -> 'ViT-B/16')."""
    return DISPLAY_NAMES.get(evaluator, evaluator)


def class_names(cfg: DictConfig) -> list[str]:
    """Human-readable class names: the toy species, or ImageNet's 1000 categories
    (from torchvision's weights metadata, available offline)."""
    if cfg.vqgm.source == "toy":
        from ..toyworld import SPECIES

        return list(SPECIES)[: cfg.world.n_classes]
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------------------
# the VQGM (§2.1) and the judges (§4.1)
# --------------------------------------------------------------------------------------

def get_vqgm(cfg: DictConfig):
    """The VQGM of the profile, loaded through the one loader :func:`cortex_nb.vqgm.load_vqgm`.

    toy/smoke: trains the toy tokenizer + prior on first use (resumable, cached in
    ``cache/vqgm``) and saves them in taming's format; imagenet: reads ``vqgm.config`` and
    ``vqgm.ckpt`` (or $CORTEX_VQGM_CONFIG / $CORTEX_VQGM_CKPT).
    """
    from ..errors import CheckpointError
    from ..vqgm import load_vqgm

    if cfg.vqgm.source == "toy" and distributed.active():  # torchrun: rank 0 trains, the others load
        return distributed.main_first(lambda: get_vqgm(cfg))
    setup(cfg)
    if bool(cfg.dry_run):                      # paper-dry: the released shapes, random weights, the same loader
        from ..paper_dry import released_cin_config, write_dry_vqgm

        paths = write_dry_vqgm(cache_path(cfg, "vqgm-dry"), released_cin_config(int(cfg.world.n_classes)),
                               seed=int(cfg.seed))
        return check_n_classes(cfg, load_vqgm(paths["config"], paths["ckpt"], device=cfg.device))
    if cfg.vqgm.source == "toy":
        from ..toy_prior import PriorConfig
        from ..toy_tokenizer import TokenizerConfig
        from ..toyvqgm import build_toy_vqgm

        tok = TokenizerConfig(**OmegaConf.to_container(cfg.vqgm.tokenizer, resolve=True))
        prior = PriorConfig(**OmegaConf.to_container(cfg.vqgm.prior, resolve=True))
        _install_shipped_vqgm(cfg, tok, prior)
        out = build_toy_vqgm(cache_path(cfg, "vqgm"), tok, prior, seed=int(cfg.seed), device=cfg.device,
                             n_classes=int(cfg.world.n_classes), scene_bias=float(cfg.world.scene_bias),
                             n_report=int(cfg.vqgm.n_report), progress=bool(cfg.progress))
        return check_n_classes(cfg, load_vqgm(out["config"], out["ckpt"], device=cfg.device))
    if not cfg.vqgm.config or not cfg.vqgm.ckpt:
        raise CheckpointError(
            f"profile {cfg.name!r} needs taming's class-conditional ImageNet model: set CORTEX_VQGM_CONFIG to its "
            "config YAML and CORTEX_VQGM_CKPT to its last.ckpt (or vqgm.config / vqgm.ckpt in the profile); "
            "README 'ImageNet profile' says where to get them")
    vqgm = load_vqgm(cfg.vqgm.config, cfg.vqgm.ckpt, device=cfg.device,
                     trust_checkpoint=bool(cfg.vqgm.trust_checkpoint))
    if vqgm.dry_run and not bool(cfg.dry_run):
        raise CheckpointError(
            f"{cfg.vqgm.ckpt} holds random weights written for the paper-dry profile (cortex_nb.paper_dry), not "
            f"a trained model: profile {cfg.name!r} runs only on the real files",
            fix="point CORTEX_VQGM_CKPT / CORTEX_VQGM_CONFIG at taming's released cin transformer")
    return check_n_classes(cfg, vqgm)


def _install_shipped_vqgm(cfg: DictConfig, tok, prior) -> None:
    """Put the shipped toy VQGM (:mod:`cortex_nb.shipped`) into the cache when the profile would
    train exactly it and the cache holds no finished build of these settings; a build of its own
    (or CORTEX_FROM_SCRATCH=1) is left alone."""
    from .. import shipped
    from ..toyvqgm import build_key, is_built

    key = build_key(tok, prior, seed=int(cfg.seed), n_classes=int(cfg.world.n_classes),
                    scene_bias=float(cfg.world.scene_bias), n_report=int(cfg.vqgm.n_report))
    out = cache_path(cfg, "vqgm")
    if not is_built(out, key) and shipped.install("toy-vqgm", out, key):
        log.info("toy VQGM: the shipped one (cortex_nb/artifacts/toy-vqgm, settings %s; "
                 "CORTEX_FROM_SCRATCH=1 retrains it)", key)


def check_n_classes(cfg: DictConfig, vqgm):
    """``vqgm`` when its class-conditional prior knows exactly ``world.n_classes`` classes (the
    Labelator's n_classes); else a ConfigMismatchError that names both numbers, before any
    sampling fails with a bare 'class label out of range'."""
    from ..taming_config import ConfigMismatchError

    want, have = int(cfg.world.n_classes), int(vqgm.n_classes)
    if want != have:
        ckpt = vqgm.ckpt_path or cfg.vqgm.ckpt or "the loaded VQGM"
        raise ConfigMismatchError(
            f"profile {cfg.name!r} has world.n_classes = {want} but the VQGM {ckpt} is conditioned on "
            f"{have} classes (its Labelator's n_classes)",
            fix=f"--set world.n_classes={have} (notebooks: load_profile({cfg.name!r}, "
                f"**{{'world.n_classes': {have}}})), "
                f"or set vqgm.ckpt / CORTEX_VQGM_CKPT (and its config) to a checkpoint with {want} classes")
    return vqgm


def class_ids(cfg: DictConfig) -> np.ndarray:
    """The class ids a run generates and studies: ``world.classes`` (the paper-dry profile's few of ImageNet's
    1000), or every id in [0, world.n_classes) when it is null."""
    C = int(cfg.world.n_classes)
    ids = cfg.world.get("classes")
    if ids is None:
        return np.arange(C, dtype=np.int64)
    ids = np.asarray(list(ids), dtype=np.int64)
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= C or len(np.unique(ids)) != len(ids):
        raise ValueError(f"world.classes must be distinct ids in [0, world.n_classes = {C}), got {list(ids)}")
    return ids


def real_toy_images(cfg: DictConfig, n: int, purpose: str):
    """``n`` real toy images for ``purpose`` ('evaluators-train', 'evaluators-val', 'report'),
    from seeds that no other purpose uses (so held-out sets are really held out)."""
    from .. import toyworld

    offset = {"evaluators-train": 1, "evaluators-val": 2, "report": 3}[purpose]
    return toyworld.sample(n, seed=int(cfg.seed) * 1000 + offset, n_classes=int(cfg.world.n_classes),
                           image_size=int(cfg.world.image_size), scene_bias=float(cfg.world.scene_bias))


def get_evaluators(cfg: DictConfig) -> dict:
    """``{name: Evaluator}``: toy stand-ins trained on real toy images (cached), or the
    torchvision pretrained classifiers for imagenet (offline: a clear error naming the file)."""
    from .. import evaluators as ev
    from .. import toy_evaluators as toy

    if cfg.evaluators.source == "toy" and distributed.active():  # torchrun: rank 0 trains, the others load
        return distributed.main_first(lambda: get_evaluators(cfg))
    setup(cfg)
    names = list(cfg.evaluators.names)
    if bool(cfg.dry_run):                      # paper-dry: torchvision's architectures, weights=None
        from ..paper_dry import dry_imagenet_evaluators

        return dry_imagenet_evaluators(names, device=cfg.device, preprocess=cfg.evaluators.preprocess,
                                       seed=int(cfg.seed))
    if cfg.evaluators.source != "toy":
        return ev.load_imagenet_evaluators(names, weights_dir=cfg.evaluators.weights_dir, device=cfg.device,
                                           preprocess=cfg.evaluators.preprocess)
    ckpt_dir = cache_path(cfg, "evaluators")
    key = evaluators_cache_key(cfg)
    paths = {n: ckpt_dir / f"{n}.pt" for n in names}
    stamp = ckpt_dir / "report.json"
    if (load_cache_json(stamp) or {}).get("_key") == key and all(p.exists() for p in paths.values()):
        return {n: toy.load_evaluator(p, device=cfg.device) for n, p in paths.items()}
    # shipped evaluators (cortex_nb/artifacts; not under CORTEX_FROM_SCRATCH) whose settings are the profile's
    report = {n: load_json(ckpt_dir / f"{n}.report.json")
              for n in names if shipped.install(f"toy-evaluator-{n}", ckpt_dir, evaluator_key(cfg, n))}
    if report:
        log.info("toy evaluators: the shipped %s (cortex_nb/artifacts; CORTEX_FROM_SCRATCH=1 retrains them)",
                 ", ".join(report))
    todo = [n for n in names if n not in report]
    if todo:
        train = real_toy_images(cfg, int(cfg.evaluators.n_train), "evaluators-train")
        val = real_toy_images(cfg, int(cfg.evaluators.n_val), "evaluators-val")
        # per-model schedules measured here (toy_evaluators.TOY_FIT_DEFAULTS), the profile's fit overrides on top
        overrides = {"seed": int(cfg.seed), "device": cfg.device, "progress": bool(cfg.progress),
                     **OmegaConf.to_container(cfg.evaluators.fit, resolve=True)}
        trained = toy.train_toy_evaluators(train=(train.images, train.labels), val=(val.images, val.labels),
                                           names=todo, ckpt_dir=ckpt_dir / key, n_classes=int(cfg.world.n_classes),
                                           fit_overrides=overrides)
        for n, (e, r) in trained.items():
            toy.save_evaluator(e, paths[n])
            report[n] = {"val_acc": float(r.best_val_acc), "seconds": float(r.seconds), "source": "trained here"}
    save_json(stamp, {**{n: report[n] for n in names}, "_key": key})
    # finished: one weights-only file per model is all that is kept; the fit checkpoints (optimiser
    # state, RNG, a second copy of each model) only served to resume an interrupted training
    shutil.rmtree(ckpt_dir / key, ignore_errors=True)
    # every caller gets them as every later stage does: loaded from their files
    return {n: toy.load_evaluator(paths[n], device=cfg.device) for n in names}


# --------------------------------------------------------------------------------------
# the synthetic dataset (§4.1.1)
# --------------------------------------------------------------------------------------

def generate_dataset(cfg: DictConfig, vqgm=None, splits=("train", "val", "test")) -> dict[str, TokenStore]:
    """Sample the class-balanced train/val/test splits from the VQGM's class-conditional prior
    (CORTEX §4.1.1) and store them as token indices; the test split also stores its decoded
    images (uint8). Resumable and cached: see :class:`cortex_nb.store.TokenStore`. Under torchrun
    every rank calls this and makes its share of the shards; rank 0 writes the final arrays."""
    from ..figures import to_uint8

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
    """The profile's :class:`cortex_nb.extractors.ExtractorConfig` of ``arch`` on the VQGM's grid
    (``extractors.re_variant`` picks RE's variant; CE has one)."""
    from ..extractors import ExtractorConfig

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
    Under torchrun every rank calls this: :func:`cortex_nb.train.fit` trains data-parallel (DDP, a
    slice of each global batch per rank, see :mod:`cortex_nb.distributed`) and only rank 0 writes
    checkpoints.

    ``permuted``: the same recipe on labels permuted at random (train and val, one fixed permutation
    each), the extractor of the sanity check of Adebayo et al. (section 07): it can only memorise, so
    an attribution that still looks like the trained extractor's does not explain the model. Cached
    beside the real ones (``<arch>-permuted-<key>``)."""
    from ..extractors import build_extractor
    from ..train import FitConfig, fit

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
    (:func:`cortex_nb.store.chunked_array`); the result equals a single process's."""
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
    vqgm: Any                                   # cortex_nb.vqgm.VQGM
    stores: dict = field(default_factory=dict)  # {"train" | "val" | "test": TokenStore}
    fits: dict = field(default_factory=dict)    # {"CE" | "RE": cortex_nb.train.FitResult}
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
