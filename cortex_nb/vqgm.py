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

What the released taming files contain, and how the loader copes (one test each):
    * Lightning checkpoints that current torch (weights_only=True) refuses: we keep
      weights_only=True and allow-list only the plain types such files hold (argparse
      Namespace, pathlib paths, numpy scalars/dtypes, OmegaConf containers, and inert
      stand-ins for Lightning classes such as the ``ModelCheckpoint`` class that Lightning 1.x
      used as a dict key). Anything else -> :class:`CheckpointError` naming the global and the
      ``trust_checkpoint=True`` escape hatch.
    * a nested ``first_stage_config.params.ckpt_path`` (and a top-level ``ckpt_path``) pointing
      at files the user does not have: dropped, the full checkpoint holds those weights.
    * ``lossconfig: VQLPIPSWithDiscriminator`` (its construction downloads VGG weights):
      replaced by ``DummyLoss``; ``first_stage_model.loss.*`` weights are dropped on load.
    * import-time breakages of taming on Lightning 2 / recent transformers / torch 2:
      :mod:`cortex_nb._taming_compat`.

A config is as dangerous as a pickle: building the model imports and calls every ``target`` it
names. Unless trusted (``vqgm.trust_checkpoint=true`` / ``trust_checkpoint=True``), every
``target`` anywhere in the config must be one of taming's own classes that class-conditional
configs use (:data:`MODEL_TARGETS`; outside ``model:`` also the data-module and Lightning
classes of :data:`OTHER_TARGETS`, which we never instantiate), checked before anything is
imported. Files are checked before ``torch.load``: against their ``<file>.sha256`` sidecar when
there is one (we write one beside every toy checkpoint), else through the CRCs of torch's zip
archive (torch itself does not check them, so flipped bytes load silently).

Structure of taming's class-conditional ImageNet config (``configs/*-project.yaml`` shipped
with the ``cin_transformer`` checkpoint), which :func:`tiny_cin_config` reproduces at toy size::

    model:
      base_learning_rate: 4.5e-06
      target: taming.models.cond_transformer.Net2NetTransformer
      params:
        first_stage_key: image
        cond_stage_key: class_label
        transformer_config:
          target: taming.modules.transformer.mingpt.GPT
          params: {vocab_size: 16384, block_size: 257, n_layer: ..., n_head: ..., n_embd: ...}
        first_stage_config:
          target: taming.models.vqgan.VQModel
          params:
            ckpt_path: <path of the VQGAN run, absent on the user's disk>
            embed_dim: 256
            n_embed: 16384
            ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3,
                       out_ch: 3, ch: 128, ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 2,
                       attn_resolutions: [16], dropout: 0.0}
            lossconfig:
              target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
              params: {disc_conditional: false, disc_in_channels: 3, disc_start: ...,
                       disc_weight: 0.8, codebook_weight: 1.0}
        cond_stage_config:
          target: taming.modules.util.Labelator
          params: {n_classes: 1000}
    data: {target: main.DataModuleFromConfig, ...}
