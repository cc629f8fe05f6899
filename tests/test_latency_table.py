"""The per-layer latency lookup table, against a deterministic simulated device.

On :class:`SimulatedClock` a conv's latency is ``a * c_in * c_out + b`` (bilinear in its channels, linear
for a depthwise conv), which bilinear interpolation between grid points reproduces exactly; every layer
no gate touches costs the same in every candidate. So the table's prediction of an exported candidate
must *equal* its measured latency, for any candidate — the invariant these tests check.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
import torchvision
from torch import nn

from wgates_plugin import WGates
from wgates_plugin.app.cli import main
from wgates_plugin.config import WGatesConfig
from wgates_plugin.efficiency import LatencyTable, TableModel
from wgates_plugin.efficiency.table import grid
from wgates_plugin.efficiency.timing import SimulatedClock, Timing
from wgates_plugin.errors import ConfigError, ConfigTypeError, FileFormatError, LatencyContextError, MeasurementError
from wgates_plugin.latency_landing import land_on_latency
from wgates_plugin.profiling import collect_table, measure_alignment
from wgates_plugin.profiling.candidates import CandidateSpace

X = torch.zeros(1, 3, 32, 32)
TIMING = Timing(warmup=0, repeats=1)


def clock():
    return SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5)


def table_of(model, x=X, **kwargs):
    with clock():
        return collect_table(model, x, batch=2, timing=TIMING, points=3, progress=False, **kwargs)


def measured(latency: TableModel, model: nn.Module) -> float:
    with clock():
        return statistics.median(latency.measure_times(model))


class ConvLinear(nn.Module):
    """A conv whose channels feed a Linear through a flatten: the Linear's input varies by H * W per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize(("name", "build", "config", "x"), [
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=10), None, X),  # 1-D tables (conv1 out, conv2 in)
    ("resnet18 with shortcuts", lambda: torchvision.models.resnet18(num_classes=10),
     WGatesConfig(prune_shortcuts=True), X),  # in and out both vary: 2-D tables
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10), None, X),  # depthwise: one axis
    ("conv into linear", ConvLinear, None, torch.zeros(1, 3, 8, 8)),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_prediction_of_every_candidate_equals_its_measured_latency(name, build, config, x, seed):
    torch.manual_seed(seed)
    model = build().eval()
    table = table_of(model, x, config=config)
    latency = table.for_model(model, x, config=config)
    assert latency.predicted_reference() == pytest.approx(latency.reference(), rel=1e-5)
    space = CandidateSpace(model, x, config)
    for i in range(3):
        counts = space.sample(i, seed, 0.5)
        assert latency.predicted_ms(counts) == pytest.approx(measured(latency, space.build(counts)), rel=1e-5)


def test_tables_are_shared_by_equal_layers_and_grids_follow_the_points():
    model = torchvision.models.resnet18(num_classes=10).eval()
    table = table_of(model)
    assert (table.info["layers"], table.info["tables"]) == (16, 11)  # the repeated blocks share tables
    assert table.info["measurements"] == sum(len(t.c_in) * len(t.c_out) for t in table.tables.values())
    for t in table.tables.values():
        varying = t.c_out if t.spec.vary_out else t.c_in
        assert len(varying) == 3 and varying[-1] == max(t.spec.in_channels, t.spec.out_channels)
        assert (len(t.c_in) == 1) != (len(t.c_out) == 1)  # plain groups: one axis per conv


@pytest.mark.parametrize(("full", "points", "step", "expected"), [
    (64, 5, 1, [1, 16, 32, 48, 64]),
    (16, 4, 4, [4, 12, 16]),
    (3, 6, 1, [1, 2, 3]),
    (10, 2, 1, [1, 10]),
    (20, 3, 8, [8, 20]),  # full width kept even when it is no multiple of the step
    (3, 6, 4, [3]),  # a step wider than the layer: the layer's full width only
    (2, 3, 8, [2]),
])
def test_grid(full, points, step, expected):
    assert grid(full, points, step) == expected


