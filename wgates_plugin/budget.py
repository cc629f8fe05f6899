"""Landing a budget: the one budget-landing API (:class:`Budget`, :func:`land`), the exact projection
onto a budget, and the target-mode multiplier.

The projection keeps the per-layer shape the gates learned: every group's kept count is scaled by one
common factor ``t`` (clamped to its bounds), ``t`` is found by bisection as the largest factor whose
cost fits the budget, then single channels are added back, most-shrunk group first, while the budget
still holds. Inside a group the best-scored channels are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .efficiency.base import EfficiencyModel
from .errors import BudgetError
from .groups import ChannelGroup

__all__ = ["UnitBounds", "Budget", "land", "units_cost", "minimum_cost", "project_counts", "DualMultiplier"]


@dataclass(frozen=True)
class UnitBounds:
    """Kept-unit bounds of one group; a unit is ``tie`` channels that are kept or removed together.

    With ``step > 1`` the kept units are a multiple of ``step`` or all ``high`` of them (a channel
    count rounded for the hardware, ``round_to``); :attr:`least`, :meth:`snap` and :meth:`next_up`
    are the allowed values.
    """

    low: int
    high: int
    tie: int
    step: int = 1

    @property
    def least(self) -> int:
        """The fewest units allowed: ``low`` rounded up to a multiple of ``step`` (at most ``high``)."""
        return min(self.high, -(-self.low // self.step) * self.step)

    def snap(self, units: float) -> int:
        """The allowed value nearest ``units`` (a multiple of ``step`` in ``[least, high]``, or ``high``)."""
        below = int(units // self.step) * self.step
        above = min(self.high, below + self.step)
        v = below if units - below <= above - units else above
        return min(max(v, self.least), self.high)

    def next_up(self, units: int) -> int:
        """The smallest allowed value above ``units`` (``high`` at most)."""
        return min(self.high, (units // self.step + 1) * self.step)

    @staticmethod
    def step_for(tie: int, round_to: int) -> int:
        """Units per step so that kept channels (``units * tie``) are multiples of ``round_to``."""
        return math.lcm(tie, round_to) // tie

    @classmethod
    def of(cls, group: ChannelGroup, min_keep: float = 0.0, max_keep: float = 1.0, min_channels: int = 1) -> UnitBounds:
        """The bounds of ``group`` keeping a fraction in ``[min_keep, max_keep]`` and ``>= min_channels``."""
        units = group.size // group.tie
        low = max(1, math.ceil(min_keep * units - 1e-9), math.ceil(min_channels / group.tie))
        low = min(low, units)
        return cls(low, max(low, math.floor(max_keep * units + 1e-9)), group.tie)


def units_cost(model: EfficiencyModel, units: Sequence[int], bounds: Sequence[UnitBounds]) -> float:
    """The cost of keeping ``units[i]`` units (``tie`` channels each) of every group."""
    with torch.no_grad():
        return float(model.cost(torch.tensor([float(u * b.tie) for u, b in zip(units, bounds)])))


def _scaled(start: Sequence[int], bounds: Sequence[UnitBounds], t: float) -> list[int]:
    return [b.snap(t * s) for s, b in zip(start, bounds)]


def minimum_cost(model: EfficiencyModel, bounds: Sequence[UnitBounds]) -> float:
    return units_cost(model, [b.least for b in bounds], bounds)


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
        lo, hi = (mid, hi) if units_cost(model, _scaled(start, bounds, mid), bounds) <= budget else (lo, mid)
    units = _scaled(start, bounds, lo)
    return _top_up(model, units, start, bounds, budget)


def _top_up(model, units, start, bounds, budget) -> list[int]:
    """Add single steps, to the group furthest below its learned share first, while within budget."""
    units = list(units)
    while True:
        order = sorted(range(len(units)), key=lambda i: units[i] / start[i])
        for i in order:
            if units[i] >= bounds[i].high:
                continue
            before = units[i]
            units[i] = bounds[i].next_up(before)
            if units_cost(model, units, bounds) <= budget:
                break
            units[i] = before
        else:
            return units


@dataclass
class Budget:
    """A limit on the cost of some gated groups, landed exactly by :func:`land` and, with a
    ``multiplier``, pushed toward during training by the :meth:`penalty` term.

    Attributes:
        model: the cost model of those groups' channel counts.
        limit: the largest allowed cost (absolute, in ``model.unit``).
        index: positions of its groups in the encoding; ``None`` = every gated group.
        name: how messages refer to it.
        multiplier: the dual-ascent controller of the training-time penalty (None: landing only).
    """

    model: EfficiencyModel
    limit: float
    index: list[int] | None = None
    name: str = "target"
    multiplier: DualMultiplier | None = None
    reference: float = field(init=False)  # the unpruned cost
    _last_ratio: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.reference = self.model.reference()

    @classmethod
    def fraction(cls, model: EfficiencyModel, target: float, index: list[int] | None = None,
                 name: str | None = None, multiplier: DualMultiplier | None = None) -> Budget:
        """The budget of keeping ``target`` (a fraction in (0, 1]) of ``model``'s unpruned cost."""
        return cls(model, target * model.reference(), index, name or f"target={target}", multiplier)

    @property
    def target(self) -> float:
        """The limit as a fraction of the unpruned cost."""
        return self.limit / self.reference

    def positions(self, groups: int) -> list[int]:
        return list(range(groups)) if self.index is None else list(self.index)

    def ratio(self, counts: torch.Tensor) -> torch.Tensor:
        """The cost of the live ``counts`` of every gated group ``(G,)``, as a fraction of the unpruned."""
        return self.model(counts if self.index is None else counts[self.index]) / self.reference

    def penalty(self, counts: torch.Tensor) -> torch.Tensor:
        """The training-time term of :class:`DualMultiplier` (the multiplier moves in :meth:`update`)."""
        assert self.multiplier is not None
        ratio = self.ratio(counts)
        self._last_ratio = float(ratio.detach())
        return self.multiplier.penalty(ratio.to(counts.dtype))

    def update(self) -> None:
        """The multiplier's dual step from the ratio of the last penalty (no penalty since: no step)."""
        if self.multiplier is not None and self._last_ratio is not None:
            self.multiplier.update(self._last_ratio)
        self._last_ratio = None

    def check_feasible(self, bounds: Sequence[UnitBounds]) -> None:
        """Raise :class:`BudgetError` when even the per-group minimums exceed the limit."""
        floor = minimum_cost(self.model, [bounds[i] for i in self.positions(len(bounds))])
        if floor > self.limit:
            raise BudgetError(
                f"{self.name}: the budget allows {self.limit:.6g} {self.model.unit}, but keeping every layer at "
                f"its minimum already needs {floor:.6g}; lower min keep ratios (max_sparse_ratio) or the ratio"
            )


def land(units: Sequence[int], bounds: Sequence[UnitBounds], budgets: Sequence[Budget]) -> list[int]:
    """Kept units per group that land on every budget: each budget's groups are projected onto it.

    Args:
        units: the units every gated group keeps now (the learned shape to preserve), ``(G,)``.
        bounds: per-group unit bounds.
        budgets: the budgets to land on (their groups must not overlap).

    Raises:
        BudgetError: a budget is below the cheapest network its bounds allow.
    """
    out = list(units)
    for b in budgets:
        idx = b.positions(len(out))
        sub = project_counts(b.model, [out[i] for i in idx], [bounds[i] for i in idx], b.limit)
        for i, k in zip(idx, sub):
            out[i] = k
    return out


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
        """The loss term for the current cost ratio (the multiplier is not changed: see :meth:`update`)."""
        return self.value * (ratio - self.target).abs() / self.target

    def update(self, ratio: float) -> None:
        """One dual-ascent step from the cost ratio the last penalty was computed at."""
        self.value = max(0.0, self.value + self.rate * (float(ratio) - self.target) / self.target)
