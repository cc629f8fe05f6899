"""config_list validation and mapping for WGatesPruner: every mistake raises an error that says what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from wgates_plugin.errors import BudgetError, ConfigError, ConfigTypeError
from wgates_plugin.integrations.nni_config import canonical_config_list, select_layers

X = torch.randn(2, 3, 16, 16)


class TinyResNet(nn.Module):
    """stem -> residual block (stem, block.conv2 coupled by the addition) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean((2, 3)))


def pruner(config_list, **kwargs):
    from wgates_plugin import WGatesPruner

    return WGatesPruner(TinyResNet(), config_list, dummy_input=X, **kwargs)


def test_import_wgates_plugin_leaves_nni_out():
    code = "import sys, wgates_plugin; assert 'nni' not in sys.modules, 'nni imported'; " \
           "from wgates_plugin import WGatesPruner; assert 'nni' in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("config, error, match", [
    ([{"op_types": ["conv2d"], "sparse_ratio": 0.5}], ConfigError, r"'conv2d'.*did you mean 'Conv2d'"),
    ([{"op_names": ["conv9"], "sparse_ratio": 0.5}], ConfigError,
     r"'conv9', which is not a layer of the model \(did you mean 'conv\d'\?\)"),
    ([{"op_names_re": ["layer.*"], "sparse_ratio": 0.5}], ConfigError, r"pattern 'layer\.\*' matches no layer"),
    ([{"op_types": ["Conv2d"], "op_names": ["fc"]}], ConfigError, r"do not overlap, or all are excluded"),
    ([{"op_types": ["Conv2d"], "spars_ratio": 0.5}], ConfigError,
     r"unknown key 'spars_ratio' \(did you mean 'sparse_ratio'"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 1.0}], ConfigError, r"sparse_ratio=1.0 must be in \[0, 1\)"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": -0.1}], ConfigError, r"sparse_ratio=-0.1 must be in \[0, 1\)"),
    ([{"op_types": ["Conv2d"], "max_sparse_ratio": 1.5}], ConfigError, r"max_sparse_ratio=1.5 must be in \(0, 1\]"),
    ([{"op_types": ["Conv2d"], "min_sparse_ratio": 0.6, "max_sparse_ratio": 0.5}], ConfigError, r"exceeds"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": "half"}], ConfigTypeError, r"sparse_ratio='half' must be a float"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0}], ConfigError,
     r"NNI's config schema rejects config_list\[0\].*float"),
    ([{"op_types": "Conv2d", "sparse_ratio": 0.5}], ConfigTypeError,
     r"op_types='Conv2d' must be a list of strings \(did you mean \['Conv2d'\]\?\)"),
    ([{"sparse_ratio": 0.5}], ConfigError, r"config_list\[0\] selects no layer: give 'op_types'"),
    ([{"op_types": ["Conv2d"], "sparse_threshold": 0.1}], ConfigError, r"sparse_threshold is not supported"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "in_channel"}], ConfigError,
     r"granularity='in_channel'.*whole output channels"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "target_names": ["bias"]}], ConfigError, r"target_names"),
    ([{"op_types": ["ReLU"], "sparse_ratio": 0.5}], ConfigError,
     r"'ReLU', which is not a module class of the model \(its classes: BatchNorm2d, Conv2d, Linear, TinyResNet\)"),
    ([], ConfigError, r"config_list is empty"),
    ({"op_types": ["Conv2d"]}, ConfigTypeError, r"config_list must be a list of dicts"),
    ([["Conv2d"]], ConfigTypeError, r"config_list\[0\] must be a dict"),
    ([{"exclude": True, "op_names": ["stem"]}], ConfigError, r"only excludes layers"),
])
def test_bad_config_list_raises_a_clear_error(config, error, match):
    with pytest.raises(error, match=match):
        pruner(config)


def test_relu_selected_by_name_is_refused_with_its_type():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    entries = canonical_config_list([{"op_names": ["1"], "sparse_ratio": 0.5}])
    with pytest.raises(ConfigError, match=r"selects '1', a ReLU; W-Gates prunes the output channels of Conv2d"):
        select_layers(model, entries)


def test_first_entry_wins_as_in_nni():
    entries = canonical_config_list([{"op_names": ["conv1"], "sparse_ratio": 0.25},
                                     {"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    settings, _ = select_layers(TinyResNet(), entries)
    assert settings["conv1"].sparse_ratio == 0.25 and settings["conv1"].entry == 0
    assert settings["stem"].sparse_ratio == 0.5 and settings["stem"].entry == 1


def test_target_settings_form_is_read():
    weight = {"sparse_ratio": 0.5, "max_sparse_ratio": 0.7}
    entries = canonical_config_list([{"op_types": ["Conv2d"], "target_settings": {"weight": weight}}])
    settings, _ = select_layers(TinyResNet(), entries)
    assert {s.sparse_ratio for s in settings.values()} == {0.5}
    assert {s.max_sparse_ratio for s in settings.values()} == {0.7}


def test_legacy_exclude_and_sparsity_are_translated():
    entries = canonical_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]},
                                     {"exclude": True, "op_names": ["conv1"]}])
    settings, excluded = select_layers(TinyResNet(), entries)
    assert sorted(settings) == ["conv2", "stem"]
    assert excluded == {"conv1"}
    assert settings["stem"].sparse_ratio == 0.5


