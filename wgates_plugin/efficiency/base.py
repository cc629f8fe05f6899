"""The one extension point of the efficiency module: channel counts in, cost out."""

from __future__ import annotations

import abc

import torch
from torch import nn

__all__ = ["EfficiencyModel"]


class EfficiencyModel(nn.Module, abc.ABC):
    """Maps the network encoding ``c`` (live channels per gated group, shape ``(G,)``) to a cost.

    Subclasses implement :meth:`cost`; it must be differentiable in ``counts`` so the efficiency loss
    can move the gates. ``group_names`` fixes which group each entry of ``counts`` belongs to, so an
    efficiency model built for one set of groups refuses another.
    """

    group_names: tuple[str, ...]
    unit: str = ""

    @abc.abstractmethod
    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        """Cost of the network whose gated groups keep ``counts`` channels, a scalar tensor."""

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return self.cost(counts)

    def reference(self) -> float:
        """Cost of the unpruned network."""
        return float(self.cost(self.full_counts()))

    @abc.abstractmethod
    def full_counts(self) -> torch.Tensor:
        """The encoding of the unpruned network, shape ``(G,)``."""
