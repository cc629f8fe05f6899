"""The Tick-Tock schedule of Gate Decorator, in training steps.

One *round* is a Tick followed by a Tock:

- **Tick**: the network's weights are frozen (``requires_grad`` off, so only ``phi`` gets gradients),
  ``phi`` is trained by SGD on the task loss, and ``|phi * dL/dphi|`` is accumulated on every step;
  then the least important channels are pruned, ranked globally, down to this round's cost.
- **Tock**: the whole network and ``phi`` are trained on the task loss plus ``l1 * sum |phi|`` (the
  sparsity term that pushes unimportant scales toward zero before the next Tick ranks them).

The round costs form a geometric ladder from the current cost to the target, each round removing at
most ``prune_per_tick`` of the cost that remains; the last Tick prunes exactly to the target and the
schedule stops there (fine-tuning the pruned network is the caller's, with whatever recipe it gives
every method). Every forward + backward on a training batch is one *step*; ``max_steps`` caps them:
the number of rounds shrinks to what fits (``rounds * tick_steps + (rounds - 1) * tock_steps``), and
with fewer steps than one Tick, a single shortened Tick. The final prune still lands on the target.

BatchNorm during a Tick: by default the model is in train mode, so BN normalizes by batch statistics
and its running statistics follow the network as it is pruned (the reference implementation does the
same); ``freeze_bn_stats=True`` runs the Tick in eval mode, so nothing but ``phi`` changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ConfigTypeError
from ..utils import call_model, check_number, kept_modes, move_to

if TYPE_CHECKING:
    from .method import GateDecorator

__all__ = ["TickTock", "Round", "StepRecord", "PruneRecord", "TickTockTrace", "TickTockSteps", "TickTockTrainer",
           "plan_rounds", "step_plan", "run_tick_tock", "cross_entropy_loss"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class TickTock:
    """Every knob of the Tick-Tock schedule, with its default.

    Attributes:
        tick_steps: training steps of one Tick (weights frozen, ``phi`` trained, importance accumulated).
        tock_steps: training steps of one Tock (everything trained, with the L1 term); 0 = no Tock.
        prune_per_tick: the largest share of the remaining cost one Tick removes, in (0, 1); it sets
            the number of rounds, ``ceil(log(target / cost) / log(1 - prune_per_tick))``.
        l1: weight of ``sum |phi|`` (live channels) in the Tock loss (the reference code's 1e-3).
        gate_lr: SGD learning rate of ``phi`` in a Tick.
        weight_lr: SGD learning rate of the weights and ``phi`` in a Tock.
        momentum: SGD momentum of both phases.
        weight_decay: weight decay of the network's weights in a Tock (never applied to ``phi``).
        subset_batches: None: each Tick takes the next ``tick_steps`` batches of the loader; an int
            ``k``: every Tick cycles over the same ``k`` batches (the first ``k`` it draws), so all
            Ticks score channels on one fixed subset of the data.
        freeze_bn_stats: run Ticks in eval mode (BN running statistics fixed, dropout off) instead of
            train mode.
    """

    tick_steps: int = 4
    tock_steps: int = 8
    prune_per_tick: float = 0.2
    l1: float = 1e-3
    gate_lr: float = 1e-3
    weight_lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    subset_batches: int | None = None
    freeze_bn_stats: bool = False

    def __post_init__(self) -> None:
        check_number("tick_steps", self.tick_steps, ">= 1", integer=True, type_error=ConfigError)
        check_number("tock_steps", self.tock_steps, ">= 0", integer=True, type_error=ConfigError)
        if self.subset_batches is not None:
            check_number("subset_batches", self.subset_batches, ">= 1", integer=True, type_error=ConfigError)
        check_number("prune_per_tick", self.prune_per_tick, "(0, 1)", what="")
        check_number("momentum", self.momentum, "[0, 1)", what="")
        for name in ("gate_lr", "weight_lr"):
            check_number(name, getattr(self, name), "> 0", what="")
        for name in ("l1", "weight_decay"):
            check_number(name, getattr(self, name), ">= 0", what="")
        if not isinstance(self.freeze_bn_stats, bool):
            raise ConfigTypeError(f"freeze_bn_stats={self.freeze_bn_stats!r} must be a bool")


@dataclass(frozen=True)
class Round:
    """One planned round: its Tick and Tock lengths (steps) and the cost ratio its Tick prunes to."""

    tick_steps: int
    tock_steps: int
    target: float


@dataclass(frozen=True)
class StepRecord:
    """One training step: its number (from 1), phase ('tick' or 'tock'), round, task loss, cost ratio."""

    step: int
    phase: str
    round: int
    loss: float
    cost_ratio: float


@dataclass(frozen=True)
class PruneRecord:
    """One pruning step at the end of a Tick: steps done so far, round, requested and reached ratios."""

    step: int
    round: int
    target: float
    cost_ratio: float
    flops_ratio: float


@dataclass
class TickTockTrace:
    """What a run did: the planned rounds, every step and prune in order, and the steps used."""

    rounds: list[Round] = field(default_factory=list)
    records: list[StepRecord | PruneRecord] = field(default_factory=list)
    steps_used: int = 0

    @property
    def steps(self) -> list[StepRecord]:
        return [r for r in self.records if isinstance(r, StepRecord)]

    @property
    def prunes(self) -> list[PruneRecord]:
        return [r for r in self.records if isinstance(r, PruneRecord)]


def plan_rounds(schedule: TickTock, start: float, target: float, max_steps: int | None = None) -> list[Round]:
    """The rounds that take the cost ratio from ``start`` to ``target`` within ``max_steps`` steps.

    Returns no round when ``start`` is already within the target. The last round has no Tock.
    """
    if start <= target * (1 + 1e-9):
        return []
    rounds = max(1, math.ceil(math.log(target / start) / math.log(1 - schedule.prune_per_tick) - 1e-9))
    tick, tock = schedule.tick_steps, schedule.tock_steps
    if max_steps is not None:
        rounds = min(rounds, max(1, (max_steps + tock) // (tick + tock)))
        tick = min(tick, max_steps)
    costs = [start * (target / start) ** (r / rounds) for r in range(1, rounds)] + [target]
    return [Round(tick, tock if r < rounds - 1 else 0, c) for r, c in enumerate(costs)]


def step_plan(rounds: list[Round]) -> list[tuple[str, float | None]]:
    """One ``(phase, prune_to)`` per training step: ``prune_to`` is set on the last Tick step of a round."""
    plan: list[tuple[str, float | None]] = []
    for r in rounds:
        plan += [("tick", None)] * (r.tick_steps - 1) + [("tick", r.target)] + [("tock", None)] * r.tock_steps
    return plan


class TickTockSteps:
    """The schedule as one ``(phase, prune_to)`` entry per training step, and what it does around each.

    :func:`run_tick_tock` and :class:`~wgates_plugin.gate_decorator.GateDecoratorPruner` (through the
    user's NNI training loop) step through the same object: :meth:`loss` before the backward,
    :meth:`after_backward` before the optimizer step, :meth:`end_step` after it.
    """

    def __init__(self, gd: GateDecorator, schedule: TickTock, rounds: list[Round]) -> None:
        self.gd, self.schedule = gd, schedule
        self.timeline = step_plan(rounds)
        self.step = 0  # steps done

    @property
    def phase(self) -> str:
        """``'tick'``, ``'tock'``, or ``'done'`` once every planned step ran."""
        return self.timeline[self.step][0] if self.step < len(self.timeline) else "done"

    @property
    def round_starts(self) -> bool:
        """True on the first Tick step of a round."""
        return self.phase == "tick" and (self.step == 0 or self.timeline[self.step - 1][0] != "tick")

    def loss(self, task: torch.Tensor) -> torch.Tensor:
        """What to back-propagate: the task loss, plus ``l1 * sum |phi|`` in a Tock."""
        if self.phase == "tock" and self.schedule.l1:
            return task + self.schedule.l1 * self.gd.l1_penalty().to(task)
        return task

    def after_backward(self) -> None:
        """A Tick step scores the channels (a new round first forgets the last round's importance)."""
        if self.phase == "tick":
            if self.round_starts:
                self.gd.reset_importance()
            self.gd.accumulate()

    def end_step(self) -> float | None:
        """Count the step; after a round's last Tick step, prune to the round's cost and return it."""
        if self.step >= len(self.timeline):
            return None
        target = self.timeline[self.step][1]
        self.step += 1
        if target is not None:
            self.gd.prune(target=target)
        return target


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The default loss: ``batch`` is ``(inputs, targets, ...)``; cross-entropy of ``model(inputs)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ConfigTypeError(f"the default loss needs (inputs, targets) batches, got {type(batch).__name__}; "
                              "pass loss_fn=<(model, batch) -> loss> for other batches")
    return F.cross_entropy(call_model(model, batch[0]), batch[1])


class TickTockTrainer:
    """Tick and Tock steps on one :class:`~wgates_plugin.gate_decorator.GateDecorator`.

    Holds what the phases share: the batch stream, the optimizers (SGD over ``phi`` for Ticks; SGD over
    the weights and ``phi`` for Tocks, their momentum kept across rounds) and the trace.

    Args:
        gd: the attached Gate Decorator.
        train_loader: an iterable of batches, cycled when exhausted (a DataLoader or a list).
        schedule: the knobs (default :class:`TickTock`).
        loss_fn: ``(model, batch) -> loss`` (default :func:`cross_entropy_loss`).
        callback: called with every :class:`StepRecord` and :class:`PruneRecord`.
    """

    def __init__(self, gd: GateDecorator, train_loader: Iterable[Any], schedule: TickTock | None = None,
                 loss_fn: LossFn | None = None, callback: Callable[[Any], None] | None = None) -> None:
        if schedule is not None and not isinstance(schedule, TickTock):
            raise ConfigTypeError(f"schedule must be a TickTock, got {type(schedule).__name__}")
        self.gd = gd
        self.schedule = s = schedule or TickTock()
        self.loss_fn = loss_fn or cross_entropy_loss
        self.callback = callback
        self.stream = _BatchStream(train_loader, s.subset_batches)
        self.weights = [p for p in gd.model.parameters() if p.requires_grad]
        phi = list(gd.phi)
        self.tick_opt = torch.optim.SGD(phi, lr=s.gate_lr, momentum=s.momentum)
        self.tock_opt = torch.optim.SGD([{"params": self.weights, "weight_decay": s.weight_decay},
                                         {"params": phi, "weight_decay": 0.0}], lr=s.weight_lr, momentum=s.momentum)
        self.trace = TickTockTrace()
        self.device = next((p.device for p in gd.phi), torch.device("cpu"))

    def tick(self, steps: int, round_index: int = 0) -> None:
        """``steps`` Tick steps: weights frozen, ``phi`` trained, importance accumulated every step."""
        for _ in range(steps):
            self._step("tick", round_index, lambda loss: loss, self.gd.accumulate)
        self._zero_grad()

    def tock(self, steps: int, round_index: int = 0, l1: float | None = None) -> None:
        """``steps`` Tock steps: weights and ``phi`` trained on the task loss + ``l1 * sum |phi|``."""
        weight = self.schedule.l1 if l1 is None else l1
        for _ in range(steps):
            self._step("tock", round_index, lambda loss: loss + weight * self.gd.l1_penalty() if weight else loss)
        self._zero_grad()

    def follow(self, steps: TickTockSteps) -> None:
        """Every remaining step of ``steps``, recording each step and each prune."""
        round_index = -1
        while steps.phase != "done":
            phase = steps.phase
            round_index += steps.round_starts
            self._step(phase, round_index, steps.loss, steps.after_backward)
            target = steps.end_step()
            if target is not None:
                self._emit(PruneRecord(self.trace.steps_used, round_index, target, self.gd.cost_ratio(),
                                       self.gd.flops_ratio()))
        self._zero_grad()

    def _step(self, phase: str, round_index: int, loss_term: Callable[[torch.Tensor], torch.Tensor],
              after_backward: Callable[[], None] | None = None) -> None:
        """One training step: a Tick (weights frozen, SGD on ``phi``) or a Tock (SGD on everything)."""
        self._zero_grad()
        tick = phase == "tick"
        if not tick:
            self.gd.model.train()
        with _frozen(self.gd.model, self.weights, self.schedule.freeze_bn_stats) if tick else contextlib.nullcontext():
            loss = self.loss_fn(self.gd.model, move_to(self.stream.tick_batch() if tick else self.stream.next(),
                                                       self.device))
            loss_term(loss).backward()
            if after_backward is not None:
                after_backward()
            (self.tick_opt if tick else self.tock_opt).step()
        self._record(phase, round_index, loss)

    def _zero_grad(self) -> None:
        self.tick_opt.zero_grad(set_to_none=True)
        self.tock_opt.zero_grad(set_to_none=True)

    def _record(self, phase: str, round_index: int, loss: torch.Tensor) -> None:
        self.trace.steps_used += 1
        self._emit(StepRecord(self.trace.steps_used, phase, round_index, float(loss.detach()), self.gd.cost_ratio()))

    def _emit(self, record: StepRecord | PruneRecord) -> None:
        self.trace.records.append(record)
        if self.callback is not None:
            self.callback(record)


def run_tick_tock(
    gd: GateDecorator,
    train_loader: Iterable[Any],
    schedule: TickTock | None = None,
    max_steps: int | None = None,
    callback: Callable[[Any], None] | None = None,
    loss_fn: LossFn | None = None,
) -> TickTockTrace:
    """Prune ``gd`` to its target with the Tick-Tock schedule; stop when the target is reached.

    Args:
        gd: a Gate Decorator with a ``target``.
        train_loader: an iterable of batches, cycled when exhausted.
        schedule: the knobs (default :class:`TickTock`).
        max_steps: cap on training steps (Ticks and Tocks together), an int >= 1; the plan shrinks to
            fit it (see the module docstring) and still ends exactly on the target.
        callback: called with every :class:`StepRecord` and :class:`PruneRecord`.
        loss_fn: ``(model, batch) -> loss`` (default :func:`cross_entropy_loss`).

    Returns:
        The trace; ``trace.steps_used`` (also ``gd.steps_used``) counts the training steps taken.
        The model's train/eval mode and its parameters' ``requires_grad`` are restored.

    Raises:
        ConfigError: no target, or ``max_steps`` invalid.
    """
    if gd.target is None:
        raise ConfigError("run() prunes to the target: pass target=<fraction of the cost to keep> to GateDecorator")
    if max_steps is not None:
        check_number("max_steps", max_steps, ">= 1", integer=True, type_error=ConfigError)
    trainer = TickTockTrainer(gd, train_loader, schedule, loss_fn, callback)
    trainer.trace.rounds = plan_rounds(trainer.schedule, gd.cost_ratio(), gd.target, max_steps)
    try:
        with kept_modes(gd.model):
            trainer.follow(TickTockSteps(gd, trainer.schedule, trainer.trace.rounds))
    finally:
        gd.steps_used = trainer.trace.steps_used
    return trainer.trace


# ---------------------------------------------------------------------------- helpers
class _BatchStream:
    """Batches from a loader, cycled; optionally a fixed cached subset for the Ticks."""

    def __init__(self, loader: Iterable[Any], subset: int | None) -> None:
        try:
            self._iter: Iterator[Any] = iter(loader)
        except TypeError:
            raise ConfigTypeError(f"train_loader must be an iterable of batches (a DataLoader or a list), "
                                  f"got {type(loader).__name__}") from None
        self.loader = loader
        self.subset_size = subset
        self.subset: list[Any] = []
        self._pos = 0

    def next(self) -> Any:
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = iter(self.loader)
        try:
            return next(self._iter)
        except StopIteration:
            raise ConfigError("train_loader yielded no batch (an exhausted iterator cannot be cycled: "
                              "pass a DataLoader or a list)") from None

    def tick_batch(self) -> Any:
        if self.subset_size is None:
            return self.next()
        if len(self.subset) < self.subset_size:
            self.subset.append(self.next())
            return self.subset[-1]
        self._pos += 1
        return self.subset[(self._pos - 1) % self.subset_size]


@contextmanager
def _frozen(model: nn.Module, weights: list[nn.Parameter], eval_mode: bool) -> Iterator[None]:
    """Weights out of autograd (and the model in eval mode if asked) for the duration of a Tick."""
    model.train(not eval_mode)
    for p in weights:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in weights:
            p.requires_grad_(True)
