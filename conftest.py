"""Test-session setup shared by tests/ and integration_tests/."""

import torch

# pytest-xdist runs one worker per core; intra-op threads on top of that oversubscribe the CPU.
torch.set_num_threads(1)
