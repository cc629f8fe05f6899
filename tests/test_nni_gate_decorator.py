"""GateDecoratorPruner through NNI's evaluators: the schedule, the budget, masks and the speedup contract."""

from __future__ import annotations

import copy

import nni
import pytest
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from torch import nn

from tests.helpers import calibrated_model, lightning_setup, randomize_bn
from wgates_plugin import count_macs, speedup
from wgates_plugin.errors import BudgetError, ConfigError, ConfigTypeError, StateError
from wgates_plugin.gate_decorator import GateDecoratorPruner, TickTock

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
BATCHES = [(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(100 + i))) for i in range(4)]
SHORT = TickTock(tick_steps=2, tock_steps=2, prune_per_tick=0.3)


def cnn(widths=(16, 32, 32)) -> nn.Sequential:
    layers, c_in = [], 3
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c_in = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def training_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_training_func(data, stop_after: int | None = None, counter: list | None = None):
    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for step in range(min(max_steps, stop_after or max_steps)):
            optimizers.zero_grad()
            training_step(data[step % len(data)], model).backward()
            optimizers.step()
            if counter is not None:
                counter.append(step)
    return training_func


def evaluator(model: nn.Module, data=BATCHES, stop_after: int | None = None, counter: list | None = None,
              dummy: object = X) -> TorchEvaluator:
    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01, momentum=0.9)
    return TorchEvaluator(make_training_func(data, stop_after, counter), opt, training_step, dummy_input=dummy)


def rows_kept(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).sum(1) > 0  # (C_out,)


def eval_out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------- tests
def test_compress_lands_the_flops_target_and_speedup_reproduces_the_wrapped_model():
    torch.manual_seed(0)
    model = randomize_bn(cnn())
    full = count_macs(copy.deepcopy(model), X)
    steps: list = []
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model, counter=steps),
                                 training_steps=20, target=0.5, schedule=SHORT)
    wrapped, masks = pruner.compress()
    assert len(steps) == pruner.stats()["planned_steps"] == 2 * 2 + 2  # 2 rounds (0.707, 0.5), one Tock between
    assert pruner.stats()["phase"] == "done"
    ratio = pruner.core.flops_ratio()
    assert 0.5 * 0.98 <= ratio <= 0.5
    expected = eval_out(wrapped)
    pruner.unwrap_model()
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    small = speedup(model, masks, X)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)
    assert count_macs(small, X) / full == pytest.approx(ratio, rel=1e-6)


def test_resnet18_shortcut_groups_share_masks_and_speedup_matches():
    model = calibrated_model("resnet18", 32)
    x = torch.randn(2, 3, 32, 32)
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    # only the residual streams' convs may be pruned, so the budget cannot be met without pruning them
    # (which of them a global ranking of random-weight importances picks is not the point)
    stream = ["conv1"] + [f"layer{i}.{b}.conv2" for i in range(1, 5) for b in (0, 1)] + \
        [f"layer{i}.0.downsample.0" for i in range(2, 5)]
    pruner = GateDecoratorPruner(model, [{"op_names": stream}], evaluator=evaluator(model, data, dummy=x),
                                 training_steps=3, target=0.6, schedule=TickTock(tick_steps=1, tock_steps=1))
    wrapped, masks = pruner.compress()
    assert 0.6 * 0.99 <= pruner.core.flops_ratio() <= 0.6
    shortcut = [g for g in pruner.core.groups if g.shortcut]
    assert len(shortcut) == 4 == len(pruner.core.groups)
    assert any(pruner.core.kept()[g.name][0] < g.size for g in shortcut)
    for g in shortcut:  # the convs summed into one residual stream keep the same channels
        kept = [rows_kept(masks[p.name]["weight"]) for p in g.producers]
        assert len(kept) >= 2 and all(torch.equal(k, kept[0]) for k in kept)
        assert int(kept[0].sum()) == pruner.core.kept()[g.name][0]
    expected = eval_out(wrapped, x)
    pruner.unwrap_model()
    small = speedup(model, masks, x)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(eval_out(small, x), expected, rtol=1e-4, atol=1e-5 * scale)


def test_ticks_leave_the_weights_to_phi_and_tocks_train_them():
    torch.manual_seed(0)
    model = randomize_bn(cnn())
    before = copy.deepcopy(model)
    only_ticks = TickTock(tick_steps=2, tock_steps=0, prune_per_tick=0.3)
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), training_steps=10,
                                 target=0.5, schedule=only_ticks)
    pruner.compress()
    assert any(not torch.equal(p, torch.ones_like(p)) for p in pruner.core.phi)  # phi trained
    pruner.unwrap_model()
    for name in ("0", "3", "6", "11"):  # convs and the head: the user's optimizer never moved them
        assert torch.equal(model.get_submodule(name).weight, before.get_submodule(name).weight), name
    model = randomize_bn(cnn())
    start = copy.deepcopy(model)
    GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), training_steps=10,
                        target=0.5, schedule=SHORT).compress()
    assert not torch.equal(model[0]._nni_wrapper.weight, start[0].weight)  # Tock steps trained them


