"""Gate Decorator (You et al., NeurIPS 2019, arXiv:1909.08174) on the channel-gating core.

The method: a channel-wise scaling factor ``phi`` multiplies the output of every BatchNorm of a gated
channel group (a *gated BN*, GBN), initialised to 1 so attaching changes nothing. The first-order Taylor
estimate of the loss change when ``phi_i -> 0`` is ``|phi_i * dL/dphi_i|``; summed over batches (and over
the BNs of one coupled group: the paper's *group pruning*) it is the importance of channel ``i``.
Channels are ranked globally across layers and the least important are removed until a FLOPs (or any
:class:`~wgates_plugin.efficiency.EfficiencyModel`) budget holds. The Tick-Tock schedule
(:mod:`wgates_plugin.gate_decorator.tick_tock`) alternates Tick (weights frozen, ``phi`` trained, importance
accumulated, a small step of pruning) and Tock (the whole network fine-tuned with an L1 term on
``phi``). At export ``phi`` is merged into the BN's affine parameters, so no extra structure remains.

On the channel-gating core (:class:`~wgates_plugin.core.ChannelGating`): the groups, selection,
budgets' units, consumer-side masking and export are W-Gates' own. ``phi`` lives on every affine
BatchNorm of a gated group (a forward hook scales its output; without one, the producers' outputs).
Removed channels are zeroed where the group's channels are consumed, where zeroing is exactly
removing (zeroing ``phi`` is not: an activation with ``f(0) != 0`` or a bias after the BN would still
carry the channel); at export ``phi`` is merged into the BN (or producer) weight and bias.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin.gate_decorator import GateDecorator
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(4, 3, 32, 32)
    >>> gd = GateDecorator(model, x, target=0.5)
    >>> torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    >>> gd.accumulate()                  # importance |phi * dL/dphi| of this batch
    >>> round(gd.prune(target=0.5), 2)    # global ranking; lands at or just below the budget
    0.5
    >>> small = gd.export()              # phi merged into BN, channels removed, outputs verified
    >>> gd.remove()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..budget import UnitBounds, units_cost
from ..core import ChannelGating, EfficiencyArg, GateHook, Selector
from ..errors import ConfigError, ConfigTypeError, StateError
from ..groups import ChannelGroup, Role, along
from ..utils import check_names, check_number, device_of
from .tick_tock import run_tick_tock

__all__ = ["GateDecorator", "ScaleSite"]


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


class GateDecorator(ChannelGating):
    """Gate Decorator attached to a model: GBN scales, Taylor importance, global pruning, exact export.

    Args:
        model: the network to prune; it is not copied. Everything is applied by forward hooks, so its
            classes, parameters and their ``id()`` stay as they are.
        example_inputs: a batch the model accepts (tensor, tuple or dict), used for tracing.
        target: the budget, a fraction in (0, 1] of the unpruned cost of ``efficiency`` (FLOPs by
            default); :meth:`run` prunes to it, :meth:`export` requires it reached. None: no budget
            (prune with an explicit ``target`` / ``fraction``).
        efficiency: the cost model (default: :class:`~wgates_plugin.efficiency.FlopsModel` of this
            model): an :class:`~wgates_plugin.efficiency.EfficiencyModel` or a callable ``groups -> model``.
        select, exclude, exclude_types, root_types, prune_shortcuts: which groups are pruned, see
            :func:`~wgates_plugin.groups.gated_groups`; a residual-coupled group gets one pattern, its
            importance summed over the group's BNs (the paper's group pruning).
        min_channels: channels every gated group keeps at least (>= 1: no layer is ever emptied).
        min_keep: fraction of its channels every gated group keeps at least, in [0, 1).
        layer_min_keep: per producer-layer name, a kept-fraction floor for its group (the largest of
            these, ``min_channels`` and ``min_keep`` applies).
        groups: already selected groups of this model (a front end that planned them); the selection
            arguments are then not used and the model is not traced again.

    Raises:
        ConfigError: nothing is prunable, or an argument is invalid.
        ConfigTypeError: an argument has the wrong type.
        BudgetError: ``target`` is below the cheapest network the floors allow.
        TracingError: torch-pruning cannot trace the model.
    """

    efficiency_in_state = False  # parameters() are phi only

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        target: float | None = None,
        *,
        efficiency: EfficiencyArg = None,
        select: Selector | None = None,
        prune_shortcuts: bool = False,
        exclude: Iterable[str] = (),
        exclude_types: tuple[type, ...] = (),
        root_types: tuple[type, ...] = (),
        min_channels: int = 1,
        min_keep: float = 0.0,
        layer_min_keep: Mapping[str, float] | None = None,
        groups: list[ChannelGroup] | None = None,
    ) -> None:
        _check_arguments(target, select, min_channels, min_keep, layer_min_keep)
        super().__init__(model, example_inputs, select=select, exclude=exclude, exclude_types=exclude_types,
                         root_types=root_types, prune_shortcuts=prune_shortcuts, efficiency=efficiency, groups=groups)
        self.target = None if target is None else float(target)
        check_names(model, "layer_min_keep", tuple(layer_min_keep or {}))
        layers = layer_min_keep or {}
        self._bounds = [UnitBounds.of(g, max([min_keep] + [layers[n] for n in g.layer_names if n in layers]),
                                      1.0, min_channels) for g in self.groups]
        device = device_of(model)
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.sites = [s for gi, g in enumerate(self.groups) for s in _sites(gi, g, order)]
        self.phi = nn.ParameterList(nn.Parameter(torch.ones(len(s.idxs), device=device)) for s in self.sites)
        self.group_state = nn.ModuleList(_GroupState(g.size, device) for g in self.groups)
        self.batches = 0  # batches accumulated into the importance since the last reset
        self.steps_used = 0  # training steps of the last run()
        if self.target is not None:
            self.check_reachable(f"target={self.target}", self.target)
        self.attach()

    @property
    def low_units(self) -> list[int]:
        """The fewest units (``tie`` channels each) every gated group may keep."""
        return [b.low for b in self._bounds]

    def unit_bounds(self) -> list[UnitBounds]:
        return list(self._bounds)

    # ------------------------------------------------------------------ hooks
    def _method_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        return [site.module.register_forward_hook(GateHook(self._scale_hook(si))) for si, site in enumerate(self.sites)]

    def _scale_hook(self, si: int) -> Callable:
        site = self.sites[si]

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            dim = site.dim % output.dim()
            scale = output.new_ones(output.shape[dim])  # (C_module,)
            scale = scale.index_copy(0, site.idxs.to(output.device), self.phi[si].to(output.dtype))
            return output * along(scale, dim, output.dim())

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
        """Live channels per gated group, shape ``(G,)`` (float, on the CPU, where the cost model is)."""
        return super().counts().float().cpu()

    @property
    def finished(self) -> bool:
        """True once the cost is within ``target`` (always True without a target)."""
        return self.target is None or self.cost_ratio() <= self.target * (1 + 1e-9)

    # ------------------------------------------------------------------ pruning
    def prune(self, target: float | None = None, fraction: float | None = None) -> float:
        """Remove the least important live channels, ranked globally, until the cost is within a budget.

        Channels are ranked by accumulated importance across all gated groups (a unit of ``tie``
        channels of a grouped conv by the sum over its channels); a group never drops below its floor.
        The removals are the fewest, in ranking order, that bring the cost within the budget; removed
        units that fit back within it are then handed back (most important first), so the cost lands
        at the budget or below it by less than the cheapest removed unit. Pruning only removes: a
        budget above the current cost removes nothing.

        Args:
            target: the budget as a fraction of the unpruned cost, in (0, 1].
            fraction: or: remove this share of the current cost, in (0, 1).

        Returns:
            The cost ratio reached.

        Raises:
            ConfigError: neither or both arguments, or a value out of range.
            StateError: no importance was accumulated (call :meth:`accumulate` after a backward).
            BudgetError: the budget is below the cheapest network the floors allow.
        """
        goal = self._goal(target, fraction)
        if self.batches == 0:
            raise StateError("prune() ranks channels by accumulated importance and none was accumulated: "
                             "run a backward pass and call accumulate() first (run() does both)")
        label = f"target={target}" if target is not None else f"fraction={fraction} (a cost of {goal:.4f})"
        self.check_reachable(label, goal)
        budget = goal * self.reference_cost
        order = self._removal_order()
        removed = order[: self._fewest_removals(order, budget)]
        for gi, unit in self._give_back(removed, budget):
            self._drop(gi, unit)
        return self.cost_ratio()

    def _goal(self, target: float | None, fraction: float | None) -> float:
        if (target is None) == (fraction is None):
            raise ConfigError("prune() takes exactly one of target=<budget as a fraction of the unpruned cost> "
                              "and fraction=<share of the current cost to remove>")
        if target is not None:
            check_number("target", target, "(0, 1]", what="")
            return float(target)
        check_number("fraction", fraction, "(0, 1)", what="")
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
        return units_cost(self.efficiency, units, self._bounds)

    def _drop(self, gi: int, unit: int) -> None:
        g = self.groups[gi]
        units = g.size // g.tie
        self._keep(gi)[torch.arange(g.tie) * units + unit] = 0.0

    # ------------------------------------------------------------------ training
    run = run_tick_tock  # gd.run(train_loader, schedule, max_steps, callback, loss_fn): prune to target, Tick-Tock

    # ------------------------------------------------------------------ export
    def fuse(self) -> None:
        """Merge ``phi`` into the model's BatchNorms (or producers) in place and reset ``phi`` to 1.

        The gated model computes the same afterwards; the scales now live in standard layers.
        """
        _merge_scales(self.model, self.sites, self.phi)
        with torch.no_grad():
            for phi in self.phi:
                phi.fill_(1.0)

    def _check_exportable(self) -> None:
        if not self.finished:
            raise StateError(f"export() before the pruning reached target={self.target} (cost now "
                             f"{self.cost_ratio():.4f}): call run() or prune(target={self.target}) first")

    def _prepare_export(self, pruned: nn.Module) -> None:
        """``phi`` merged into the copy's BatchNorm (or producer) weights and biases."""
        _merge_scales(pruned, self.sites, self.phi)

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"sites": [s.name for s in self.sites], "batches": self.batches}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        sites = [s.name for s in self.sites]
        if list(state["sites"]) != sites:
            raise ConfigError(f"state was saved for scale sites {list(state['sites'])[:4]}..., "
                              f"these are {sites[:4]}...")
        self.batches = int(state["batches"])


