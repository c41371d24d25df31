import pytest

from cortex_nb.config import PROFILES, ProfileError, load_profile, profile_hash


def test_profiles_exist():
    assert {"toy", "smoke", "imagenet"} <= set(PROFILES)


@pytest.mark.parametrize("name", ["toy", "smoke", "imagenet"])
def test_load_each_profile(name):
    cfg = load_profile(name)
    assert cfg.name == name
    assert cfg.device in ("cpu", "cuda")
    assert cfg.paths.results.endswith(f"results/{name}")
    assert cfg.paths.figures.endswith(f"figures/{name}")


def test_overrides_dotted_and_dunder():
    cfg = load_profile("toy", seed=7, **{"data.n_test": 3}, data__n_val=4)
    assert (cfg.seed, cfg.data.n_test, cfg.data.n_val) == (7, 3, 4)


def test_unknown_override_key_is_an_error_that_lists_keys():
    with pytest.raises(ProfileError, match="no key 'data.n_tset'.*n_test"):
        load_profile("toy", **{"data.n_tset": 3})
    with pytest.raises(ProfileError, match="no key"):
        load_profile("toy", sede=1)


def test_unknown_profile():
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*toy"):
        load_profile("nope")


def test_profile_is_read_only():
    cfg = load_profile("toy")
    with pytest.raises(Exception):
        cfg.seed = 3


def test_env_var_fills_checkpoint_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CORTEX_VQGM_CKPT", str(tmp_path / "last.ckpt"))
    assert load_profile("imagenet").vqgm.ckpt == str(tmp_path / "last.ckpt")
    # the toy profile trains its own model and keeps ckpt null only until the env says otherwise
    monkeypatch.delenv("CORTEX_VQGM_CKPT")
    assert load_profile("imagenet").vqgm.ckpt is None


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ProfileError, match="no CUDA device"):
        load_profile("toy", device="cuda")


def test_profile_hash_changes_with_the_named_keys_only():
    a, b = load_profile("toy"), load_profile("toy", **{"data.n_test": 3})
    assert profile_hash(a, "vqgm") == profile_hash(b, "vqgm")
    assert profile_hash(a, "data") != profile_hash(b, "data")
