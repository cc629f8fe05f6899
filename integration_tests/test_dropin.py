"""Drop-in use on real torchvision models.

1. An NNI script written for ``L1NormPruner`` / ``FPGMPruner`` runs with ``WGatesPruner`` swapped in
   (plus an evaluator): exactly 75 % of every selected layer's filters masked, NNI-format masks, and a
   working physically pruned model.
2. ``speedup`` of masks from L1, FPGM and W-Gates on resnet18 and mobilenet_v2 equals the model with
   the removed channels zeroed where removal is exact. The reference here is independent of the
   package: forward hooks zero each masked conv's removed channels at the output of the BatchNorm
   that follows it (found by tracing which BN reads the conv's output).
3. NNI's own ``ModelSpeedup`` (given a ``torch.fx`` graph, the only way it runs here) builds the same
   pruned resnet18.
"""

from __future__ import annotations

import copy
import warnings

import nni
import pytest
import torch
import torch.nn.functional as F
import torchvision
from nni.compression import TorchEvaluator
from nni.compression.pruning import FPGMPruner, L1NormPruner
from torch import nn

from wgates_plugin import WGatesPruner, count_macs, speedup
from wgates_plugin.groups import trace_groups

pytestmark = pytest.mark.slow

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
BATCHES = [(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(20 + i))) for i in range(2)]
RATIO = 0.75


def small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 40, 3, padding=1), nn.BatchNorm2d(40), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = small_cnn() if name == "small_cnn" else getattr(torchvision.models, name)(num_classes=10)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # BN statistics and shifts that make every channel matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


def evaluator(model: nn.Module) -> TorchEvaluator:
    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for step in range(max_steps or 2):
            optimizers.zero_grad()
            training_step(BATCHES[step % len(BATCHES)], model).backward()
            optimizers.step()

    return TorchEvaluator(training_func, nni.trace(torch.optim.SGD)(model.parameters(), lr=1e-3), training_step,
                          dummy_input=X)


