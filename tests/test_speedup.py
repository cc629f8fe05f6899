"""speedup(): NNI masks from any pruner -> a physically smaller model, against an independent reference.

The reference is computed here without the package's group logic: forward hooks zero the removed
channels at the output of the BatchNorm after each masked conv (for these models that is where
removal is exact: ReLU(0) = 0 and a residual sum of zeros is zero).
"""

from __future__ import annotations

import copy
import warnings

import nni
import pytest
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from nni.compression.pruning import FPGMPruner, L1NormPruner, SlimPruner, TaylorPruner
from torch import nn

from tests.helpers import randomize_bn
from wgates_plugin import speedup
from wgates_plugin.errors import ConfigError, ExportError

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
BATCHES = [(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(50 + i))) for i in range(3)]


def cnn() -> nn.Sequential:
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)))


class ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.block1, self.block2 = ResBlock(), ResBlock()
        self.fc = nn.Linear(16, 10)
        randomize_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


BN_AFTER = {"conv": "bn", "block1.conv1": "block1.bn1", "block1.conv2": "block1.bn2",
            "block2.conv1": "block2.bn1", "block2.conv2": "block2.bn2", "0": "1", "3": "4"}
RESIDUAL = ["conv", "block1.conv2", "block2.conv2"]




def removed_rows(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask.reshape(mask.shape[0], -1).sum(1) == 0).flatten().tolist())


def bn_zeroed(model: nn.Module, removed: dict[str, set[int]]) -> torch.Tensor:
    """Eval outputs with ``removed[layer]`` zeroed at the output of ``layer``'s BatchNorm (or of ``layer``, a BN)."""
    modules = dict(model.named_modules())
    handles = []
    for conv, chans in removed.items():
        idx = torch.tensor(sorted(chans), dtype=torch.long)
        handles.append(modules[BN_AFTER.get(conv, conv)].register_forward_hook(
            lambda _m, _i, out, idx=idx: out.index_fill(1, idx, 0.0)))
    try:
        return eval_out(model)
    finally:
        for h in handles:
            h.remove()


