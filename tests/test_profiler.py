"""Latency profiler: timing, candidate space and physical candidates, sample files and resuming."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from wgates_plugin import ConfigError, ConfigTypeError, LayerBounds, WGates, WGatesConfig, count_macs
from wgates_plugin.efficiency import (
    FlopsModel,
    LatencyContextError,
    SimulatedClock,
    Timing,
    architecture_hash,
    device_name,
    measure_ms,
    record_layer_shapes,
    use_clock,
)
from wgates_plugin.efficiency.timing import CLOCKS, measure_interleaved, summarize
from wgates_plugin.profiling import CandidateSpace, capture_block_inputs, collect_latency, load_samples

FAST = Timing(warmup=1, repeats=2, threads=1)


def resnet10() -> nn.Module:
    """torchvision's ResNet with one BasicBlock per stage: resnet18's block type at half the depth."""
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()


class GroupedCNN(nn.Module):
    """A stem whose channels feed a grouped (not depthwise) conv: its group is tied over 4 conv groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)).mean((2, 3)))



@pytest.fixture(scope="module")
def r10():
    return resnet10(), torch.randn(2, 3, 32, 32)


# ---------------------------------------------------------------------------- timing
@pytest.mark.parametrize("kwargs, match", [
    ({"warmup": -1}, "warmup=-1 must be an integer >= 0"),
    ({"repeats": 0}, "repeats=0 must be an integer >= 1"),
    ({"repeats": 2.5}, "repeats=2.5 must be an integer"),
    ({"threads": 0}, "threads=0 must be None or an integer >= 1"),
    ({"clock": "tsc"}, "clock='tsc' is not one of \\('wall', 'cpu'\\)"),
    ({"clock": "cpu", "threads": 2}, "clock='cpu' needs threads=1 \\(got 2\\)"),
    ({"statistic": "mean"}, "statistic='mean' is not one of \\('median', 'min', 'iqm'\\)"),
])
def test_timing_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Timing(**kwargs)


def test_measure_restores_mode_and_threads_and_returns_milliseconds(r10):
    model, x = r10
    model.train()
    threads = torch.get_num_threads()
    ms = measure_ms(model, x, Timing(warmup=1, repeats=3, threads=1))  # the real clock: only its form is checked
    assert model.training and torch.get_num_threads() == threads
    assert math.isfinite(ms) and ms > 0


def test_the_latency_is_the_median_of_the_timed_forwards_and_warmups_are_not_timed():
    reads: list[int] = []
    forwards: list[int] = []  # clock readings made before each forward

    class Probe(nn.Module):
        def forward(self, t):
            forwards.append(len(reads))
            return t

    ticks = [0.0, 0.003, 1.0, 1.010, 2.0, 2.001, 3.0, 3.005, 4.0, 4.002]  # 3, 10, 1, 5, 2 ms

    def clock() -> float:
        reads.append(1)
        return ticks[len(reads) - 1]

    with use_clock(clock):
        ms = measure_ms(Probe(), torch.ones(1), Timing(warmup=2, repeats=5))
    assert ms == pytest.approx(3.0, rel=1e-12)  # the median of 3, 10, 1, 5, 2
    assert forwards == [0, 0, 1, 3, 5, 7, 9]  # two untimed warm-ups, then one forward between each pair


@pytest.mark.parametrize("statistic, expected", [("median", 3.0), ("min", 1.0), ("iqm", (2 + 3 + 5) / 3)])
def test_the_timing_statistic_turns_the_repeats_into_one_latency(statistic, expected):
    ticks = iter([0.0, 0.003, 1.0, 1.010, 2.0, 2.001, 3.0, 3.005, 4.0, 4.002])  # 3, 10, 1, 5, 2 ms
    with use_clock(lambda: next(ticks)):
        ms = measure_ms(nn.Identity(), torch.ones(1), Timing(warmup=0, repeats=5, statistic=statistic))
    assert ms == pytest.approx(expected, rel=1e-9)  # iqm: 5 // 4 = 1 dropped at each end of 1 2 3 5 10
    with pytest.raises(ConfigError, match="no timings to summarize"):
        summarize([], statistic)
    assert summarize([1.0, 1.0, 100.0], "iqm") == 1.0  # below 4 values nothing can be dropped: the median