"""

from __future__ import annotations

from .errors import CheckpointError, UserError

import argparse
import collections
import contextlib
import copy
import functools
import hashlib
import io
import logging
import os
import pathlib
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from ._taming_compat import filter_top_k_top_p, import_taming, taming_import_shims
from .files import progress as progress_bar
from .files import DAMAGED_FIX, checksum_path, file_sha256, rebuild_fix, save_with_checksum, verify_file, write_checksum  # noqa: F401

__all__ = [
    "VQGM",
    "load_vqgm",
    "build_from_config",
    "sanitize_config",
    "save_taming_checkpoint",
    "filter_top_k_top_p",
    "tiny_cin_config",
    "CheckpointError",
    "ConfigMismatchError",
    "ConfigNotFoundError",
    "TokenRangeError",
    "CKPT_ENV_VAR",
    "CONFIG_ENV_VAR",
    "MODEL_TARGETS",
    "OTHER_TARGETS",
    "TRUST_HOW",
    "checksum_path",
    "file_sha256",
    "rebuild_fix",
    "save_with_checksum",
    "verify_file",
    "write_checksum",
]

logger = logging.getLogger(__name__)

#: environment variables naming the taming checkpoint / config when the profile does not
CKPT_ENV_VAR = "CORTEX_VQGM_CKPT"
CONFIG_ENV_VAR = "CORTEX_VQGM_CONFIG"

NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
LABELATOR_TARGET = "taming.modules.util.Labelator"
DUMMY_LOSS_TARGET = "taming.modules.losses.vqperceptual.DummyLoss"
CODEBOOK_KEY = "first_stage_model.quantize.embedding.weight"
TOK_EMB_KEY = "transformer.tok_emb.weight"
POS_EMB_KEY = "transformer.pos_emb"
#: training-only weights (LPIPS VGG, PatchGAN discriminator) that released checkpoints carry
LOSS_PREFIXES = ("first_stage_model.loss.", "cond_stage_model.loss.")

_QUANTIZE_BUDGET = 1 << 24  # max elements of one (rows x K) distance block in quantize()

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


# --------------------------------------------------------------------------------------------
# errors


class ConfigMismatchError(UserError, ValueError):
    """The config does not describe the model stored in the checkpoint (or is unsupported)."""


class ConfigNotFoundError(UserError, FileNotFoundError):
    """The taming config file named is not on disk."""


class TokenRangeError(UserError, ValueError):
    """Token ids outside [0, K), or a token grid that is not (B, m, m)."""


# --------------------------------------------------------------------------------------------
# safe loading: the plain types Lightning checkpoints hold, allow-listed for weights_only=True


class _LightningStandIn:
    """Inert placeholder for a Lightning class named in a checkpoint.

    Lightning 1.x stored ``callbacks`` keyed by the callback *class*
    (e.g. ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``), so the official
    taming files reference Lightning classes. We map those names to these placeholders: the
    unpickler gets a harmless class, no Lightning code runs, and we never use the value.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _lightning_stand_ins() -> list[tuple[type, str]]:
    out: list[tuple[type, str]] = []
    callbacks = {
        "model_checkpoint": "ModelCheckpoint",
        "lr_monitor": "LearningRateMonitor",
        "early_stopping": "EarlyStopping",
        "progress": "ProgressBar",
        "progress.tqdm_progress": "TQDMProgressBar",
    }
    for prefix in ("pytorch_lightning", "lightning.pytorch"):
        for mod, cls in callbacks.items():
            stand_in = type(cls, (_LightningStandIn,), {"__module__": __name__ + "._stand_ins"})
            out.append((stand_in, f"{prefix}.callbacks.{mod}.{cls}"))
    for name in (
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
    ):
        # a dict subclass; weights_only only fills exact dicts, so read it back as a plain dict
        out.append((dict, name))
    return out


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars and dtypes, as torch documents for weights_only (numpy 1.x and 2.x names)."""
    out: list[Any] = [np.dtype]
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    out += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if name.endswith("DType") and isinstance(obj, type):
                out.append(obj)
    return out


def _omegaconf_safe_globals() -> list[Any]:
    import typing

    from omegaconf import base, nodes

    out: list[Any] = [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, typing.Any]
    for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "PathNode"):
        if hasattr(nodes, name):
            out.append(getattr(nodes, name))
    # containers and constructors OmegaConf's pickles call (harmless builtins)
    out += [dict, list, int, float, str, bool, tuple, set, collections.defaultdict]
    return out


@functools.lru_cache(maxsize=1)
def _safe_globals_cached() -> tuple[Any, ...]:
    paths: list[Any] = [
        pathlib.PosixPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        (pathlib.PureWindowsPath, "pathlib.WindowsPath"),  # a Windows path read on Linux
    ]
    return tuple(
        [argparse.Namespace]
        + paths
        + _numpy_safe_globals()
        + _omegaconf_safe_globals()
        + _lightning_stand_ins()
    )


def _safe_globals() -> list[Any]:
    """Everything we allow-list for ``torch.load(weights_only=True)`` (scoped to our loads)."""
    return list(_safe_globals_cached())


# --------------------------------------------------------------------------------------------
# file integrity: checksum sidecars, and the zip CRCs that torch.load does not check


def _ckpt_hint(path: Path) -> str:
    return (
        f"put the file at {path}, or set the profile's VQGM checkpoint path "
        f"(or the environment variable {CKPT_ENV_VAR}) to where it is"
    )


def _resolve_ckpt_path(ckpt: str | os.PathLike | None) -> Path:
    if ckpt is None:
        env = os.environ.get(CKPT_ENV_VAR)
        if not env:
            raise CheckpointError(
                f"no checkpoint given: pass ckpt=..., set the profile's VQGM checkpoint path, "
                f"or the environment variable {CKPT_ENV_VAR}"
            )
        ckpt = env
    path = Path(ckpt).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}; {_ckpt_hint(path)}")
    return path


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _is_weights_only_refusal(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    allowed = {
        (g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}")
        for g in _safe_globals()
    }
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - fall back to the name in the message
        names = []
    names = [n for n in names if n not in allowed]
    if not names:
        names = _GLOBAL_RE.findall(str(exc))
    return sorted(set(names))


_VQGM_DAMAGED_FIX = (
    "the file is damaged (truncated or altered): re-download it (an official checkpoint), or "
    "delete it and rerun the vqgm stage that builds it (the toy model)"
)
_VQGM_REBUILD = "the vqgm stage that builds it (`python -m cortex_nb vqgm --profile P`)"


def _read_checkpoint(path: Path, trust_checkpoint: bool) -> Any:
    """Check the file (:func:`verify_file`), then torch.load it with weights_only=True and our
    allow-list, or weights_only=False if trusted."""
    checked = verify_file(path, damaged_fix=_VQGM_DAMAGED_FIX,
                          mismatch_fix=rebuild_fix(path, _VQGM_REBUILD))
    logger.debug("checkpoint %s: integrity check %s", path, checked)
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a CheckpointError
        refused = not trust_checkpoint and _is_weights_only_refusal(exc)
        names = _unsafe_globals(path, exc) if refused else []
        if names:
            raise CheckpointError(
                f"refusing to unpickle {path}: it holds objects that are not plain data: "
                f"{', '.join(names)}. A checkpoint can carry code",
                fix="only load checkpoints you trust (e.g. downloaded from the official source, "
                    f"checksum checked); to allow it {TRUST_HOW}",
            ) from exc
        size = path.stat().st_size
        msg = str(exc).strip()
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        first = (detail.group(1) if detail else msg.splitlines()[0] if msg else "")[:200]
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): the file looks truncated or corrupt "
            f"({type(exc).__name__}: {first})",
            fix=f"{_VQGM_DAMAGED_FIX}; {_ckpt_hint(path)}"
            + (f". If the file is intact and you trust it, {TRUST_HOW}" if refused else ""),
        ) from exc


def _extract_state_dict(obj: Any, path: Path) -> "OrderedDict[str, torch.Tensor]":
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        sd = obj  # a bare state dict
    else:
        keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: no 'state_dict' (top level: {keys})"
        )
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(sd).__name__}, not a mapping")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return OrderedDict(sd)


# --------------------------------------------------------------------------------------------
# config handling


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


def _check_supported(model_cfg: DictConfig) -> None:
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
    return _instantiate(model_cfg)


def _instantiate(model_cfg: DictConfig) -> torch.nn.Module:
    tm = import_taming()
    plain = OmegaConf.to_container(model_cfg, resolve=True)
    out = io.StringIO()
    # targets are imported lazily by instantiate_from_config; taming print()s while building
    # ("Working with z of shape ..."): keep that out of notebooks, in the debug log
    with taming_import_shims(), contextlib.redirect_stdout(out):
        model = tm.main.instantiate_from_config(plain)
    if out.getvalue().strip():
        logger.debug("taming: %s", out.getvalue().strip())
    return model.eval()


# --------------------------------------------------------------------------------------------
# checkpoint writing


def _lightning_version() -> str:
    from importlib import metadata

    for dist in ("pytorch-lightning", "lightning"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def save_taming_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    epoch: int = 0,
    global_step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a Lightning-style checkpoint, laid out like taming's released files.

    The file holds ``{"epoch", "global_step", "pytorch-lightning_version", "state_dict",
    "optimizer_states": [], "lr_schedulers": [], "callbacks": {}}`` plus ``extra`` (e.g.
    ``hyper_parameters``). Written through :func:`cortex_nb.files.atomic_path` (a temporary
    file beside it, fsynced, moved into place), so readers never see a partial file, and its
    SHA-256 goes to the sidecar ``<path>.sha256`` that :func:`load_vqgm` verifies. The old
    sidecar is removed just before the move and the new one written just after it: a crash in
    between leaves a file without sidecar (then checked by its zip CRCs), never a wrong one.

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    ckpt: dict[str, Any] = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": _lightning_version(),
        "state_dict": state,
        "optimizer_states": [],
        "lr_schedulers": [],
        "callbacks": {},
    }
    if extra:
        if "state_dict" in extra:
            raise ValueError("extra must not replace 'state_dict'")
        ckpt.update(extra)
    save_with_checksum(ckpt, path)
    return path


# --------------------------------------------------------------------------------------------
# loading


def _shape_str(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape)


def _check_against_checkpoint(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], model_cfg: DictConfig, path: Path
) -> None:
    """Named, actionable errors for the mismatches users actually hit; then a generic check."""
    fix = "use the config that came with this checkpoint"
    p = model_cfg.params
    fs_p = p.first_stage_config.params
    if CODEBOOK_KEY not in sd and "quantize.embedding.weight" in sd:
        raise ConfigMismatchError(
            f"{path} is a first-stage VQGAN checkpoint (keys like 'quantize.embedding.weight'); "
            f"VQGM needs the class-conditional transformer checkpoint, whose state dict holds "
            f"'first_stage_model.*', 'transformer.*' (e.g. taming's cin_transformer last.ckpt)"
        )
    if CODEBOOK_KEY not in sd:
        raise ConfigMismatchError(
            f"{path} has no codebook ({CODEBOOK_KEY}); it is not a taming VQGAN/Net2Net "
            f"checkpoint (first keys: {list(sd)[:5]})"
        )
    K, d = sd[CODEBOOK_KEY].shape
    for name, want in (("n_embed", K), ("embed_dim", d)):
        got = fs_p.get(name)
        if got is not None and int(got) != int(want):
            raise ConfigMismatchError(
                f"config {name}={got} but checkpoint codebook is {K} x {d} ({CODEBOOK_KEY}) in "
                f"{path}: {fix}"
            )
    if TOK_EMB_KEY not in sd:
        raise ConfigMismatchError(
            f"{path} holds no transformer weights ({TOK_EMB_KEY} missing): it looks like a "
            f"first-stage VQGAN checkpoint; VQGM needs the class-conditional transformer "
            f"checkpoint (e.g. taming's cin_transformer last.ckpt)"
        )
    t_p = p.transformer_config.params
    vocab, n_embd = sd[TOK_EMB_KEY].shape
    if int(t_p.get("vocab_size", vocab)) != vocab:
        raise ConfigMismatchError(
            f"config transformer vocab_size={t_p.vocab_size} but checkpoint {TOK_EMB_KEY} is "
            f"{vocab} x {n_embd} in {path}: {fix}"
        )
    if POS_EMB_KEY in sd:
        block = sd[POS_EMB_KEY].shape[1]
        if int(t_p.get("block_size", block)) != block:
            raise ConfigMismatchError(
                f"config transformer block_size={t_p.block_size} but checkpoint {POS_EMB_KEY} "
                f"is {_shape_str(sd[POS_EMB_KEY].shape)} in {path}: {fix}"
            )
    own = model.state_dict()
    bad = [
        f"{k}: config {_shape_str(own[k].shape)} vs checkpoint {_shape_str(v.shape)}"
        for k, v in sd.items()
        if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ConfigMismatchError(
            f"config and checkpoint {path} disagree on {len(bad)} tensor shapes: "
            + "; ".join(bad[:5]) + more + f": {fix}"
        )


def _check_grid(vq: "VQGM", block_size: int) -> None:
    m = vq.m
    fs = vq.model.first_stage_model
    with torch.no_grad():
        probe = torch.zeros(1, 3, vq.image_size, vq.image_size, device=vq.device)
        quant, _, _ = fs.encode(probe)
    if tuple(quant.shape[1:]) != (vq.d, m, m):
        raise ConfigMismatchError(
            f"encoding a {vq.image_size} x {vq.image_size} image gives a "
            f"{_shape_str(quant.shape[1:])} embedding, expected {vq.d} x {m} x {m} "
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
            :func:`verify_file`), or objects we will not unpickle.
        ConfigMismatchError: config and checkpoint describe different models, or the config
            names a ``target`` outside the allow-list (checked before anything is imported).
    """
    path = _resolve_ckpt_path(ckpt)
    model_cfg, changed = sanitize_config(config, trust_checkpoint=trust_checkpoint)
    _check_supported(model_cfg)
    for msg in changed:
        logger.info("taming config: %s", msg)
    sd = _extract_state_dict(_read_checkpoint(path, trust_checkpoint), path)
    loss_keys = [k for k in sd if k.startswith(LOSS_PREFIXES)]
    for k in loss_keys:
        del sd[k]
    if loss_keys:
        logger.info("dropped %d training-loss tensors (%s*) from %s", len(loss_keys),
                    LOSS_PREFIXES[0], path)

    model = _instantiate(model_cfg)
    _check_against_checkpoint(model, sd, model_cfg, path)
    result = model.load_state_dict(sd, strict=False)
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
    logger.info("loaded %r from %s", vq, path)
    return vq


