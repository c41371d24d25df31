"""Taming configs for the VQGM (PAPER.md §2.1): read, allow-list, sanitise, check, build.

A config is as dangerous as a pickle: building the model imports and calls every ``target`` it
names. Unless trusted (``vqgm.trust_checkpoint=true`` / ``trust_checkpoint=True``), every
``target`` must be one of taming's own classes (:data:`MODEL_TARGETS`, :data:`OTHER_TARGETS`),
checked before anything is imported (:func:`sanitize_config`, which also drops ``ckpt_path``
entries and swaps the LPIPS loss for ``DummyLoss``).

The official structure and its builder (:func:`~cortex_nb.vqgm.taming_shapes.cin_config`) are in
:mod:`cortex_nb.vqgm.taming_shapes`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from .taming_compat import import_taming, taming_import_shims

__all__ = [
    "ConfigMismatchError", "ConfigNotFoundError", "CONFIG_ENV_VAR", "TRUST_HOW",
    "NET2NET_TARGET", "VQMODEL_TARGET", "GPT_TARGET", "LABELATOR_TARGET", "DUMMY_LOSS_TARGET",
    "MODEL_TARGETS", "OTHER_TARGETS", "sanitize_config", "check_supported", "instantiate",
    "build_from_config",
]

logger = logging.getLogger(__name__)

#: environment variable naming the taming config when the profile does not
CONFIG_ENV_VAR = "CORTEX_VQGM_CONFIG"

NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
VQMODEL_TARGET = "taming.models.vqgan.VQModel"
GPT_TARGET = "taming.modules.transformer.mingpt.GPT"
LABELATOR_TARGET = "taming.modules.util.Labelator"
DUMMY_LOSS_TARGET = "taming.modules.losses.vqperceptual.DummyLoss"

#: how to say "I trust this file" (profile/CLI and Python); every trust refusal names both
TRUST_HOW = (
    "set vqgm.trust_checkpoint=true (CLI: --set vqgm.trust_checkpoint=true; "
    "Python: load_vqgm(..., trust_checkpoint=True))"
)


def _taming(module: str, *names: str) -> set[str]:
    return {f"taming.{module}.{n}" for n in names}


#: ``target`` values a config may name anywhere, the model included: taming's own classes that
#: its released configs (class-conditional ImageNet and the others) and our toy configs use.
#: Instantiating them runs only taming's constructors (a ``ckpt_path`` in them is dropped by
#: :func:`sanitize_config` or read by torch.load with weights_only).
MODEL_TARGETS: frozenset[str] = frozenset(
    _taming("models.cond_transformer", "Net2NetTransformer")
    | _taming("models.vqgan", "VQModel", "VQNoDiscModel", "GumbelVQ", "VQSegmentationModel")
    | _taming("modules.transformer.mingpt", "GPT", "DummyGPT", "CodeGPT")
    | _taming("modules.transformer.permuter", "Identity", "Subsample", "ZCurve", "SpiralOut",
              "SpiralIn", "Random", "AlternateParsing")
    | _taming("modules.util", "Labelator", "SOSProvider")
    | _taming("modules.misc.coord", "CoordStage")
    # VQLPIPSWithDiscriminator is replaced by DummyLoss before anything is built
    | _taming("modules.losses.vqperceptual", "DummyLoss", "VQLPIPSWithDiscriminator")
    | _taming("modules.losses.segmentation", "BCELoss", "BCELossWithQuant")
    | _taming("lr_scheduler", "LambdaWarmUpCosineScheduler")  # GumbelVQ's temperature
)

#: ``target`` values allowed only outside ``model:`` (the data and Lightning sections of a
#: project.yaml, which we never instantiate): taming's data module and datasets, and the
#: callbacks/loggers taming's main.py writes. Their constructors download or read datasets, so
#: they are refused inside the model, where they would be built.
OTHER_TARGETS: frozenset[str] = frozenset(
    {"main.DataModuleFromConfig", "taming.main.DataModuleFromConfig"}
    | {f"{m}.{c}" for m in ("main", "taming.main")
       for c in ("SetupCallback", "ImageLogger", "LearningRateMonitor", "CUDACallback")}
    | {"pytorch_lightning.callbacks.ModelCheckpoint",
       "pytorch_lightning.callbacks.LearningRateMonitor",
       "pytorch_lightning.loggers.WandbLogger", "pytorch_lightning.loggers.TestTubeLogger"}
    | _taming("data.imagenet", "ImageNetTrain", "ImageNetValidation", "ImageNetTrainWithDepth",
              "ImageNetValidationWithDepth", "RINTrainWithDepth", "RINValidationWithDepth",
              "DRINExamples", "ImageNetScaleTrain", "ImageNetScaleValidation",
              "ImageNetEdgesTrain", "ImageNetEdgesValidation")
    | _taming("data.custom", "CustomTrain", "CustomTest")
    | _taming("data.faceshq", "CelebAHQTrain", "CelebAHQValidation", "FFHQTrain",
              "FFHQValidation", "FacesHQTrain", "FacesHQValidation")
    | _taming("data.coco", "Examples", "CocoImagesAndCaptionsTrain",
              "CocoImagesAndCaptionsValidation")
    | _taming("data.ade20k", "Examples", "ADE20kTrain", "ADE20kValidation")
    | _taming("data.sflckr", "Examples")
    | _taming("data.base", "ImagePaths", "NumpyPaths")
)


class ConfigMismatchError(UserError, ValueError):
    """The config does not describe the model stored in the checkpoint (or is unsupported)."""


class ConfigNotFoundError(UserError, FileNotFoundError):
    """The taming config file named is not on disk."""


# --------------------------------------------------------------------------------------------
# reading and the target allow-list


def _load_config(config: Any) -> tuple[DictConfig, str]:
    """(a private copy of the whole taming config, where it came from for messages)."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config).expanduser()
        if not path.is_file():
            raise ConfigNotFoundError(
                f"taming config not found: {path}",
                fix=f"point the profile's VQGM config (vqgm.config, or the environment variable "
                    f"{CONFIG_ENV_VAR}) at the project.yaml shipped with the checkpoint",
            )
        return OmegaConf.load(path), f" {path}"
    if isinstance(config, DictConfig):
        return OmegaConf.create(OmegaConf.to_container(config, resolve=True)), ""
    if isinstance(config, Mapping):
        return OmegaConf.create(copy.deepcopy(dict(config))), ""
    raise TypeError(f"config must be a path, dict or OmegaConf DictConfig, got {type(config)}")


