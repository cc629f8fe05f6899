"""The space of pruned candidates of a model: which groups, how many channels each may keep, and how
a candidate is built physically.

A candidate architecture is a network encoding ``c`` (live channels per gated group, in the order
:class:`~wgates_plugin.WGates` uses). It is built by removing the last channels of every group from a
copy of the model through torch-pruning: which channels does not matter for latency, and grouped convs
lose the same channels in each of their conv groups so they stay valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..budget import UnitBounds
from ..config import WGatesConfig
from ..errors import ConfigError
from ..export import export_pruned
from ..groups import gated_groups

__all__ = ["CandidateSpace"]


class CandidateSpace:
    """The prunable groups of a model and the channel counts each may keep.

    Groups and bounds are exactly those :class:`~wgates_plugin.WGates` gates with ``config``.

    Args:
        model: the unpruned model (not modified).
        example_inputs: a batch it accepts, for tracing (batch >= 2 if BN runs in train mode).
        config: selects groups and bounds (``prune_shortcuts``, ``bounds``, ``exclude`` ...).
        select: the ``select`` argument of ``WGates``.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: WGatesConfig | None = None,
                 select: Callable[[str, nn.Module], bool] | None = None) -> None:
        config = config or WGatesConfig()
        self.model = model
        self.example_inputs = example_inputs
        self.config = config
        _, self.groups = gated_groups(model, example_inputs, select, **config.selection())
        self.bounds = [UnitBounds.of(g, b.min_keep, b.max_keep)
                       for g, b in ((g, config.bounds_for(g.layer_names)) for g in self.groups)]

    @property
    def sizes(self) -> list[int]:
        return [g.size for g in self.groups]

    def full_counts(self) -> list[int]:
        return self.sizes

    def sample(self, index: int, seed: int = 0, spread: float = 0.5) -> list[int]:
        """Channel counts of candidate ``index`` (deterministic in ``seed`` and ``index``).

        A center ``u ~ U(0, 1)`` is drawn per candidate and every group keeps the point
        ``clip(u + U(-spread, spread), 0, 1)`` of its ``[min, max]`` unit range: ``spread = 0``
        prunes every group by the same fraction of its range, ``spread >= 1`` draws groups nearly
        independently. Mixing both covers the uniform-looking and the lopsided architectures
        pruning visits.
        """
        rng = np.random.default_rng([seed, index])
        center = rng.uniform()
        pos = np.clip(center + rng.uniform(-spread, spread, len(self.bounds)), 0.0, 1.0)
        return [int(round(b.low + p * (b.high - b.low))) * b.tie for p, b in zip(pos, self.bounds)]

    def check_counts(self, counts: Sequence[int]) -> None:
        """Raise ConfigError unless ``counts`` is a valid encoding of this space."""
        if len(counts) != len(self.groups):
            raise ConfigError(f"counts has {len(counts)} entries, the model has {len(self.groups)} gated groups")
        for g, b, c in zip(self.groups, self.bounds, counts):
            if c % b.tie or not b.low <= c // b.tie <= b.high:
                raise ConfigError(f"group '{g.name}' cannot keep {c} channels: allowed multiples of {b.tie} "
                                  f"in [{b.low * b.tie}, {b.high * b.tie}]")

    def build(self, counts: Sequence[int]) -> nn.Module:
        """A physically pruned copy of the model keeping ``counts[i]`` channels of group ``i``: the last
        units of every group (in every conv group) go, through :func:`~wgates_plugin.export.export_pruned`."""
        self.check_counts(counts)
        keep = [(torch.arange(g.size) % (g.size // b.tie) < c // b.tie).float()  # (C,)
                for g, b, c in zip(self.groups, self.bounds, counts)]
        return export_pruned(self.model, self.example_inputs, self.groups, keep, verify=False)[0].eval()
