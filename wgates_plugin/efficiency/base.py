"""The one extension point of the efficiency module: channel counts in, cost out."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["EfficiencyModel", "bind_efficiency"]


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


def bind_efficiency(efficiency: EfficiencyModel | Callable[[list[Any]], EfficiencyModel],
                    groups: Sequence[Any]) -> EfficiencyModel:
    """``efficiency`` for these gated ``groups``: a model as is, a factory called with them; checked.

    Raises:
        ConfigError: the model was built for other groups.
    """
    model = efficiency if isinstance(efficiency, EfficiencyModel) else efficiency(list(groups))
    names = tuple(g.name for g in groups)
    if tuple(model.group_names) != names:
        raise ConfigError(
            f"the efficiency model was built for groups {list(model.group_names)[:4]}..., "
            f"this model's gated groups are {list(names)[:4]}...; rebuild it for this model"
        )
    return model
