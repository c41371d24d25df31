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