def test_round_to_puts_the_grid_on_multiples():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    table = table_of(model, round_to=8)
    for t in table.tables.values():
        for axis, full in ((t.c_in, t.spec.in_channels), (t.c_out, t.spec.out_channels)):
            assert all(c % 8 == 0 or c == full for c in axis) and max(axis) == full


def test_the_cost_is_differentiable_in_the_counts():
    model = torchvision.models.resnet18(num_classes=10).eval()
    latency = table_of(model).for_model(model, X)
    counts = (latency.full_counts() * 0.4).requires_grad_(True)
    latency.cost(counts).backward()
    assert counts.grad is not None and bool((counts.grad > 0).all())  # every kept channel costs time


def test_wgates_meets_a_latency_budget_of_the_table_on_the_measured_network():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    table = table_of(model)
    wg = WGates(model, X, target=0.5, efficiency=table.efficiency(model, X))
    try:
        wg.freeze()
        assert wg.cost_ratio() <= 0.5 + 1e-6
        pruned = wg.export()
        latency = wg.efficiency
        assert isinstance(latency, TableModel)
        ratio = measured(latency, pruned) / latency.reference()
        assert ratio == pytest.approx(wg.cost_ratio(), rel=1e-5)  # what the table predicted is what it measures
        with clock():
            landing = land_on_latency(wg, 0.5, latency.measure_times)
        assert landing.within and len(landing.rounds) == 1  # an exact cost model lands in one round
    finally:
        wg.remove()


def test_a_table_serves_another_model_of_the_same_layers():
    small = torchvision.models.resnet18(num_classes=10).eval()
    table = table_of(small)
    big = torchvision.models.resnet34(num_classes=10).eval()
    with clock():
        latency = table.for_model(big, X)  # measures resnet34's unpruned latency for the remainder
    space = CandidateSpace(big, X)
    counts = space.sample(0, 0, 0.5)
    assert latency.predicted_ms(counts) == pytest.approx(measured(latency, space.build(counts)), rel=1e-5)
    with pytest.raises(LatencyContextError, match=r"holds no table for .* layer\(s\) of ResNet.*layer1.0.conv1"):
        table.for_model(torchvision.models.resnet50(num_classes=10).eval(), X)


def test_another_batch_or_input_size_is_refused():
    model = torchvision.models.resnet18(num_classes=10).eval()
    table = table_of(model)
    with pytest.raises(LatencyContextError, match=r"input_shape: saved \[3, 32, 32\], now \[3, 16, 16\]"):
        table.for_model(model, torch.zeros(1, 3, 16, 16))
    with pytest.raises(LatencyContextError, match="batch: saved 2, now 8"):
        table.for_model(model, X, batch=8)


def test_samples_timed_with_another_statistic_are_refused_paired_ones_are_not():
    from wgates_plugin.efficiency.latency import protocol_diff

    model = torchvision.models.resnet18(num_classes=10).eval()
    table = table_of(model)
    timing = dict(table.context["timing"], statistic="min")
    with pytest.raises(LatencyContextError, match="timing statistic: saved 'median', now 'min'"):
        table.check_samples(dict(table.context, timing=timing))
    table.check_samples(dict(table.context, paired=True))  # ratios to the unpruned model: what the table prices
    # an LPNet refuses both (its labels are what it predicts); old contexts read as median, not paired
    assert protocol_diff({"timing": {}}, {"timing": {"statistic": "median"}}) == []
    assert protocol_diff({"timing": {}}, {"timing": {}, "paired": True}) == ["paired: saved False, now True"]


def test_save_and_load_give_the_same_predictions(tmp_path):
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    table = table_of(model)
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    counts = CandidateSpace(model, X).sample(0, 0, 0.5)
    assert loaded.own_model().predicted_ms(counts) == table.for_model(model, X).predicted_ms(counts)
    assert loaded.for_model(model, X).predicted_ms(counts) == table.own_model().predicted_ms(counts)


