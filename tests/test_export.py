"""Physical removal: hand-picked plans against a zeroed reference, NNI-format masks, export errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.helpers import calibrated_model
from wgates_plugin import ExportError, StateError, WGates
from wgates_plugin.export import prune_groups, verify_outputs
from wgates_plugin.groups import ChannelGroup, trace_groups

# Plans are checked in float64, where summing over fewer channels changes the result only by rounding.
TOL = {"rtol": 1e-9, "atol": 1e-9}


def build(name: str, side: int = 32) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision model with random weights and random BN affine parameters, in eval mode.

    BN statistics are calibrated on random batches so activations stay alive through the depth (with
    random statistics most of these models output the same logits for every input); every BN then
    has a non-zero shift, so zeroing a channel before a BN instead of after it changes the outputs.
    """
    return calibrated_model(name, side).eval(), torch.randn(2, 3, side, side)


def group_named(model: nn.Module, x: torch.Tensor, name: str) -> ChannelGroup:
    return next(g for g in trace_groups(model, x).groups if g.name == name)


def zero_at_consumers(model: nn.Module, group: ChannelGroup, drop: torch.Tensor) -> None:
    """Hooks on ``model`` that zero the dropped group channels where each consumer reads them."""
    modules = dict(model.named_modules())
    for member in group.consumers:
        positions = member.idxs[torch.isin(member.channels, drop)]

        def hook(_module: nn.Module, args: tuple, positions: torch.Tensor = positions, dim: int = member.channel_dim):
            x = args[0].clone()
            x.index_fill_(dim % x.dim(), positions, 0.0)
            return (x,) + args[1:]

        modules[member.name].register_forward_pre_hook(hook)


CASES = {  # case -> (model, input side, group, channels to drop)
    # conv -> bn -> relu -> conv
    "resnet18": ("resnet18", 32, "layer2.0.conv1", [0, 3]),
    # the stem and layer1's residual stream: three producers, four consumers
    "resnet18-shortcut": ("resnet18", 32, "conv1", [0, 3]),
    # expand conv + its depthwise partner, read by the project conv
    "mobilenet_v2": ("mobilenet_v2", 32, "features.3.conv.0.0", [0, 3]),
    # concatenated into the head conv at 256 + c (64x64: at 32x32 these channels are dead after ReLU)
    "squeezenet1_1": ("squeezenet1_1", 64, "features.12.expand3x3", [0, 3]),
    # read through concatenations by four later layers and a transition
    "densenet121": ("densenet121", 32, "features.denseblock1.denselayer2.conv2", [0, 3]),
    # grouped conv (32 groups of 4): units 0 and 3 dropped in every conv group
    "resnext50_32x4d": ("resnext50_32x4d", 32, "layer1.0.conv2", [c for c in range(128) if c % 4 in (0, 3)]),
}


HEAVY = {"densenet121", "resnext50_32x4d"}  # float64 convolutions of a 50+ layer net: several seconds


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in HEAVY else c for c in CASES])
def test_pruning_a_plan_equals_zeroing_those_channels_at_the_consumers(case):
    name, side, root, drop = CASES[case]
    model, x = build(name, side)
    model, x = model.double(), x.double()
    original, reference = copy.deepcopy(model), copy.deepcopy(model)
    group = group_named(reference, x, root)
    drop_t = torch.tensor(drop)
    zero_at_consumers(reference, group, drop_t)
    widths = {m.name: m.module.weight.shape[0] for m in group.producers}

    history = prune_groups(model, x, {root: drop_t})

    modules = dict(model.named_modules())
    assert {m.name: modules[m.name].weight.shape[0] for m in group.producers} == {
        n: w - len(drop) for n, w in widths.items()
    }
    assert any(name == root and out and sorted(idxs) == drop for name, out, idxs in history)
    with torch.no_grad():
        pruned_out, reference_out, original_out = model(x), reference(x), original(x)
    torch.testing.assert_close(pruned_out, reference_out, **TOL)
    assert not torch.allclose(original_out, reference_out, **TOL)  # the dropped channels did matter


