"""The host-agnostic core: attaching, the efficiency loss, budgets, freezing, state and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import randomize_bn
from wgates_plugin import (
    BudgetError,
    BudgetMode,
    ConfigError,
    ConfigTypeError,
    LayerBounds,
    StateError,
    WGates,
    WGatesConfig,
    count_macs,
)
from wgates_plugin.budget import UnitBounds


class SmallCNN(nn.Module):
    """conv-bn-relu x3 with a residual pair, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b(self.a(x)))
        return self.head(x.mean((2, 3)))




@pytest.fixture
def small():
    torch.manual_seed(0)
    return randomize_bn(SmallCNN()), torch.randn(4, 3, 16, 16)


def test_only_unshared_groups_are_gated_by_default(small):
    model, x = small
    wg = WGates(model, x, target=0.6)
    assert [g.name for g in wg.groups] == ["a.0"]
    reasons = {g.name: wg.why_not(g) for g in wg.traced.groups}
    assert "shortcut-coupled" in reasons["stem.0"]
    assert "output" in reasons["head"]
    both = WGates(copy.deepcopy(model), x, target=0.6, prune_shortcuts=True)
    assert sorted(g.name for g in both.groups) == ["a.0", "stem.0"]


def test_step_zero_forward_and_backward_equal_the_original(small):
    model, x = small
    reference = copy.deepcopy(model)
    WGates(model, x, target=0.5, prune_shortcuts=True, warm_start=False)  # the paper: all open
    for m in (model, reference):
        m.train()
        m(x).square().sum().backward()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_attach_keeps_parameter_identity_and_remove_restores_the_model(small):
    model, x = small
    ids = [id(p) for p in model.parameters()]
    before = model.eval()(x)
    wg = WGates(model, x, target=0.5)
    assert [id(p) for p in model.parameters()] == ids
    assert {id(p) for p in wg.parameters()}.isdisjoint(ids)
    assert len(list(wg.parameters())) == 2 * len(wg.groups)  # one FC vector + one bias per group
    wg.freeze(project=True)
    assert not torch.equal(model(x), before)  # half the channels are closed now
    wg.remove()
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_closed_channel_gets_no_gradient_in_its_filter(small):
    model, x = small
    wg = WGates(model, x, target=0.5)
    mask = torch.ones(24)
    mask[[2, 5]] = 0
    wg.gates[0].freeze(mask)
    model.train()
    model(x).square().sum().backward()
    grad = model.a[0].weight.grad
    assert torch.all(grad[[2, 5]] == 0) and torch.all(model.a[0].bias.grad[[2, 5]] == 0)
    assert grad[mask.bool()].abs().sum() > 0


def test_paper_loss_is_alpha_log_one_plus_normalized_cost(small):
    model, x = small
    wg = WGates(model, x, mode="paper", alpha=0.3)
    torch.testing.assert_close(wg.efficiency_loss(), torch.tensor(0.3 * math.log(2.0)))
    wg.efficiency_loss().backward()
    assert wg.gates[0].fc.grad.abs().sum() > 0 and wg.gates[0].bias.grad > 0


def test_target_multiplier_rises_above_target_and_falls_below():
    torch.manual_seed(0)
    model, x = SmallCNN(), torch.randn(2, 3, 16, 16)
    wg = WGates(model, x, target=0.9, alpha=1.0, controller_rate=0.5, warm_start=False)
    wg.efficiency_loss()
    wg.update_multiplier()
    assert wg.multiplier.value > 1.0  # ratio 1.0 > 0.9
    wg.gates[0].freeze(torch.zeros(24).index_fill(0, torch.arange(2), 1))
    wg.unfreeze()
    with torch.no_grad():
        wg.gates[0].bias.fill_(-0.4)  # nearly every gate closes (floor: 1 channel)
    value = wg.multiplier.value
    wg.efficiency_loss()
    wg.update_multiplier()
    assert wg.multiplier.value < value


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_freeze_lands_the_flops_target_and_export_matches(target):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    wg = WGates(model, x, target=target, prune_shortcuts=target < 0.5)
    wg.freeze()
    assert abs(wg.flops_ratio() - target) <= 0.01 * target
    small = wg.export()
    assert count_macs(small, x) == pytest.approx(wg.flops(wg.counts()).item(), rel=1e-6)
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_layer_bounds_fix_a_layer_exactly(small):
    model, x = small
    wg = WGates(model, x, mode="none", layer_bounds={"a.0": LayerBounds(0.25, 0.25)})
    assert wg.kept()["a.0"] == (6, 24)
    assert float(wg.efficiency_loss()) == 0.0


