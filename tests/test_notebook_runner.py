"""A stage's notebook run (cortex_nb.pipeline.notebook, what the Makefile's stage recipe calls): papermill executes
it; the project's own errors end as their message and fix, a full disk under papermill's save as DiskFullError, and
any other error keeps its traceback."""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from cortex_nb.pipeline.notebook import user_error_names

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _run(src: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cortex_nb.pipeline.notebook", str(src), str(out), "--kernel",
                           "python3", "--cwd", str(src.parent)], capture_output=True, text=True, env=env, timeout=300)


def test_every_kind_of_user_error_the_package_defines_is_known():
    """A UserError kind defined anywhere in the package must be reported as one (found in the sources, so a new
    module's error type cannot be missed)."""
    defined = set()
    for f in (ROOT / "cortex_nb").rglob("*.py"):
        defined |= set(re.findall(r"^class (\w+)\([^)]*UserError", f.read_text(), re.M))
    assert defined and defined <= user_error_names()


def test_a_users_error_in_a_cell_is_its_message_and_fix_and_an_ordinary_run_passes(tmp_path):
    ok = _run(_notebook(tmp_path / "00_ok.ipynb", "x = 1", "print(x + 1)"), tmp_path / "ok.ipynb")
    assert ok.returncode == 0, ok.stderr
    assert nbformat.read(tmp_path / "ok.ipynb", as_version=4).cells[1].outputs[0]["text"] == "2\n"
    src = _notebook(tmp_path / "03_bad.ipynb", "x = 1",
                    "from cortex_nb import load_profile\nload_profile('smoke', **{'saliency.n_samples': 'many'})")
    res = _run(src, tmp_path / "bad.ipynb")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert err[-2].startswith("cortex-nb: 03_bad stopped in cell 2: ProfileError: ") and "saliency.n_samples" in err[-2]
    assert err[-1].startswith("  fix: ") and "Traceback" not in res.stderr


def test_any_other_error_keeps_its_traceback(tmp_path):
    res = _run(_notebook(tmp_path / "05_bug.ipynb", "raise KeyError('a bug')"), tmp_path / "bug.ipynb")
    assert res.returncode != 0 and "Traceback" in res.stderr and "KeyError" in res.stderr
    assert "cortex-nb:" not in res.stderr


def test_papermill_saving_onto_a_full_disk_is_a_disk_full_error(tmp_path, tmpfs):
    """The executed notebook on a 64 KiB tmpfs (root: mount) and a cell printing 200 KB: papermill's save fails;
    the run says which notebook and what is free, in the project's words."""
    fs = tmpfs("64k")
    res = _run(_notebook(tmp_path / "07_big.ipynb", "print('y' * 200_000)"), fs / "big.ipynb")
    assert res.returncode == 1, res.stderr[-2000:]
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("cortex-nb: 07_big: ")]
    assert line and f"no space left on the device holding {fs}" in line[0] and "big.ipynb" in line[0], res.stderr[-800:]
    assert "run the same command again" in res.stderr and "Traceback" not in res.stderr
