"""Profiles: every result of cortex-nb is a function of one profile (a YAML file) and a seed.

``load_profile("toy" | "smoke" | "imagenet", **overrides)`` reads ``cortex_nb/profiles/_base.yaml``
(every key, with its default and comment) merged with ``cortex_nb/profiles/<name>.yaml`` (only what
that profile changes) with OmegaConf, applies overrides, checks every value
(:mod:`cortex_nb.io.schema`), resolves paths and the device, and returns a read-only ``DictConfig``.
:func:`write_resolved` saves the result, with the machine it ran on, beside the results.

Overrides name existing keys only (``load_profile("toy", seed=1)``, nested keys with ``__`` or
dots: ``load_profile("toy", **{"data.n_test": 10})`` or ``data__n_test=10``); a key that the
profile does not have is an error, so a typo never silently does nothing.

Environment variables (for the imagenet profile's checkpoints, see README):
``CORTEX_PROFILE`` (the notebooks' default profile), ``CORTEX_VQGM_CONFIG``, ``CORTEX_VQGM_CKPT``,
``CORTEX_WEIGHTS_DIR`` (torchvision weight files), ``CORTEX_DEVICE``, ``CORTEX_RESULTS``
(where results/ and figures/ live; default: the repository root).
"""
from __future__ import annotations

from ..errors import UserError
from .machine import cpu_model, run_info  # noqa: F401  (re-exported: what a resolved profile records)

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["load_profile", "PROFILES", "ProfileError", "repo_root", "profile_hash", "resolve_device",
           "ensure_writable", "write_resolved", "run_info"]

PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"
BASE_PROFILE = PROFILE_DIR / "_base.yaml"  # defaults; not a profile of its own
PROFILES = tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml") if not p.stem.startswith("_")))

# Environment variables that fill profile keys when set (and the profile leaves them null).
ENV_KEYS = {
    "CORTEX_VQGM_CONFIG": "vqgm.config",
    "CORTEX_VQGM_CKPT": "vqgm.ckpt",
    "CORTEX_WEIGHTS_DIR": "evaluators.weights_dir",
    "CORTEX_DEVICE": "device",
}


class ProfileError(UserError, ValueError):
    """An unknown profile, an override that names a key the profile does not have, a value outside
    what the key allows (:mod:`cortex_nb.io.schema`), or a results directory that cannot be written."""


def repo_root() -> Path:
    """The directory that holds results/ and figures/: $CORTEX_RESULTS, else the checkout root
    (the package's parent when installed editable), else the current directory."""
    env = os.environ.get("CORTEX_RESULTS")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProfileError(f"device={device!r} but no CUDA device is visible",
                           fix="--set device=auto (or cpu), or unset CORTEX_DEVICE")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ProfileError(f"device={device!r}: expected auto, cpu or cuda[:N]", fix="--set device=auto")
    return device


def _int_env(var: str) -> Any:
    """An integer environment variable as an int, or as given (the schema then refuses it, naming the key)."""
    value = os.environ[var].strip()
    return int(value) if value.isdigit() else value


def _set_override(cfg: DictConfig, key: str, value: Any, name: str) -> None:
    dotted = key.replace("__", ".")
    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        where, known = (parent_key, parent.keys()) if isinstance(parent, DictConfig) else ("the top level", cfg.keys())
        raise ProfileError(f"profile {name!r} has no key {dotted!r}; keys under {where or 'the top level'}: "
                           + ", ".join(sorted(map(str, known))), fix="check the key's spelling")
    OmegaConf.update(cfg, dotted, value, merge=False)


def _refuse(name: str):
    def refuse(key: str, value: Any, allowed: str) -> ProfileError:
        how = (f"override the section's keys one by one, e.g. --set {key}.KEY=VALUE" if allowed.startswith("a section")
               else f"--set {key}=VALUE (CLI), load_profile({name!r}, **{{{key!r}: VALUE}}) (Python)")
        return ProfileError(f"profile {name!r}: {key} = {value!r} is not allowed; expected {allowed}",
                            fix=f"{how}, or edit cortex_nb/profiles/{name}.yaml")
    return refuse


