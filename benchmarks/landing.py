"""Landing a FLOPs budget within a relative tolerance, by bisection over a nested family of prunings.

Every baseline pruning method of the benchmark has one knob (a per-layer ratio, or a global ratio
over a channel ranking). Turning the knob removes channels in a nested order, so the FLOPs of the
pruned network never go up as the knob goes up. A :class:`Path` enumerates the distinct prunings the
knob can produce (position 0 removes nothing, the last position removes the most), :func:`land`
bisects over the positions, measuring each candidate's FLOPs on a *physically pruned copy* with
:func:`~wgates_plugin.count_macs`, and stops at the first position whose FLOPs ratio is inside
``budget * (1 ± tolerance)``.

Two adjacent positions can jump over the window (several layers lose a channel at the same ratio, or
the next channel in a global ranking is an expensive one). Then the search *steps off the path*,
first downwards: from the position just above the window it removes single channels the path would
remove next, in the path's order, skipping any whose removal falls below the window, until it lands;
failing that, upwards: from the position just below the window it restores the channels the path
removed last, latest first, skipping any whose return rises above the window. The channels taken
off-path are reported, so the deviation from the pure rule is visible.

Conv and linear MACs depend on channel *counts* only (not on which channels are kept), so the meter
memoizes its measurements by the kept counts of the groups.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import torch
from torch import nn

from wgates_plugin.efficiency.flops import count_macs
from wgates_plugin.errors import BudgetError
from wgates_plugin.export import prune_groups
from wgates_plugin.groups import ChannelGroup

__all__ = ["Plan", "Window", "FlopsMeter", "Landing", "Path", "LayerwisePath", "GlobalPath", "land"]

Plan = dict[str, list[int]]  # group (root layer) name -> output indices of the root layer to remove
Step = tuple[str, int]  # one more channel removed: (group name, root output index)


@dataclass(frozen=True)
class Window:
    """The accepted FLOPs ratios: ``|achieved / budget - 1| <= tolerance``."""

    budget: float
    tolerance: float

    @property
    def low(self) -> float:
        return self.budget * (1 - self.tolerance)

    @property
    def high(self) -> float:
        return self.budget * (1 + self.tolerance)

    def contains(self, ratio: float) -> bool:
        return abs(ratio / self.budget - 1) <= self.tolerance


class FlopsMeter:
    """FLOPs ratio of a removal plan, measured on a physically pruned deep copy of ``model``.

    Args:
        model: the unpruned model (not modified).
        example: a batch it accepts, for tracing and counting.
        groups: the prunable groups (plans name them).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup]) -> None:
        self.model, self.example = model, example
        self.sizes = {g.name: g.size for g in groups}
        self.base = count_macs(model, example)
        self.calls = 0
        self.closest: float | None = None
        self._cache: dict[tuple[int, ...], float] = {}

    def __call__(self, plan: Plan, window: Window | None = None) -> float:
        self.calls += 1
        key = tuple(size - len(plan.get(name, ())) for name, size in self.sizes.items())
        if key not in self._cache:
            self._cache[key] = self.macs(plan) / self.base
        ratio = self._cache[key]
        if window is not None and (self.closest is None or
                                   abs(ratio / window.budget - 1) < abs(self.closest / window.budget - 1)):
            self.closest = ratio
        return ratio

    def macs(self, plan: Plan) -> int:
        """MACs of a deep copy of the model with ``plan`` removed."""
        pruned = copy.deepcopy(self.model)
        prune_groups(pruned, self.example, {k: torch.tensor(v, dtype=torch.long) for k, v in plan.items() if v})
        return count_macs(pruned, self.example)


@dataclass
class Landing:
    """Where the search stopped.

    Attributes:
        plan: the removal plan that lands in the window.
        achieved: its FLOPs ratio (pruned / unpruned MACs).
        knob: the knob value of the path position it started from.
        iterations: FLOPs measurements spent (bisection + off-path steps).
        off_path: channels changed off the path to land, as ``(group, root index, +1 removed / -1 restored)``.
    """

    plan: Plan
    achieved: float
    knob: float
    iterations: int
    off_path: list[tuple[str, int, int]] = field(default_factory=list)


class Path(Protocol):
    """A nested family of prunings; positions ``0 .. length``, FLOPs non-increasing along it."""

    length: int

    def plan(self, position: int) -> Plan: ...

    def knob(self, position: int) -> float: ...

    def next_steps(self, position: int) -> Iterable[Step]:
        """Single channels the path removes after ``position``, in its order."""
        ...

    def last_steps(self, position: int) -> Iterable[Step]:
        """Single channels the path removed up to ``position``, the latest first."""
        ...


