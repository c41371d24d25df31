"""Pipeline stages: the functions that notebooks and ``python -m cortex_nb STAGE`` both call.

Each stage takes a profile (``load_profile``) and builds what it needs when it is missing
(cached under ``results/<profile>/cache``), so any notebook can be opened first.

- :func:`get_vqgm` — the VQGM (toy: trained here by :mod:`cortex_nb.toyvqgm`; imagenet: the
  official taming checkpoint), always read back through :func:`cortex_nb.vqgm.load_vqgm`.
- :func:`get_evaluators` — the classifiers that judge decoded images (the paper's pretrained
  ResNet18/50, ViT-B/16, B/32, or their toy stand-ins trained on real toy images).
- :func:`generate_dataset` — the synthetic dataset of §4.1.1 as token stores.
- :func:`get_extractors`, :func:`extractor_accuracy` — CE / RE (§3.2, A.1) and Table 1.

Every stage also runs under ``torchrun`` (see :mod:`cortex_nb.distributed`): caches that one
process builds (the toy VQGM, the toy evaluators) are built by rank 0 while the others wait;
shards, TSV chunks and training batches are split between the ranks.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from .evaluators import DISPLAY_NAMES
from .files import digest, load_cache_json, save_json
from .store import TokenStore
from .tables import mean_ci

__all__ = [
    "setup", "class_names", "get_vqgm", "check_n_classes", "get_evaluators", "generate_dataset", "load_split",
    "evaluator_scores", "vqgm_report", "evaluator_display_names", "real_toy_images",
    "embed_fn", "extractor_config", "get_extractors", "extractor_accuracy",
    "digest", "section", "weights_key", "vqgm_key", "evaluators_key", "array_key", "store_meta", "store_key",
    "evaluators_cache_key", "quality_key", "extractor_key",
]

log = logging.getLogger("cortex_nb")

DISPLAY = DISPLAY_NAMES  # evaluator names for tables and figures


def evaluator_display_names(names) -> list[str]:
    return [DISPLAY.get(n, n) for n in names]


def setup(cfg: DictConfig) -> None:
    """Seed, thread count, plot style and logging for a stage; the results directories are checked
    for writing first (:func:`cortex_nb.config.ensure_writable`), so a read-only place fails before
    any work. With N processes on the machine (torchrun) each uses ``max(1, cfg.threads // N)``
    threads and log lines name their rank."""
    from . import distributed
    from .config import ensure_writable
    from .figures import set_style

    ensure_writable(cfg)
    set_style()
    torch.set_num_threads(distributed.threads_per_process(int(cfg.threads)))
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    if not logging.getLogger().handlers:
        who = f" [rank {os.environ.get('RANK', '0')}]" if distributed.launched() else ""
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{who} %(name)s: %(message)s", datefmt="%H:%M:%S")


# --------------------------------------------------------------------------------------
# cache keys: each cache is named by a digest of exactly what its result depends on
# --------------------------------------------------------------------------------------
#
# A key covers (1) the profile values the stage reads, and (2) the keys of the artifacts it
# consumes -- the VQGM's weights (:func:`vqgm_key`), a token store's meta (:func:`store_key`), an
# extractor's or evaluator's weights (:func:`weights_key`) -- so a change anywhere upstream
# reaches every cache below it. Sections enter whole minus the keys the stage is known not to
# read: a new profile key then costs at worst a needless rebuild, never a stale result.
#
# The device enters only where a result is *drawn* on it from a seeded RNG (token sampling,
# SmoothGrad noise, Gumbel noise): another device draws another sample, and resumable chunks
# from two devices must not mix. Trained models and deterministic computations differ across
# devices by float rounding only, as they do across CPUs, and train.fit resumes on another
# device by design; their keys leave the device out.

_VQGM_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def section(cfg: DictConfig, name: str, drop: tuple[str, ...] = ()) -> dict:
    """Profile section ``name`` as a plain dict, without the keys in ``drop``."""
    return {k: v for k, v in OmegaConf.to_container(cfg[name], resolve=True).items() if k not in drop}


def weights_key(module: torch.nn.Module) -> str:
    """Digest of a module's class and every tensor of its state_dict (names, dtypes, shapes, bytes):
    what a cache computed with the module depends on, whoever trained or loaded it."""
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)  # (numel,), any dtype
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())  # the buffer itself: no copy of a large tensor
    return h.hexdigest()[:16]


def vqgm_key(vqgm) -> str:
    """Digest of the whole VQGM -- its config and all weights (tokenizer, prior, decoder), not only
    the codebook that :meth:`VQGM.fingerprint` stamps -- computed once per loaded model (frozen)."""
    if vqgm not in _VQGM_KEYS:
        config = OmegaConf.to_container(vqgm.config, resolve=True) if vqgm.config is not None else None
        _VQGM_KEYS[vqgm] = digest({"config": config, "weights": weights_key(vqgm.model)})
    return _VQGM_KEYS[vqgm]


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
            "n_per_class": int(d[f"n_{split}"]), "n_classes": int(cfg.world.n_classes)}


def store_key(store: TokenStore) -> str:
    """Digest of a finished split's meta: everything its tokens (and images) depend on."""
    return digest({k: v for k, v in store.meta.items() if k != "complete"})


def evaluators_cache_key(cfg: DictConfig) -> str:
    """Key of the toy evaluators: they are trained on real toy images (seed, world) with the
    evaluators section's settings (weights_dir and preprocess are the pretrained ones')."""
    return digest({"seed": int(cfg.seed), "world": section(cfg, "world"),
                   "evaluators": section(cfg, "evaluators", drop=("weights_dir", "preprocess"))})


def quality_key(cfg: DictConfig, vqgm, evaluators: dict) -> str:
    """Key of :func:`vqgm_report`: held-out real images (seed, world, vqgm.n_report), the VQGM
    that reconstructs them and the evaluators that judge them."""
    return digest({"seed": int(cfg.seed), "world": section(cfg, "world"), "n_report": int(cfg.vqgm.n_report),
                   "vqgm": vqgm_key(vqgm), "evaluators": evaluators_key(evaluators)})


def extractor_key(cfg: DictConfig, arch: str, train: TokenStore, val: TokenStore) -> str:
    """Key of one trained extractor: its settings (the extractors section but the list of
    archs), the seed, the number of classes and the train / val splits it learns from (their
    meta covers the VQGM, whose codebook embeds the tokens)."""
    return digest({"arch": arch, "extractors": section(cfg, "extractors", drop=("archs",)),
                   "seed": int(cfg.seed), "n_classes": int(cfg.world.n_classes),
                   "train": store_key(train), "val": store_key(val)})


def _cache(cfg: DictConfig, *parts: str) -> Path:
    return Path(cfg.paths.cache).joinpath(*parts)


def class_names(cfg: DictConfig) -> list[str]:
    """Human-readable class names: the toy species, or ImageNet's 1000 categories
    (from torchvision's weights metadata, available offline)."""
    if cfg.vqgm.source == "toy":
        from .toyworld import SPECIES

        return list(SPECIES)[: cfg.world.n_classes]
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _toy_configs(cfg: DictConfig):
    from .toyvqgm import PriorConfig, TokenizerConfig

    tok = TokenizerConfig(**OmegaConf.to_container(cfg.vqgm.tokenizer, resolve=True))
    prior = PriorConfig(**OmegaConf.to_container(cfg.vqgm.prior, resolve=True))
    return tok, prior


def get_vqgm(cfg: DictConfig):
    """The VQGM of the profile, loaded through the one loader :func:`cortex_nb.vqgm.load_vqgm`.

    toy/smoke: trains the toy tokenizer + prior on first use (resumable, cached in
    ``cache/vqgm``) and saves them in taming's format; imagenet: reads ``vqgm.config`` and
    ``vqgm.ckpt`` (or $CORTEX_VQGM_CONFIG / $CORTEX_VQGM_CKPT).
    """
    from . import distributed
    from .vqgm import CheckpointError, load_vqgm

    if cfg.vqgm.source == "toy" and distributed.active():  # torchrun: rank 0 trains, the others load
        return distributed.main_first(lambda: get_vqgm(cfg))
    setup(cfg)
    if cfg.vqgm.source == "toy":
        from .toyvqgm import build_toy_vqgm

        tok, prior = _toy_configs(cfg)
        out = build_toy_vqgm(_cache(cfg, "vqgm"), tok, prior, seed=int(cfg.seed), device=cfg.device,
                             n_classes=int(cfg.world.n_classes), scene_bias=float(cfg.world.scene_bias),
                             n_report=int(cfg.vqgm.n_report), progress=bool(cfg.progress))
        return check_n_classes(cfg, load_vqgm(out["config"], out["ckpt"], device=cfg.device))
    if not cfg.vqgm.config or not cfg.vqgm.ckpt:
        raise CheckpointError(
            f"profile {cfg.name!r} needs taming's class-conditional ImageNet model: set CORTEX_VQGM_CONFIG to its "
            "config YAML and CORTEX_VQGM_CKPT to its last.ckpt (or vqgm.config / vqgm.ckpt in the profile); "
            "README 'ImageNet profile' says where to get them")
    return check_n_classes(cfg, load_vqgm(cfg.vqgm.config, cfg.vqgm.ckpt, device=cfg.device,
                                          trust_checkpoint=bool(cfg.vqgm.trust_checkpoint)))


def check_n_classes(cfg: DictConfig, vqgm):
    """``vqgm`` when its class-conditional prior knows exactly ``world.n_classes`` classes (the
    Labelator's n_classes); else a ConfigMismatchError that names both numbers, before any
    sampling fails with a bare 'class label out of range'."""
    from .vqgm import ConfigMismatchError

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


def real_toy_images(cfg: DictConfig, n: int, purpose: str):
    """``n`` real toy images for ``purpose`` ('evaluators-train', 'evaluators-val', 'report'),
    from seeds that no other purpose uses (so held-out sets are really held out)."""
    from . import toyworld

    offset = {"evaluators-train": 1, "evaluators-val": 2, "report": 3}[purpose]
    return toyworld.sample(n, seed=int(cfg.seed) * 1000 + offset, n_classes=int(cfg.world.n_classes),
                           image_size=int(cfg.world.image_size), scene_bias=float(cfg.world.scene_bias))


def get_evaluators(cfg: DictConfig) -> dict:
    """``{name: Evaluator}``: toy stand-ins trained on real toy images (cached), or the
    torchvision pretrained classifiers for imagenet (offline: a clear error naming the file)."""
    from . import distributed
    from . import evaluators as ev

    if cfg.evaluators.source == "toy" and distributed.active():  # torchrun: rank 0 trains, the others load
        return distributed.main_first(lambda: get_evaluators(cfg))
    setup(cfg)
    names = list(cfg.evaluators.names)
    if cfg.evaluators.source != "toy":
        return ev.load_imagenet_evaluators(names, weights_dir=cfg.evaluators.weights_dir, device=cfg.device,
                                           preprocess=cfg.evaluators.preprocess)
    ckpt_dir = _cache(cfg, "evaluators")
    key = evaluators_cache_key(cfg)
    paths = {n: ckpt_dir / f"{n}.pt" for n in names}
    stamp = ckpt_dir / "report.json"
    if (load_cache_json(stamp) or {}).get("_key") == key and all(p.exists() for p in paths.values()):
        return {n: ev.load_evaluator(p, device=cfg.device) for n, p in paths.items()}
    train = real_toy_images(cfg, int(cfg.evaluators.n_train), "evaluators-train")
    val = real_toy_images(cfg, int(cfg.evaluators.n_val), "evaluators-val")
    # per-model schedules measured here (evaluators.TOY_FIT_DEFAULTS), the profile's fit overrides on top
    overrides = {"seed": int(cfg.seed), "device": cfg.device, "progress": bool(cfg.progress),
                 **OmegaConf.to_container(cfg.evaluators.fit, resolve=True)}
    out = ev.train_toy_evaluators(train=(train.images, train.labels), val=(val.images, val.labels),
                                  names=names, ckpt_dir=ckpt_dir / key, n_classes=int(cfg.world.n_classes),
                                  fit_overrides=overrides)
    report = {n: {"val_acc": float(r.best_val_acc), "seconds": float(r.seconds)} for n, (_, r) in out.items()}
    for n, (e, _) in out.items():
        ev.save_evaluator(e, paths[n])
    save_json(stamp, {**report, "_key": key})
    # finished: one weights-only file per model is all that is kept; the fit checkpoints (optimiser
    # state, RNG, a second copy of each model) only served to resume an interrupted training
    shutil.rmtree(ckpt_dir / key, ignore_errors=True)
    return {n: e for n, (e, _) in out.items()}


def _split_labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes, dtype=np.int64), per_class)


