"""Physical channel removal through torch-pruning, verification, and NNI-format masks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .errors import ExportError
from .groups import build_graph
from .groups import removal_plan as plan_from_masks

if TYPE_CHECKING:
    from .pruner import WGates

__all__ = ["prune_groups", "prune_copy", "removal_plan", "nni_masks", "verify_outputs", "call_model", "eval_outputs"]

History = list[tuple[str, bool, list[int]]]


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)

def eval_outputs(model: nn.Module, example_inputs: Any) -> Any:
    """The model's outputs on ``example_inputs`` in eval mode under ``no_grad``; its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, example_inputs)
    finally:
        model.train(was_training)


def prune_groups(model: nn.Module, example_inputs: Any, plan: Mapping[str, torch.Tensor]) -> History:
    """Remove output channels in place: ``plan`` maps a root layer name to the indices to drop.

    Every layer coupled to a root (BN, the next conv's inputs, depthwise partners, linear inputs after
    a flatten) is pruned along by torch-pruning. Returns torch-pruning's pruning history, which
    :func:`wgates_plugin.serialization.load_pruned` replays on a freshly built model.
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


def removal_plan(wg: WGates) -> dict[str, torch.Tensor]:
    """``{root layer name: output indices to remove}`` from ``wg``'s current gates."""
    return plan_from_masks(wg.groups, wg.current_gates())


def prune_copy(wg: WGates, verify: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
    """Deep-copy ``wg.model`` without its gate hooks and remove every closed channel from the copy."""
    wg.remove()
    try:
        pruned = copy.deepcopy(wg.model)
    finally:
        wg.attach()
    wg.history = prune_groups(pruned, wg.example_inputs, removal_plan(wg))
    if verify:
        verify_outputs(wg.model, pruned, wg.example_inputs, rtol, atol)
    return pruned


def verify_outputs(reference: nn.Module, pruned: nn.Module, example_inputs: Any,
                   rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raise :class:`ExportError` unless both models give the same eval outputs on ``example_inputs``.

    ``atol`` is relative to the output scale (multiplied by ``max(1, max |expected|)``): summing the
    same products in another order differs by float rounding proportional to the magnitudes involved.
    """
    modes = (reference.training, pruned.training)
    reference.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            expected, actual = call_model(reference, example_inputs), call_model(pruned, example_inputs)
        scale = max([1.0] + [float(t.abs().max()) for t in _tensors(expected) if t.numel()])
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)
    except AssertionError as exc:
        raise ExportError(
            "the pruned model does not reproduce the gated model's outputs "
            f"(rtol={rtol}, atol={atol}): {exc}. Some channel leaves its group through an operation "
            "torch-pruning does not model; exclude the layers around it."
        ) from None
    finally:
        reference.train(modes[0])
        pruned.train(modes[1])


def _tensors(output: Any) -> list[torch.Tensor]:
    if torch.is_tensor(output):
        return [output.float()]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _tensors(v)]
    return []


def nni_masks(wg: WGates) -> dict[str, dict[str, torch.Tensor]]:
    """NNI-format masks ``{layer: {'weight': mask, 'bias': mask}}`` of every producer layer.

    A mask is 1 where the element is kept; a closed channel zeroes its whole filter and its bias.
    """
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for group, gate in zip(wg.groups, wg.current_gates()):
        for m in group.producers:
            layer = m.module
            entry = masks.setdefault(m.name, _full_masks(layer))
            rows = m.idxs[gate.detach().cpu()[m.channels] < 0.5]
            for key in entry:
                entry[key][rows.to(entry[key].device)] = 0
    return masks


def _full_masks(layer: nn.Module) -> dict[str, torch.Tensor]:
    out = {"weight": torch.ones_like(cast(torch.Tensor, layer.weight).detach())}
    bias = getattr(layer, "bias", None)
    if bias is not None:
        out["bias"] = torch.ones_like(bias.detach())
    return out
