"""Plumbing, written once: atomic writes, JSON files and caches, hashing, checksum sidecars, progress.

Every file cortex-nb writes goes through :func:`atomic_path` (a temporary file beside the target,
moved into place with ``os.replace``; the target gets ``0o666 & ~umask``), so a killed run never
leaves half a file. Caches are JSON stamped with a ``_key`` derived from their inputs
(:func:`cached`, :func:`digest`); a corrupt cache counts as missing, while user data read with
:func:`load_json` raises. Model files carry a ``<file>.sha256`` sidecar (:func:`save_with_checksum`)
and are checked before ``torch.load`` reads them (:func:`verify_file`: the sidecar, else the zip
CRCs). :func:`progress` is the one progress bar, switched by ``CORTEX_PROGRESS``.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import CheckpointError, DiskFullError

__all__ = [
    "atomic_path", "disk_full", "device_full", "NEARLY_FULL", "save_npy", "save_json", "load_json", "load_cache_json",
    "cached", "digest", "weights_key",
    "checksum_path", "file_sha256", "write_checksum", "rebuild_fix", "verify_file", "save_with_checksum",
    "DAMAGED_FIX", "save_text", "save_torch", "progress",
]

log = logging.getLogger("cortex_nb")


# --------------------------------------------------------------------------------------------
# atomic writes and JSON


def _current_umask() -> int:
    """The process umask. Python can read it only by setting it, and it is process-global, so
    take it from /proc/self/status (Linux >= 4.7) when there; else set and restore it at once,
    setting the strict 0o077 meanwhile so a file another thread makes in that window is private."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def disk_full(path: Path, err: OSError, written: int | None = None, need: int | None = None) -> DiskFullError:
    """The project's error for a write that found its device full: the file, how much it needed (``need``, when the
    writer knows its size; else at least the ``written`` bytes it got out), what is free there now, and what to do."""
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {_mib(shutil.disk_usage(_existing(path.parent)).free)} free there now"
    size = (f"needs about {_mib(need)}" if need else
            f"needs more than the {_mib(written)} it wrote" if written else "could not be written")
    return DiskFullError(f"no space left on the device holding {path.parent} ({err.strerror}): {path.name} {size}{free}",
                         "free space on that device (or set CORTEX_RESULTS to a directory on a larger one) and run the "
                         "same command again: finished stages, shards and caches are kept, the file was not written")


def _existing(p: Path) -> Path:
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place atomically.
    On error the temporary file is removed and ``path`` is untouched. The final file gets
    0o666 & ~umask, as with ``open``; mkstemp's 0600 would hide outputs from group/others.
    A full device (ENOSPC, EDQUOT) becomes :class:`~cortex_nb.errors.DiskFullError` naming ``path``, the space it
    needs (``size``: the bytes the writer is about to write, when it knows them) and what is free."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # after the write: a writer may have recreated tmp
        os.replace(tmp, path)
    except BaseException as e:
        written = free = None
        if tmp is not None:
            with contextlib.suppress(OSError):
                written = os.path.getsize(tmp)
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(path.parent).free
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        full = None if isinstance(e, DiskFullError) else device_full(e, free)
        if full is not None:
            raise disk_full(path, full, written, size) from e
        raise


#: below this many free bytes a failed write is taken for a full device even when the writer lost the errno
#: (numpy's ``tofile`` says "N requested and M written", torch's zip writer "unexpected pos")
NEARLY_FULL = 1 << 20


def device_full(e: BaseException, free: int | None) -> OSError | None:
    """The ENOSPC / EDQUOT error ``e`` is or wraps (a library may re-raise it as its own type); for an OSError or
    RuntimeError without that errno, one standing for it when the device had under :data:`NEARLY_FULL` bytes free
    as the write failed; else None."""
    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return x
        x = x.__cause__ or x.__context__
    if isinstance(e, (OSError, RuntimeError)) and free is not None and free < NEARLY_FULL:
        return OSError(errno.ENOSPC, f"{_mib(free)} free as the write failed: {e}")
    return None