def test_legacy_total_sparsity_becomes_a_global_group():
    entries = canonical_config_list([{"total_sparsity": 0.5, "op_types": ["Conv2d"]}])
    settings, _ = select_layers(TinyResNet(), entries)
    assert {s.global_group_id for s in settings.values()} == {"total_sparsity_0"}


def test_dependency_group_id_is_accepted_with_a_warning():
    with pytest.warns(UserWarning, match=r"dependency_group_id is not needed"):
        canonical_config_list([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "dependency_group_id": 1}])


def test_conflicting_ratios_inside_a_residual_group_name_the_layers():
    config = [{"op_names": ["stem"], "sparse_ratio": 0.5}, {"op_names": ["conv2"], "sparse_ratio": 0.25}]
    with pytest.raises(ConfigError, match=r"coupled through a residual addition must keep the same channels, but "
                                          r"(?=.*'stem' \(sparse_ratio=0.5; config_list\[0\]\))"
                                          r"(?=.*'conv2' \(sparse_ratio=0.25; config_list\[1\]\))"):
        pruner(config)


def test_a_layer_of_a_coupled_group_pulls_in_its_partners():
    p = pruner([{"op_names": ["stem"], "sparse_ratio": 0.5}])
    (plan,) = p.plans
    assert sorted(m.name for m in plan.group.producers) == ["conv2", "stem"]
    assert sorted(p.get_masks()) == ["conv2", "stem"]  # the follower is wrapped too


def test_exclusion_keeps_a_coupled_group_whole_and_says_why():
    with pytest.warns(UserWarning, match=r"conv2: not pruned: it must keep the same channels as the excluded .*stem"):
        p = pruner([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "exclude_op_names": ["stem"]}])
    assert [plan.group.name for plan in p.plans] == ["conv1"]


def test_only_unprunable_layers_selected():
    with pytest.raises(ConfigError, match=r"selects no layer W-Gates can prune: fc: not pruned: it produces the model"):
        pruner([{"op_types": ["Linear"], "sparse_ratio": 0.5}])


def test_global_group_needs_one_ratio():
    config = [{"op_names": ["conv1"], "sparse_ratio": 0.5, "global_group_id": 0},
              {"op_names": ["stem"], "sparse_ratio": 0.3, "global_group_id": 0}]
    with pytest.raises(ConfigError, match=r"global_group_id=0 needs one sparse_ratio"):
        pruner(config)


def test_global_group_and_flops_target_are_two_budgets():
    with pytest.raises(ConfigError, match=r"two budgets"):
        pruner([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0}], target=0.5)


def test_global_group_next_to_free_layers_is_refused():
    config = [{"op_names": ["conv1"], "sparse_ratio": 0.5, "global_group_id": 0}, {"op_names": ["stem"]}]
    with pytest.raises(ConfigError, match=r"have no sparse_ratio and no global_group_id"):
        pruner(config)


def test_unreachable_global_budget():
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.9, "max_sparse_ratio": 0.5, "global_group_id": 0}]
    with pytest.raises(BudgetError, match=r"global_group_id=0: the budget allows"):
        pruner(config)


@pytest.mark.parametrize("kwargs, match", [
    ({"training_steps": 0}, r"training_steps=0 must be an int >= 1"),
    ({"target": 1.5}, r"target=1.5 must be a fraction in \(0, 1\]"),
    ({"gate_lr": 0}, r"gate_lr=0 must be a number > 0"),
    ({"prune_shortcuts": False}, r"unknown option\(s\) \['prune_shortcuts'\]"),
])
def test_bad_pruner_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pruner([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], **kwargs)


def test_mode_follows_the_config():
    from wgates_plugin import BudgetMode

    assert pruner([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]).wgates.config.mode is BudgetMode.NONE
    assert pruner([{"op_types": ["Conv2d"]}]).wgates.config.mode is BudgetMode.PAPER
    assert pruner([{"op_types": ["Conv2d"]}], target=0.5).wgates.config.mode is BudgetMode.TARGET


def test_fixed_ratio_uses_nni_rounding():
    from wgates_plugin.integrations.nni_plan import group_bounds

    p = pruner([{"op_types": ["Conv2d"], "sparse_ratio": 0.7}])
    for plan in p.plans:
        b = group_bounds(plan)
        assert b.min_keep == b.max_keep == (16 - int(16 * 0.7)) / 16
    assert all(g.min_units == g.max_units == 16 - int(16 * 0.7) for g in p.wgates.gates)