def eval_out(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def removed_rows(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask.reshape(mask.shape[0], -1).sum(1) == 0).flatten()


def bn_after(model: nn.Module) -> dict[str, str]:
    """``{conv name: name of the BatchNorm that reads its output}``, by tracing one forward."""
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[int, str] = {}
    found: dict[str, str] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: outputs.__setitem__(id(out), names[mod]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(lambda mod, inp: found.__setitem__(outputs[id(inp[0])], names[mod])
                                          if id(inp[0]) in outputs else None)
              for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    eval_out(model)
    for h in hooks:
        h.remove()
    return found


def zeroed_reference(model: nn.Module, removed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eval outputs with each conv's ``removed`` channels zeroed at the output of its BatchNorm."""
    after, modules = bn_after(model), dict(model.named_modules())
    hooks = [modules[after[conv]].register_forward_hook(lambda _m, _i, out, idx=idx: out.index_fill(1, idx, 0.0))
             for conv, idx in removed.items() if len(idx)]
    try:
        return eval_out(model)
    finally:
        for h in hooks:
            h.remove()


def coupled_config(model: nn.Module, ratio: float) -> list[dict]:
    """One NNI entry per prunable channel group, with a dependency_group_id so NNI masks its convs alike."""
    groups = [g for g in trace_groups(model, X).groups if not g.reason]
    return [{"op_names": [m.name for m in g.producers], "sparse_ratio": ratio, "dependency_group_id": i}
            for i, g in enumerate(groups)]


def nni_masks(kind: str, model: nn.Module, config: list[dict], steps: int = 2) -> tuple[dict, torch.Tensor]:
    """Masks of one pruner and the wrapped model's eval outputs right after compress()."""
    if kind == "wgates":
        pruner = WGatesPruner(model, config, evaluator=evaluator(model), training_steps=steps)
    else:
        pruner = {"l1": L1NormPruner, "fpgm": FPGMPruner}[kind](model, config)
    wrapped, masks = pruner.compress()
    out = eval_out(wrapped)
    pruner.unwrap_model()
    return masks, out


# ---------------------------------------------------------------------------- 1. the drop-in script
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("kind", ["l1", "fpgm", "wgates"])
def test_nni_script_runs_with_wgates_swapped_in(model_name, kind):
    model = build(model_name)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    widths = {n: m.out_channels for n, m in convs.items()}
    masks, wrapped_out = nni_masks(kind, model, [{"op_types": ["Conv2d"], "sparse_ratio": RATIO}])
    assert sorted(masks) == sorted(convs)  # NNI format: every selected layer, weight and bias masks
    for name, conv in convs.items():
        assert masks[name]["weight"].shape == conv.weight.shape
        assert (masks[name]["bias"] is None) == (conv.bias is None)
        assert len(removed_rows(masks[name]["weight"])) == int(widths[name] * RATIO)  # exactly 75 % of the filters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # L1/FPGM mask residual-coupled convs apart; speedup says so
        small = speedup(model, masks, X)
    assert eval_out(small).shape == (2, 10)
    assert count_macs(small, X) < 0.35 * count_macs(build(model_name), X)
    if kind == "wgates":  # coupled convs share one gate: every conv keeps exactly 25 %, outputs as gated
        pruned = dict(small.named_modules())
        assert {n: pruned[n].out_channels for n in convs} == {n: c - int(c * RATIO) for n, c in widths.items()}
        torch.testing.assert_close(eval_out(small), wrapped_out, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- 2. speedup vs reference
@pytest.mark.parametrize("model_name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("kind", ["l1", "fpgm", "wgates"])
def test_speedup_equals_channels_zeroed_where_removal_is_exact(model_name, kind):
    model = build(model_name)
    config = coupled_config(model, 0.5) if kind != "wgates" else [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    masks, wrapped_out = nni_masks(kind, model, config, steps=1)
    removed = {n: removed_rows(m["weight"]) for n, m in masks.items()}
    expected = zeroed_reference(model, removed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # coupled convs masked alike: nothing to warn about
        small = speedup(model, masks, X)
    modules = dict(small.named_modules())
    assert all(modules[n].out_channels == m["weight"].shape[0] - len(removed[n]) for n, m in masks.items())
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)
    if kind == "wgates":
        torch.testing.assert_close(eval_out(small), wrapped_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", ["resnet18", "mobilenet_v2"])
def test_speedup_of_independently_masked_coupled_convs(model_name):
    model = build(model_name)
    masks, _ = nni_masks("l1", model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    groups = [g for g in trace_groups(model, X).groups if len(g.producers) > 1]
    removed = {n: set(removed_rows(m["weight"]).tolist()) for n, m in masks.items()}
    for g in groups:  # what every coupled conv removed: the rest stays
        common = set.intersection(*(removed[p.name] for p in g.producers))
        removed.update({p.name: common for p in g.producers})
    expected = zeroed_reference(model, {n: torch.tensor(sorted(r), dtype=torch.long) for n, r in removed.items()})
    with pytest.warns(UserWarning, match=r"masks disagree"):
        small = speedup(model, masks, X)
    torch.testing.assert_close(eval_out(small), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- 3. NNI's ModelSpeedup
def test_same_resnet18_as_nni_model_speedup():
    """Same layers and weights as NNI's own speedup. NNI also runs the dummy input through its rebuilt
    BatchNorms in training mode, moving their running statistics; set back, the outputs agree."""
    from nni.compression.speedup import ModelSpeedup

    model = build("resnet18")
    masks, _ = nni_masks("l1", model, coupled_config(model, 0.5))
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    ModelSpeedup(theirs, X, masks, graph_module=torch.fx.symbolic_trace(theirs)).speedup_model()
    speedup(ours, masks, X)
    theirs_params, ours_params = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert theirs_params.keys() == ours_params.keys()
    for name, p in ours_params.items():
        assert torch.equal(theirs_params[name], p), name
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(eval_out(theirs), eval_out(ours), rtol=1e-5, atol=1e-6)
