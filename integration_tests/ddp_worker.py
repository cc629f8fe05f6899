"""A torchrun worker: DDP training with W-Gates on CPU (gloo); writes its gates for the test to compare.

Usage: python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT_DIR sync|nosync
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from wgates_plugin import WGates
from wgates_plugin.distributed import sync_gates


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def main(out: Path, sync: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # identical initial weights on every rank
    model = build()
    wg = WGates(model, torch.randn(2, 3, 12, 12), target=0.5)
    torch.manual_seed(100 + rank)  # different gate init and different data per rank
    with torch.no_grad():
        for p in wg.parameters():
            p.add_(0.01 * torch.randn_like(p))
    if sync:
        sync_gates(wg)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(list(model.parameters()) + list(wg.parameters()), lr=0.05)
    for _ in range(6):
        x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(ddp(x), y) + wg.efficiency_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v for k, v in wg.state_dict().items() if torch.is_tensor(v)}
    state["counts"] = wg.counts().detach()
    state["multiplier"] = torch.tensor(wg.multiplier.value)
    torch.save(state, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "sync")
