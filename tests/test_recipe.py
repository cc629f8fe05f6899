"""The recipe levers: warm start, the target ramp, and ending gate training once the masks settle."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wgates_plugin import WGates, WGatesConfig
from wgates_plugin.app.training import Recipe, train_gates
from wgates_plugin.budget import land
from wgates_plugin.errors import ConfigError
from wgates_plugin.gates import Producer, WeightGate


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Conv2d(24, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1, 5, 12, 16])
def test_warm_start_keeps_the_largest_filters_inside_the_gradient_window(seed, keep):
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 16, 3)  # D = 27 > C = 16: the scores are met exactly
    rows = torch.arange(16)
    gate = WeightGate([Producer(conv, rows, rows)], 16)
    gate.warm_start(keep)
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert torch.equal(torch.nonzero(gate.hard()).flatten().sort().values,
                       torch.topk(norms, keep).indices.sort().values)
    scores = gate.unit_scores().detach()
    assert float(scores.abs().max()) <= 0.25 + 1e-6 and float(gate.bias.detach()) == 0.0


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_warm_start_begins_at_the_target_from_below(target):
    torch.manual_seed(0)
    wg = WGates(small_cnn(), torch.randn(2, 3, 8, 8), target=target, warm_start=True)
    units = [int(g.hard().sum()) for g in wg.gates]
    assert wg.cost_ratio() <= target
    for i in range(len(units)):  # no group could keep one more channel and stay within the target
        grown = list(units)
        grown[i] += 1
        if grown[i] <= wg.groups[i].size:
            assert float(wg.efficiency(torch.tensor(grown, dtype=torch.float32))) / wg.reference_cost > target


def test_the_ramp_lowers_the_trained_target_cubically():
    wg = WGates(small_cnn(), torch.randn(2, 3, 8, 8), target=0.4, ramp_steps=4)
    seen = [wg.multiplier.target]
    for _ in range(6):
        wg.update_multiplier()
        seen.append(wg.multiplier.target)
    assert seen == pytest.approx([1.0] + [0.4 + 0.6 * (1 - min(1, k / 4)) ** 3 for k in range(1, 7)])
    assert wg.budgets[0].target == pytest.approx(0.4)  # the landing budget is the final target throughout


@pytest.mark.parametrize("stable", [1, 3, 6])
def test_gate_training_ends_once_the_masks_settle_within_the_target(stable):
    torch.manual_seed(0)
    model = small_cnn()
    wg = WGates(model, torch.randn(2, 3, 8, 8), target=0.5, warm_start=True)
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(3)]
    recipe = Recipe(gate_steps=50, gate_lr=0.0, weight_lr=0.0, freeze_stable=stable)  # nothing moves
    train_gates(model, wg, loader, recipe, progress=False)
    assert wg.steps == stable + 1  # the first step sets the mask, then `stable` unchanged steps


def test_annealing_raises_the_sigmoid_scale_geometrically_to_hard_gates():
    import torchvision

    from wgates_plugin.config import ANNEALED_K

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    wg = WGates(model, x, target=0.5, activation="sigmoid", sigmoid_k=4.0, anneal_steps=10, warm_start=False)
    ks = []
    for _ in range(12):
        wg.update_multiplier()
        ks.append(wg.gates[0].sigmoid_k)
    assert ks[4] == pytest.approx(4.0 * (ANNEALED_K / 4.0) ** 0.5)  # step 5 of 10: the geometric midpoint
    assert ks[9] == ks[11] == pytest.approx(ANNEALED_K)
    soft = wg.gates[0]()
    assert torch.all((soft < 1e-6) | (soft > 1 - 1e-6))  # the gates are 0/1 to float precision before freezing
    with pytest.raises(ConfigError, match="anneal_steps=5 anneals the sigmoid's scale: it needs activation='sigmoid'"):
        WGatesConfig(target=0.5, anneal_steps=5)


@pytest.mark.parametrize(("flips", "steps"), [(0.0, 4), (0.03, 3)])
def test_early_freeze_tolerates_its_share_of_flipping_channels(flips, steps):
    """Scripted masks A, A', A', A', ... (A' flips one of the 48 channels of A): with freeze_stable=2 an exact rule
    restarts its count at A' and freezes after step 4; allowing 3 % of the channels to differ from A, after 3."""
    torch.manual_seed(0)
    model = small_cnn()
    wg = WGates(model, torch.randn(2, 3, 8, 8), target=0.5, warm_start=True)
    first = torch.cat(wg.keep_masks())
    assert 1 <= 0.03 * first.numel() < 2  # one flip is within the 3 %, two are not
    flipped = first.clone()
    flipped[0] = 1 - flipped[0]
    script = iter([first] + [flipped] * 50)
    wg.keep_masks = lambda: [next(script)]  # type: ignore[method-assign]
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(3)]
    recipe = Recipe(gate_steps=50, gate_lr=0.0, weight_lr=0.0, freeze_stable=2, freeze_flips=flips)
    train_gates(model, wg, loader, recipe, progress=False)
    assert wg.steps == steps


