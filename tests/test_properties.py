"""Property-based bad input (Hypothesis): whatever a user feeds in, the answer is the project's own error type
(UserError) with a one-line message, or the right result; never another exception, a traceback at the command
line, or a partial file.

Budgets: the ``ci`` Hypothesis profile (a few seconds for the module) under ``make test``; ``make test-slow`` runs
the same tests with ``HYPOTHESIS_PROFILE=thorough`` (thousands of examples)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex_nb.errors import CheckpointError, UserError
from cortex_nb.io.config import ProfileError, load_profile
from cortex_nb.io.schema import SCHEMA
from cortex_nb.io.store import TokenStore, TokenStoreError
from cortex_nb.vqgm import TokenDtypeError, TokenRangeError, load_vqgm
from cortex_nb.vqgm.taming_ckpt import extract_state_dict, read_checkpoint, save_taming_checkpoint
from cortex_nb.vqgm.taming_config import build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.property

N_EMBED, M = 64, 8


def _one_line(e: UserError) -> bool:
    text = e.one_line()
    return text.count("\n") <= 1 and (text.count("\n") == 0 or "\n  fix: " in text)


# ----------------------------------------------------------------------------- token ids
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_cin_config(n_embed=N_EMBED, embed_dim=8, n_classes=5, resolution=16, n_layer=2)
    model = build_from_config(cfg)
    path = tmp_path_factory.mktemp("vqgm") / "last.ckpt"
    save_taming_checkpoint(model, path)
    return cfg, path


@pytest.fixture(scope="module")
def vq(tiny):
    return load_vqgm(*tiny)


DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.float32, np.float64, np.bool_]


@st.composite
def token_arrays(draw):
    shape = draw(st.one_of(st.just((draw(st.integers(0, 3)), M, M)),
                           st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)))
    dtype = draw(st.sampled_from(DTYPES))
    n = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.integers(-3, N_EMBED + 3), min_size=n, max_size=n))
    arr = np.array(values, dtype=np.int64).reshape(shape)
    with np.errstate(all="ignore"):
        return arr.astype(dtype)


@given(arr=token_arrays(), as_tensor=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_token_array_is_embedded_or_refused_with_a_user_error(vq, arr, as_tensor):
    x = torch.from_numpy(arr.astype(np.int64) if arr.dtype == np.uint16 else arr) if as_tensor else arr
    valid = (arr.dtype.kind in "iu" and arr.ndim == 3 and arr.shape[1:] == (M, M)
             and (arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) < N_EMBED)))
    try:
        e = vq.embed(x)
    except UserError as err:
        assert not valid, f"refused a valid array: {err}"
        assert isinstance(err, (TokenRangeError, TokenDtypeError)) and _one_line(err)
        return
    assert valid, f"accepted {arr.dtype} {arr.shape}"
    ids = torch.from_numpy(arr.astype(np.int64))
    np.testing.assert_array_equal(e.detach().numpy(), vq.codebook[ids].permute(0, 3, 1, 2).detach().numpy())


# ----------------------------------------------------------------------------- damaged checkpoints
@given(data=st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_a_truncated_or_flipped_checkpoint_is_refused_or_reads_the_same_weights(tiny, tmp_path_factory, data):
    _, path = tiny
    raw = path.read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "flip"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    bad = raw[:at] if kind == "truncate" else raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
    d = tmp_path_factory.mktemp("damaged")
    target = d / "last.ckpt"
    target.write_bytes(bad)
    try:
        sd = extract_state_dict(read_checkpoint(target, trust_checkpoint=False), target)
    except CheckpointError as err:
        assert _one_line(err) and str(target) in err.message
        return
    finally:
        assert sorted(p.name for p in d.iterdir()) == ["last.ckpt"]          # nothing written beside it
        shutil.rmtree(d)
    ref = extract_state_dict(read_checkpoint(path, trust_checkpoint=False), path)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


# ----------------------------------------------------------------------------- damaged token stores
META = {"K": 50, "m": 4, "n_classes": 3, "fingerprint": "abc"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    labels = np.repeat(np.arange(3), 4)

    def make_shard(labels_chunk, seed):
        rng = np.random.default_rng(seed)
        n = len(labels_chunk)
        return {"tokens": rng.integers(0, 50, size=(n, 4, 4)), "images": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)}

    path = tmp_path_factory.mktemp("store") / "train"
    TokenStore.generate(path, labels, make_shard, meta=dict(META), shard_size=5, seed=1, split="train", progress=False)
    return path


@given(data=st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_a_damaged_store_file_is_refused_naming_it_or_opens_unchanged(store, tmp_path_factory, data):
    files = sorted(p.name for p in store.iterdir() if p.is_file())
    name = data.draw(st.sampled_from(files))
    raw = (store / name).read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "flip", "empty", "delete"]))
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    copy = tmp_path_factory.mktemp("damaged") / "train"
    shutil.copytree(store, copy)
    if kind == "delete":
        (copy / name).unlink()
    else:
        bad = (b"" if kind == "empty" else raw[:at] if kind == "truncate"
               else raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:])
        (copy / name).write_bytes(bad)
    before = sorted(p.name for p in copy.iterdir())
    try:
        st_ = TokenStore.open(copy, K=META["K"], m=META["m"], fingerprint=META["fingerprint"])
        tokens, labels = np.asarray(st_.tokens), np.asarray(st_.labels)
    except TokenStoreError as err:
        assert _one_line(err)
        assert sorted(p.name for p in copy.iterdir()) == before                # a refusal writes nothing
        return
    ref = TokenStore.open(store, K=META["K"], m=META["m"], fingerprint=META["fingerprint"])
    # a flip that still parses may change a value inside the valid ranges: the store cannot know; it must stay
    # within the codebook and the classes, with the same shapes
    assert tokens.shape == np.asarray(ref.tokens).shape and labels.shape == np.asarray(ref.labels).shape
    assert tokens.max() < META["K"] and labels.max() < META["n_classes"] and labels.min() >= 0


# ----------------------------------------------------------------------------- profile overrides
KEYS = sorted(SCHEMA)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
OVERRIDE_KEYS = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=20),
                          st.sampled_from(KEYS).map(lambda k: k + ".nested"),
                          st.sampled_from(sorted({k.split(".")[0] for k in KEYS})))


@given(key=OVERRIDE_KEYS, value=VALUES)
def test_any_override_loads_or_is_refused_with_a_profile_error(key, value):
    try:
        cfg = load_profile("smoke", **{key: value})
    except ProfileError as err:
        assert _one_line(err)
        return
    assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", f"{key} accepted but not in the profile"


def test_overrides_are_judged_not_all_refused():
    """The property above must see both outcomes: a schema key with a value of its type loads and takes effect."""
    assert load_profile("smoke", **{"optimization.steps": 7}).optimization.steps == 7
    with pytest.raises(ProfileError):
        load_profile("smoke", **{"optimization.steps": "seven"})


@given(key=OVERRIDE_KEYS, value=VALUES)
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_refused_override_is_one_line_at_the_command_line(capsys, key, value):
    from cortex_nb.__main__ import _parse_sets, main

    item = f"{key}={value if isinstance(value, str) else json.dumps(value)}"
    try:
        load_profile("smoke", **_parse_sets([item]))   # what the command line will make of it
        return                                   # a valid override: the command would run; not this test's case
    except UserError:
        pass
    capsys.readouterr()
    rc = main(["ledger", "--profile", "smoke", f"--set={item}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: ") and len([ln for ln in err.splitlines() if ln.strip()]) <= 2, err


def test_a_control_character_in_a_set_value_is_a_user_error():
    """Found by the property above (thorough profile): PyYAML's ReaderError has no .problem, and --set
    bias.alpha=<0x1f> ended in an AttributeError traceback."""
    from cortex_nb.__main__ import _parse_sets

    with pytest.raises(UserError, match="not valid YAML"):
        _parse_sets(["bias.alpha=\x1f"])


def test_a_flipped_byte_in_a_zip_member_name_is_a_checkpoint_error(tiny, tmp_path):
    """Found by the property above (thorough profile): flipping byte 26 of the checkpoint (inside the first zip
    member's name) made zipfile raise UnicodeDecodeError through the CRC check, not a CheckpointError."""
    _, path = tiny
    raw = bytearray(path.read_bytes())
    raw[26] ^= 32
    target = tmp_path / "last.ckpt"
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is damaged"):
        read_checkpoint(target, trust_checkpoint=False)


def test_a_flipped_byte_in_an_npy_header_is_a_store_error(store, tmp_path):
    """Found by the property above (thorough profile): flipping byte 9 of images.npy (inside its header) made
    numpy's header parser raise tokenize.TokenError through TokenStore.open, not a TokenStoreError."""
    copy = tmp_path / "train"
    shutil.copytree(store, copy)
    raw = bytearray((copy / "images.npy").read_bytes())
    raw[9] ^= 1
    (copy / "images.npy").write_bytes(bytes(raw))
    with pytest.raises(TokenStoreError, match="images.npy is unreadable"):
        TokenStore.open(copy, K=META["K"], m=META["m"], fingerprint=META["fingerprint"])


def test_a_set_name_is_a_profile_error_not_a_type_error():
    """Found by the property above (thorough profile): load_profile('smoke', **{'name': x}) and `--set name=x` raised
    TypeError ('got multiple values for argument name'), a traceback at the command line."""
    from cortex_nb.__main__ import main

    with pytest.raises(ProfileError, match="'name' cannot be overridden"):
        load_profile("smoke", **{"name": "other"})
    assert main(["ledger", "--profile", "smoke", "--set", "name=other"]) == 2
