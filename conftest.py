"""Test-session setup shared by tests/ and integration_tests/."""

import pytest
import torch

# pytest-xdist runs one worker per core; intra-op threads on top of that oversubscribe the CPU.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One intra-op thread during the test, whatever an earlier test left set; restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
