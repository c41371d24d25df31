import json
import os

import numpy as np
import pytest

from cortex_nb.io.files import atomic_path, cached, save_npy
from cortex_nb.io.store import TokenStore, TokenStoreError, shard_seed

META = {"K": 50, "m": 4, "fingerprint": "abc"}


def make_shard_fn(calls):
    def make_shard(labels, seed):
        calls.append(seed)
        rng = np.random.default_rng(seed)
        return {"tokens": rng.integers(0, META["K"], size=(len(labels), 4, 4)),
                "images": np.full((len(labels), 8, 8, 3), seed % 251, np.uint8)}
    return make_shard


def test_generate_stores_uint16_tokens_labels_and_images(tmp_path):
    labels = np.repeat(np.arange(3), 5)
    calls = []
    st = TokenStore.generate(tmp_path / "s", labels, make_shard_fn(calls), meta=META, shard_size=4, seed=1, split="train",
                             progress=False)
    assert st.tokens.dtype == np.uint16 and st.tokens.shape == (15, 4, 4)
    np.testing.assert_array_equal(st.labels, labels)
    assert st.images.shape == (15, 8, 8, 3)
    assert len(calls) == 4  # ceil(15 / 4) shards
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["complete"] is True
    assert not (tmp_path / "s" / "shards").exists()
    # independent computation: shard i holds exactly what make_shard(seed_i) returns
    expect = np.concatenate([np.random.default_rng(shard_seed(1, "train", i)).integers(0, 50, size=(n, 4, 4))
                             for i, n in enumerate([4, 4, 4, 3])])
    np.testing.assert_array_equal(st.tokens, expect)


def test_interrupted_generation_resumes_without_loss_or_duplicates(tmp_path):
    labels = np.repeat(np.arange(2), 6)
    full = TokenStore.generate(tmp_path / "full", labels, make_shard_fn([]), meta=META, shard_size=5, seed=3,
                               split="val", progress=False)
    calls = []
    boom = make_shard_fn(calls)

    def crashing(lab, seed):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while making the third shard
        return boom(lab, seed)

    with pytest.raises(KeyboardInterrupt):
        TokenStore.generate(tmp_path / "r", labels, crashing, meta=META, shard_size=5, seed=3, split="val",
                            progress=False)
    assert not (tmp_path / "r" / "tokens.npy").exists()
    with pytest.raises(TokenStoreError, match="incomplete"):
        TokenStore.open(tmp_path / "r")
    calls2 = []
    st = TokenStore.generate(tmp_path / "r", labels, make_shard_fn(calls2), meta=META, shard_size=5, seed=3,
                             split="val", progress=False)
    assert len(calls2) == 1  # only the missing shard was made
    np.testing.assert_array_equal(st.tokens, full.tokens)
    # a finished store is returned as is
    calls3 = []
    TokenStore.generate(tmp_path / "r", labels, make_shard_fn(calls3), meta=META, shard_size=5, seed=3, split="val",
                        progress=False)
    assert calls3 == []


def test_changed_settings_rebuild_instead_of_mixing(tmp_path):
    labels = np.arange(4)
    TokenStore.generate(tmp_path / "s", labels, make_shard_fn([]), meta=META, shard_size=2, seed=0, split="t",
                        progress=False)
    calls = []
    TokenStore.generate(tmp_path / "s", labels, make_shard_fn(calls), meta={**META, "fingerprint": "new"},
                        shard_size=2, seed=0, split="t", progress=False)
    assert len(calls) == 2


def test_open_checks_range_grid_and_fingerprint(tmp_path):
    st = TokenStore.generate(tmp_path / "s", np.arange(3), make_shard_fn([]), meta=META, shard_size=8, seed=0,
                             split="t", progress=False)
    TokenStore.open(st.path, K=50, m=4, fingerprint="abc")
    with pytest.raises(TokenStoreError, match="grid .*8 x 8"):
        TokenStore.open(st.path, m=8)
    with pytest.raises(TokenStoreError, match="outside the codebook \\(K = 10\\)"):
        TokenStore.open(st.path, K=10)
    with pytest.raises(TokenStoreError, match="codebook abc .* other"):
        TokenStore.open(st.path, fingerprint="other")
    with pytest.raises(TokenStoreError, match="missing meta.json"):
        TokenStore.open(tmp_path / "nothing")


