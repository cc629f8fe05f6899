"""Benchmark models (benchmarks/models.py) and baseline pruning methods (benchmarks/methods.py).

Models: parameter and MAC counts pinned as ``count_macs`` computes them, the CIFAR ResNets' structure,
and torch-pruning tracing on all four. Methods, with real NNI and torch-pruning on ResNet-20 and a
two-block residual net: every method lands within the FLOPs tolerance, keeps residual-coupled widths
and the classifier, counts its training steps exactly, and each one's channel choice is checked
against its criterion computed here independently (first k, seeded random, L1, FPGM) or against
torch-pruning's own global pruning step (slim, depgraph).
"""

from __future__ import annotations

import copy
import dataclasses
import doctest
import importlib
import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from benchmarks.landing import GlobalPath, LayerwisePath
from benchmarks.methods import (
    METHODS,
    MethodDefaults,
    PruneContext,
    Pruned,
    _group_scores,
    _groups,
    _ignored,
    get_method,
    prunable_layers,
    with_hyper,
)
from benchmarks.models import MODELS, BasicBlock, CifarResNet, build, option_b_extra_params
from wgates_plugin import count_macs
from wgates_plugin.errors import BudgetError, ConfigError, ConfigTypeError

X = torch.zeros(1, 3, 32, 32)
STEPS = 3


def batches(n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


class CountingLoader:
    """A re-iterable loader that counts the batches drawn from it."""

    def __init__(self, data: list) -> None:
        self.data, self.drawn = data, 0

    def __iter__(self):
        for batch in self.data:
            self.drawn += 1
            yield batch


class TwoBlock(nn.Module):
    """Stem + two basic blocks (the second downsamples with an option-B shortcut) + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.block0, self.block1 = BasicBlock(16, 16), BasicBlock(16, 32, stride=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.block0(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = build("resnet20")
    for m in model.modules():  # BN scales that differ per channel, so gamma rankings are not ties
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def two_block() -> nn.Module:
    torch.manual_seed(1)
    return TwoBlock().eval()


def context(model: nn.Module, budget: float, steps: int = 0, seed: int = 0, loader=None,
            prune_shortcuts: bool = False, **kwargs) -> PruneContext:
    return PruneContext(copy.deepcopy(model), X, batches() if loader is None else loader, budget, seed, steps,
                        prunable_layers(model, X, prune_shortcuts), **kwargs)


def steps_for(name: str) -> int:
    return STEPS if name in ("slim", "taylor", "depgraph") else 0


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Both networks hold exactly the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ============================================================================ models
PINNED = {  # parameters, MACs at 32x32 (count_macs), with 10 classes
    "resnet20": (272_474, 40_813_194),
    "resnet56": (855_770, 125_747_850),
    "vgg16_bn": (14_728_266, 313_478_154),
    "resnet18": (11_173_962, 555_422_730),
    "mobilenet_v2": (2_236_682, 24_461_322),
}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_and_mac_counts(name):
    model = build(name)
    params, macs = PINNED[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert count_macs(model, X) == macs
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnets_match_he_et_al():
    """Option A gives the paper's 0.27 M / 0.85 M parameters; option B adds two 1x1 convs + BN."""
    assert option_b_extra_params() == 2752
    assert PINNED["resnet20"][0] - option_b_extra_params() == 269_722
    assert PINNED["resnet56"][0] - option_b_extra_params() == 853_018
    for blocks, depth in ((3, 20), (9, 56)):
        model = CifarResNet(blocks)
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
        assert len(convs) + 1 == depth  # 6n + 1 convs and the linear layer
        assert [s[-1].conv2.out_channels for s in (model.layer1, model.layer2, model.layer3)] == [16, 32, 64]
        assert [s[0].conv1.stride for s in (model.layer1, model.layer2, model.layer3)] == [(1, 1), (2, 2), (2, 2)]


def test_resnet18_and_vgg_adapted_to_32x32():
    r18 = build("resnet18", num_classes=7)
    assert (r18.conv1.kernel_size, r18.conv1.stride, type(r18.maxpool)) == ((3, 3), (1, 1), nn.Identity)
    assert r18.layer4(r18.layer3(r18.layer2(r18.layer1(r18.conv1(X))))).shape == (1, 512, 4, 4)
    assert r18.fc.out_features == 7
    vgg = build("vgg16_bn", num_classes=7)
    assert vgg.features(X).shape == (1, 512, 1, 1)
    assert (vgg.classifier.in_features, vgg.classifier.out_features) == (512, 7)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13


def test_mobilenet_v2_adapted_to_32x32():
    model = build("mobilenet_v2")
    assert model.features[0][0].stride == (1, 1)  # the stem keeps 32x32
    assert model.features(X).shape == (1, 1280, 2, 2)


def test_kaiming_init():
    torch.manual_seed(0)
    conv = build("vgg16_bn").features[-4]  # the last conv, 512 x 512 x 3 x 3
    expected = math.sqrt(2 / (conv.out_channels * 9))  # fan-out, ReLU gain
    assert abs(float(conv.weight.detach().std()) / expected - 1) < 0.01
    assert abs(float(conv.weight.detach().mean())) < 0.01 * expected


@pytest.mark.parametrize("name, plain, with_shortcuts", [  # + stem or 1x1 shortcut conv and each block's conv2
    ("resnet20", 9, 9 + 3 * (1 + 3)), ("resnet56", 27, 27 + 3 * (1 + 9)), ("vgg16_bn", 13, 13),
    ("resnet18", 8, 8 + 4 * (1 + 2))])
def test_prunable_layers_on_every_model(name, plain, with_shortcuts):
    model = build(name).eval()
    layers = prunable_layers(model, X)
    assert len(layers) == plain and len(prunable_layers(model, X, prune_shortcuts=True)) == with_shortcuts
    classifier = "classifier" if name == "vgg16_bn" else "fc"
    assert classifier not in layers
    if name != "vgg16_bn":
        assert all(n.endswith("conv1") and n.startswith("layer") for n in layers)


def test_unknown_model():
    with pytest.raises(ConfigError, match=r"model='resnet50' is not a benchmark model; allowed: resnet20, resnet56, "
                                          r"vgg16_bn, resnet18"):
        build("resnet50")
    with pytest.raises(ConfigError, match=r"num_classes=0 must be a positive int"):
        build("resnet20", num_classes=0)


# ============================================================================ methods: the contract
def assert_plain(model: nn.Module) -> None:
    """No hooks, no NNI wrappers, no gates left on the returned model."""
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), type(m).__name__
        assert not hasattr(m, "_nni_wrapper")


