"""Saving pruned models as safetensors + JSON and rebuilding them exactly, without executing code."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from wgates_plugin import WGates
from wgates_plugin.app.models import Architecture
from wgates_plugin.app.serialization import RECIPE_FILE, WEIGHTS_FILE, load_pruned, read_recipe, rebuild, save_pruned
from wgates_plugin.errors import ConfigError


def _randomize(model: nn.Module) -> None:
    """Non-default weights and BN statistics, so equal outputs mean the weights really were loaded."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                low = 0.5 if name.endswith("running_var") else -0.1
                t.copy_(torch.rand(t.shape, generator=gen) * 0.2 + low)


def _prune(name: str, size: int = 32) -> tuple[nn.Module, WGates, Architecture]:
    torch.manual_seed(0)
    arch = Architecture(name, {"num_classes": 10}, input_shape=(1, 3, size, size))
    model = torchvision.models.get_model(name, num_classes=10).eval()
    wg = WGates(model, arch.example_input(), target=0.5)
    with torch.no_grad():
        for gate in wg.gates:  # scattered learned-looking scores: kept channels are not a prefix
            gate.fc.normal_(0, 0.05)
    wg.freeze()
    pruned = wg.export()
    _randomize(pruned)
    return pruned.eval(), wg, arch


@pytest.fixture(scope="module")
def resnet18_pruned():
    return _prune("resnet18")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_round_trip_reproduces_outputs_exactly(name, tmp_path, resnet18_pruned):
    pruned, wg, arch = resnet18_pruned if name == "resnet18" else _prune(name)
    kept = wg.kept_channels()
    assert any(len(k) and not torch.equal(k, torch.arange(len(k))) for k in kept.values())  # not a prefix
    save_pruned(tmp_path, pruned, wg.history, arch)
    loaded = load_pruned(tmp_path)
    assert not loaded.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_files_are_safetensors_and_json(tmp_path, resnet18_pruned):
    from safetensors.torch import load_file

    pruned, wg, arch = resnet18_pruned
    save_pruned(tmp_path, pruned, wg.history, arch)
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    assert torch.equal(weights["layer1.0.conv1.weight"], pruned.layer1[0].conv1.weight)
    record = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert record["architecture"] == {"name": "resnet18", "kwargs": {"num_classes": 10},
                                      "input_shape": [1, 3, 32, 32], "source": "torchvision"}
    assert [tuple(h) for h in record["history"]] == [tuple(h) for h in wg.history]
    arch_again, history = read_recipe(tmp_path)
    assert arch_again == arch and history == [tuple(h) for h in wg.history]


def test_plain_state_dict_loads_with_weights_only_into_the_replayed_architecture(tmp_path, resnet18_pruned):
    pruned, wg, arch = resnet18_pruned
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    with pytest.raises(Exception, match="Weights only load failed"):  # why the module itself cannot be saved
        torch.save(pruned, tmp_path / "module.pt")
        torch.load(tmp_path / "module.pt", weights_only=True)
    model = rebuild(arch, wg.history)
    model.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), pruned(x))


def test_custom_builder(tmp_path):
    def make_net(width: int = 8) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 3),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    arch = Architecture("make_net", {"width": 8}, input_shape=(1, 3, 12, 12), source="custom")
    model = make_net(8).eval()
    wg = WGates(model, arch.example_input(), target=0.6)
    wg.freeze()
    pruned = wg.export().eval()
    save_pruned(tmp_path, pruned, wg.history, arch)
    with pytest.raises(ConfigError, match=r"custom builder 'make_net'; pass it back: builder="):
        load_pruned(tmp_path)
    loaded = load_pruned(tmp_path, builder=make_net)
    assert loaded[0].out_channels == pruned[0].out_channels < 8
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_missing_files(tmp_path, resnet18_pruned):
    with pytest.raises(FileNotFoundError, match=r"no pruning recipe at '.*nothing[/\\]pruning.json'"):
        load_pruned(tmp_path / "nothing")
    pruned, wg, arch = resnet18_pruned
    save_pruned(tmp_path, pruned, wg.history, arch)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights file at '.*model.safetensors'"):
        load_pruned(tmp_path)


def _rewrite(tmp_path, **changes):
    path = tmp_path / RECIPE_FILE
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))
    return record


def test_history_that_does_not_fit(tmp_path, resnet18_pruned):
    pruned, wg, arch = resnet18_pruned
    save_pruned(tmp_path, pruned, wg.history, arch)
    record = json.loads((tmp_path / RECIPE_FILE).read_text())
    good = record["history"]
    _rewrite(tmp_path, history=[["features.0", True, [0]]] + good)
    with pytest.raises(ConfigError, match=r"step 0 prunes layer 'features.0', which 'resnet18' does not have"):
        load_pruned(tmp_path)
    _rewrite(tmp_path, history=[["layer1.0.conv1", True, [3, 64]]])
    with pytest.raises(ConfigError, match=r"removes channels \[3, 64\] of 'layer1.0.conv1', which has 64 output"):
        load_pruned(tmp_path)
    _rewrite(tmp_path, history=[["layer1.0.conv1", "yes", [3]]])
    with pytest.raises(ConfigError, match=r"history entry 0 = \['layer1.0.conv1', 'yes', \[3\]\] is not"):
        load_pruned(tmp_path)
    _rewrite(tmp_path, history=good[1:])  # one group left unpruned: the weights no longer fit
    with pytest.raises(ConfigError, match=r"model.safetensors. does not fit: its tensors are not those of a weights "
                                          r"file: missing \[\], unexpected \[\], shape mismatches \[.layer"):
        load_pruned(tmp_path)
    _rewrite(tmp_path, architecture={**record["architecture"], "name": "resnet19"})
    with pytest.raises(ConfigError, match=r"model='resnet19' is not a torchvision classification model"):
        load_pruned(tmp_path)


def test_not_a_record(tmp_path):
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match=r"is not a wgates-pruned record \(format='something-else'\)"):
        load_pruned(tmp_path)
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"is not a pruning recipe: not valid JSON"):
        load_pruned(tmp_path)