def test_shard_with_out_of_range_ids_is_refused_and_not_written(tmp_path):
    def bad(labels, seed):
        return {"tokens": np.full((len(labels), 4, 4), 50)}
    with pytest.raises(TokenStoreError, match="token id 50"):
        TokenStore.generate(tmp_path / "s", np.arange(3), bad, meta=META, shard_size=8, seed=0, split="t",
                            progress=False)
    assert list((tmp_path / "s" / "shards").iterdir()) == []


def test_atomic_path_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "a.npy"
    save_npy(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_device_is_one_error_naming_the_file_and_the_space_it_needs(tmp_path):
    """The kernel's own ENOSPC (a write to /dev/full) inside an atomic write: the project's DiskFullError (a
    UserError and still an OSError) naming the file, the size it needed and what is free; no temporary file left,
    the previous version of the target untouched."""
    import re
    import shutil

    from cortex_nb.errors import DiskFullError, UserError

    target = tmp_path / "a.npy"
    save_npy(target, np.arange(3))
    with pytest.raises(DiskFullError) as info:
        with atomic_path(target, size=3 << 20) as tmp:
            tmp.write_bytes(b"x" * 1000)
            with open("/dev/full", "wb") as full:
                full.write(b"y")
                full.flush()
    e = info.value
    assert isinstance(e, UserError) and isinstance(e, OSError)
    assert f"no space left on the device holding {tmp_path}" in e.message and "a.npy needs about 3.0 MiB" in e.message
    said = float(re.search(r"; ([0-9.]+) MiB free there now$", e.message).group(1))
    assert abs(said - shutil.disk_usage(tmp_path).free / 2**20) < 256     # other processes write to the disk meanwhile
    assert "run the same command again" in e.fix
    assert len(e.one_line().splitlines()) == 2                        # message and fix, one line each
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    """A writer's own RuntimeError on a device with room stays what it was (and an ENOSPC wrapped by a library in
    its own error type is still found through __cause__)."""
    from cortex_nb.errors import DiskFullError

    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("a bug")
    with pytest.raises(DiskFullError, match="b.bin needs more than the 0.0 MiB it wrote"):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
            try:
                raise OSError(28, "No space left on device")
            except OSError as cause:
                raise ValueError("the library's own wrapper") from cause
    assert list(tmp_path.iterdir()) == []


def test_every_writer_on_a_real_full_filesystem_says_disk_full_and_leaves_nothing(tmpfs):
    """On a 256 KiB tmpfs (root: mount), each of the project's writers -- text, numpy (its tofile loses the errno),
    a table (pandas), torch to a path (its zip writer raises a RuntimeError) and to a file with a sidecar, a token
    store shard -- ends in DiskFullError and leaves no partial file; after the filesystem grows the same writes
    succeed."""
    import subprocess

    import pandas as pd
    import torch

    from cortex_nb.errors import DiskFullError
    from cortex_nb.io.files import save_text, save_torch, save_with_checksum
    from cortex_nb.io.tables import write_table

    fs = tmpfs("256k")
    writers = {
        "x.txt": lambda: save_text(fs / "x.txt", "y" * 400_000),
        "a.npy": lambda: save_npy(fs / "a.npy", np.zeros(100_000)),
        "t.csv": lambda: write_table(pd.DataFrame({"a": np.arange(100_000)}), fs, "t"),
        "w.pt": lambda: save_torch({"w": torch.zeros(100_000)}, fs / "w.pt"),
        "c.pt": lambda: save_with_checksum({"w": torch.zeros(100_000)}, fs / "c.pt"),
        "00000.npz": lambda: TokenStore.generate(
            fs / "s", np.zeros(64, int), lambda labels, seed: {"images": np.ones((len(labels), 64, 64, 3),
                                                                                np.uint8),
                                                               "tokens": np.zeros((len(labels), 4, 4), int)},
            meta=META, shard_size=64, seed=0, split="t", progress=False),
    }
    for name, write in writers.items():
        with pytest.raises(DiskFullError, match=f"no space left on the device holding .*{name}"):
            write()
        left = [p for p in fs.rglob("*") if ".tmp" in p.name or p.name == name]   # no partial file, no target
        assert left == [], (name, left)
    subprocess.run(["mount", "-o", "remount,size=16m", str(fs)], check=True)
    for write in writers.values():
        write()
    assert np.load(fs / "a.npy").shape == (100_000,) and (fs / "c.pt.sha256").exists()


def test_cached_builds_once_per_key(tmp_path):
    n = []
    build = lambda: n.append(1) or {"v": len(n)}  # noqa: E731
    assert cached(tmp_path / "c.json", build, key="a")["v"] == 1
    assert cached(tmp_path / "c.json", build, key="a")["v"] == 1
    assert cached(tmp_path / "c.json", build, key="b")["v"] == 2
    assert os.listdir(tmp_path) == ["c.json"]


def test_chunked_array_resumes_and_equals_one_shot(tmp_path):
    from cortex_nb.io.store import chunked_array

    calls = []

    def compute(a, b):
        calls.append(a)
        if a == 6 and len(calls) == 3:
            raise KeyboardInterrupt
        return np.arange(a, b)[:, None] * np.ones((1, 2))

    with pytest.raises(KeyboardInterrupt):
        chunked_array(tmp_path / "x.npy", 10, 3, compute, progress=False)
    out = chunked_array(tmp_path / "x.npy", 10, 3, compute, progress=False)
    np.testing.assert_array_equal(out, np.arange(10)[:, None] * np.ones((1, 2)))
    assert calls == [0, 3, 6, 6, 9]  # the two finished chunks were not recomputed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# --- umask: atomically written files get 0o666 & ~umask, as open() would give them -------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    from cortex_nb.io.files import save_json

    old = os.umask(umask)
    try:
        save_npy(tmp_path / "a.npy", np.arange(3))
        save_json(tmp_path / "b.json", {"x": 1})
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"c")
        with open(tmp_path / "plain", "w"):  # what an ordinary write gets, for comparison
            pass
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.npy": mode, "b.json": mode, "c.bin": mode, "plain": mode}


