"""The FLOPs efficiency model: agreement with torch-pruning's counter, exact hand counts on grouped,
depthwise and shared layers, and its derivative in the channel counts."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from wgates_plugin import FlopsModel, count_macs
from wgates_plugin.efficiency.flops import record_layer_shapes
from wgates_plugin.export import prune_groups
from wgates_plugin.groups import trace_groups


def flops_model(model: nn.Module, x: torch.Tensor) -> FlopsModel:
    """The FLOPs model over every prunable group, shortcut-coupled ones included."""
    groups = [g for g in trace_groups(model, x).groups if g.reason is None]
    return FlopsModel(record_layer_shapes(model, x), groups)


def encode(flops: FlopsModel, kept: dict[str, int]) -> torch.Tensor:
    """The count vector of ``kept`` in the model's group order, shape ``(G,)``, float64."""
    assert set(kept) == set(flops.group_names)
    return torch.tensor([float(kept[n]) for n in flops.group_names], dtype=torch.float64)


def tp_conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    _, _, layer_ops, _ = tp.utils.count_ops_and_params(model.eval(), x, layer_wise=True)
    return int(sum(v for m, v in layer_ops.items() if isinstance(m, (nn.Conv2d, nn.Linear))))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "convnext_tiny"])
def test_reference_and_count_macs_agree_with_torch_pruning(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    expected, macs, reference = tp_conv_linear_macs(model, x), count_macs(model, x), flops_model(model, x).reference()
    assert macs == pytest.approx(expected, rel=0.01)
    assert reference == pytest.approx(expected, rel=0.01)
    assert reference == pytest.approx(macs, rel=1e-6)


class GroupedNet(nn.Module):
    """conv -> depthwise -> grouped conv (4 groups) -> pointwise -> linear, on 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gconv = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.conv0(x)))
        x = torch.relu(self.bn1(self.dw(x)))
        x = torch.relu(self.bn2(self.gconv(x)))
        x = torch.relu(self.pw(x))
        return self.fc(x.mean((2, 3)))


def grouped_net_by_hand(c0: int, c1: int, c2: int) -> int:
    """MACs (+ bias adds) of GroupedNet keeping c0 / c1 / c2 channels of conv0+dw / gconv / pw."""
    p = 8 * 8  # output positions of every conv
    conv0 = p * 9 * 3 * c0
    dw = p * 9 * 1 * c0  # one input per filter
    gconv = p * 9 * (c0 // 4) * c1  # c0 / groups inputs per filter
    pw = p * 1 * c1 * c2 + p * c2
    fc = c2 * 10 + 10
    return conv0 + dw + gconv + pw + fc


GROUPED_PLANS = {  # kept counts -> channels to drop, balanced over gconv's 4 groups of 2 inputs
    (8, 16, 12): {},
    (4, 12, 6): {"conv0": [0, 2, 4, 6], "gconv": [1, 5, 9, 13], "pw": [0, 3, 5, 7, 8, 11]},
    (4, 4, 1): {"conv0": [1, 3, 5, 7], "gconv": [i for i in range(16) if i % 4], "pw": list(range(1, 12))},
}


@pytest.mark.parametrize("kept", list(GROUPED_PLANS))
def test_depthwise_and_grouped_convs_are_counted_as_by_hand(kept):
    torch.manual_seed(0)
    model, x = GroupedNet().eval(), torch.randn(1, 3, 8, 8)
    flops = flops_model(model, x)
    counts = encode(flops, dict(zip(("conv0", "gconv", "pw"), kept)))
    assert flops.cost(counts).item() == grouped_net_by_hand(*kept)
    prune_groups(model, x, {k: torch.tensor(v) for k, v in GROUPED_PLANS[kept].items()})
    assert (model.conv0.out_channels, model.dw.groups, model.gconv.out_channels, model.pw.out_channels) == (
        kept[0], kept[0], kept[1], kept[2])
    assert model.gconv.groups == 4
    assert count_macs(model, x) == grouped_net_by_hand(*kept)
    assert tp_conv_linear_macs(model, x) == grouped_net_by_hand(*kept)


class SharedHead(nn.Module):
    """One conv applied twice, at full and at half resolution; both results are concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(x))
        a = self.head(f).mean((2, 3))
        b = self.head(nn.functional.max_pool2d(f, 2)).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def shared_head_by_hand(stem: int, head: int) -> int:
    full, half = 8 * 8, 4 * 4
    return full * (27 + 1) * stem + (full + half) * (9 * stem + 1) * head + 2 * head * 10 + 10


@pytest.mark.parametrize("kept", [(8, 4), (5, 3), (1, 1)])
def test_a_layer_called_twice_is_counted_twice(kept):
    torch.manual_seed(0)
    model, x = SharedHead().eval(), torch.randn(1, 3, 8, 8)
    assert [s.name for s in record_layer_shapes(model, x)] == ["stem", "head", "head", "fc"]
    flops = flops_model(model, x)
    assert flops.cost(encode(flops, dict(zip(("stem", "head"), kept)))).item() == shared_head_by_hand(*kept)
    plan = {"stem": torch.arange(kept[0], 8), "head": torch.arange(kept[1], 4)}
    prune_groups(model, x, plan)
    assert count_macs(model, x) == shared_head_by_hand(*kept)
    assert tp_conv_linear_macs(model, x) == shared_head_by_hand(*kept)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cost_is_bilinear_and_its_gradient_matches_finite_differences(name):
    torch.manual_seed(0)
    model, x = getattr(torchvision.models, name)(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    flops = flops_model(model, x).double()
    sizes = flops.full_counts().double()  # (G,)
    counts = (torch.rand_like(sizes) * sizes).round().clamp(min=1).requires_grad_()  # (G,)
    (grad,) = torch.autograd.grad(flops.cost(counts), counts)
    eye = torch.eye(len(sizes), dtype=torch.float64)
    with torch.no_grad():
        plus = torch.stack([flops.cost(counts + e) for e in eye])  # (G,)
        minus = torch.stack([flops.cost(counts - e) for e in eye])
        here = flops.cost(counts)
    torch.testing.assert_close(grad, (plus - minus) / 2, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(plus + minus - 2 * here, torch.zeros_like(here).expand_as(plus), atol=1e-6, rtol=0)
    hessian = torch.autograd.functional.hessian(flops.cost, counts.detach())  # (G, G)
    assert torch.count_nonzero(hessian) > 0  # some layers read one gated group and produce another
    zero = torch.zeros_like(sizes)
    (grad0,) = torch.autograd.grad(flops.cost(zero.requires_grad_()), zero)
    quadratic = flops.cost(zero) + grad0 @ counts + 0.5 * counts @ hessian @ counts
    torch.testing.assert_close(quadratic, here, rtol=1e-12, atol=1e-3)