def test_l1_term_is_added_to_the_loss_in_tocks_only():
    model = randomize_bn(cnn())
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), training_steps=10,
                                 target=0.5, schedule=TickTock(tick_steps=1, tock_steps=1, l1=0.5))
    pruner._steps.timeline = [("tick", 0.8), ("tock", None)]
    loss = torch.tensor(2.0)
    assert float(pruner._steps.loss(loss)) == 2.0
    pruner._steps.step = 1
    assert float(pruner._steps.loss(loss).detach()) == pytest.approx(2.0 + 0.5 * (16 + 32 + 32))  # phi = 1


def test_max_sparse_ratio_bounds_every_layer():
    model = cnn()
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.5}],
                                 evaluator=evaluator(model), training_steps=6, target=0.4,
                                 schedule=TickTock(tick_steps=2, tock_steps=1))
    _, masks = pruner.compress()
    for name, entry in masks.items():
        assert int(rows_kept(entry["weight"]).sum()) >= entry["weight"].shape[0] // 2, name
    assert pruner.core.flops_ratio() <= 0.4
    with pytest.raises(BudgetError, match=r"target=0.1 is unreachable"):
        GateDecoratorPruner(cnn(), [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.5}], target=0.1,
                            dummy_input=X)


def test_training_function_that_stops_early_still_lands_the_budget_with_a_warning():
    model = cnn()
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model, stop_after=3),
                                 training_steps=20, target=0.5, schedule=SHORT)
    with pytest.warns(UserWarning, match=r"ran 3 optimizer steps, fewer than the 6 the schedule planned"):
        pruner.compress()
    assert pruner.core.flops_ratio() <= 0.5


def test_lightning_evaluator():
    pl = pytest.importorskip("pytorch_lightning")
    if int(pl.__version__.split(".")[0]) >= 2:
        pytest.skip("NNI 3.0's LightningEvaluator needs pytorch-lightning < 2 (it sets fit_loop.max_steps)")
    model, lightning = lightning_setup(randomize_bn(cnn()), BATCHES, X, training_step, max_epochs=3)
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], training_steps=6, target=0.5,
                                 evaluator=lightning,
                                 schedule=TickTock(tick_steps=2, tock_steps=2))
    wrapped, masks = pruner.compress()
    assert pruner.stats()["phase"] == "done" and pruner.core.flops_ratio() <= 0.5
    expected = eval_out(wrapped)
    pruner.unwrap_model()
    torch.testing.assert_close(eval_out(speedup(model, masks, X)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "kwargs", "error", "message"),
    [
        ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], {}, ConfigError,
         r"config_list\[0\] sets sparse_ratio=0.5: GateDecoratorPruner ranks channels globally"),
        ([{"op_types": ["Conv2d"], "sparsity": 0.5}], {}, ConfigError, r"sets sparse_ratio=0.5"),
        ([{"op_types": ["Conv2d"], "min_sparse_ratio": 0.2}], {}, ConfigError, "sets min_sparse_ratio=0.2"),
        ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0}], {}, ConfigError, "sets sparse_ratio"),
        ([{"op_types": ["conv2d"]}], {}, ConfigError, "did you mean 'Conv2d'"),
        ([{"op_types": ["Conv2d"]}], {"target": None}, ConfigError,
         "ranks channels globally under one budget: pass target="),
        ([{"op_types": ["Conv2d"]}], {"target": 1.5}, ConfigError,
         r"target=1.5 must be a fraction in \(0, 1\]"),
        ([{"op_types": ["Conv2d"]}], {"training_steps": 0}, ConfigError, "training_steps=0 must be an int >= 1"),
        ([{"op_types": ["Conv2d"]}], {"schedule": {"tick_steps": 2}}, ConfigTypeError, "schedule must be a TickTock"),
        ([{"op_types": ["Conv2d"]}], {"schedule": TickTock(weight_decay=0.0, subset_batches=2)}, ConfigError,
         "schedule sets weight_decay, subset_batches, which GateDecoratorPruner cannot honour"),
        ([{"op_types": ["Conv2d"]}], {"dummy_input": None}, ConfigError,
         r"pass dummy_input=<a batch the model accepts>"),
    ],
)
def test_invalid_arguments_are_refused_with_a_reason(config, kwargs, error, message):
    arguments = {"target": 0.5, "dummy_input": X, **kwargs}
    with pytest.raises(error, match=message):
        GateDecoratorPruner(cnn(), config, **arguments)


def test_compress_needs_an_evaluator_and_training_steps_and_runs_once():
    model = cnn()
    with pytest.raises(ConfigError, match=r"(?s)compress\(\) trains through an NNI evaluator.*TorchEvaluator"):
        GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], target=0.5, dummy_input=X).compress()
    model = cnn()
    pruner = GateDecoratorPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), target=0.5)
    with pytest.raises(ConfigError, match=r"compress\(\) needs training_steps="):
        pruner.compress()
    pruner.training_steps = 4
    with pytest.raises(ConfigError, match="do not pass max_steps"):
        pruner.compress(max_steps=3)
    pruner.compress()
    with pytest.raises(StateError, match="already called"):
        pruner.compress()