def test_the_statistic_enters_a_measurement_context_only_when_not_the_median():
    from wgates_plugin.efficiency.latency import _timing_record, context_timing

    assert "statistic" not in _timing_record(Timing(threads=1))  # files written before it existed still bind
    record = _timing_record(Timing(threads=1, statistic="min"))
    assert record["statistic"] == "min" and context_timing({"timing": record}) == Timing(threads=1, statistic="min")


class DriftingClock(SimulatedClock):
    """A simulated device that slows down by ``drift`` (a fraction) at every timed forward: its speed
    drifts over a measurement, as a shared machine's does when other jobs come and go."""

    def __init__(self, drift: float) -> None:
        super().__init__()
        self.drift, self.reads = drift, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def cost(self, module: nn.Module, output: object) -> float:
        return super().cost(module, output) * (1 + self.drift * (self.reads // 2))


def test_interleaved_timing_takes_turns_and_alternates_the_order():
    order: list[str] = []

    class Probe(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, t):
            order.append(self.name)
            return t

    with use_clock(lambda: 0.0):
        times = measure_interleaved([Probe("a"), Probe("b"), Probe("c")], torch.ones(1), Timing(warmup=1, repeats=3))
    assert order == list("abc") + list("abc" "cba" "abc")  # one warm-up each, then rounds, every other reversed
    assert [len(t) for t in times] == [3, 3, 3]
    with pytest.raises(ConfigTypeError, match="non-empty list of modules"):
        measure_interleaved([], torch.ones(1))


def test_paired_collection_records_the_ratio_to_the_unpruned_model_exactly_under_a_drifting_device(r10, tmp_path):
    model, x = r10
    space = CandidateSpace(model, x)
    timing = Timing(warmup=1, repeats=4, threads=1)  # an even number of rounds: a b b a a b b a
    batch = torch.zeros(2, 3, 32, 32)
    with SimulatedClock():  # the device at a constant speed: the true ratios
        full = measure_ms(model, batch, timing)
        true = [measure_ms(space.build(space.sample(i, 0, 0.5)), batch, timing) / full for i in range(3)]
    with DriftingClock(0.01):
        paired = collect_latency(model, x, tmp_path / "p.jsonl", 3, batch=2, timing=timing, paired=True,
                                 progress=False)
    with DriftingClock(0.01):
        plain = collect_latency(model, x, tmp_path / "s.jsonl", 3, batch=2, timing=timing, progress=False)
    ref = paired.reference["ms"]
    assert [r["ms"] / ref for r in paired.records] == pytest.approx(true, rel=1e-9)  # the drift cancels
    assert all(r["ms"] == pytest.approx(ref * r["measured_ms"] / r["reference_beside_ms"], rel=1e-12)
               for r in paired.records)
    drifted = [r["ms"] / plain.reference["ms"] for r in plain.records]
    assert all(d > t * 1.01 for d, t in zip(drifted, true))  # unpaired: later candidates look slower
    assert paired.context["paired"] is True and "paired" not in plain.context
    assert len(paired.references) == 1
    with pytest.raises(LatencyContextError, match="paired"):
        collect_latency(model, x, tmp_path / "p.jsonl", 4, batch=2, timing=timing, progress=False)
    with pytest.raises(ConfigError, match="block timings .* are not paired"):
        collect_latency(model, x, tmp_path / "b.jsonl", 1, batch=2, timing=timing, paired=True, blocks=True)


@pytest.mark.parametrize("name, other", [("wall", "cpu"), ("cpu", "wall")])
def test_timing_clock_names_the_clock_that_is_read(monkeypatch, name, other):
    assert CLOCKS == {"wall": time.perf_counter, "cpu": time.process_time}
    ticks = iter(range(100))
    monkeypatch.setitem(CLOCKS, name, lambda: float(next(ticks)))  # one second per reading
    monkeypatch.setitem(CLOCKS, other, lambda: pytest.fail(f"the {other!r} clock was read"))
    assert measure_ms(nn.Identity(), torch.ones(1), Timing(warmup=1, repeats=3, threads=1, clock=name)) == 1000.0


def test_cpu_clock_is_refused_off_the_cpu(r10):
    model, x = r10
    with pytest.raises(ConfigError, match="clock='cpu' times CPU work; on meta use clock='wall'"):
        measure_ms(model, x, Timing(warmup=1, repeats=3, threads=1, clock="cpu"), device="meta")


def test_simulated_clock_charges_every_conv_and_linear_forward_by_its_macs():
    model, x = GroupedCNN().eval(), torch.randn(3, 3, 16, 16)
    # a: 3 x 16 x 16 x 16 outputs of 3*3*3 MACs; b: the same outputs of 4*3*3 (4 groups); head: 3 x 5 of 16
    forward = 1e-9 * (3 * 16 * 256 * 27 + 3 * 16 * 256 * 36 + 3 * 5 * 16) + 3 * 1e-4
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=1e-4) as clock:
        ms = measure_ms(model, x, Timing(warmup=1, repeats=3))
        assert clock() == pytest.approx(4 * forward, rel=1e-12)  # one warm-up and three timed forwards
    assert ms == pytest.approx(1e3 * forward, rel=1e-12)
    before = clock()
    model(x)
    assert clock() == before  # outside the block no hook is left


def test_clocks_nest_and_are_checked():
    outer, inner = SimulatedClock(1.0, 0.0), SimulatedClock(0.0, 1.0)
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with outer:
        with inner:
            assert measure_ms(conv, torch.ones(1, 1, 2, 2), Timing(warmup=0, repeats=1)) == 1000.0  # 1 s per layer
        assert measure_ms(conv, torch.ones(1, 1, 2, 2), Timing(warmup=0, repeats=1)) == 4000.0  # 4 MACs at 1 s
    with pytest.raises(ConfigError, match=r"seconds_per_mac=-1 must be a finite number >= 0"):
        SimulatedClock(seconds_per_mac=-1)
    with pytest.raises(ConfigError, match=r"seconds_per_layer=nan must be a finite number >= 0"):
        SimulatedClock(seconds_per_layer=float("nan"))
    with pytest.raises(ConfigTypeError, match=r"use_clock\(\) takes a callable returning seconds, got int"):
        with use_clock(3):  # type: ignore[arg-type]
            pass


def test_measure_runs_under_no_grad_and_eval():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return x * 2

    measure_ms(Probe().train(), torch.ones(3), Timing(warmup=2, repeats=3))
    assert seen == [(False, False)] * 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine; the CUDA path "
                    "(synchronize around every timed forward) is exercised only where a GPU exists")