def _corrupt(tmp_path, table, edit):
    data = table.to_json()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(format="other"), "is not a W-Gates latency table"),
    (lambda d: d["tables"][0]["ms"][0].__setitem__(0, -1.0), "table 0 needs ms as .* finite numbers > 0"),
    (lambda d: d["tables"][0]["ms"].pop(), "table 0 needs ms as"),
    (lambda d: d["tables"][0].__setitem__("c_out", [1, 1]) if len(d["tables"][0]["c_out"]) > 1
     else d["tables"][0].__setitem__("c_in", [1, 1]), "grid that is not increasing"),
    (lambda d: d["tables"][0]["spec"].update(kind="exec"), "kind is not conv/linear"),
    (lambda d: d["tables"][0]["spec"].update(evil="__import__('os')"), "exactly the fields"),
    (lambda d: d["reference"].update(ms=float("nan")), "reference latency is nan ms"),
    (lambda d: d["channels"]["in_terms"].append([999, 0, 1.0]), "in_terms as \\[layer < "),
    (lambda d: d["layers"].append(["x", "no such key"]), "name no table"),
    (lambda d: d.pop("context"), "context"),
    (lambda d: d["calibration"].update(scale=0), "calibration scale is 0, not a finite number > 0"),
    (lambda d: d["reference"].update(ms=10 ** 400), "reference latency is .* not a finite number > 0"),
    (lambda d: d["channels"]["in_full"].__setitem__(0, 10 ** 30), "needs in_full as"),
    (lambda d: d["context"].update(sizes=["a"] * len(d["context"]["sizes"])), "as many group names"),
    (lambda d: d["context"]["groups"].pop(), "as many group names"),
    (lambda d: d["context"]["timing"].update(evil=1), "has a timing that is no Timing"),
    (lambda d: d["context"].update(batch=0), "needs a batch and an input shape"),
    (lambda d: d["channels"].update(sizes=[s + 1 for s in d["channels"]["sizes"]]), "group sizes differ"),
])
def test_a_malformed_file_is_refused_with_the_reason(tmp_path, edit, match):
    table = table_of(torchvision.models.resnet18(num_classes=10).eval())
    with pytest.raises(FileFormatError, match=match):
        LatencyTable.load(_corrupt(tmp_path, table, edit))


def test_collection_restores_the_models_mode():
    model = torchvision.models.resnet18(num_classes=10).train()
    table_of(model)
    assert model.training and all(m.training for m in model.modules())


def test_bad_arguments_are_refused():
    model = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(ConfigError, match="points=1 must be an integer >= 2"):
        collect_table(model, X, points=1, progress=False)
    with pytest.raises(ConfigError, match="round_to=0 must be an integer >= 1"):
        collect_table(model, X, round_to=0, progress=False)
    with pytest.raises(ConfigTypeError, match="image tensor"):
        collect_table(model, torch.zeros(3, 32, 32), progress=False)