# --------------------------------------------------------------------------------------------
# the model seen by CORTEX


def _as_index_tensor(x: Any, what: str) -> torch.Tensor:
    """Any integer array/tensor (uint16 numpy, int16, int32 ...) -> int64 tensor."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{what} must be an integer tensor, got dtype {x.dtype}")
        return x.to(torch.int64)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


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

    def __repr__(self) -> str:
        return (f"VQGM(K={self.K}, d={self.d}, m={self.m}, image_size={self.image_size}, "
                f"n_classes={self.n_classes}, device={self.device})")

    # -- validation --------------------------------------------------------------------------

    def _tokens(self, tokens: Any) -> torch.Tensor:
        t = _as_index_tensor(tokens, "tokens")
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
        y = _as_index_tensor(labels, "labels").reshape(-1)
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
        """Class-conditional token sampling with taming's KV-cached sampler.

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
        tm = import_taming()
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
                x = tm.mingpt.sample_with_past(
                    c_idx, self.model.transformer, steps=steps, temperature=float(temperature),
                    sample_logits=True, top_k=k_arg, top_p=top_p,
                )
                x = self.model.permuter(x, reverse=True)
                out.append(x.reshape(-1, self.m, self.m))
        if not out:
            return torch.empty(0, self.m, self.m, dtype=torch.int64, device=dev)
        return torch.cat(out).to(torch.int64)


