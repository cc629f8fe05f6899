"""Physical channel removal for NNI-format masks from any pruner (L1, FPGM, Taylor, Slim, W-Gates).

NNI 3.0's own ``ModelSpeedup`` fails on current torch unless handed a ``torch.fx`` graph; this does
the removal through torch-pruning's dependency graph instead:

1. every masked layer's removed output channels are its all-zero mask rows (``weight`` of a Conv2d /
   Linear, or of a BatchNorm, as Network Slimming masks them);
2. the layers that must keep the same channels (one torch-pruning group: a conv and its BatchNorm,
   depthwise partners, convs summed by a residual addition) are compared: the channels removed are
   those every masked layer of the group removed;
3. they leave through the package's one export path (:class:`~wgates_plugin.core.FixedGates`: the
   kept channels as keep vectors of the core, so the gated reference and the removal are the methods').

What "same outputs" means: the pruned model computes exactly what the original model computes with
the removed channels zeroed *where removal is exact*, at the inputs of the layers that consume them
(after BatchNorm and activation). It does not compute what the *weight-masked* model computes: a
weight mask zeroes a conv's filter but leaves the next BatchNorm's shift on that channel, which no
pruned model can reproduce. ``verify=True`` checks the former on ``dummy_input``.

Disagreeing masks: NNI's norm pruners mask residual-coupled convs independently, so inside one
coupled group their masks can differ. Then only the channels that *every* masked layer of the group
removed are removed (the union of the kept channels survives), with a warning that the outputs will
differ from the masked model on the channels some layer masked; ``strict=True`` raises instead.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .core import FixedGates
from .errors import ConfigError, ConfigTypeError, ExportError
from .groups import ChannelGroup, Role, trace_groups

__all__ = ["speedup", "read_masks", "MaskDecision"]

MaskInput = Mapping[str, Mapping[str, "torch.Tensor | None"]]  # any NNI pruner's masks (entries may be None)


@dataclass
class MaskDecision:
    """Which channels leave which group, as read from NNI masks.

    Attributes:
        removed: ``{group name: sorted removed group channels}`` for every group that loses channels.
        groups: the traced groups, by name.
        notes: what differs from the masks (disagreements, unprunable groups), one line each.
    """

    removed: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def keep_vectors(self) -> tuple[list[ChannelGroup], list[torch.Tensor]]:
        """The groups that lose channels and their 0/1 keep vectors ``(C,)``, as export takes them."""
        groups = [self.groups[name] for name in self.removed]
        keep = []
        for group, chans in zip(groups, self.removed.values()):
            vector = torch.ones(group.size)
            vector[chans] = 0
            keep.append(vector)
        return groups, keep


def speedup(model: nn.Module, masks: MaskInput, dummy_input: Any, strict: bool = False, verify: bool = True,
            rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
    """Remove, in place, the output channels that NNI-format ``masks`` zero; return ``model``.

    Args:
        model: the unwrapped model (call ``pruner.unwrap_model()`` first); its weights are kept as they
            are, the masks only decide which channels leave.
        masks: ``{layer name: {'weight': mask, 'bias': mask}}`` from any NNI pruner's ``compress()``.
        dummy_input: a batch the model accepts (tensor, tuple or dict).
        strict: raise instead of warning when coupled layers' masks disagree or a masked group cannot
            be removed.
        verify: check that the pruned model's eval outputs on ``dummy_input`` equal the original
            model's with the removed channels zeroed at their consumers.
        rtol, atol: tolerances of that check (the rule of :func:`~wgates_plugin.export.check_outputs`).

    Returns:
        ``model``, pruned (its classes stay; only tensor shapes shrink). When a check fails (or the
        call is interrupted) the removal is undone: the model is left exactly as it was.

    Raises:
        ConfigError: a mask names a missing layer or has the wrong shape; the model is still wrapped.
        ExportError: masks disagree or name an unprunable group and ``strict``; a group would lose
            every channel; or the verification fails.

    Example:
        >>> import torch, torchvision
        >>> from wgates_plugin import speedup
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> mask = torch.ones_like(model.layer1[0].conv1.weight); mask[:16] = 0
        >>> small = speedup(model, {'layer1.0.conv1': {'weight': mask}}, torch.randn(1, 3, 32, 32))
        >>> small.layer1[0].conv1.out_channels
        48
    """
    _check_unwrapped(model)
    decision = read_masks(model, masks, dummy_input, strict)
    for note in decision.notes:
        warnings.warn(note, stacklevel=2)
    groups, keep = decision.keep_vectors()
    if groups:  # the removed channels zeroed where they are consumed: the reference the check compares with
        fixed = FixedGates(model, dummy_input, groups, keep)
        try:  # a failed export puts the model back as it was (export_pruned); then the reference hooks go too
            fixed.export(verify=verify, rtol=rtol, atol=atol, in_place=True)
        except BaseException:
            fixed.remove()
            raise
    return model


# ---------------------------------------------------------------------------- masks → decision
def read_masks(model: nn.Module, masks: MaskInput, dummy_input: Any, strict: bool = False) -> MaskDecision:
    """Decide, group by group, which channels the masks remove (see the module docstring)."""
    rows = _removed_rows(model, masks)
    plan = MaskDecision(groups={})
    for group in trace_groups(model, dummy_input).groups:
        plan.groups[group.name] = group
        votes = _votes(group, rows)
        if not votes:
            continue
        removed = _decide(group, votes, plan.notes, strict)
        if len(removed):
            plan.removed[group.name] = removed
    return plan


def _removed_rows(model: nn.Module, masks: MaskInput) -> dict[str, torch.Tensor]:
    """``{layer: bool (out,)}``: True where the layer's weight mask zeroes the whole output row."""
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a dict {{layer name: {{'weight': mask}}}}, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    out = {}
    for name, entry in masks.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"masks[{name!r}] is a {type(entry).__name__}; each entry must be a dict of the layer's "
                              f"masks, NNI's format: {{{name!r}: {{'weight': mask}}}}")
        mask = entry.get("weight")
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor):
            raise ConfigTypeError(f"masks[{name!r}]['weight'] is a {type(mask).__name__}, not a tensor")
        weight = getattr(modules.get(name), "weight", None)
        if weight is None:
            raise ConfigError(f"masks name '{name}', which is not a layer with a weight in the model")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ConfigError(f"the mask of '{name}' has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}")
        out[name] = (mask.detach().reshape(mask.shape[0], -1) == 0).all(dim=1).cpu()  # (out,)
    return out