RESNET20_SHORTCUTS = {"conv1": 16, "layer1.0.conv2": 16, "layer1.2.conv2": 16, "layer2.0.conv2": 32,
                      "layer2.0.downsample.0": 32, "layer2.2.conv2": 32, "layer3.0.conv2": 64,
                      "layer3.0.downsample.0": 64, "layer3.2.conv2": 64}


@pytest.mark.parametrize("budget", [0.5, 0.25])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_lands_and_keeps_shortcuts(resnet20, name, budget):
    loader = CountingLoader(batches(2))
    ctx = context(resnet20, budget, steps=steps_for(name), loader=loader)
    trained_forwards = []
    ctx.model.register_forward_hook(lambda m, _i, _o: trained_forwards.append(1) if m.training else None)
    out = METHODS[name](ctx)
    out.model._forward_hooks.clear()  # the test's own counter
    assert isinstance(out, Pruned) and out.model is ctx.model and type(out.model) is CifarResNet
    assert_plain(out.model)
    achieved = count_macs(out.model, X) / count_macs(resnet20, X)
    assert abs(achieved / budget - 1) <= 0.02
    assert out.info["achieved"] == pytest.approx(achieved, rel=1e-12)
    pruned, full = widths(out.model), widths(resnet20)
    assert {n: pruned[n] for n in RESNET20_SHORTCUTS} == RESNET20_SHORTCUTS  # residual-coupled widths whole
    assert (out.model.fc.in_features, out.model.fc.out_features) == (64, 10)
    assert all(pruned[n] == full[n] for n in full if n not in ctx.prunable)
    assert sum(pruned[n] for n in ctx.prunable) < sum(full[n] for n in ctx.prunable)
    if out.info["ranking"] == "per-layer":  # a global ranking may leave a layer whole
        assert all(pruned[n] < full[n] for n in ctx.prunable)
    assert out.steps_used == steps_for(name) == loader.drawn == len(trained_forwards)  # trained once, exactly
    trained = not torch.equal(out.model.conv1.weight, resnet20.conv1.weight)  # the stem is never pruned
    assert trained == (out.steps_used > 0)  # the returned model is the one that was trained
    assert out.info["search_iterations"] >= 2 and json.loads(json.dumps(out.info)) == out.info
    assert out.model(torch.randn(2, 3, 32, 32)).shape == (2, 10) and not out.model.training


