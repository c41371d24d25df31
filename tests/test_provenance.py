"""Provenance (issue #18): every table and figure logged as written, MANIFEST.json, `verify`."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import nbformat
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cortex_nb.io import provenance  # noqa: E402
from cortex_nb.io.config import load_profile, repo_root  # noqa: E402
from cortex_nb.io.figures import save_figure  # noqa: E402
from cortex_nb.pipeline import ledger  # noqa: E402
from cortex_nb.io.tables import write_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_probe(root: Path, profile: str = "probe") -> None:
    write_table(pd.DataFrame({"a": [1, 2]}), root / "results" / profile / "tables", "t")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, root / "figures" / profile, "f")
    plt.close(fig)


def test_every_write_is_logged_and_the_manifest_holds_its_hash(tmp_path):
    write_probe(tmp_path)
    man = provenance.build_manifest("probe", tmp_path)
    files = man["files"]
    assert sorted(files) == ["figures/probe/f.pdf", "figures/probe/f.png", "results/probe/tables/t.csv",
                             "results/probe/tables/t.md", "results/probe/tables/t.tex"]
    for key, entry in files.items():
        assert entry["sha256"] == sha(tmp_path / key)
        assert entry["bytes"] == (tmp_path / key).stat().st_size
        # written outside a notebook: this process's command line (pytest's, or '-c' in a pytest-xdist worker)
        first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
        argv0 = f"python -m {first.parent.name}" if first.name == "__main__.py" else first.name
        assert entry["command"] == " ".join([argv0, *sys.argv[1:]]) and "notebook" not in entry
        assert "pytest" in entry["command"] or entry["command"] == "-c"
        sess = man["sessions"][entry["session"]]
        assert sess["packages"]["torch"] and sess["threads"] >= 1 and sess["cpu_capability"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert {s["commit"] for s in man["sessions"].values()} == {head}


def test_the_same_figure_saved_again_has_the_same_hash(tmp_path):
    """PNG and PDF carry no creation time: rerunning a stage does not change a figure's SHA-256 by itself."""
    fig, ax = plt.subplots()
    ax.plot([0, 1, 3])
    save_figure(fig, tmp_path / "a", "f")
    save_figure(fig, tmp_path / "b", "f")
    plt.close(fig)
    for ext in ("png", "pdf"):
        assert sha(tmp_path / "a" / f"f.{ext}") == sha(tmp_path / "b" / f"f.{ext}")
    assert b"CreationDate" not in (tmp_path / "a" / "f.pdf").read_bytes()


def test_a_file_changed_after_writing_is_not_recorded_and_the_previous_manifest_carries_over(tmp_path):
    write_probe(tmp_path)
    first = provenance.build_manifest("probe", tmp_path)
    csv = tmp_path / "results/probe/tables/t.csv"
    (csv.parent / provenance.LOG_NAME).unlink()           # a clean clone: no logs, only the committed manifest
    second = provenance.build_manifest("probe", tmp_path, first)
    assert second["files"]["results/probe/tables/t.csv"] == first["files"]["results/probe/tables/t.csv"]
    assert second["files"]["results/probe/tables/t.csv"]["session"] in second["sessions"]
    csv.write_text(csv.read_text() + "3\n")               # edited by hand
    third = provenance.build_manifest("probe", tmp_path, second)
    entry = third["files"]["results/probe/tables/t.csv"]
    assert entry["sha256"] == sha(csv) and entry["writer"].startswith("not recorded")


def test_caches_and_executed_notebooks_are_not_results(tmp_path):
    write_probe(tmp_path)
    for d in ("cache", "executed", "atlas"):
        p = tmp_path / "results/probe" / d / "tables"
        p.mkdir(parents=True)
        (p / "x.csv").write_text("a\n")
    seeds = tmp_path / "results/probe/seeds/r1/tables"
    seeds.mkdir(parents=True)
    (seeds / "y.csv").write_text("a\n")
    paths = [p.as_posix() for p in provenance.artifact_paths("probe", tmp_path)]
    assert "results/probe/seeds/r1/tables/y.csv" in paths
    assert not [p for p in paths if "/cache/" in p or "/executed/" in p or "/atlas/" in p]