def test_measure_on_cuda_synchronizes_and_names_the_gpu(r10):
    model, _ = r10
    x = torch.randn(4, 3, 32, 32, device="cuda")
    assert measure_ms(model, x, FAST) > 0
    assert device_name("cuda") == f"cuda: {torch.cuda.get_device_name(0)}"


def test_device_name_names_the_cpu():
    name = device_name("cpu")
    assert name.startswith("cpu: ") and len(name) > 5


def test_architecture_hash_ignores_weights_but_not_widths():
    a, b = resnet10(), resnet10()
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert architecture_hash(a) == architecture_hash(b)
    assert architecture_hash(a) != architecture_hash(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=11))


# ---------------------------------------------------------------------------- candidate space
def test_space_uses_the_groups_and_bounds_wgates_uses(r10):
    model, x = r10
    config = WGatesConfig(mode="none", bounds=LayerBounds(0.25, 0.75))
    space = CandidateSpace(model, x, config)
    wg = WGates(model, x, config)
    wg.remove()
    assert [g.name for g in space.groups] == [g.name for g in wg.groups]
    assert space.bounds == wg.unit_bounds()


def test_samples_are_deterministic_and_inside_the_bounds(r10):
    model, x = r10
    space = CandidateSpace(model, x, WGatesConfig(mode="none", bounds=LayerBounds(0.25, 0.75)))
    draws = [space.sample(i, seed=3) for i in range(40)]
    assert draws == [space.sample(i, seed=3) for i in range(40)]
    assert draws != [space.sample(i, seed=4) for i in range(40)]
    for counts in draws:
        space.check_counts(counts)
    flat = [c / s for counts in draws for c, s in zip(counts, space.sizes)]
    assert min(flat) == 0.25 and max(flat) == 0.75  # the ends of the range are reached


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_spread_zero_prunes_every_group_alike(r10, spread):
    model, x = r10
    space = CandidateSpace(model, x)
    ratios = {round(c / s, 1) for c, s in zip(space.sample(5, spread=spread), space.sizes)}
    assert (len(ratios) == 1) == (spread == 0.0)


