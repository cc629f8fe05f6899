"""Nothing the user owns changes unless the call succeeds: for every failing constructor and verb,
the model's parameters and buffers (values and identities), hooks and per-module train/eval modes
are exactly what they were before the call."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import randomize_bn
from wgates_plugin import LayerBounds, WGates, WGatesConfig, speedup
from wgates_plugin.core import FixedGates
from wgates_plugin.errors import BudgetError, ConfigError, ConfigTypeError, ExportError, StateError, TracingError
from wgates_plugin.gate_decorator import GateDecorator
from wgates_plugin.groups import trace_groups, trace_limits
from wgates_plugin.utils import ModelGuard, kept_modes

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    """conv-bn-relu, a residual pair, a head: plain and shortcut-coupled groups."""

    def __init__(self, flip: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.a(x)
        if self.flip:  # reverses the channels: torch-pruning maps indices through it as if it did not
            y = y.flip(1)
        x = torch.relu(x + self.b(y))
        return self.head(x.mean((2, 3)))


def net(seed: int = 0, flip: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = randomize_bn(Net(flip), seed + 1).train()
    model.stem[1].eval()  # a user's frozen BatchNorm: must stay in eval mode
    return model


def fingerprint(model: nn.Module) -> tuple:
    """Values and identities of every tensor, every hook, every module's mode and attribute names."""
    digest = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().numpy().tobytes())
    ids = tuple(id(t) for t in model.parameters())
    hooks = tuple((len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules())
    modes = tuple(m.training for m in model.modules())
    attrs = tuple(tuple(sorted(vars(m))) for m in model.modules())
    return digest.hexdigest(), ids, hooks, modes, attrs


def outputs(model: nn.Module) -> torch.Tensor:
    with kept_modes(model), torch.no_grad():
        return model.eval()(X)


def assert_unchanged(model: nn.Module, call, error: type[Exception], match: str) -> None:
    before, out = fingerprint(model), outputs(model)
    with pytest.raises(error, match=match):
        call()
    assert fingerprint(model) == before
    torch.testing.assert_close(outputs(model), out, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_failing_constructors_leave_the_model_as_it_was(seed):
    model = net(seed)
    assert_unchanged(model, lambda: WGates(model, X, target=0.001), BudgetError, "unreachable")
    assert_unchanged(model, lambda: WGates(model, X, target=0.5, layer_bounds={"nope": LayerBounds(0.5, 1.0)}),
                     ConfigError, "layer_bounds names layers that are not in the model: \\['nope'\\]")
    assert_unchanged(model, lambda: WGates(model, torch.zeros(0, 3, 16, 16), target=0.5), ConfigError,
                     "empty tensor of shape \\(0, 3, 16, 16\\)")
    assert_unchanged(model, lambda: WGates(model, X * float("nan"), target=0.5), ConfigError, "NaN or inf")
    assert_unchanged(model, lambda: GateDecorator(model, X, target=0.001), BudgetError, "unreachable")


def test_a_method_failing_after_its_hooks_are_attached_takes_them_off_again():
    class Late(WGates):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # hooks attached here
            raise ConfigError("late failure")

    model = net()
    assert_unchanged(model, lambda: Late(model, X, target=0.5), ConfigError, "late failure")


def test_front_ends_that_fail_leave_the_model_as_it_was():
    pytest.importorskip("nni")
    from wgates_plugin.integrations.nni import WGatesPruner
    from wgates_plugin.integrations.torch_pruning import WGatesMetaPruner

    model = net()
    infeasible = [{"op_types": ["Conv2d"], "sparse_ratio": 0.999, "global_group_id": 1}]
    assert_unchanged(model, lambda: WGatesPruner(model, infeasible, dummy_input=X), BudgetError, "global_group_id=1")
    both = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 1}]
    assert_unchanged(model, lambda: WGatesPruner(model, both, dummy_input=X, target=0.5), ConfigError,
                     "two budgets")
    assert_unchanged(model, lambda: WGatesMetaPruner(model, X, target=0.001), BudgetError, "unreachable")


def test_successful_constructors_keep_every_modules_mode():
    model = net()
    modes = [m.training for m in model.modules()]
    wg = WGates(model, X, target=0.5)
    assert [m.training for m in model.modules()] == modes
    assert not model.stem[1].training and model.a[1].training
    wg.remove()