# --------------------------------------------------------------------------------------------
# a tiny config with the official structure (tests, smoke runs)


def tiny_cin_config(
    *,
    n_embed: int = 64,
    embed_dim: int = 8,
    z_channels: int = 8,
    resolution: int = 16,
    ch: int = 32,
    ch_mult: Sequence[int] = (1, 2),
    num_res_blocks: int = 1,
    attn_resolutions: Sequence[int] = (),
    n_classes: int = 5,
    n_layer: int = 1,
    n_head: int = 2,
    n_embd: int = 32,
    block_size: int | None = None,
    first_stage_ckpt_path: str | None = "logs/does-not-exist_imagenet_vqgan/checkpoints/last.ckpt",
) -> DictConfig:
    """A toy-sized config with the structure of taming's class-conditional ImageNet config.

    Same targets and nesting as the released ``cin_transformer`` project.yaml (module
    docstring), including what the loader has to cope with: the nested first-stage
    ``ckpt_path`` pointing at a file that does not exist, and the ``VQLPIPSWithDiscriminator``
    lossconfig with the full parameter block of ``configs/imagenet_vqgan.yaml``.
    ``ch`` and every ``ch * ch_mult`` must be multiples of 32 (GroupNorm(32)).
    Grid m = resolution / 2**(len(ch_mult) - 1); GPT vocab = n_embed; block_size = m*m + 1.
    """
    m = resolution // 2 ** (len(ch_mult) - 1)
    first_stage_params: dict[str, Any] = {
        "embed_dim": embed_dim,
        "n_embed": n_embed,
        "ddconfig": {
            "double_z": False,
            "z_channels": z_channels,
            "resolution": resolution,
            "in_channels": 3,
            "out_ch": 3,
            "ch": ch,
            "ch_mult": list(ch_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions),
            "dropout": 0.0,
        },
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {
                "disc_conditional": False,
                "disc_in_channels": 3,
                "disc_start": 250001,
                "disc_weight": 0.8,
                "codebook_weight": 1.0,
            },
        },
    }
    if first_stage_ckpt_path is not None:
        first_stage_params = {"ckpt_path": first_stage_ckpt_path, **first_stage_params}
    cfg = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": NET2NET_TARGET,
            "params": {
                "first_stage_key": "image",
                "cond_stage_key": "class_label",
                "transformer_config": {
                    "target": "taming.modules.transformer.mingpt.GPT",
                    "params": {
                        "vocab_size": n_embed,
                        "block_size": block_size if block_size is not None else m * m + 1,
                        "n_layer": n_layer,
                        "n_head": n_head,
                        "n_embd": n_embd,
                    },
                },
                "first_stage_config": {
                    "target": "taming.models.vqgan.VQModel",
                    "params": first_stage_params,
                },
                "cond_stage_config": {
                    "target": LABELATOR_TARGET,
                    "params": {"n_classes": n_classes},
                },
            },
        },
        "data": {
            "target": "main.DataModuleFromConfig",
            "params": {
                "batch_size": 4,
                "num_workers": 0,
                "train": {"target": "taming.data.imagenet.ImageNetTrain",
                          "params": {"config": {"size": resolution}}},
            },
        },
    }
    return OmegaConf.create(cfg)