def test_uniform_keeps_the_first_channels(resnet20):
    base = copy.deepcopy(resnet20)
    for m in base.modules():  # statistics that a train-mode trace would move
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    ctx = context(base.train(), 0.5)
    out = METHODS["uniform"](ctx)
    before, after = dict(base.named_modules()), dict(out.model.named_modules())
    ratio = out.info["ratio"]
    for name in ctx.prunable:
        conv, block = before[name], name.rsplit(".", 1)[0]
        k = conv.out_channels - min(conv.out_channels - 1, math.floor(ratio * conv.out_channels + 0.5))
        assert out.info["kept"][name] == k == after[name].out_channels
        torch.testing.assert_close(after[name].weight, conv.weight[:k], rtol=0, atol=0)
        torch.testing.assert_close(after[f"{block}.bn1"].running_mean, before[f"{block}.bn1"].running_mean[:k],
                                   rtol=0, atol=0)
        torch.testing.assert_close(after[f"{block}.conv2"].weight, before[f"{block}.conv2"].weight[:, :k],
                                   rtol=0, atol=0)
    assert base.training  # the caller's model (a different object) untouched


def test_random_is_seeded(resnet20):
    def kept(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        out = METHODS["random"](context(resnet20, 0.5, seed=seed))
        return {k: v for k, v in out.model.state_dict().items() if "conv1" in k}, out.info["kept"]

    (a, counts_a), (b, _), (c, counts_c) = kept(0), kept(0), kept(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert counts_a == counts_c == METHODS["uniform"](context(resnet20, 0.5)).info["kept"]  # same architecture
    assert any(not torch.equal(a[k], c[k]) for k in a)


def fpgm_metric(w: torch.Tensor) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)  # (C, k)
    return torch.cdist(flat, flat).sum(1)  # (C,) summed distance to the other filters


@pytest.mark.parametrize("name, metric", [("l1", lambda w: w.abs().reshape(w.shape[0], -1).sum(1)),
                                          ("fpgm", fpgm_metric)])
def test_nni_methods_keep_their_criterion_best(resnet20, name, metric):
    out = METHODS[name](context(resnet20, 0.25))
    before, after = dict(resnet20.named_modules()), dict(out.model.named_modules())
    for layer in prunable_layers(resnet20, X):
        w, k = before[layer].weight, after[layer].out_channels
        best = torch.sort(torch.topk(metric(w), k).indices).values
        torch.testing.assert_close(after[layer].weight, w[best], rtol=0, atol=0)


@pytest.mark.parametrize("name, pruner, importance", [
    ("slim", tp.pruner.BNScalePruner, lambda: tp.importance.BNScaleImportance(normalizer=None)),
    ("depgraph", tp.pruner.GroupNormPruner, lambda: tp.importance.GroupMagnitudeImportance(p=2))])
def test_global_ranking_equals_torch_pruning_global_step(resnet20, name, pruner, importance):
    """Without sparse training, the ranking at the landed ratio is torch-pruning's own one-shot global step."""
    ctx = context(resnet20, 0.5)
    groups = _groups(ctx)
    out = METHODS[name](ctx)
    assert out.info["off_path_channels"] == 0
    removed = round(out.info["ratio"] * sum(g.size for g in groups))
    theirs = copy.deepcopy(resnet20)
    ratio = (removed - 0.5) / sum(g.size for g in groups)  # tp prunes total - int(total * (1 - ratio)) channels
    pruner(theirs, X, importance=importance(), global_pruning=True, pruning_ratio=ratio,
           ignored_layers=_ignored(theirs, _groups(PruneContext(theirs, X, [], 0.5, 0, 0, ctx.prunable)))).step()
    assert widths(theirs) == widths(out.model)
    ours = out.model.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in theirs.state_dict().items())


