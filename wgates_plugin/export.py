"""The one export path, channel groups + keep vectors → a physically smaller model, verified
(:func:`export_pruned`, used by both methods, the torch-pruning front end and ``speedup``), with the
one "same outputs" rule (:func:`check_outputs`) and the one keep vectors → NNI masks converter.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin.export import export_pruned
    >>> from wgates_plugin.groups import trace_groups
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> group = next(g for g in trace_groups(model, x).groups if g.name == "layer1.0.conv1")
    >>> keep = torch.ones(group.size); keep[:16] = 0
    >>> small, history = export_pruned(model, x, [group], [keep], verify=False)  # the model is not gated
    >>> small.layer1[0].conv1.out_channels, model.layer1[0].conv1.out_channels
    (48, 64)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .errors import ExportError
from .groups import ChannelGroup, Role, build_graph, removal_plan
from .utils import ModelGuard, eval_outputs, tensors_in

__all__ = ["History", "Masks", "prune_groups", "export_pruned", "check_outputs", "verify_outputs", "nni_masks"]

History = list[tuple[str, bool, list[int]]]
Masks = dict[str, dict[str, torch.Tensor]]


def prune_groups(model: nn.Module, example_inputs: Any, plan: Mapping[str, torch.Tensor]) -> History:
    """Remove output channels in place: ``plan`` maps a root layer name to the indices to drop.

    Every layer coupled to a root (BN, the next conv's inputs, depthwise partners, linear inputs after
    a flatten) is pruned along by torch-pruning. Returns torch-pruning's pruning history, which
    :func:`wgates_plugin.app.serialization.load_pruned` replays on a freshly built model.
    """
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        if len(idxs) == 0:
            continue
        if name not in modules:
            raise ExportError(f"cannot prune '{name}': no such layer in the model")
        root = modules[name]
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in idxs))
        if not graph.check_pruning_group(group):
            raise ExportError(f"pruning {len(idxs)} channels of '{name}' would leave a layer empty")
        group.prune()
    return [(n, bool(out), [int(i) for i in idx]) for n, out, idx in graph.pruning_history()]


def export_pruned(
    model: nn.Module,
    example_inputs: Any,
    groups: Sequence[ChannelGroup],
    keep: Sequence[torch.Tensor],
    *,
    gating: Any = None,
    prepare: Callable[[nn.Module], None] | None = None,
    in_place: bool = False,
    verify: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> tuple[nn.Module, History]:
    """Remove every channel whose keep entry is 0 from ``model`` (or a copy) and check the outputs.

    Args:
        model: the gated model (its hooks are what ``gating`` attached), or a plain one.
        example_inputs: a batch it accepts; used for tracing and for the check.
        groups: the channel groups, with ``keep``: one 0/1 vector ``(C,)`` per group.
        gating: the owner of the model's gate hooks (``remove()`` / ``attach()``, e.g. a
            :class:`~wgates_plugin.core.ChannelGating`): removed for the copy, re-attached unless ``in_place``.
        prepare: called on the hook-free model before the removal (e.g. to merge scales).
        in_place: prune ``model`` itself instead of a deep copy; if that fails (the outputs differ too),
            the model is put back as it was, gates attached.
        verify: compare the pruned model's eval outputs with what ``model`` computes now (gated).
        rtol, atol: the tolerances of :func:`check_outputs`.

    Returns:
        The pruned model and torch-pruning's pruning history.

    Raises:
        ExportError: a group would lose every channel, or the outputs differ.
    """
    expected = eval_outputs(model, example_inputs) if verify else None
    plan = removal_plan(groups, keep)
    if gating is not None:
        gating.remove()
    if not in_place:
        try:
            pruned = copy.deepcopy(model)
        finally:
            if gating is not None:
                gating.attach()
        return pruned, _prune(pruned, example_inputs, plan, prepare, expected, rtol, atol)
    try:  # in place: a failure (or an interrupt) puts the gated model back
        guard = ModelGuard(model, tensors=prepare is not None)  # values too only if prepare writes into them
        try:
            return model, _prune(model, example_inputs, plan, prepare, expected, rtol, atol)
        except BaseException:
            guard.restore()
            raise
    except BaseException:
        if gating is not None:
            gating.attach()
        raise


def _prune(model: nn.Module, example_inputs: Any, plan: Mapping[str, torch.Tensor], prepare: Callable | None,
           expected: Any, rtol: float, atol: float) -> History:
    if prepare is not None:
        prepare(model)
    history = prune_groups(model, example_inputs, plan)
    if expected is not None:
        check_outputs(model, example_inputs, expected, rtol, atol)
    return history


_PRUNED = "the pruned model does not reproduce the gated model's outputs"
_PRUNED_HINT = ("Some channel leaves its group through an operation torch-pruning does not model; exclude the layers "
                "around it.")


def check_outputs(model: nn.Module, example_inputs: Any, expected: Any, rtol: float = 1e-4,
                  atol: float = 1e-5, subject: str = _PRUNED, hint: str = _PRUNED_HINT) -> None:
    """Raise :class:`ExportError` unless ``model``'s eval outputs on ``example_inputs`` equal ``expected``.

    The rule: ``|actual - expected| <= atol * max(1, max |expected|) + rtol * |expected|``. ``atol`` is
    relative to the output scale because summing the same products in another order (fewer channels,
    another kernel) differs by float rounding proportional to the magnitudes involved. The message is
    ``subject`` (what differs), the tolerances and the differences, then ``hint`` (what to do).
    """
    actual = eval_outputs(model, example_inputs)
    scale = max([1.0] + [float(t.float().abs().max()) for t in tensors_in(expected) if t.numel()])
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)
    except AssertionError as exc:
        raise ExportError(f"{subject} (rtol={rtol}, atol={atol}): {exc}. {hint}") from None


def verify_outputs(reference: nn.Module, pruned: nn.Module, example_inputs: Any,
                   rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """:func:`check_outputs` of ``pruned`` against ``reference``'s eval outputs; both modes are restored."""
    check_outputs(pruned, example_inputs, eval_outputs(reference, example_inputs), rtol, atol)


