"""Gate Decorator (You et al., NeurIPS 2019, arXiv:1909.08174) on the W-Gates group and export machinery.

The method: a channel-wise scaling factor ``phi`` multiplies the output of every BatchNorm of a gated
channel group (a *gated BN*, GBN), initialised to 1 so attaching changes nothing. The first-order Taylor
estimate of the loss change when ``phi_i -> 0`` is ``|phi_i * dL/dphi_i|``; summed over batches (and over
the BNs of one coupled group: the paper's *group pruning*) it is the importance of channel ``i``.
Channels are ranked globally across layers and the least important are removed until a FLOPs (or any
:class:`~wgates_plugin.efficiency.EfficiencyModel`) budget holds. The Tick-Tock schedule
(:mod:`wgates_plugin.tick_tock`) alternates Tick (weights frozen, ``phi`` trained, importance
accumulated, a small step of pruning) and Tock (the whole network fine-tuned with an L1 term on
``phi``). At export ``phi`` is merged into the BN's affine parameters, so no extra structure remains.

How it sits on this package's machinery:

- groups: exactly W-Gates' channel groups (:func:`~wgates_plugin.groups.trace_groups` and the same
  selection, exclusion and ``prune_shortcuts`` semantics), so budgets are in the same units;
- where ``phi`` lives: one vector per affine BatchNorm of a gated group (a forward hook multiplies the
  BN's output); a group with no affine BN scales its producers' outputs instead;
- where a removed channel is zeroed: at the inputs of the layers that consume the group (the same
  point as W-Gates' gates), where zeroing is exactly removing it. Zeroing ``phi`` at the BN output is
  not: an activation with ``f(0) != 0`` or a bias path after the BN would still carry the channel;
- export: ``phi`` merged into BN weight and bias (or the producer's weight and bias), then the removed
  channels leave through torch-pruning (:func:`~wgates_plugin.export.prune_groups`) and the copy is
  verified against the gated model.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin.gate_decorator import GateDecorator
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(4, 3, 32, 32)
    >>> gd = GateDecorator(model, x, target=0.5)
    >>> torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    >>> gd.accumulate()                  # importance |phi * dL/dphi| of this batch
    >>> round(gd.prune(to_cost=0.5), 2)  # global ranking; lands at or just below the budget
    0.5
    >>> small = gd.export()              # phi merged into BN, channels removed, outputs verified
    >>> gd.remove()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .efficiency.base import EfficiencyModel, bind_efficiency
from .efficiency.flops import FlopsModel, record_layer_shapes
from .errors import BudgetError, ConfigError, ConfigTypeError, StateError
from .export import prune_groups, verify_outputs
from .groups import (
    ChannelGroup,
    Member,
    Role,
    consumer_feeds,
    removal_plan,
    scale_input,
    select_groups,
    trace_groups,
    why_not,
)
from .pruner import GateHook
from .tick_tock import LossFn, TickTock, TickTockTrace, run_tick_tock

__all__ = ["GateDecorator", "ScaleSite", "TickTock"]

Selector = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class ScaleSite:
    """One place where a group's ``phi`` multiplies channels.

    Attributes:
        group: index of the gated group.
        name: qualified name of the module whose output is scaled.
        module: that module (an affine BatchNorm, or a producer when the group has none).
        idxs: positions in the module's output channel dimension, shape ``(n,)``.
        channels: the group channel at each position, shape ``(n,)``.
        on_bn: True for a BatchNorm (GBN), False for a producer's output.
    """

    group: int
    name: str
    module: nn.Module
    idxs: torch.Tensor
    channels: torch.Tensor
    on_bn: bool

    @property
    def dim(self) -> int:
        """Channel dimension of the module's output."""
        return -1 if isinstance(self.module, nn.Linear) else 1


