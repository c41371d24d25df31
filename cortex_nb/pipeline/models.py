"""The models of a run: the VQGM (§2.1) through the one protocol (:mod:`cortex_nb.vqgm.protocol`) and the
classifiers that judge decoded images (§4.1), each built or loaded as the profile says.

- :func:`get_vqgm` -- ``vqgm.family: taming``: the toy VQGM trained here (or shipped) and read back through
  :func:`cortex_nb.vqgm.load_vqgm`, or taming's released files; ``vqgm.family: python``: whatever object
  ``vqgm.factory`` returns, checked against the protocol.
- :func:`get_evaluators` -- the paper's pretrained ResNet18/50, ViT-B/16, B/32, or their toy stand-ins trained on
  real toy images (cached).
"""
from __future__ import annotations

import importlib
import logging
import shutil

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..engine import distributed
from ..errors import UserError
from ..io.files import load_cache_json, load_json, save_json
from ..vqgm import shipped
from .context import setup
from .keys import cache_path, evaluator_key, evaluators_cache_key

__all__ = ["get_vqgm", "factory_vqgm", "toy_maskgit", "check_n_classes", "class_ids", "real_toy_images", "get_evaluators"]

log = logging.getLogger("cortex_nb")


def get_vqgm(cfg: DictConfig):
    """The VQGM of the profile, a :class:`~cortex_nb.vqgm.protocol.VQGMProtocol`.

    ``vqgm.family: taming`` -- toy/smoke: the toy tokenizer + prior, shipped or trained on first use (resumable,
    cached in ``cache/vqgm``) and saved in taming's format; imagenet: ``vqgm.config`` and ``vqgm.ckpt`` (or
    $CORTEX_VQGM_CONFIG / $CORTEX_VQGM_CKPT); both read back through :func:`cortex_nb.vqgm.load_vqgm`.
    ``maskgit``: the toy MaskGIT (:func:`toy_maskgit`). ``python``: what ``vqgm.factory`` returns.
    """
    from ..errors import CheckpointError
    from ..vqgm import load_vqgm

    if cfg.vqgm.source == "toy" and cfg.vqgm.family != "python" and distributed.active():  # rank 0 trains
        return distributed.main_first(lambda: get_vqgm(cfg))
    setup(cfg)
    if bool(cfg.dry_run):                      # paper-dry: the released shapes, random weights, the same loader
        from ..vqgm.paper_dry import released_cin_config, write_dry_vqgm

        paths = write_dry_vqgm(cache_path(cfg, "vqgm-dry"), released_cin_config(int(cfg.world.n_classes)),
                               seed=int(cfg.seed))
        return check_n_classes(cfg, load_vqgm(paths["config"], paths["ckpt"], device=cfg.device))
    if cfg.vqgm.family == "python":
        return check_n_classes(cfg, factory_vqgm(cfg))
    if cfg.vqgm.family == "maskgit":
        return check_n_classes(cfg, toy_maskgit(cfg))
    if cfg.vqgm.source == "toy":
        from ..toy.prior import PriorConfig
        from ..toy.tokenizer import TokenizerConfig
        from ..toy.vqgm import build_toy_vqgm

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
    if getattr(vqgm, "dry_run", False) and not bool(cfg.dry_run):
        raise CheckpointError(
            f"{cfg.vqgm.ckpt} holds random weights written for the paper-dry profile (cortex_nb.vqgm.paper_dry), not "
            f"a trained model: profile {cfg.name!r} runs only on the real files",
            fix="point CORTEX_VQGM_CKPT / CORTEX_VQGM_CONFIG at taming's released cin transformer")
    return check_n_classes(cfg, vqgm)


def factory_vqgm(cfg: DictConfig):
    """``vqgm.factory`` ("package.module:function") called with the profile: its VQGM, checked against
    :class:`~cortex_nb.vqgm.protocol.VQGMProtocol` (a UserError naming the factory and what is missing)."""
    from ..vqgm.protocol import check_vqgm

    spec = str(cfg.vqgm.factory or "")
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UserError(f"vqgm.factory must be 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"vqgm.factory {spec!r} cannot be imported: {exc}",
                        fix="put the module on PYTHONPATH (or install it) and name a function in it") from exc
    return check_vqgm(fn(cfg), f"vqgm.factory {spec!r}")


def toy_maskgit(cfg: DictConfig):
    """The toy MaskGIT of the profile (``vqgm.maskgit``): the shipped one when its settings are the profile's (and
    not CORTEX_FROM_SCRATCH), else trained here on first use (resumable, cached in ``cache/vqgm-maskgit``)."""
    from ..toy.maskgit import MaskGITConfig
    from ..toy.maskgit_training import build_key, build_toy_maskgit, is_built, load_maskgit

    try:
        mcfg = MaskGITConfig(**OmegaConf.to_container(cfg.vqgm.maskgit, resolve=True))
    except (TypeError, ValueError) as exc:
        raise UserError(f"profile {cfg.name!r}: vqgm.maskgit: {exc}") from None
    settings = dict(seed=int(cfg.seed), n_classes=int(cfg.world.n_classes), scene_bias=float(cfg.world.scene_bias))
    out = cache_path(cfg, "vqgm-maskgit")
    key = build_key(mcfg, **settings)
    if shipped.reconcile("toy-maskgit", out, key, built=is_built(out, key)) == "shipped":
        log.info("toy MaskGIT: the shipped one (cortex_nb/artifacts/toy-maskgit, settings %s; "
                 "CORTEX_FROM_SCRATCH=1 retrains it)", key)
    build_toy_maskgit(out, mcfg, device=cfg.device, progress=bool(cfg.progress), **settings)
    return load_maskgit(out, device=cfg.device, sampler=mcfg.settings("sampler"))   # the profile's sampler knobs