def test_export_after_remove_is_a_state_error_and_attaches_nothing():
    model = net()
    wg = WGates(model, X, target=0.5)
    wg.freeze()
    wg.remove()
    assert_unchanged(model, wg.export, StateError, "export\\(\\) after remove\\(\\).*attach\\(\\) first")


def test_speedup_that_fails_verification_leaves_the_model_as_it_was():
    model = net(flip=True)
    mask = torch.ones_like(model.a[0].weight)
    mask[:4] = 0
    assert_unchanged(model, lambda: speedup(model, {"a.0": {"weight": mask}}, X), ExportError,
                     "does not reproduce")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, ExportError])
def test_an_in_place_export_interrupted_midway_puts_the_gated_model_back(interrupt):
    class Interrupted(FixedGates):
        def _prepare_export(self, pruned):
            pruned.a[0].weight.data.mul_(2)  # an in-place write the guard must undo
            raise interrupt("stopped")

    model = net()
    group = next(g for g in trace_groups(model, X).groups if g.name == "a.0")
    keep = torch.ones(group.size)
    keep[:3] = 0
    fixed = Interrupted(model, X, [group], [keep])
    gated = outputs(model)
    assert_unchanged(model, lambda: fixed.export(in_place=True), interrupt, "stopped")
    torch.testing.assert_close(outputs(model), gated, rtol=0, atol=0)  # still gated: hooks are back
    fixed.remove()


def test_model_guard_restores_replaced_parameters_added_attributes_and_hooks():
    model = net()
    before = fingerprint(model)
    guard = ModelGuard(model, tensors=True)
    model.a[0].weight = nn.Parameter(torch.zeros(3))
    model.b[0].extra = 1
    model.head.register_forward_hook(lambda *a: None)
    model.stem[0].bias.data.add_(1)
    model.eval()
    guard.restore()
    assert fingerprint(model) == before


def test_gates_follow_the_model_dtype_and_export_exactly():
    model = net().double()
    x = X.double()
    wg = WGates(model, x, target=0.5)
    assert all(p.dtype == torch.float64 for p in wg.gates.parameters())
    wg.freeze()
    small = wg.export()
    assert small.a[0].out_channels < 12


def test_the_group_search_stops_at_its_time_limit_naming_the_slow_part():
    model = torchvision.models.resnet18(num_classes=10)
    ticks = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s later
    with trace_limits(seconds=45, group_seconds=math.inf, clock=lambda: float(next(ticks))), \
            pytest.raises(TracingError, match="channel-group search of ResNet passed the 45 s limit after 2 of 21 "
                                              "layers.*slowest group 'fc', 10 s.*exclude.*trace_limits"):
        trace_groups(model, torch.randn(1, 3, 32, 32))