def test_taylor_needs_gradients(resnet20):
    with pytest.raises(ConfigError, match=r"method 'taylor' needs steps >= 1"):
        METHODS["taylor"](context(resnet20, 0.5))


# ============================================================================ coupled groups, off-path landing
@pytest.mark.parametrize("name", list(METHODS))
def test_shortcut_groups_pruned_together(two_block, name):
    out = METHODS[name](context(two_block, 0.5, steps=steps_for(name), prune_shortcuts=True))
    w = widths(out.model)
    assert abs(out.info["achieved"] / 0.5 - 1) <= 0.02
    assert w["conv1"] == w["block0.conv2"] and w["block1.conv2"] == w["block1.downsample.0"]
    assert len(out.info["kept"]) == 4  # two plain groups and two coupled ones


def test_off_path_landing_stays_one_channel_from_the_rule(resnet20):
    """ResNet-20 with its shortcut groups at 12 %: no common ratio lands, single channels do."""
    ctx = context(resnet20, 0.12, prune_shortcuts=True)
    groups = _groups(ctx)
    out = METHODS["uniform"](ctx)
    assert out.info["off_path_channels"] >= 1 and abs(out.info["achieved"] / 0.12 - 1) <= 0.02
    path = LayerwisePath(groups)
    rule = path.removed(next(i for i, r in enumerate(path.ratios) if float(r) == out.info["ratio"]))
    deviation = {g.name: g.size - out.info["kept"][g.name] - rule[g.name] for g in groups}
    signs = {sign for _g, _i, sign in out.info["off_path"]}
    assert len(signs) == 1 and set(deviation.values()) <= {0, *signs}  # one channel off the rule at most
    assert sum(abs(d) for d in deviation.values()) == out.info["off_path_channels"]


def test_taylor_scores_of_a_coupled_group_sum_its_producers(two_block):
    group = next(g for g in _groups(context(two_block, 0.5, prune_shortcuts=True)) if g.name == "conv1")
    per_layer = {"conv1": torch.arange(16.0), "block0.conv2": torch.arange(16.0).flip(0) * 10}
    torch.testing.assert_close(_group_scores(group, per_layer), torch.arange(16.0) + torch.arange(16.0).flip(0) * 10)


def test_global_path_keeps_each_groups_best_channel():
    path = GlobalPath({"a": torch.tensor([0.1, 0.5, 0.2]), "b": torch.tensor([0.05, 0.3])})
    assert path.order == [("b", 0), ("a", 0), ("a", 2)] and path.length == 3
    assert path.plan(path.length) == {"a": [0, 2], "b": [0]} and path.knob(2) == pytest.approx(2 / 5)


# ============================================================================ errors
def test_unreachable_budget(two_block):
    with pytest.raises(BudgetError, match=r"method 'uniform' cannot reach a FLOPs budget of 0.05: the smallest "
                                          r"network it can build .* keeps 0\.\d{4} of the FLOPs"):
        METHODS["uniform"](context(two_block, 0.05))
    with pytest.raises(BudgetError, match=r"method 'l1' cannot land within ±0.01 % of a FLOPs budget of 0.5: its "
                                          r"prunings jump over the window; the closest achieved ratio is 0\.\d{4}"):
        METHODS["l1"](context(two_block, 0.5, tolerance=1e-4))


def test_bad_names_and_values(two_block):
    with pytest.raises(ConfigError, match=r"method='obd' is not a baseline method; allowed: uniform, random, l1, "
                                          r"fpgm, slim, taylor, depgraph"):
        get_method("obd")
    assert get_method("fpgm") is METHODS["fpgm"]
    with pytest.raises(ConfigTypeError, match=r"budget='0.5' must be a number"):
        PruneContext(two_block, X, [], "0.5", 0, 0, ("block0.conv1",))
    with pytest.raises(ConfigError, match=r"steps=True must be an int >= 0"):
        PruneContext(two_block, X, [], 0.5, 0, True, ("block0.conv1",))
    for bad, match in [({"budget": 0.0}, r"budget=0.0 must be in \(0, 1\]"),
                       ({"budget": 1.5}, r"budget=1.5 must be in \(0, 1\]"),
                       ({"tolerance": 0}, r"tolerance=0 must be in \(0, 1\)"),
                       ({"steps": -1}, r"steps=-1 must be an int >= 0"),
                       ({"prunable": ()}, r"prunable is empty")]:
        args = {"budget": 0.5, "steps": 0, "prunable": ("block0.conv1",), **bad}
        with pytest.raises(ConfigError, match=match):
            PruneContext(two_block, X, [], args.pop("budget"), 0, args.pop("steps"), args.pop("prunable"), **args)