def _install_shipped_vqgm(cfg: DictConfig, tok, prior) -> None:
    """Put the shipped toy VQGM (:mod:`cortex_nb.vqgm.shipped`) into the cache when the profile would
    train exactly it (:func:`~cortex_nb.vqgm.shipped.reconcile`: a build of these settings trained here gives way to
    it; under CORTEX_FROM_SCRATCH=1 a shipped copy in the cache is removed, so the VQGM is trained)."""
    from ..toy.vqgm import build_key, is_built

    key = build_key(tok, prior, seed=int(cfg.seed), n_classes=int(cfg.world.n_classes),
                    scene_bias=float(cfg.world.scene_bias), n_report=int(cfg.vqgm.n_report))
    out = cache_path(cfg, "vqgm")
    if shipped.reconcile("toy-vqgm", out, key, built=is_built(out, key)) == "shipped":
        log.info("toy VQGM: the shipped one (cortex_nb/artifacts/toy-vqgm, settings %s; "
                 "CORTEX_FROM_SCRATCH=1 retrains it)", key)


def check_n_classes(cfg: DictConfig, vqgm):
    """``vqgm`` when its class-conditional prior knows exactly ``world.n_classes`` classes (the
    Labelator's n_classes) and, in the toy world, makes images of ``world.image_size`` pixels; else a
    ConfigMismatchError that names both numbers, before any sampling fails with a bare 'class label out of
    range' (or an evaluator with a shape error)."""
    from ..vqgm.taming_config import ConfigMismatchError

    if cfg.vqgm.source == "toy" and int(vqgm.image_size) != int(cfg.world.image_size):
        raise ConfigMismatchError(
            f"profile {cfg.name!r} renders toy images of world.image_size = {int(cfg.world.image_size)} pixels, but "
            f"the VQGM makes images of {int(vqgm.image_size)}",
            fix=f"--set world.image_size={int(vqgm.image_size)}, or build the VQGM for {int(cfg.world.image_size)} "
                f"pixels")
    want, have = int(cfg.world.n_classes), int(vqgm.n_classes)
    if want != have:
        ckpt = getattr(vqgm, "ckpt_path", None) or cfg.vqgm.ckpt or "the loaded VQGM"
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
    from ..toy import world as toyworld

    offset = {"evaluators-train": 1, "evaluators-val": 2, "report": 3}[purpose]
    return toyworld.sample(n, seed=int(cfg.seed) * 1000 + offset, n_classes=int(cfg.world.n_classes),
                           image_size=int(cfg.world.image_size), scene_bias=float(cfg.world.scene_bias))


def get_evaluators(cfg: DictConfig) -> dict:
    """``{name: Evaluator}``: toy stand-ins trained on real toy images (cached), or the
    torchvision pretrained classifiers for imagenet (offline: a clear error naming the file)."""
    from ..method import evaluators as ev
    from ..toy import evaluators as toy

    if cfg.evaluators.source == "toy" and distributed.active():  # torchrun: rank 0 trains, the others load
        return distributed.main_first(lambda: get_evaluators(cfg))
    setup(cfg)
    names = list(cfg.evaluators.names)
    if bool(cfg.dry_run):                      # paper-dry: torchvision's architectures, weights=None
        from ..vqgm.paper_dry import dry_imagenet_evaluators

        return dry_imagenet_evaluators(names, device=cfg.device, preprocess=cfg.evaluators.preprocess,
                                       seed=int(cfg.seed))
    if cfg.evaluators.source != "toy":
        return ev.load_imagenet_evaluators(names, weights_dir=cfg.evaluators.weights_dir, device=cfg.device,
                                           preprocess=cfg.evaluators.preprocess)
    ckpt_dir = cache_path(cfg, "evaluators")
    key = evaluators_cache_key(cfg)
    paths = {n: ckpt_dir / f"{n}.pt" for n in names}
    stamp = ckpt_dir / "report.json"
    # shipped evaluators (cortex_nb/artifacts) whose settings are the profile's: installed, or kept, unless
    # CORTEX_FROM_SCRATCH, which removes a shipped copy from the cache (those are trained below)
    state = {n: shipped.reconcile(f"toy-evaluator-{n}", ckpt_dir, evaluator_key(cfg, n), built=paths[n].exists())
             for n in names}
    stamped = (load_cache_json(stamp) or {})
    fresh = stamped.get("_key") == key and all(p.exists() for p in paths.values()) and all(
        (state[n] == "shipped") == str(stamped.get(n, {}).get("source", "")).startswith("shipped") for n in names)
    if fresh:
        return {n: toy.load_evaluator(p, device=cfg.device) for n, p in paths.items()}
    report = {n: load_json(ckpt_dir / f"{n}.report.json") for n in names if state[n] == "shipped"}
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