def test_a_group_search_past_its_own_limit_leaves_that_group_whole_and_prunes_the_rest(monkeypatch):
    import torch_pruning as tp

    model = net()
    stuck = model.a[0]
    search = tp.DependencyGraph.get_pruning_group
    now = [0.0]

    def tick() -> None:  # one second of the injected clock per Python call
        now[0] += 1.0

    def endless(self, module, *args, **kwargs):  # a search that never ends for one layer, as in C2PSA
        while module is stuck and now[0] < 1e7:  # bounded: if the limit never fired, the asserts below fail
            tick()
        return search(self, module, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", endless)
    with trace_limits(seconds=1e12, group_seconds=7, clock=lambda: now[0]):  # the whole search: no limit in effect
        traced = trace_groups(model, X)
        wg = WGates(model, X, target=0.7, prune_shortcuts=True)
    reason = ("torch-pruning's search for its coupled layers did not finish in 7 s "
              "(wgates_plugin.groups.LIMITS.group_seconds)")
    assert {g.name: g.reason for g in traced.groups if g.reason} == {"a.0": reason,
                                                                     "head": "it produces the model's output"}
    assert [wg.why_not(g) for g in wg.traced.groups if g.name == "a.0"] == [reason]
    wg.freeze()
    small = wg.export()
    assert small.a[0].out_channels == 12 and small.b[0].out_channels < 8
    with pytest.raises(ConfigError, match="group_seconds=0 must be a number > 0"), trace_limits(group_seconds=0):
        pass


def test_a_group_search_that_keeps_growing_is_stopped_at_its_index_budget_whatever_the_clock(monkeypatch):
    import torch_pruning as tp
    from torch_pruning.dependency.group import Group

    from wgates_plugin.groups import layer_width

    model = net()
    stuck = model.a[0]
    search = tp.DependencyGraph.get_pruning_group
    recorded = []
    original_add_dep = Group.add_dep

    def growing(self, module, pruning_fn, idxs):  # as in C2PSA: every turn maps the indices to twice as many
        if module is not stuck:
            return search(self, module, pruning_fn, idxs)
        group, idxs = Group(), list(idxs)
        root = self.module2node[module]
        while len(idxs) < 2 ** 26:  # bounded: if the budget never stopped it, the asserts below fail
            group.add_dep(tp.Dependency(pruning_fn, pruning_fn, source=root, target=root), idxs)
            recorded.append(len(idxs))
            idxs = idxs + idxs
        return group

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", growing)
    width = layer_width(model)
    assert width == sum(sum(m.weight.shape[:2]) for m in model.modules() if hasattr(m, "weight"))
    with trace_limits(group_seconds=math.inf, group_indices=3):  # no time limit at all: only the budget acts
        traced = trace_groups(model, X)
        assert sum(recorded) <= 3 * width < sum(recorded) + 2 * recorded[-1]  # stopped at the first add past it
        wg = WGates(model, X, target=0.7, prune_shortcuts=True)
    reason = (f"torch-pruning's search for its coupled layers kept growing past {3 * width} channel indices "
              "(3 x the model's layer width; wgates_plugin.groups.LIMITS.group_indices)")
    assert {g.name: g.reason for g in traced.groups if g.reason} == {"a.0": reason,
                                                                     "head": "it produces the model's output"}
    assert Group.add_dep is original_add_dep  # torch-pruning's method is restored after each search
    wg.freeze()
    assert wg.export().a[0].out_channels == 12
    with pytest.raises(ConfigError, match="group_indices=-1 must be a number > 0"), trace_limits(group_indices=-1):
        pass


def test_the_index_budget_counts_only_its_own_threads_search():
    import threading

    from torch_pruning.dependency.group import Group

    from wgates_plugin.groups import _BUDGET, _index_budget, _SearchTooLarge

    original = Group.add_dep
    other = Group()
    inside, leave = threading.Event(), threading.Event()

    def elsewhere() -> None:  # another thread, in a block of its own, recording far more than our budget
        with _index_budget(1e9):
            for _ in range(100):
                other.add_dep(None, list(range(1000)))
            inside.set()
            leave.wait(60)

    worker = threading.Thread(target=elsewhere)
    with _index_budget(10):
        Group().add_dep(dep=None, idxs=list(range(10)))  # exactly the budget, called as torch-pruning calls it
        worker.start()
        assert inside.wait(60)
        with pytest.raises(_SearchTooLarge):
            Group().add_dep(None, [0])  # one more
    assert Group.add_dep is not original  # the other thread's block is still open: still counting
    leave.set()
    worker.join()
    assert Group.add_dep is original and len(other) == 100  # the last block out restores torch-pruning's method
    assert getattr(_BUDGET, "left", None) is None
    with _index_budget(math.inf):
        Group().add_dep(None, list(range(10_000)))
    Group().add_dep(None, list(range(10_000)))  # outside any block: never counted


def test_a_nested_index_budget_is_charged_to_the_outer_one_and_limits_are_checked():
    from torch_pruning.dependency.group import Group

    from wgates_plugin.groups import LIMITS, _index_budget, _SearchTooLarge

    with _index_budget(10):
        Group().add_dep(None, [0] * 4)
        with _index_budget(100):  # gets only the 6 the outer block has left
            Group().add_dep(None, [0] * 5)
            with pytest.raises(_SearchTooLarge):
                Group().add_dep(None, [0] * 2)
        with pytest.raises(_SearchTooLarge):  # the inner block's use was charged to the outer one
            Group().add_dep(None, [0] * 2)
    with pytest.raises(ConfigError, match="group_indices budget=0 must be a number > 0"), _index_budget(0):
        pass
    saved = LIMITS.group_indices
    LIMITS.group_indices = 0  # set directly, bypassing trace_limits: refused, not "every group kept whole"
    try:
        with pytest.raises(ConfigError, match="group_indices=0 must be a number > 0"):
            trace_groups(net(), X)
    finally:
        LIMITS.group_indices = saved


def test_the_search_limit_interrupts_only_inside_its_block_and_never_hides_the_blocks_own_exception():
    from wgates_plugin.groups import _deadline, _SearchTimeout

    with _deadline(3600, lambda: 0.0):  # never past: the block runs to its end
        done = sum(range(10_000))
    assert done == 49_995_000
    now = [0.0]
    with pytest.raises(_SearchTimeout), _deadline(5, lambda: now[0]):
        while now[0] < 1e7:  # pure Python that would run for minutes
            now[0] += 1.0
    assert now[0] < 1e7  # it was interrupted, not left to finish
    with pytest.raises(KeyboardInterrupt), _deadline(5, lambda: 0.0):
        raise KeyboardInterrupt  # a user's Ctrl-C inside the block propagates as it is
    with pytest.raises(RuntimeError, match="do not nest"), _deadline(60, lambda: 0.0), _deadline(60, lambda: 0.0):
        pass
    with _deadline(60, lambda: 0.0):  # after all of the above, a new block works
        pass
    with _deadline(math.inf, lambda: 1 / 0):  # no limit: the clock is never read
        pass
    with pytest.raises(ConfigError, match="group_seconds=nan must be a number > 0"):
        _deadline(float("nan"), lambda: 0.0)


def test_a_timeout_delivered_while_an_interrupt_propagates_gives_way_to_the_interrupt(monkeypatch):
    import torch_pruning as tp

    from wgates_plugin.groups import _SearchTimeout

    def interrupted(*_a, **_k):  # Ctrl-C, and the search limit firing while it unwinds the search
        try:
            raise KeyboardInterrupt
        finally:
            raise _SearchTimeout

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trace_groups(net(), X)


def test_an_interrupt_raised_inside_the_group_search_is_not_taken_for_an_unmappable_group(monkeypatch):
    import torch_pruning as tp

    def slow(*_a, **_k):
        raise TimeoutError("alarm")

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", slow)
    with pytest.raises(TimeoutError, match="alarm"):
        trace_groups(net(), X)


def test_values_refused_where_they_enter():
    with pytest.raises(ConfigError, match="mode='paper'.*target=0.5"):
        WGatesConfig(mode="paper", target=0.5)
    for name in ("alpha", "controller_rate", "sigmoid_k"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=f"{name}={bad}"):
                WGatesConfig(target=0.5, **{name: bad})
    model = net()
    weight = torch.ones_like(model.a[0].weight)
    assert_unchanged(model, lambda: speedup(model, {"a.0": weight}, X), ConfigError,
                     "masks\\['a.0'\\] is a Tensor.*\\{'a.0': \\{'weight': mask\\}\\}")
    assert_unchanged(model, lambda: speedup(model, {"a.0": {"weight": [1, 0]}}, X), ConfigTypeError,
                     "masks\\['a.0'\\]\\['weight'\\] is a list, not a tensor")


def test_tracing_shows_progress_when_asked(capsys):
    with trace_limits(progress=True):
        trace_groups(net(), X)
    err = capsys.readouterr().err
    assert "tracing Net (13 modules)" in err and "channel groups: " in err and "0/4" in err


def test_front_ends_keep_every_modules_mode_on_success():
    pytest.importorskip("nni")
    from wgates_plugin.integrations.nni import WGatesPruner
    from wgates_plugin.integrations.torch_pruning import WGatesMetaPruner

    for build in (lambda m: WGatesMetaPruner(m, X, target=0.5),
                  lambda m: WGatesPruner(m, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=X)):
        model = net()
        modes = {n: m.training for n, m in model.named_modules()}
        build(model)
        assert {n: m.training for n, m in model.named_modules() if n in modes} == modes


def test_an_unknown_option_names_the_valid_ones_and_the_closest():
    model = net()
    assert_unchanged(model, lambda: WGates(model, X, targte=0.5), ConfigError,
                     "unknown WGates option\\(s\\) \\['targte'\\] \\('targte': did you mean 'target'\\?\\); the "
                     "options are mode, target, alpha")
    assert_unchanged(model, lambda: WGates(model, X, config={"target": 0.5}), ConfigTypeError,
                     "config must be a WGatesConfig, got dict")


def test_a_data_replacement_and_a_model_passed_by_keyword_are_guarded_too():
    model = net()
    before = fingerprint(model)
    guard = ModelGuard(model, tensors=True)
    model.a[0].weight.data = model.a[0].weight.data[:2]  # another shape, through .data
    guard.restore()
    assert fingerprint(model) == before

    class Named(WGates):
        def __init__(self, example, net, **kwargs):  # the model neither first nor called "model"
            super().__init__(net, example, **kwargs)
            raise ConfigError("late failure")

    assert_unchanged(model, lambda: Named(example=X, net=model, target=0.5), ConfigError, "late failure")
