"""The package's shape: no import cycles among its modules (every import statement counts, at the top of a module
or inside a function, since a lazy import is still a dependency a reader has to follow)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cortex_nb"


def module_names() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package's ``__init__`` named by the package)."""
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports. An import of a package's own parent packages (``from . import
    __version__``) is not an edge: the parent's ``__init__`` runs first anyway."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:             # `from .pipeline.run import x` -> cortex_nb.pipeline.run
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one path per back edge)."""
    state, path, out = {}, [], []

    def visit(v):
        state[v] = "open"
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                out.append(path[path.index(w):] + [w])
            elif w not in state:
                visit(w)
        path.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    mods = module_names()
    graph = {m: imports_of(m, f, set(mods)) for m, f in mods.items()}
    graph = {m: {t for t in ts if t != "cortex_nb"} for m, ts in graph.items()}    # the package's __init__
    assert len(mods) > 40 and graph["cortex_nb.browser.app"], "the import graph was not read"
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


#: the folders by concern, and what each holds (its __init__ docstring says it in one sentence)
FOLDERS = ("method", "vqgm", "toy", "engine", "browser", "io", "pipeline")
#: the files that implement a model: the method layer and the pipeline reach a VQGM only through
#: cortex_nb.vqgm.protocol (the toy tokenizer's settings and its codebook statistics are profile data, not a model)
MODEL_INTERNALS = ("cortex_nb.vqgm.taming", "cortex_nb.vqgm.taming_ckpt", "cortex_nb.vqgm.taming_compat",
                   "cortex_nb.vqgm.kv_sampler", "cortex_nb.toy.vqgm")


def test_every_module_lives_in_a_folder_that_says_what_it_holds():
    top = sorted(f.name for f in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py"], top
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"cortex_nb/{folder}/__init__.py has no docstring saying what the folder holds"
    assert sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(FOLDERS)


def test_no_module_is_over_450_lines():
    long = {str(f.relative_to(PKG)): n for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > 450}
    assert not long, long


def test_the_method_layer_and_the_pipeline_see_a_vqgm_only_through_the_protocol():
    """No import of a model's internals and no ``vqgm.model`` in cortex_nb/method or cortex_nb/pipeline; the one
    loader (pipeline/models.py) builds the toy model and names its files."""
    mods = module_names()
    for name, path in mods.items():
        if not name.startswith(("cortex_nb.method", "cortex_nb.pipeline")) or name == "cortex_nb.pipeline.models":
            continue
        reached = {t for t in imports_of(name, path, set(mods)) if t.startswith(MODEL_INTERNALS)}
        assert not reached, f"{name} imports {sorted(reached)}"
        assert not re.search(r"\bvq\w*\.(model|config)\b", path.read_text()), f"{name} reaches into a VQGM"
    # the check can fail: the loader itself reaches the toy model's build
    assert {t for t in imports_of("cortex_nb.pipeline.models", mods["cortex_nb.pipeline.models"], set(mods))
            if t.startswith(MODEL_INTERNALS)}