def _merge_profile(base: DictConfig, own: DictConfig, path: Path) -> DictConfig:
    """The base profile with ``own``'s values on top. A profile may only change keys the base has
    (a typo in a profile file is as much an error as one in an override)."""
    def check(node: DictConfig, ref: DictConfig, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key not in ref:
                raise ProfileError(f"{path} sets {dotted!r}, which the base profile {BASE_PROFILE} does not have",
                                   fix=f"check the key's spelling, or add it (with its default) to {BASE_PROFILE.name}")
            if isinstance(value, DictConfig) and isinstance(ref[key], DictConfig) and len(ref[key]):
                check(value, ref[key], dotted + ".")  # an empty base section (evaluators.fit) is open

    check(own, base, "")
    return OmegaConf.merge(base, own)


def load_profile(name: str | None = None, /, **overrides: Any) -> DictConfig:
    """Load a profile by name (default: $CORTEX_PROFILE or 'toy') and apply overrides.

    Returns a read-only DictConfig with resolved ``paths`` (absolute) and ``device``.
    Raises ProfileError for an unknown profile or override key, or a value that
    :func:`cortex_nb.io.schema.validate` refuses (wrong type, out of range, unknown name).
    """
    name = name or os.environ.get("CORTEX_PROFILE", "toy")
    path = PROFILE_DIR / f"{name}.yaml"
    if name.startswith("_") or not path.exists():
        raise ProfileError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} (files in {PROFILE_DIR})",
                           fix="--profile " + (PROFILES[0] if PROFILES else "toy"))
    cfg = _merge_profile(OmegaConf.load(BASE_PROFILE), OmegaConf.load(path), path)
    for env, key in ENV_KEYS.items():
        if os.environ.get(env) and OmegaConf.select(cfg, key, default="__missing__") in (None, "auto"):
            OmegaConf.update(cfg, key, os.environ[env], merge=False)
    if os.environ.get("CORTEX_THREADS"):     # the process's share of the cores (`make all` runs stages 03-08 two at a
        _set_override(cfg, "threads", _int_env("CORTEX_THREADS"), name)   # time, one thread each); overrides win
    if os.environ.get("CORTEX_ROBUSTNESS", "").strip().lower() in ("1", "true", "yes"):   # `make robustness`
        _set_override(cfg, "robustness", True, name)
    for key, value in overrides.items():
        if key.replace("__", ".") == "name":      # the results folder is named by it: another profile, not a value
            raise ProfileError(f"profile {name!r}: 'name' cannot be overridden (it names the profile and its "
                               "results folder)", fix="choose the profile with --profile (CLI) or load_profile's "
                                                      "first argument (Python)")
        _set_override(cfg, key, value, name)
    from .schema import validate

    validate(OmegaConf.to_container(cfg, resolve=True), _refuse(name))
    root = repo_root()
    results = root / "results" / cfg.name
    # a seed replicate (r > 0) shares the profile's cache (its keys differ) and writes its tables
    # and figures under results/<profile>/seeds/r<r>/, never over the headline run's
    own = results / "seeds" / f"r{int(cfg.replicate)}" if int(cfg.replicate) else None
    cfg.paths = {
        "root": str(root),
        "results": str(own or results),
        "tables": str((own or results) / "tables"),
        "executed": str((own or results) / "executed"),
        "cache": str(results / "cache"),
        "figures": str(own / "figures" if own else root / "figures" / cfg.name),
        "seeds": str(results / "seeds"),
    }
    cfg.device = resolve_device(str(cfg.device))
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)
    OmegaConf.set_struct(cfg, True)
    return cfg


def profile_hash(cfg: DictConfig | dict, *keys: str) -> str:
    """A short stable hash of the profile (or of the sub-trees named by dotted ``keys``):
    used to invalidate caches when the settings that built them change."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg

    def get(tree: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            tree = tree[part]
        return tree

    from .files import digest

    return digest({k: get(container, k) for k in keys} if keys else container)[:12]


def ensure_writable(cfg: DictConfig) -> None:
    """Create the profile's results, cache, tables and figures directories and check that each
    can be written, so that an unwritable place is reported before any work starts (not as an
    ``OSError`` from deep inside the first checkpoint save, minutes in)."""
    import tempfile

    for key in ("results", "cache", "tables", "figures"):
        d = Path(cfg.paths[key])
        try:
            d.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError as e:
            raise ProfileError(f"cannot write to the {key} directory {d}: {e.strerror or e}",
                               fix=f"make {d} writable, or set CORTEX_RESULTS to a writable directory "
                                   "(results/ and figures/ go there)") from None


def write_resolved(cfg: DictConfig, path: str | os.PathLike | None = None) -> Path:
    """Write the resolved profile (every value, overrides applied) plus :func:`run_info` as YAML,
    by default to ``results/<profile>/profile.yaml``: the record of what produced the results there."""
    from .files import save_text

    path = Path(path) if path is not None else Path(cfg.paths.results) / "profile.yaml"
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("paths", None)  # machine-specific locations, not settings
    text = OmegaConf.to_yaml(OmegaConf.create({"profile": tree, "run": run_info()}))
    save_text(path, text)
    from . import provenance

    provenance.record(path)
    return path
