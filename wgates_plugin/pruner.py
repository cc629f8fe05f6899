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
    >>> wg.freeze()                      # lands the budget exactly
    >>> small = wg.export()              # a physically smaller copy, same outputs
    >>> abs(wg.cost_ratio() - 0.5) <= 0.01
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .budget import DualMultiplier, UnitBounds, minimum_cost, project_counts
from .config import BudgetMode, WGatesConfig
from .efficiency.base import EfficiencyModel, bind_efficiency
from .efficiency.flops import FlopsModel, record_layer_shapes
from .errors import BudgetError, ConfigError, StateError
from .gates import GateList, Producer, WeightGate
from .groups import ChannelGroup, Member, consumer_feeds, scale_input, select_groups, trace_groups, why_not

__all__ = ["WGates"]

Selector = Callable[[str, nn.Module], bool]


class WGates(nn.Module):
    """Weight-dependent gates attached to a model, with an efficiency loss and exact export.

    Args:
        model: the network to prune; it is not copied. Gates are applied by forward hooks, so its
            classes, parameters and their ``id()`` stay as they are.
        example_inputs: a batch the model accepts (tensor, tuple or dict), used for tracing.
        config: a :class:`WGatesConfig`; or pass its fields as keyword arguments.
        efficiency: the cost model (default: :class:`FlopsModel` of this model).
        select: ``(name, module) -> bool`` choosing which producer layers may be pruned (default:
            every layer of ``config.root_types``, or Conv2d and Linear).

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
        efficiency: EfficiencyModel | Callable[[list[ChannelGroup]], EfficiencyModel] | None = None,
        select: Selector | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if config is not None and overrides:
            raise ConfigError(f"pass either config or keyword options, not both (got {sorted(overrides)})")
        self.config = config if config is not None else WGatesConfig(**overrides)
        self._model = [model]  # a list keeps the model out of this module's parameters and state_dict
        self.example_inputs = example_inputs
        self.traced = trace_groups(model, example_inputs, _root_types(self.config))
        self.groups: list[ChannelGroup] = []
        self.groups = self._select(select)
        self.gates = GateList(self._make_gate(g) for g in self.groups)
        self.flops = FlopsModel(record_layer_shapes(model, example_inputs), self.groups)
        self.efficiency = self._make_efficiency(efficiency)
        self.reference_cost = self.efficiency.reference()
        self.multiplier = DualMultiplier(self.config.alpha, self.config.controller_rate, self.config.target or 1.0)
        self._check_feasible()
        self._current: list[torch.Tensor] | None = None
        self.history: list[tuple[str, bool, list[int]]] = []  # torch-pruning's, set by export()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.attach()

    # ------------------------------------------------------------------ construction
    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def _select(self, select: Selector | None) -> list[ChannelGroup]:
        cfg = self.config
        include: Selector = select or (lambda _n, _m: True)
        excluded = set(cfg.exclude)
        unknown = excluded - {n for n, _ in self.model.named_modules()}
        if unknown:
            raise ConfigError(f"exclude names layers that are not in the model: {sorted(unknown)}")

        def exclude(name: str, module: nn.Module) -> bool:
            return name in excluded or isinstance(module, cfg.exclude_types)

        groups = select_groups(self.traced.groups, include, exclude, cfg.prune_shortcuts)
        if not groups:
            raise ConfigError(
                "no prunable channel group was selected; groups found: "
                + "; ".join(f"{g.name}: {self.why_not(g)}" for g in self.traced.groups[:8])
            )
        return groups

    def why_not(self, group: ChannelGroup) -> str:
        """Why ``group`` is not gated (or 'gated')."""
        return why_not(group, self.groups, self.config.prune_shortcuts)

    def _make_gate(self, group: ChannelGroup) -> WeightGate:
        units = group.size // group.tie
        b = self.config.bounds_for(group.layer_names)
        low = max(1, math.ceil(b.min_keep * units - 1e-9))
        high = max(low, math.floor(b.max_keep * units + 1e-9))
        producers = [Producer(m.module, m.idxs, m.channels) for m in group.producers]
        return WeightGate(producers, group.size, self.config.score_input, self.config.weight_grad,
                          group.tie, low, high, self.config.init_score, self.config.activation,
                          self.config.sigmoid_k)

    def _make_efficiency(self, efficiency: Any) -> EfficiencyModel:
        return self.flops if efficiency is None else bind_efficiency(efficiency, self.groups)

    def unit_bounds(self) -> list[UnitBounds]:
        return [UnitBounds(g.min_keep, g.max_keep, g.tie) for g in self.gates]

    def _check_feasible(self) -> None:
        target = self.config.target
        if target is None or self.config.mode is not BudgetMode.TARGET:
            return
        floor = minimum_cost(self.efficiency, self.unit_bounds()) / self.reference_cost
        if floor > target * (1 + self.config.tolerance):
            raise BudgetError(
                f"target={target} is unreachable: pruning every gated group to its minimum keeps "
                f"{floor:.3f} of the original {self.efficiency.unit or 'cost'} (shortcut-coupled, "
                "excluded and output layers stay whole). HINT: raise target, lower min keep ratios, "
                "or pass prune_shortcuts=True"
            )

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks that apply the gates (done by the constructor)."""
        if self._handles:
            return
        self._handles.append(self.model.register_forward_pre_hook(GateHook(self._refresh)))
        self._handles.append(self.model.register_forward_hook(GateHook(self._forget)))
        for module, feeds in consumer_feeds(self.groups).items():
            self._handles.append(module.register_forward_pre_hook(GateHook(self._gate_input_hook(feeds))))

    def remove(self) -> None:
        """Remove every hook: the model computes exactly what it computed before attaching."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._current = None

    def _refresh(self, _module: nn.Module, _args: Any) -> None:
        """Compute every gate once per forward of the model (consumer hooks read them)."""
        self._current = [g() for g in self.gates]

    def _forget(self, *_args: Any) -> None:
        self._current = None

    def _gate_input_hook(self, feeds: list[tuple[int, Member]]) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            gates = self.current_gates()
            return (scale_input(args[0], feeds, gates.__getitem__),) + tuple(args[1:])

        return hook

    # ------------------------------------------------------------------ training-time API
    def current_gates(self) -> list[torch.Tensor]:
        """The 0/1 gate vector of every gated group, computed now from the current weights."""
        if self._current is not None:  # inside a forward of the model
            return self._current
        return [g() for g in self.gates]

    def counts(self) -> torch.Tensor:
        """The network encoding ``c``: live channels per gated group, shape ``(G,)`` (Eq. 9)."""
        return torch.stack([g.sum() for g in self.current_gates()])

    def efficiency_loss(self) -> torch.Tensor:
        """The efficiency term to add to the task loss (see :class:`BudgetMode` for its form)."""
        mode = self.config.mode
        if mode is BudgetMode.NONE or all(g.is_frozen for g in self.gates):
            return torch.zeros((), device=self.gates[0].fc.device)
        ratio = self.efficiency(self.counts()) / self.reference_cost
        if mode is BudgetMode.PAPER:
            return self.config.alpha * torch.log1p(ratio)
        return self.multiplier.penalty(ratio) if torch.is_grad_enabled() else ratio * 0

    def cost_ratio(self) -> float:
        """Current cost (efficiency model) as a fraction of the unpruned model's."""
        with torch.no_grad():
            return float(self.efficiency(self.counts())) / self.reference_cost

    def flops_ratio(self) -> float:
        """Current conv+linear MACs as a fraction of the unpruned model's."""
        with torch.no_grad():
            return float(self.flops(self.counts())) / self.flops.reference()

    def kept(self) -> dict[str, tuple[int, int]]:
        """``{group name: (kept channels, channels)}`` for every gated group."""
        with torch.no_grad():
            return {g.name: (int(gate.hard().sum()), g.size) for g, gate in zip(self.groups, self.gates)}

    def stats(self) -> dict[str, Any]:
        """Live statistics for logging: cost and FLOPs ratios, multiplier, kept channels."""
        return {"cost_ratio": self.cost_ratio(), "flops_ratio": self.flops_ratio(),
                "multiplier": self.multiplier.value, "kept": self.kept()}

    # ------------------------------------------------------------------ end of training
    def freeze(self, project: bool | None = None) -> None:
        """Fix the gates. In ``TARGET`` mode (or with ``project=True``) first land exactly on the budget.

        Raises:
            BudgetError: the budget cannot be met (only possible with ``project=True`` and no target).
        """
        project = self.config.mode is BudgetMode.TARGET if project is None else project
        with torch.no_grad():
            scores = [g.unit_scores() for g in self.gates]
            units = [int(g.hard().sum()) // g.tie for g in self.gates]
        if project:
            if self.config.target is None:
                raise BudgetError("freeze(project=True) needs a target")
            units = project_counts(self.efficiency, units, self.unit_bounds(),
                                   self.config.target * self.reference_cost)
        for gate, s, k in zip(self.gates, scores, units):
            gate.freeze(_top_k(s, k))
        self._current = None

    def unfreeze(self) -> None:
        for g in self.gates:
            g.unfreeze()
        self._current = None

    def kept_channels(self) -> dict[str, torch.Tensor]:
        """``{group name: sorted kept channel indices}`` from the current gates."""
        with torch.no_grad():
            return {g.name: torch.nonzero(gate.hard() > 0.5).flatten() for g, gate in zip(self.groups, self.gates)}

    def export(self, verify: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
        """A physically pruned copy of the model that computes what the gated model computes.

        The gates must be frozen (call :meth:`freeze`). The copy has no hooks and no gates; the
        original model keeps its gates. With ``verify``, both run ``example_inputs`` in eval mode and
        an :class:`~wgates_plugin.errors.ExportError` is raised if outputs differ beyond tolerance.
        """
        from .export import prune_copy

        if not all(g.is_frozen for g in self.gates):
            raise StateError("export() needs frozen gates: call freeze() first (it lands the budget)")
        return prune_copy(self, verify=verify, rtol=rtol, atol=atol)

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {"groups": [g.name for g in self.groups], "multiplier": self.multiplier.value}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        names = [g.name for g in self.groups]
        if list(state["groups"]) != names:
            raise ConfigError(f"state was saved for groups {state['groups'][:4]}..., these are {names[:4]}...")
        self.multiplier.value = float(state["multiplier"])
        self._current = None


class GateHook:
    """A gate hook that ``copy.deepcopy`` turns into a no-op.

    The gates live in :class:`WGates`, bound to the original model. A deep copy of a gated model (NNI
    and torch-pruning's op counter both make one) is the plain, ungated model; use
    :meth:`WGates.export` for a pruned copy.
    """

    def __init__(self, fn: Callable | None) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return None if self.fn is None else self.fn(*args)

    def __deepcopy__(self, memo: dict) -> GateHook:
        return GateHook(None)


def _root_types(config: WGatesConfig) -> tuple[type, ...]:
    return tuple(config.root_types) or (nn.Conv2d, nn.Linear)


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    from .gates import top_k_mask

    return top_k_mask(scores, k)