def save_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (tables, JSON, sidecars, records)."""
    data = text.encode()
    with atomic_path(path, size=len(data)) as tmp:
        Path(tmp).write_bytes(data)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically."""
    with atomic_path(path, size=np.asarray(array).nbytes) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    save_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")

_MISSING = object()


def _read_cache(path: Path, default: Any) -> Any:
    """The JSON at ``path``; ``default`` when absent or corrupt (a cache is ours to rebuild)."""
    if not path.exists():
        return default
    try:
        return load_json(path)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a torn or damaged file
        log.warning("cache file %s is corrupt (%s): rebuilding it", path, e)
        return default


def load_cache_json(path: str | os.PathLike) -> Any:
    """The JSON at ``path``, or None when it is missing or corrupt (logged as a warning).
    For cache files and stamps, which can be rebuilt; user data goes through :func:`load_json`,
    which raises."""
    return _read_cache(Path(path), None)


def cached(path: str | os.PathLike, build: Callable[[], Any], *, key: str | None = None) -> Any:
    """Return the JSON stored at ``path`` if it exists (and its ``_key`` equals ``key``),
    else call ``build()``, store its JSON-able result atomically and return it. A corrupt
    file counts as missing."""
    path = Path(path)
    obj = _read_cache(path, _MISSING)
    if obj is not _MISSING and (key is None or (isinstance(obj, dict) and obj.get("_key") == key)):
        return obj
    obj = build()
    if key is not None:
        obj = {**obj, "_key": key}
    save_json(path, obj)
    return obj


# --------------------------------------------------------------------------------------------
# hashing


def digest(obj) -> str:
    """16 hex chars of sha256 of ``obj`` as canonical JSON (sorted keys, tuples as lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# file integrity: checksum sidecars, and the zip CRCs that torch.load does not check


_CHUNK = 4 << 20  # 4 MiB reads: hashing or CRC-checking a 1 GB file takes ~1-2 s


_HEX64 = re.compile(r"[0-9a-f]{64}")


#: what to do about a damaged file nobody recorded a checksum for
DAMAGED_FIX = "the file is damaged (truncated or altered): re-download / delete it and rerun"



#: module -> (version counters of its state tensors, digest): see weights_key
_WEIGHT_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_key(module) -> str:
    """Digest of a module's class and every tensor of its state_dict (names, dtypes, shapes, bytes):
    what a cache computed with the module depends on, whoever trained or loaded it.

    Computed once per module state: the digest is remembered with the tensors' version counters
    (torch bumps them on every in-place change, ``load_state_dict`` and optimiser steps included),
    so hashing the same frozen extractor, evaluators or VQGM again for every cache key it enters
    (a 1.4 B-parameter VQGM takes seconds) costs a dict look-up."""
    import torch

    state = module.state_dict()
    versions = tuple(t._version for t in state.values())
    hit = _WEIGHT_KEYS.get(module)
    if hit is not None and hit[0] == versions:
        return hit[1]
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)  # (numel,), any dtype
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())  # the buffer itself: no copy of a large tensor
    key = h.hexdigest()[:16]
    _WEIGHT_KEYS[module] = (versions, key)
    return key

def checksum_path(path: str | os.PathLike) -> Path:
    """The SHA-256 sidecar of ``path``: ``<file>.sha256``, the hex digest on one line."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: str | os.PathLike, digest: str | None = None) -> Path:
    """Write ``path``'s SHA-256 sidecar atomically (computing the digest unless given)."""
    side = checksum_path(path)
    text = (digest or file_sha256(path)) + "\n"
    save_text(side, text)
    return side


def rebuild_fix(path: str | os.PathLike, how: str = "the stage that builds it") -> str:
    """The fix for a file that no longer matches its sidecar: remake both."""
    return f"delete {path} (and {checksum_path(path)}) and rerun {how}"


