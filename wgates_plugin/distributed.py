"""Keeping gates identical on every rank of a DistributedDataParallel run.

DDP averages the gradients of the parameters of the module it wraps; the gate parameters live in
:class:`~wgates_plugin.WGates`, outside the model, so they need the same treatment. After
:func:`sync_gates`, every gate parameter starts from rank 0's values and its gradient is averaged over
the ranks during ``backward()``, so an identical optimizer step keeps the gates identical everywhere.
The gates are computed from the conv weights, which DDP keeps identical, so equal gate parameters give
equal gates, equal channel counts and the same target-mode multiplier on every rank.

Example (inside a ``torchrun`` worker, after ``dist.init_process_group``)::

    wg = WGates(model, example_inputs, target=0.5)
    sync_gates(wg)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .errors import StateError
from .pruner import WGates

__all__ = ["sync_gates"]


def sync_gates(wg: WGates, group: dist.ProcessGroup | None = None) -> list[torch.utils.hooks.RemovableHandle]:
    """Broadcast rank 0's gate parameters and average gate gradients across ranks from now on.

    Args:
        wg: the gates of this rank's model replica.
        group: the process group (default: the world).

    Returns:
        The gradient-hook handles (``.remove()`` them to stop averaging).

    Raises:
        StateError: ``torch.distributed`` is not initialized.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise StateError("sync_gates() needs torch.distributed initialized (dist.init_process_group)")
    world = dist.get_world_size(group)
    handles = []
    for p in wg.parameters():
        with torch.no_grad():
            dist.broadcast(p.data, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        handles.append(p.register_hook(_averaging_hook(world, group)))
    return handles


def _averaging_hook(world: int, group: dist.ProcessGroup | None):  # type: ignore[no-untyped-def]
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
        return grad / world

    return hook
