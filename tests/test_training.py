"""Training, evaluation, BN re-calibration, latency measurement and the end-to-end recipe."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from wgates_plugin import WGates
from wgates_plugin.app.data import load_digits, loaders
from wgates_plugin.app.training import (
    Recipe,
    count_params,
    cycle,
    evaluate,
    measure_latency,
    prune_and_finetune,
    recalibrate_bn,
    settle,
    train_gates,
    train_steps,
    weight_anneal_factor,
)
from wgates_plugin.efficiency import SimulatedClock
from wgates_plugin.errors import ConfigError


def _onehot_data(n: int = 50, classes: int = 10) -> TensorDataset:
    y = torch.arange(n) % classes  # (n,)
    return TensorDataset(nn.functional.one_hot(y, classes).float(), y)


def test_evaluate_is_exact_on_models_right_or_wrong_by_construction():
    data = _onehot_data(50)
    loader = DataLoader(data, batch_size=8)  # the last batch is partial: counted too
    oracle = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        oracle.weight.copy_(torch.eye(10))
    oracle.train()
    assert evaluate(oracle, loader) == 1.0
    assert oracle.training  # mode restored
    always_zero = nn.Linear(10, 10)
    with torch.no_grad():
        always_zero.weight.zero_()
        always_zero.bias.copy_(torch.tensor([1.0] + [0.0] * 9))
    assert evaluate(always_zero, loader) == 5 / 50  # the labels 0 among 0..9 repeated


def test_evaluate_rejects_empty_loader():
    with pytest.raises(ConfigError, match="empty loader"):
        evaluate(nn.Linear(2, 2), [])


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=0.3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(self.drop(x))).mean(dim=(2, 3)))


def test_recalibrate_bn_sets_running_stats_to_the_data_statistics():
    torch.manual_seed(0)
    model = _ConvBN().train()
    batches = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(4)]
    loader = [(x, torch.zeros(16, dtype=torch.long)) for x in batches]
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    assert recalibrate_bn(model, loader, batches=4) == 1
    with torch.no_grad():
        feats = [model.conv(x) for x in batches]  # dropout stayed in eval mode: identity
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)  # (4,)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for f in feats]).mean(0)  # (4,)
    torch.testing.assert_close(model.bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(model.bn.num_batches_tracked) == 4
    assert model.bn.momentum == 0.3 and model.training and model.drop.training
    for k, v in model.state_dict().items():  # no parameter changed
        if k in params:
            assert torch.equal(v, params[k]), k


def test_recalibrate_bn_cycles_a_short_loader_and_validates():
    model = _ConvBN().eval()
    x = torch.randn(8, 3, 8, 8)
    recalibrate_bn(model, [(x, None)], batches=3)
    with torch.no_grad():
        f = model.conv(x)
    torch.testing.assert_close(model.bn.running_mean, f.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert not model.training
    with pytest.raises(ConfigError, match=r"batches=0 must be an int >= 1"):
        recalibrate_bn(model, [(x, None)], batches=0)
    assert recalibrate_bn(nn.Linear(2, 2), [(x, None)]) == 0  # nothing to re-calibrate


def test_train_steps_learns_cycles_and_calls_extra_loss_after_forward():
    torch.manual_seed(0)
    data = _onehot_data(40)
    loader = DataLoader(data, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = nn.Linear(10, 10)
    seen: list[int] = []
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(len(seen)))
    extra_param = nn.Parameter(torch.tensor(2.0))

    def extra() -> torch.Tensor:
        assert len(forwards) == len(seen) + 1  # the forward of this step already ran
        return extra_param ** 2

    opts = [torch.optim.SGD(model.parameters(), lr=5.0), torch.optim.SGD([extra_param], lr=0.1)]
    losses = train_steps(model, loader, opts, steps=30, extra_loss=extra,
                         callback=lambda step, stats: seen.append(step), progress=False)
    assert len(losses) == 30 and seen == list(range(30))  # 30 steps over a 4-batch loader
    assert losses[-1] < 0.5 * losses[0]
    assert abs(float(extra_param.detach())) < 0.01  # the second optimizer stepped on the extra loss: 2 * 0.8**30


def test_train_steps_validates_steps_and_empty_loader():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"steps=-1 must be an int >= 0"):
        train_steps(model, [], opt, steps=-1)
    with pytest.raises(ConfigError, match="yields no batch"):
        train_steps(model, [], opt, steps=1, progress=False)
    assert train_steps(model, [], opt, steps=0, progress=False) == []


def test_cycle_reiterates_each_epoch():
    loader = DataLoader(TensorDataset(torch.arange(6)), batch_size=2, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    it = cycle(loader)
    epochs = [torch.cat([next(it)[0] for _ in range(3)]) for _ in range(3)]
    assert all(sorted(e.tolist()) == list(range(6)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1]) or not torch.equal(epochs[1], epochs[2])  # re-shuffled


def test_measure_latency_restores_state_and_orders_models():
    small = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).train()
    big = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1) for i in range(4)])
    x = torch.randn(2, 3, 32, 32)
    threads = torch.get_num_threads()
    with SimulatedClock():  # latency = an exact function of the layers' MACs, not of the machine's load
        t_small = measure_latency(small, x, threads=1, repeats=5, number=2, warmup=1)
        t_big = measure_latency(big, x, threads=1, repeats=5, number=2, warmup=1)
    assert 0 < t_small < t_big  # 64x more MACs per layer, four layers
    assert small.training and torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match=r"threads=0 must be an int >= 1"):
        measure_latency(small, x, threads=0)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("gate_steps", -1, r"gate_steps=-1 must be an int >= 0"),
    ("bn_batches", 0, r"bn_batches=0 must be an int >= 1"),
    ("gate_lr", -1e-3, r"gate_lr=-0.001 must be a number >= 0"),
    ("finetune_steps", 1.5, r"finetune_steps=1.5 must be an int >= 0"),
    ("weight_schedule", "linear", r"weight_schedule='linear' is not one of 'constant', 'cosine'"),
])
def test_recipe_validates(field, value, match):
    with pytest.raises(ConfigError, match=match):
        Recipe(**{field: value})


@pytest.mark.parametrize("seed", [0, 1])
def test_cosine_weight_schedule_halves_the_second_of_two_gate_steps(seed):
    """Plain SGD (no momentum, no decay), gates fixed (lr 0): with two gate steps the cosine schedule's
    second step is exactly half the constant schedule's, from the same point with the same gradient."""
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    x = torch.zeros(1, 3, 8, 8)

    def weights_after(steps: int, schedule: str) -> torch.Tensor:
        model = copy.deepcopy(base)
        wg = WGates(model, x, target=0.5)
        recipe = Recipe(gate_steps=steps, gate_lr=0.0, weight_lr=0.1, momentum=0.0, weight_decay=0.0,
                        weight_schedule=schedule)
        train_gates(model, wg, batches, recipe, progress=False)
        wg.remove()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights_after(1, "constant")
    assert torch.equal(weights_after(1, "cosine"), first)  # the first step is at the full rate
    constant, cosine = weights_after(2, "constant") - first, weights_after(2, "cosine") - first
    assert constant.abs().max() > 0
    torch.testing.assert_close(2 * cosine, constant, rtol=1e-5, atol=1e-6)  # float32 rounding of weights ~1