class LayerwisePath:
    """The same ratio ``r`` in every group: a group of ``C`` channels loses ``min(C - 1, floor(r C + 1/2))``.

    Positions are the ratios where some group's count changes (``(k + 1/2) / C``), in increasing
    order; a plan keeps the first channels (what is removed is decided by the method afterwards,
    only the counts matter for FLOPs).
    """

    def __init__(self, groups: Sequence[ChannelGroup]) -> None:
        self.sizes = {g.name: g.size for g in groups}
        self.breaks = {g.name: [Fraction(2 * k + 1, 2 * g.size) for k in range(g.size - 1)] for g in groups}
        self.ratios = [Fraction(0)] + sorted({b for bs in self.breaks.values() for b in bs})
        self.length = len(self.ratios) - 1

    def removed(self, position: int) -> dict[str, int]:
        """Channels each group loses at ``position``."""
        r = self.ratios[position]
        return {name: bisect.bisect_right(bs, r) for name, bs in self.breaks.items()}

    def plan(self, position: int) -> Plan:
        return {n: list(range(self.sizes[n] - k, self.sizes[n])) for n, k in self.removed(position).items() if k}

    def knob(self, position: int) -> float:
        return float(self.ratios[position])

    def next_steps(self, position: int) -> Iterable[Step]:
        now, then = self.removed(position), self.removed(min(position + 1, self.length))
        return [(n, self.sizes[n] - then[n]) for n in self.sizes if then[n] > now[n]]

    def last_steps(self, position: int) -> Iterable[Step]:
        before, now = self.removed(max(position - 1, 0)), self.removed(position)
        return [(n, self.sizes[n] - now[n]) for n in self.sizes if now[n] > before[n]]


class GlobalPath:
    """One ranking over every channel of every group (lowest score removed first); each group keeps
    its best-scored channel. Position ``n`` removes the ``n`` lowest-ranked channels; the knob is the
    global ratio ``n / (all channels)``.

    Args:
        scores: ``{group name: (size,) scores in root output order}``; ties are broken by group
            order, then channel index.
    """

    def __init__(self, scores: dict[str, torch.Tensor]) -> None:
        self.total = sum(len(s) for s in scores.values())
        ranked = []
        for gi, (name, s) in enumerate(scores.items()):
            best = int(torch.argmax(s))
            ranked += [(float(v), gi, i, name) for i, v in enumerate(s.tolist()) if i != best]
        self.order: list[Step] = [(name, i) for _v, _g, i, name in sorted(ranked)]
        self.length = len(self.order)

    def plan(self, position: int) -> Plan:
        return _plan_of(self.order[:position])

    def knob(self, position: int) -> float:
        return position / self.total

    def next_steps(self, position: int) -> Iterable[Step]:
        return self.order[position:]

    def last_steps(self, position: int) -> Iterable[Step]:
        return self.order[:position][::-1]


def _plan_of(steps: Iterable[Step]) -> Plan:
    plan: Plan = {}
    for name, idx in steps:
        plan.setdefault(name, []).append(idx)
    return {k: sorted(v) for k, v in plan.items()}


def land(path: Path, meter: FlopsMeter, window: Window, method: str) -> Landing:
    """Bisect ``path`` for a FLOPs ratio in ``window``; step off the path if two positions jump over it.

    Raises:
        BudgetError: the path's smallest network is above the window, or no plan lands in it; the
            message names the method, the budget and the closest achieved ratio.
    """
    start = meter.calls
    lo, hi = 0, path.length
    for position in (hi, lo):
        ratio = meter(path.plan(position), window)
        if position == hi and ratio > window.high:
            raise BudgetError(f"method '{method}' cannot reach a FLOPs budget of {window.budget:g}: the smallest "
                              "network it can build (one channel left in every pruned group) keeps "
                              f"{ratio:.4f} of the FLOPs, the closest achieved ratio")
        if window.contains(ratio):
            return Landing(path.plan(position), ratio, path.knob(position), meter.calls - start)
    while hi - lo > 1:  # invariant: ratio(lo) above the window, ratio(hi) below it
        mid = (lo + hi) // 2
        ratio = meter(path.plan(mid), window)
        if window.contains(ratio):
            return Landing(path.plan(mid), ratio, path.knob(mid), meter.calls - start)
        lo, hi = (mid, hi) if ratio > window.high else (lo, mid)
    landing = _walk(path.plan(lo), path.next_steps(lo), +1, meter, window)
    landing = landing or _walk(path.plan(hi), path.last_steps(hi), -1, meter, window)
    if landing is None:
        raise BudgetError(f"method '{method}' cannot land within ±{100 * window.tolerance:g} % of a FLOPs budget "
                          f"of {window.budget:g}: its prunings jump over the window; the closest achieved ratio is "
                          f"{meter.closest:.4f}")
    landing.knob, landing.iterations = path.knob(lo if landing.off_path[0][2] > 0 else hi), meter.calls - start
    return landing


def _walk(plan: Plan, steps: Iterable[Step], sign: int, meter: FlopsMeter, window: Window) -> Landing | None:
    """Remove (``sign=+1``, from above the window) or restore (``-1``, from below) single channels in
    order, skipping any that would cross the window, until the ratio is inside it."""
    taken: list[tuple[str, int, int]] = []
    for name, idx in steps:
        others = [i for i in plan.get(name, []) if i != idx]
        trial = {**plan, name: sorted(others + [idx]) if sign > 0 else others}
        ratio = meter(trial, window)
        if (ratio < window.low) if sign > 0 else (ratio > window.high):
            continue
        plan, taken = trial, taken + [(name, idx, sign)]
        if window.contains(ratio):
            return Landing(plan, ratio, 0.0, 0, taken)
    return None
