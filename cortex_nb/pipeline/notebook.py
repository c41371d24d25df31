"""One stage of `make all`: a notebook executed by papermill, and its failure told as the project tells a failure.

``python -m cortex_nb.pipeline.notebook IN OUT -p profile P [--cwd DIR] [--kernel K] [--execution-timeout S]``
runs papermill's own ``execute_notebook`` (the options of its command line that the Makefile uses, and its cell
log). What differs is the end of a failed run:

- a cell that raised one of the project's own errors (:class:`~cortex_nb.errors.UserError` and its kinds: a bad
  profile value, a missing or damaged file, a full disk) is reported as that error's message and fix, one line each,
  with the stage and the cell, instead of papermill's traceback of the kernel and of itself;
- papermill saves the executed notebook after every cell, beside the results; on a full device that save fails
  (and hides the cell's own error): this is reported as :class:`~cortex_nb.errors.DiskFullError` naming the
  notebook and what is free there;
- any other error keeps papermill's report with its traceback: a bug needs it.

The kernel talks to papermill over Unix sockets (jupyter_client's ``ipc`` transport, at a short path of this process'
own), not TCP: `make all` starts two stages' kernels at once, and over TCP each picks "free" ports that the other can
take before it binds them (measured: a fresh clone's `make all` lost stage 03 to ``ZMQError: Address already in use``
and a 60 s wait for a kernel that had died).

The exit status is 1 for a failure reported here, papermill's otherwise.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main", "user_error_names"]


def user_error_names() -> set[str]:
    """The class names of :class:`~cortex_nb.errors.UserError` and of every kind of it the package defines (the
    modules that define one are imported, so that their subclasses exist)."""
    import importlib

    from ..errors import UserError

    for module in ("io.config", "io.figures", "io.store", "vqgm.protocol", "vqgm.taming_config", "method.evaluators"):
        importlib.import_module(f"cortex_nb.{module}")

    out, todo = set(), [UserError]
    while todo:
        c = todo.pop()
        out.add(c.__name__)
        todo.extend(c.__subclasses__())
    return out


def _stage(path: str) -> str:
    name = Path(path).name
    return name.split(".", 1)[0] if name else path


def _ipc_config():
    """The kernel's sockets: Unix sockets under the temporary directory, named by this process (one kernel each; a
    short path, under the 107 characters a socket path may have), which jupyter_client removes at shutdown."""
    import os
    import tempfile

    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc",
                                     "ip": os.path.join(tempfile.gettempdir(), f"cortex-kernel-{os.getpid()}")}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cortex_nb.pipeline.notebook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--cwd")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--execution-timeout", type=int)
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")     # papermill's cell log, as its CLI shows it
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ..errors import DiskFullError
    from ..io.files import device_full, disk_full

    stage = _stage(args.input)
    try:
        pm.execute_notebook(args.input, args.output, parameters=dict(args.parameters), cwd=args.cwd,
                            kernel_name=args.kernel, execution_timeout=args.execution_timeout, log_output=True,
                            progress_bar=False, config=_ipc_config())
    except PapermillExecutionError as e:
        if e.ename not in user_error_names():
            raise
        text = " ".join(str(e.evalue).split())
        message, _, fix = text.partition(" -- fix: ")
        print(f"cortex-nb: {stage} stopped in cell {e.exec_count}: {e.ename}: {message}"
              + (f"\n  fix: {fix}" if fix else ""), file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        import shutil

        free = None
        try:
            free = shutil.disk_usage(Path(args.output).resolve().parent).free
        except OSError:
            pass
        full = None if isinstance(e, DiskFullError) else device_full(e, free)
        if full is None:
            raise
        err = disk_full(Path(args.output), full)
        print(f"cortex-nb: {stage}: papermill could not save the executed notebook: {err.one_line()}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