def test_unreachable_target_is_rejected_before_training(small):
    model, x = small
    with pytest.raises(BudgetError, match=r"target=0.05 is unreachable: .* keeps 0\.\d+ of the original MACs"):
        WGates(model, x, target=0.05)


def test_selecting_nothing_says_why(small):
    model, x = small
    with pytest.raises(ConfigError, match="no prunable channel group was selected; groups found: .*shortcut-coupled"):
        WGates(model, x, target=0.5, exclude=("a.0",))
    with pytest.raises(ConfigError, match=r"exclude names layers that are not in the model: \['nope'\]"):
        WGates(model, x, target=0.5, exclude=("nope",))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": 1.5}, ConfigError, r"target=1.5 must be in \(0, 1\]"),
        ({"target": "half"}, ConfigTypeError, "target='half' must be a number"),
        ({"mode": "target"}, ConfigError, "mode='target' needs target="),
        ({"mode": "fast"}, ConfigError, "mode='fast' is not one of 'paper', 'target', 'none'"),
        ({"score_input": "norm"}, ConfigError, "score_input='norm' is not one of"),
        ({"init_score": 0.6}, ConfigError, r"init_score=0.6 must be in \(0, 0.5\)"),
        ({"tolerance": 0}, ConfigError, r"tolerance=0 must be in \(0, 0.5\)"),
        ({"alpha": -1}, ConfigError, "alpha=-1 must be a number >= 0"),
        ({"bounds": (0.1, 0.9)}, ConfigTypeError, "bounds must be a LayerBounds, got tuple"),
    ],
)
def test_invalid_config_values_name_the_field(kwargs, error, message):
    with pytest.raises(error, match=message):
        WGatesConfig(**kwargs)


def test_layer_bounds_validate():
    with pytest.raises(ConfigError, match=r"min_keep=0.8 must not exceed max_keep=0.5"):
        LayerBounds(0.8, 0.5)
    with pytest.raises(ConfigError, match=r"max_keep=0 must be in \(0, 1\]"):
        LayerBounds(0.0, 0)


def test_config_and_keywords_are_exclusive(small):
    model, x = small
    with pytest.raises(ConfigError, match=r"pass either config or keyword options, not both \(got \['target'\]\)"):
        WGates(model, x, WGatesConfig(target=0.5), target=0.4)


def test_export_needs_frozen_gates(small):
    model, x = small
    with pytest.raises(StateError, match="call freeze"):
        WGates(model, x, target=0.5).export()


def test_state_dict_resumes_gate_training(small):
    model, x = small
    wg = WGates(model, x, target=0.5)
    opt = torch.optim.Adam(wg.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        (model(x).square().mean() + wg.efficiency_loss()).backward()
        opt.step()
    state = wg.state_dict()
    twin_model = copy.deepcopy(model)
    wg.remove()
    twin = WGates(twin_model, x, target=0.5)
    twin.load_state_dict(state)
    assert twin.multiplier.value == wg.multiplier.value
    for a, b in zip(twin.gates, wg.gates):
        torch.testing.assert_close(a.unit_scores(), b.unit_scores())
    wg.freeze()
    twin.load_state_dict(wg.state_dict())
    assert all(g.is_frozen for g in twin.gates)
    torch.testing.assert_close(twin.counts(), wg.counts())


def test_state_of_other_groups_is_refused(small):
    model, x = small
    state = WGates(copy.deepcopy(model), x, target=0.6, prune_shortcuts=True).state_dict()
    wg = WGates(model, x, target=0.6)
    with pytest.raises((ConfigError, RuntimeError), match="groups|size mismatch|Unexpected"):
        wg.load_state_dict(state)


def test_training_lowers_live_flops_in_paper_mode(small):
    model, x = small
    wg = WGates(model, x, mode=BudgetMode.PAPER, alpha=5.0)
    opt = torch.optim.Adam(wg.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        wg.efficiency_loss().backward()
        opt.step()
    assert wg.flops_ratio() < 0.95
    assert wg.kept()["a.0"][0] >= 1


def test_a_deep_copy_of_a_gated_model_is_the_plain_model(small):
    model, x = small
    plain = copy.deepcopy(model).eval()
    wg = WGates(model, x, target=0.5)
    wg.freeze()
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), plain(x), rtol=0, atol=0)
        assert not torch.equal(model.eval()(x), plain(x))


def test_target_term_pushes_up_below_the_target_and_down_above():
    from wgates_plugin.budget import DualMultiplier

    for ratio, sign in ((0.3, -1.0), (0.7, 1.0)):
        r = torch.tensor(ratio, requires_grad=True)
        DualMultiplier(initial=2.0, rate=0.1, target=0.5).penalty(r).backward()
        assert float(r.grad) == pytest.approx(sign * 2.0 / 0.5)