# --- token stores: damaged or wrong stores are refused with the file, the value and a fix ----------------------

def _store(tmp_path, labels=(0, 1, 2), meta=None, shard_size=8):
    return TokenStore.generate(tmp_path / "s", np.asarray(labels), make_shard_fn([]), meta=meta or META,
                               shard_size=shard_size, seed=0, split="t", progress=False)


def _regenerate_fix(path):
    return f"delete {path} and rerun the generate stage (notebook 01 or `python -m cortex_nb generate --profile P`)"


def test_negative_token_ids_are_refused_before_the_uint16_cast(tmp_path):
    def negative(labels, seed):  # int64, as the VQGM's sampler returns; -1 would become 65535
        return {"tokens": np.full((len(labels), 4, 4), -1)}
    with pytest.raises(TokenStoreError, match="token id -1 is outside the codebook"):
        TokenStore.generate(tmp_path / "s", np.arange(3), negative, meta=META, shard_size=8, seed=0, split="t",
                            progress=False)
    assert list((tmp_path / "s" / "shards").iterdir()) == []


def test_open_refuses_negative_ids_in_a_signed_tokens_file(tmp_path):
    st = _store(tmp_path)
    save_npy(st.path / "tokens.npy", np.asarray(st.tokens, dtype=np.int64) - 1)  # some ids are now -1
    with pytest.raises(TokenStoreError, match=r"tokens.npy: token id -1 is outside") as e:
        TokenStore.open(st.path)
    assert e.value.fix == _regenerate_fix(st.path)


def test_out_of_range_tokens_on_disk_carry_the_regenerate_hint(tmp_path):
    st = _store(tmp_path)
    with pytest.raises(TokenStoreError, match="outside the codebook") as e:
        TokenStore.open(st.path, K=10)
    assert e.value.fix == _regenerate_fix(st.path)


@pytest.mark.parametrize("name, array", [("labels.npy", np.array([0, 1])), ("labels.npy", np.array([0, 1, 2, 2])),
                                         ("images.npy", np.zeros((2, 8, 8, 3), np.uint8))])
def test_open_refuses_arrays_of_another_length(tmp_path, name, array):
    st = _store(tmp_path)
    save_npy(st.path / name, array)
    with pytest.raises(TokenStoreError, match=rf"{name} holds {len(array)} rows but tokens.npy holds 3") as e:
        TokenStore.open(st.path)
    assert str(st.path / name) in e.value.message and e.value.fix == _regenerate_fix(st.path)


def test_open_refuses_a_label_outside_n_classes(tmp_path):
    st = _store(tmp_path, meta={**META, "n_classes": 10})
    save_npy(st.path / "labels.npy", np.array([0, 99, 2]))
    with pytest.raises(TokenStoreError, match=r"labels.npy: label 99 is outside \[0, 10\)") as e:
        TokenStore.open(st.path)
    assert e.value.fix == _regenerate_fix(st.path)


