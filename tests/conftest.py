import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same seeds; one thread (tiny tensors: threads only add overhead)."""
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    yield
