"""Closed-loop landing on *measured* latency: freeze, export, time the exported network on the device,
correct the budget from the measurement, until the measured latency (the median of the timed forwards,
or the cost model's ``Timing.statistic``) is within a tolerance of the target.

A latency predictor (LPNet) is a model of the device; the exported network's real latency can differ
from its prediction by more than the budget's tolerance. :func:`land_on_latency` closes the loop: the
budget the gates are frozen at is moved by a secant step on (budget, measured latency) until the
measured latency lands within ``tolerance`` of the target, or the closest network found is kept and
the gap reported. Every round's prediction, measurement and the measurement's own spread are in
the report.

Example (a deterministic clock stands in for the device: latency = MACs plus a fixed cost per layer,
so it is not proportional to the FLOPs the budget is expressed in):
    >>> import torch, torchvision
    >>> from wgates_plugin import WGates
    >>> from wgates_plugin.efficiency.timing import SimulatedClock, Timing, measure_times
    >>> from wgates_plugin.latency_landing import land_on_latency
    >>> model = torchvision.models.resnet18(num_classes=10).eval()
    >>> x = torch.randn(1, 3, 32, 32)
    >>> wg = WGates(model, x, target=0.5)
    >>> with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
    ...     device = lambda m: measure_times(m, x, Timing(warmup=0, repeats=3))
    ...     landing = land_on_latency(wg, 0.5, device, reference_ms=sorted(device(model))[1])
    >>> landing.within, abs(landing.measured_ratio / 0.5 - 1) <= 0.03
    (True, True)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .budget import Budget
from .errors import ConfigError
from .pruner import WGates
from .utils import check_number

__all__ = ["LandingRound", "LatencyLanding", "land_on_latency"]

Measure = Callable[[nn.Module], list[float]]  # exported network -> timed forwards (ms)


@dataclass
class LandingRound:
    """One freeze–export–measure round."""

    budget: float  # the efficiency-model budget frozen at, a fraction of its unpruned cost
    predicted_ms: float | None  # the cost model's prediction (latency models only)
    measured_ms: float  # the timed forwards' median (the cost model's Timing.statistic, where it has one)
    spread_ms: float  # half the interquartile range of the timed forwards: the measurement's own noise
    reference_ms: float | None = None  # the unpruned model measured around this round's (``reference=``)


@dataclass
class LatencyLanding:
    """The result of :func:`land_on_latency`."""

    model: nn.Module  # the exported network of the chosen round
    target: float
    reference_ms: float
    tolerance: float
    rounds: list[LandingRound] = field(default_factory=list)
    chosen: int = 0

    @property
    def measured_ratio(self) -> float:
        return _ratio(self.rounds[self.chosen], self.reference_ms)

    @property
    def within(self) -> bool:
        return abs(self.measured_ratio / self.target - 1) <= self.tolerance

    def report(self) -> dict[str, Any]:
        """JSON-serializable: target, reference, every round, the chosen one and the gap."""
        measured = self.rounds[self.chosen].reference_ms if self.rounds else None
        reference = measured if measured is not None else self.reference_ms
        return {"target": self.target, "target_ms": self.target * reference,
                "reference_ms": reference, "tolerance": self.tolerance, "chosen": self.chosen,
                "measured_ratio": self.measured_ratio, "within": self.within,
                "gap_pct": 100 * (self.measured_ratio / self.target - 1), "rounds": [asdict(r) for r in self.rounds]}


def land_on_latency(wg: WGates, target: float, measure: Measure, reference_ms: float | None = None,
                    tolerance: float = 0.03, rounds: int = 6, reference: nn.Module | None = None) -> LatencyLanding:
    """Freeze ``wg`` so that its exported network's *measured* latency is ``target`` of the reference.

    Args:
        wg: trained W-Gates (frozen or not; its gates are re-frozen each round).
        target: the latency budget, a fraction in (0, 1] of ``reference_ms``.
        measure: times an exported network on the device: its timed forwards in ms (e.g.
            ``LatencyPredictor.measure_times``, or :func:`~wgates_plugin.efficiency.timing.measure_times`).
        reference_ms: the unpruned network's measured latency (default: the cost model's reference,
            which a latency model measured).
        tolerance: the measured latency must be within ``target * (1 ± tolerance)``.
        rounds: the most freeze–export–measure rounds.
        reference: the unpruned model (without gates). When given, every round measures it right
            before and right after the exported network and takes the round's ratio against the mean
            of the two, so a device whose speed drifts (other jobs on a shared machine, thermal
            throttling) moves both alike (a linear drift cancels exactly); the report's
            ``reference_ms`` is then the chosen round's measurement of it.

    Returns:
        A :class:`LatencyLanding`; ``wg`` is left frozen at the chosen round's budget. When no round
        lands within the tolerance, the chosen one is the closest at or below the target (else the
        fastest), and ``within`` is False.

    Raises:
        ConfigError: a value out of range.
    """
    check_number("target", target, "(0, 1]", what="", type_error=ConfigError)
    check_number("tolerance", tolerance, "(0, 0.5)", what="", type_error=ConfigError)
    check_number("rounds", rounds, ">= 1", integer=True, type_error=ConfigError)
    ref_ms = float(wg.efficiency.reference() if reference_ms is None else reference_ms)
    check_number("reference_ms", ref_ms, "> 0", type_error=ConfigError)
    floor = wg.floor_ratio()
    landing = LatencyLanding(wg, target, ref_ms, tolerance)  # model replaced below
    summary = getattr(wg.efficiency, "summary", statistics.median)  # as the cost model's latencies were taken
    points: list[tuple[float, float]] = []  # (budget, measured ratio)
    models: list[nn.Module] = []
    budget = max(target, floor)
    for _ in range(rounds):
        pruned = _freeze_and_export(wg, budget)
        before = summary(measure(reference)) if reference is not None else None
        times = measure(pruned)
        now = None if before is None else (before + summary(measure(reference))) / 2
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        predicted = getattr(wg.efficiency, "predicted_ms", None)
        landing.rounds.append(LandingRound(budget, float(predicted(wg.counts())) if predicted else None,
                                           summary(times), (quartiles[2] - quartiles[0]) / 2, now))
        models.append(pruned)
        points.append((budget, _ratio(landing.rounds[-1], ref_ms)))
        if abs(points[-1][1] / target - 1) <= tolerance:
            break
        nxt = _next_budget(points, target, floor)
        if any(abs(nxt - b) < 1e-6 for b, _ in points):
            break  # no budget left to try: the landing cannot get closer
        budget = nxt
    landing.chosen = _choose(points, target, tolerance)
    if landing.chosen != len(points) - 1:
        _freeze(wg, points[landing.chosen][0])  # wg reflects the chosen network
    landing.model = models[landing.chosen]
    return landing


def _ratio(round_: LandingRound, reference_ms: float) -> float:
    """The round's measured latency as a fraction of the unpruned model's: measured in the same round
    when it was, else ``reference_ms``."""
    return round_.measured_ms / (round_.reference_ms if round_.reference_ms is not None else reference_ms)


def _freeze(wg: WGates, budget: float) -> None:
    if any(g.is_frozen for g in wg.gates):
        wg.unfreeze()
    wg.freeze(budgets=[Budget.fraction(wg.efficiency, budget)])


def _freeze_and_export(wg: WGates, budget: float) -> nn.Module:
    _freeze(wg, budget)
    return wg.export()


def _next_budget(points: list[tuple[float, float]], target: float, floor: float) -> float:
    """A secant step on measured ratio against budget (proportional from the first point)."""
    b1, m1 = points[-1]
    if len(points) > 1 and abs(m1 - points[-2][1]) > 1e-9:
        b0, m0 = points[-2]
        nxt = b1 + (target - m1) * (b1 - b0) / (m1 - m0)
    else:
        nxt = b1 * target / m1
    return min(1.0, max(floor, nxt))


def _choose(points: list[tuple[float, float]], target: float, tolerance: float) -> int:
    gaps = [abs(m / target - 1) for _, m in points]
    inside = [i for i, g in enumerate(gaps) if g <= tolerance]
    if inside:
        return min(inside, key=lambda i: gaps[i])
    below = [i for i, (_, m) in enumerate(points) if m <= target]
    if below:
        return max(below, key=lambda i: points[i][1])
    return min(range(len(points)), key=lambda i: points[i][1])