def eval_out(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def evaluator(model: nn.Module) -> TorchEvaluator:
    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        for step in range(max_steps or 3):
            optimizers.zero_grad()
            training_step(BATCHES[step % len(BATCHES)], model).backward()
            optimizers.step()

    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    return TorchEvaluator(training_func, opt, training_step, dummy_input=X)


def masks_of(name: str, model: nn.Module, config: list[dict]) -> dict:
    if name == "l1":
        pruner = L1NormPruner(model, config)
    elif name == "fpgm":
        pruner = FPGMPruner(model, config)
    else:
        pruner = TaylorPruner(model, config, evaluator(model), training_steps=3)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


def assert_no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# ---------------------------------------------------------------------------- agreeing masks
@pytest.mark.parametrize("pruner", ["l1", "fpgm", "taylor"])
def test_masks_of_nni_pruners_on_independent_layers(pruner):
    model = cnn()
    masks = masks_of(pruner, model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    removed = {n: removed_rows(m["weight"]) for n, m in masks.items()}
    expected = bn_zeroed(model, removed)
    small = assert_no_warning(lambda: speedup(model, masks, X))
    assert (small[0].out_channels, small[3].out_channels, small[8].in_features) == (8, 12, 12)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


def test_identical_masks_remove_a_residual_group():
    model = ResNetLike()
    mask = torch.ones(16, 1, 1, 1)
    mask[[1, 5, 9, 10]] = 0
    masks = {n: {"weight": mask.expand_as(dict(model.named_modules())[n].weight).clone()} for n in RESIDUAL}
    expected = bn_zeroed(model, {n: {1, 5, 9, 10} for n in RESIDUAL})
    small = assert_no_warning(lambda: speedup(model, masks, X))
    assert small.conv.out_channels == small.block2.conv2.out_channels == small.fc.in_features == 12
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


def test_slim_masks_on_batchnorms():
    model = cnn()
    pruner = SlimPruner(model, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], evaluator(model), training_steps=3)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert sorted(masks) == ["1", "4"]
    expected = bn_zeroed(model, {n: removed_rows(m["weight"]) for n, m in masks.items()})
    small = assert_no_warning(lambda: speedup(model, masks, X))
    assert (small[0].out_channels, small[1].num_features, small[4].num_features) == (8, 8, 12)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- disagreeing masks
def test_disagreeing_residual_masks_keep_the_union_and_warn():
    model = ResNetLike()
    masks = masks_of("l1", model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    votes = [removed_rows(masks[n]["weight"]) for n in RESIDUAL]
    assert len({frozenset(v) for v in votes}) > 1  # NNI masked the coupled convs independently
    common = set.intersection(*votes)
    removed = {n: removed_rows(masks[n]["weight"]) for n in masks if n not in RESIDUAL}
    expected = bn_zeroed(model, {**removed, **{n: common for n in RESIDUAL}})
    with pytest.warns(UserWarning, match=r"group 'conv'.*masks disagree \(block1.conv2 removes 8, block2.conv2 "
                                         r"removes 8, conv removes 8\); only the \d+ channels all of them remove"):
        small = speedup(model, masks, X)
    assert small.conv.out_channels == 16 - len(common)
    assert small.block1.conv1.out_channels == 8
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


def test_disagreeing_masks_strict_refuses():
    model = ResNetLike()
    masks = masks_of("l1", model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ExportError, match=r"residual addition must keep the same channels but their masks disagree"):
        speedup(model, masks, X, strict=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was touched


def test_unmasked_partner_follows_with_a_note():
    model = ResNetLike()
    mask = torch.ones_like(model.conv.weight)
    mask[:4] = 0
    with pytest.warns(UserWarning, match=r"block1.conv2, block2.conv2 carry no mask but share channels with conv"):
        small = speedup(model, {"conv": {"weight": mask}}, X)
    assert small.block1.conv2.out_channels == 12


# ---------------------------------------------------------------------------- grouped conv balance
class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.grouped(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


@pytest.mark.parametrize("rows, kept", [([0, 4], 6), ([0, 1], 8)])
def test_grouped_conv_needs_the_same_pattern_in_each_group(rows, kept):
    model = Grouped()
    mask = torch.ones_like(model.conv.weight)
    mask[rows] = 0
    if kept == 8:
        with pytest.warns(UserWarning, match=r"feeds a grouped conv with 2 groups; its masks do not remove the same"):
            small = speedup(model, {"conv": {"weight": mask}}, X)
    else:
        small = assert_no_warning(lambda: speedup(model, {"conv": {"weight": mask}}, X))
    assert small.conv.out_channels == small.grouped.in_channels == kept


# ---------------------------------------------------------------------------- errors
def test_bad_masks_raise():
    model = cnn()
    with pytest.raises(ConfigError, match=r"masks name 'conv9', which is not a layer with a weight"):
        speedup(model, {"conv9": {"weight": torch.ones(1)}}, X)
    with pytest.raises(ConfigError, match=r"the mask of '0' has shape \(16,\), its weight \(16, 3, 3, 3\)"):
        speedup(model, {"0": {"weight": torch.ones(16)}}, X)
    with pytest.raises(ExportError, match=r"remove all 16 channels of group '0'"):
        speedup(model, {"0": {"weight": torch.zeros(16, 3, 3, 3)}}, X)
    with pytest.raises(ConfigError, match=r"masks must be a dict"):
        speedup(model, [1], X)


def test_output_layer_masks_are_not_removed():
    model = cnn()
    mask = torch.ones_like(model[8].weight)
    mask[:3] = 0
    with pytest.warns(UserWarning, match=r"group '8': masks remove 3 channels, but it cannot be pruned exactly"):
        small = speedup(model, {"8": {"weight": mask}}, X)
    assert small[8].out_features == 10
    with pytest.raises(ExportError, match=r"cannot be pruned exactly"):
        speedup(cnn(), {"8": {"weight": mask}}, X, strict=True)


def test_wrapped_model_is_refused():
    model = cnn()
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    with pytest.raises(ConfigError, match=r"still wrapped by an NNI pruner.*unwrap_model\(\)"):
        speedup(model, masks, X)
