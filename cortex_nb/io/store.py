"""Token store: the synthetic dataset of CORTEX §4.1.1 as token indices, never embeddings.

A split lives in one directory::

    <dir>/tokens.npy   uint16 (N, m, m)   token ids (an embedding is one codebook lookup away)
    <dir>/labels.npy   int64  (N,)
    <dir>/images.npy   uint8  (N, H, W, 3) decoded images (test split only, optional)
    <dir>/meta.json    K, m, codebook fingerprint, sampler settings, seed, counts, complete

512 bytes a sample on the 16 x 16 ImageNet grid, against 256 KiB for the reference's float32
embedding files. Writes are atomic (temporary file + ``os.replace``; the file gets the mode an
ordinary ``open`` would, 0o666 & ~umask) and generation is sharded: each shard is written whole or
not at all and is deterministic in (seed, split, shard index), so killing a run and rerunning it
loses and duplicates nothing.

A store is the user's data (hours of sampling): a damaged or inconsistent one (unreadable
meta.json or array, arrays of different lengths, a token id outside [0, K), a label outside
[0, n_classes)) is refused with a :class:`TokenStoreError` that names the file and the value and
says how to remake it; nothing deletes it automatically. Cache files (:func:`cached`,
:func:`chunked_array`) are ours: a corrupt one is rebuilt with a warning.

Data parallel (``torchrun``, see :mod:`cortex_nb.engine.distributed`): in :meth:`TokenStore.generate`
and :func:`chunked_array` rank 0 decides what is missing and broadcasts it, rank r makes the
missing shards (chunks) at positions p with p % N == r, a barrier, rank 0 concatenates and writes
the final arrays and meta.json, a barrier, every rank opens the result. Since a shard depends only
on (seed, split, index) the result is the same for every N; a rank that dies leaves its finished
shards, and a rerun with any N (1 included) makes only the missing ones. One process: no barrier,
no group, the same code.
"""
from __future__ import annotations

from ..errors import UserError
from .files import atomic_path, load_json, save_json, save_npy
from .files import progress as progress_bar

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["TokenStore", "TokenStoreError", "shard_seed", "chunked_array"]


log = logging.getLogger("cortex_nb")


class TokenStoreError(UserError, ValueError):
    """A token store that is incomplete, damaged, out of range, or does not match the VQGM."""


_GENERATE_HOW = "the generate stage (notebook 01 or `python -m cortex_nb generate --profile P`)"


def _regenerate_fix(store: Path) -> str:
    """The fix for a damaged store: remake it whole (its parts cannot be trusted one by one)."""
    return f"delete {store} and rerun {_GENERATE_HOW}"


