"""Provenance: where every table and figure came from, and whether it is still what was written.

Every table (:func:`cortex_nb.io.tables.write_table`), figure (:func:`cortex_nb.io.figures.save_figure`) and
resolved profile (:func:`cortex_nb.io.config.write_resolved`) the package writes is logged as it is written:
one JSON line in ``.provenance.jsonl`` beside the file (git-ignored), with

- the file's SHA-256 and size;
- its writer: the notebook and cell (under `make all` the stage's notebook, in JupyterLab the open
  notebook; the cell is found later by its source), or the command line (``python -m cortex_nb ...``),
  and the library function that called the writer;
- the session: git commit (and whether the code was modified), the hash of the resolved profile,
  package versions, CPU model and capability, torch threads.

``python -m cortex_nb manifest`` (the last step of `make all`, `make seeds` and `make bias-control`) gathers
the records into ``results/<profile>/MANIFEST.json``: for each table and figure of the profile the record of
the write that produced its current bytes. A file whose bytes no record explains keeps the previous
manifest's entry when its hash still matches it (a clean clone has no logs: the committed manifest is the
record), and is otherwise marked ``not recorded``. :func:`check_manifest` recomputes every hash (`make verify`).
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .files import digest, file_sha256, save_text

__all__ = ["LOG_NAME", "MANIFEST_NAME", "set_profile", "dry_run", "record", "writer", "session", "artifact_paths",
           "build_manifest", "write_manifest", "load_manifest", "check_manifest"]

LOG_NAME = ".provenance.jsonl"
MANIFEST_NAME = "MANIFEST.json"
#: what a manifest covers, relative to results/<profile> and figures/<profile>
RESULT_GLOBS = ("**/tables/*.csv", "**/tables/*.md", "**/tables/*.tex", "**/figures/*.png", "**/figures/*.pdf",
                "**/profile.yaml")
FIGURE_GLOBS = ("*.png", "*.pdf")
#: directories under results/<profile> that hold caches and working copies, never results
SKIP_DIRS = ("cache", "executed", "atlas", "deps", "timings", "stamps")
#: the packages a session records (distribution names)
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "taming-transformers-rom1504", "captum",
            "omegaconf", "papermill", "cortex-nb")

#: the profile of the current process (set by :func:`cortex_nb.pipeline.run.setup`)
_PROFILE: dict[str, str] = {}
_DRY_RUN = [False]     # the bound profile's dry_run (not part of the records: see dry_run)


def set_profile(cfg) -> None:
    """Remember the resolved profile's name and hash (every value, ``paths`` left out) for the records
    this process writes, and whether its numbers are meaningless (paper-dry: :func:`dry_run`)."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("paths", None)
    _PROFILE.clear()
    _PROFILE.update({"profile": str(cfg.name), "profile_sha256": digest(tree)})
    _DRY_RUN[0] = bool(tree.get("dry_run", False))


def dry_run() -> bool:
    """Whether the profile bound last (:func:`set_profile`) is a dry run (paper-dry: random weights at the paper's
    shapes): the table and figure writers read it and say on every table and figure that its numbers mean
    nothing. False before any profile is bound."""
    return _DRY_RUN[0]


# ------------------------------------------------------------------------------------------------
# who is writing


def _stage_notebook() -> str | None:
    """notebooks/<stage>.ipynb of the `make all` stage running (``$CORTEX_STAGE_DEPS`` names its target)."""
    spec = os.environ.get("CORTEX_STAGE_DEPS", "")
    target = spec.rpartition(":")[2]
    return f"notebooks/{Path(target).name}" if target.endswith(".ipynb") else None


