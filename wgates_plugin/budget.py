"""Landing a budget: the target-mode multiplier and the exact projection onto the budget.

The projection keeps the per-layer shape the gates learned: every group's kept count is scaled by one
common factor ``t`` (clamped to its bounds), ``t`` is found by bisection as the largest factor whose
cost fits the budget, then single channels are added back, most-shrunk group first, while the budget
still holds. Inside a group the best-scored channels are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .efficiency.base import EfficiencyModel
from .errors import BudgetError

__all__ = ["UnitBounds", "project_counts", "DualMultiplier"]


@dataclass(frozen=True)
class UnitBounds:
    """Kept-unit bounds of one group; a unit is ``tie`` channels that are kept or removed together."""

    low: int
    high: int
    tie: int


def _channels(units: Sequence[int], bounds: Sequence[UnitBounds]) -> torch.Tensor:
    return torch.tensor([float(u * b.tie) for u, b in zip(units, bounds)], dtype=torch.float64)


def _cost(model: EfficiencyModel, units: Sequence[int], bounds: Sequence[UnitBounds]) -> float:
    with torch.no_grad():
        return float(model.cost(_channels(units, bounds).to(torch.float32)))


def _scaled(start: Sequence[int], bounds: Sequence[UnitBounds], t: float) -> list[int]:
    return [min(max(round(t * s), b.low), b.high) for s, b in zip(start, bounds)]


def minimum_cost(model: EfficiencyModel, bounds: Sequence[UnitBounds]) -> float:
    return _cost(model, [b.low for b in bounds], bounds)


def project_counts(
    model: EfficiencyModel,
    start: Sequence[int],
    bounds: Sequence[UnitBounds],
    budget: float,
) -> list[int]:
    """Kept units per group whose cost is the largest reachable one not above ``budget``.

    Args:
        model: the efficiency model (cost of channel counts).
        start: the units the gates keep now (their shape is preserved).
        bounds: per-group unit bounds.
        budget: the cost to land on (absolute, same unit as ``model``).

    Raises:
        BudgetError: when even the minimum allowed counts exceed ``budget``.
    """
    floor = minimum_cost(model, bounds)
    if floor > budget:
        raise BudgetError(
            f"budget {budget:.4g} {model.unit} is below the cheapest network the bounds allow "
            f"({floor:.4g}); lower the per-layer minimum keep ratios or raise the target"
        )
    start = [max(s, 1) for s in start]
    lo, hi = 0.0, max(b.high / s for s, b in zip(start, bounds))
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _cost(model, _scaled(start, bounds, mid), bounds) <= budget else (lo, mid)
    units = _scaled(start, bounds, lo)
    return _top_up(model, units, start, bounds, budget)


def _top_up(model, units, start, bounds, budget) -> list[int]:
    """Add single units, to the group furthest below its learned share first, while within budget."""
    units = list(units)
    while True:
        order = sorted(range(len(units)), key=lambda i: units[i] / start[i])
        for i in order:
            if units[i] >= bounds[i].high:
                continue
            units[i] += 1
            if _cost(model, units, bounds) <= budget:
                break
            units[i] -= 1
        else:
            return units


class DualMultiplier:
    """The ``TARGET``-mode controller.

    Loss term ``lambda * |ratio - target| / target``: above the target it pushes the cost down, below
    it pushes it back up, with the same strength. The multiplier follows
    ``lambda <- max(0, lambda + rate * (ratio - target) / target)``: it grows while the network is
    above budget and shrinks while it is below. (A plain Lagrangian term ``lambda * (ratio - target)``
    keeps pushing down after the target is passed until ``lambda`` has decayed, and the gates
    overshoot far below the budget.)
    """

    def __init__(self, initial: float, rate: float, target: float) -> None:
        self.value = float(initial)
        self.rate = rate
        self.target = target

    def penalty(self, ratio: torch.Tensor) -> torch.Tensor:
        """The loss term for the current cost ratio; updates the multiplier from the detached ratio."""
        term = self.value * (ratio - self.target).abs() / self.target
        self.value = max(0.0, self.value + self.rate * (float(ratio.detach()) - self.target) / self.target)
        return term