@pytest.mark.parametrize(("steps", "share", "split"), [(156, 0.25, (117, 39)), (156, 0.0, (156, 0)),
                                                       (4, 0.5, (2, 2)), (3, 0.99, (0, 3)), (0, 0.5, (0, 0))])
def test_recipe_split_gives_settle_its_share_of_the_gate_steps(steps, share, split):
    recipe = Recipe(gate_steps=steps, settle=share)
    assert recipe.split() == split and sum(split) == steps


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_recipe_rejects_a_settle_share_outside_0_1(bad):
    with pytest.raises(ConfigError, match=r"settle=.* must be in \[0, 1\)"):
        Recipe(settle=bad)


def _two_conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_settling_trains_the_gates_for_their_share_then_the_exported_network_at_its_widths(seed):
    """With settle=0.5 of 4 gate steps, the gates take 2 steps; ``settle`` then trains the exported network for
    the other 2 with the weights' cosine schedule from ``weight_lr`` (exactly ``fit``'s), its widths unchanged."""
    model = _two_conv(seed)
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(4)]
    x = torch.zeros(1, 3, 8, 8)
    recipe = Recipe(gate_steps=4, settle=0.5, gate_lr=1e-2, weight_lr=0.1, momentum=0.0, weight_decay=0.0)
    wg = WGates(model, x, target=0.5)
    train_gates(model, wg, batches, recipe, progress=False)
    assert wg.steps == 2  # the gates' share only
    wg.freeze()
    exported = wg.export()
    wg.remove()
    widths = [m.out_channels for m in exported.modules() if isinstance(m, nn.Conv2d)]
    before, by_hand = copy.deepcopy(exported), copy.deepcopy(exported)
    assert settle(exported, batches, recipe, progress=False) == 2
    assert [m.out_channels for m in exported.modules() if isinstance(m, nn.Conv2d)] == widths
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    train_steps(by_hand, batches, opt, 2, scheduler=sched, progress=False)
    for ours, theirs in zip(exported.state_dict().values(), by_hand.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(exported.parameters(), before.parameters()))
    assert settle(exported, batches, Recipe(gate_steps=4), progress=False) == 0  # settle=0: nothing to do


