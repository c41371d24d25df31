"""What every step of a run does first: :func:`setup` (seed, threads, plot style, logging, the resolved profile and
the record of the modules used) and :func:`bind_profile` (the profile that tables and figures are written under)."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from omegaconf import DictConfig

from ..engine import distributed

__all__ = ["setup", "bind_profile", "log_stream"]


def setup(cfg: DictConfig) -> None:
    """Seed, thread count, plot style and logging for a step; the results directories are checked
    for writing first (:func:`cortex_nb.io.config.ensure_writable`), so a read-only place fails before
    any work. Writes the resolved profile (with seed, threads, torch version, CPU capability) as
    ``results/<profile>/profile.yaml`` and, under `make all`, registers the record of the modules
    this process used (:mod:`cortex_nb.io.deps`). With N processes on the machine (torchrun) each uses
    ``max(1, cfg.threads // N)`` threads and log lines name their rank."""
    from ..io import config
    from ..io import deps
    from ..io.figures import set_style

    config.ensure_writable(cfg)
    deps.record_on_exit()
    bind_profile(cfg)
    set_style()
    torch.set_num_threads(distributed.threads_per_process(int(cfg.threads)))
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    if distributed.is_main():
        config.write_resolved(cfg)
    if not logging.getLogger().handlers:
        who = f" [rank {os.environ.get('RANK', '0')}]" if distributed.launched() else ""
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{who} %(name)s: %(message)s", datefmt="%H:%M:%S",
                            stream=log_stream())


def bind_profile(cfg: DictConfig) -> None:
    """What every table and figure this process writes from now on takes from the profile: its provenance record
    names the profile and its hash, and under paper-dry it says its numbers are meaningless. :func:`setup` calls
    it, and the command line for every command (ledger and gates never call setup)."""
    from ..io import provenance

    provenance.set_profile(cfg)      # the table and figure writers read the dry-run banner from it


def log_stream():
    """Where log records go: stdout inside a Jupyter kernel (JupyterLab shows stderr in a red box, as if
    something had failed; these are progress records), stderr everywhere else."""
    import sys

    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is not None:
            return sys.stdout
    except ImportError:
        pass
    return sys.stderr
