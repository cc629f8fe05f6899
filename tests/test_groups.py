"""Channel groups traced from real torchvision models (random weights): who produces, who consumes,
what is coupled, and what cannot be pruned."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from wgates_plugin import WGates
from wgates_plugin.groups import ChannelGroup, GroupGraph, Role, trace_groups


def traced(name: str, side: int = 64) -> GroupGraph:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    return trace_groups(model, torch.randn(1, 3, side, side))


def by_name(graph: GroupGraph) -> dict[str, ChannelGroup]:
    return {g.name: g for g in graph.groups}


def names(group: ChannelGroup, role: Role) -> set[str]:
    return {m.name for m in group.members if m.role is role}


@pytest.fixture(scope="module")
def resnet18() -> GroupGraph:
    return traced("resnet18")


def test_resnet18_shortcut_groups_are_the_stem_and_each_stage_output(resnet18):
    coupled = sorted((sorted(names(g, Role.PRODUCER)) for g in resnet18.groups if g.shortcut), key=len)
    expected = [["conv1", "layer1.0.conv2", "layer1.1.conv2"]] + [
        [f"layer{i}.0.conv2", f"layer{i}.0.downsample.0", f"layer{i}.1.conv2"] for i in (2, 3, 4)
    ]
    assert sorted(coupled) == sorted(expected)
    assert all(g.reason is None for g in resnet18.groups if g.shortcut)  # prunable with prune_shortcuts
    stage4 = next(g for g in resnet18.groups if "layer4.1.conv2" in names(g, Role.PRODUCER))
    assert names(stage4, Role.CONSUMER) == {"layer4.1.conv1", "fc"}
    assert names(stage4, Role.PASS) == {"layer4.0.bn2", "layer4.1.bn2", "layer4.0.downsample.1"}


@pytest.mark.parametrize("block", [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)])
def test_resnet18_first_conv_of_each_block_is_a_prunable_group_read_by_conv2(resnet18, block):
    group = by_name(resnet18)[f"{block}.conv1"]
    assert (group.shortcut, group.reason, group.tie) == (False, None, 1)
    assert names(group, Role.PRODUCER) == {f"{block}.conv1"}
    assert names(group, Role.PASS) == {f"{block}.bn1"}
    assert names(group, Role.CONSUMER) == {f"{block}.conv2"}
    consumer = group.consumers[0]
    assert torch.equal(consumer.idxs, torch.arange(group.size))
    assert torch.equal(consumer.channels, torch.arange(group.size))


def test_resnet18_classifier_output_is_not_prunable(resnet18):
    fc = by_name(resnet18)["fc"]
    assert fc.size == 10
    assert fc.reason == "it produces the model's output"


def test_mobilenet_v2_expand_conv_and_its_depthwise_partner_share_one_group():
    groups = by_name(traced("mobilenet_v2"))
    for i in range(2, 18):
        block = f"features.{i}.conv"
        group = groups[f"{block}.0.0"]
        assert group.reason is None and not group.shortcut
        assert names(group, Role.PRODUCER) == {f"{block}.0.0", f"{block}.1.0"}
        assert names(group, Role.PASS) == {f"{block}.0.1", f"{block}.1.1"}
        assert names(group, Role.CONSUMER) == {f"{block}.2"}
        depthwise = next(m for m in group.producers if m.name == f"{block}.1.0")
        assert depthwise.module.groups == group.size == depthwise.module.out_channels


def test_resnext50_grouped_convs_tie_their_groups_to_the_32_conv_groups():
    groups = by_name(traced("resnext50_32x4d"))
    blocks = [f"layer{i}.{j}" for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for j in range(n)]
    for block in blocks:
        conv2 = groups[f"{block}.conv2"]
        assert conv2.root.groups == 32
        assert (conv2.tie, conv2.reason) == (32, None)
        assert names(conv2, Role.CONSUMER) == {f"{block}.conv3"}
        conv1 = groups[f"{block}.conv1"]  # feeds the grouped conv: same constraint on its pattern
        assert conv1.tie == 32 and names(conv1, Role.CONSUMER) == {f"{block}.conv2"}
    assert all(g.tie == 1 for g in groups.values() if g.shortcut)


def test_squeezenet_classifier_conv_is_found_to_produce_the_output():
    groups = by_name(traced("squeezenet1_1"))
    head = groups["classifier.1"]
    assert isinstance(head.root, nn.Conv2d) and head.size == 10
    assert head.reason == "it produces the model's output"
    # both expand convs of the last fire module are concatenated into the head conv's input
    low, high = groups["features.12.expand1x1"], groups["features.12.expand3x3"]
    assert torch.equal(next(m.idxs for m in low.consumers if m.name == "classifier.1"), torch.arange(256))
    assert torch.equal(next(m.idxs for m in high.consumers if m.name == "classifier.1"), torch.arange(256, 512))
    assert low.reason is None and high.reason is None


def test_densenet_concat_consumers_read_the_group_through_index_mapped_positions():
    groups = by_name(traced("densenet121"))
    for k in range(1, 6):  # the new features of denselayer k reach every later layer of the block
        group = groups[f"features.denseblock1.denselayer{k}.conv2"]
        assert group.size == 32 and group.reason is None
        offset = 64 + 32 * (k - 1)  # 64 stem channels, then 32 per earlier layer
        consumers = {m.name: m for m in group.consumers}
        expected = {f"features.denseblock1.denselayer{j}.conv1" for j in range(k + 1, 7)}
        assert set(consumers) == expected | {"features.transition1.conv"}
        for m in consumers.values():
            assert torch.equal(m.idxs, torch.arange(offset, offset + 32)), m.name
            assert torch.equal(m.channels, torch.arange(32)), m.name
        norms = {m.name for m in group.members if m.role is Role.PASS}
        assert {f"features.denseblock1.denselayer{j}.norm1" for j in range(k + 1, 7)} <= norms


def test_vgg_last_conv_feeds_the_classifier_with_49_inputs_per_channel():
    group = by_name(traced("vgg11_bn", side=32))["features.25"]
    assert group.size == 512 and group.reason is None
    (consumer,) = group.consumers
    assert consumer.name == "classifier.0" and consumer.channel_dim == -1
    assert torch.equal(consumer.idxs, torch.arange(512 * 49))
    assert torch.equal(consumer.channels, torch.arange(512).repeat_interleave(49))


@pytest.mark.parametrize(
    ("name", "score_input"),
    [("mobilenet_v2", "weight"), ("mobilenet_v2", "abs"), ("mobilenet_v2", "constant"), ("resnext50_32x4d", "weight")],
)
def test_gate_scores_equal_the_fc_of_the_concatenated_filters_of_every_producer(name, score_input):
    """Scores are computed per producer without building ``X``; they must equal ``X @ fc + bias``.

    In float64, so that only the order of the sums differs; gradients land in float32 parameters.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).double()
    wg = WGates(model, torch.randn(1, 3, 32, 32, dtype=torch.float64), score_input=score_input, prune_shortcuts=True)
    assert any(len(g.producers) > 1 for g in wg.gates)  # depthwise partners / residual-coupled convs
    assert name != "resnext50_32x4d" or any(g.tie == 32 for g in wg.gates)
    for gate in wg.gates:
        with torch.no_grad():
            gate.fc.normal_(0, 0.1)
        x_fc = gate.filter_features() @ gate.fc.double() + gate.bias  # (C,)
        expected = x_fc.view(gate.tie, gate.units).mean(0)  # (units,)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), gate.fc)
        scores = gate.unit_scores()
        (grad,) = torch.autograd.grad(scores.square().sum(), gate.fc)
        torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)


