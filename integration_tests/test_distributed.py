"""Gates stay identical on every rank of a real 2-process DDP run under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, mode: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(tmp_path), mode]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_synced_gates_are_identical_on_every_rank(tmp_path):
    a, b = _run(tmp_path, "sync")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_without_sync_the_gates_drift_apart(tmp_path):
    a, b = _run(tmp_path, "nosync")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith(".fc"))


def test_sync_gates_needs_an_initialized_process_group():
    from torch import nn

    from wgates_plugin import StateError, WGates
    from wgates_plugin.distributed import sync_gates

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    wg = WGates(model, torch.randn(1, 3, 8, 8), target=0.8)
    with pytest.raises(StateError, match=r"needs torch.distributed initialized"):
        sync_gates(wg)
