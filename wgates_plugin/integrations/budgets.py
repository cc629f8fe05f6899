"""Budgets the host frameworks count in: weighted channel counts (NNI weight elements, torch-pruning channels).

NNI's ``global_group_id`` budget counts *weight elements* of the layers in the group; torch-pruning's
``global_pruning`` counts *channels*. Both are linear in the kept channel counts, so one small cost
model serves both: ``cost(c) = sum_g w_g * c_g``. A :class:`SharedBudget` lands such a cost on an
absolute budget: during training through a dual-ascent penalty (as the core's target mode), at the
end through the core's exact projection (:func:`~wgates_plugin.budget.project_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..efficiency.base import EfficiencyModel

__all__ = ["LinearCostModel"]


class LinearCostModel(EfficiencyModel):
    """``cost(c) = sum_g weights[g] * c[g]``: a budget counted in weighted channels.

    Args:
        group_names: the groups the encoding covers, in order.
        sizes: channels of every group (the unpruned encoding), shape ``(G,)``.
        weights: cost of one kept channel of every group, shape ``(G,)``.
        unit: what the cost counts (for messages).
    """

    sizes: torch.Tensor
    weights: torch.Tensor

    def __init__(self, group_names: Sequence[str], sizes: Sequence[int], weights: Sequence[float], unit: str) -> None:
        super().__init__()
        self.group_names = tuple(group_names)
        self.unit = unit
        self.register_buffer("sizes", torch.tensor([float(s) for s in sizes]))
        self.register_buffer("weights", torch.tensor([float(w) for w in weights], dtype=torch.float64))

    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        """The weighted count, in float64 so that budgets of millions of elements stay exact."""
        return (counts.to(torch.float64) * self.weights.to(counts.device)).sum()

    def full_counts(self) -> torch.Tensor:
        return self.sizes.clone()
