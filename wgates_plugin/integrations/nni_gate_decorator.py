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
from nni.compression.base.compressor import Pruner
from nni.compression.utils import Evaluator
from torch import nn

from ..core import EfficiencyArg
from ..errors import ConfigError, ConfigTypeError, StateError
from ..export import Masks
from ..gate_decorator.method import GateDecorator
from ..gate_decorator.tick_tock import TickTock, plan_rounds, step_plan
from ..groups import trace_groups
from .nni import check_front_end_arguments, evaluator_dummy_input, full_masks
from .nni_config import canonical_config_list, select_layers, weight_setting
from .nni_plan import GroupPlan, group_bounds, plan_groups

__all__ = ["GateDecoratorPruner"]

# TickTock knobs that only GateDecorator.run() can honour: here the user's loop and optimizer decide them.
RUN_ONLY = ("weight_decay", "subset_batches", "freeze_bn_stats")
PER_LAYER_KEYS = ("sparse_ratio", "min_sparse_ratio", "global_group_id")

NO_EVALUATOR = (
    "GateDecoratorPruner scores channels by |phi * dL/dphi| on training batches and fine-tunes between "
    "pruning steps, so compress() trains through an NNI evaluator, and none was given. Pass one, plus the "
    "number of optimizer steps the schedule may use:\n"
    "    evaluator = TorchEvaluator(training_func, nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01),\n"
    "                               training_step, dummy_input=example_batch)\n"
    "    GateDecoratorPruner(model, config_list, evaluator=evaluator, training_steps=60, target=0.5)"
)