def nni_masks(groups: Sequence[ChannelGroup], keep: Sequence[torch.Tensor], base: Masks | None = None) -> Masks:
    """NNI-format masks ``{layer: {'weight': mask, 'bias': mask}}`` (1 = kept) of 0/1 keep vectors.

    A closed channel zeroes its filter row and its bias entry in every layer of its group that owns
    output channels.

    Args:
        groups: the channel groups, with ``keep``: one 0/1 vector ``(C,)`` per group.
        base: the masks to write into, e.g. all-ones masks of an NNI pruner's wrapped layers (then
            only those layers, producers and BatchNorms alike, are masked). Default: fresh masks of
            every producer's ``weight`` and ``bias``.
    """
    masks: Masks = {} if base is None else {name: dict(entry) for name, entry in base.items()}
    for group, vector in zip(groups, keep):
        closed = vector.detach().cpu() < 0.5  # (C,)
        for m in group.members:
            if m.role is Role.CONSUMER or (base is None and m.role is not Role.PRODUCER):
                continue
            if base is None:
                masks.setdefault(m.name, _full_masks(m.module))
            elif m.name not in masks:
                continue
            rows = m.idxs[closed[m.channels]]
            for mask in masks[m.name].values():
                mask[rows.to(mask.device)] = 0
    return masks


def _full_masks(layer: nn.Module) -> dict[str, torch.Tensor]:
    out = {"weight": torch.ones_like(cast(torch.Tensor, layer.weight).detach())}
    bias = getattr(layer, "bias", None)
    if bias is not None:
        out["bias"] = torch.ones_like(bias.detach())
    return out