def test_built_candidate_has_the_counts_and_the_flops_the_flops_model_predicts(r10):
    model, x = r10
    space = CandidateSpace(model, x)
    flops = FlopsModel(record_layer_shapes(model, x), space.groups)
    counts = space.sample(7)
    pruned = space.build(counts)
    modules = dict(pruned.named_modules())
    assert [modules[g.name].out_channels for g in space.groups] == counts
    assert count_macs(pruned, x) == pytest.approx(float(flops.cost(torch.tensor(counts, dtype=torch.float))),
                                                  rel=1e-6)
    assert count_macs(model, x) == pytest.approx(flops.reference(), rel=1e-6)  # the original is untouched


def test_grouped_conv_candidates_stay_valid_grouped_convs():
    model, x = GroupedCNN().eval(), torch.randn(2, 3, 16, 16)
    space = CandidateSpace(model, x)
    assert [g.name for g in space.groups] == ["b.0", "a.0"] and space.bounds[1].tie == 4
    pruned = space.build([16, 8])
    assert (pruned.b[0].in_channels, pruned.b[0].groups) == (8, 4)
    assert pruned(x).shape == (2, 5)
    with pytest.raises(ConfigError, match="'a.0' cannot keep 6 channels: allowed multiples of 4 in \\[4, 16\\]"):
        space.build([16, 6])


def test_counts_of_the_wrong_length_are_refused(r10):
    model, x = r10
    space = CandidateSpace(model, x)
    with pytest.raises(ConfigError, match="counts has 2 entries, the model has 4 gated groups"):
        space.build([8, 8])


# ---------------------------------------------------------------------------- collection and files
def test_collection_writes_context_reference_and_candidates(r10, tmp_path):
    model, x = r10
    path = tmp_path / "s.jsonl"
    samples = collect_latency(model, x, path, 3, batch=2, timing=FAST, model_name="resnet10", progress=False)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    ctx = lines[0]["context"]
    assert ctx["model"] == "resnet10" and ctx["model_hash"] == architecture_hash(model)
    assert ctx["device"] == device_name("cpu") and ctx["torch"] == torch.__version__
    assert (ctx["threads"], ctx["batch"], ctx["input_shape"]) == (1, 2, [3, 32, 32])
    assert ctx["groups"] == [g.name for g in CandidateSpace(model, x).groups]
    assert [rec["index"] for rec in lines[1:]] == [-1, 0, 1, 2]
    assert samples.reference["counts"] == ctx["sizes"] and all(rec["ms"] > 0 for rec in lines[1:])
    assert load_samples(path).records == samples.records


def test_collected_latencies_are_the_built_candidates_timed_by_the_injected_clock(r10, tmp_path):
    model, x = r10
    space = CandidateSpace(model, x)
    with SimulatedClock() as clock:
        samples = collect_latency(model, x, tmp_path / "s.jsonl", 4, batch=2, timing=FAST, blocks=True,
                                  progress=False)
        batch = torch.zeros(2, 3, 32, 32)
        for rec in samples.records:
            assert rec["ms"] == pytest.approx(measure_ms(space.build(rec["counts"]), batch, FAST), rel=1e-12)
    # outside the blocks: the stem conv (2 x 64 x 16 x 16 outputs of 3*7*7) and the fc (2 x 10 of 512),
    # neither pruned (the stem is shortcut-coupled, the fc reads the unpruned last stage)
    outside = 1e3 * (clock.seconds_per_mac * (2 * 64 * 256 * 147 + 2 * 10 * 512) + 2 * clock.seconds_per_layer)
    for rec in [samples.reference, *samples.records]:
        assert rec["ms"] - sum(b["ms"] for b in rec["blocks"]) == pytest.approx(outside, rel=1e-9)
    assert samples.reference["ms"] > max(rec["ms"] for rec in samples.records)


def test_reference_is_remeasured_and_its_median_is_the_reference(r10, tmp_path):
    model, x = r10
    path = tmp_path / "s.jsonl"
    samples = collect_latency(model, x, path, 5, batch=2, timing=FAST, reference_every=2, blocks=True,
                              progress=False)
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]]
    assert indices == [-1, 0, 1, -1, 2, 3, -1, 4]
    refs = samples.references
    assert samples.reference["ms"] == sorted(r["ms"] for r in refs)[1]
    assert samples.reference["blocks"][2]["ms"] == sorted(r["blocks"][2]["ms"] for r in refs)[1]
    assert load_samples(path).reference == samples.reference