class _FixedSplit(nn.Module):
    """conv1's outputs are split at a fixed point, one half through conv_a, then concatenated (CSP style);
    conv2 is split again at fixed sizes for two convs (MixNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.mix_a = nn.Conv2d(3, 5, 3, padding=1)
        self.mix_b = nn.Conv2d(3, 5, 5, padding=2)
        self.conv3 = nn.Conv2d(10, 7, 1)
        self.head = nn.Linear(7, 4)

    def forward(self, x):
        xs, xb = torch.relu(self.conv1(x)).split(4, dim=1)
        y = torch.relu(self.conv2(torch.cat([xs, torch.relu(self.conv_a(xb))], dim=1)))
        ya, yb = y.split([3, 3], dim=1)
        z = torch.relu(self.conv3(torch.cat([self.mix_a(ya), self.mix_b(yb)], dim=1)))
        return self.head(z.mean((2, 3)))


def test_groups_through_a_fixed_channel_split_are_refused_with_the_reason():
    torch.manual_seed(0)
    model = _FixedSplit()
    reasons = {g.name: g.reason for g in trace_groups(model, torch.randn(1, 3, 8, 8)).groups}
    assert "feeds a channel split" in reasons["conv1"] and "only 4 of its 8 outputs" in reasons["conv1"]
    assert "channel split (torch.split / chunk" in reasons["conv2"] and "fixed in the model's code" in reasons["conv2"]
    assert reasons["conv3"] is None and reasons["mix_a"] is None and reasons["mix_b"] is None
    wg = WGates(model, torch.randn(1, 3, 8, 8), target=0.8)
    assert {g.name for g in wg.groups} == {"conv3", "mix_a", "mix_b"}  # conv_a lies in conv1's refused group
    wg.freeze()
    small = wg.export()  # the export check (outputs equal the gated model's) passes with the splits intact
    assert small.conv1.out_channels == 8 and small.conv2.out_channels == 6


def test_convs_with_parameters_torch_pruning_does_not_know_are_refused():
    class GainConv(nn.Conv2d):  # like timm's ScaledStdConv2d: a per-output-channel gain beside the weight
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

        def forward(self, x):
            return self._conv_forward(x, self.weight * self.gain, self.bias)

    model = nn.Sequential(GainConv(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    groups = {g.name: g.reason for g in trace_groups(model, torch.randn(1, 3, 8, 8)).groups}
    assert groups["0"] == "GainConv '0' carries per-channel parameters torch-pruning does not prune (gain)"
    assert groups["2"] is None
