"""The fit loop's settings (:class:`FitConfig`, public as ``cortex_nb.engine.train.FitConfig``) and checkpoints:
what ``last.pt`` / ``best.pt`` hold, how a run is checked for resumption (same settings, see
:data:`RESUME_FREE_FIELDS`), the RNG state that makes a resumed run equal an uninterrupted one, and the
compact record a finished run keeps (weights in ``best.pt`` only, no optimiser state). Files hold only tensors and plain containers (``weights_only=True``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

__all__ = ["FitConfig", "RESUME_FREE_FIELDS", "RESUME_ONLY", "compact_record", "finished_weights",
           "refuse_compact_continuation", "load_state", "cfg_dict", "check_resumable", "loader_generator", "rng_state",
           "set_rng_state"]


@dataclass
class FitConfig:
    """Settings of :func:`cortex_nb.engine.train.fit`; defaults follow the paper's A.1.3 except ``epochs``."""

    epochs: int = 10  # total epochs (paper A.1.3: 80 for the ImageNet extractors)
    lr: float = 1e-3  # Adam initial learning rate (A.1.3)
    weight_decay: float = 1e-4  # Adam weight decay, L2 added to the gradient (A.1.3)
    step_size: int = 20  # StepLR: epochs between learning-rate decays (A.1.3)
    gamma: float = 0.1  # StepLR: decay factor (A.1.3)
    batch_size: int = 256  # training batch size (A.1.3); validation uses the same
    seed: int = 0  # seeds the shuffler generator and torch's global RNG (dropout, augmentation)
    device: str = "cpu"  # where model, batches and ``transform`` run
    max_steps_per_epoch: int | None = None  # cap on training batches per epoch (quick profiles)
    skip_nonfinite: bool = True  # skip batches whose loss is NaN/Inf (as the reference code does)
    progress: bool = True  # tqdm.auto bars (epochs + batches) with loss/acc postfix


#: fields of FitConfig that may differ between an interrupted run and its resumption
RESUME_FREE_FIELDS = ("epochs", "device", "progress")

#: what last.pt holds only to resume an unfinished run (3x the weights with Adam's moments)
RESUME_ONLY = ("model", "optimizer", "scheduler", "rng")


def compact_record(state: Mapping) -> dict:
    """A finished run's last.pt without what only resuming needs: epoch, history, best epoch and
    accuracy, cfg, seconds, and ``compact: True``. The weights stay in best.pt."""
    return {**{k: v for k, v in state.items() if k not in RESUME_ONLY}, "compact": True}


def finished_weights(best_path: Path, state: Mapping, last_path: Path) -> dict:
    """The weights a finished run returns: best.pt's, or (a run without best.pt) last.pt's."""
    if best_path.exists():
        return load_state(best_path)["model"]
    if "model" in state:
        return state["model"]
    from ..errors import UserError

    raise UserError(
        f"{best_path} is missing, and {last_path} records a finished run of {state['epoch']} epochs whose "
        "weights were kept only in best.pt",
        fix=f"delete {last_path.parent} and rerun to train again")


def refuse_compact_continuation(state: Mapping, cfg: FitConfig, last_path: Path) -> None:
    from ..errors import UserError

    raise UserError(
        f"{last_path} holds a finished run of {state['epoch']} epochs kept without its optimiser state "
        f"(compact=True), so it cannot continue to cfg.epochs={cfg.epochs}",
        fix=f"train from the start: pass resume=False, or delete {last_path.parent}")


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raise with the file named
        raise RuntimeError(
            f"cannot read checkpoint {path}: {e}. Delete the file (or its directory) to start "
            "this training afresh."
        ) from e


def cfg_dict(cfg: FitConfig) -> dict:
    return dataclasses.asdict(cfg)


def check_resumable(saved: Mapping, cfg: FitConfig, path: Path) -> None:
    now = cfg_dict(cfg)
    diff = {
        k: (saved.get(k), now[k])
        for k in now
        if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k]
    }
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{path} was written with a different FitConfig ({lines}). Resume with the same "
            "settings, pass resume=False to start over, or use another ckpt_dir."
        )


def loader_generator(data: Any) -> torch.Generator | None:
    """The ``generator=`` of a user's DataLoader (its shuffling state is checkpointed too)."""
    return getattr(data, "generator", None) if isinstance(data, DataLoader) else None


def rng_state(shuffler: torch.Generator, device: torch.device, loader_gen=None) -> dict:
    state = {"shuffler": shuffler.get_state(), "torch": torch.get_rng_state()}
    if loader_gen is not None:
        state["loader"] = loader_gen.get_state()
    if device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping, shuffler: torch.Generator, device: torch.device,
                   loader_gen=None) -> None:
    shuffler.set_state(state["shuffler"])
    torch.set_rng_state(state["torch"])
    if loader_gen is not None and "loader" in state:
        loader_gen.set_state(state["loader"])
    if "cuda" in state and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)
