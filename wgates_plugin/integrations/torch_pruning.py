"""W-Gates for torch-pruning users: a learned-score importance and a sparse-training pruner.

The two-line swap, in a script written for torch-pruning's ``MetaPruner``::

    imp = tp.importance.MagnitudeImportance(p=1)                       # before
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp,
                                  pruning_ratio=0.5, ignored_layers=[model.fc])

    imp = WGatesImportance()                                            # after
    pruner = WGatesMetaPruner(model, example_inputs, importance=imp,
                              pruning_ratio=0.5, ignored_layers=[model.fc])

then torch-pruning's sparse-training pattern (as with ``BNScalePruner`` / ``GroupNormPruner``)::

    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        pruner.regularize(model)      # efficiency term + one step of the gates
        optimizer.step()
    pruner.step()                     # removes the closed channels, in place

``pruning_ratio`` keeps torch-pruning's meaning: without ``global_pruning`` every prunable group keeps
``int(C * (1 - ratio))`` of its ``C`` channels, the ones with the highest learned gate scores; with
``global_pruning=True`` the kept channels of all groups together are ``int(total * (1 - ratio))`` and
the gates learn the split; ``target=`` replaces the ratio by a FLOPs budget. The model is gated
from the constructor on, so it trains exactly as the pruned model will compute: ``step()`` checks that
the pruned model reproduces the gated model's outputs.

:class:`WGatesImportance` also works on its own in any torch-pruning pruner, ranking channels by
learned gate scores (torch-pruning then decides the counts itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..config import BudgetMode, LayerBounds, WGatesConfig
from ..errors import ConfigError, ConfigTypeError, StateError
from ..groups import ChannelGroup, Member, Role, gated_groups
from ..pruner import WGates
from ..utils import check_number, device_of, unchanged_on_error
from .budgets import LinearCostModel

__all__ = ["WGatesImportance", "WGatesMetaPruner"]

OPTION_FIELDS = ("alpha", "controller_rate", "tolerance", "score_input", "weight_grad", "init_score")


class WGatesImportance(tp.importance.Importance):
    """torch-pruning importance: the learned W-Gates score of every channel of a group.

    Args:
        wgates: the attached :class:`~wgates_plugin.WGates` whose scores to report. Leave it out when
            passing the importance to :class:`WGatesMetaPruner`, which binds its own.

    Returns (when called on a torch-pruning group): a 1-D tensor with one score per root index of
    the group, higher = more important; ``None`` for a group W-Gates does not gate (torch-pruning
    pruners skip such groups).
    """

    def __init__(self, wgates: WGates | None = None) -> None:
        self._index: dict[nn.Module, tuple[int, Member]] = {}
        self.wgates: WGates | None = None
        if wgates is not None:
            self.bind(wgates)

    def bind(self, wgates: WGates) -> None:
        """Score with ``wgates`` from now on."""
        self.wgates = wgates
        self._index = {m.module: (gi, m) for gi, g in enumerate(wgates.groups)
                       for m in g.members if m.role is Role.PRODUCER}

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        if self.wgates is None:
            raise StateError("WGatesImportance is not bound to a WGates: pass WGatesImportance(wgates) or give "
                             "it to WGatesMetaPruner")
        root = group[0].dep.target.module
        hit = self._index.get(root)
        if hit is None or getattr(group[0].dep.handler, "__name__", "") != "prune_out_channels":
            return None
        gi, member = hit
        scores = self.wgates.gates[gi].channel_scores()  # (C,)
        lookup = dict(zip(member.idxs.tolist(), member.channels.tolist()))
        return scores[torch.tensor([lookup[int(i)] for i in group[0].idxs], device=scores.device)]


class WGatesMetaPruner:
    """A drop-in for torch-pruning's ``MetaPruner`` that learns which channels to remove (W-Gates).

    Args:
        model: the model; gated in place from now on (forward hooks, no class changes).
        example_inputs: a batch the model accepts, for tracing.
        importance: ``None`` or a :class:`WGatesImportance` (bound to this pruner's gates); W-Gates
            ranks by learned scores, so another importance is refused.
        global_pruning: one shared channel budget over all groups (split learned) instead of the same
            ratio in every group.
        pruning_ratio: fraction of channels to remove (default 0.5); not with ``target``.
        pruning_ratio_dict: ``{module or tuple of modules: ratio}``: a fixed ratio for the groups of
            those modules (a tuple gives each of its modules that ratio).
        max_pruning_ratio: no group loses more than this fraction of its channels.
        ignored_layers: modules (with their submodules) or module classes never pruned; a group that
            contains one stays whole.
        target: keep this fraction of the FLOPs instead (per-group widths learned).
        prune_shortcuts: also prune residual-coupled groups, with one gate shared by the coupled convs
            (default True, as torch-pruning does).
        gate_lr: Adam learning rate of the gates, stepped by :meth:`regularize`.
        iterative_steps: must be 1 (W-Gates prunes once, after sparse training).
        **options: W-Gates knobs ``alpha``, ``controller_rate``, ``tolerance``, ``score_input``,
            ``weight_grad``, ``init_score`` (see :class:`~wgates_plugin.WGatesConfig`).

    Raises:
        ConfigError / ConfigTypeError: an argument is invalid or unsupported.
        BudgetError: ``target`` or the global budget is unreachable.
    """

    @unchanged_on_error
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: WGatesImportance | None = None,
        global_pruning: bool = False,
        pruning_ratio: float | None = None,
        pruning_ratio_dict: Mapping[Any, float] | None = None,
        max_pruning_ratio: float = 1.0,
        ignored_layers: Iterable[Any] | None = None,
        *,
        target: float | None = None,
        prune_shortcuts: bool = True,
        gate_lr: float = 1e-3,
        iterative_steps: int = 1,
        **options: Any,
    ) -> None:
        _check_arguments(importance, pruning_ratio, target, max_pruning_ratio, global_pruning,
                         gate_lr, iterative_steps, options)
        self.model = model
        self.example_inputs = example_inputs
        self.pruning_ratio = 0.5 if pruning_ratio is None and target is None else pruning_ratio
        self.global_pruning = global_pruning
        self.max_pruning_ratio = max_pruning_ratio
        self.current_step = 0
        self._history: list[tuple[str, bool, list[int]]] = []
        self._trained_steps = 0
        self.wgates = self._build(pruning_ratio_dict or {}, ignored_layers or [], target, prune_shortcuts,
                                  options)
        self.importance = importance if importance is not None else WGatesImportance()
        self.importance.bind(self.wgates)
        self.gate_optimizer = torch.optim.Adam(self.wgates.parameters(), lr=gate_lr)

    # ------------------------------------------------------------------ construction
    def _build(self, ratio_dict: Mapping[Any, float], ignored: Iterable[Any], target: float | None,
               prune_shortcuts: bool, options: dict[str, Any]) -> WGates:
        names = {m: n for n, m in self.model.named_modules()}
        fixed = _layer_ratios(ratio_dict, names)
        exclude, exclude_types = _ignored(ignored, names)
        local = target is None and not self.global_pruning
        groups = gated_groups(self.model, self.example_inputs, exclude=exclude, exclude_types=exclude_types,
                              prune_shortcuts=prune_shortcuts)[1]
        layer_bounds = {p.name: self._bounds(g, fixed, local) for g in groups for p in g.producers}
        efficiency = None
        if self.global_pruning:
            efficiency, target = _channel_budget(groups, float(self.pruning_ratio or 0.0))
        config = WGatesConfig(mode=BudgetMode.NONE if local else BudgetMode.TARGET, target=target,
                              prune_shortcuts=prune_shortcuts, exclude=exclude, exclude_types=exclude_types,
                              bounds=LayerBounds(min_keep=1.0 - self.max_pruning_ratio), layer_bounds=layer_bounds,
                              **options)
        return WGates(self.model, self.example_inputs, config=config, efficiency=efficiency,
                      groups=groups).to(device_of(self.model))

    def _bounds(self, group: ChannelGroup, fixed: Mapping[str, float], local: bool) -> LayerBounds:
        ratios = {fixed[n] for n in group.layer_names if n in fixed}
        if len(ratios) > 1:
            raise ConfigError(f"pruning_ratio_dict gives the coupled layers {group.layer_names} different ratios "
                              f"{sorted(ratios)}; they must keep the same channels")
        ratio = ratios.pop() if ratios else (self.pruning_ratio if local else None)
        if ratio is None:
            return LayerBounds(min_keep=1.0 - self.max_pruning_ratio)
        units = group.size // group.tie
        kept = max(1, int(units * (1.0 - min(ratio, self.max_pruning_ratio))))  # torch-pruning's rounding
        return LayerBounds(kept / units, kept / units)

    # ------------------------------------------------------------------ training
    def regularize(self, model: nn.Module | None = None, reg: float = 1.0) -> None:
        """Call after ``loss.backward()``: add the efficiency term's gradient, step the gates and the
        target multiplier once.

        Args:
            model: the model being trained (checked to be this pruner's); optional.
            reg: weight of the efficiency term for this step.
        """
        if model is not None and model is not self.model:
            raise ConfigError("regularize() got a different model than the one this pruner gates")
        if self.current_step:
            raise StateError("the model is already pruned: regularize() belongs before step()")
        loss = reg * self.wgates.efficiency_loss()
        if loss.requires_grad:
            loss.backward()
        self.gate_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.wgates.update_multiplier()
        self._trained_steps += 1

    def update_regularizer(self) -> None:
        """Kept for torch-pruning compatibility: the gates need no regularizer update."""

    # ------------------------------------------------------------------ pruning
    def step(self, interactive: bool = False) -> None:
        """Freeze the gates (landing the budget) and remove every closed channel from the model, in place.

        Raises:
            StateError: :meth:`regularize` was never called (the gates learned nothing), or already pruned.
            ExportError: the pruned model does not reproduce the gated model's outputs.
        """
        if interactive:
            raise ConfigError("interactive pruning is not supported: W-Gates removes what its gates closed")
        if self.current_step:
            raise StateError("step() was already called: the model is pruned")
        if not self._trained_steps:
            raise StateError("the gates were never trained: W-Gates learns which channels to keep from data. "
                             "Call pruner.regularize(model) after every loss.backward() of a training loop, "
                             "then step()")
        self.wgates.freeze()
        self.wgates.export(in_place=True)
        self._history = self.wgates.history
        self.current_step = 1

    def pruning_history(self) -> list[tuple[str, bool, list[int]]]:
        """torch-pruning's pruning history of :meth:`step` (replay it with ``DependencyGraph.load_pruning_history``)."""
        return list(self._history)

    def estimate_importance(self, group: Any) -> torch.Tensor | None:
        """The learned scores of a torch-pruning group (see :class:`WGatesImportance`)."""
        return self.importance(group)


# ---------------------------------------------------------------------------- helpers
def _check_arguments(importance: Any, pruning_ratio: Any, target: Any, max_ratio: Any, global_pruning: Any,
                     gate_lr: Any, iterative_steps: Any, options: Mapping[str, Any]) -> None:
    if importance is not None and not isinstance(importance, WGatesImportance):
        raise ConfigTypeError(f"importance={type(importance).__name__}: W-Gates ranks channels by learned gate "
                              "scores; pass importance=WGatesImportance() or leave it out")
    if pruning_ratio is not None and target is not None:
        raise ConfigError("pass pruning_ratio or target, not both: they are two budgets")
    if target is not None and global_pruning:
        raise ConfigError("global_pruning shares a channel budget; target is already a global budget: "
                          "pass one of them")
    for name, value, interval in (("pruning_ratio", pruning_ratio, "[0, 1)"), ("target", target, "(0, 1]"),
                                  ("max_pruning_ratio", max_ratio, "(0, 1]")):
        if value is not None:
            check_number(name, value, interval, what="", type_error=ConfigError)
    check_number("gate_lr", gate_lr, "> 0", type_error=ConfigError)
    if iterative_steps != 1:
        raise ConfigError(f"iterative_steps={iterative_steps!r}: W-Gates prunes once, after sparse training; use 1")
    unknown = sorted(set(options) - set(OPTION_FIELDS))
    if unknown:
        raise ConfigTypeError(f"unsupported argument(s) {unknown}; WGatesMetaPruner takes importance, "
                              "global_pruning, pruning_ratio, pruning_ratio_dict, max_pruning_ratio, ignored_layers, "
                              f"target, prune_shortcuts, gate_lr, iterative_steps, {', '.join(OPTION_FIELDS)}")


def _layer_ratios(ratio_dict: Mapping[Any, float], names: Mapping[nn.Module, str]) -> dict[str, float]:
    out = {}
    for key, ratio in ratio_dict.items():
        check_number("pruning_ratio_dict ratio", ratio, "[0, 1)", what="", type_error=ConfigError)
        for module in key if isinstance(key, tuple) else (key,):
            if module not in names:
                raise ConfigError(f"pruning_ratio_dict has a key that is not a module of the model: {module!r}")
            out.update({names[sub]: float(ratio) for sub in module.modules()})
    return out


def _ignored(ignored: Iterable[Any], names: Mapping[nn.Module, str]) -> tuple[tuple[str, ...], tuple[type, ...]]:
    layers, types = [], []
    for item in ignored:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        elif isinstance(item, nn.Module) and item in names:
            layers += [names[m] for m in item.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        else:
            raise ConfigError(f"ignored_layers takes modules of the model or module classes, got {item!r}")
    return tuple(layers), tuple(types)


def _channel_budget(groups: list[ChannelGroup], ratio: float) -> tuple[LinearCostModel, float]:
    """torch-pruning's global budget: ``int(total * (1 - ratio))`` kept channels (grouped convs count once)."""
    units = [g.size // g.tie for g in groups]
    model = LinearCostModel([g.name for g in groups], [g.size for g in groups], [1.0 / g.tie for g in groups],
                            "channels")
    total = sum(units)
    kept = int(total * (1.0 - ratio))
    if kept < len(groups):
        raise ConfigError(f"pruning_ratio={ratio} keeps {kept} channels, fewer than one per group ({len(groups)})")
    return model, kept / total
