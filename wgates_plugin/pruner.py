"""The host-agnostic W-Gates core: attach gates, form the efficiency loss, land the budget, export.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin import WGates
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> wg = WGates(model, x, target=0.5)
    >>> opt = torch.optim.Adam(wg.parameters(), lr=1e-3)
    >>> loss = model(x).logsumexp(1).mean() + wg.efficiency_loss()
    >>> loss.backward(); opt.step()
    >>> wg.update_multiplier()           # the target-mode dual step, once per training step
    >>> wg.freeze()                      # lands the budget exactly
    >>> small = wg.export()              # a physically smaller copy, same outputs
    >>> abs(wg.cost_ratio() - 0.5) <= 0.01
    True
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .budget import Budget, DualMultiplier, UnitBounds, land
from .config import ANNEALED_K, BudgetMode, WGatesConfig
from .core import ChannelGating, EfficiencyArg, GateHook, Selector
from .errors import BudgetError, ConfigError, ConfigTypeError, StateError
from .gates import GateList, Producer, WeightGate
from .groups import ChannelGroup
from .utils import check_names, device_of, dtype_of

__all__ = ["WGates"]


class WGates(ChannelGating):
    """Weight-dependent gates attached to a model, with an efficiency loss and exact export.

    Args:
        model: the network to prune; it is not copied. Gates are applied by forward hooks, so its
            classes, parameters and their ``id()`` stay as they are.
        example_inputs: a batch the model accepts (tensor, tuple or dict), used for tracing.
        config: a :class:`WGatesConfig`; or pass its fields as keyword arguments.
        efficiency: the cost model (default: :class:`FlopsModel` of this model).
        select: ``(name, module) -> bool`` choosing which producer layers may be pruned (default:
            every layer of ``config.root_types``, or Conv2d and Linear).
        groups: already selected groups of this model (a front end that planned them); then the
            selection fields of ``config`` are not used and the model is not traced again.

    Raises:
        ConfigError: nothing is prunable, or the config is invalid.
        BudgetError: the target cannot be met within the per-layer bounds.
        TracingError: torch-pruning cannot trace the model.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        config: WGatesConfig | None = None,
        efficiency: EfficiencyArg = None,
        select: Selector | None = None,
        groups: Sequence[ChannelGroup] | None = None,
        **overrides: Any,
    ) -> None:
        if config is not None and overrides:
            raise ConfigError(f"pass either config or keyword options, not both (got {sorted(overrides)})")
        if config is not None and not isinstance(config, WGatesConfig):
            raise ConfigTypeError(f"config must be a WGatesConfig, got {type(config).__name__}")
        fields = [f.name for f in dataclasses.fields(WGatesConfig)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
            hints = "".join(f" ('{k}': did you mean '{c[0]}'?)" for k, c in close.items() if c)
            raise ConfigError(f"unknown WGates option(s) {unknown}{hints}; the options are {', '.join(fields)}")
        cfg = config if config is not None else WGatesConfig(**overrides)
        check_names(model, "layer_bounds", cfg.layer_bounds)
        super().__init__(model, example_inputs, select=select, exclude=cfg.exclude, exclude_types=cfg.exclude_types,
                         root_types=cfg.root_types, prune_shortcuts=cfg.prune_shortcuts, efficiency=efficiency,
                         groups=groups)
        self.config = cfg
        self.gates = GateList(self._make_gate(g) for g in self.groups)
        self.to(device_of(model))  # the gates (and the cost model) follow the model's device and dtype
        self.gates.to(dtype=dtype_of(model))
        self.multiplier = DualMultiplier(cfg.alpha, cfg.controller_rate, cfg.target or 1.0)
        self.budgets: list[Budget] = []  # trained toward (those with a multiplier) and landed by freeze()
        if cfg.target is not None and cfg.mode is BudgetMode.TARGET:
            self.check_reachable(f"target={cfg.target}", cfg.target, cfg.tolerance)
            self.budgets.append(Budget.fraction(self.efficiency, cfg.target, multiplier=self.multiplier))
            if cfg.warm_start:
                self._warm_start(cfg.target)
            if cfg.ramp_steps:
                self.multiplier.target = 1.0
        self.steps = 0  # update_multiplier() calls: the training steps taken
        self._votes: list[torch.Tensor] = []  # per gate and unit, the record_votes() calls that found it open
        self._voted = 0
        self._current: list[torch.Tensor] | None = None
        self.attach()

    def _make_gate(self, group: ChannelGroup) -> WeightGate:
        b = self.config.bounds_for(group.layer_names)
        units = UnitBounds.of(group, b.min_keep, b.max_keep)
        producers = [Producer(m.module, m.idxs, m.channels) for m in group.producers]
        return WeightGate(producers, group.size, self.config.score_input, self.config.weight_grad,
                          group.tie, units.low, units.high, self.config.init_score, self.config.activation,
                          self.config.sigmoid_k)

    def _warm_start(self, target: float) -> None:
        """Every gate starts as magnitude pruning at the widths one common shrink factor gives at ``target``."""
        bounds = self.unit_bounds()
        units = land([b.high for b in bounds], bounds, [Budget.fraction(self.efficiency, target)])
        for gate, k in zip(self.gates, units):
            gate.warm_start(k)

    def unit_bounds(self) -> list[UnitBounds]:
        r = self.config.round_to
        return [UnitBounds(g.min_units, g.max_units, g.tie, UnitBounds.step_for(g.tie, r)) for g in self.gates]

    # ------------------------------------------------------------------ hooks
    def _method_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        return [self.model.register_forward_pre_hook(GateHook(self._refresh)),
                self.model.register_forward_hook(GateHook(self._forget))]

    def _on_remove(self) -> None:
        self._current = None

    def _refresh(self, _module: nn.Module, _args: Any) -> None:
        """Compute every gate once per forward of the model (consumer hooks read them)."""
        self._current = [g() for g in self.gates]

    def _forget(self, *_args: Any) -> None:
        self._current = None

    # ------------------------------------------------------------------ training-time API
    def current_gates(self) -> list[torch.Tensor]:
        """The 0/1 gate vector of every gated group, computed now from the current weights."""
        if self._current is not None:  # inside a forward of the model
            return self._current
        return [g() for g in self.gates]

    def keep_masks(self) -> list[torch.Tensor]:
        """The 0/1 gate per channel freezing now would keep (a sigmoid gate thresholded at 1/2)."""
        return [g.hard() for g in self.gates]

    def efficiency_loss(self) -> torch.Tensor:
        """The efficiency term to add to the task loss: the ``PAPER``-mode term (see :class:`BudgetMode`)
        plus the penalty of every budget with a multiplier (the ``TARGET`` one, and any a front end added).

        The multipliers move only in :meth:`update_multiplier`, the step a training loop takes after
        each optimizer step. Zero once the gates are frozen, and under ``no_grad``.
        """
        zero = torch.zeros((), device=self.gates[0].fc.device)
        trained = [b for b in self.budgets if b.multiplier is not None]
        if all(g.is_frozen for g in self.gates) or not (trained or self.config.mode is BudgetMode.PAPER):
            return zero
        counts = self.counts()
        loss = zero
        if self.config.mode is BudgetMode.PAPER:
            loss = self.config.alpha * torch.log1p(self.efficiency(counts) / self.reference_cost)
        if trained and torch.is_grad_enabled():
            loss = loss + sum(b.penalty(counts) for b in trained)
        return loss

    def update_multiplier(self) -> None:
        """The dual step of every budget's multiplier, from the cost ratio of the last loss.

        Call it once per training step, after the optimizer step; a no-op when no efficiency loss
        was computed since the last call (e.g. once the gates are frozen).
        """
        for budget in self.budgets:
            budget.update()
        self.steps += 1
        ramp, target = self.config.ramp_steps, self.config.target
        if ramp and target is not None:
            self.multiplier.target = target + (1 - target) * (1 - min(1.0, self.steps / ramp)) ** 3
        anneal = self.config.anneal_steps
        if anneal:
            k0 = self.config.sigmoid_k
            k = k0 * (ANNEALED_K / k0) ** min(1.0, self.steps / anneal)
            for gate in self.gates:
                gate.sigmoid_k = k

    def record_votes(self) -> None:
        """Tally every group's keep mask as it is now: one vote per open unit.

        Called once per training step over the last steps of gate training (``Recipe.freeze_votes``), it
        makes :meth:`freeze` keep, in every group, the units open most often since the first vote, at the
        mean of their counts: the mask the weights were trained under, not the last step's draw of a mask
        whose units at the threshold keep flipping. :meth:`clear_votes` forgets the tally.
        """
        masks = [g.hard().view(g.tie, g.units)[0] for g in self.gates]
        if not self._votes:  # integer counts: exact in any model dtype (bf16 stops counting at 256)
            self._votes = [torch.zeros(m.shape, dtype=torch.int64, device=m.device) for m in masks]
        for i, mask in enumerate(masks):
            self._votes[i] = self._votes[i].to(mask.device) + mask.to(device=mask.device, dtype=torch.int64)
        self._voted += 1

    def clear_votes(self) -> None:
        """Forget the tally of :meth:`record_votes`: :meth:`freeze` uses the current masks again."""
        self._votes, self._voted = [], 0

    @property
    def votes(self) -> int:
        """How many masks :meth:`record_votes` has tallied since the last :meth:`clear_votes`."""
        return self._voted

    def stats(self) -> dict[str, Any]:
        """Live statistics for logging: cost and FLOPs ratios, multiplier, kept channels."""
        return {**super().stats(), "multiplier": self.multiplier.value}

    # ------------------------------------------------------------------ end of training
    def freeze(self, project: bool | None = None, budgets: Sequence[Budget] | None = None) -> None:
        """Fix the gates; first land exactly on the budgets (:func:`~wgates_plugin.budget.land`).

        The counts landed from are the current masks', or with a tally (:meth:`record_votes`) the mean
        counts over the tallied steps; each group keeps its best-scored units, or the most voted ones.

        Args:
            project: land on :attr:`budgets` (default: when there are any), or on the config's
                target when there are none.
            budgets: the budgets to land on instead (e.g. another cost model's).

        Raises:
            BudgetError: ``project=True`` without a budget or target, or a budget below the bounds' minimum.
        """
        if budgets is None:
            project = bool(self.budgets) if project is None else project
            budgets = self.budgets if project else []
            if project and not budgets:
                if self.config.target is None:
                    raise BudgetError("freeze(project=True) needs a target")
                budgets = [Budget.fraction(self.efficiency, self.config.target)]
        votes: list[torch.Tensor | None]
        if self._voted:  # the mean voted counts, the most voted units
            votes = list(self._votes)
            units = [round(float(tally.sum()) / self._voted) for tally in self._votes]
        else:  # the live counts, the best-scored units
            votes = [None] * len(self.gates)
            units = [g.kept_units() for g in self.gates]
        bounds = self.unit_bounds()
        if budgets:
            units = land(units, bounds, budgets)
        else:  # no budget to land on: the learned counts, at hardware-friendly widths when round_to asks
            units = [b.snap(u) for u, b in zip(units, bounds)]
        for gate, k, tally in zip(self.gates, units, votes):
            gate.freeze_top(k, tally)
        self._current = None

    def unfreeze(self) -> None:
        for g in self.gates:
            g.unfreeze()
        self._current = None

    def _check_exportable(self) -> None:
        if not all(g.is_frozen for g in self.gates):
            raise StateError("export() needs frozen gates: call freeze() first (it lands the budget)")

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier.value, "voted": self._voted,
                "votes": [tally.tolist() for tally in self._votes]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.multiplier.value = float(state["multiplier"])
        votes = state.get("votes", [])  # states saved before votes were tallied have none
        if votes and [len(v) for v in votes] != [g.units for g in self.gates]:
            raise ConfigError(f"saved vote tallies have {[len(v) for v in votes]} units per gate, these gates "
                              f"{[g.units for g in self.gates]}")
        device = self.gates[0].fc.device
        self._votes = [torch.tensor(v, dtype=torch.int64, device=device) for v in votes]
        self._voted = int(state.get("voted", 0)) if votes else 0
        self._current = None
