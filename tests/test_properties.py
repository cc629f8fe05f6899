"""Property tests (hypothesis, derandomized: the same cases on every run): for generated configs,
NNI config lists, masks and saved-file mutations the outcome is a documented error
(:class:`~wgates_plugin.errors.WGatesError`) or a correct result — never another exception, never a
changed model."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.test_unchanged_on_error import X, fingerprint, net, outputs
from wgates_plugin import WGatesConfig, speedup
from wgates_plugin.app.models import Architecture
from wgates_plugin.app.serialization import RECIPE_FILE, WEIGHTS_FILE, load_pruned, save_pruned
from wgates_plugin.config import BudgetMode, LayerBounds
from wgates_plugin.errors import WGatesError
from wgates_plugin.pruner import WGates

CASES = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(-2, 3), max_size=3),
    st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, 1e-9, float("nan"), "paper", "target", "none", "binary", "sigmoid",
                     "weight", "constant"]),
)
FIELDS = ("mode", "target", "alpha", "controller_rate", "tolerance", "prune_shortcuts", "score_input",
          "weight_grad", "init_score", "warm_start", "ramp_steps", "activation", "sigmoid_k", "exclude")


@CASES
@given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=6))
def test_a_config_is_valid_or_a_documented_error(fields):
    try:
        cfg = WGatesConfig(**fields)
    except WGatesError:
        return
    assert cfg.target is None or (isinstance(cfg.target, (int, float)) and 0 < cfg.target <= 1)
    assert (cfg.mode is BudgetMode.TARGET) == (cfg.target is not None and cfg.mode is BudgetMode.TARGET)
    assert cfg.mode is not BudgetMode.PAPER or cfg.target is None
    for name in ("alpha", "controller_rate", "sigmoid_k", "tolerance", "init_score"):
        value = getattr(cfg, name)
        assert not isinstance(value, bool) and math.isfinite(value) and value >= 0
    assert 0 < cfg.tolerance < 0.5 and 0 < cfg.init_score < 0.5 and cfg.sigmoid_k > 0
    assert isinstance(cfg.ramp_steps, int) and cfg.ramp_steps >= 0


@CASES
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_layer_bounds_are_ordered_fractions_or_a_documented_error(low, high):
    try:
        b = LayerBounds(low, high)
    except WGatesError:
        return
    assert 0 <= b.min_keep <= b.max_keep <= 1 and b.max_keep > 0


# ---------------------------------------------------------------------------- NNI config lists
LAYERS = ["stem.0", "a.0", "b.0", "head", "a.1", "nope", "a.0 "]
ENTRY = st.dictionaries(
    st.sampled_from(["op_types", "op_names", "exclude_op_names", "op_names_re", "sparse_ratio", "max_sparse_ratio",
                     "min_sparse_ratio", "global_group_id", "exclude", "sparsity", "granularity", "typo"]),
    st.one_of(st.lists(st.sampled_from(["Conv2d", "conv2d", "Linear", "BatchNorm2d", *LAYERS]), max_size=3),
              st.floats(-0.5, 1.5), st.sampled_from([0, 1, "g", True, None, float("nan"), "out_channel"])),
    max_size=4)


VALID_ENTRY = st.fixed_dictionaries(
    {"op_types": st.sampled_from([["Conv2d"], ["Conv2d", "Linear"], ["BatchNorm2d"]])},
    optional={"sparse_ratio": st.floats(0, 0.9), "max_sparse_ratio": st.floats(0.5, 1.0),
              "global_group_id": st.sampled_from([1, "g"]), "exclude_op_names": st.sampled_from([["a.0"], ["head"]])})


@pytest.fixture(scope="module")
def template():
    return net()


@CASES
@given(st.lists(st.one_of(VALID_ENTRY, ENTRY), max_size=3), st.sampled_from([None, 0.5, 0.2, 1.5]))
def test_an_nni_config_list_builds_a_pruner_or_is_a_documented_error(template, config_list, target):
    pytest.importorskip("nni")
    from wgates_plugin.integrations.nni import WGatesPruner

    model = copy.deepcopy(template)
    before = fingerprint(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = WGatesPruner(model, config_list, dummy_input=X, target=target)
    except WGatesError:
        assert fingerprint(model) == before
        event("refused")
        return
    event("built")
    core = pruner.wgates
    assert core is not None and core.groups
    assert 0 < core.floor_ratio() <= 1


# ---------------------------------------------------------------------------- speedup masks
def row_mask(weight: torch.Tensor, rows: list[bool]) -> torch.Tensor:
    mask = torch.ones_like(weight)
    for i, keep in enumerate(rows[: weight.shape[0]]):
        if not keep:
            mask[i] = 0
    return mask


MASK_ENTRY = st.one_of(
    st.tuples(st.just("rows"), st.lists(st.booleans(), min_size=1, max_size=14)),
    st.tuples(st.just("shape"), st.integers(1, 4)),
    st.tuples(st.just("raw"), st.sampled_from([None, 1, "w", (1, 2)])),
    st.tuples(st.just("tensor"), st.just(0)),
)


@CASES
@given(st.dictionaries(st.sampled_from(LAYERS), MASK_ENTRY, max_size=4))
def test_speedup_prunes_what_the_masks_say_or_is_a_documented_error(template, spec):
    model = copy.deepcopy(template)
    modules = dict(model.named_modules())
    masks, removed = {}, {}
    for name, (kind, value) in spec.items():
        weight = getattr(modules.get(name), "weight", torch.ones(4, 4))
        if kind == "rows":
            masks[name] = {"weight": row_mask(weight, value)}
            removed[name] = int((masks[name]["weight"].reshape(weight.shape[0], -1) == 0).all(1).sum())
        elif kind == "shape":
            masks[name] = {"weight": torch.ones(value, 1)}
        elif kind == "raw":
            masks[name] = {"weight": value} if value is not None else value
        else:
            masks[name] = torch.ones_like(weight)
    before, out = fingerprint(model), outputs(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = speedup(model, masks, X)
    except WGatesError:
        assert fingerprint(model) == before
        torch.testing.assert_close(outputs(model), out, rtol=0, atol=0)
        event("refused")
        return
    event("pruned" if removed else "nothing removed")
    assert small is model
    if "a.0" in removed and "b.0" not in masks:  # a plain group: exactly the zeroed rows leave
        assert small.a[0].out_channels == 12 - removed["a.0"] > 0
    assert small(X).shape == (2, 5)


# ---------------------------------------------------------------------------- saved-file mutations
class Tiny(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


ARCH = Architecture("Tiny", {"width": 6}, input_shape=(1, 3, 8, 8), source="custom")
X8 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny().eval()
    wg = WGates(model, ARCH.example_input(), target=0.5)
    wg.freeze()
    small = wg.export().eval()
    folder = tmp_path_factory.mktemp("tiny")
    save_pruned(folder, small, wg.history, ARCH)
    with torch.no_grad():
        expected = small(X8)
    return {name: (folder / name).read_bytes() for name in (WEIGHTS_FILE, RECIPE_FILE)}, expected


FILES = st.sampled_from([WEIGHTS_FILE, RECIPE_FILE])
MUTATION = st.one_of(
    st.tuples(st.just("flip"), FILES, st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), FILES, st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), FILES, st.binary(min_size=1, max_size=16), st.just(0)),
    st.tuples(st.just("field"), st.sampled_from(["architecture", "history", "version", "format", "weights_sha256"]),
              ANY_VALUE, st.just(0)),
)


@CASES
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_a_mutated_saved_model_loads_exactly_or_is_a_documented_error(saved_tiny, tmp_path_factory, mutations):
    files, expected = saved_tiny
    data = {name: bytearray(content) for name, content in files.items()}
    for kind, target, value, extra in mutations:
        if kind == "flip":
            blob = data[target]
            if blob:
                blob[value % len(blob)] ^= extra
        elif kind == "truncate":
            del data[target][value % max(1, len(data[target])):]
        elif kind == "append":
            data[target] += value
        else:
            try:
                record = json.loads(bytes(data[RECIPE_FILE]))
                record[target] = value
                data[RECIPE_FILE] = bytearray(json.dumps(record).encode())
            except (ValueError, TypeError):
                pass  # an earlier mutation already broke the JSON
    folder = tmp_path_factory.mktemp("mutated")
    for name, blob in data.items():
        (folder / name).write_bytes(bytes(blob))
    try:
        model = load_pruned(folder, builder=Tiny)
    except WGatesError:
        event("refused")
        return
    event("loaded")
    with torch.no_grad():
        torch.testing.assert_close(model(X8), expected, rtol=0, atol=0)
