"""cortex_nb.io.deps: the per-stage module lists behind `make all`'s incremental rule."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import cortex_nb.method.masking  # noqa: F401  (the fake sys.modules below uses it)
import cortex_nb.pipeline.keys  # noqa: F401  (a subpackage's module)
from cortex_nb.io import deps

ROOT = Path(__file__).resolve().parents[1]


def test_loaded_module_files_keeps_only_package_modules():
    fake = {
        "cortex_nb": sys.modules["cortex_nb"],
        "cortex_nb.method.masking": sys.modules["cortex_nb.method.masking"],
        "cortex_nb.pipeline.keys": sys.modules["cortex_nb.pipeline.keys"],
        "cortex_nbx": types.SimpleNamespace(__file__=str(ROOT / "cortex_nb" / "figures.py")),  # not the package
        "numpy": sys.modules["numpy"],
        "cortex_nb.builtin_like": types.SimpleNamespace(),                                    # no __file__
    }
    got = [p.relative_to(ROOT).as_posix() for p in deps.loaded_module_files(fake)]
    assert got == ["cortex_nb/__init__.py", "cortex_nb/method/masking.py", "cortex_nb/pipeline/keys.py"]


def test_make_rule_lists_files_and_guards_deleted_ones():
    files = [ROOT / "cortex_nb" / "a.py", ROOT / "cortex_nb" / "b.py"]
    assert deps.make_rule("out/x.ipynb", files, ROOT) == (
        "out/x.ipynb: cortex_nb/a.py cortex_nb/b.py\ncortex_nb/a.py:\ncortex_nb/b.py:\n")


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_process_records_the_modules_it_imported(tmp_path):
    """The pipeline's setup (every section calls it) registers the hook, once; the rule lists the
    modules the process imported by its exit, the pipeline's included."""
    out = tmp_path / "deps" / "03.mk"
    code = ("import cortex_nb.method.masking; from cortex_nb import load_profile, setup; "
            "cfg = load_profile('smoke'); setup(cfg); setup(cfg)")
    r = _run(code, {deps.ENV: f"{out}:results/x/executed/03.ipynb", "CORTEX_RESULTS": str(tmp_path / "res")})
    assert r.returncode == 0, r.stderr
    first, *rest = out.read_text().splitlines()
    target, files = first.split(": ")
    assert target == "results/x/executed/03.ipynb"
    files = files.split()
    assert {"cortex_nb/__init__.py", "cortex_nb/method/masking.py", "cortex_nb/method/saliency.py",
            "cortex_nb/pipeline/run.py"} <= set(files)
    assert "cortex_nb/browser/app.py" not in files          # never imported by that process
    assert len(files) == len(set(files)) and rest == [f"{f}:" for f in files]


def test_importing_the_package_registers_nothing(tmp_path):
    """No side effects at import: without a section (setup) no rule is written."""
    out = tmp_path / "deps" / "00.mk"
    r = _run("import cortex_nb, cortex_nb.method.masking", {deps.ENV: f"{out}:results/x/executed/00.ipynb"})
    assert r.returncode == 0, r.stderr
    assert not out.exists()


def test_without_the_variable_nothing_is_registered(monkeypatch):
    monkeypatch.delenv(deps.ENV, raising=False)
    assert deps.record_on_exit() is False


def test_a_malformed_variable_is_an_error(monkeypatch):
    monkeypatch.setenv(deps.ENV, "no-target-here")
    with pytest.raises(ValueError, match=deps.ENV):
        deps.record_on_exit()


# --------------------------------------------------------------------------------------
# the Makefile's stage recipe, run for real with a stand-in for papermill (issue #19)
# --------------------------------------------------------------------------------------

# Stands in for the venv's python: `python -m cortex_nb.pipeline.notebook IN OUT ...` (papermill) writes OUT (a JSON record of
# its arguments and environment), optionally waits until every process of a barrier wrote its OUT
# and checks that OUT is still its own, optionally fails after writing OUT.
FAKE_PYTHON = '''#!{python}
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
assert args[:2] == ["-m", "cortex_nb.pipeline.notebook"], args
out = Path(args[3])
rec = {{"argv": args, "deps": os.environ.get("CORTEX_STAGE_DEPS"), "path0": os.environ["PATH"].split(":")[0],
       "pid": os.getpid()}}
out.write_text(json.dumps(rec))
if os.environ.get("FAKE_HANG"):
    time.sleep(60)
barrier = os.environ.get("FAKE_BARRIER")
if barrier:
    Path(barrier, str(os.getpid())).touch()
    deadline = time.time() + 30
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    if json.loads(out.read_text())["pid"] != os.getpid():
        sys.exit("another process wrote my temporary notebook")
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(rec) + "\\n")
sys.exit(1 if os.environ.get("FAKE_FAIL") else 0)
'''