@pytest.mark.parametrize("prunable, match", [
    (("block0.conv1", "nope"), r"prunable names \['nope'\], which produce no prunable channel group"),
    (("conv1",), r"prunable names part of the coupled group 'conv1' but not \['block0.conv2'\]"),
    (("fc",), r"prunable names 'fc', which cannot be pruned here: it produces the model's output")])
def test_bad_prunable(two_block, prunable, match):
    ctx = PruneContext(copy.deepcopy(two_block), X, [], 0.5, 0, 0, prunable)
    with pytest.raises(ConfigError, match=match):
        METHODS["uniform"](ctx)


def test_empty_loader_with_steps(two_block):
    with pytest.raises(ConfigError, match=r"train_loader yielded no batch, but 2 training steps were asked for"):
        METHODS["slim"](context(two_block, 0.5, steps=2, loader=[]))


def test_hyper_parameters_are_used(two_block):
    """lr = 0 with no weight decay: the sparse training cannot move a weight, so slim equals no training."""
    frozen = MethodDefaults(lr=0.0, weight_decay=0.0)
    trained = METHODS["slim"](context(two_block, 0.5, steps=2, hyper=frozen))
    untrained = METHODS["slim"](context(two_block, 0.5, steps=0))
    assert trained.steps_used == 2
    assert all(torch.equal(v, untrained.model.state_dict()[k]) for k, v in trained.model.state_dict().items()
               if "running" not in k and "num_batches" not in k)


@pytest.mark.parametrize("name", ["benchmarks.models", "benchmarks.methods"])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("steps", "share", "gating"), [(4, 0.5, 2), (4, 0.25, 3), (3, 0.0, 3)])
def test_wgates_charges_its_settling_steps_and_lands_the_budget(resnet20, steps, share, gating):
    """The harness's W-Gates spends ``settle`` of its steps on the exported network (which keeps its widths,
    so the budget still holds) and reports every step it drew, gates and settling together."""
    from benchmarks import learned
    loader = CountingLoader(batches(2))
    ctx = context(resnet20, 0.5, steps=steps, loader=loader)
    out = learned.wgates(ctx, gate_lr=1e-3, weight_lr=0.01, momentum=0.9, weight_decay=5e-4, settle=share)
    assert out.steps_used == steps == loader.drawn
    assert out.info["settle_steps"] == steps - gating
    assert abs(count_macs(out.model, X) / count_macs(resnet20, X) / 0.5 - 1) <= 0.02
    assert {n: widths(out.model)[n] for n in RESNET20_SHORTCUTS} == RESNET20_SHORTCUTS


@pytest.mark.parametrize("seed", [0, 1])
def test_wgates_self_distill_learns_from_the_unpruned_model_alone(resnet20, seed):
    """``self_distill=1`` makes W-Gates' own steps (gate training and settling) learn from the unpruned model's
    outputs only, so relabelling every batch changes nothing in the network handed back; without it the labels
    matter (so the comparison can fail)."""
    from benchmarks import learned
    data = batches(2, seed)
    relabelled = [(x, (y + 1) % 10) for x, y in data]

    def run(loader, share):
        ctx = context(resnet20, 0.5, steps=3, loader=loader)
        out = learned.wgates(ctx, gate_lr=1e-3, weight_lr=0.01, momentum=0.9, weight_decay=5e-4, settle=0.34,
                             self_distill=share)
        assert out.steps_used == 3 and out.info["settle_steps"] == 1
        return out

    kd, kd_relabelled = run(data, 1.0), run(relabelled, 1.0)
    assert kd.info["kept"] == kd_relabelled.info["kept"] and same_weights(kd.model, kd_relabelled.model)
    assert not same_weights(run(data, 0.0).model, run(relabelled, 0.0).model)
    assert abs(count_macs(kd.model, X) / count_macs(resnet20, X) / 0.5 - 1) <= 0.02


