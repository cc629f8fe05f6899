"""The torchvision zoo end to end: attach, train a few steps, freeze at half the FLOPs, export, compare.

Every model is built with random weights (nothing can be downloaded), random BatchNorm affine
parameters and BN statistics calibrated on random batches, so that every BN has a non-zero shift and
a channel zeroed at the wrong place (before a BN instead of after it) shows up as an output
difference. Each case checks the contract of the core:

- the exported model's eval outputs equal the gated model's on a batch it was never traced with
  (``rtol=1e-4, atol=1e-5``: float32 convolutions of different widths sum in a different order);
- parameters and FLOPs strictly lower, FLOPs within 1 % of the 0.5 target;
- the exported model's MACs (:func:`count_macs`) equal the efficiency model's prediction exactly
  (both counted in float64, so up to rounding to an integer) and agree within 1 % with
  ``torch_pruning.utils.count_ops_and_params`` summed over its Conv2d and Linear layers.
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from tests.helpers import calibrated_model
from wgates_plugin import TracingError, WGates, count_macs
from wgates_plugin.groups import ChannelGroup, Role

pytestmark = [pytest.mark.zoo, pytest.mark.usefixtures("one_thread")]

TARGET = 0.5
STEPS = 3
WEIGHT_LR = 1e-4  # random nets with batch-2 BN statistics blow up under larger SGD steps (efficientnet_b0: 3 -> 3e4)
EXPORT_TOL = {"rtol": 1e-4, "atol": 1e-5}

# name -> (extra constructor arguments, input side)
ZOO: dict[str, tuple[dict, int]] = {
    "resnet18": ({}, 64),
    "resnet50": ({}, 64),
    "mobilenet_v2": ({}, 64),
    "mobilenet_v3_small": ({}, 64),
    "vgg11_bn": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "regnet_x_400mf": ({}, 64),
    "densenet121": ({}, 64),
    "resnext50_32x4d": ({}, 64),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 64),
    "squeezenet1_1": ({}, 64),
    "convnext_tiny": ({}, 64),
    "mnasnet0_5": ({}, 64),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 75),
}
# vgg11_bn carries a 25088x4096 classifier: its training steps and deep copy dominate the file.
HEAVY = {"vgg11_bn"}


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A randomly initialized torchvision model with random BN affine parameters, and a batch of 2.

    BN statistics are calibrated on random batches so activations stay alive through the depth (with
    random statistics most of these models give the same logits for every input, and an equivalence
    check would be vacuous); every BN then has a non-zero shift on every channel.
    """
    kwargs, side = ZOO[name]
    model = calibrated_model(name, side, **kwargs)
    return model, torch.randn(2, 3, side, side)


def train_steps(model: nn.Module, wg: WGates, x: torch.Tensor, steps: int = STEPS) -> None:
    """Task loss + efficiency loss on random labels: Adam on the gates, SGD on the weights."""
    gate_opt = torch.optim.Adam(wg.parameters(), lr=1e-2)
    weight_opt = torch.optim.SGD(model.parameters(), lr=WEIGHT_LR)
    labels = torch.randint(0, 10, (x.shape[0],))
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), labels) + wg.efficiency_loss()
        gate_opt.zero_grad()
        weight_opt.zero_grad()
        loss.backward()
        gate_opt.step()
        weight_opt.step()


def tp_conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """torch-pruning's op count of one sample, summed over Conv2d and Linear layers."""
    model.eval()
    _, _, layer_ops, _ = tp.utils.count_ops_and_params(model, x[:1], layer_wise=True)
    return int(sum(v for m, v in layer_ops.items() if isinstance(m, (nn.Conv2d, nn.Linear))))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_and_check(name: str, **options) -> tuple[WGates, nn.Module]:
    """The whole pipeline on one torchvision model, with every check of the module docstring."""
    model, x = build(name)
    return check_pipeline(model, x, TARGET, **options)


def check_pipeline(model: nn.Module, x: torch.Tensor, target: float, **options) -> tuple[WGates, nn.Module]:
    """Attach, train, freeze at ``target`` of the FLOPs, export; every check of the module docstring."""
    full_macs, full_params = count_macs(model, x), n_params(model)
    wg = WGates(model, x, target=target, **options)
    scores_before = [g.unit_scores().detach().clone() for g in wg.gates]
    train_steps(model, wg, x)
    assert any(not torch.equal(g.unit_scores(), s) for g, s in zip(wg.gates, scores_before)), "gates did not train"
    wg.freeze()
    small = wg.export()

    fresh = torch.randn_like(x)
    model.eval()
    small.eval()
    with torch.no_grad():
        expected = model(fresh)
        assert not torch.allclose(expected[0], expected[1], rtol=1e-3, atol=1e-4), "outputs ignore the input"
        torch.testing.assert_close(small(fresh), expected, **EXPORT_TOL)

    macs = count_macs(small, x)
    predicted = float(wg.flops(wg.counts().double()))
    assert full_macs == pytest.approx(wg.flops.reference(), rel=1e-6)
    assert macs == round(predicted)
    assert abs(macs / full_macs - target) <= 0.01 * target
    assert n_params(small) < full_params
    assert macs == pytest.approx(tp_conv_linear_macs(small, x), rel=0.01)
    return wg, small


@pytest.mark.parametrize("name", _params(list(ZOO)))
def test_zoo_prunes_to_half_the_flops_and_exports_exactly(name: str) -> None:
    wg, _ = prune_and_check(name)
    assert all(not g.shortcut for g in wg.groups)


def _width(module: nn.Module, role: Role) -> int:
    """The width of ``module`` on the side the group touches: inputs of a consumer, outputs otherwise."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.in_features if role is Role.CONSUMER else module.out_features
    return module.in_channels if role is Role.CONSUMER else module.out_channels


def coupled_widths(group: ChannelGroup, pruned: nn.Module) -> set[int]:
    """Widths of every layer of ``group`` in the pruned model (each member spans all group channels)."""
    modules = dict(pruned.named_modules())
    assert all(len(m.idxs) == group.size for m in group.members), "a member spans a subset of the group"
    return {_width(modules[m.name], m.role) for m in group.members if isinstance(m.module, nn.Module)}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_shortcut_groups_prune_with_one_shared_gate(name: str) -> None:
    wg, small = prune_and_check(name, prune_shortcuts=True)
    shortcut = [g for g in wg.groups if g.shortcut]
    assert len(shortcut) >= 4
    kept = wg.kept()
    for group in shortcut:
        assert coupled_widths(group, small) == {kept[group.name][0]}, group.name
    assert any(kept[g.name][0] < g.size for g in shortcut), "no shortcut-coupled group was pruned"


def test_shufflenet_is_refused_with_the_module_and_the_reason() -> None:
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        TracingError,
        match=r"ShuffleNetV2 at the operation _Reshape_\d+\(\) \(right after layer 'stage\d\.\d+\.[\w.]+'\): "
        r"ZeroDivisionError: .*Nothing was pruned.*channel shuffle",
    ):
        WGates(model, torch.randn(2, 3, 64, 64), target=TARGET)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())

