"""Budgets the host frameworks count in: weighted channel counts (NNI weight elements, torch-pruning channels).

NNI's ``global_group_id`` budget counts *weight elements* of the layers in the group; torch-pruning's
``global_pruning`` counts *channels*. Both are linear in the kept channel counts, so one small cost
model serves both: ``cost(c) = sum_g w_g * c_g``. A :class:`SharedBudget` lands such a cost on an
absolute budget: during training through a dual-ascent penalty (as the core's target mode), at the
end through the core's exact projection (:func:`~wgates_plugin.budget.project_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..budget import DualMultiplier, UnitBounds, minimum_cost, project_counts
from ..efficiency.base import EfficiencyModel
from ..errors import BudgetError

__all__ = ["LinearCostModel", "SharedBudget"]


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


@dataclass
class SharedBudget:
    """One shared budget over some gated groups (e.g. an NNI ``global_group_id``).

    Attributes:
        name: how messages refer to it.
        index: positions of its groups among the gated groups.
        model: the cost of those groups' kept channels.
        budget: the largest allowed cost (absolute, in ``model.unit``).
        multiplier: dual-ascent multiplier of the training-time penalty.
    """

    name: str
    index: list[int]
    model: LinearCostModel
    budget: float
    multiplier: DualMultiplier

    @property
    def target(self) -> float:
        """The budget as a fraction of the unpruned cost."""
        return self.budget / self.model.reference()

    def penalty(self, counts: torch.Tensor) -> torch.Tensor:
        """Training-time term for the gated groups' live counts ``(G_all,)``; updates the multiplier."""
        ratio = self.model(counts[self.index]) / self.model.reference()  # scalar
        return self.multiplier.penalty(ratio.to(counts.dtype))

    def check_feasible(self, bounds: Sequence[UnitBounds]) -> None:
        """Raise :class:`BudgetError` when even the per-layer minimums exceed the budget."""
        floor = minimum_cost(self.model, [bounds[i] for i in self.index])
        if floor > self.budget:
            raise BudgetError(
                f"{self.name}: the budget allows {self.budget:.6g} {self.model.unit}, but keeping every layer at "
                f"its minimum already needs {floor:.6g}; lower min keep ratios (max_sparse_ratio) or the ratio"
            )

    def project(self, units: list[int], bounds: Sequence[UnitBounds]) -> None:
        """Replace ``units`` of this budget's groups, in place, by counts that land on the budget exactly."""
        sub = project_counts(self.model, [units[i] for i in self.index], [bounds[i] for i in self.index], self.budget)
        for i, k in zip(self.index, sub):
            units[i] = k