def test_wgates_self_distill_rejects_bad_shares_and_the_protocols_distillation(resnet20):
    from benchmarks import learned
    from wgates_plugin.app.training import Distillation
    args = {"gate_lr": 1e-3, "weight_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    with pytest.raises(ConfigError, match=r"self_distill=1\.5"):
        learned.wgates(context(resnet20, 0.5, steps=1), self_distill=1.5, **args)
    both = context(resnet20, 0.5, steps=1, distill=Distillation(copy.deepcopy(resnet20), 0.5, 4.0))
    with pytest.raises(ConfigError, match=r"self_distill=0\.5 distils in W-Gates' own steps only; the protocol "
                                          r"already distils in every method's training \(distill=0\.5\)"):
        learned.wgates(both, self_distill=0.5, **args)


def test_gate_decorator_trains_its_weights_at_the_rivals_pruning_time_lr(resnet20):
    """Gate Decorator's Tick-Tock trains the weights at ``ctx.hyper.lr``, the lr every rival's pruning-time
    training uses, so one override screens it for all of them (``benchmarks.recipe``'s ``*_lr3e-3``): the run
    at ``hyper.lr=0.003`` is the one with the schedule's ``weight_lr=0.003``, and not the default's."""
    from benchmarks import learned, recipe

    def run(**kwargs) -> nn.Module:
        hyper = kwargs.pop("hyper", MethodDefaults())
        ctx = context(resnet20, 0.5, steps=24, loader=batches(4), hyper=hyper)
        torch.manual_seed(0)
        out = recipe.rival_fn("gate_decorator_lr3e-3")(ctx) if kwargs.pop("rival", False) \
            else learned.gate_decorator(ctx, **kwargs)
        return out.model

    slow = run(hyper=MethodDefaults(lr=3e-3))
    assert same_weights(slow, run(weight_lr=3e-3)) and same_weights(slow, run(rival=True))
    assert not same_weights(slow, run())
    assert same_weights(run(), run(weight_lr=MethodDefaults().lr))


def test_the_harness_taylor_at_its_chosen_lr_is_taylor_with_that_pruning_time_lr(resnet20):
    """``taylor_wlr`` (the harness's Taylor at the pruning-time lr chosen on validation) is NNI's Taylor with
    ``MethodDefaults.lr`` set to ``compare.TAYLOR_LR``: the same network, and not the one at the default lr."""
    from benchmarks import compare

    def run(fn, lr=None):
        ctx = context(resnet20, 0.5, steps=STEPS, loader=batches(STEPS))
        if lr is not None:
            ctx = dataclasses.replace(ctx, hyper=MethodDefaults(lr=lr))
        torch.manual_seed(0)
        return fn(ctx).model

    chosen = run(compare.method_fn("taylor_wlr", None, compare.parse([]), None, 0, {}))
    assert compare.TAYLOR_LR == 3e-3 != MethodDefaults().lr
    assert same_weights(chosen, run(METHODS["taylor"], lr=compare.TAYLOR_LR))
    assert not same_weights(chosen, run(METHODS["taylor"]))


def test_with_hyper_changes_the_knobs_and_caps_the_steps(resnet20):
    """``with_hyper`` runs the real method with ``MethodDefaults`` fields overridden and at most ``max_steps``:
    the same network as that method given those knobs and steps directly; an unknown knob is refused by name."""
    def run(fn, steps, **hyper):
        ctx = context(resnet20, 0.5, steps=steps, loader=batches(STEPS), hyper=MethodDefaults(**hyper))
        torch.manual_seed(0)
        return fn(ctx)

    wrapped = run(with_hyper(METHODS["slim"], 2, lr=3e-3, slim_reg=1e-2), STEPS)
    direct = run(METHODS["slim"], 2, lr=3e-3, slim_reg=1e-2)
    assert wrapped.steps_used == direct.steps_used == 2 < STEPS
    assert same_weights(wrapped.model, direct.model)
    assert not same_weights(wrapped.model, run(METHODS["slim"], 2).model)  # the knobs reached the method
    with pytest.raises(ConfigError, match=r"slim_strength: not a knob of MethodDefaults; allowed: lr, momentum"):
        with_hyper(METHODS["slim"], slim_strength=1e-2)