class GateDecoratorPruner(Pruner):
    """Gate Decorator (global Taylor ranking of GBN scales, Tick-Tock) as an NNI 3 pruner.

    Args:
        model: the model to prune (trained, ideally). It is wrapped in place, as by every NNI pruner.
        config_list: NNI config list choosing the layers that may be pruned: ``op_types`` / ``op_names``
            / ``op_names_re``, ``exclude_op_*`` (or a legacy ``{'exclude': True, ...}`` entry), and
            ``max_sparse_ratio`` to bound a layer. Layers coupled to a selected one (residual additions,
            depthwise partners) share its pattern and get identical masks.
        evaluator: NNI ``TorchEvaluator`` or ``LightningEvaluator``; required by :meth:`compress`.
        training_steps: the most optimizer steps the schedule may use (Ticks and Tocks together); the
            rounds shrink to fit (see :func:`~wgates_plugin.gate_decorator.tick_tock.plan_rounds`); required by
            :meth:`compress`.
        dummy_input: a batch the model accepts, used to trace channel dependencies. Default: the
            evaluator's ``dummy_input``.
        target: keep this fraction of the unpruned cost of ``efficiency`` (FLOPs: conv + linear MACs,
            by default), in (0, 1].
        efficiency: a custom cost model instead of FLOPs: an
            :class:`~wgates_plugin.efficiency.EfficiencyModel` or a callable ``groups -> model``.
        schedule: the :class:`~wgates_plugin.gate_decorator.tick_tock.TickTock` knobs. Through NNI the evaluator's
            optimizer trains the weights, so ``weight_decay``, ``subset_batches`` and
            ``freeze_bn_stats`` must stay at their defaults; ``gate_lr`` (Ticks), ``weight_lr`` (Tocks)
            and ``momentum`` are those of the SGD over ``phi``.

    Raises:
        ConfigError: the config list is invalid, selects nothing prunable or asks for per-layer ratios;
            no budget or two budgets; an option is invalid.
        BudgetError: the budget is unreachable under the per-layer floors.

    Example:
        >>> pruner = GateDecoratorPruner(model, [{'op_types': ['Conv2d']}], evaluator=evaluator,
        ...                              training_steps=60, target=0.5)  # doctest: +SKIP
        >>> model, masks = pruner.compress()  # doctest: +SKIP
        >>> pruner.unwrap_model()  # doctest: +SKIP
        >>> small = wgates_plugin.speedup(model, masks, dummy_input)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[Mapping[str, Any]],
        evaluator: Evaluator | None = None,
        training_steps: int | None = None,
        *,
        dummy_input: Any = None,
        target: float | None = None,
        efficiency: EfficiencyArg = None,
        schedule: TickTock | None = None,
    ) -> None:
        target = _check_arguments(evaluator, training_steps, target, schedule)
        entries = canonical_config_list(config_list)
        _refuse_per_layer_ratios(entries)
        self.settings, self.excluded = select_layers(model, entries)
        self.training_steps = training_steps
        self.schedule = schedule or TickTock()
        self.dummy_input = dummy_input if dummy_input is not None else evaluator_dummy_input(evaluator)
        if self.dummy_input is None:
            raise ConfigError("GateDecoratorPruner traces the model's channel dependencies from an example batch: "
                              "pass dummy_input=<a batch the model accepts> (or give the evaluator one)")
        self.plans, self.notes = self._plan(model)
        self.core = self._build_core(model, target, efficiency)
        self._timeline: list[tuple[str, float | None]] = []
        self._step = 0
        self._compressed = False
        super().__init__(model, entries + self._follower_entries(), evaluator)

    # ------------------------------------------------------------------ construction
    def _plan(self, model: nn.Module) -> tuple[list[GroupPlan], list[str]]:
        plans, notes = plan_groups(trace_groups(model, self.dummy_input).groups, self.settings, self.excluded)
        for note in notes:
            warnings.warn(note, stacklevel=4)
        return plans, notes

    def _build_core(self, model: nn.Module, target: float, efficiency: Any) -> GateDecorator:
        floors = {p.name: group_bounds(plan).min_keep for plan in self.plans for p in plan.group.producers}
        return GateDecorator(model, self.dummy_input, target, efficiency=efficiency, prune_shortcuts=True,
                             groups=[plan.group for plan in self.plans],
                             layer_min_keep={k: v for k, v in floors.items() if v > 0})

    def _follower_entries(self) -> list[dict[str, Any]]:
        """Wrap the producers that follow a selected layer's pattern, so that they get NNI masks too."""
        followers = sorted({m.name for plan in self.plans for m in plan.group.producers} - set(self.settings))
        return [{"op_names": followers}] if followers else []

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
    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Run the Tick-Tock schedule through the evaluator, prune to the budget, return ``(model, masks)``.

        Raises:
            ConfigError: no evaluator or no ``training_steps``; ``max_steps`` / ``max_epochs`` given.
            StateError: the pruner was already compressed, or the training function ran no step.
        """
        if self.evaluator is None:
            raise ConfigError(NO_EVALUATOR)
        if self.training_steps is None:
            raise ConfigError("compress() needs training_steps=<the most optimizer steps the schedule may use> "
                              "(an int >= 1)")
        if max_steps is not None or max_epochs is not None:
            raise ConfigError("GateDecoratorPruner runs at most training_steps optimizer steps; do not pass "
                              "max_steps / max_epochs to compress()")
        if self._compressed:
            raise StateError("compress() was already called: the channels are pruned and the masks final")
        return super().compress(max_steps, max_epochs)  # type: ignore[return-value]

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        rounds = plan_rounds(self.schedule, self.core.cost_ratio(), float(self.core.target or 1.0),
                             self.training_steps)
        self._timeline = step_plan(rounds)
        if self._timeline:
            self._fusion_compress(len(self._timeline), None)
        self._compressed = True

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        s, phi = self.schedule, list(self.core.phi)
        self._tick_opt = torch.optim.SGD(phi, lr=s.gate_lr, momentum=s.momentum)
        self._tock_opt = torch.optim.SGD(phi, lr=s.weight_lr, momentum=s.momentum)
        evaluator.patch_optimizer_step(before_step_tasks=[self._before_step], after_step_tasks=[self._after_step])
        evaluator.patch_loss(self._patch_loss)

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        if self._step < len(self._timeline):
            if self.core.batches == 0:
                raise StateError("the training function ran no optimizer step, so no channel could be scored: "
                                 "GateDecoratorPruner needs at least one Tick step")
            warnings.warn(f"the training function ran {self._step} optimizer steps, fewer than the "
                          f"{len(self._timeline)} the schedule planned; pruned to the budget with the importance "
                          "gathered so far", stacklevel=2)
            self._prune(float(self.core.target or 1.0))
            self._step = len(self._timeline)

    def _phase(self) -> str:
        return self._timeline[self._step][0] if self._step < len(self._timeline) else "done"

    def _patch_loss(self, loss: torch.Tensor, _batch: Any) -> torch.Tensor:
        if self._phase() == "tock" and self.schedule.l1:
            return loss + self.schedule.l1 * self.core.l1_penalty().to(loss)
        return loss

    def _before_step(self) -> None:
        phase = self._phase()
        if phase == "tick":
            if self._step == 0 or self._timeline[self._step - 1][0] != "tick":
                self.core.reset_importance()  # the first Tick step of a round
            self.core.accumulate()
            for p in self.bound_model.parameters():
                p.grad = None  # the user's optimizer skips parameters without a gradient
            self._tick_opt.step()
        elif phase == "tock":
            self._tock_opt.step()

    def _after_step(self) -> None:
        self._tick_opt.zero_grad(set_to_none=True)
        if self._step >= len(self._timeline):
            return
        target = self._timeline[self._step][1]
        self._step += 1
        if target is not None:
            self._prune(target)

    def _prune(self, target: float) -> None:
        self.core.prune(target=target)
        self.update_masks(self.gate_masks())

    # ------------------------------------------------------------------ results
    def gate_masks(self) -> Masks:
        """NNI masks from the pruning state: every wrapped producer (and selected BatchNorm) of a gated group.

        A pruned channel zeroes its filter row in ``weight`` and its entry in ``bias``; every wrapped
        layer outside the gated groups gets all-ones masks.
        """
        return self.core.nni_masks({name: full_masks(wrapper) for name, wrapper in self._module_wrappers.items()})

    def stats(self) -> dict[str, Any]:
        """Cost and FLOPs ratios, kept channels per group, and the schedule position."""
        return {**self.core.stats(), "step": self._step, "planned_steps": len(self._timeline), "phase": self._phase()}


# ---------------------------------------------------------------------------- checks
def _check_arguments(evaluator: Any, training_steps: Any, target: Any, schedule: Any) -> float:
    """Validate the arguments; return the budget (a fraction of the unpruned cost)."""
    check_front_end_arguments(evaluator, training_steps, target)
    if schedule is not None:
        _check_schedule(schedule)
    if target is None:
        raise ConfigError("GateDecoratorPruner ranks channels globally under one budget: pass "
                          "target=<fraction of the FLOPs to keep> (or of the cost of efficiency=...)")
    return float(target)


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
