import pytest

from cortex_nb.io.config import PROFILES, ProfileError, load_profile, profile_hash


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


# --- validation (cortex_nb.io.schema) ---------------------------------------------------------

from cortex_nb.io.schema import SCHEMA  # noqa: E402


def _leaves(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and SCHEMA.get(key) is None:
            out |= _leaves(v, key + ".")
        else:
            out.add(key)
    return out


def test_schema_covers_exactly_the_base_profiles_keys():
    from omegaconf import OmegaConf

    from cortex_nb.io.config import BASE_PROFILE

    assert _leaves(OmegaConf.to_container(OmegaConf.load(BASE_PROFILE))) == set(SCHEMA)


@pytest.mark.parametrize("name", ["toy", "smoke", "imagenet"])
def test_each_profile_resolves_to_every_schema_key(name):
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(load_profile(name))
    tree.pop("paths")
    assert _leaves(tree) == set(SCHEMA)


def test_profiles_hold_only_what_differs_from_the_base():
    """Defaults live once: toy is the base; smoke and imagenet repeat no base value."""
    from omegaconf import OmegaConf

    from cortex_nb.io.config import BASE_PROFILE, PROFILE_DIR

    base = OmegaConf.to_container(OmegaConf.load(BASE_PROFILE))

    def repeats(own, ref, prefix=""):
        out = []
        for k, v in own.items():
            if isinstance(v, dict) and isinstance(ref.get(k), dict) and ref[k]:
                out += repeats(v, ref[k], f"{prefix}{k}.")
            elif k != "name" and ref.get(k, object()) == v and not (v is None and k in ("config", "ckpt", "weights_dir")):
                out.append(prefix + k)
        return out

    for name in ("toy", "smoke", "imagenet"):
        own = OmegaConf.to_container(OmegaConf.load(PROFILE_DIR / f"{name}.yaml"))
        assert repeats(own, base) == [], name
    assert set(OmegaConf.load(PROFILE_DIR / "toy.yaml").keys()) == {"name"}


def test_a_typo_in_a_profile_file_is_an_error(tmp_path, monkeypatch):
    import shutil

    from cortex_nb.io import config

    shutil.copy(config.BASE_PROFILE, tmp_path / "_base.yaml")
    (tmp_path / "typo.yaml").write_text("name: typo\ndata:\n  n_tset: 3\n")
    monkeypatch.setattr(config, "PROFILE_DIR", tmp_path)
    monkeypatch.setattr(config, "BASE_PROFILE", tmp_path / "_base.yaml")
    with pytest.raises(ProfileError, match=r"typo.yaml sets 'data.n_tset', which the base profile"):
        load_profile("typo")
    with pytest.raises(ProfileError, match="unknown profile '_base'"):
        load_profile("_base")


def test_write_resolved_records_profile_and_machine(tmp_path, monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from cortex_nb.io.config import write_resolved

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    cfg = load_profile("smoke", **{"data.n_test": 3})
    path = write_resolved(cfg)
    assert path == tmp_path / "results" / "smoke" / "profile.yaml"
    back = OmegaConf.load(path)
    assert back.profile.data.n_test == 3 and "paths" not in back.profile
    assert OmegaConf.to_container(back.profile) == {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "paths"}
    assert back.run.torch == torch.__version__
    assert back.run.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert back.run.threads == torch.get_num_threads()


@pytest.mark.parametrize("key", sorted(k for k, rule in SCHEMA.items() if rule.kind not in ("str", "section")))
def test_every_checked_key_refuses_a_wrong_type_naming_key_and_value(key):
    with pytest.raises(ProfileError) as e:
        load_profile("smoke", **{key: "surely-not-valid"})
    assert f"{key} = 'surely-not-valid' is not allowed; expected" in str(e.value)
    assert e.value.fix  # every refusal says how to fix it


@pytest.mark.parametrize("key, value, allowed", [
    ("data.shard_size", 0, "an integer >= 1"),
    ("data.n_test", -3, "an integer >= 1"),
    ("threads", 0, "an integer >= 1"),
    ("world.scene_bias", 1.5, "a number >= 0 and <= 1"),
    ("data.top_p", 0, "a number > 0 and <= 1 (or null)"),
    ("extractors.lr", 0.0, "a number > 0"),
    ("extractors.archs", [], "a non-empty list of CE, RE"),
    ("extractors.archs", ["CE", "CE"], "a non-empty list of CE, RE"),
    ("progress", 1, "true or false"),
    ("seed", True, "an integer >= 0"),
    ("optimization.pairs", [[3, 3]], "a non-empty list of [source, target] class pairs"),
    ("optimization.pairs", [[0, 12]], "classes in [0, world.n_classes) = [0, 10)"),
    ("vqgm.tokenizer.steps", 0, "an integer >= 1"),
    ("vqgm.tokenizer.ch_mult", [1, "x"], "a non-empty list of integers >= 1"),
    ("vqgm.prior.lr", -1.0, "a number > 0"),
    ("evaluators.fit.epochs", 0, "an integer >= 1"),
])
def test_out_of_range_values_are_refused(key, value, allowed):
    with pytest.raises(ProfileError, match="expected " + __import__("re").escape(allowed)):
        load_profile("smoke", **{key: value})


def test_a_section_replaced_by_a_value_is_refused():
    with pytest.raises(ProfileError, match=r"data = 1 is not allowed; expected a section") as e:
        load_profile("smoke", data=1)
    assert "--set data.KEY=VALUE" in e.value.fix


def test_valid_overrides_still_load():
    cfg = load_profile("smoke", **{"data.top_k": 5, "data.top_p": 0.9, "extractors.fc": None,
                                    "optimization.pairs": [[1, 0]], "vqgm.tokenizer.ch_mult": [1, 2, 2]})
    assert (cfg.data.top_k, cfg.optimization.pairs[0][0]) == (5, 1)


def test_imagenet_may_have_empty_toy_sections_but_toy_evaluators_need_images():
    load_profile("imagenet")  # n_train 0 and empty tokenizer/prior are fine where nothing is trained
    with pytest.raises(ProfileError, match=r"evaluators.n_train = 0 .*toy evaluators are trained here"):
        load_profile("smoke", **{"evaluators.n_train": 0})


def test_ensure_writable_creates_the_directories(tmp_path, monkeypatch):
    from cortex_nb.io.config import ensure_writable

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    cfg = load_profile("smoke")
    ensure_writable(cfg)
    assert all(__import__("pathlib").Path(cfg.paths[k]).is_dir() for k in ("results", "cache", "tables", "figures"))


def test_world_classes_and_the_pairs_they_must_hold():
    cfg = load_profile("paper-dry")
    assert list(cfg.world.classes) == [10, 20] and cfg.dry_run
    with pytest.raises(ProfileError, match="classes the run generates"):
        load_profile("paper-dry", **{"world.classes": [10]})             # Table 3's pair [10, 20] needs class 20
    with pytest.raises(ProfileError, match="world.classes"):
        load_profile("paper-dry", **{"world.classes": [10, 20, 1000]})
    with pytest.raises(ProfileError, match="world.classes"):
        load_profile("paper-dry", **{"world.classes": [10, 10]})
    assert load_profile("toy").world.classes is None