def generate_dataset(cfg: DictConfig, vqgm=None, splits=("train", "val", "test")) -> dict[str, TokenStore]:
    """Sample the class-balanced train/val/test splits from the VQGM's class-conditional prior
    (CORTEX §4.1.1) and store them as token indices; the test split also stores its decoded
    images (uint8). Resumable and cached: see :class:`cortex_nb.store.TokenStore`. Under torchrun
    every rank calls this and makes its share of the shards; rank 0 writes the final arrays."""
    from .figures import to_uint8

    setup(cfg)
    vqgm = check_n_classes(cfg, vqgm) if vqgm is not None else get_vqgm(cfg)
    d = cfg.data
    stores = {}
    for split in splits:
        labels = _split_labels(int(cfg.world.n_classes), int(d[f"n_{split}"]))
        meta = store_meta(cfg, vqgm, split)  # what the shards depend on, exactly as make_shard uses it

        def make_shard(chunk: np.ndarray, seed: int, split=split, meta=meta) -> dict:
            toks = vqgm.sample(torch.as_tensor(chunk), seed=seed, batch_size=meta["sample_batch"], **meta["sampler"])
            out = {"tokens": toks.cpu().numpy()}
            if split == "test":
                ims = [to_uint8(vqgm.decode(toks[i:i + 64])) for i in range(0, len(toks), 64)]
                out["images"] = np.concatenate(ims)
            return out

        t0 = time.time()
        stores[split] = TokenStore.generate(_cache(cfg, "data", split), labels, make_shard, meta=meta,
                                            shard_size=int(d.shard_size), seed=int(cfg.seed), split=split,
                                            progress=bool(cfg.progress))
        log.info("split %s: %d samples (%.1f s)", split, len(stores[split]), time.time() - t0)
    return stores


