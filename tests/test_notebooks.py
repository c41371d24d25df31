"""Committed notebooks are narrative sources: no outputs, a `parameters` cell that reads
CORTEX_PROFILE, and only calls into cortex_nb (no function or class definitions)."""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert code.index(params[0]) == 0, "the parameters cell is the first code cell"
    assert 'os.environ.get("CORTEX_PROFILE", "toy")' in "".join(params[0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_logic_lives_in_the_package(path):
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            tree = ast.parse("".join(c["source"]))
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not defs, f"move {defs[0].name} into cortex_nb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_only_the_curated_api(path):
    """``from cortex_nb import name`` with every name in cortex_nb.__all__; no submodule imports."""
    import cortex_nb

    nb = json.loads(path.read_text())
    names = []
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(c["source"]))):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("cortex_nb")], "from cortex_nb import ..."
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cortex_nb"):
                assert node.module == "cortex_nb", f"import from cortex_nb, not {node.module}"
                names += [a.name for a in node.names]
    assert names and set(names) <= set(cortex_nb.__all__), set(names) - set(cortex_nb.__all__)


def test_importing_the_package_imports_no_pipeline_module():
    """The curated names of the pipeline are imported on first use: `import cortex_nb` has no side
    effects and make's per-notebook module lists stay exact (cortex_nb.io.deps)."""
    import subprocess
    import sys

    code = "import sys, cortex_nb; print(' '.join(m for m in sys.modules if m.startswith('cortex_nb')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith("cortex_nb.pipeline") or m == "cortex_nb.browser.app"], loaded


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_metadata_is_what_jupyterlab_writes_so_opening_does_not_modify(path):
    """JupyterLab rewrites the kernelspec and language_info from the running kernel when it opens a notebook;
    any difference marks the tracked notebook modified (and a save would commit it). The committed metadata
    is therefore ipykernel's own (its kernelspec's display name, its language_info); only the Python version
    can still differ, on a Python other than the one the notebooks were written with."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    meta = json.loads(path.read_text())["metadata"]
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert meta["kernelspec"] == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    info = dict(IPythonKernel.language_info)
    assert {k: v for k, v in meta["language_info"].items() if k != "version"} == \
        {k: v for k, v in info.items() if k != "version"}
    assert meta["language_info"]["version"].count(".") == 2