def test_cli_table_eval_and_prune(tmp_path, capsys):
    table, samples, out = tmp_path / "t.json", tmp_path / "s.jsonl", tmp_path / "pruned"
    common = ["--model", "resnet18", "--input-size", "32", "--batch", "2", "--warmup", "0", "--repeats", "1"]
    with clock():
        assert main(["lpnet", "table", *common, "--points", "3", "--out", str(table)]) == 0
        assert main(["lpnet", "collect", *common, "--samples", "4", "--out", str(samples)]) == 0
        assert main(["lpnet", "eval", "--table", str(table), "--samples", str(samples),
                     "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "16 varying layers in 11 tables" in printed and "latency table (resnet18) on 4 candidates" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_test"] == 4 and report["network"]["mape"] == pytest.approx(0.0, abs=1e-3)  # exact device
    assert main(["lpnet", "table", *common, "--out", str(table)]) == 2  # exists: needs --force
    assert "exists; pass --force" in capsys.readouterr().err
    with clock():
        assert main(["prune", "--model", "resnet18", "--size", "32", "--latency-table", str(table),
                     "--latency-target", "0.5", "--latency-batch", "2", "--train-steps", "2", "--steps", "3",
                     "--finetune-steps", "1", "--bn-batches", "1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "latency (latency table device and batch): predicted" in printed
    result = json.loads((out / "report.json").read_text())
    lat, landing = result["latency"], result["latency_landing"]
    assert lat["cost_model"] == "latency table" and landing["within"]
    assert lat["measured_ms"] / lat["reference_ms"] == pytest.approx(0.5, rel=0.03)
    assert main(["prune", "--model", "resnet18", "--latency-table", str(table), "--lpnet", str(table),
                 "--latency-target", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "two latency models; pass one" in capsys.readouterr().err


def test_cli_round_to_auto_measures_the_multiple_and_prunes_on_it(tmp_path, capsys):
    table, out = tmp_path / "t.json", tmp_path / "pruned"
    common = ["--model", "resnet18", "--input-size", "32", "--batch", "2", "--warmup", "0", "--repeats", "1"]
    with blocked_clock(8):
        assert main(["lpnet", "table", *common, "--points", "3", "--round-to", "auto", "--out", str(table)]) == 0
        assert LatencyTable.load(table).round_to == 8
        assert main(["prune", "--model", "resnet18", "--size", "32", "--latency-table", str(table),
                     "--latency-target", "0.5", "--latency-batch", "2", "--round-to", "auto", "--train-steps", "2",
                     "--steps", "3", "--finetune-steps", "1", "--bn-batches", "1", "--out", str(out),
                     "--no-progress"]) == 0
    kept = json.loads((out / "report.json").read_text())["kept"]
    assert kept and all(k % 8 == 0 or k == full for k, full in kept.values())
    assert any(k < full for k, full in kept.values())
    capsys.readouterr()
    assert main(["prune", "--model", "resnet18", "--round-to", "auto", "--out", str(tmp_path / "x")]) == 2
    assert "--round-to auto takes the channel multiple a latency table measured" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", "--model", "resnet18", "--round-to", "fast", "--out", str(tmp_path / "y")])
    assert "'fast' is not a positive integer or 'auto'" in capsys.readouterr().err


def test_cli_collects_paired_samples_with_the_statistic_asked_for(tmp_path, capsys):
    from wgates_plugin.profiling import load_samples

    path = tmp_path / "s.jsonl"
    common = ["--model", "resnet18", "--input-size", "32", "--batch", "2", "--warmup", "0", "--repeats", "3"]
    with clock():
        assert main(["lpnet", "collect", *common, "--samples", "2", "--paired", "--statistic", "min",
                     "--out", str(path)]) == 0
    samples = load_samples(path)
    assert samples.context["paired"] is True and samples.context["timing"]["statistic"] == "min"
    assert all(r["ms"] == pytest.approx(samples.reference["ms"] * r["measured_ms"] / r["reference_beside_ms"])
               for r in samples.records)
    assert main(["lpnet", "collect", *common, "--samples", "2", "--paired", "--blocks",
                 "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "block timings (blocks=...) are not paired" in capsys.readouterr().err


class BatchNormClock(SimulatedClock):
    """The simulated device, where BatchNorm layers cost ``seconds_per_bn`` per element too: a cost that
    grows with the channels but lies outside the conv tables (what the calibration's scale is for)."""

    def __init__(self, seconds_per_bn: float) -> None:
        super().__init__(seconds_per_mac=1e-9, seconds_per_layer=2e-5)
        self.seconds_per_bn = seconds_per_bn

    def cost(self, module, output):
        if isinstance(module, nn.BatchNorm2d):
            return self.seconds_per_bn * output.numel()
        return super().cost(module, output)


def _mape(latency, space, clock_, seeds=range(4)):
    errors = []
    for i in seeds:
        counts = space.sample(i, 0, 0.5)
        with clock_:
            ms = statistics.median(latency.measure_times(space.build(counts)))
        errors.append(abs(latency.predicted_ms(counts) / ms - 1))
    return sum(errors) / len(errors)


def test_the_calibration_scale_absorbs_costs_outside_the_tables():
    model = torchvision.models.resnet18(num_classes=10).eval()
    space = CandidateSpace(model, X)
    scored = {}
    for calibrate in (1, 3):
        clock_ = BatchNormClock(seconds_per_bn=5e-8)
        with clock_:
            table = collect_table(model, X, batch=2, timing=TIMING, points=3, calibrate=calibrate, progress=False)
        assert len(table.calibration["points"]) == calibrate and table.calibration["points"][0]["fraction"] == 1.0
        scored[calibrate] = (table.scale, _mape(table.for_model(model, X), space, clock_))
    assert scored[1][0] == 1.0 and scored[3][0] > 1.0  # BN time grows with the channels: the tables' sum scaled up
    assert scored[3][1] < scored[1][1] / 2  # and the held-out error more than halves


class SlowerWhenThinnerClock(SimulatedClock):
    """The simulated device where a BatchNorm layer costs more the fewer elements it normalizes."""

    def cost(self, module, output):
        if isinstance(module, nn.BatchNorm2d):
            return 50.0 / output.numel()
        return super().cost(module, output)


def test_a_device_whose_thinner_networks_are_not_faster_cannot_be_calibrated():
    model = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(MeasurementError, match="thinner networks did not measure faster.*HINT"):
        with SlowerWhenThinnerClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
            collect_table(model, X, batch=2, timing=TIMING, points=3, progress=False)


# --------------------------------------------------------------------------- channel alignment ('auto')
def blocked_clock(block=8, factor=4.0):
    """A simulated device whose convs cost ``factor`` times as much per MAC at channel counts off ``block``."""
    return SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5, block=block, unaligned_factor=factor)


@pytest.mark.parametrize(("block", "expected"), [(1, 1), (4, 4), (8, 8), (16, 16)])
def test_measure_alignment_finds_the_devices_channel_block(block, expected):
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    with blocked_clock(block):
        found = measure_alignment(model, X, batch=2, timing=TIMING)
    assert found["round_to"] == expected
    space = CandidateSpace(model, X)
    for point in found["candidates"]:
        r = point["round_to"]
        space.check_counts(point["counts"])
        # every count a multiple of r and, where the group had room below its aligned count, not of 2 r
        assert all(c % r == 0 for c in point["counts"])
        assert sum(c % (2 * r) != 0 for c in point["counts"]) >= len(point["counts"]) // 2
        assert point["ms_per_gmac"] == pytest.approx(1e9 * point["ms"] / point["macs"])


def test_alignment_is_the_smallest_multiple_within_the_tolerance_of_the_best():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    with blocked_clock(8, factor=1.05):  # a 5 % penalty: within a 10 % tolerance, beyond a 1 % one
        loose = measure_alignment(model, X, batch=2, timing=TIMING, tolerance=0.1)
        strict = measure_alignment(model, X, batch=2, timing=TIMING, tolerance=0.001)
    assert loose["round_to"] == 1 and strict["round_to"] == 8
    best = min(p["ms_per_gmac"] for p in strict["candidates"])
    chosen = next(p for p in strict["candidates"] if p["round_to"] == 8)
    assert chosen["ms_per_gmac"] <= 1.001 * best
    assert all(p["ms_per_gmac"] > 1.001 * best for p in strict["candidates"] if p["round_to"] < 8)


def test_a_table_collected_with_round_to_auto_is_on_the_measured_multiple(tmp_path):
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    with blocked_clock(8):
        table = collect_table(model, X, batch=2, timing=TIMING, points=3, progress=False, round_to="auto")
    assert table.round_to == 8 and table.info["alignment"]["round_to"] == 8
    for t in table.tables.values():
        for axis, full in ((t.c_in, t.spec.in_channels), (t.c_out, t.spec.out_channels)):
            assert all(c % 8 == 0 or c == full for c in axis)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").round_to == 8
    with clock():  # no blocking on this device: every count stays open
        assert collect_table(model, X, batch=2, timing=TIMING, points=3, progress=False, round_to="auto").round_to == 1


def test_bad_alignment_arguments_are_refused():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for value in (0, "fast", 2.5, True):
        with pytest.raises(ConfigError, match=rf"round_to={value!r} must be an integer >= 1 or 'auto'"):
            collect_table(model, X, round_to=value, progress=False)
    with pytest.raises(ConfigError, match=r"candidates=\(1, 1\) must be distinct integers >= 1"):
        measure_alignment(model, X, candidates=(1, 1))
    with pytest.raises(ConfigError, match="fraction=1.0 must be in"):
        measure_alignment(model, X, fraction=1.0)
    with pytest.raises(ConfigError, match="unaligned_factor=0.5 must be"):
        SimulatedClock(block=8, unaligned_factor=0.5)
