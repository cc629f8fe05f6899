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
    params = list(wg.parameters())
    for p in params:
        with torch.no_grad():
            dist.broadcast(p.data, src=dist.get_global_rank(group, 0) if group else 0, group=group)
    averager = _GradAverager(params, world, group)
    return [p.register_hook(averager.hook(i)) for i, p in enumerate(params)]


class _GradAverager:
    """Averages the gate gradients of each backward over the ranks, in one all-reduce at its end.

    A collective issued from inside an autograd hook interleaves with DDP's bucket all-reduces, and
    the interleaving can differ between ranks: with gloo, two ranks then wait on different
    collectives forever (seen on torch 2.1 with another job on the cores). Queued as a callback of
    the backward, the all-reduce runs after every gradient (and so every DDP bucket) was computed,
    last on every rank. Only this backward's contribution is averaged: gradients accumulated by
    earlier backwards are left as they are. The hook holds this backward's gradient back (autograd
    accumulates zeros) and the mean is added at the end, so every rank ends with bit-identical
    gradients (adding ``mean - local`` to ``local`` would round differently on every rank).
    """

    def __init__(self, params: list[torch.nn.Parameter], world: int, group: dist.ProcessGroup | None) -> None:
        self.params, self.world, self.group = params, world, group
        self.pending: dict[int, torch.Tensor] = {}  # parameter index -> this backward's gradient

    def hook(self, index: int):  # type: ignore[no-untyped-def]
        def record(grad: torch.Tensor) -> torch.Tensor:
            if not self.pending:
                torch.autograd.Variable._execution_engine.queue_callback(self.average)
            self.pending[index] = grad.detach().clone()
            return torch.zeros_like(grad)

        return record

    def average(self) -> None:
        items, self.pending = sorted(self.pending.items()), {}
        flat = torch.cat([g.reshape(-1) for _, g in items])  # (sum of numels,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat /= self.world
        mean = torch.split(flat, [g.numel() for _, g in items])
        with torch.no_grad():
            for (index, local), avg in zip(items, mean):
                param = self.params[index]
                if param.grad is None:
                    param.grad = avg.view_as(local).clone()
                else:  # earlier gradients (+ the zeros held back): add the mean
                    param.grad.add_(avg.view_as(local))
