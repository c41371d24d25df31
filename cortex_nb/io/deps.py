"""Which package modules a pipeline stage really used, for `make all`'s incremental rule.

`make all` runs each notebook with ``CORTEX_STAGE_DEPS=<file>:<target>`` in the environment.
The pipeline's ``setup`` (:func:`cortex_nb.pipeline.run.setup`, called at the start of every
section and builder) then registers an exit hook in the notebook's kernel, once, that writes a
Make rule ``<target>: cortex_nb/a.py cortex_nb/pipeline/b.py ...`` listing every ``cortex_nb``
module the kernel imported (lazy imports inside functions and the package's lazily imported names
included, since they are in ``sys.modules`` by the end), plus an empty rule per file so a deleted
module never breaks `make` (as ``gcc -MP``). Importing the package registers nothing.
The Makefile includes these files: a stage reruns when its notebook, the profile or one of *its*
modules changed. Until a stage has run once (no file yet) every module counts.

Without the variable (nbval, JupyterLab, tests) nothing is registered.
"""
from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

__all__ = ["ENV", "loaded_module_files", "make_rule", "record_on_exit"]

ENV = "CORTEX_STAGE_DEPS"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


_REGISTERED: set[tuple[str, str]] = set()   # (file, target) hooks registered by this process


def loaded_module_files(modules: dict | None = None) -> list[Path]:
    """Source files of the ``cortex_nb`` modules (subpackages included) present in ``modules``
    (default ``sys.modules``)."""
    out = set()
    for name, mod in list((sys.modules if modules is None else modules).items()):
        if name != "cortex_nb" and not name.startswith("cortex_nb."):
            continue
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve().is_relative_to(PACKAGE_DIR):
            out.add(Path(f).resolve())
    return sorted(out)


def make_rule(target: str, files: list[Path], root: Path) -> str:
    """``target: f1 f2`` followed by ``f1:`` / ``f2:`` empty rules; paths relative to ``root``."""
    rel = [os.path.relpath(f, root) for f in files]
    return f"{target}: {' '.join(rel)}\n" + "".join(f"{r}:\n" for r in rel)


def _write(path: Path, target: str) -> None:
    from .files import save_text

    root = PACKAGE_DIR.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, make_rule(target, loaded_module_files(), root))


def record_on_exit() -> bool:
    """Register the exit hook when ``$CORTEX_STAGE_DEPS`` is ``<file>:<make target>`` (once per
    process and value: calling it again adds no second hook). True when a hook is registered."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    path, sep, target = spec.rpartition(":")
    if not sep or not path or not target:
        raise ValueError(f"{ENV} must be '<file>:<make target>', got {spec!r}")
    if (path, target) not in _REGISTERED:
        _REGISTERED.add((path, target))
        atexit.register(_write, Path(path), target)
    return True
