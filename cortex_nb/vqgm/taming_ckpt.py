"""Taming checkpoints for the VQGM (PAPER.md §2.1): read them safely, write them, check them
against their config.

What the released taming files contain, and how we cope (one test each, tests/test_vqgm.py):
    * Lightning checkpoints that current torch (weights_only=True) refuses: we keep
      weights_only=True and allow-list only the plain types such files hold (argparse
      Namespace, pathlib paths, numpy scalars/dtypes, OmegaConf containers, and inert
      stand-ins for Lightning classes such as the ``ModelCheckpoint`` class that Lightning 1.x
      used as a dict key). Anything else -> :class:`CheckpointError` naming the global and the
      ``trust_checkpoint=True`` escape hatch (:func:`read_checkpoint`).
    * training-loss weights (``first_stage_model.loss.*``: LPIPS' VGG, the discriminator):
      dropped on load (:data:`LOSS_PREFIXES`).
    * damaged files: checked before ``torch.load`` against their ``<file>.sha256`` sidecar when
      there is one (:func:`save_taming_checkpoint` writes one beside every toy checkpoint), else
      through the CRCs of torch's zip archive (:func:`cortex_nb.io.files.verify_file`; torch itself
      does not check them, so flipped bytes load silently).
    * a config that does not describe the checkpoint: named, actionable errors
      (:func:`check_against_checkpoint`).
"""

from __future__ import annotations

import argparse
import collections
import functools
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
from omegaconf import DictConfig, ListConfig

from ..errors import CheckpointError
from ..io.files import rebuild_fix, save_with_checksum, verify_file
from .taming_config import TRUST_HOW, ConfigMismatchError

__all__ = [
    "CKPT_ENV_VAR", "CODEBOOK_KEY", "TOK_EMB_KEY", "POS_EMB_KEY", "LOSS_PREFIXES",
    "resolve_ckpt_path", "read_checkpoint", "extract_state_dict", "check_against_checkpoint",
    "save_taming_checkpoint",
]

logger = logging.getLogger(__name__)

#: environment variable naming the taming checkpoint when the profile does not
CKPT_ENV_VAR = "CORTEX_VQGM_CKPT"

CODEBOOK_KEY = "first_stage_model.quantize.embedding.weight"
TOK_EMB_KEY = "transformer.tok_emb.weight"
POS_EMB_KEY = "transformer.pos_emb"
#: training-only weights (LPIPS VGG, PatchGAN discriminator) that released checkpoints carry
LOSS_PREFIXES = ("first_stage_model.loss.", "cond_stage_model.loss.")


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
# reading


def _ckpt_hint(path: Path) -> str:
    return (
        f"put the file at {path}, or set the profile's VQGM checkpoint path "
        f"(or the environment variable {CKPT_ENV_VAR}) to where it is"
    )


def resolve_ckpt_path(ckpt: str | os.PathLike | None) -> Path:
    """The checkpoint file ``ckpt`` names (``None``: ``$CORTEX_VQGM_CKPT``); a missing file or a
    directory -> :class:`CheckpointError` saying where to put it."""
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


def read_checkpoint(path: Path, trust_checkpoint: bool) -> Any:
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


def extract_state_dict(obj: Any, path: Path) -> "OrderedDict[str, torch.Tensor]":
    """The state dict in a loaded checkpoint (Lightning's ``state_dict`` entry, or a bare one)."""
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
# writing


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
    ``hyper_parameters``). Written through :func:`cortex_nb.io.files.atomic_path` (a temporary
    file beside it, fsynced, moved into place), so readers never see a partial file, and its
    SHA-256 goes to the sidecar ``<path>.sha256`` that :func:`cortex_nb.vqgm.load_vqgm` verifies.
    The old sidecar is removed just before the move and the new one written just after it: a
    crash in between leaves a file without sidecar (then checked by its zip CRCs), never a
    wrong one.

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
# checkpoint against config


def _shape_str(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape)


def check_against_checkpoint(
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