# ---------------------------------------------------------------------------- helpers
def _sites(gi: int, group: ChannelGroup, order: Mapping[str, int]) -> list[ScaleSite]:
    """GBN sites: the group's affine BatchNorms; without any, its producers' outputs (in model order)."""
    bns = [m for m in group.members if m.role is Role.PASS and _affine_bn(m.module)]
    members = sorted(bns or group.producers, key=lambda m: order.get(m.name, len(order)))
    return [ScaleSite(gi, m.name, m.module, m.idxs, m.channels, bool(bns)) for m in members]


def _affine_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine


def _merge_scales(model: nn.Module, sites: list[ScaleSite], phis: nn.ParameterList) -> None:
    """Multiply every site's BN affine terms (or producer weight rows and bias) by its ``phi``, in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for site, phi in zip(sites, phis):
            module = modules[site.name]
            weight = cast(torch.Tensor, module.weight)
            idxs = site.idxs.to(weight.device)
            factor = phi.detach().to(weight)  # (n,)
            weight[idxs] *= along(factor, 0, weight.dim())
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias[idxs] *= factor


def _check_arguments(target: object, select: object, min_channels: object, min_keep: object,
                     layers: Mapping[str, float] | None) -> None:
    if target is not None:
        check_number("target", target, "(0, 1]", what="")
    if select is not None and not callable(select):
        raise ConfigTypeError(f"select must be a callable (name, module) -> bool, got {type(select).__name__}")
    check_number("min_channels", min_channels, ">= 1", integer=True, type_error=ConfigError)
    for name, value in [("min_keep", min_keep)] + [(f"layer_min_keep[{k!r}]", v) for k, v in (layers or {}).items()]:
        check_number(name, value, "[0, 1)", what="a kept fraction", type_error=ConfigError)