class _GroupState(nn.Module):
    """Per-group buffers: ``keep`` (1 = live channel) and the accumulated importance ``score``, ``(C,)``."""

    keep: torch.Tensor
    score: torch.Tensor

    def __init__(self, size: int, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("keep", torch.ones(size, device=device))
        self.register_buffer("score", torch.zeros(size, device=device))


class GateDecorator(nn.Module):
    """Gate Decorator attached to a model: GBN scales, Taylor importance, global pruning, exact export.

    Args:
        model: the network to prune; it is not copied. Everything is applied by forward hooks, so its
            classes, parameters and their ``id()`` stay as they are.
        example_inputs: a batch the model accepts (tensor, tuple or dict), used for tracing.
        target: the budget, a fraction in (0, 1] of the unpruned cost of ``efficiency`` (FLOPs by
            default); :meth:`run` prunes to it, :meth:`export` requires it reached. None: no budget
            (prune with explicit ``to_cost`` / ``fraction``).
        efficiency: the cost model (default: :class:`~wgates_plugin.efficiency.FlopsModel` of this
            model): an :class:`~wgates_plugin.efficiency.EfficiencyModel` or a callable ``groups -> model``.
        select: ``(name, module) -> bool`` choosing which producer layers may be pruned (default: all).
        prune_shortcuts: also prune residual-coupled groups, one pattern per coupled group with its
            importance summed over the group's BNs (the paper's group pruning). Off by default, as in W-Gates.
        exclude: qualified layer names never to prune (any group containing one stays whole).
        exclude_types: layer classes never to prune.
        root_types: layer classes whose output channels may be pruned (default: Conv2d and Linear).
        min_keep: channels every gated group keeps at least (>= 1: no layer is ever emptied).
        min_keep_ratio: fraction of its channels every gated group keeps at least, in [0, 1).
        layer_min_keep: per producer-layer name, a kept-fraction floor for its group (the largest of
            these, ``min_keep`` and ``min_keep_ratio`` applies).

    Raises:
        ConfigError: nothing is prunable, or an argument is invalid.
        ConfigTypeError: an argument has the wrong type.
        BudgetError: ``target`` is below the cheapest network the floors allow.
        TracingError: torch-pruning cannot trace the model.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        target: float | None = None,
        *,
        efficiency: EfficiencyModel | Callable[[list[ChannelGroup]], EfficiencyModel] | None = None,
        select: Selector | None = None,
        prune_shortcuts: bool = False,
        exclude: Iterable[str] = (),
        exclude_types: tuple[type, ...] = (),
        root_types: tuple[type, ...] = (),
        min_keep: int = 1,
        min_keep_ratio: float = 0.0,
        layer_min_keep: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(target, select, min_keep, min_keep_ratio, layer_min_keep)
        self._model = [model]  # a list keeps the model out of this module's parameters and state_dict
        self.example_inputs = example_inputs
        self.target = None if target is None else float(target)
        self.prune_shortcuts = bool(prune_shortcuts)
        was_training = model.training
        self.traced = trace_groups(model, example_inputs, tuple(root_types) or (nn.Conv2d, nn.Linear))
        model.train(was_training)  # torch-pruning's tracing leaves the model in eval mode
        self.groups: list[ChannelGroup] = []
        self.groups = self._select(select, tuple(exclude), tuple(exclude_types))
        self.flops = FlopsModel(record_layer_shapes(model, example_inputs), self.groups)
        self._efficiency = [self._make_efficiency(efficiency)]  # kept out of parameters(): only phi
        self.reference_cost = self.efficiency.reference()
        _check_names(model, "layer_min_keep", tuple(layer_min_keep or {}))
        self.low_units = [self._low_units(g, min_keep, min_keep_ratio, layer_min_keep or {}) for g in self.groups]
        device = _device(model)
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.sites = [s for gi, g in enumerate(self.groups) for s in _sites(gi, g, order)]
        self.phi = nn.ParameterList(nn.Parameter(torch.ones(len(s.idxs), device=device)) for s in self.sites)
        self.group_state = nn.ModuleList(_GroupState(g.size, device) for g in self.groups)
        self.batches = 0  # batches accumulated into the importance since the last reset
        self.steps_used = 0  # training steps of the last run()
        self.history: list[tuple[str, bool, list[int]]] = []  # torch-pruning's, set by export()
        self._check_target()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.attach()

    # ------------------------------------------------------------------ construction
    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def efficiency(self) -> EfficiencyModel:
        return self._efficiency[0]

    def _select(self, select: Selector | None, exclude: tuple[str, ...], types: tuple[type, ...]) -> list[ChannelGroup]:
        _check_names(self.model, "exclude", exclude)
        include: Selector = select or (lambda _n, _m: True)
        excluded = set(exclude)
        groups = select_groups(self.traced.groups, include,
                               lambda name, module: name in excluded or isinstance(module, types),
                               self.prune_shortcuts)
        if not groups:
            raise ConfigError("no prunable channel group was selected; groups found: "
                              + "; ".join(f"{g.name}: {self.why_not(g)}" for g in self.traced.groups[:8]))
        return groups

    def why_not(self, group: ChannelGroup) -> str:
        """Why ``group`` is not gated (or 'gated')."""
        return why_not(group, self.groups, self.prune_shortcuts)

    def _make_efficiency(self, efficiency: Any) -> EfficiencyModel:
        return self.flops if efficiency is None else bind_efficiency(efficiency, self.groups)

    def _low_units(self, group: ChannelGroup, min_keep: int, ratio: float, layers: Mapping[str, float]) -> int:
        """The fewest units (``tie`` channels each) the group may keep."""
        fractions = [ratio] + [layers[n] for n in group.layer_names if n in layers]
        channels = max(min_keep, math.ceil(max(fractions) * group.size - 1e-9))
        return min(max(1, math.ceil(channels / group.tie)), group.size // group.tie)

    def floor_ratio(self) -> float:
        """The cheapest cost (fraction of the unpruned) the per-group floors allow."""
        return self._units_cost([self.low_units[i] for i in range(len(self.groups))]) / self.reference_cost

    def _check_target(self) -> None:
        if self.target is not None:
            self._check_reachable(f"target={self.target}", self.target)

    def _check_reachable(self, label: str, ratio: float) -> None:
        floor = self.floor_ratio()
        if floor > ratio:
            raise BudgetError(
                f"{label} is unreachable: pruning every gated group to its minimum keeps {floor:.3f} "
                f"of the original {self.efficiency.unit or 'cost'} (shortcut-coupled, excluded and output "
                "layers stay whole). HINT: raise the budget, lower min_keep / min_keep_ratio, "
                "or pass prune_shortcuts=True"
            )

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks that apply ``phi`` and the pruning masks (done by the constructor)."""
        if self._handles:
            return
        for si, site in enumerate(self.sites):
            self._handles.append(site.module.register_forward_hook(GateHook(self._scale_hook(si))))
        for module, feeds in consumer_feeds(self.groups).items():
            self._handles.append(module.register_forward_pre_hook(GateHook(self._mask_hook(feeds))))

    def remove(self) -> None:
        """Remove every hook: the model computes exactly what it computed before attaching."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _scale_hook(self, si: int) -> Callable:
        site = self.sites[si]

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            dim = site.dim % output.dim()
            scale = output.new_ones(output.shape[dim])  # (C_module,)
            scale = scale.index_copy(0, site.idxs.to(output.device), self.phi[si].to(output.dtype))
            return output * _along(scale, dim, output.dim())

        return hook

    def _mask_hook(self, feeds: list[tuple[int, Member]]) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            return (scale_input(args[0], feeds, self._keep),) + tuple(args[1:])

        return hook

    def _keep(self, gi: int) -> torch.Tensor:
        return cast(_GroupState, self.group_state[gi]).keep

    def _score(self, gi: int) -> torch.Tensor:
        return cast(_GroupState, self.group_state[gi]).score

    # ------------------------------------------------------------------ importance
    def accumulate(self) -> None:
        """Add ``|phi * dL/dphi|`` of the last backward to every group channel's importance.

        Call it after ``loss.backward()`` (of the task loss: an L1 term on ``phi`` would leak into the
        gradient) and before the optimizer zeroes the gradients. Positions of several BNs carrying the
        same group channel add up (group pruning).
        """
        with torch.no_grad():
            for site, phi in zip(self.sites, self.phi):
                if phi.grad is not None:
                    taylor = (phi * phi.grad).abs()  # (n,)
                    self._score(site.group).index_add_(0, site.channels.to(taylor.device), taylor)
        self.batches += 1

    def reset_importance(self) -> None:
        """Forget the accumulated importance."""
        for gi in range(len(self.groups)):
            self._score(gi).zero_()
        self.batches = 0

    def importance(self) -> dict[str, torch.Tensor]:
        """``{group name: accumulated importance per channel, (C,)}``."""
        return {g.name: self._score(gi).detach().clone() for gi, g in enumerate(self.groups)}

    def l1_penalty(self) -> torch.Tensor:
        """``sum |phi|`` over the live channels of every site: the Tock sparsity term (before its weight)."""
        terms = [(phi.abs() * self._keep(s.group)[s.channels.to(phi.device)]).sum()
                 for s, phi in zip(self.sites, self.phi)]
        return torch.stack(terms).sum()

    # ------------------------------------------------------------------ state of the pruning
    def current_gates(self) -> list[torch.Tensor]:
        """The 0/1 keep mask of every gated group, each ``(C,)``."""
        return [self._keep(gi) for gi in range(len(self.groups))]

    def counts(self) -> torch.Tensor:
        """Live channels per gated group, shape ``(G,)`` (float, on the CPU)."""
        return torch.stack([self._keep(gi).sum() for gi in range(len(self.groups))]).float().cpu()

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
        return {g.name: (int(c), g.size) for g, c in zip(self.groups, self.counts())}

    def kept_channels(self) -> dict[str, torch.Tensor]:
        """``{group name: sorted kept channel indices}``."""
        return {g.name: torch.nonzero(self._keep(gi) > 0.5).flatten().cpu() for gi, g in enumerate(self.groups)}

    def stats(self) -> dict[str, Any]:
        """Cost and FLOPs ratios and kept channels, for logging."""
        return {"cost_ratio": self.cost_ratio(), "flops_ratio": self.flops_ratio(), "kept": self.kept()}

    @property
    def finished(self) -> bool:
        """True once the cost is within ``target`` (always True without a target)."""
        return self.target is None or self.cost_ratio() <= self.target * (1 + 1e-9)

    # ------------------------------------------------------------------ pruning
    def prune(self, to_cost: float | None = None, fraction: float | None = None) -> float:
        """Remove the least important live channels, ranked globally, until the cost is within a budget.

        Channels are ranked by accumulated importance across all gated groups (a unit of ``tie``
        channels of a grouped conv by the sum over its channels); a group never drops below its floor.
        The removals are the fewest, in ranking order, that bring the cost within the budget; removed
        units that fit back within it are then handed back (most important first), so the cost lands
        at the budget or below it by less than the cheapest removed unit. Pruning only removes: a
        budget above the current cost removes nothing.

        Args:
            to_cost: the budget as a fraction of the unpruned cost, in (0, 1].
            fraction: or: remove this share of the current cost, in (0, 1).

        Returns:
            The cost ratio reached.

        Raises:
            ConfigError: neither or both arguments, or a value out of range.
            StateError: no importance was accumulated (call :meth:`accumulate` after a backward).
            BudgetError: the budget is below the cheapest network the floors allow.
        """
        goal = self._goal(to_cost, fraction)
        if self.batches == 0:
            raise StateError("prune() ranks channels by accumulated importance and none was accumulated: "
                             "run a backward pass and call accumulate() first (run() does both)")
        label = f"to_cost={to_cost}" if to_cost is not None else f"fraction={fraction} (a cost of {goal:.4f})"
        self._check_reachable(label, goal)
        budget = goal * self.reference_cost
        order = self._removal_order()
        removed = order[: self._fewest_removals(order, budget)]
        for gi, unit in self._give_back(removed, budget):
            self._drop(gi, unit)
        return self.cost_ratio()

    def _goal(self, to_cost: float | None, fraction: float | None) -> float:
        if (to_cost is None) == (fraction is None):
            raise ConfigError("prune() takes exactly one of to_cost=<budget as a fraction of the unpruned cost> "
                              "and fraction=<share of the current cost to remove>")
        if to_cost is not None:
            _check_number("to_cost", to_cost, low=0.0, high=1.0, high_closed=True)
            return float(to_cost)
        _check_number("fraction", fraction, low=0.0, high=1.0, high_closed=False)
        return self.cost_ratio() * (1 - float(cast(float, fraction)))

    def _units(self, gi: int) -> torch.Tensor:
        """Live flag of every unit of a group, shape ``(C / tie,)``."""
        g = self.groups[gi]
        return self._keep(gi).view(g.tie, g.size // g.tie)[0] > 0.5

    def _removal_order(self) -> list[tuple[int, int]]:
        """Live ``(group, unit)`` pairs in removal order: ascending importance, floors respected."""
        scores, owners = [], []
        for gi, g in enumerate(self.groups):
            unit_score = self._score(gi).view(g.tie, g.size // g.tie).sum(0).cpu()  # (units,)
            live = torch.nonzero(self._units(gi).cpu()).flatten()
            scores.append(unit_score[live].double())
            owners += [(gi, int(u)) for u in live]
        order = torch.argsort(torch.cat(scores), stable=True).tolist()
        room = [int(self._units(gi).sum()) - self.low_units[gi] for gi in range(len(self.groups))]
        chosen = []
        for i in order:
            gi = owners[i][0]
            if room[gi] > 0:
                room[gi] -= 1
                chosen.append(owners[i])
        return chosen

    def _fewest_removals(self, order: list[tuple[int, int]], budget: float) -> int:
        """The smallest prefix of ``order`` whose removal brings the cost within ``budget`` (bisection)."""
        live = [int(self._units(gi).sum()) for gi in range(len(self.groups))]
        owners = torch.tensor([gi for gi, _ in order], dtype=torch.long)

        def cost(k: int) -> float:
            removed = torch.bincount(owners[:k], minlength=len(live)).tolist()
            return self._units_cost([n - r for n, r in zip(live, removed)])

        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if cost(mid) <= budget else (mid + 1, hi)
        return lo

    def _give_back(self, removed: list[tuple[int, int]], budget: float) -> list[tuple[int, int]]:
        """``removed`` minus the units that fit back within ``budget``, most important first.

        The fewest removals overshoot the budget by up to one unit's cost (the last removed unit may be
        an expensive one); handing back cheaper removed units while the budget holds lands closer to it.
        """
        units = [int(self._units(gi).sum()) for gi in range(len(self.groups))]
        for gi, _ in removed:
            units[gi] -= 1
        trial: dict[int, float] = {}  # group -> cost with one more unit of it (valid until a give-back)
        keep_out = []
        for gi, unit in reversed(removed):
            if gi not in trial:
                trial[gi] = self._units_cost([u + (i == gi) for i, u in enumerate(units)])
            if trial[gi] <= budget:
                units[gi] += 1
                trial.clear()
            else:
                keep_out.append((gi, unit))
        return keep_out[::-1]

    def _units_cost(self, units: list[int]) -> float:
        counts = torch.tensor([float(u * g.tie) for u, g in zip(units, self.groups)])  # (G,)
        with torch.no_grad():
            return float(self.efficiency(counts))

    def _drop(self, gi: int, unit: int) -> None:
        g = self.groups[gi]
        units = g.size // g.tie
        self._keep(gi)[torch.arange(g.tie) * units + unit] = 0.0

    # ------------------------------------------------------------------ training
    def run(
        self,
        train_loader: Iterable[Any],
        schedule: TickTock | None = None,
        max_steps: int | None = None,
        callback: Callable[[Any], None] | None = None,
        loss_fn: LossFn | None = None,
    ) -> TickTockTrace:
        """Prune to ``target`` with the Tick-Tock schedule; see :func:`wgates_plugin.tick_tock.run_tick_tock`."""
        return run_tick_tock(self, train_loader, schedule, max_steps, callback, loss_fn)

    # ------------------------------------------------------------------ export
    def fuse(self) -> None:
        """Merge ``phi`` into the model's BatchNorms (or producers) in place and reset ``phi`` to 1.

        The gated model computes the same afterwards; the scales now live in standard layers.
        """
        _merge_scales(self.model, self.sites, self.phi)
        with torch.no_grad():
            for phi in self.phi:
                phi.fill_(1.0)

    def export(self, verify: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
        """A physically pruned copy of the model that computes what the gated model computes.

        ``phi`` is merged into the copy's BatchNorm (or producer) weights and biases, then the removed
        channels leave through torch-pruning. The copy has no hooks and no ``phi``; the original keeps
        both. After export, :attr:`history` holds torch-pruning's pruning history of the copy.

        Raises:
            StateError: ``target`` is set and not reached yet (call :meth:`run` or :meth:`prune`).
            ExportError: with ``verify``, the copy's eval outputs differ from the gated model's.
        """
        if not self.finished:
            raise StateError(f"export() before the pruning reached target={self.target} (cost now "
                             f"{self.cost_ratio():.4f}): call run() or prune(to_cost={self.target}) first")
        self.remove()
        try:
            pruned = copy.deepcopy(self.model)
        finally:
            self.attach()
        _merge_scales(pruned, self.sites, self.phi)
        self.history = prune_groups(pruned, self.example_inputs, self.removal_plan())
        if verify:
            verify_outputs(self.model, pruned, self.example_inputs, rtol, atol)
        return pruned

    def removal_plan(self) -> dict[str, torch.Tensor]:
        """``{root layer name: output indices to remove}``, what :func:`~wgates_plugin.export.prune_groups` takes."""
        return removal_plan(self.groups, [self._keep(gi) for gi in range(len(self.groups))])

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {"groups": [g.name for g in self.groups], "sites": [s.name for s in self.sites],
                "batches": self.batches}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        names, sites = [g.name for g in self.groups], [s.name for s in self.sites]
        if list(state["groups"]) != names or list(state["sites"]) != sites:
            raise ConfigError(f"state was saved for groups {list(state['groups'])[:4]}..., "
                              f"these are {names[:4]}...")
        self.batches = int(state["batches"])


# ---------------------------------------------------------------------------- helpers
def _sites(gi: int, group: ChannelGroup, order: Mapping[str, int]) -> list[ScaleSite]:
    """GBN sites: the group's affine BatchNorms; without any, its producers' outputs (in model order)."""
    bns = [m for m in group.members if m.role is Role.PASS and _affine_bn(m.module)]
    members = sorted(bns or group.producers, key=lambda m: order.get(m.name, len(order)))
    return [ScaleSite(gi, m.name, m.module, m.idxs, m.channels, bool(bns)) for m in members]


def _affine_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine


def _along(vector: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``vector`` shaped to broadcast along dimension ``dim`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vector.view(shape)


def _merge_scales(model: nn.Module, sites: list[ScaleSite], phis: nn.ParameterList) -> None:
    """Multiply every site's BN affine terms (or producer weight rows and bias) by its ``phi``, in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for site, phi in zip(sites, phis):
            module = modules[site.name]
            weight = cast(torch.Tensor, module.weight)
            idxs = site.idxs.to(weight.device)
            factor = phi.detach().to(weight)  # (n,)
            weight[idxs] *= _along(factor, 0, weight.dim())
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias[idxs] *= factor


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_number(name: str, value: object, low: float, high: float, high_closed: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"{name}={value!r} must be a number")
    if not (low < value <= high if high_closed else low < value < high):
        raise ConfigError(f"{name}={value!r} must be in ({low:g}, {high:g}{']' if high_closed else ')'}")


def _check_arguments(target: object, select: object, min_keep: object, ratio: object,
                     layers: Mapping[str, float] | None) -> None:
    if target is not None:
        _check_number("target", target, 0.0, 1.0, high_closed=True)
    if select is not None and not callable(select):
        raise ConfigTypeError(f"select must be a callable (name, module) -> bool, got {type(select).__name__}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
        raise ConfigError(f"min_keep={min_keep!r} must be an int >= 1 (channels every gated group keeps)")
    for name, value in [("min_keep_ratio", ratio)] + [(f"layer_min_keep[{k!r}]", v) for k, v in (layers or {}).items()]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{name}={value!r} must be a kept fraction in [0, 1)")



def _check_names(model: nn.Module, what: str, names: Iterable[str]) -> None:
    unknown = set(names) - {n for n, _ in model.named_modules()}
    if unknown:
        raise ConfigError(f"{what} names layers that are not in the model: {sorted(unknown)}")