def _untrusted_targets(node: Any, where: str, allowed: frozenset[str]) -> list[tuple[str, Any]]:
    """(key path, value) of every ``target`` key under ``node`` (mappings and lists, at any
    depth) whose value is not in ``allowed``."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "target":
                if not (isinstance(value, str) and value in allowed):
                    found.append((path, value))
            else:
                found += _untrusted_targets(value, path, allowed)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _untrusted_targets(value, f"{where}[{i}]", allowed)
    return found


def _refuse_untrusted_targets(
    cfg: DictConfig, model: Mapping, has_model: bool, source: str
) -> None:
    """A config is as dangerous as a pickle: building it imports and calls every ``target``.

    Checked on the plain (resolved) containers, before anything is imported: inside the model,
    :data:`MODEL_TARGETS` only; elsewhere (data, Lightning sections, never instantiated by us)
    also :data:`OTHER_TARGETS`.
    """
    bad = _untrusted_targets(model, "model" if has_model else "", MODEL_TARGETS)
    if has_model:
        rest = OmegaConf.to_container(cfg, resolve=False)
        rest.pop("model", None)
        bad += _untrusted_targets(rest, "", MODEL_TARGETS | OTHER_TARGETS)
    if bad:
        listing = "; ".join(f"{path} = {value!r}" for path, value in bad)
        raise ConfigMismatchError(
            f"refusing the taming config{source}: {listing} (allowed without trust: taming's "
            f"own classes that its configs use; inside model: not its data-module or Lightning "
            f"classes). Building the model would import and call it: a config can run code, "
            f"like a pickle",
            fix=f"only load configs you trust; to allow it {TRUST_HOW}",
        )


def _as_model_config(config: Any, trust_checkpoint: bool = False) -> DictConfig:
    """A private copy of the ``model:`` node of a taming config (path, dict or OmegaConf),
    its targets checked against the allow-list unless ``trust_checkpoint``."""
    cfg, source = _load_config(config)
    has_model = isinstance(cfg, DictConfig) and "model" in cfg
    model = cfg.model if has_model else cfg
    if not isinstance(model, DictConfig) or "target" not in model:
        raise ConfigMismatchError(
            f"config{source} has neither a top-level 'model:' with a 'target' nor a 'target' "
            f"itself; expected a taming project.yaml"
        )
    plain = OmegaConf.to_container(model, resolve=True)
    if not trust_checkpoint:
        _refuse_untrusted_targets(cfg, plain, has_model, source)
    return OmegaConf.create(plain)


# --------------------------------------------------------------------------------------------
# sanitising, checking, building


def sanitize_config(
    config: Any, *, trust_checkpoint: bool = False
) -> tuple[DictConfig, list[str]]:
    """Return (model config safe to instantiate offline, list of what was changed).

    * refuses (:class:`ConfigMismatchError`) any ``target`` outside the allow-list
      (:data:`MODEL_TARGETS`, :data:`OTHER_TARGETS`; module docstring) unless
      ``trust_checkpoint``: building the model would import and call it;
    * drops ``ckpt_path`` at the top level and inside ``first_stage_config`` /
      ``cond_stage_config`` (the full checkpoint holds those weights; the files named there are
      usually not on the user's disk, and taming would ``torch.load`` them at construction);
    * replaces any first/cond-stage ``lossconfig`` by ``DummyLoss`` (``VQLPIPSWithDiscriminator``
      downloads VGG weights when constructed, and losses are not needed for inference).
    """
    model = _as_model_config(config, trust_checkpoint)
    changed: list[str] = []
    params = model.setdefault("params", {})
    if params.get("ckpt_path") is not None:
        changed.append(f"dropped model.params.ckpt_path={params.ckpt_path!r}")
        del params["ckpt_path"]
    for stage in ("first_stage_config", "cond_stage_config"):
        sub = params.get(stage)
        if not isinstance(sub, DictConfig) or "params" not in sub:
            continue
        sp = sub.params
        if sp.get("ckpt_path") is not None:
            changed.append(f"dropped model.params.{stage}.params.ckpt_path={sp.ckpt_path!r}")
            del sp["ckpt_path"]
        loss = sp.get("lossconfig")
        if loss is None and stage == "first_stage_config":  # VQModel requires one
            changed.append(f"added DummyLoss as model.params.{stage}.params.lossconfig")
            sp["lossconfig"] = {"target": DUMMY_LOSS_TARGET}
        elif isinstance(loss, DictConfig) and loss.get("target") != DUMMY_LOSS_TARGET:
            changed.append(
                f"replaced model.params.{stage}.params.lossconfig ({loss.get('target')}) by "
                f"DummyLoss"
            )
            sp["lossconfig"] = {"target": DUMMY_LOSS_TARGET}
    return model, changed


def check_supported(model_cfg: DictConfig) -> None:
    """Refuse (:class:`ConfigMismatchError`) a sanitised model config that is not a
    class-conditional Net2NetTransformer over a plain (unremapped) VQGAN codebook."""
    target = model_cfg.get("target")
    if target != NET2NET_TARGET:
        raise ConfigMismatchError(
            f"model.target is {target!r}; VQGM needs a class-conditional {NET2NET_TARGET}"
        )
    p = model_cfg.params
    cond = p.get("cond_stage_config")
    cond_target = cond.get("target") if isinstance(cond, DictConfig) else cond
    if cond_target != LABELATOR_TARGET or p.get("unconditional", False):
        raise ConfigMismatchError(
            f"cond_stage_config is {cond_target!r}; VQGM needs class labels ({LABELATOR_TARGET})"
        )
    fs = p.get("first_stage_config")
    if not isinstance(fs, DictConfig) or "ddconfig" not in fs.get("params", {}):
        raise ConfigMismatchError("first_stage_config.params.ddconfig missing")
    if fs.params.get("remap") is not None:
        raise ConfigMismatchError(
            f"first_stage_config.params.remap={fs.params.remap!r} (index remapping) is not "
            f"supported: tokens would not be codebook rows"
        )


def instantiate(node: Mapping) -> torch.nn.Module:
    """The module a config node (``{target, params}``, already trusted or sanitised) describes,
    built by taming's ``instantiate_from_config``: randomly initialised, in training mode."""
    tm = import_taming()
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    out = io.StringIO()
    # targets are imported lazily by instantiate_from_config; taming print()s while building
    # ("Working with z of shape ..."): keep that out of notebooks, in the debug log
    with taming_import_shims(), contextlib.redirect_stdout(out):
        model = tm.main.instantiate_from_config(plain)
    if out.getvalue().strip():
        logger.debug("taming: %s", out.getvalue().strip())
    return model


def build_from_config(config: Any, *, trust_checkpoint: bool = False) -> torch.nn.Module:
    """Instantiate the taming model described by ``config`` (sanitised, no weights loaded).

    Args:
        config: path to a taming YAML, a dict, or an OmegaConf config, with a top-level
            ``model:`` (or the ``model`` node itself).
        trust_checkpoint: allow ``target`` classes outside the allow-list (their code runs!).

    Returns:
        The ``Net2NetTransformer`` (randomly initialised) in eval mode.

    Raises:
        ConfigMismatchError: a ``target`` outside the allow-list, without trust.
    """
    model_cfg, changed = sanitize_config(config, trust_checkpoint=trust_checkpoint)
    for msg in changed:
        logger.info("taming config: %s", msg)
    return instantiate(model_cfg).eval()