def _sandbox(parent: Path, name: str) -> Path:
    """A checkout at ``parent/name`` with the real Makefile, one notebook, the profiles' files, an
    installed-looking venv whose python is FAKE_PYTHON."""
    root = parent / name
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "00_x.ipynb").write_text("{}")
    (root / "cortex_nb" / "profiles").mkdir(parents=True)
    for profile in ("_base", "toy", "imagenet"):                      # _base.yaml: every stage's prerequisite
        (root / "cortex_nb" / "profiles" / f"{profile}.yaml").write_text(f"name: {profile}\n")
    (root / "Makefile").write_bytes((ROOT / "Makefile").read_bytes())
    (root / "pyproject.toml").write_text("")
    os.utime(root / "pyproject.toml", (1, 1))  # older than the venv stamp: no install
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE_PYTHON.format(python=sys.executable))
    py.chmod(0o755)
    (root / ".venv" / ".cortex-installed").touch()
    return root


def _make(root: Path, *args: str, env: dict | None = None, wait: bool = True):
    cmd = ["make", "--no-print-directory", *args, "results/" + _profile(args) + "/executed/00_x.ipynb"]
    base = {k: v for k, v in os.environ.items() if k not in ("CELL_TIMEOUT", "PROFILE", "MAKEFLAGS")}
    full = {**base, "FAKE_LOG": str(root / "fake.log"), **(env or {})}
    if not Path("/usr/bin/time").exists():
        pytest.skip("needs GNU time at /usr/bin/time (the Makefile's TIME)")
    p = subprocess.Popen(cmd, cwd=root, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True,  # its own process group, as a terminal's job
                         preexec_fn=_terminal_signals)
    if not wait:
        return p
    out, _ = p.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, p.returncode, out)


def _terminal_signals() -> None:
    """SIGINT as a terminal's foreground job has it. A test run started in the background (`make test &`, a CI
    runner's job) inherits SIGINT ignored, and an ignored signal stays ignored across exec: make, the recipe's shell
    and the stand-in would all sleep through the Ctrl-C the test sends (seen: make returned 0 after 60 s)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _profile(args) -> str:
    return next((a.split("=", 1)[1] for a in args if a.startswith("PROFILE=")), "toy")


def _records(root: Path) -> list[dict]:
    import json

    log = root / "fake.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.tmp.ipynb"))


def test_make_runs_a_stage_in_a_checkout_whose_path_has_a_space(tmp_path):
    root = _sandbox(tmp_path, "my checkout")
    r = _make(root)
    assert r.returncode == 0, r.stdout
    (rec,) = _records(root)
    # CORTEX_STAGE_DEPS reaches the kernel whole (unquoted, the space split it: Error 127)
    assert rec["deps"] == f"{root}/results/toy/deps/00_x.mk:results/toy/executed/00_x.ipynb"
    assert rec["path0"] == f"{root}/.venv/bin"         # the exported PATH keeps the space too
    assert (root / "results" / "toy" / "executed" / "00_x.ipynb").exists()
    assert _temporaries(root) == []


@pytest.mark.parametrize("args,timeout", [
    ((), ["--execution-timeout", "7200"]),
    (("PROFILE=imagenet",), []),                         # hours-long cells: no per-cell limit
    (("PROFILE=imagenet", "CELL_TIMEOUT=60"), ["--execution-timeout", "60"]),
    (("CELL_TIMEOUT=",), []),
])
def test_cell_timeout_is_off_for_imagenet_and_kept_for_toy(tmp_path, args, timeout):
    root = _sandbox(tmp_path, "co")
    r = _make(root, *args)
    assert r.returncode == 0, r.stdout
    (rec,) = _records(root)
    argv = rec["argv"]
    got = argv[argv.index("--execution-timeout"):argv.index("--execution-timeout") + 2] \
        if "--execution-timeout" in argv else []
    assert got == timeout


def test_a_failed_stage_leaves_no_temporary_notebook(tmp_path):
    root = _sandbox(tmp_path, "co")
    r = _make(root, env={"FAKE_FAIL": "1"})
    assert r.returncode != 0
    (rec,) = _records(root)                               # the stand-in ran and wrote its output
    assert rec["argv"][3].endswith(".tmp.ipynb")
    assert _temporaries(root) == []                       # ... which the recipe removed
    assert not (root / "results" / "toy" / "executed" / "00_x.ipynb").exists()


def test_two_makes_at_once_write_different_temporary_notebooks(tmp_path):
    root = _sandbox(tmp_path, "co")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [_make(root, env={"FAKE_BARRIER": str(barrier)}, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = _records(root)
    assert a["argv"][3] != b["argv"][3]                   # each its own temporary file
    assert _temporaries(root) == []


def test_an_interrupted_stage_leaves_no_temporary_notebook(tmp_path):
    """Ctrl-C (SIGINT to the job's process group) while the notebook runs."""
    import signal
    import time

    root = _sandbox(tmp_path, "co")
    p = _make(root, env={"FAKE_HANG": "1"}, wait=False)
    deadline = time.time() + 30
    while not _temporaries(root) and time.time() < deadline:  # the stand-in has written its output
        time.sleep(0.05)
    assert _temporaries(root), "the stand-in never started"
    os.killpg(p.pid, signal.SIGINT)
    # the stand-in sleeps 60 s: a SIGINT that reached nothing lets it finish and make return 0 (asserted below)
    out, _ = p.communicate(timeout=90)
    assert p.returncode != 0, out
    assert _temporaries(root) == []
    assert not (root / "results" / "toy" / "executed" / "00_x.ipynb").exists()
