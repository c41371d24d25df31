import os

import numpy as np
import pytest
import torch

#: torch intra-op threads for every test: 1 by default (tiny tensors: threads only add overhead);
#: ``CORTEX_TEST_THREADS=2 pytest tests`` runs the suite as a 2-core user's default would, where
#: reductions split differently. Tolerances must hold at either count.
THREADS = int(os.environ.get("CORTEX_TEST_THREADS", "1"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same seeds and thread count (``CORTEX_TEST_THREADS``, default 1)."""
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(THREADS)
    yield

# a figure with text over text or a wide empty band fails the test that saves it (cortex_nb.io.figures.save_figure)
os.environ.setdefault("CORTEX_STRICT_FIGURES", "1")


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` -> a directory that is a tmpfs of ``size`` ("64k", "256k", ...; unmounted after the test), for
    tests of a really full device. Needs root (mount): the test is skipped where it cannot mount."""
    import subprocess

    mounted = []

    def make(size: str):
        path = tmp_path / f"tmpfs-{len(mounted)}"
        path.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root to mount a tmpfs")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