def _kernel_cell() -> tuple[str | None, str | None]:
    """(the open notebook's path where the kernel knows it, the source of the cell running) inside a
    Jupyter kernel; (None, None) elsewhere. The kernel's parent message carries the cell's code."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None, None
    ip = get_ipython()
    kernel = getattr(ip, "kernel", None)
    if kernel is None:
        return None, None
    try:
        code = kernel.get_parent().get("content", {}).get("code")
    except Exception:  # an ipykernel without get_parent
        code = None
    return ip.user_ns.get("__session__"), code


def _calling_function() -> str | None:
    """module.function of the nearest caller inside cortex_nb other than the writers themselves."""
    skip = {"cortex_nb.io.provenance", "cortex_nb.io.tables", "cortex_nb.io.figures", "cortex_nb.io.config"}
    f = sys._getframe(1)
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if mod.startswith("cortex_nb") and mod not in skip:
            return f"{mod}.{getattr(f.f_code, 'co_qualname', f.f_code.co_name)}"
        f = f.f_back
    return None


def writer() -> dict[str, Any]:
    """Who is writing now: notebook and cell source hash (in a kernel), else the command line; and the
    library function."""
    import hashlib

    session_nb, code = _kernel_cell()
    notebook = _stage_notebook() or (str(session_nb) if session_nb else None)
    out: dict[str, Any] = {"function": _calling_function()}
    if code is not None:
        out["notebook"] = notebook
        out["cell_sha256"] = hashlib.sha256(code.encode()).hexdigest()
        out["cell_first_line"] = next((ln for ln in code.splitlines() if ln.strip()), "")[:120]
    else:
        first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
        # python -m package ...: argv[0] is the package's __main__.py
        argv = [f"python -m {first.parent.name}" if first.name == "__main__.py" else first.name, *sys.argv[1:]]
        out["command"] = " ".join(argv)
    return out


# ------------------------------------------------------------------------------------------------
# the session


def _git(*args: str, cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _static_session() -> dict[str, Any]:
    from importlib import metadata

    from .machine import cpu_model

    src = Path(__file__).resolve().parents[2]
    commit = _git("rev-parse", "HEAD", cwd=src)
    # code that makes results: a change to it outside a commit makes the commit an incomplete record
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "cortex_nb", "notebooks", "Makefile",
                 "pyproject.toml", cwd=src) if commit else None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import platform

    return {"commit": commit or "unknown (not a git checkout)", "modified": bool(dirty) if commit else None,
            "python": platform.python_version(), "packages": versions, "cpu": cpu_model()}


def session() -> dict[str, Any]:
    """The session of a write: git commit and modified flag, profile and its hash, package versions, CPU
    model and capability, torch threads."""
    import torch

    return {**_static_session(), **_PROFILE, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def record(path: str | os.PathLike) -> None:
    """Log that ``path`` was just written (its hash, writer, session) in the ``.provenance.jsonl`` beside it.
    Never raises: a provenance log that cannot be written leaves the result alone."""
    path = Path(path)
    try:
        line = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
                "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **writer(), "session": session()}
        with open(path.parent / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
    except Exception as e:  # noqa: BLE001 - the result matters more than its log
        import logging

        logging.getLogger("cortex_nb").warning("provenance: could not log %s: %s", path, e)


# ------------------------------------------------------------------------------------------------
# the manifest


def artifact_paths(profile: str, root: Path) -> list[Path]:
    """Every table, figure and recorded profile of ``profile`` under ``root`` (results/<p>/..., figures/<p>/*),
    caches and executed notebooks left out; sorted, relative to ``root``."""
    out = set()
    res = root / "results" / profile
    for pattern in RESULT_GLOBS:
        for p in res.glob(pattern):
            rel = p.relative_to(res).parts
            if p.is_file() and not (set(rel[:-1]) & set(SKIP_DIRS)):
                out.add(p.relative_to(root))
    for pattern in FIGURE_GLOBS:
        out.update(p.relative_to(root) for p in (root / "figures" / profile).glob(pattern) if p.is_file())
    return sorted(out)


def _log_records(directory: Path) -> dict[str, dict]:
    """{file name: its last record} from ``directory``'s log (unreadable lines skipped)."""
    out: dict[str, dict] = {}
    log = directory / LOG_NAME
    if not log.is_file():
        return out
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            out[rec["file"]] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return out


@functools.lru_cache(maxsize=32)
def _cells(notebook: Path, mtime: float) -> dict[str, tuple[int, str | None]]:
    """{sha256 of a code cell's source: (its index in the notebook, its cell id)}."""
    import hashlib

    nb = json.loads(notebook.read_text(encoding="utf-8"))
    out = {}
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            out.setdefault(hashlib.sha256(src.encode()).hexdigest(), (i, cell.get("id")))
    return out


def _cell_of(notebook: str | None, cell_sha: str | None, roots: tuple[Path, ...]) -> dict[str, Any]:
    """The cell (index, id) of ``notebook`` (relative to the first of ``roots`` that holds it) whose source
    has ``cell_sha``; {} when not found (the notebook changed since, or the code ran outside a notebook)."""
    if not notebook or not cell_sha:
        return {}
    path = next((r / notebook for r in roots if (r / notebook).is_file()), None)
    if path is None:
        return {}
    hit = _cells(path, path.stat().st_mtime).get(cell_sha)
    return {"cell": hit[0], "cell_id": hit[1]} if hit else {}


def build_manifest(profile: str, root: Path, previous: dict | None = None) -> dict:
    """The manifest of ``profile`` under ``root``: {"profile", "built", "files": {path: entry},
    "sessions": {id: session}}. An entry is the logged write that produced the file's current bytes, else
    ``previous``'s entry when its hash still matches, else a bare hash marked ``not recorded``."""
    src_root = Path(__file__).resolve().parents[2]
    prev_files = (previous or {}).get("files", {})
    prev_sessions = (previous or {}).get("sessions", {})
    files, sessions = {}, {}
    logs: dict[Path, dict[str, dict]] = {}
    for rel in artifact_paths(profile, root):
        path = root / rel
        sha = file_sha256(path)
        key = rel.as_posix()
        rec = logs.setdefault(path.parent, _log_records(path.parent)).get(path.name)
        if rec is not None and rec.get("sha256") == sha:
            sess = rec.get("session", {})
            sid = digest(sess)[:10]
            sessions[sid] = sess
            entry = {"sha256": sha, "bytes": path.stat().st_size, "written": rec.get("written"),
                     "session": sid, "function": rec.get("function")}
            if rec.get("command"):
                entry["command"] = rec["command"]
            else:
                entry["notebook"] = rec.get("notebook")
                entry.update(_cell_of(rec.get("notebook"), rec.get("cell_sha256"), (src_root, root)))
                entry["cell_first_line"] = rec.get("cell_first_line")
        elif prev_files.get(key, {}).get("sha256") == sha:
            entry = dict(prev_files[key])
            if entry.get("session") in prev_sessions:
                sessions[entry["session"]] = prev_sessions[entry["session"]]
        else:
            entry = {"sha256": sha, "bytes": path.stat().st_size,
                     "writer": "not recorded (written before provenance logging, or changed since it was written)"}
        files[key] = entry
    return {"profile": profile, "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "built_at_commit": _static_session()["commit"], "files": files, "sessions": sessions}


def manifest_path(profile: str, root: Path) -> Path:
    return root / "results" / profile / MANIFEST_NAME


def load_manifest(profile: str, root: Path) -> dict | None:
    p = manifest_path(profile, root)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def write_manifest(profile: str, root: Path) -> Path:
    """Build ``results/<profile>/MANIFEST.json`` (over the previous one) and write it; returns its path."""
    path = manifest_path(profile, root)
    man = build_manifest(profile, root, load_manifest(profile, root))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, json.dumps(man, indent=1, sort_keys=True) + "\n")
    return path


def describe(entry: dict) -> str:
    """Who wrote a manifest entry, in words: 'notebooks/04_...ipynb cell 12' or the command line."""
    if "notebook" in entry and entry["notebook"]:
        cell = f" cell {entry['cell']}" if "cell" in entry else f" (cell: {entry.get('cell_first_line')!r})"
        return entry["notebook"] + cell
    return entry.get("command") or entry.get("writer") or "unknown"


def check_manifest(profile: str, root: Path) -> tuple[list[str], list[str]]:
    """(problems, notes): every file of the manifest hashed again. A problem names a file missing or whose
    SHA-256 differs from the manifest's; a note names a table or figure the manifest does not list."""
    man = load_manifest(profile, root)
    if man is None:
        return [f"{manifest_path(profile, root).relative_to(root)}: no manifest (run `make all PROFILE={profile}`)"], []
    problems = []
    for key, entry in sorted(man.get("files", {}).items()):
        path = root / key
        if not path.is_file():
            problems.append(f"{key}: listed in the manifest but missing")
            continue
        sha = file_sha256(path)
        if sha != entry.get("sha256"):
            problems.append(f"{key}: SHA-256 {sha[:12]} does not match the manifest's {str(entry.get('sha256'))[:12]} "
                            f"(written by {describe(entry)})")
    listed = set(man.get("files", {}))
    notes = [f"{p.as_posix()}: not in the manifest" for p in artifact_paths(profile, root) if p.as_posix() not in listed]
    return problems, notes