@pytest.mark.parametrize("labels", [[0, 99, 2], [0, -1, 2]])
def test_generate_refuses_bad_labels_before_creating_anything(tmp_path, labels):
    with pytest.raises(TokenStoreError, match=rf"label {labels[1]} is outside \[0, 10\)"):
        _store(tmp_path, labels=labels, meta={**META, "n_classes": 10})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["tokens.npy", "labels.npy", "images.npy"])
def test_open_refuses_a_truncated_npy_naming_it(tmp_path, name):
    st = _store(tmp_path)
    f = st.path / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size - 20])
    with pytest.raises(TokenStoreError, match=rf"{name} is unreadable") as e:
        TokenStore.open(st.path)
    assert str(f) in e.value.message and e.value.fix == _regenerate_fix(st.path)


def test_corrupt_meta_json_is_refused_by_open_and_generate_and_left_alone(tmp_path):
    st = _store(tmp_path)
    (st.path / "meta.json").write_text('{"K": 50, "m"')
    before = sorted(p.name for p in st.path.iterdir())
    for attempt in (lambda: TokenStore.open(st.path), lambda: _store(tmp_path)):
        with pytest.raises(TokenStoreError, match=r"meta.json is not valid JSON") as e:
            attempt()
        assert str(st.path / "meta.json") in e.value.message and e.value.fix == _regenerate_fix(st.path)
    assert sorted(p.name for p in st.path.iterdir()) == before  # the user's store is not touched


def test_a_truncated_shard_is_named_on_resume_and_kept(tmp_path):
    labels = np.arange(6)
    calls = []
    ok = make_shard_fn(calls)

    def crashing(lab, seed):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ok(lab, seed)

    with pytest.raises(KeyboardInterrupt):
        TokenStore.generate(tmp_path / "s", labels, crashing, meta=META, shard_size=2, seed=0, split="t",
                            progress=False)
    shard = tmp_path / "s" / "shards" / "00001.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(TokenStoreError, match=r"shard file .*00001.npz is unreadable") as e:
        _store(tmp_path, labels=labels, shard_size=2)
    assert e.value.fix.startswith(f"delete {shard} and rerun the generate stage")
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == ["00000.npz", "00001.npz", "00002.npz"]
    assert not (tmp_path / "s" / "tokens.npy").exists()
    shard.unlink()  # the fix works: only that shard is remade
    calls2 = []
    st = TokenStore.generate(tmp_path / "s", labels, make_shard_fn(calls2), meta=META, shard_size=2, seed=0, split="t",
                             progress=False)
    assert len(calls2) == 1 and len(st) == 6


@pytest.mark.parametrize("kw, match", [({"shard_size": 0}, "shard_size must be a positive integer, got 0"),
                                       ({"shard_size": -2}, "shard_size must be a positive integer, got -2"),
                                       ({"labels": []}, "no labels")])
def test_generate_refuses_bad_sizes_before_creating_anything(tmp_path, kw, match):
    args = {"labels": [0, 1, 2], "shard_size": 2, **kw}
    with pytest.raises(TokenStoreError, match=match):
        _store(tmp_path, **args)
    assert list(tmp_path.iterdir()) == []


def test_cached_rebuilds_a_corrupt_cache_file(tmp_path, caplog):
    from cortex_nb.io.files import load_json

    (tmp_path / "c.json").write_text('{"v": 1, "_key"')
    with pytest.raises(json.JSONDecodeError):
        load_json(tmp_path / "c.json")  # load_json itself still refuses
    with caplog.at_level("WARNING", logger="cortex_nb"):
        assert cached(tmp_path / "c.json", lambda: {"v": 2}, key="a") == {"v": 2, "_key": "a"}
    assert load_json(tmp_path / "c.json") == {"v": 2, "_key": "a"}
    assert any("c.json" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


def test_chunked_array_recomputes_a_truncated_cached_array(tmp_path, caplog):
    from cortex_nb.io.store import chunked_array

    f = tmp_path / "x.npy"
    chunked_array(f, 10, 4, lambda a, b: np.arange(a, b), progress=False)
    f.write_bytes(f.read_bytes()[:-8])
    calls = []
    with caplog.at_level("WARNING", logger="cortex_nb"):
        out = chunked_array(f, 10, 4, lambda a, b: calls.append(a) or np.arange(a, b), progress=False)
    np.testing.assert_array_equal(out, np.arange(10))
    assert calls == [0, 4, 8] and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    assert any("x.npy" in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
