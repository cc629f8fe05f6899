"""WGatesPruner end to end through NNI's evaluators: masks, budgets, and the speedup contract."""

from __future__ import annotations

import copy

import nni
import pytest
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from nni.compression.pruning import L1NormPruner
from torch import nn

from tests.helpers import lightning_setup, randomize_bn
from wgates_plugin import BudgetMode, WGatesPruner, count_macs, speedup
from wgates_plugin.errors import ConfigError, StateError

torch.manual_seed(0)
X = torch.randn(4, 3, 16, 16)
BATCHES = [(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(100 + i))) for i in range(4)]


def cnn(widths=(10, 16, 24)) -> nn.Sequential:
    layers, c_in = [], 3
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c_in = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) \
            if stride > 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1))
        self.layer2 = Block(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


class MobileLike(nn.Module):
    """A pointwise conv and its depthwise partner share one channel group (as in mobilenet_v2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.project(self.dw(self.expand(self.stem(x)))).mean((2, 3)))




def training_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_training_func(stop_after: int | None = None):
    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        total = min(max_steps or 10, stop_after or 10**9)
        for step in range(total):
            optimizers.zero_grad()
            training_step(BATCHES[step % len(BATCHES)], model).backward()
            optimizers.step()
    return training_func


def evaluator(model: nn.Module, stop_after: int | None = None, dummy: object = X) -> TorchEvaluator:
    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01, momentum=0.9)
    return TorchEvaluator(make_training_func(stop_after), opt, training_step, dummy_input=dummy)


def rows_kept(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).sum(1) > 0  # (C_out,)


def eval_out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------- tests
def test_sparse_ratio_keeps_nni_counts_per_layer_with_nni_masks():
    model = cnn()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.75}]
    pruner = WGatesPruner(model, config, evaluator=evaluator(model), training_steps=3)
    _, masks = pruner.compress()
    reference = L1NormPruner(cnn(), config).compress()[1]
    assert sorted(masks) == sorted(reference) == ["0", "3", "6"]
    for name, entry in masks.items():
        kept = rows_kept(entry["weight"])
        assert int(kept.sum()) == int(rows_kept(reference[name]["weight"]).sum())  # NNI's count: C - int(C * 0.75)
        assert entry["weight"].shape == reference[name]["weight"].shape
        torch.testing.assert_close(entry["bias"], kept.float())  # bias masks match their filters
        assert set(entry["weight"].unique().tolist()) == {0.0, 1.0}


def test_gates_and_weights_train_through_the_evaluator():
    model = cnn()
    before = copy.deepcopy(model.state_dict())
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model),
                          training_steps=4)
    pruner.compress()
    assert pruner._step == 4
    assert all(g.is_frozen for g in pruner.wgates.gates)
    assert any(float(g.fc.detach().abs().sum()) > 0 for g in pruner.wgates.gates)  # gate FC vectors moved
    pruner.unwrap_model()
    assert not torch.equal(model[0].weight, before["0.weight"])  # the user's optimizer trained the weights


@pytest.mark.parametrize("build", [ResNetLike, MobileLike])
def test_contract_wrapped_eval_forward_equals_speedup(build):
    model = randomize_bn(build())
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model),
                          training_steps=3)
    wrapped, masks = pruner.compress()
    expected = eval_out(wrapped)
    pruner.unwrap_model()
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())  # the gate hooks are gone too
    small = speedup(model, masks, X)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)
    assert count_macs(small, X) < count_macs(build(), X)


def test_residual_coupled_layers_get_identical_masks():
    model = ResNetLike()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model),
                          training_steps=2)
    _, masks = pruner.compress()
    coupled = ["stem.0", "layer1.0.conv2", "layer1.1.conv2"]  # summed into one residual stream
    first = rows_kept(masks[coupled[0]]["weight"])
    assert int(first.sum()) == 8
    for name in coupled[1:]:
        assert torch.equal(rows_kept(masks[name]["weight"]), first)
    assert torch.equal(rows_kept(masks["layer2.conv2"]["weight"]), rows_kept(masks["layer2.down.0"]["weight"]))


def test_depthwise_partner_gets_the_same_mask():
    model = MobileLike()
    pruner = WGatesPruner(model, [{"op_names": ["expand.0"], "sparse_ratio": 0.25}], evaluator=evaluator(model),
                          training_steps=2)
    _, masks = pruner.compress()
    assert sorted(masks) == ["dw.0", "expand.0"]  # the depthwise conv follows its pointwise partner
    assert torch.equal(rows_kept(masks["dw.0"]["weight"]), rows_kept(masks["expand.0"]["weight"]))
    assert int(rows_kept(masks["dw.0"]["weight"]).sum()) == 32 - int(32 * 0.25)


def test_selecting_batchnorms_prunes_their_groups_network_slimming_style():
    model = randomize_bn(cnn())
    pruner = WGatesPruner(model, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model),
                          training_steps=2)
    wrapped, masks = pruner.compress()
    expected = eval_out(wrapped)
    assert sorted(masks) == ["0", "1", "3", "4", "6", "7"]  # the BNs and the convs that follow their gates
    for conv, bn in (("0", "1"), ("3", "4"), ("6", "7")):
        assert torch.equal(rows_kept(masks[conv]["weight"]), masks[bn]["weight"] > 0)
    pruner.unwrap_model()
    torch.testing.assert_close(eval_out(speedup(model, masks, X)), expected, rtol=1e-4, atol=1e-5)


def test_global_group_meets_nni_element_budget_exactly():
    model = cnn()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.8, "global_group_id": 0}]
    pruner = WGatesPruner(model, config, evaluator=evaluator(model), training_steps=3)
    _, masks = pruner.compress()
    total = sum(masks[n]["weight"].numel() for n in masks)
    masked = sum(int((masks[n]["weight"] == 0).sum()) for n in masks)
    assert masked >= int(total * 0.5)  # NNI's global budget, counted in weight elements
    for name, entry in masks.items():
        per_channel = entry["weight"][0].numel()
        kept = int(rows_kept(entry["weight"]).sum())
        assert kept >= entry["weight"].shape[0] - int(entry["weight"].shape[0] * 0.8)  # max_sparse_ratio bound
        if kept < entry["weight"].shape[0]:  # maximal: one more channel anywhere breaks the budget
            assert masked - per_channel < int(total * 0.5), name
    assert pruner.stats()["global_groups"]["global_group_id=0"] <= 0.5


def test_flops_target_is_landed_and_matches_the_pruned_model():
    model = randomize_bn(ResNetLike())
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), training_steps=3,
                          target=0.6)
    assert pruner.wgates.config.mode is BudgetMode.TARGET
    wrapped, masks = pruner.compress()
    expected = eval_out(wrapped)
    ratio = pruner.wgates.flops_ratio()
    assert 0.55 <= ratio <= 0.6
    pruner.unwrap_model()
    full = count_macs(model, X)
    small = speedup(model, masks, X)
    assert count_macs(small, X) / full == pytest.approx(ratio, rel=1e-6)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


def test_training_function_that_stops_early_freezes_with_a_warning():
    model = cnn()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                          evaluator=evaluator(model, stop_after=2), training_steps=5)
    with pytest.warns(UserWarning, match=r"ran 2 optimizer steps, fewer than training_steps=5"):
        _, masks = pruner.compress()
    assert int(rows_kept(masks["3"]["weight"]).sum()) == 8


def test_no_evaluator_explains_what_to_pass():
    model = cnn()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])  # as L1NormPruner is called
    assert all(bool((e["weight"] == 1).all()) for e in pruner.get_masks().values())
    with pytest.raises(ConfigError, match=r"(?s)learns which filters to drop from data.*TorchEvaluator.*steps="):
        pruner.compress()


def test_evaluator_without_dummy_input_is_refused():
    model = cnn()
    with pytest.raises(ConfigError, match=r"pass dummy_input=<a batch the model accepts>"):
        WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model, dummy=None),
                     training_steps=2)


def test_compress_needs_training_steps_and_runs_once():
    model = cnn()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model))
    with pytest.raises(ConfigError, match=r"compress\(\) needs training_steps"):
        pruner.compress()
    pruner.training_steps = 1
    with pytest.raises(ConfigError, match=r"do not pass max_steps"):
        pruner.compress(max_steps=3)
    pruner.compress()
    with pytest.raises(StateError, match=r"already called"):
        pruner.compress()


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_lightning_evaluator(distill):
    pl = pytest.importorskip("pytorch_lightning")
    if int(pl.__version__.split(".")[0]) >= 2:
        pytest.skip("NNI 3.0's LightningEvaluator needs pytorch-lightning < 2 (it sets fit_loop.max_steps)")
    model, lightning = lightning_setup(randomize_bn(cnn()), BATCHES, X, training_step, max_epochs=1)
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                          evaluator=lightning, training_steps=3, distill=distill)
    wrapped, masks = pruner.compress()
    assert pruner._step == 3 and all(g.is_frozen for g in pruner.wgates.gates)
    expected = eval_out(wrapped)
    pruner.unwrap_model()
    torch.testing.assert_close(eval_out(speedup(model, masks, X)), expected, rtol=1e-4, atol=1e-5)


def test_custom_efficiency_model_and_cost_target():
    from wgates_plugin.integrations.budgets import LinearCostModel

    def channels(groups):  # cost = kept channels of the gated groups
        return LinearCostModel([g.name for g in groups], [g.size for g in groups], [1.0] * len(groups), "channels")

    model = cnn()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator(model), training_steps=2,
                          efficiency=channels, target=0.5)
    _, masks = pruner.compress()
    kept = sum(int(rows_kept(m["weight"]).sum()) for m in masks.values())
    assert kept == int(0.5 * (10 + 16 + 24))  # the largest count within the budget
    assert pruner.core.cost_ratio() == pytest.approx(kept / 50)


def test_gates_need_a_traced_model():
    pruner = WGatesPruner(cnn(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    with pytest.raises(StateError, match=r"could not trace the model; pass dummy_input="):
        pruner.stats()


def _relabelled_evaluator(model: nn.Module, shift: int) -> TorchEvaluator:
    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for step in range(max_steps or 10):
            x, y = BATCHES[step % len(BATCHES)]
            optimizers.zero_grad()
            training_step((x, (y + shift) % 10), model).backward()
            optimizers.step()
    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.05, momentum=0.9)
    return TorchEvaluator(training_func, opt, training_step, dummy_input=X)


@pytest.mark.parametrize("seed", [0, 1])
def test_distill_one_learns_from_the_unpruned_model_alone(seed):
    """With ``distill=1`` the pruner's steps match the unpruned model's outputs only (a copy taken before
    wrapping), so relabelling every batch changes neither the masks nor the weights; without it, it does."""
    def run(shift: int, distill: float) -> tuple[dict, dict]:
        torch.manual_seed(seed)
        model = randomize_bn(cnn())
        pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                              evaluator=_relabelled_evaluator(model, shift), training_steps=4, distill=distill)
        _, masks = pruner.compress()
        assert pruner._kd is None and pruner._kd_handle is None  # the teacher and its hook are gone
        pruner.unwrap_model()
        return masks, model.state_dict()

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor)
                                            else same(a[k], b[k]) for k in a)

    (masks, weights), (masks_r, weights_r) = run(0, 1.0), run(3, 1.0)
    assert same(masks, masks_r) and same(weights, weights_r)
    (_, plain), (_, plain_r) = run(0, 0.0), run(3, 0.0)
    assert not same(plain, plain_r)
    assert not same(weights, plain)  # distillation changed the training


def test_distill_mixes_the_users_loss_with_the_softened_match_to_the_unpruned_model():
    """One step's loss, recomputed by hand from the teacher copy and the student's logits."""
    torch.manual_seed(0)
    model = randomize_bn(cnn())
    teacher = copy.deepcopy(model).eval()
    seen = []

    def recording_step(batch, model):
        x, y = batch
        out = model(x)
        seen.append((out.detach(), F.cross_entropy(out, y).detach(), x))
        return F.cross_entropy(out, y)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        optimizers.zero_grad()
        seen.append(training_step(BATCHES[0], model).detach())
        optimizers.step()

    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=1,
                          evaluator=TorchEvaluator(training_func, opt, recording_step, dummy_input=X),
                          distill=0.25, temperature=2.0)
    efficiency = float(pruner.efficiency_loss())
    pruner.compress()
    (out, ce, x), patched = seen
    with torch.no_grad():
        target = teacher(x)
    kl = F.kl_div(F.log_softmax(out / 2, 1), F.log_softmax(target / 2, 1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(float(patched), float(0.75 * ce + 0.25 * 4 * kl) + efficiency, rtol=1e-5, atol=1e-6)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()

    def forward(self, x):
        return {"logits": self.net(x)}


class TrainTupleOut(nn.Module):
    """Logits in eval mode, ``(logits, auxiliary)`` in training mode (as torchvision's GoogLeNet / Inception)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()

    def forward(self, x):
        out = self.net(x)
        return (out, out.detach()) if self.training else out


def _dict_step(batch, model):
    return F.cross_entropy(model(batch[0])["logits"], batch[1])


def _tuple_step(batch, model):
    return F.cross_entropy(model(batch[0])[0], batch[1])


def _submodule_step(batch, model):
    return F.cross_entropy(model[-1](model[:-1](batch[0])), batch[1])


@pytest.mark.parametrize(("build", "step", "why"), [
    (DictOut, _dict_step, r"the model's training forward returned dict, not single-label \(batch, classes\) logits"),
    (TrainTupleOut, _tuple_step, r"the model's training forward returned tuple, not single-label \(batch, classes\) "
                                 r"logits"),
    (cnn, _submodule_step, r"the training step computed its loss without a training-mode forward of the model "
                           r"itself \(a submodule called directly\?\)"),
])
def test_distill_refuses_steps_it_cannot_distil_and_auto_trains_on_without_it(build, step, why):
    """An explicit share raises with the reason and leaves no hook or teacher behind; ``"auto"`` warns once with the
    same reason and trains on the user's loss alone."""
    def pruner_for(model, distill):
        opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
        return WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=2,
                            distill=distill, evaluator=TorchEvaluator(make_training_func(), opt, step, dummy_input=X))

    model = build()
    pruner = pruner_for(model, 0.5)
    hooks = dict(model._forward_hooks)  # the gates' own, while the model is wrapped
    with pytest.raises(ConfigError, match=r"distill=0\.5 distils the model's class logits, and " + why +
                       r": make the training step call the model and return its logits, or pass distill=0"):
        pruner.compress()
    assert model._forward_hooks == hooks and pruner._kd is None and pruner._seen is None  # the recorder is gone
    model = build()
    pruner = pruner_for(model, "auto")
    hooks = dict(model._forward_hooks)
    if build is DictOut:  # its eval output is no logits either: auto decides against distillation up front
        assert pruner.distill == 0.0 and pruner._kd is None
        pruner.compress()
        return
    assert pruner.distill == 0.5
    with pytest.warns(UserWarning, match=r"distill='auto' turned distillation off: " + why) as caught:
        pruner.compress()
    assert sum("turned distillation off" in str(w.message) for w in caught) == 1
    assert pruner._step == 2 and pruner.distill == 0.0 and pruner._kd is None and model._forward_hooks == hooks


def test_distill_leaves_validation_inside_the_training_function_alone():
    """A loss computed in eval mode under ``no_grad`` (a validation pass through the patched training step) is
    neither distilled nor refused, and the training steps around it still distil."""
    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        for step in range(max_steps):
            model.train()
            optimizers.zero_grad()
            training_step(BATCHES[step % len(BATCHES)], model).backward()
            optimizers.step()
            model.eval()
            with torch.no_grad():
                training_step(BATCHES[0], model)

    model = cnn()
    opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    calls = []
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=2, distill=0.5,
                          evaluator=TorchEvaluator(training_func, opt, training_step, dummy_input=X))
    original = pruner._distilled
    pruner._distilled = lambda loss: calls.append(1) or original(loss)
    pruner.compress()
    assert pruner._step == 2 and len(calls) == 2  # the two training steps, not the two validation passes