@pytest.mark.parametrize("steps", [1, 2, 7, 156])
def test_weight_anneal_over_all_steps_is_torchs_cosine_and_a_share_holds_the_rate_first(steps):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    full = weight_anneal_factor(steps, 1.0)
    for step in range(steps + 1):
        assert full(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()
    quarter = weight_anneal_factor(8, 0.25)
    assert [quarter(i) for i in range(9)] == [1.0] * 7 + [pytest.approx(0.5), pytest.approx(0.0, abs=1e-15)]


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_recipe_rejects_a_weight_anneal_share_outside_0_1(bad):
    with pytest.raises(ConfigError, match=r"weight_anneal=.* must be in \(0, 1\]"):
        Recipe(weight_anneal=bad)


@pytest.fixture(scope="module")
def small_digits():
    train, test = load_digits(size=16)
    return loaders(train, Subset(test, range(128)), batch_size=32)


def test_prune_and_finetune_end_to_end(small_digits):
    train_loader, test_loader = small_digits
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.zeros(1, 3, 16, 16)
    recipe = Recipe(gate_steps=4, finetune_steps=3, bn_batches=2, log_every=2, gate_lr=1e-2)
    result = prune_and_finetune(model, x, train_loader, test_loader, target=0.5, recipe=recipe,
                                latency_input=torch.zeros(1, 3, 16, 16), progress=False)
    report = result.report
    assert 0.49 <= report["flops_ratio"] <= 0.5  # lands the budget from below, within 1 %
    assert report["after"]["params"] == count_params(result.model) < report["before"]["params"]
    assert set(report["top1"]) == {"baseline", "gated", "pruned", "recalibrated", "finetuned"}
    assert all(0.0 <= v <= 1.0 for v in report["top1"].values())
    assert report["after"]["latency_s"] > 0 and report["before"]["latency_s"] > 0
    assert [t["step"] for t in report["trace"]] == [0, 2, 3]
    assert report["recipe"]["gate_steps"] == 4 and set(report["seconds"]) == {"gates", "export", "finetune"}
    # the kept counts describe the returned model: layer1.0.conv1 keeps that many filters
    kept, size = report["kept"]["layer1.0.conv1"]
    assert result.model.layer1[0].conv1.out_channels == kept <= size == 64
    assert not result.wgates._handles  # the gates are detached from the trained baseline


def test_prune_and_finetune_with_settle_reports_the_exported_and_the_settled_network(small_digits):
    train_loader, test_loader = small_digits
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.zeros(1, 3, 16, 16)
    recipe = Recipe(gate_steps=4, finetune_steps=0, bn_batches=2, log_every=1, gate_lr=1e-2, settle=0.5)
    result = prune_and_finetune(model, x, train_loader, test_loader, target=0.5, recipe=recipe, progress=False)
    report = result.report
    assert 0.49 <= report["flops_ratio"] <= 0.5  # the settling steps keep the frozen widths: the budget holds
    assert set(report["top1"]) == {"baseline", "gated", "exported", "pruned", "recalibrated", "finetuned"}
    assert [t["step"] for t in report["trace"]] == [0, 1]  # two gate steps, two settling steps
    assert result.wgates.steps == 2
