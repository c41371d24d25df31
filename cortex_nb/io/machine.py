"""The machine a result was computed on: CPU model, capability, versions and threads.

Floats differ between CPU classes and thread counts, so results are byte-identical only within one of each;
every resolved profile (:func:`cortex_nb.io.config.write_resolved`) and provenance record
(:mod:`cortex_nb.io.provenance`) says which. Imports nothing of the package but its version.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["run_info", "cpu_model"]


def run_info() -> dict:
    """What a result depends on besides the profile: versions, CPU capability and thread count
    (floats differ between CPU classes and thread counts, so results are byte-identical only
    within one of each)."""
    import platform

    import torch

    from .. import __version__

    return {"cortex_nb": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "machine": platform.machine()}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere platform.processor()), or 'unknown'."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