def test_no_teacher_without_an_evaluator_and_none_for_one_column_heads():
    model = cnn()
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=X, distill=0.5)
    assert pruner._kd is None  # no evaluator: compress() cannot run, no copy is kept
    head = nn.Sequential(*list(cnn())[:-1], nn.Linear(24, 1))  # one output column: a binary or regression head
    opt = nni.trace(torch.optim.SGD)(head.parameters(), lr=0.01)
    pruner = WGatesPruner(head, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=1, distill="auto",
                          evaluator=TorchEvaluator(make_training_func(), opt, training_step, dummy_input=X))
    assert pruner.distill == 0.0 and pruner._kd is None


@pytest.mark.parametrize(("options", "match"), [
    ({"distill": 1.5}, r"distill=1\.5 must be in \[0, 1\]"),
    ({"distill": 0.5, "temperature": 0}, r"temperature=0 must be a number > 0"),
])
def test_bad_distillation_options_are_refused(options, match):
    model = cnn()
    with pytest.raises(ConfigError, match=match):
        WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], evaluator=evaluator(model),
                     training_steps=2, **options)


def test_distill_is_off_by_default_and_keeps_no_teacher():
    """The default (chosen on validation): the user's loss unchanged, no copy of the model kept, the gate-training
    steps identical to an explicit ``distill=0``."""
    def run(**options):
        torch.manual_seed(0)
        model = cnn()
        opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
        pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=3,
                              evaluator=TorchEvaluator(make_training_func(), opt, training_step, dummy_input=X),
                              **options)
        assert pruner.distill == 0.0 and pruner._kd is None
        pruner.compress()
        return {k: v.clone() for k, v in model.state_dict().items()}

    default, off = run(), run(distill=0)
    assert default.keys() == off.keys() and all(torch.equal(default[k], off[k]) for k in default)


def test_distill_auto_distils_class_logits_and_leaves_other_outputs_alone():
    """``"auto"``: the share chosen when distillation was screened where the model returns ``(batch, classes)``
    logits on the dummy input, no distillation (and no teacher copy) where it returns anything else; either way
    compress() runs."""
    from wgates_plugin.distill import DISTILL
    for build, share in [(cnn, DISTILL), (DictOut, 0.0)]:
        model = build()
        step = training_step if build is cnn else (lambda b, m: F.cross_entropy(m(b[0])["logits"], b[1]))
        opt = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
        pruner = WGatesPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], training_steps=2,
                              distill="auto",
                              evaluator=TorchEvaluator(make_training_func(), opt, step, dummy_input=X))
        assert pruner.distill == share and (pruner._kd is not None) == bool(share)
        pruner.compress()
        assert pruner._step == 2
