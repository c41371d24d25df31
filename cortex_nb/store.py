"""Token store: the synthetic dataset of CORTEX §4.1.1 as token indices, never embeddings.

A split lives in one directory::

    <dir>/tokens.npy   uint16 (N, m, m)   token ids (an embedding is one codebook lookup away)
    <dir>/labels.npy   int64  (N,)
    <dir>/images.npy   uint8  (N, H, W, 3) decoded images (test split only, optional)
    <dir>/meta.json    K, m, codebook fingerprint, sampler settings, seed, counts, complete

512 bytes a sample on the 16 x 16 ImageNet grid, against 256 KiB for the reference's float32
embedding files. Writes are atomic (temporary file + ``os.replace``) and generation is sharded:
each shard is written whole or not at all and is deterministic in (seed, split, shard index),
so killing a run and rerunning it loses and duplicates nothing.

Data parallel (``torchrun``, see :mod:`cortex_nb.distributed`): in :meth:`TokenStore.generate`
and :func:`chunked_array` rank 0 decides what is missing and broadcasts it, rank r makes the
missing shards (chunks) at positions p with p % N == r, a barrier, rank 0 concatenates and writes
the final arrays and meta.json, a barrier, every rank opens the result. Since a shard depends only
on (seed, split, index) the result is the same for every N; a rank that dies leaves its finished
shards, and a rerun with any N (1 included) makes only the missing ones. One process: no barrier,
no group, the same code.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = [
    "TokenStore", "TokenStoreError", "atomic_path", "save_npy", "save_json", "load_json",
    "cached", "shard_seed", "chunked_array",
]


log = logging.getLogger("cortex_nb")


class TokenStoreError(ValueError):
    """A token store that is incomplete, out of range, or does not match the VQGM."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place atomically.
    On error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def cached(path: str | os.PathLike, build: Callable[[], Any], *, key: str | None = None) -> Any:
    """Return the JSON stored at ``path`` if it exists (and its ``_key`` equals ``key``),
    else call ``build()``, store its JSON-able result atomically and return it."""
    path = Path(path)
    if path.exists():
        obj = load_json(path)
        if key is None or (isinstance(obj, dict) and obj.get("_key") == key):
            return obj
    obj = build()
    if key is not None:
        obj = {**obj, "_key": key}
    save_json(path, obj)
    return obj


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
    def validate_tokens(tokens: np.ndarray, K: int, m: int, where: str = "tokens") -> None:
        """Raise TokenStoreError unless tokens is (N, m, m) with every id in [0, K)."""
        if tokens.ndim != 3 or tokens.shape[1:] != (m, m):
            raise TokenStoreError(f"{where}: grid {tuple(tokens.shape[1:])} but the VQGM's token grid is {m} x {m}")
        if tokens.size and int(tokens.max()) >= K:
            bad = int(tokens.max())
            raise TokenStoreError(f"{where}: token id {bad} is outside the codebook (K = {K}); "
                                  "was this store made with another VQGM?")

    @classmethod
    def open(cls, path: str | os.PathLike, *, K: int | None = None, m: int | None = None,
             fingerprint: str | None = None) -> "TokenStore":
        """Open a complete split; check K, m and the codebook fingerprint when given."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise TokenStoreError(f"no token store at {path} (missing meta.json): run the generate stage "
                                  "(notebook 01 or `python -m cortex_nb generate --profile P`)")
        meta = load_json(meta_path)
        if not meta.get("complete"):
            raise TokenStoreError(f"token store {path} is incomplete: rerun the generate stage to finish it")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise TokenStoreError(
                f"token store {path} was made with codebook {meta.get('fingerprint')} but the loaded VQGM's is "
                f"{fingerprint}: delete the store or load the VQGM it was made with")
        tokens = np.load(path / "tokens.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        cls.validate_tokens(tokens, K if K is not None else meta["K"], m if m is not None else meta["m"], str(path / "tokens.npy"))
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
        """
        from tqdm.auto import tqdm

        from . import distributed

        path = Path(path)
        labels = np.asarray(labels, dtype=np.int64)
        meta = {**meta, "n": int(len(labels)), "shard_size": int(shard_size), "seed": int(seed), "split": split}
        shard_dir = path / "shards"
        n_shards = (len(labels) + shard_size - 1) // shard_size
        todo: list[int] | None = None  # None: a complete store with these settings exists
        if distributed.is_main():  # one rank inspects and prepares; the others follow its decision
            old = load_json(path / "meta.json") if (path / "meta.json").exists() else None
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
        for i in tqdm(mine, desc=f"generate {split}", disable=not progress or not distributed.is_main() or None,
                      unit="shard"):
            chunk = labels[i * shard_size:(i + 1) * shard_size]
            out = make_shard(chunk, shard_seed(seed, split, i))
            toks = np.asarray(out["tokens"])
            cls.validate_tokens(toks, meta["K"], meta["m"], f"shard {i}")
            arrays = {"tokens": toks.astype(np.uint16), "labels": chunk}
            if "images" in out:
                arrays["images"] = np.asarray(out["images"], dtype=np.uint8)
            with atomic_path(shard_dir / f"{i:05d}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            distributed.fault_point("shard")
        distributed.barrier()  # every shard exists
        if distributed.is_main():
            parts = [np.load(shard_dir / f"{i:05d}.npz") for i in range(n_shards)]
            tokens = np.concatenate([p["tokens"] for p in parts]).astype(np.uint16)
            got_labels = np.concatenate([p["labels"] for p in parts])
            if not np.array_equal(got_labels, labels):
                raise TokenStoreError(f"shards in {shard_dir} do not match the requested labels; delete {path} and rerun")
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


def chunked_array(path: str | os.PathLike, n: int, chunk: int, compute: Callable[[int, int], np.ndarray],
                  *, desc: str = "compute", progress: bool = True) -> np.ndarray:
    """An (n, ...) array computed ``chunk`` rows at a time by ``compute(start, stop)``, resumably.

    Finished chunks are kept in ``<path>.parts/``; when all exist they are concatenated into
    ``path`` (.npy, atomic) and removed. An interrupted computation loses at most one chunk.
    Returns the array (memory-mapped from ``path``). Under torchrun every rank calls this with
    the same arguments and computes its share of the missing chunks (module docstring); with
    chunk-deterministic ``compute`` the result does not depend on the number of ranks.
    """
    from tqdm.auto import tqdm

    from . import distributed

    path = Path(path)
    parts = path.with_name(path.name + ".parts")
    starts = list(range(0, n, chunk))
    todo: list[int] | None = None  # None: the finished array exists
    if distributed.is_main():  # one rank inspects and prepares; the others follow its decision
        if not (path.exists() and len(np.load(path, mmap_mode="r")) == n):
            path.unlink(missing_ok=True)  # absent, or made for another n
            parts.mkdir(parents=True, exist_ok=True)
            todo = [s for s in starts if not (parts / f"{s:09d}.npy").exists()]
    todo = distributed.broadcast_object(todo)
    if todo is None:
        return np.load(path, mmap_mode="r")
    for s in tqdm(distributed.owned(todo), desc=desc, disable=not progress or not distributed.is_main() or None,
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
