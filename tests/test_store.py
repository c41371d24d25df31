import json
import os

import numpy as np
import pytest

from cortex_nb.store import TokenStore, TokenStoreError, atomic_path, cached, save_npy, shard_seed

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


def test_cached_builds_once_per_key(tmp_path):
    n = []
    build = lambda: n.append(1) or {"v": len(n)}  # noqa: E731
    assert cached(tmp_path / "c.json", build, key="a")["v"] == 1
    assert cached(tmp_path / "c.json", build, key="a")["v"] == 1
    assert cached(tmp_path / "c.json", build, key="b")["v"] == 2
    assert os.listdir(tmp_path) == ["c.json"]


def test_chunked_array_resumes_and_equals_one_shot(tmp_path):
    from cortex_nb.store import chunked_array

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