def test_a_plan_naming_a_missing_layer_or_emptying_one_is_refused():
    model, x = build("resnet18")
    with pytest.raises(ExportError, match=r"cannot prune 'layer9\.conv1': no such layer in the model"):
        prune_groups(model, x, {"layer9.conv1": torch.tensor([0])})
    with pytest.raises(ExportError, match=r"pruning 64 channels of 'layer1\.0\.conv1' would leave a layer empty"):
        prune_groups(model, x, {"layer1.0.conv1": torch.arange(64)})
    assert model.layer1[0].conv1.out_channels == 64


def frozen_with_drop(name: str, group_name: str, drop: list[int]) -> WGates:
    """WGates on ``name`` with every gate frozen open except ``drop`` in ``group_name``."""
    model, x = build(name)
    wg = WGates(model, x, target=0.5)
    for group, gate in zip(wg.groups, wg.gates):
        keep = torch.ones(gate.units)
        if group.name == group_name:
            keep[drop] = 0
        gate.freeze(keep)
    return wg


def test_nni_masks_zero_the_filters_of_every_producer_of_a_closed_channel():
    wg = frozen_with_drop("mobilenet_v2", "features.3.conv.0.0", [0, 3])
    masks = wg.nni_masks()
    assert set(masks) == {m.name for g in wg.groups for m in g.producers}
    modules = dict(wg.model.named_modules())
    for name, entry in masks.items():
        layer = modules[name]
        assert set(entry) == {"weight"}  # torchvision's mobilenet convs have no bias
        assert entry["weight"].shape == layer.weight.shape
        closed = {0, 3} if name in ("features.3.conv.0.0", "features.3.conv.1.0") else set()
        for row in range(layer.weight.shape[0]):
            assert bool((entry["weight"][row] == 0).all()) is (row in closed), (name, row)
            assert bool((entry["weight"][row] == 1).all()) is (row not in closed), (name, row)


def test_nni_masks_zero_the_bias_of_a_closed_channel():
    wg = frozen_with_drop("squeezenet1_1", "features.12.expand3x3", [0, 3])
    entry = wg.nni_masks()["features.12.expand3x3"]
    layer = wg.model.features[12].expand3x3
    assert entry["bias"].shape == layer.bias.shape == (256,)
    assert torch.nonzero(entry["bias"] == 0).flatten().tolist() == [0, 3]
    assert torch.nonzero((entry["weight"] == 0).flatten(1).all(1)).flatten().tolist() == [0, 3]
    assert int((entry["weight"] == 0).sum()) == 2 * layer.weight[0].numel()


def test_export_refuses_gates_that_are_not_frozen():
    model, x = build("resnet18")
    wg = WGates(model, x, target=0.5)
    message = r"export\(\) needs frozen gates: call freeze\(\) first \(it lands the budget\)"
    with pytest.raises(StateError, match=message):
        wg.export()
    wg.freeze()
    wg.export()
    wg.unfreeze()
    with pytest.raises(StateError, match=message):
        wg.export()


def test_verify_outputs_catches_a_pruned_model_that_computes_something_else():
    model, x = build("resnet18")
    wg = WGates(model, x, target=0.5)
    wg.freeze()
    pruned = wg.export()
    model.train()
    pruned.train()
    verify_outputs(model, pruned, x)
    assert model.training and pruned.training  # modes restored
    with torch.no_grad():
        pruned.fc.weight[3] += 0.5
    with pytest.raises(
        ExportError,
        match=r"(?s)the pruned model does not reproduce the gated model's outputs \(rtol=0\.0001, atol=1e-05\): "
        r"Tensor-likes are not close!.*Mismatched elements: 2 / 20.*exclude the layers around it",
    ):
        verify_outputs(model, pruned, x)
    assert model.training and pruned.training
