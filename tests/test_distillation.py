"""Knowledge distillation from the unpruned model: the loss, its knobs, and the harness flag every
method's training uses."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.methods import DEFAULTS, PruneContext, _train
from benchmarks.protocol import Protocol
from wgates_plugin.app.training import Distillation, Recipe, finetune_phase, prune_phase, train_steps
from wgates_plugin.errors import ConfigError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_loss_is_hintons_mixture_of_cross_entropy_and_softened_kl(seed):
    g = torch.Generator().manual_seed(seed)
    teacher, student = nn.Linear(6, 4), nn.Linear(6, 4)
    for p in list(teacher.parameters()) + list(student.parameters()):
        p.data = torch.randn(p.shape, generator=g)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    weight, t = 0.7, 3.0
    out = student(x)
    p_teacher = torch.softmax(teacher(x).detach() / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(out / t, dim=1))).sum(1).mean()
    expected = (1 - weight) * F.cross_entropy(out, y) + weight * t * t * kl
    torch.testing.assert_close(Distillation(teacher, weight, t)(out, y, x), expected)


def test_weight_zero_is_plain_cross_entropy_and_a_student_equal_to_its_teacher_learns_only_the_labels():
    net = nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    ce = F.cross_entropy(net(x), y)
    torch.testing.assert_close(Distillation(net, 0.0)(net(x), y, x), ce, rtol=0, atol=0)
    torch.testing.assert_close(Distillation(net, 0.25)(net(x), y, x), 0.75 * ce)


def test_the_teachers_modes_are_kept_and_it_gets_no_gradient():
    teacher = nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.5), nn.Linear(5, 3)).train()
    student = nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    Distillation(teacher, 1.0)(student(x), y, x).backward()
    assert teacher.training and all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"weight": 1.5}, "weight=1.5 must be in \\[0, 1\\]"),
    ({"temperature": 0.0}, "temperature=0.0 must be a number > 0"),
])
def test_bad_knobs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Distillation(nn.Linear(2, 2), **kwargs)
    recipe_kwargs = {"distill" if k == "weight" else k: v for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=match.replace("weight", "distill")):
        Recipe(**recipe_kwargs)


def test_training_toward_an_identical_teacher_alone_moves_nothing():
    """With weight 1 and the teacher a copy of the student, the loss and its gradient are zero (to float
    rounding; cross-entropy alone moves the weights by about 0.5 here)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    before = copy.deepcopy(net)
    batches = [(torch.randn(4, 5), torch.tensor([0, 1, 2, 1]))] * 3
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    losses = train_steps(net, batches, opt, 3, progress=False, distill=Distillation(before, 1.0))
    assert max(abs(v) for v in losses) < 1e-6
    for a, b in zip(net.parameters(), before.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_the_harness_flag_reaches_the_rivals_training_and_leaves_old_protocol_keys_alone():
    assert "distill" not in Protocol().asdict()  # runs recorded before the flag keep their key
    assert Protocol(distill=0.5).asdict()["distill"] == 0.5
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    teacher = copy.deepcopy(net)
    batches = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))] * 2
    ctx = PruneContext(net, torch.zeros(1, 3, 8, 8), batches, 0.5, 0, 2, ("0",),
                       hyper=dataclasses.replace(DEFAULTS, weight_decay=0.0), distill=Distillation(teacher, 1.0))
    assert _train(ctx) == 2
    for a, b in zip(net.parameters(), teacher.parameters()):  # the distillation loss, zero here, drove the steps
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_distill_finetune_false_distils_while_pruning_and_fine_tunes_on_the_labels(seed):
    """With ``distill=1`` every pruning-phase step (gate training, settling) learns from the unpruned model's
    outputs alone, so relabelling every batch leaves the pruned network unchanged. Fine-tuning then learns from
    the labels without ``distill_finetune`` (the relabelled run ends elsewhere) and from the teacher with it (it
    does not)."""
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
    relabelled = [(x, (y + 1) % 3) for x, y in data]
    x = torch.zeros(1, 3, 8, 8)

    def run(loader, distill_finetune: bool) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(seed)
        recipe = Recipe(gate_steps=3, settle=0.34, finetune_steps=2, bn_batches=1, gate_lr=1e-2, distill=1.0,
                        distill_finetune=distill_finetune)
        stage = prune_phase(_small_cnn(), x, loader, None, 0.5, recipe, progress=False)
        assert (stage.teacher is not None) == distill_finetune  # no teacher kept where none is used
        pruned = copy.deepcopy(stage.model)
        finetune_phase(stage, x, loader, None, recipe, progress=False)
        return pruned, stage.model

    def same(a: nn.Module, b: nn.Module) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    (pruned, tuned), (pruned_r, tuned_r) = run(data, False), run(relabelled, False)
    assert same(pruned, pruned_r) and not same(tuned, tuned_r)
    (pruned_kd, tuned_kd), (pruned_kd_r, tuned_kd_r) = run(data, True), run(relabelled, True)
    assert same(pruned_kd, pruned) and same(pruned_kd, pruned_kd_r) and same(tuned_kd, tuned_kd_r)


def test_distill_finetune_reaches_the_recipe_from_the_cli_and_must_be_a_bool():
    from wgates_plugin.app.cli import build_parser
    from wgates_plugin.app.commands.prune import build_recipe

    parser = build_parser()
    base = ["prune", "--model", "resnet18", "--out", "x", "--distill", "0.5"]
    assert build_recipe(parser.parse_args(base)).distill_finetune is Recipe().distill_finetune
    default = build_recipe(parser.parse_args(base[:-2]))  # no --distill: off, as chosen on validation
    assert default.distill == Recipe().distill == 0.0 and default.distillation(nn.Linear(2, 2)) is None
    assert build_recipe(parser.parse_args(base)).distill == 0.5
    assert build_recipe(parser.parse_args([*base, "--no-distill-finetune"])).distill_finetune is False
    assert build_recipe(parser.parse_args([*base, "--distill-finetune"])).distill_finetune is True
    with pytest.raises(ConfigError, match=r"distill_finetune='no' must be True or False"):
        Recipe(distill_finetune="no")
    teacher = nn.Linear(2, 2)
    assert Recipe(distill=0.5, distill_finetune=False).distillation(teacher, finetune=True) is None
    assert Recipe(distill=0.5, distill_finetune=False).distillation(teacher).weight == 0.5
