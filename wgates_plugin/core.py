"""The method-agnostic channel-gating core. A method (W-Gates, Gate Decorator) supplies one keep
vector per gated group (:meth:`ChannelGating.current_gates`); the core owns the rest: the traced and
selected groups, ``why_not``, the consumer-side hooks (zeroing a channel where it leaves its group is
exactly removing it), cost bookkeeping and the feasibility check, the state check, and the one export
path and NNI-mask converter of :mod:`wgates_plugin.export`.

Example (a method that keeps the first half of every group):
    >>> import torch, torchvision
    >>> from wgates_plugin.core import ChannelGating
    >>> class FirstHalf(ChannelGating):
    ...     def __init__(self, model, x):
    ...         super().__init__(model, x)
    ...         self.masks = [torch.arange(g.size).lt(g.size // 2).float() for g in self.groups]
    ...         self.attach()
    ...     def current_gates(self):
    ...         return self.masks
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> half = FirstHalf(model, x)
    >>> small = half.export()          # verified: same outputs as the gated model
    >>> small.layer1[0].conv1.out_channels
    32
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .budget import UnitBounds, minimum_cost
from .efficiency.base import EfficiencyModel, bind_efficiency
from .efficiency.flops import FlopsModel, record_layer_shapes
from .errors import BudgetError, ConfigError, StateError
from .export import History, Masks, export_pruned, nni_masks
from .groups import ChannelGroup, GroupGraph, Member, consumer_feeds, gated_groups, removal_plan, scale_input, why_not
from .utils import unchanged_on_error

__all__ = ["ChannelGating", "FixedGates", "GateHook", "Selector", "EfficiencyArg"]

Selector = Callable[[str, nn.Module], bool]
EfficiencyArg = EfficiencyModel | Callable[[list[ChannelGroup]], EfficiencyModel] | None


class ChannelGating(nn.Module):
    """Channel groups of a model with one keep vector each, applied by hooks, costed and exportable.

    Args:
        model: the network; not copied. Hooks apply the gates, so its classes, parameters and their
            ``id()`` stay as they are. Its train/eval mode is restored after tracing.
        example_inputs: a batch the model accepts (tensor, tuple or dict), for tracing.
        select, exclude, exclude_types, root_types, prune_shortcuts: which groups are gated, see
            :func:`~wgates_plugin.groups.gated_groups` (a residual-coupled group gets one vector).
        efficiency: the cost model: an :class:`~wgates_plugin.efficiency.EfficiencyModel` or a callable
            ``groups -> model`` (default: the FLOPs of this model).
        groups: already selected groups of this model (a front end that planned them); the model is
            then not traced again and the selection arguments are not used.

    A subclass builds its per-group state, calls :meth:`attach`, implements :meth:`current_gates` and
    :meth:`unit_bounds`, and may override the hooks below (``_method_hooks`` ... ``_prepare_export``).
    """

    #: whether the cost model is a submodule (in ``parameters()`` / ``state_dict``) or kept beside it.
    efficiency_in_state: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every method's constructor leaves the model as it was when it raises (hooks, modes, attributes)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = unchanged_on_error(cls.__init__)  # type: ignore[method-assign]

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        select: Selector | None = None,
        exclude: Iterable[str] = (),
        exclude_types: tuple[type, ...] = (),
        root_types: tuple[type, ...] = (),
        prune_shortcuts: bool = False,
        efficiency: EfficiencyArg = None,
        groups: Sequence[ChannelGroup] | None = None,
    ) -> None:
        super().__init__()
        self._model = [model]  # a list keeps the model out of this module's parameters and state_dict
        self.example_inputs = example_inputs
        self.prune_shortcuts = bool(prune_shortcuts)
        self.traced: GroupGraph | None = None
        self.groups: list[ChannelGroup] = []
        if groups is None:
            self.traced, self.groups = gated_groups(model, example_inputs, select, exclude, exclude_types, root_types,
                                                    self.prune_shortcuts)
        else:
            self.groups = list(groups)
        self.flops = FlopsModel(record_layer_shapes(model, example_inputs), self.groups)
        cost = self.flops if efficiency is None else bind_efficiency(efficiency, self.groups)
        if self.efficiency_in_state:
            self.efficiency = cost
        else:
            object.__setattr__(self, "efficiency", cost)  # not a submodule: parameters() stay the method's
        self.reference_cost = self.efficiency.reference()
        self.history: History = []  # torch-pruning's, set by export()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------ construction
    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def why_not(self, group: ChannelGroup) -> str:
        """Why ``group`` is not gated (or 'gated')."""
        return why_not(group, self.groups, self.prune_shortcuts)

    # ------------------------------------------------------------------ what a method supplies
    def current_gates(self) -> list[torch.Tensor]:
        """The vector applied to every gated group's channels now, each ``(C,)``."""
        raise NotImplementedError

    def keep_masks(self) -> list[torch.Tensor]:
        """The 0/1 keep decision of every gated group, each ``(C,)`` (default: the current gates)."""
        with torch.no_grad():
            return [g.detach() for g in self.current_gates()]

    def unit_bounds(self) -> list[UnitBounds]:
        """The fewest and most units (``tie`` channels each) every gated group may keep."""
        raise NotImplementedError

    def _method_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks of the method besides the consumer-side ones (registered first by :meth:`attach`)."""
        return []

    def _on_remove(self) -> None:
        """Called after the hooks are removed."""

    def _check_exportable(self) -> None:
        """Raise :class:`~wgates_plugin.errors.StateError` when the gates are not final yet."""

    def _prepare_export(self, pruned: nn.Module) -> None:
        """Change the hook-free copy before its channels are removed (e.g. merge scales)."""

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Register the hooks that apply the gates (done by the constructor)."""
        if self._handles:
            return
        self._handles += self._method_hooks()
        for module, feeds in consumer_feeds(self.groups).items():
            self._handles.append(module.register_forward_pre_hook(GateHook(self._consumer_hook(feeds))))

    def remove(self) -> None:
        """Remove every hook: the model computes exactly what it computed before attaching."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._on_remove()

    def _consumer_hook(self, feeds: list[tuple[int, Member]]) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            gates = self.current_gates()
            return (scale_input(args[0], feeds, gates.__getitem__),) + tuple(args[1:])

        return hook

    # ------------------------------------------------------------------ cost bookkeeping
    def counts(self) -> torch.Tensor:
        """The network encoding ``c``: live channels per gated group, shape ``(G,)`` (Eq. 9)."""
        return torch.stack([g.sum() for g in self.current_gates()])

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
        return {g.name: (int(m.sum()), g.size) for g, m in zip(self.groups, self.keep_masks())}

    def kept_channels(self) -> dict[str, torch.Tensor]:
        """``{group name: sorted kept channel indices}``."""
        return {g.name: torch.nonzero(m > 0.5).flatten().cpu() for g, m in zip(self.groups, self.keep_masks())}

    def stats(self) -> dict[str, Any]:
        """Cost and FLOPs ratios and kept channels, for logging."""
        return {"cost_ratio": self.cost_ratio(), "flops_ratio": self.flops_ratio(), "kept": self.kept()}

    def floor_ratio(self) -> float:
        """The cheapest cost (fraction of the unpruned) the per-group minimums allow."""
        return minimum_cost(self.efficiency, self.unit_bounds()) / self.reference_cost

    def check_reachable(self, label: str, target: float, slack: float = 0.0) -> None:
        """Raise :class:`BudgetError` when ``target`` (a cost fraction) is below :meth:`floor_ratio`.

        ``slack``: the relative distance a landing may stay above the target.
        """
        floor = self.floor_ratio()
        if floor > target * (1 + slack):
            raise BudgetError(
                f"{label} is unreachable: pruning every gated group to its minimum keeps {floor:.3f} of the "
                f"original {self.efficiency.unit or 'cost'} (shortcut-coupled, excluded and output layers stay "
                "whole). HINT: raise the target, lower the minimum kept fractions, or pass prune_shortcuts=True"
            )

    # ------------------------------------------------------------------ export
    def removal_plan(self) -> dict[str, torch.Tensor]:
        """``{root layer name: output indices to remove}`` (:func:`~wgates_plugin.groups.removal_plan`)."""
        return removal_plan(self.groups, self.keep_masks())

    def nni_masks(self, base: Masks | None = None) -> Masks:
        """NNI-format masks of the current keep decisions (see :func:`~wgates_plugin.export.nni_masks`)."""
        return nni_masks(self.groups, self.keep_masks(), base)

    def export(self, verify: bool = True, rtol: float = 1e-4, atol: float = 1e-5, in_place: bool = False) -> nn.Module:
        """A physically pruned copy (or, ``in_place``, the model itself, its hooks removed for good) that
        computes what the gated model computes: :func:`~wgates_plugin.export.export_pruned`, checked with
        ``rtol`` / ``atol`` when ``verify``. :attr:`history` then holds torch-pruning's history.

        Raises:
            StateError: the gates are not final yet.
            ExportError: with ``verify``, the outputs differ.
        """
        self._check_exportable()
        if not self._handles:
            raise StateError(f"export() after remove(): the gates no longer act on the model, so there is nothing to "
                             f"export; call {type(self).__name__}.attach() first")
        prepare = self._prepare_export if type(self)._prepare_export is not ChannelGating._prepare_export else None
        pruned, self.history = export_pruned(self.model, self.example_inputs, self.groups, self.keep_masks(),
                                             gating=self, prepare=prepare, in_place=in_place,
                                             verify=verify, rtol=rtol, atol=atol)
        return pruned

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"groups": [g.name for g in self.groups], **self._extra_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        names = [g.name for g in self.groups]
        if list(state["groups"]) != names:
            raise ConfigError(f"state was saved for groups {list(state['groups'])[:4]}..., these are {names[:4]}...")
        self._load_extra_state(state)


class FixedGates(ChannelGating):
    """Fixed 0/1 keep vectors on given groups (e.g. read from another pruner's masks), applied by the
    core's hooks and exported by its one path."""

    def __init__(self, model: nn.Module, example_inputs: Any, groups: Sequence[ChannelGroup],
                 keep: Sequence[torch.Tensor]) -> None:
        super().__init__(model, example_inputs, groups=groups)
        self.keep = [k.float() for k in keep]
        self.attach()

    def current_gates(self) -> list[torch.Tensor]:
        return self.keep

    def unit_bounds(self) -> list[UnitBounds]:
        return [UnitBounds(1, g.size // g.tie, g.tie) for g in self.groups]


class GateHook:
    """A gate hook that ``copy.deepcopy`` turns into a no-op.

    The gates live in the :class:`ChannelGating`, bound to the original model. A deep copy of a gated
    model (NNI and torch-pruning's op counter both make one) is the plain, ungated model; use
    :meth:`ChannelGating.export` for a pruned copy.
    """

    def __init__(self, fn: Callable | None) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return None if self.fn is None else self.fn(*args)

    def __deepcopy__(self, memo: dict) -> GateHook:
        return GateHook(None)