def load_split(cfg: DictConfig, split: str, vqgm=None) -> TokenStore:
    """Open a finished split, checked against the VQGM (K, grid, codebook fingerprint) when given."""
    kw = {"K": vqgm.K, "m": vqgm.m, "fingerprint": vqgm.fingerprint()} if vqgm is not None else {}
    return TokenStore.open(_cache(cfg, "data", split), **kw)


def evaluator_scores(evaluators: dict, images, labels, *, seed: int = 0) -> pd.DataFrame:
    """Per evaluator: accuracy and mean true-class probability on ``images`` with 95 % bootstrap
    intervals (the Acc and P columns of the paper's Table 2)."""
    labels_t = torch.as_tensor(np.asarray(labels))
    rows = []
    for name, e in evaluators.items():
        proba = e.predict_proba(images)
        correct = (proba.argmax(1) == labels_t).float().numpy()
        p_true = proba.gather(1, labels_t[:, None]).squeeze(1).numpy()
        acc, p = mean_ci(correct, seed=seed), mean_ci(p_true, seed=seed)
        rows.append({"evaluator": DISPLAY.get(name, name), "n": len(labels_t),
                     "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                     "p": p["mean"], "p_lo": p["lo"], "p_hi": p["hi"]})
    return pd.DataFrame(rows)


def vqgm_report(cfg: DictConfig, vqgm, evaluators: dict) -> dict:
    """How good is the toy tokenizer? On held-out real toy images: reconstruction error,
    codebook usage, and each evaluator's accuracy on the real images vs their reconstructions
    (the gate: reconstructions should be recognised at >= 90 % of the real accuracy), overall
    and within the head-only pairs. Cached under :func:`quality_key`."""
    from . import toyworld
    from .toyvqgm import codebook_usage

    key = quality_key(cfg, vqgm, evaluators)
    path = _cache(cfg, "vqgm", "quality.json")
    cached = load_cache_json(path)
    if isinstance(cached, dict) and cached.get("_key") == key:
        return cached
    real = real_toy_images(cfg, int(cfg.vqgm.n_report), "report")
    x = toyworld.to_tensor(real.images)
    toks = torch.cat([vqgm.encode(x[i:i + 256].to(vqgm.device)).cpu() for i in range(0, len(x), 256)])
    rec = torch.cat([vqgm.decode(toks[i:i + 256]).cpu() for i in range(0, len(toks), 256)])
    usage = codebook_usage(toks, vqgm.K)
    out = {"n": len(x), "l1": float((rec - x).abs().mean()), "mse": float(((rec - x) ** 2).mean()),
           "perplexity": float(usage["perplexity"]), "used": int(usage["used"]), "dead": int(usage["dead"]),
           "K": int(vqgm.K), "evaluators": {}}
    labels = torch.as_tensor(real.labels)
    partner = torch.as_tensor([b if a == c else a for c in range(int(cfg.world.n_classes))
                               for a, b in toyworld.HEAD_PAIRS if c in (a, b)])
    for name, e in evaluators.items():
        pr, pc = e.predict_proba(x), e.predict_proba(rec)
        acc_real = float((pr.argmax(1) == labels).float().mean())
        acc_rec = float((pc.argmax(1) == labels).float().mean())
        # within-pair: does the head survive? compare only the two species of the image's pair
        pair = torch.stack([labels, partner[labels]], 1)
        pw = pc.gather(1, pair)
        pair_acc = float((pw[:, 0] > pw[:, 1]).float().mean())
        out["evaluators"][DISPLAY.get(name, name)] = {"acc_real": acc_real, "acc_recon": acc_rec,
                                                      "ratio": acc_rec / max(acc_real, 1e-9),
                                                      "pair_acc_recon": pair_acc}
    save_json(path, {**out, "_key": key})
    return out


# --------------------------------------------------------------------------------------
# information extractors (CORTEX 3.2, 4.2, A.1)
# --------------------------------------------------------------------------------------

def embed_fn(codebook: torch.Tensor):
    """tokens (B, m, m) int -> E (B, d, m, m): one codebook lookup on the codebook's device.
    This is how every extractor sees data: stored token indices, embedded on the fly."""
    import torch.nn.functional as F

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens.long(), codebook).permute(0, 3, 1, 2).contiguous()

    return embed


def extractor_config(cfg: DictConfig, arch: str, vqgm):
    from .extractors import ExtractorConfig

    e = cfg.extractors
    return ExtractorConfig(arch=arch, d=int(vqgm.d), m=int(vqgm.m), n_classes=int(cfg.world.n_classes),
                           width=int(e.width), fc=None if e.fc is None else int(e.fc))


def get_extractors(cfg: DictConfig, vqgm=None, *, archs=None) -> dict:
    """``{arch: FitResult}`` for CE and RE trained on the synthetic train split (validated on
    val; best epoch by validation top-1 kept; resumable from
    ``cache/extractors/<arch>-<extractor_key>/last.pt``). A finished run is loaded, not retrained;
    its directory then holds best.pt (weights) and a small last.pt (history, no optimiser state).
    Each result's ``.model`` is in eval mode on the device.
    Under torchrun every rank calls this: :func:`cortex_nb.train.fit` trains data-parallel (DDP, a
    slice of each global batch per rank, see :mod:`cortex_nb.distributed`) and only rank 0 writes
    checkpoints."""
    from .extractors import build_extractor
    from .train import FitConfig, fit

    setup(cfg)
    vqgm = vqgm if vqgm is not None else get_vqgm(cfg)
    train, val = load_split(cfg, "train", vqgm), load_split(cfg, "val", vqgm)
    e = cfg.extractors
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    out = {}
    for arch in archs or list(e.archs):
        torch.manual_seed(int(cfg.seed))
        model = build_extractor(extractor_config(cfg, arch, vqgm))
        fit_cfg = FitConfig(epochs=int(e.epochs), lr=float(e.lr), weight_decay=float(e.weight_decay),
                            step_size=max(1, int(e.epochs) // 4), gamma=0.1, batch_size=int(e.batch_size),
                            seed=int(cfg.seed), device=cfg.device, progress=bool(cfg.progress))
        ckpt_dir = _cache(cfg, "extractors", f"{arch}-{extractor_key(cfg, arch, train, val)}")
        res = fit(model, (torch.from_numpy(np.array(train.tokens)), torch.from_numpy(train.labels)),
                  (torch.from_numpy(np.array(val.tokens)), torch.from_numpy(val.labels)), fit_cfg,
                  ckpt_dir=ckpt_dir, transform=embed, compact=True)
        res.model.eval()
        out[arch] = res
    return out


def extractor_accuracy(cfg: DictConfig, results: dict, vqgm, ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """Table 1: top-k accuracy of each extractor on the test split, 95 % bootstrap intervals.
    Point estimates come from :func:`cortex_nb.train.topk_accuracy`; intervals resample the
    per-image hits (rank of the true class < k)."""
    from .train import predict_logits, topk_accuracy

    test = load_split(cfg, "test", vqgm)
    labels = torch.from_numpy(test.labels)
    embed = embed_fn(vqgm.codebook.to(cfg.device))
    rows = []
    for arch, res in results.items():
        logits = predict_logits(res.model, torch.from_numpy(np.array(test.tokens)), transform=embed).cpu()
        acc = topk_accuracy(logits, labels, ks)
        rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes scored above the true one
        row = {"extractor": {"CE": "CNN-based Extractor (CE)", "RE": "ResNet-based Extractor (RE)"}.get(arch, arch)}
        for k in ks:
            ci = mean_ci((rank < k).float().numpy(), seed=int(cfg.seed))
            row.update({f"top{k}": acc[k], f"top{k}_lo": ci["lo"], f"top{k}_hi": ci["hi"]})
        rows.append(row)
    return pd.DataFrame(rows)
