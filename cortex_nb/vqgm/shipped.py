"""Pretrained toy artifacts shipped with the repository, as the paper starts from released checkpoints.

The toy profile's VQGM (tokenizer + class-conditional prior, 8 MB in taming's format) takes most of
notebook 00's time to train, and every later table inherits it. It is shipped under
``cortex_nb/artifacts/<name>/`` with a SHA-256 registry (``artifacts/registry.json``): for each
artifact the digest of every file, the digest of the settings it was trained with (the same key
the training cache uses) and the machine that trained it.

:func:`install` puts a shipped artifact into a profile's cache when, and only when, its settings
digest equals the one the profile would train with; from there the ordinary loader reads it (for
the VQGM: :func:`cortex_nb.vqgm.load_vqgm`, as for the official checkpoint). A profile with other
settings trains its own, as before. ``CORTEX_FROM_SCRATCH=1`` (``make all FROM_SCRATCH=1``) never
installs anything and retrains. A shipped file whose bytes do not match the registry is refused
with the file named, never used.

A cache remembers where its model came from (a ``.shipped.<name>`` marker beside the files :func:`install` copied), and
:func:`reconcile` keeps it true to the mode: under ``CORTEX_FROM_SCRATCH`` a shipped copy in the cache is removed so
the model is trained again, and without it a model trained here under the shipped settings (a ``FROM_SCRATCH`` run
before) gives way to the shipped one -- the same settings, so the same key, but not the same bytes on every machine.

The shipped VQGM is the same on every machine, so everything computed from it -- its cache keys
included -- no longer starts from a machine-dependent training run. ``tools/ship_artifacts.py``
refreshes an artifact from a cache and rewrites the registry.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import CheckpointError
from ..io.files import atomic_path, file_sha256, save_text

__all__ = ["ARTIFACTS", "REGISTRY", "MAX_SHIPPED_BYTES", "from_scratch", "registry", "verify", "install",
           "reconcile", "register"]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
REGISTRY = ARTIFACTS / "registry.json"
#: the most the shipped artifacts may weigh together (the repository must stay small): the toy VQGM (8 MB), the
#: two ViT evaluators (2.2 MB each), the two ResNet evaluators in float16 (22 + 43 MB), shipped once, and the toy
#: MaskGIT (the second VQGM family; at most 10 MB more)
MAX_SHIPPED_BYTES = 90 * 2**20


def from_scratch() -> bool:
    """True when ``CORTEX_FROM_SCRATCH`` asks to retrain everything (1, true, yes)."""
    return os.environ.get("CORTEX_FROM_SCRATCH", "").strip().lower() in ("1", "true", "yes")


def registry(path: Path | None = None) -> dict:
    """The registry: {name: {"settings_hash", "files": {file: sha256}, "bytes", "trained_on", ...}}."""
    path = path or REGISTRY
    return json.loads(path.read_text()) if path.is_file() else {}


def verify(name: str, root: Path | None = None) -> dict:
    """The registry entry of ``name`` after checking every shipped file against it; a missing or
    altered file raises :class:`~cortex_nb.errors.CheckpointError` naming it."""
    root = root or ARTIFACTS
    entry = registry(root / "registry.json").get(name)
    if entry is None:
        raise CheckpointError(f"no shipped artifact {name!r} in {root / 'registry.json'}",
                              fix="make all FROM_SCRATCH=1 (trains it)")
    fix = ("restore it (git checkout -- cortex_nb/artifacts) or retrain: make all FROM_SCRATCH=1")
    for fname, want in entry["files"].items():
        path = root / name / fname
        if not path.is_file():
            raise CheckpointError(f"shipped artifact file {path} is missing", fix=fix)
        got = file_sha256(path)
        if got != want:
            raise CheckpointError(f"shipped artifact file {path} does not match the registry "
                                  f"(sha256 {got[:12]}..., registered {want[:12]}...)", fix=fix)
    return entry


def install(name: str, dest: str | os.PathLike, settings_hash: str, *, root: Path | None = None) -> bool:
    """Copy shipped artifact ``name`` into ``dest`` if its settings digest is ``settings_hash``
    (what the profile would train) and ``CORTEX_FROM_SCRATCH`` is not set. Every file is checked
    against the registry first and copied atomically. Returns whether it installed."""
    root = root or ARTIFACTS
    entry = registry(root / "registry.json").get(name)
    if from_scratch() or entry is None or entry.get("settings_hash") != settings_hash:
        return False
    verify(name, root)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = _marker(dest, name)
    marker.unlink(missing_ok=True)        # until every file is in place, this is not (yet) the shipped model
    for fname in entry["files"]:
        with atomic_path(dest / fname) as tmp:
            shutil.copyfile(root / name / fname, tmp)
    save_text(marker, json.dumps({"settings_hash": settings_hash, "files": entry["files"]}, sort_keys=True) + "\n")
    return True


def _marker(dest: Path, name: str) -> Path:
    return Path(dest) / f".shipped.{name}"


def reconcile(name: str, dest: str | os.PathLike, settings_hash: str, built: bool, *,
              root: Path | None = None) -> str | None:
    """Make the cache at ``dest`` agree with the mode before its model is used; ``built``: whether it holds a
    finished model of ``settings_hash`` (the caller's check). Returns

    - ``"shipped"``: the shipped artifact is there (installed now, or before and untouched since);
    - ``"removed"``: under ``CORTEX_FROM_SCRATCH`` the cache held the shipped copy; its files are gone, so the
      caller trains;
    - ``None``: nothing shipped applies (other settings, no artifact) or, under ``CORTEX_FROM_SCRATCH``, a model
      trained here is kept.

    Without ``CORTEX_FROM_SCRATCH``, a finished model that is not the shipped copy (trained here by a
    ``FROM_SCRATCH`` run under the same settings) is replaced by the shipped one."""
    root = root or ARTIFACTS
    dest = Path(dest)
    marker = _marker(dest, name)
    recorded = None
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = None
    entry = registry(root / "registry.json").get(name)
    shipped_there = (built and entry is not None and recorded is not None
                     and recorded.get("settings_hash") == settings_hash and recorded.get("files") == entry["files"])
    if from_scratch():
        if recorded is None:
            return None
        for fname in (recorded.get("files") or {}):
            (dest / fname).unlink(missing_ok=True)
        marker.unlink()
        return "removed"
    if shipped_there:
        return "shipped"
    return "shipped" if install(name, dest, settings_hash, root=root) else None


def register(name: str, src: str | os.PathLike, files: list[str], settings_hash: str, *, trained_on: str,
             root: Path | None = None, **info) -> dict:
    """Ship ``files`` of ``src`` as artifact ``name`` (copied under ``root/name``) and record them in
    the registry with their digests; refuses when all shipped artifacts would exceed
    :data:`MAX_SHIPPED_BYTES`. Returns the entry (make tooling: ``tools/ship_artifacts.py``)."""
    root = root or ARTIFACTS
    src = Path(src)
    reg = registry(root / "registry.json")
    size = sum((src / f).stat().st_size for f in files)
    others = sum(e["bytes"] for n, e in reg.items() if n != name)
    if size + others > MAX_SHIPPED_BYTES:
        raise ValueError(f"shipping {name} ({size / 2**20:.1f} MiB) would take the artifacts to "
                         f"{(size + others) / 2**20:.1f} MiB, over {MAX_SHIPPED_BYTES / 2**20:.0f} MiB")
    (root / name).mkdir(parents=True, exist_ok=True)
    for f in files:
        with atomic_path(root / name / f) as tmp:
            shutil.copyfile(src / f, tmp)
    reg[name] = {"settings_hash": settings_hash, "files": {f: file_sha256(root / name / f) for f in files},
                 "bytes": size, "trained_on": trained_on, **info}
    save_text(root / "registry.json", json.dumps(reg, indent=2, sort_keys=True) + "\n")
    return reg[name]
