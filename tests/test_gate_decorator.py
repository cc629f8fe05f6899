"""Gate Decorator core: GBN scales, Taylor importance, global pruning, Tick-Tock, exact export, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import calibrated_model, randomize_bn
from wgates_plugin import BudgetError, ConfigError, ConfigTypeError, StateError, count_macs
from wgates_plugin.gate_decorator import GateDecorator, TickTock
from wgates_plugin.gate_decorator.tick_tock import TickTockTrainer, plan_rounds, step_plan
from wgates_plugin.integrations.budgets import LinearCostModel


class SmallCNN(nn.Module):
    """conv-bn-relu x3 with a residual pair (a shortcut-coupled group), pooling and a linear head."""

    def __init__(self, widths: tuple[int, int] = (16, 24)) -> None:
        super().__init__()
        c, d = widths
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(c, d, 3, padding=1), nn.BatchNorm2d(d), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(d, c, 3, padding=1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b(self.a(x)))
        return self.head(x.mean((2, 3)))


def no_bn_net() -> nn.Sequential:
    """Convs with biases and no BatchNorm; a sigmoid (f(0) = 0.5) after the second: phi sits on the convs."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.Sigmoid(),
                         nn.Conv2d(12, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))


def grouped_net() -> nn.Sequential:
    """A grouped conv (4 groups) reads the first group: its pattern must repeat in every conv group."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def batches(n: int, side: int = 16, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, side, side, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def score_batch(gd: GateDecorator, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    gd.model.train()
    F.cross_entropy(gd.model(batch[0]), batch[1]).backward()
    gd.accumulate()
    gd.model.zero_grad(set_to_none=True)
    for phi in gd.phi:
        phi.grad = None


def eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def set_random_phi(gd: GateDecorator, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for phi in gd.phi:
            phi.copy_(torch.rand(phi.shape, generator=g) * 1.5 - 0.25)  # some negative, none exactly 1


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def small():
    torch.manual_seed(0)
    return randomize_bn(SmallCNN()), X


# ---------------------------------------------------------------------------- attaching
def test_attach_is_bit_identical_forward_and_backward_and_keeps_parameters(small):
    model, x = small
    reference = copy.deepcopy(model)
    ids = [id(p) for p in model.parameters()]
    gd = GateDecorator(model, x, prune_shortcuts=True)
    assert [id(p) for p in model.parameters()] == ids
    assert [id(p) for p in gd.parameters()] == [id(p) for p in gd.phi]  # only phi
    assert [s.name for s in gd.sites] == ["stem.1", "b.1", "a.1"]  # the BNs: GBN sites
    for m in (model, reference):
        m.train()
        m(x).square().sum().backward()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    gd.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_groups_and_why_not_follow_w_gates_selection(small):
    model, x = small
    gd = GateDecorator(model, x)
    assert [g.name for g in gd.groups] == ["a.0"]
    reasons = {g.name: gd.why_not(g) for g in gd.traced.groups}
    assert "shortcut-coupled" in reasons["stem.0"] and "output" in reasons["head"]
    assert reasons["a.0"] == "gated"


def test_phi_gradient_and_importance_equal_phi_times_grad_computed_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    gd = GateDecorator(model, X)
    set_random_phi(gd)
    site = {s.name: i for i, s in enumerate(gd.sites)}
    assert sorted(site) == ["1", "4"] and [s.on_bn for s in gd.sites] == [True, True]
    phis = [gd.phi[site[n]].detach().clone() for n in ("1", "4")]
    expected = [torch.zeros(6), torch.zeros(5)]
    for x, y in batches(2, batch=6):
        model.train()
        F.cross_entropy(model(x), y % 4).backward()
        gd.accumulate()
        grads = [gd.phi[site[n]].grad.clone() for n in ("1", "4")]
        for p in gd.phi:
            p.grad = None
        hand = [p.clone().requires_grad_() for p in phis]  # the same forward written out, phi explicit
        h = F.relu(F.batch_norm(F.conv2d(x, model[0].weight, model[0].bias), None, None, model[1].weight,
                                model[1].bias, training=True) * hand[0].view(1, -1, 1, 1))
        h = F.relu(F.batch_norm(F.conv2d(h, model[3].weight, model[3].bias), None, None, model[4].weight,
                                model[4].bias, training=True) * hand[1].view(1, -1, 1, 1))
        F.cross_entropy(F.linear(h.mean((2, 3)), model[8].weight, model[8].bias), y % 4).backward()
        for got, h_phi in zip(grads, hand):
            torch.testing.assert_close(got, h_phi.grad, rtol=1e-5, atol=1e-7)
        expected = [e + (p * h_phi.grad).abs() for e, p, h_phi in zip(expected, phis, hand)]
    assert gd.batches == 2
    importance = gd.importance()
    for name, e in zip(("0", "3"), expected):
        torch.testing.assert_close(importance[name], e, rtol=1e-5, atol=1e-7, msg=name)


def test_shortcut_group_sums_its_bns_and_keeps_one_pattern():
    model = calibrated_model("resnet18", 32)
    x = torch.randn(2, 3, 32, 32)
    gd = GateDecorator(model, x, prune_shortcuts=True)
    stem = next(gi for gi, g in enumerate(gd.groups) if g.name == "conv1")
    assert sorted(s.name for s in gd.sites if s.group == stem) == ["bn1", "layer1.0.bn2", "layer1.1.bn2"]
    score_batch(gd, (torch.randn(4, 3, 32, 32), torch.arange(4)))
    # rebuild the importance from the phi gradients of the group's three BNs
    gd.reset_importance()
    model.train()
    F.cross_entropy(model(x), torch.arange(2)).backward()
    by_hand = torch.zeros(64)
    for s, phi in zip(gd.sites, gd.phi):
        if s.group == stem:
            by_hand.index_add_(0, s.channels, (phi * phi.grad).abs().detach())
    gd.accumulate()
    torch.testing.assert_close(gd.importance()["conv1"], by_hand)
    # which channels a global ranking of random-weight importances picks is luck: force the outcome by
    # ranking 48 of the group's channels below every other channel of the network
    with torch.no_grad():
        gd._score(stem)[16:] = -1.0
    assert gd.prune(target=0.3) <= 0.3
    small = gd.export()
    kept = gd.kept()["conv1"][0]
    assert kept < 64 and len(gd.kept_channels()["conv1"]) == kept
    assert small.conv1.out_channels == small.layer1[0].conv2.out_channels == small.layer1[1].conv2.out_channels == kept
    assert small.bn1.num_features == small.layer1[1].bn2.num_features == kept


def test_grouped_conv_pattern_repeats_in_every_conv_group():
    torch.manual_seed(0)
    gd = GateDecorator(randomize_bn(grouped_net()), X)
    first = next(gi for gi, g in enumerate(gd.groups) if g.name == "0")
    assert gd.groups[first].tie == 4
    score_batch(gd, batches(1)[0])
    gd.prune(target=0.6)
    keep = gd.current_gates()[first].view(4, 4)  # (tie, units)
    assert 0 < int(keep.sum()) < 16 and all(torch.equal(keep[0], row) for row in keep)
    gd.export()


# ---------------------------------------------------------------------------- pruning
def channel_cost(groups):
    return LinearCostModel([g.name for g in groups], [g.size for g in groups], [1.0] * len(groups), "channels")


def test_global_ranking_removes_the_least_important_channels_across_groups(small):
    model, x = small
    gd = GateDecorator(model, x, prune_shortcuts=True, efficiency=channel_cost)  # cost = kept channels
    values = torch.randperm(16 + 24).float() + 1  # distinct importances across both groups
    with torch.no_grad():
        for s, phi in zip(gd.sites, gd.phi):
            phi.grad = torch.zeros_like(phi)
            if s.name != "b.1":  # group importance = |phi * grad| summed over BNs; b.1 adds nothing
                offset = 0 if s.group == 0 else 16
                phi.grad.copy_(values[offset + s.channels])
    gd.accumulate()
    assert gd.prune(target=30 / 40) == pytest.approx(30 / 40)
    removed = {(g, int(c)) for g, chans in enumerate(gd.current_gates()) for c in torch.nonzero(chans == 0)}
    lowest = {(0, int(i)) if i < 16 else (1, int(i) - 16) for i in torch.argsort(values)[:10]}
    assert removed == lowest


def assert_landed(gd: GateDecorator, budget: float) -> None:
    """Within the budget, and one more channel of any group that lost some would exceed it."""
    counts = gd.counts()  # (G,)
    assert float(gd.efficiency(counts)) / gd.reference_cost <= budget
    for gi, g in enumerate(gd.groups):
        if counts[gi] < g.size:
            more = counts.clone()
            more[gi] += g.tie
            assert float(gd.efficiency(more)) / gd.reference_cost > budget, g.name


def test_prune_lands_on_the_budget_respects_floors_and_only_removes(small):
    model, x = small
    gd = GateDecorator(model, x, prune_shortcuts=True, min_channels=3)
    score_batch(gd, batches(1)[0])
    reached = gd.prune(target=0.4)
    assert reached == gd.cost_ratio() == gd.flops_ratio()
    assert_landed(gd, 0.4)
    assert gd.prune(target=0.9) == reached  # a budget above the current cost removes nothing
    assert gd.prune(fraction=0.5) <= reached * 0.5
    assert min(k for k, _ in gd.kept().values()) >= 3
    with pytest.raises(BudgetError, match=r"target=0.001 is unreachable: .* keeps 0\.\d+ of the original MACs"):
        gd.prune(target=0.001)


def test_min_keep_and_layer_floor(small):
    model, x = small
    gd = GateDecorator(model, x, prune_shortcuts=True, min_keep=0.25, layer_min_keep={"a.0": 0.5})
    assert gd.low_units == [4, 12]  # ceil(0.25 * 16), ceil(0.5 * 24)
    score_batch(gd, batches(1)[0])
    gd.prune(target=gd.floor_ratio())
    assert gd.kept() == {"stem.0": (4, 16), "a.0": (12, 24)}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ConfigError, "exactly one of target=.* and fraction="),
        ({"target": 0.5, "fraction": 0.1}, ConfigError, "exactly one of"),
        ({"target": 0}, ConfigError, r"target=0 must be in \(0, 1\]"),
        ({"fraction": 1.0}, ConfigError, r"fraction=1.0 must be in \(0, 1\)"),
        ({"target": "half"}, ConfigTypeError, "target='half' must be a number"),
    ],
)
def test_prune_arguments_are_checked(small, kwargs, error, message):
    model, x = small
    gd = GateDecorator(model, x)
    score_batch(gd, batches(1)[0])
    with pytest.raises(error, match=message):
        gd.prune(**kwargs)


def test_prune_needs_importance(small):
    model, x = small
    with pytest.raises(StateError, match=r"none was accumulated: run a backward pass and call accumulate\(\)"):
        GateDecorator(model, x).prune(target=0.5)


# ---------------------------------------------------------------------------- export
def test_export_merges_random_phi_and_matches_the_gated_model_on_resnet18():
    model = calibrated_model("resnet18", 32)
    x = torch.randn(2, 3, 32, 32)
    original = copy.deepcopy(model)
    gd = GateDecorator(model, x, target=0.4, prune_shortcuts=True)
    score_batch(gd, (torch.randn(4, 3, 32, 32), torch.arange(4)))
    before = eval_out(model, x)
    set_random_phi(gd)
    gated = eval_out(model, x)
    assert not torch.allclose(gated, before, atol=1e-3)  # phi matters, so the check below can fail
    assert gd.prune(target=0.4) == pytest.approx(0.4, rel=0.01)
    gated = eval_out(model, x)
    small = gd.export()
    scale = max(1.0, float(gated.abs().max()))
    torch.testing.assert_close(eval_out(small, x), gated, rtol=1e-4, atol=1e-5 * scale)
    assert count_macs(small, x) == pytest.approx(float(gd.flops(gd.counts())), rel=1e-6)
    assert count_macs(small, x) / count_macs(original, x) == pytest.approx(gd.flops_ratio(), rel=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in small.modules())
    assert [n for n, _ in small.named_parameters()] == [n for n, _ in original.named_parameters()]  # no phi
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in original.parameters())
    assert type(small.bn1) is nn.BatchNorm2d


def test_export_without_bn_merges_phi_into_the_convs_and_is_exact_after_a_sigmoid():
    torch.manual_seed(0)
    model = no_bn_net()
    gd = GateDecorator(model, X)
    assert sorted((s.name, s.on_bn) for s in gd.sites) == [("0", False), ("2", False), ("4", False)]
    score_batch(gd, batches(1)[0])
    set_random_phi(gd)
    gd.prune(target=0.5)
    gated = eval_out(model, X)
    small = gd.export()
    assert [small[i].out_channels for i in (0, 2)] == [gd.kept()[n][0] for n in ("0", "2")]
    assert sum(k for k, _ in gd.kept().values()) < sum(n for _, n in gd.kept().values())
    torch.testing.assert_close(eval_out(small, X), gated, rtol=1e-4, atol=1e-5)


def test_fuse_moves_phi_into_the_model_without_changing_it(small):
    model, x = small
    gd = GateDecorator(model, x, prune_shortcuts=True)
    set_random_phi(gd)
    before = eval_out(model, x)
    gd.fuse()
    assert all(torch.equal(p, torch.ones_like(p)) for p in gd.phi)
    torch.testing.assert_close(eval_out(model, x), before, rtol=1e-5, atol=1e-6)


def test_export_before_the_target_is_reached_is_refused(small):
    model, x = small
    with pytest.raises(StateError, match=r"export\(\) before the pruning reached target=0.5 \(cost now 1.0000\)"):
        GateDecorator(model, x, target=0.5).export()


def test_state_dict_round_trip(small):
    model, x = small
    gd = GateDecorator(model, x, target=0.5, prune_shortcuts=True)
    score_batch(gd, batches(1)[0])
    twin_model = copy.deepcopy(model)  # the copy's hooks are inert: it is the plain model
    set_random_phi(gd)
    gd.prune(target=0.5)
    twin = GateDecorator(twin_model, x, target=0.5, prune_shortcuts=True)
    twin.load_state_dict(gd.state_dict())
    assert twin.kept() == gd.kept() and twin.batches == 1
    assert all(torch.equal(a, b) for a, b in zip(twin.importance().values(), gd.importance().values()))
    torch.testing.assert_close(eval_out(twin.export(), x), eval_out(gd.export(), x), rtol=0, atol=0)
    other = GateDecorator(copy.deepcopy(twin_model), x)
    with pytest.raises((ConfigError, RuntimeError), match="groups|size mismatch|Unexpected|Missing"):
        other.load_state_dict(gd.state_dict())


# ---------------------------------------------------------------------------- Tick-Tock
def test_plan_rounds_ladder_and_step_cap():
    s = TickTock(tick_steps=4, tock_steps=8, prune_per_tick=0.2)
    rounds = plan_rounds(s, 1.0, 0.25)
    assert len(rounds) == math.ceil(math.log(0.25) / math.log(0.8)) == 7
    assert rounds[-1].target == 0.25 and rounds[-1].tock_steps == 0
    assert all(b.target / a.target >= 0.8 - 1e-9 for a, b in zip([rounds[0]] + rounds, rounds))
    assert sum(r.tick_steps + r.tock_steps for r in rounds) == 7 * 4 + 6 * 8
    capped = plan_rounds(s, 1.0, 0.25, max_steps=31)  # (31 + 8) // 12 = 3 rounds: 3 * 4 + 2 * 8 = 28
    assert [(r.tick_steps, r.tock_steps) for r in capped] == [(4, 8), (4, 8), (4, 0)]
    assert capped[-1].target == 0.25
    assert plan_rounds(s, 1.0, 0.25, max_steps=3) == [plan_rounds(s, 1.0, 0.25, max_steps=3)[0]]
    assert plan_rounds(s, 1.0, 0.25, max_steps=3)[0].tick_steps == 3
    assert plan_rounds(s, 0.2, 0.25) == []
    assert step_plan(capped)[3] == ("tick", capped[0].target) and len(step_plan(capped)) == 28


class CountingLoader:
    """A re-iterable loader that counts the batches drawn from it."""

    def __init__(self, data: list) -> None:
        self.data, self.drawn = data, []

    def __iter__(self):
        for i, b in enumerate(self.data):
            self.drawn.append(i)
            yield b


# 3 rounds of 2 Tick steps, 2 Tock steps between them: 10 steps; a cap shrinks the rounds, then the Tick.
@pytest.mark.parametrize(("max_steps", "expected"), [(None, 10), (12, 10), (9, 6), (2, 2), (1, 1)])
def test_run_reaches_the_target_within_max_steps(max_steps, expected):
    torch.manual_seed(0)
    model = randomize_bn(SmallCNN((32, 48)))
    gd = GateDecorator(model, X, target=0.5, prune_shortcuts=True)
    loader = CountingLoader(batches(3))
    seen = []
    schedule = TickTock(tick_steps=2, tock_steps=2, prune_per_tick=0.25)  # 3 rounds: 0.794, 0.63, 0.5
    trace = gd.run(loader, schedule, max_steps=max_steps, callback=seen.append)
    assert trace.steps_used == gd.steps_used == len(trace.steps) == len(loader.drawn) == expected
    assert max_steps is None or trace.steps_used <= max_steps
    assert seen == trace.records
    assert 0.5 * 0.99 <= gd.flops_ratio() <= 0.5
    assert trace.prunes[-1].cost_ratio == gd.cost_ratio() and trace.prunes[-1].target == 0.5
    assert [r.phase for r in trace.steps][:3] == ["tick", "tick", "tock"][: min(3, expected)]
    assert model.training and all(p.requires_grad for p in model.parameters())
    gd.export()


def test_tick_freezes_the_weights_and_trains_phi(small):
    model, x = small
    gd = GateDecorator(model, x, target=0.6, prune_shortcuts=True)
    weights = copy.deepcopy(model.state_dict())
    trace = gd.run(batches(2), TickTock(tick_steps=3, tock_steps=0, freeze_bn_stats=True))
    assert {r.phase for r in trace.steps} == {"tick"} and len(trace.prunes) == len(trace.rounds) >= 2
    for name, value in model.state_dict().items():  # weights and BN statistics: nothing moved
        assert torch.equal(value, weights[name]), name
    assert any(not torch.equal(p, torch.ones_like(p)) for p in gd.phi)  # phi trained
    assert all(p.requires_grad for p in model.parameters())


def test_tick_in_train_mode_updates_bn_statistics_but_not_weights(small):
    model, x = small
    gd = GateDecorator(model, x, target=0.6, prune_shortcuts=True)
    before = copy.deepcopy(model)
    TickTockTrainer(gd, batches(2), TickTock()).tick(2)
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(model.stem[1].running_mean, before.stem[1].running_mean)
    assert gd.batches == 2 and all(float(s.sum()) > 0 for s in gd.importance().values())


def test_tock_trains_the_weights_and_applies_the_l1_term(small):
    model, x = small
    schedule = TickTock(momentum=0.0, weight_decay=0.0, weight_lr=0.05)
    results = []
    for l1 in (0.0, 0.1):
        gd = GateDecorator(copy.deepcopy(model), x, prune_shortcuts=True)
        set_random_phi(gd)
        score_batch(gd, batches(1)[0])
        gd.prune(target=0.7)
        start = [p.detach().clone() for p in gd.phi]
        trainer = TickTockTrainer(gd, batches(1), schedule)
        trainer.tock(1, l1=l1)
        results.append((gd, start, trainer))
    (plain, start, _), (sparse, _, trainer) = results
    assert not torch.equal(sparse.model.a[0].weight, model.a[0].weight)  # the weights trained
    assert [r.phase for r in trainer.trace.steps] == ["tock"]
    for site, p0, p1, s in zip(sparse.sites, plain.phi, sparse.phi, start):
        live = sparse.current_gates()[site.group][site.channels]
        torch.testing.assert_close(p1 - p0, -0.05 * 0.1 * torch.sign(s) * live, rtol=1e-4, atol=1e-6)


def test_tick_subset_cycles_over_the_first_batches(small):
    model, x = small
    gd = GateDecorator(model, x, target=0.6)
    loader = CountingLoader(batches(4))
    trainer = TickTockTrainer(gd, loader, TickTock(subset_batches=2))
    trainer.tick(5)
    assert loader.drawn == [0, 1]  # two drawn, then the same two reused
    trainer.tock(2)
    assert loader.drawn == [0, 1, 2, 3]


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": 1.5}, ConfigError, r"target=1.5 must be in \(0, 1\]"),
        ({"target": "half"}, ConfigTypeError, "target='half' must be a number"),
        ({"min_channels": 0}, ConfigError, "min_channels=0 must be an int >= 1"),
        ({"min_keep": 1.0}, ConfigError, r"min_keep=1.0 must be a kept fraction in \[0, 1\)"),
        ({"layer_min_keep": {"nope": 0.5}}, ConfigError, r"layer_min_keep names layers that are not in the model"),
        ({"exclude": ("nope",)}, ConfigError, r"exclude names layers that are not in the model: \['nope'\]"),
        ({"exclude": ("a.0",)}, ConfigError, "no prunable channel group was selected; groups found: .*shortcut"),
        ({"select": "a.0"}, ConfigTypeError, "select must be a callable"),
        ({"target": 0.01}, BudgetError, r"target=0.01 is unreachable: .* keeps 0\.\d+ of the original MACs"),
    ],
)
def test_invalid_arguments_name_the_value(small, kwargs, error, message):
    model, x = small
    with pytest.raises(error, match=message):
        GateDecorator(model, x, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tick_steps": 0}, ConfigError, "tick_steps=0 must be an int >= 1"),
        ({"tock_steps": -1}, ConfigError, "tock_steps=-1 must be an int >= 0"),
        ({"prune_per_tick": 1.0}, ConfigError, r"prune_per_tick=1.0 must be in \(0, 1\)"),
        ({"gate_lr": 0}, ConfigError, "gate_lr=0 must be > 0"),
        ({"momentum": 1.0}, ConfigError, r"momentum=1.0 must be in \[0, 1\)"),
        ({"l1": -1e-3}, ConfigError, "l1=-0.001 must be >= 0"),
        ({"weight_lr": "fast"}, ConfigTypeError, "weight_lr='fast' must be a number"),
        ({"subset_batches": 0}, ConfigError, "subset_batches=0 must be an int >= 1"),
        ({"freeze_bn_stats": "yes"}, ConfigTypeError, "freeze_bn_stats='yes' must be a bool"),
    ],
)
def test_invalid_schedule_names_the_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        TickTock(**kwargs)


def test_run_arguments_are_checked(small):
    model, x = small
    with pytest.raises(ConfigError, match=r"run\(\) prunes to the target: pass target="):
        GateDecorator(copy.deepcopy(model), x).run(batches(1))
    gd = GateDecorator(model, x, target=0.6)
    with pytest.raises(ConfigError, match="max_steps=0 must be an int >= 1"):
        gd.run(batches(1), max_steps=0)
    with pytest.raises(ConfigTypeError, match="schedule must be a TickTock, got dict"):
        gd.run(batches(1), {"tick_steps": 2})
    with pytest.raises(ConfigTypeError, match="train_loader must be an iterable of batches"):
        gd.run(None)
    with pytest.raises(ConfigTypeError, match=r"the default loss needs \(inputs, targets\) batches, got Tensor"):
        gd.run([torch.randn(2, 3, 16, 16)])
    with pytest.raises(ConfigError, match="train_loader yielded no batch"):
        gd.run([])


def test_docstring_example_runs():
    import doctest

    import wgates_plugin.gate_decorator.method as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
