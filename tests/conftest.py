import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/zoo.py
# two test workers (pytest -n 2, what README runs) on two cores: one torch thread each
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small-input tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): a second thread gains nothing on them
    and loses much when the cores are busy; the setting before is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