def test_a_freeze_flips_share_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"freeze_flips=1 must be in \[0, 1\)"):
        Recipe(freeze_flips=1)


def test_weight_anneal_and_freeze_flips_without_the_lever_they_shape_are_refused():
    with pytest.raises(ConfigError, match=r"weight_anneal=0\.25 shapes the cosine weight schedule: it needs "
                                          r"weight_schedule='cosine', not 'constant'"):
        Recipe(weight_anneal=0.25)
    with pytest.raises(ConfigError, match=r"freeze_flips=0\.02 loosens the early freeze: it needs freeze_stable >= 1"):
        Recipe(freeze_flips=0.02)
    assert Recipe(weight_schedule="cosine", weight_anneal=0.25).weight_anneal == 0.25
    assert Recipe(freeze_stable=8, freeze_flips=0.02).freeze_flips == 0.02


def _units(wg: WGates) -> list[torch.Tensor]:
    return [g.hard().view(g.tie, g.units)[0].clone() for g in wg.gates]


def test_top_k_mask_breaks_ties_by_the_second_key_then_by_index():
    from wgates_plugin.gates import top_k_mask

    votes = torch.tensor([3.0, 1.0, 3.0, 1.0, 0.0, 1.0])
    scores = torch.tensor([0.0, -0.1, 0.2, 0.3, 0.9, 0.3])
    assert top_k_mask(votes, 4, tiebreak=scores).tolist() == [1, 0, 1, 1, 0, 1]  # 1-vote tie: 3 and 5 (0.3) over 1
    assert top_k_mask(votes, 3, tiebreak=scores).tolist() == [1, 0, 1, 1, 0, 0]  # 0.3 == 0.3: the lower index
    assert top_k_mask(votes, 3).tolist() == [1, 1, 1, 0, 0, 0]  # no second key: the lower index