# ---------------------------------------------------------------------------- sigmoid gates (Table II ablation)
def test_sigmoid_gates_are_soft_during_training_and_hard_once_frozen():
    torch.manual_seed(0)
    model = randomize_bn(SmallCNN()).eval()
    x = torch.randn(4, 3, 16, 16)
    wg = WGates(model, x, target=0.5, activation="sigmoid", sigmoid_k=4.0)
    with torch.no_grad():
        for gate in wg.gates:
            gate.fc.normal_(0, 0.05)
    gate = wg.gates[0]
    scores = gate.unit_scores()
    torch.testing.assert_close(gate(), torch.sigmoid(4.0 * scores), rtol=0, atol=0)
    assert 0 < float(gate().min()) and float(gate().max()) < 1  # continuous, not 0/1
    torch.testing.assert_close(wg.counts(), torch.stack([torch.sigmoid(4.0 * g.unit_scores()).sum() for g in wg.gates]))
    loss = model(x).square().mean() + wg.efficiency_loss()
    loss.backward()
    assert all(g.fc.grad is not None and g.fc.grad.abs().sum() > 0 for g in wg.gates)
    wg.freeze()
    assert set(torch.cat([g() for g in wg.gates]).unique().tolist()) <= {0.0, 1.0}
    full = wg.flops.full_counts()
    one_channel = float(wg.flops(full) - wg.flops(full - 1)) / wg.flops.reference()
    assert abs(wg.flops_ratio() - 0.5) <= one_channel  # the projection lands within one channel
    small = wg.export()  # exact once frozen: verified inside export
    assert count_macs(small, x) < count_macs(model, x)


def test_sigmoid_freeze_without_projection_keeps_the_nonnegative_scores():
    torch.manual_seed(1)
    model = SmallCNN()
    x = torch.randn(2, 3, 16, 16)
    wg = WGates(model, x, activation="sigmoid")
    with torch.no_grad():
        for gate in wg.gates:
            gate.fc.normal_(0, 0.5)
    expected = [(g.unit_scores() >= 0).float() for g in wg.gates]
    expected = [e if e.sum() >= 1 else torch.nn.functional.one_hot(g.unit_scores().argmax(), e.numel()).float()
                for e, g in zip(expected, wg.gates)]  # at least one channel stays (min_keep = 1)
    assert wg.kept() == {n: (int(e.sum()), g.size) for n, e, g in zip(wg.kept(), expected, wg.groups)}
    wg.freeze()
    for gate, e in zip(wg.gates, expected):
        torch.testing.assert_close(gate(), e)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("activation", "relu", "activation='relu' is not one of 'binary', 'sigmoid'"),
    ("sigmoid_k", 0, "sigmoid_k=0 must be a number > 0"),
    ("sigmoid_k", True, "sigmoid_k=True must be a number > 0"),
])
def test_bad_activation_options_are_rejected(field, value, message):
    with pytest.raises(ConfigError, match=message):
        WGatesConfig(**{field: value})


def test_unit_bounds_with_a_step_allow_multiples_of_it_or_all_units():
    b = UnitBounds(low=3, high=20, tie=1, step=8)
    assert b.least == 8 and [b.snap(u) for u in (0, 3.9, 4, 11, 12.1, 19, 30)] == [8, 8, 8, 8, 16, 20, 20]
    assert [b.next_up(u) for u in (8, 15, 16, 19)] == [16, 16, 20, 20]
    assert UnitBounds(low=1, high=4, tie=1, step=8).least == 4  # a group smaller than the step stays whole
    assert UnitBounds.step_for(tie=32, round_to=8) == 1 and UnitBounds.step_for(tie=2, round_to=8) == 4
    assert UnitBounds.step_for(tie=1, round_to=1) == 1


@pytest.mark.parametrize(("name", "round_to"), [("mobilenet_v2", 8), ("mobilenet_v2", 16), ("resnext50_32x4d", 8),
                                                ("resnet18", 16)])
def test_round_to_keeps_multiples_at_the_target_and_exports_exactly(name, round_to):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.get_model(name, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    wg = WGates(model, x, target=0.5, round_to=round_to)
    with torch.no_grad():  # move the scores so the freeze has a learned shape to round
        for g in wg.gates:
            g.fc.add_(0.01 * torch.randn_like(g.fc))
    wg.freeze()
    kept = wg.kept()
    assert all(k % round_to == 0 or k == n for k, n in kept.values()), kept
    assert any(k < n for k, n in kept.values())
    small = wg.export()
    ratio = count_macs(small, x) / count_macs(model, x)
    assert 0.5 * 0.9 < ratio <= 0.5 * (1 + wg.config.tolerance)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