def _recorded_sha256(path: Path, fix: str) -> str:
    """The digest in ``path``'s sidecar (its first word, so ``sha256sum`` output works too)."""
    side = checksum_path(path)
    try:
        words = side.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checksum file {side} of {path}: {exc}",
                              fix=fix) from exc
    word = words[0].lower() if words else ""
    if not _HEX64.fullmatch(word):
        raise CheckpointError(
            f"checksum file {side} of {path} holds no SHA-256 hex digest (starts with "
            f"{word[:40]!r})", fix=fix)
    return word


def _check_sidecar(path: Path, fix: str) -> bool:
    """Compare ``path`` with its sidecar; False if there is none, raise on a mismatch."""
    if not checksum_path(path).is_file():
        return False
    want = _recorded_sha256(path, fix)
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(
            f"{path} does not match its checksum file {checksum_path(path)}: its SHA-256 is "
            f"{got}, but {want} was recorded when it was saved (the file was altered or "
            f"damaged since)", fix=fix)
    return True


def _check_zip_crcs(path: Path, damaged_fix: str) -> bool:
    """Read every member of a zip-format torch file so that :mod:`zipfile` checks its CRC-32.

    torch.load does not check them: a file with flipped bytes loads with altered weights.
    Legacy (pre-1.6, non-zip) torch files carry no CRCs and are skipped (False), as is anything
    that is not a zip at all (truncated, empty): torch.load then fails and names the file.
    """
    if not zipfile.is_zipfile(path):
        return False
    where = "the directory of its zip archive"
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                where = f"member {info.filename!r} of its zip archive"
                with zf.open(info) as fh:
                    while fh.read(_CHUNK):
                        pass
    # a damaged header can fail in zipfile's own parsing too: a file name that is not UTF-8 any more (ValueError),
    # a short structure (struct.error), a read error (OSError)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, struct.error, OSError) as exc:
        raise CheckpointError(
            f"{path} is damaged: {where} fails the zip CRC-32 check "
            f"({type(exc).__name__}: {exc})", fix=damaged_fix) from exc
    return True


def verify_file(
    path: str | os.PathLike, *, damaged_fix: str = DAMAGED_FIX, mismatch_fix: str | None = None,
) -> str:
    """Check a file before torch.load reads it; return what was checked.

    * a ``<file>.sha256`` sidecar exists (we write one beside every file we save): the file's
      SHA-256 must equal it ("sha256"); a mismatch names both digests, with ``mismatch_fix``
      (default :func:`rebuild_fix`: delete the file and its sidecar, rerun the stage that builds
      it). A matching digest makes the CRC check redundant.
    * else, a zip-format torch file: every member's CRC-32 ("crc"); a bad one names the member,
      with ``damaged_fix``.
    * else (legacy non-zip torch file, or not a zip at all): nothing ("none").

    Raises:
        CheckpointError: as above.
    """
    path = Path(path)
    if _check_sidecar(path, mismatch_fix or rebuild_fix(path)):
        return "sha256"
    return "crc" if _check_zip_crcs(path, damaged_fix) else "none"


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: a training checkpoint, rewritten often (no sidecar)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_with_checksum(obj: Any, path: str | os.PathLike) -> str:
    """torch.save ``obj`` to ``path`` atomically (fsynced) and write its ``.sha256`` sidecar.

    A failed save leaves ``path`` and its sidecar as they were. Returns the hex digest.
    """
    path = Path(path)
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = file_sha256(tmp)
        checksum_path(path).unlink(missing_ok=True)  # stale from here until written below
    write_checksum(path, digest)
    return digest


# --------------------------------------------------------------------------------------------
# progress


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kw: Any):
    """The one progress bar: ``tqdm.auto`` (a widget in Jupyter, text elsewhere), or nothing when
    ``enabled`` is false. ``CORTEX_PROGRESS`` overrides for the whole process: ``text`` forces the
    plain text bar (headless runs, papermill logs), ``off`` disables every bar."""
    mode = os.environ.get("CORTEX_PROGRESS", "").lower()
    if mode == "off":
        enabled = False
    if mode == "text":
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, disable=not enabled or None, **kw)