def test_a_notebook_cell_is_named_as_the_writer(tmp_path):
    """Under `make all` ($CORTEX_STAGE_DEPS names the stage) the record names the notebook and the cell that
    wrote the table: papermill runs a two-cell notebook; the manifest finds the cell by its source."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    code = (f"from cortex_nb.io.tables import write_table\nimport pandas as pd\n"
            f"write_table(pd.DataFrame({{'a': [1]}}), {str(root / 'results/probe/tables')!r}, 'from_cell')")
    nb.cells = [nbformat.v4.new_markdown_cell("# probe"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = root / "notebooks" / "99_probe.ipynb"
    nbformat.write(nb, src)
    env = {**os.environ, "CORTEX_STAGE_DEPS": f"{tmp_path / 'deps.mk'}:results/probe/executed/99_probe.ipynb",
           "CORTEX_RESULTS": str(root)}
    res = subprocess.run([sys.executable, "-m", "papermill", str(src), str(tmp_path / "out.ipynb"), "--kernel", "python3"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    entry = provenance.build_manifest("probe", root)["files"]["results/probe/tables/from_cell.csv"]
    assert entry["notebook"] == "notebooks/99_probe.ipynb"
    assert entry["cell"] == 2 and entry["cell_id"] == nb.cells[2].id
    assert entry["cell_first_line"] == "from cortex_nb.io.tables import write_table"
    assert provenance.describe(entry) == "notebooks/99_probe.ipynb cell 2"


def copy_toy(dst: Path) -> None:
    """The committed toy results (tables, replicates, manifest) and figures, as a clean clone has them."""
    src = repo_root()
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "results/toy",
                            "figures/toy"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dst / f)


def verify(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORTEX_RESULTS": str(root)}
    return subprocess.run([sys.executable, "-m", "cortex_nb", "verify", "--profile", "toy"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_committed_toy_results_match_their_manifest_and_ledger():
    """What a clean clone holds: every committed toy table and figure is what MANIFEST.json says, and every
    claim the committed ledger records as holding holds on the committed tables (`make verify`)."""
    problems, notes = provenance.check_manifest("toy", repo_root())
    assert problems == [], "rerun `python -m cortex_nb manifest --profile toy` after changing a table"
    man = provenance.load_manifest("toy", repo_root())
    committed = set(subprocess.run(["git", "ls-files", "results/toy", "figures/toy"], cwd=REPO, capture_output=True,
                                   text=True).stdout.split()) - {"results/toy/MANIFEST.json"}
    assert committed <= set(man["files"]), sorted(committed - set(man["files"]))[:5]
    assert ledger.verify_ledger(load_profile("toy")) == []


def test_verify_fails_naming_an_altered_csv(tmp_path):
    copy_toy(tmp_path)
    ok = verify(tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    csv = tmp_path / "results/toy/tables/table1_extractor_accuracy.csv"
    lines = csv.read_text().splitlines()
    # one digit of the first number in the first row, moved by one: a change whatever the run on this machine
    # wrote (after `make all` on another CPU the committed values are not there to find)
    i = next(i for i, c in enumerate(lines[1]) if c.isdigit())
    lines[1] = lines[1][:i] + str((int(lines[1][i]) + 1) % 10) + lines[1][i + 1:]
    csv.write_text("\n".join(lines) + "\n")
    bad = verify(tmp_path)
    assert bad.returncode == 1
    assert "results/toy/tables/table1_extractor_accuracy.csv: SHA-256" in bad.stderr
    assert bad.stderr.count("SHA-256") == 1                   # only that file


def test_verify_fails_naming_a_claim_that_no_longer_holds(tmp_path):
    """A table rewritten (and re-manifested) so that Fig. 3's CE claim no longer holds: the hashes match,
    the ledger does not."""
    copy_toy(tmp_path)
    csv = tmp_path / "results/toy/tables/fig3_image_level.csv"
    df = pd.read_csv(csv)
    row = df.index[(df.method == "CE") & (df.n > 1) & df.d_random.notna()][0]
    df.loc[row, ["d_random", "d_random_lo", "d_random_hi"]] = [0.01, -0.02, 0.04]   # now spans 0
    df.to_csv(csv, index=False)
    provenance.write_manifest("toy", tmp_path)
    bad = verify(tmp_path)
    assert bad.returncode == 1
    assert "claim fig3_CE" in bad.stderr and "now inconclusive" in bad.stderr
    assert "SHA-256" not in bad.stderr
    assert json.loads((tmp_path / "results/toy/MANIFEST.json").read_text())["files"][
        "results/toy/tables/fig3_image_level.csv"]["writer"].startswith("not recorded")
