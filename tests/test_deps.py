"""cortex_nb.deps: the per-stage module lists behind `make all`'s incremental rule."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import cortex_nb.masking  # noqa: F401  (the fake sys.modules below uses it)
from cortex_nb import deps

ROOT = Path(__file__).resolve().parents[1]


def test_loaded_module_files_keeps_only_package_modules():
    fake = {
        "cortex_nb": sys.modules["cortex_nb"],
        "cortex_nb.masking": sys.modules["cortex_nb.masking"],
        "cortex_nbx": types.SimpleNamespace(__file__=str(ROOT / "cortex_nb" / "stages.py")),  # not the package
        "numpy": sys.modules["numpy"],
        "cortex_nb.builtin_like": types.SimpleNamespace(),                                    # no __file__
    }
    got = [p.relative_to(ROOT).as_posix() for p in deps.loaded_module_files(fake)]
    assert got == ["cortex_nb/__init__.py", "cortex_nb/masking.py"]


def test_make_rule_lists_files_and_guards_deleted_ones():
    files = [ROOT / "cortex_nb" / "a.py", ROOT / "cortex_nb" / "b.py"]
    assert deps.make_rule("out/x.ipynb", files, ROOT) == (
        "out/x.ipynb: cortex_nb/a.py cortex_nb/b.py\ncortex_nb/a.py:\ncortex_nb/b.py:\n")


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_process_records_the_modules_it_imported(tmp_path):
    out = tmp_path / "deps" / "03.mk"
    r = _run("import cortex_nb.masking", {deps.ENV: f"{out}:results/x/executed/03.ipynb"})
    assert r.returncode == 0, r.stderr
    first, *rest = out.read_text().splitlines()
    target, files = first.split(": ")
    assert target == "results/x/executed/03.ipynb"
    files = files.split()
    assert {"cortex_nb/__init__.py", "cortex_nb/masking.py", "cortex_nb/saliency.py"} <= set(files)
    assert "cortex_nb/widgets.py" not in files          # never imported by that process
    assert rest == [f"{f}:" for f in files]


def test_without_the_variable_nothing_is_registered(monkeypatch):
    monkeypatch.delenv(deps.ENV, raising=False)
    assert deps.record_on_exit() is False


def test_a_malformed_variable_is_an_error(monkeypatch):
    monkeypatch.setenv(deps.ENV, "no-target-here")
    with pytest.raises(ValueError, match=deps.ENV):
        deps.record_on_exit()
