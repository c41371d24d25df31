import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same seeds; two threads as on the CI machine."""
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    yield
