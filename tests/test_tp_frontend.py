"""torch-pruning front end: WGatesImportance and WGatesMetaPruner, the two-line swap for MetaPruner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from wgates_plugin import WGates, WGatesImportance, WGatesMetaPruner, count_macs
from wgates_plugin.errors import ConfigError, ConfigTypeError, StateError

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.block1, self.block2 = Block(16), Block(16)
        self.head = nn.Conv2d(16, 20, 1)
        self.fc = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.conv(x)))))
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def sparse_train(model: nn.Module, pruner: WGatesMetaPruner, steps: int = 3) -> None:
    """torch-pruning's sparse-training pattern: regularize() after backward, before the optimizer step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        pruner.regularize(model)
        opt.step()


def widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def eval_out(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def test_two_line_swap_gives_metapruners_architecture_and_exact_outputs():
    reference = net()
    imp = tp.importance.MagnitudeImportance(p=1)
    tp.pruner.MetaPruner(reference, X, importance=imp, pruning_ratio=0.5, ignored_layers=[reference.fc]).step()

    model = net()
    imp = WGatesImportance()
    pruner = WGatesMetaPruner(model, X, importance=imp, pruning_ratio=0.5, ignored_layers=[model.fc])
    sparse_train(model, pruner)
    pruner.wgates.freeze()
    gated = eval_out(model)
    pruner.step()
    assert widths(model) == widths(reference) == {"conv": 8, "block1.conv1": 8, "block1.conv2": 8,
                                                  "block2.conv1": 8, "block2.conv2": 8, "head": 10}
    torch.testing.assert_close(eval_out(model), gated, rtol=1e-4, atol=1e-5)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_importance_reports_learned_scores_and_skips_ungated_groups():
    model = net()
    wg = WGates(model, X)  # shortcut-coupled groups stay ungated by default
    with torch.no_grad():
        for gate in wg.gates:
            gate.fc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    scores = {g.name: gate.channel_scores().detach() for g, gate in zip(wg.groups, wg.gates)}
    imp = WGatesImportance(wg)
    graph = tp.DependencyGraph().build_dependency(model, X)
    group = graph.get_pruning_group(model.block1.conv1, tp.prune_conv_out_channels, [3, 0, 7])
    torch.testing.assert_close(imp(group), scores["block1.conv1"][[3, 0, 7]])
    assert imp(graph.get_pruning_group(model.conv, tp.prune_conv_out_channels, [0, 1])) is None

    pruner = tp.pruner.MetaPruner(model, X, importance=imp, pruning_ratio=0.5, ignored_layers=[model.fc])
    wg.remove()
    before = model.block1.conv1.weight.detach().clone()
    pruner.step()
    keep = torch.sort(torch.topk(scores["block1.conv1"], 8).indices).values
    torch.testing.assert_close(model.block1.conv1.weight, before[keep])  # the best-scored filters stay
    assert model.conv.out_channels == 16  # ungated (residual) group untouched


def test_importance_must_be_bound():
    with pytest.raises(StateError, match=r"not bound to a WGates"):
        WGatesImportance()([None])


def test_global_pruning_keeps_torch_pruning_channel_budget():
    model = net()
    pruner = WGatesMetaPruner(model, X, global_pruning=True, pruning_ratio=0.5, max_pruning_ratio=0.75,
                              ignored_layers=[model.fc])
    sparse_train(model, pruner)
    pruner.step()
    kept = pruner.wgates.kept()
    total = sum(c for _, c in kept.values())
    assert sum(k for k, _ in kept.values()) == int(total * 0.5)
    assert all(k >= c // 4 for k, c in kept.values())


def test_flops_target():
    model = net()
    pruner = WGatesMetaPruner(model, X, target=0.5, ignored_layers=[model.fc])
    sparse_train(model, pruner)
    pruner.step()
    gated_ratio = pruner.wgates.flops_ratio()
    assert 0.45 <= gated_ratio <= 0.5
    assert count_macs(model, X) / count_macs(net(), X) == pytest.approx(gated_ratio, rel=1e-6)
    tp_ratio = tp.utils.count_ops_and_params(model, X[:1])[0] / tp.utils.count_ops_and_params(net(), X[:1])[0]
    assert tp_ratio == pytest.approx(gated_ratio, abs=0.01)  # torch-pruning also counts BN and activations


def test_pruning_ratio_dict_overrides_a_layer():
    model = net()
    pruner = WGatesMetaPruner(model, X, pruning_ratio=0.5, pruning_ratio_dict={model.block1.conv1: 0.25},
                              ignored_layers=[model.fc])
    sparse_train(model, pruner, steps=1)
    pruner.step()
    assert model.block1.conv1.out_channels == 12 and model.block2.conv1.out_channels == 8


def test_pruning_history_replays_on_a_fresh_model():
    model = net()
    pruner = WGatesMetaPruner(model, X, pruning_ratio=0.5, ignored_layers=[model.fc])
    sparse_train(model, pruner, steps=1)
    pruner.step()
    fresh = net()
    graph = tp.DependencyGraph().build_dependency(fresh, X)
    graph.load_pruning_history(pruner.pruning_history())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(eval_out(fresh), eval_out(model))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"importance": tp.importance.MagnitudeImportance(p=1)}, ConfigTypeError,
     r"importance=MagnitudeImportance: W-Gates ranks channels by learned gate scores"),
    ({"pruning_ratio": 0.5, "target": 0.5}, ConfigError, r"pass pruning_ratio or target, not both"),
    ({"global_pruning": True, "target": 0.5}, ConfigError, r"target is already a global budget"),
    ({"pruning_ratio": 1.0}, ConfigError, r"pruning_ratio=1.0 must be in \[0, 1\)"),
    ({"iterative_steps": 5}, ConfigError, r"iterative_steps=5: W-Gates prunes once"),
    ({"round_to": 8}, ConfigTypeError, r"unsupported argument\(s\) \['round_to'\]"),
    ({"ignored_layers": ["fc"]}, ConfigError, r"ignored_layers takes modules of the model or module classes"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        WGatesMetaPruner(net(), X, **kwargs)


def test_step_needs_sparse_training_and_happens_once():
    model = net()
    pruner = WGatesMetaPruner(model, X, ignored_layers=[model.fc])
    with pytest.raises(StateError, match=r"never trained.*regularize\(model\) after every loss.backward\(\)"):
        pruner.step()
    with pytest.raises(ConfigError, match=r"different model"):
        pruner.regularize(net())
    sparse_train(model, pruner, steps=1)
    pruner.step()
    with pytest.raises(StateError, match=r"already pruned"):
        pruner.regularize(model)
    with pytest.raises(StateError, match=r"already called"):
        pruner.step()


def test_ignored_layer_classes_and_shortcuts():
    model = net()
    pruner = WGatesMetaPruner(model, X, ignored_layers=[nn.Linear], prune_shortcuts=False)
    assert sorted(g.name for g in pruner.wgates.groups) == ["block1.conv1", "block2.conv1", "head"]
