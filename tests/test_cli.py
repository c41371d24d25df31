"""The CLI's handling of bad input: one line plus the fix on stderr, exit status 2, no traceback
(unless --debug), and nothing written when the input is refused."""
import os
import subprocess
import sys

import pytest

from cortex_nb.__main__ import main
from cortex_nb.config import ProfileError


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def results(tmp_path, monkeypatch):
    root = tmp_path / "out"
    root.mkdir()
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    return root


@pytest.mark.parametrize("setting, names", [
    ("data.shard_size=0", "data.shard_size = 0"),
    ("data=1", "data = 1"),
    ("data.n_test=abc", "data.n_test = 'abc'"),
    ("data.n_test=0", "data.n_test = 0"),
    ("evaluators.names=[resnet99]", "evaluators.names = ['resnet99']"),
])
def test_bad_override_is_one_line_with_fix_and_writes_nothing(results, capsys, setting, names):
    rc = main(["generate", "--profile", "smoke", "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: profile 'smoke': " + names), err
    assert "\n  fix: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2
    assert _files(results) == []  # refused before anything was created (n_test=0 used to leave test/)


def test_debug_shows_the_traceback(results):
    with pytest.raises(ProfileError, match="data.shard_size = 0"):
        main(["generate", "--profile", "smoke", "--set", "data.shard_size=0", "--debug"])


def test_set_without_equals_is_a_clear_error(results, capsys):
    assert main(["vqgm", "--profile", "smoke", "--set", "data.n_test"]) == 2
    assert "--set expects KEY=VALUE, got 'data.n_test'" in capsys.readouterr().err


def test_unwritable_results_directory_is_reported_before_any_work(tmp_path, monkeypatch, capsys):
    # a file where results/ must be: unwritable for every user, root included (chmod does not stop root)
    root = tmp_path / "out"
    root.mkdir()
    (root / "results").write_text("not a directory")
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    assert main(["vqgm", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the results directory {root / 'results' / 'smoke'}" in err
    assert "CORTEX_RESULTS" in err and "Traceback" not in err
    assert _files(root) == ["results"]  # no cache, no figures: nothing started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_results_directory(tmp_path, monkeypatch, capsys):
    root = tmp_path / "out"
    (root / "results" / "smoke").mkdir(parents=True)
    (root / "results" / "smoke").chmod(0o555)
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    try:
        assert main(["vqgm", "--profile", "smoke"]) == 2
    finally:
        (root / "results" / "smoke").chmod(0o755)
    assert "cannot write to the results directory" in capsys.readouterr().err


def test_module_runs_as_a_program_and_fails_cleanly(tmp_path):
    env = {**os.environ, "CORTEX_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cortex_nb", "tsv", "--profile", "smoke", "--set", "saliency.fill=pink"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: profile 'smoke': saliency.fill = 'pink' is not allowed; expected one of "
                                 "black, mean, blur")
    assert "Traceback" not in out.stderr