def shard_seed(seed: int, split: str, shard: int) -> int:
    """Deterministic 63-bit seed for one shard of one split (independent of run history)."""
    h = hashlib.sha256(f"{seed}/{split}/{shard}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class TokenStore:
    """One split of the synthetic dataset (see module docstring).

    Use :meth:`open` to read a finished split (validated against K, m and the codebook
    fingerprint) and :meth:`generate` to (re)build one resumably.
    """

    path: Path
    tokens: np.ndarray  # (N, m, m) uint16
    labels: np.ndarray  # (N,) int64
    meta: dict

    @property
    def images(self) -> np.ndarray | None:
        """Decoded uint8 images (N, H, W, 3), memory-mapped, or None when not stored."""
        p = self.path / "images.npy"
        return np.load(p, mmap_mode="r") if p.exists() else None

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def validate_tokens(tokens: np.ndarray, K: int, m: int, where: str = "tokens", fix: str = "") -> None:
        """Raise TokenStoreError unless tokens is (N, m, m) with every id in [0, K). Call it
        before any cast to uint16: there a -1 would silently become 65535."""
        if tokens.ndim != 3 or tokens.shape[1:] != (m, m):
            raise TokenStoreError(f"{where}: grid {tuple(tokens.shape[1:])} but the VQGM's token grid is {m} x {m}",
                                  fix=fix)
        if not tokens.size:
            return
        lo = int(tokens.min()) if tokens.dtype.kind != "u" else 0  # one pass less over a uint16 memmap
        hi = int(tokens.max())
        if lo < 0 or hi >= K:
            raise TokenStoreError(f"{where}: token id {lo if lo < 0 else hi} is outside the codebook (K = {K}); "
                                  "was this store made with another VQGM?", fix=fix)

    @staticmethod
    def validate_labels(labels: np.ndarray, n_classes: int | None, where: str = "labels", fix: str = "") -> None:
        """Raise TokenStoreError unless labels is (N,) with every label in [0, n_classes)
        (only >= 0 when n_classes is None: old stores' meta lacks it)."""
        if labels.ndim != 1:
            raise TokenStoreError(f"{where}: labels have shape {labels.shape}, not (N,)", fix=fix)
        if not labels.size:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (n_classes is not None and hi >= n_classes):
            span = f"[0, {n_classes})" if n_classes is not None else "[0, n_classes)"
            raise TokenStoreError(f"{where}: label {lo if lo < 0 else hi} is outside {span}", fix=fix)

    @classmethod
    def open(cls, path: str | os.PathLike, *, K: int | None = None, m: int | None = None,
             fingerprint: str | None = None) -> "TokenStore":
        """Open a complete split; check K, m and the codebook fingerprint when given, and that the
        files are readable and agree (lengths, id and label ranges) — a refusal says which file."""
        path = Path(path)
        meta = _read_meta(path)
        if meta is None:
            raise TokenStoreError(f"no token store at {path} (missing meta.json)", fix=f"run {_GENERATE_HOW}")
        if not meta.get("complete"):
            raise TokenStoreError(f"token store {path} is incomplete", fix=f"rerun {_GENERATE_HOW} to finish it")
        fix = _regenerate_fix(path)
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise TokenStoreError(
                f"token store {path} was made with codebook {meta.get('fingerprint')} but the loaded VQGM's is "
                f"{fingerprint}", fix=f"load the VQGM it was made with, or {fix}")
        K = K if K is not None else _meta_int(meta, "K", path)
        m = m if m is not None else _meta_int(meta, "m", path)
        tokens = _load_npy(path / "tokens.npy", fix, mmap=True)  # (N, m, m) uint16
        labels = _load_npy(path / "labels.npy", fix)  # (N,) int64
        cls.validate_tokens(tokens, K, m, str(path / "tokens.npy"), fix)
        _check_rows(path / "labels.npy", len(labels), len(tokens), fix)
        if (path / "images.npy").exists():  # header only: catches truncation and a wrong N
            _check_rows(path / "images.npy", len(_load_npy(path / "images.npy", fix, mmap=True)), len(tokens), fix)
        if isinstance(meta.get("n"), int) and meta["n"] != len(tokens):
            raise TokenStoreError(f"{path / 'tokens.npy'} holds {len(tokens)} rows but {path / 'meta.json'} "
                                  f"says n = {meta['n']}", fix=fix)
        n_classes = meta.get("n_classes")
        cls.validate_labels(labels, n_classes if isinstance(n_classes, int) else None, str(path / "labels.npy"), fix)
        return cls(path, tokens, labels, meta)

    @classmethod
    def generate(cls, path: str | os.PathLike, labels: np.ndarray, make_shard: Callable[[np.ndarray, int], dict],
                 *, meta: dict, shard_size: int, seed: int, split: str, progress: bool = True) -> "TokenStore":
        """Build a split shard by shard, resumably.

        ``labels`` (N,) are the labels of the whole split, in order. ``make_shard(labels_chunk,
        shard_seed) -> {"tokens": (n,m,m) int, optionally "images": (n,H,W,3) uint8}`` makes one
        shard. Finished shards in ``path/shards/`` are reused; when all exist they are concatenated
        into the final arrays and meta.json is written with ``complete: true`` (last, atomically).
        If a complete store with the same ``meta`` already exists it is returned untouched.
        Bad arguments (no labels, shard_size < 1, labels outside [0, meta["n_classes"])) are
        refused before anything is created; a corrupt meta.json or shard is refused, not deleted.
        """
        from ..engine import distributed

        path = Path(path)
        labels = _check_generate_args(labels, shard_size, meta, split)  # (N,) int64; every rank, before any I/O
        meta = {**meta, "n": int(len(labels)), "shard_size": int(shard_size), "seed": int(seed), "split": split}
        shard_dir = path / "shards"
        n_shards = (len(labels) + shard_size - 1) // shard_size
        todo: list[int] | None = None  # None: a complete store with these settings exists
        if distributed.is_main():  # one rank inspects and prepares; the others follow its decision
            old = _read_meta(path)
            same = old is not None and {k: old.get(k) for k in meta} == meta
            if not (same and old.get("complete")):
                if old is not None and not same:  # stale shards from other settings must not be mixed in
                    _clear(path)
                shard_dir.mkdir(parents=True, exist_ok=True)
                save_json(path / "meta.json", {**meta, "complete": False})
                todo = [i for i in range(n_shards) if not (shard_dir / f"{i:05d}.npz").exists()]
        todo = distributed.broadcast_object(todo)
        if todo is None:
            return cls.open(path)
        if distributed.is_main() and len(todo) < n_shards:
            log.info("generate %s: making %d of %d shards (%d already done)", split, len(todo), n_shards,
                     n_shards - len(todo))
        mine = distributed.owned(todo)  # data parallel: this rank's share of the missing shards
        for i in progress_bar(mine, desc=f"generate {split}", enabled=progress and distributed.is_main(),
                      unit="shard"):
            chunk = labels[i * shard_size:(i + 1) * shard_size]
            arrays = _checked_shard(make_shard(chunk, shard_seed(seed, split, i)), chunk, meta, f"shard {i} of {path}")
            with atomic_path(shard_dir / f"{i:05d}.npz", size=sum(np.asarray(a).nbytes for a in arrays.values())) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            distributed.fault_point("shard")
        distributed.barrier()  # every shard exists
        if distributed.is_main():
            parts = [_read_shard(shard_dir / f"{i:05d}.npz") for i in range(n_shards)]
            tokens = np.concatenate([p["tokens"] for p in parts]).astype(np.uint16)
            got_labels = np.concatenate([p["labels"] for p in parts])
            if not np.array_equal(got_labels, labels):
                raise TokenStoreError(f"shards in {shard_dir} do not match the requested labels",
                                      fix=_regenerate_fix(path))
            save_npy(path / "tokens.npy", tokens)
            save_npy(path / "labels.npy", labels)
            if all("images" in p for p in parts):
                save_npy(path / "images.npy", np.concatenate([p["images"] for p in parts]))
            save_json(path / "meta.json", {**meta, "complete": True})
            for i in range(n_shards):
                (shard_dir / f"{i:05d}.npz").unlink()
            _remove_dir(shard_dir)
        distributed.barrier()  # the final arrays exist
        return cls.open(path)


def _read_meta(store: Path) -> dict | None:
    """A store's meta.json as a dict; None when absent; TokenStoreError when unreadable."""
    meta_path = store / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = load_json(meta_path)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise TokenStoreError(f"{meta_path} is not valid JSON ({e})", fix=_regenerate_fix(store)) from e
    if not isinstance(meta, dict):
        raise TokenStoreError(f"{meta_path} holds a JSON {type(meta).__name__}, not a token store's meta object",
                              fix=_regenerate_fix(store))
    return meta


def _meta_int(meta: dict, key: str, store: Path) -> int:
    """meta[key] as an int, or a TokenStoreError naming meta.json."""
    if not isinstance(meta.get(key), int):
        raise TokenStoreError(f"{store / 'meta.json'}: {key!r} is {meta.get(key)!r}, not an integer",
                              fix=_regenerate_fix(store))
    return meta[key]


def _load_npy(f: Path, fix: str, *, mmap: bool = False) -> np.ndarray:
    """np.load, with a missing, truncated or corrupt file refused by name (np.load's own errors,
    e.g. 'mmap length is greater than file size', do not say which file)."""
    try:
        return np.load(f, mmap_mode="r" if mmap else None)
    except FileNotFoundError as e:
        raise TokenStoreError(f"{f} is missing although meta.json says the store is complete", fix=fix) from e
    # numpy's header parser fails in many ways on a damaged header: ValueError, SyntaxError, tokenize.TokenError,
    # KeyError, TypeError ... (found by tests/test_properties.py); every one means the file is damaged
    except Exception as e:  # noqa: BLE001
        raise TokenStoreError(f"{f} is unreadable ({type(e).__name__}: {e}): truncated or corrupt", fix=fix) from e


def _check_rows(f: Path, rows: int, n_tokens: int, fix: str) -> None:
    if rows != n_tokens:
        raise TokenStoreError(f"{f} holds {rows} rows but tokens.npy holds {n_tokens}", fix=fix)


def _check_generate_args(labels: Any, shard_size: Any, meta: dict, split: str) -> np.ndarray:
    """Refuse what cannot make a store (before any directory exists); return labels as (N,) int64."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise TokenStoreError(f"generate {split}: shard_size must be a positive integer, got {shard_size!r}",
                              fix="set data.shard_size to a positive integer (e.g. --set data.shard_size=64)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not len(labels):
        raise TokenStoreError(f"generate {split}: no labels (labels have shape {labels.shape}), nothing to generate",
                              fix=f"set world.n_classes and data.n_{split} (samples per class) to positive integers")
    labels = labels.astype(np.int64)
    n_classes = meta.get("n_classes")
    TokenStore.validate_labels(labels, n_classes if isinstance(n_classes, int) else None, f"generate {split}",
                               fix="pass labels that are class indices in [0, meta['n_classes'])")
    return labels


def _checked_shard(out: dict, chunk: np.ndarray, meta: dict, where: str) -> dict[str, np.ndarray]:
    """make_shard's output as the arrays to save, after checking ids (before the uint16 cast) and
    row counts: a bad shard is never written."""
    fix = ("make_shard must return one (m, m) grid of ids in [0, K) per label, with K and m as in meta; "
           "nothing was written for this shard")
    toks = np.asarray(out["tokens"])
    TokenStore.validate_tokens(toks, meta["K"], meta["m"], where, fix)
    arrays = {"tokens": toks.astype(np.uint16), "labels": chunk}
    if "images" in out:
        arrays["images"] = np.asarray(out["images"], dtype=np.uint8)
    for name, a in arrays.items():
        if len(a) != len(chunk):
            raise TokenStoreError(f"{where}: make_shard returned {len(a)} {name} for {len(chunk)} labels", fix=fix)
    return arrays


def _read_shard(f: Path) -> dict[str, np.ndarray]:
    """All arrays of one finished shard (file closed after), or a TokenStoreError naming it: a
    truncated or corrupt shard is the user's to delete (only that shard is then remade)."""
    try:
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        if "tokens" not in arrays or "labels" not in arrays:
            raise ValueError(f"it holds {sorted(arrays)}, not tokens and labels")
    except Exception as e:  # noqa: BLE001 - as _load_npy: a damaged npz fails in zipfile's and numpy's parsers alike
        raise TokenStoreError(f"shard file {f} is unreadable ({type(e).__name__}: {e}): truncated or corrupt",
                              fix=f"delete {f} and rerun {_GENERATE_HOW}; only that shard is remade") from e
    return arrays


def _remove_dir(d: Path) -> None:
    """Remove a finished shard directory, with the temporary files of writes that a killed
    process (SIGTERM/SIGKILL: no cleanup) left behind."""
    for f in d.glob(".*.tmp"):
        f.unlink(missing_ok=True)
    d.rmdir()


def _clear(path: Path) -> None:
    for name in ("tokens.npy", "labels.npy", "images.npy", "meta.json"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    shard_dir = path / "shards"
    if shard_dir.exists():
        for f in shard_dir.iterdir():
            f.unlink()


def _cached_rows(path: Path) -> int | None:
    """Rows of the finished array at ``path``; None when absent or unreadable (logged: it is a
    cache, recomputed from its chunks)."""
    if not path.exists():
        return None
    try:
        return len(np.load(path, mmap_mode="r"))
    except (ValueError, OSError, EOFError, TypeError) as e:  # TypeError: len() of a 0-d array
        log.warning("cached array %s is unreadable (%s): recomputing it", path, e)
        return None


def chunked_array(path: str | os.PathLike, n: int, chunk: int, compute: Callable[[int, int], np.ndarray],
                  *, desc: str = "compute", progress: bool = True) -> np.ndarray:
    """An (n, ...) array computed ``chunk`` rows at a time by ``compute(start, stop)``, resumably.

    Finished chunks are kept in ``<path>.parts/``; when all exist they are concatenated into
    ``path`` (.npy, atomic) and removed. An interrupted computation loses at most one chunk.
    Returns the array (memory-mapped from ``path``). Under torchrun every rank calls this with
    the same arguments and computes its share of the missing chunks (module docstring); with
    chunk-deterministic ``compute`` the result does not depend on the number of ranks.
    """
    from ..engine import distributed

    path = Path(path)
    parts = path.with_name(path.name + ".parts")
    starts = list(range(0, n, chunk))
    todo: list[int] | None = None  # None: the finished array exists
    if distributed.is_main():  # one rank inspects and prepares; the others follow its decision
        if _cached_rows(path) != n:
            path.unlink(missing_ok=True)  # absent, corrupt, or made for another n
            parts.mkdir(parents=True, exist_ok=True)
            todo = [s for s in starts if not (parts / f"{s:09d}.npy").exists()]
    todo = distributed.broadcast_object(todo)
    if todo is None:
        return np.load(path, mmap_mode="r")
    for s in progress_bar(distributed.owned(todo), desc=desc, enabled=progress and distributed.is_main(),
                  unit="chunk"):
        save_npy(parts / f"{s:09d}.npy", np.asarray(compute(s, min(s + chunk, n))))
        distributed.fault_point("shard")
    distributed.barrier()  # every chunk exists
    if distributed.is_main():
        arr = np.concatenate([np.load(parts / f"{s:09d}.npy") for s in starts]) if starts else np.zeros((0,))
        save_npy(path, arr)
        for s in starts:
            (parts / f"{s:09d}.npy").unlink()
        _remove_dir(parts)
    distributed.barrier()  # the final array exists
    return np.load(path, mmap_mode="r")