def _vote(wg: WGates, *rounds: list[torch.Tensor]) -> None:
    """One record_votes() per round, with every gate held at that round's unit mask; the gates open after."""
    for masks in rounds:
        for gate, m in zip(wg.gates, masks):
            gate.freeze(m.repeat(gate.tie))
        wg.record_votes()
    wg.unfreeze()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_freeze_keeps_the_units_open_most_often_at_their_mean_count(seed):
    """Masks B (three votes) and A (two) of equal counts, A the live one: the freeze keeps B."""
    torch.manual_seed(seed)
    wg = WGates(small_cnn(), torch.randn(2, 3, 8, 8), target=0.5, warm_start=True)
    a = _units(wg)  # the live masks (the warm start's)
    b = [m.flip(0) for m in a]  # another mask of the same counts
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    _vote(wg, b, b, a, b, a)
    assert wg.votes == 5
    wg.freeze(project=False)  # no landing: the mean counts as they are
    # votes 3 B + 2 A: the |B| most voted units are those of B (5 votes in both masks, 3 in B alone, 2 in A alone)
    assert all(torch.equal(k, m) for k, m in zip(_units(wg), b))
    wg.unfreeze()
    wg.freeze()  # landed on the target from the voted counts
    landed = land([int(m.sum()) for m in b], wg.unit_bounds(), wg.budgets)
    assert [int(g.hard().sum()) // g.tie for g in wg.gates] == landed
    assert wg.cost_ratio() <= 0.5 * (1 + wg.config.tolerance)


def test_the_vote_count_is_the_rounded_mean_and_clearing_forgets_it():
    torch.manual_seed(0)
    wg = WGates(small_cnn(), torch.randn(2, 3, 8, 8), target=0.5, warm_start=True)
    live = [g.kept_units() for g in wg.gates]
    full = [torch.ones(g.units) for g in wg.gates]
    one = [torch.zeros(g.units) for g in wg.gates]
    for m in one:
        m[0] = 1  # the bounds keep one unit at least
    _vote(wg, full, one, one)
    expected = [round((g.units + 2) / 3) for g in wg.gates]  # the mean of one full mask and two single units
    assert expected != live
    wg.freeze(project=False)
    assert [g.kept_units() for g in wg.gates] == expected
    wg.unfreeze()
    wg.clear_votes()
    assert wg.votes == 0
    wg.freeze(project=False)  # the live masks again
    assert [g.kept_units() for g in wg.gates] == live


def test_the_tally_survives_a_state_dict_and_a_wrong_one_is_refused():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = small_cnn()
    wg = WGates(model, x, target=0.5, warm_start=True)
    a = _units(wg)
    b = [m.flip(0) for m in a]
    _vote(wg, b, a, b)
    state = wg.state_dict()
    twin = WGates(copy.deepcopy(model), x, target=0.5, warm_start=True)  # live masks A, like wg's
    twin.load_state_dict(state)
    assert twin.votes == 3 and twin.get_extra_state()["votes"] == wg.get_extra_state()["votes"]
    twin.freeze(project=False)
    assert all(torch.equal(k, m) for k, m in zip(_units(twin), b))  # the loaded tally, not the live masks
    state["_extra_state"]["votes"][0] = [1, 2]
    with pytest.raises(ConfigError, match=r"saved vote tallies have \[2, "):
        twin.load_state_dict(state)


def test_the_tally_counts_exactly_in_a_low_precision_model():
    torch.manual_seed(0)
    model = small_cnn().to(torch.bfloat16)  # bf16 holds the integers up to 256 only
    wg = WGates(model, torch.randn(2, 3, 8, 8, dtype=torch.bfloat16), target=0.5, warm_start=True)
    a = _units(wg)
    b = [m.flip(0) for m in a]
    _vote(wg, *([a] * 300 + [b] * 299))
    votes = wg.get_extra_state()["votes"]
    for tally, x, y in zip(votes, a, b):
        assert tally == (300 * x.long() + 299 * y.long()).tolist()  # exact counts (599 is not a bf16 number)
    wg.freeze(project=False)
    assert all(torch.equal(k.float(), m.float()) for k, m in zip(_units(wg), a))  # 300 beats 299


@pytest.mark.parametrize(("share", "voted"), [(0.0, 0), (0.01, 1), (0.25, 2), (0.5, 4), (1.0, 8)])
def test_gate_training_tallies_the_masks_of_its_last_share_of_steps(share, voted):
    torch.manual_seed(0)
    model = small_cnn()
    wg = WGates(model, torch.randn(2, 3, 8, 8), target=0.5, warm_start=True)
    wg.record_votes()  # an earlier tally: forgotten, the freeze reads this training's masks only
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(3)]
    seen: list[int] = []
    train_gates(model, wg, loader, Recipe(gate_steps=8, freeze_votes=share), progress=False,
                on_step=lambda step, stats: seen.append(wg.votes))
    assert seen == [0] * (8 - voted) + list(range(1, voted + 1))  # the last `voted` steps, one vote each


def test_voting_and_the_early_freeze_are_exclusive():
    with pytest.raises(ConfigError, match=r"freeze_votes=0\.25 tallies the last gate steps and freeze_stable=3 may "
                                          r"end gate training before them: set one of them"):
        Recipe(freeze_votes=0.25, freeze_stable=3)


def test_a_freeze_votes_share_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"freeze_votes=1\.5 must be in \[0, 1\]"):
        Recipe(freeze_votes=1.5)