def _votes(group: ChannelGroup, rows: Mapping[str, torch.Tensor]) -> dict[str, set[int]]:
    """Removed group channels according to each masked member that owns output channels."""
    votes: dict[str, set[int]] = defaultdict(set)
    for m in group.members:
        if m.role is not Role.CONSUMER and m.name in rows:
            votes[m.name] |= set(m.channels[rows[m.name][m.idxs]].tolist())
    return dict(votes)


def _decide(group: ChannelGroup, votes: dict[str, set[int]], notes: list[str], strict: bool) -> torch.Tensor:
    removed = set.intersection(*votes.values())
    if any(v != removed for v in votes.values()):
        _report(strict, notes, _disagreement(group, votes, removed))
    removed = _balanced(group, removed, notes, strict)
    if removed and group.reason:
        _report(strict, notes, f"group '{group.name}': masks remove {len(removed)} channels, but it cannot be "
                               f"pruned exactly ({group.reason}); kept whole")
        return torch.zeros(0, dtype=torch.long)
    if len(removed) >= group.size:
        raise ExportError(f"the masks remove all {group.size} channels of group '{group.name}' "
                          f"({', '.join(sorted(votes))}): a layer cannot lose every channel")
    unmasked = sorted(m.name for m in group.producers if m.name not in votes)
    if removed and unmasked and any(m.name in votes for m in group.producers):
        notes.append(f"group '{group.name}': {', '.join(unmasked)} carry no mask but share channels with "
                     f"{', '.join(sorted(votes))}; they lose the same {len(removed)} channels")
    return torch.tensor(sorted(removed), dtype=torch.long)


def _disagreement(group: ChannelGroup, votes: dict[str, set[int]], removed: set[int]) -> str:
    how = "a residual addition" if group.shortcut else "their channel dependencies"
    counts = ", ".join(f"{name} removes {len(v)}" for name, v in sorted(votes.items()))
    return (f"group '{group.name}': layers coupled through {how} must keep the same channels but their masks "
            f"disagree ({counts}); only the {len(removed)} channels all of them remove are removed, so the "
            "pruned model keeps channels some masks zeroed and its outputs differ from the masked model's. "
            "Mask coupled layers identically (e.g. W-Gates does) or pass strict=True to refuse")


def _balanced(group: ChannelGroup, removed: set[int], notes: list[str], strict: bool) -> set[int]:
    """A grouped conv needs the same pattern in each of its ``tie`` conv groups: keep only full units."""
    if group.tie == 1 or not removed:
        return removed
    units = group.size // group.tie
    full = {u for u in range(units) if all(u + k * units in removed for k in range(group.tie))}
    kept = {u + k * units for u in full for k in range(group.tie)}
    if kept != removed:
        _report(strict, notes, f"group '{group.name}' feeds a grouped conv with {group.tie} groups; its masks "
                               f"do not remove the same channels in each, so only {len(kept)} of {len(removed)} "
                               "masked channels are removed")
    return kept


def _report(strict: bool, notes: list[str], message: str) -> None:
    if strict:
        raise ExportError(message)
    notes.append(message)


def _check_unwrapped(model: nn.Module) -> None:
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "_nni_wrapper")]
    if wrapped:
        raise ConfigError(f"the model is still wrapped by an NNI pruner ({wrapped[0]}, ...): call "
                          "pruner.unwrap_model() before speedup()")