def test_resume_skips_done_candidates_and_survives_a_torn_line(r10, tmp_path):
    model, x = r10
    path = tmp_path / "s.jsonl"
    collect_latency(model, x, path, 2, batch=2, timing=FAST, progress=False)
    lines = path.read_text().splitlines()
    marked = json.loads(lines[2])
    marked["ms"] = 12345.0  # a value no measurement gives: if record 0 were re-measured it would change
    torn = json.dumps({"index": 2, "counts": [1, 1, 1, 1], "ms": 1.0})[:20]  # interrupted mid-write
    path.write_text("\n".join(lines[:2] + [json.dumps(marked)] + lines[3:]) + "\n" + torn)
    assert len(load_samples(path)) == 2  # the torn line is ignored on reading
    samples = collect_latency(model, x, path, 4, batch=2, timing=FAST, progress=False)
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]]
    assert indices == [-1, 0, 1, 2, 3]  # torn line gone, 0 and 1 kept, only 2 and 3 measured
    assert samples.records[0]["ms"] == 12345.0


def test_resuming_with_another_context_is_refused(r10, tmp_path):
    model, x = r10
    path = tmp_path / "s.jsonl"
    collect_latency(model, x, path, 1, batch=2, timing=FAST, progress=False)
    with pytest.raises(LatencyContextError, match="batch: saved 2, now 4.*HINT: write to a new file"):
        collect_latency(model, x, path, 2, batch=4, timing=FAST, progress=False)


def test_bad_collection_arguments(r10, tmp_path):
    model, x = r10
    with pytest.raises(ConfigTypeError, match="image tensor"):
        collect_latency(model, (x,), tmp_path / "a.jsonl", 1)
    with pytest.raises(ConfigError, match="samples=-1 must be an integer >= 0"):
        collect_latency(model, x, tmp_path / "a.jsonl", -1)
    with pytest.raises(ConfigError, match="reference_every=0 must be an integer >= 1"):
        collect_latency(model, x, tmp_path / "a.jsonl", 3, reference_every=0)


def test_a_file_that_is_not_samples_is_refused(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ConfigError, match="is not a latency samples file"):
        load_samples(path)


def test_block_features_are_the_built_candidates_real_channel_counts(r10, tmp_path):
    model, x = r10
    samples = collect_latency(model, x, tmp_path / "b.jsonl", 3, batch=2, timing=FAST, blocks=True,
                              config=WGatesConfig(mode="none", prune_shortcuts=True), progress=False)
    layout = samples.context["blocks"]["layout"]
    assert layout == {"torchvision.models.resnet.BasicBlock": ["conv1", "conv2", "downsample.0"]}
    space = CandidateSpace(model, x, WGatesConfig(mode="none", prune_shortcuts=True))
    for rec in samples.records:
        modules = dict(space.build(rec["counts"]).named_modules())
        assert [b["name"] for b in rec["blocks"]] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
        for block in rec["blocks"]:
            for slot, feats in zip(["conv1", "conv2", "downsample.0"], torch.tensor(block["features"]).view(3, 5)):
                conv = modules.get(f"{block['name']}.{slot}")
                expected = [0, 0] if conv is None else [conv.in_channels, conv.out_channels]
                assert feats[:2].tolist() == expected
            assert block["ms"] > 0


def test_block_inputs_are_captured_as_the_network_feeds_them(r10):
    model, x = r10
    captured = capture_block_inputs(model, x, ["layer2.0", "layer4.0"])
    assert captured["layer2.0"][0].shape == (2, 64, 8, 8)
    assert captured["layer4.0"][0].shape == (2, 256, 2, 2)


def test_a_samples_file_written_before_runtimes_existed_still_resumes(tmp_path):
    """Its context's timing has no 'runtime' key: PyTorch timing still matches it."""
    import json

    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "old.jsonl"
    timing = Timing(warmup=0, repeats=1, threads=1)
    with SimulatedClock():
        collect_latency(model, torch.zeros(2, 3, 16, 16), path, samples=1, batch=1, timing=timing, progress=False)
        lines = path.read_text().splitlines()
        context = json.loads(lines[0])
        assert "runtime" not in context["context"]["timing"]  # what older files hold
        again = collect_latency(model, torch.zeros(2, 3, 16, 16), path, samples=2, batch=1, timing=timing,
                                progress=False)
    assert len(again) == 2
