"""Gate Decorator as an NNI 3 pruner, trained through the user's NNI evaluator.

How it sits in NNI (as :class:`~wgates_plugin.integrations.nni.WGatesPruner` does): the constructor
attaches a :class:`~wgates_plugin.gate_decorator.GateDecorator` (GBN scales and pruning masks, applied
by hooks) and wraps the selected layers with NNI's module wrappers. :meth:`GateDecoratorPruner.compress`
binds the model to the evaluator and lets the user's training function run the Tick-Tock schedule, one
optimizer step per schedule step:

- Tick steps: after the backward, the importance ``|phi * dL/dphi|`` is accumulated, the gradients of
  every model parameter are dropped (so the user's optimizer leaves the weights as they are) and an SGD
  over ``phi`` steps; the last Tick step of a round prunes to that round's cost and updates the masks.
- Tock steps: ``l1 * sum |phi|`` is added to the loss; the user's optimizer trains the weights and an
  SGD over ``phi`` steps with it.

Budget: one global budget, ``target`` (of the FLOPs, or of a custom ``efficiency`` model's cost).
Gate Decorator ranks channels globally, so per-layer ``sparse_ratio``, ``min_sparse_ratio`` and
``global_group_id`` are refused; ``max_sparse_ratio`` bounds how much of a layer may go.

Contract (the same as WGatesPruner's): after ``compress()`` and before ``unwrap_model()``, the wrapped
model's eval forward applies the final masks and scales; ``unwrap_model()`` merges ``phi`` into the
BatchNorms (or producers), removes the hooks and unwraps, after which
``wgates_plugin.speedup(model, masks, dummy_input)`` builds a physically smaller model with the same
eval outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nni.compression.utils import Evaluator
from torch import nn

from ..errors import ConfigError, ConfigTypeError, StateError
from ..gate_decorator.method import GateDecorator
from ..gate_decorator.tick_tock import TickTock, TickTockSteps, plan_rounds
from .nni_config import weight_setting
from .nni_front import GatingPruner, Text
from .nni_plan import group_bounds

__all__ = ["GateDecoratorPruner"]

# TickTock knobs that only GateDecorator.run() can honour: here the user's loop and optimizer decide them.
RUN_ONLY = ("weight_decay", "subset_batches", "freeze_bn_stats")
PER_LAYER_KEYS = ("sparse_ratio", "min_sparse_ratio", "global_group_id")

class GateDecoratorPruner(GatingPruner):
    """Gate Decorator (global Taylor ranking of GBN scales, Tick-Tock) as an NNI 3 pruner.

    Args:
        model, evaluator, dummy_input, target, efficiency: see
            :class:`~wgates_plugin.integrations.nni_front.GatingPruner`; ``target`` is required.
        config_list: NNI config list choosing the layers that may be pruned: ``op_types`` / ``op_names``
            / ``op_names_re``, ``exclude_op_*`` (or a legacy ``{'exclude': True, ...}`` entry), and
            ``max_sparse_ratio`` to bound a layer. Layers coupled to a selected one (residual additions,
            depthwise partners) share its pattern and get identical masks.
        training_steps: the most optimizer steps the schedule may use (Ticks and Tocks together); the
            rounds shrink to fit (see :func:`~wgates_plugin.gate_decorator.tick_tock.plan_rounds`); required by
            :meth:`compress`.
        schedule: the :class:`~wgates_plugin.gate_decorator.tick_tock.TickTock` knobs. Through NNI the evaluator's
            optimizer trains the weights, so ``weight_decay``, ``subset_batches`` and
            ``freeze_bn_stats`` must stay at their defaults; ``gate_lr`` (Ticks), ``weight_lr`` (Tocks)
            and ``momentum`` are those of the SGD over ``phi``.

    Raises:
        ConfigError: the config list is invalid, selects nothing prunable or asks for per-layer ratios;
            no budget or two budgets; an option is invalid.
        BudgetError: the budget is unreachable under the per-layer floors.

    Example: see :class:`~wgates_plugin.integrations.nni_front.GatingPruner`.
    """

    TEXT = Text(why="scores channels by |phi * dL/dphi| on training batches and fine-tunes between pruning "
                "steps", example="training_steps=60, target=0.5", steps="the most optimizer steps the schedule "
                "may use", runs="runs at most", done="the channels are pruned and the masks final")

    def _check_options(self, target: float | None, options: dict[str, Any]) -> dict[str, Any]:
        schedule = options.pop("schedule", None)
        if options:
            raise ConfigError(f"unknown option(s) {sorted(options)}: GateDecoratorPruner accepts schedule "
                              "(bounds and exclusions come from config_list)")
        if schedule is not None:
            _check_schedule(schedule)
        if target is None:
            raise ConfigError("GateDecoratorPruner ranks channels globally under one budget: pass "
                              "target=<fraction of the FLOPs to keep> (or of the cost of efficiency=...)")
        self.schedule = schedule or TickTock()
        return {}

    def _build_core(self, model: nn.Module, target: float | None, efficiency: Any, **options: Any) -> GateDecorator:
        floors = {p.name: group_bounds(plan).min_keep for plan in self.plans for p in plan.group.producers}
        core = GateDecorator(model, self.dummy_input, target, efficiency=efficiency, prune_shortcuts=True,
                             groups=[plan.group for plan in self.plans],
                             layer_min_keep={k: v for k, v in floors.items() if v > 0})
        self._steps = TickTockSteps(core, self.schedule, [])  # planned by compress()
        return core

    def _check_entries(self, entries: list[dict[str, Any]]) -> None:
        _refuse_per_layer_ratios(entries)

    # ------------------------------------------------------------------ wrapping
    def wrap_model(self) -> None:
        """Wrap the layers (NNI) and attach the scale and mask hooks."""
        super().wrap_model()
        self.core.attach()

    def unwrap_model(self) -> None:
        """Unwrap (NNI), merge ``phi`` into the BatchNorms (or producers) and remove the hooks.

        The plain model then computes what the wrapped one did, minus the masks; ``speedup`` with the
        masks removes the pruned channels.
        """
        super().unwrap_model()
        self.core.remove()
        self.core.fuse()

    # ------------------------------------------------------------------ compression
    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        rounds = plan_rounds(self.schedule, self.core.cost_ratio(), float(self.core.target or 1.0),
                             self.training_steps)
        self._steps = TickTockSteps(self.core, self.schedule, rounds)
        if self._steps.timeline:
            self._fusion_compress(len(self._steps.timeline), None)
        self._compressed = True

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        s, phi = self.schedule, list(self.core.phi)
        self._tick_opt = torch.optim.SGD(phi, lr=s.gate_lr, momentum=s.momentum)
        self._tock_opt = torch.optim.SGD(phi, lr=s.weight_lr, momentum=s.momentum)
        evaluator.patch_optimizer_step(before_step_tasks=[self._before_step], after_step_tasks=[self._after_step])
        evaluator.patch_loss(lambda loss, _batch: self._steps.loss(loss))

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        steps = self._steps
        if steps.step < len(steps.timeline):
            if self.core.batches == 0:
                raise StateError("the training function ran no optimizer step, so no channel could be scored: "
                                 "GateDecoratorPruner needs at least one Tick step")
            warnings.warn(f"the training function ran {steps.step} optimizer steps, fewer than the "
                          f"{len(steps.timeline)} the schedule planned; pruned to the budget with the importance "
                          "gathered so far", stacklevel=2)
            self.core.prune(target=float(self.core.target or 1.0))
            self.update_masks(self.gate_masks())
            steps.step = len(steps.timeline)

    def _before_step(self) -> None:
        phase = self._steps.phase
        if phase == "tick":
            self._steps.after_backward()
            for p in self.bound_model.parameters():
                p.grad = None  # the user's optimizer skips parameters without a gradient
            self._tick_opt.step()
        elif phase == "tock":
            self._tock_opt.step()

    def _after_step(self) -> None:
        self._tick_opt.zero_grad(set_to_none=True)
        if self._steps.end_step() is not None:
            self.update_masks(self.gate_masks())

    # ------------------------------------------------------------------ results
    def stats(self) -> dict[str, Any]:
        """Cost and FLOPs ratios, kept channels per group, and the schedule position."""
        steps = self._steps
        return {**self.core.stats(), "step": steps.step, "planned_steps": len(steps.timeline), "phase": steps.phase}


# ---------------------------------------------------------------------------- checks
def _check_schedule(schedule: Any) -> None:
    if not isinstance(schedule, TickTock):
        raise ConfigTypeError(f"schedule must be a TickTock, got {type(schedule).__name__}")
    default = TickTock()
    changed = [name for name in RUN_ONLY if getattr(schedule, name) != getattr(default, name)]
    if changed:
        raise ConfigError(f"schedule sets {', '.join(changed)}, which GateDecoratorPruner cannot honour: the "
                          "evaluator's training function and optimizer decide weight decay, batches and train/eval "
                          "mode (these knobs are for GateDecorator.run)")


def _refuse_per_layer_ratios(entries: Sequence[Mapping[str, Any]]) -> None:
    """Gate Decorator ranks globally: no per-layer ratio or group budget."""
    for i, entry in enumerate(entries):
        setting = weight_setting(entry)
        for key in PER_LAYER_KEYS:
            if setting.get(key) is not None:
                raise ConfigError(
                    f"config_list[{i}] sets {key}={setting[key]!r}: GateDecoratorPruner ranks channels globally "
                    "under one budget, so it takes no per-layer ratio or group budget. Give the budget as "
                    "target=<fraction of the FLOPs to keep> and use config_list to choose layers "
                    "(op_types, op_names, exclude_op_*) and bound them (max_sparse_ratio)"
                )
