"""From per-layer NNI settings to gated channel groups, their bounds and their budgets.

W-Gates gates *channel groups* (layers that must keep the same channels: a conv and its depthwise
partner, the convs summed by a residual addition). NNI configures *layers*. The mapping:

- a group is gated when the config list selects one of its producers or its BatchNorm; its other
  producers follow it (one shared gate, identical masks — what NNI's ``dependency_group_id`` promises);
- the selected layers of one group must ask for the same thing (``sparse_ratio``, bounds,
  ``global_group_id``), otherwise :class:`~wgates_plugin.errors.ConfigError` names them;
- a group that cannot be pruned exactly (it produces the model output, passes a channel-mixing op,
  ...) or that contains a layer the config excludes stays whole, with a note saying why;
- ``sparse_ratio`` alone fixes the kept count (NNI's rounding: ``C - int(C * ratio)`` kept), clamped
  into ``[min_sparse_ratio, max_sparse_ratio]`` as NNI does; otherwise those two bound the group;
- ``global_group_id``: one :class:`~wgates_plugin.budget.Budget` per id, counted
  as NNI counts it, in weight elements of the selected layers: at least ``int(total * sparse_ratio)``
  elements of their weights end up masked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from ..budget import Budget, DualMultiplier
from ..config import LayerBounds
from ..errors import ConfigError
from ..groups import ChannelGroup, Role
from .budgets import LinearCostModel
from .nni_config import LayerSetting

__all__ = ["GroupPlan", "plan_groups", "group_bounds", "shared_budgets"]


@dataclass(frozen=True)
class GroupPlan:
    """A channel group the config list gates, with the one setting its selected layers agree on."""

    group: ChannelGroup
    setting: LayerSetting
    selected: tuple[str, ...]

    @property
    def free(self) -> bool:
        """Neither a fixed ratio nor a shared budget decides its width (a FLOPs target or alpha does)."""
        return self.setting.sparse_ratio is None and self.setting.global_group_id is None


def plan_groups(
    groups: Sequence[ChannelGroup], settings: Mapping[str, LayerSetting], excluded: set[str]
) -> tuple[list[GroupPlan], list[str]]:
    """The gated groups and notes on every selected layer that stays whole.

    Raises:
        ConfigError: coupled layers ask for different settings, or no selected layer can be pruned.
    """
    plans, notes, claimed = [], [], set()
    for g in groups:
        names = [m.name for m in g.members if m.role is not Role.CONSUMER and m.name in settings]
        if not names:
            continue
        claimed.update(names)
        why = g.reason or _excluded_reason(g, excluded)
        if why:
            notes.append(f"{', '.join(names)}: not pruned: {why}")
            continue
        plans.append(GroupPlan(g, _agreed(g, [settings[n] for n in names]), tuple(names)))
    notes += [f"{n}: not pruned: it is in no channel group rooted at a Conv2d / Linear layer"
              for n in sorted(set(settings) - claimed)]
    if not plans:
        raise ConfigError("config_list selects no layer W-Gates can prune: " + "; ".join(notes))
    return plans, notes


def _excluded_reason(group: ChannelGroup, excluded: set[str]) -> str | None:
    hits = [m.name for m in group.members if m.role is not Role.CONSUMER and m.name in excluded]
    if not hits:
        return None
    return f"it must keep the same channels as the excluded layer(s) {', '.join(hits)}"


def _agreed(group: ChannelGroup, settings: list[LayerSetting]) -> LayerSetting:
    keys = {s.key() for s in settings}
    if len(keys) > 1:
        how = "a residual addition" if group.shortcut else "their channel dependencies"
        raise ConfigError(
            f"layers coupled through {how} must keep the same channels, but the config list asks for different "
            f"settings: {'; '.join(s.describe() for s in settings)}. Give them the same sparse_ratio, "
            "min/max_sparse_ratio and global_group_id, or exclude them"
        )
    return settings[0]


def group_bounds(plan: GroupPlan) -> LayerBounds:
    """Kept-fraction bounds of a gated group (fixed when ``sparse_ratio`` alone decides it)."""
    s, size = plan.setting, plan.group.size
    low = s.min_sparse_ratio or 0.0
    high = 1.0 if s.max_sparse_ratio is None else s.max_sparse_ratio
    if s.sparse_ratio is not None and s.global_group_id is None:
        kept = size - int(size * min(high, max(low, s.sparse_ratio)))  # NNI's rounding
        return LayerBounds(kept / size, kept / size)
    return LayerBounds(1.0 - high, 1.0 - low)


def shared_budgets(
    plans: Sequence[GroupPlan], gated: Sequence[ChannelGroup], alpha: float, rate: float
) -> list[Budget]:
    """One :class:`~wgates_plugin.budget.Budget` (with a multiplier) per ``global_group_id``, counted in
    weight elements of its selected layers.

    Args:
        plans: the gated groups' plans.
        gated: the gated groups in the order of the gates (the encoding).
        alpha: initial multiplier of each budget's penalty.
        rate: dual-ascent step of each multiplier.
    """
    position = {g.name: i for i, g in enumerate(gated)}
    by_id: dict[object, list[GroupPlan]] = defaultdict(list)
    for p in plans:
        if p.setting.global_group_id is not None:
            by_id[p.setting.global_group_id].append(p)
    return [_budget(gid, members, position, alpha, rate) for gid, members in by_id.items()]


def _budget(gid: object, plans: list[GroupPlan], position: dict[str, int], alpha: float, rate: float) -> Budget:
    ratios = {p.setting.sparse_ratio for p in plans}
    if len(ratios) != 1 or None in ratios:
        layers = "; ".join(p.setting.describe() for p in plans)
        raise ConfigError(f"global_group_id={gid!r} needs one sparse_ratio shared by all its layers: {layers}")
    ratio = float(ratios.pop() or 0.0)
    weights = [_elements_per_channel(p) for p in plans]
    sizes = [p.group.size for p in plans]
    model = LinearCostModel([p.group.name for p in plans], sizes, weights, "weight elements")
    total = int(round(model.reference()))
    budget = float(total - int(total * ratio))  # NNI masks int(total * ratio) elements
    name = f"global_group_id={gid!r}"
    return Budget(model, budget, [position[p.group.name] for p in plans], name,
                        multiplier=DualMultiplier(alpha, rate, budget / total))


def _elements_per_channel(plan: GroupPlan) -> float:
    """Weight elements of the selected layers that one kept channel of the group keeps."""
    total = 0.0
    for m in plan.group.members:
        if m.name in plan.selected and m.role is not Role.CONSUMER:
            weight = cast(torch.Tensor, m.module.weight)
            total += weight[0].numel() * len(m.idxs) / plan.group.size
    return total
