"""benchmarks.latency_pareto: the equal-top-1 / equal-latency comparison exactly on synthetic runs, and the
whole pipeline on the bundled digits with the deterministic simulated device (PyTorch runtime)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks import latency_pareto
from benchmarks.latency_pareto import _interpolate, compare, pooled
from wgates_plugin.efficiency.timing import SimulatedClock


def _run(mode, target, seed, top1):
    """A recorded run as compare() and pooled() read it: top-1 at a 3-epoch budget."""
    return {"mode": mode, "target": target, "seed": seed, "flops_ratio": target, "top1": {"3": top1}}


def test_interpolation_on_a_piecewise_linear_curve():
    points = [(0.90, 2.0), (0.80, 1.0), (0.85, 1.4)]  # unsorted on purpose
    assert _interpolate(points, 0.875) == pytest.approx(1.7)
    assert _interpolate(points, 0.80) == pytest.approx(1.0)
    assert _interpolate(points, 0.95) is None and _interpolate(points, 0.7) is None


def test_compare_reads_flops_mode_at_equal_top1_and_equal_latency_per_seed():
    records = [_run("flops", 0.6, 0, 0.90), _run("flops", 0.4, 0, 0.80), _run("latency", 0.5, 0, 0.85),
               _run("flops", 0.6, 1, 0.70), _run("flops", 0.4, 1, 0.60), _run("latency", 0.5, 1, 0.95)]
    latency = {"flops:0.6:0": 2.0, "flops:0.4:0": 1.0, "latency:0.5:0": 1.2,
               "flops:0.6:1": 2.0, "flops:0.4:1": 1.0, "latency:0.5:1": 1.2}
    rows = compare(records, latency, "3")
    assert [r["seed"] for r in rows] == [0, 1]
    first = rows[0]
    assert first["flops_mode_ms_at_equal_top1"] == pytest.approx(1.5)  # top-1 0.85 is half-way: 1.5 ms
    assert first["latency_saving_pct"] == pytest.approx(20.0)  # 1.2 ms instead of 1.5
    assert first["flops_mode_top1_at_equal_latency"] == pytest.approx(0.82)  # at 1.2 ms FLOPs mode has 82 %
    assert first["top1_gain_points"] == pytest.approx(3.0)
    assert rows[1]["flops_mode_ms_at_equal_top1"] is None and rows[1]["latency_saving_pct"] is None  # 95 % is
    # beyond seed 1's FLOPs-mode curve: no extrapolation, and seed 0's curve is never used for seed 1


def test_pooled_reads_the_mean_latency_mode_point_against_the_mean_flops_curve():
    records = [_run("flops", 0.6, 0, 0.90), _run("flops", 0.4, 0, 0.80), _run("latency", 0.5, 0, 0.86),
               _run("flops", 0.6, 1, 0.80), _run("flops", 0.4, 1, 0.70), _run("latency", 0.5, 1, 0.84)]
    latency = {"flops:0.6:0": 2.0, "flops:0.4:0": 1.0, "latency:0.5:0": 1.1,
               "flops:0.6:1": 2.2, "flops:0.4:1": 1.2, "latency:0.5:1": 1.3}
    (row,) = pooled(records, latency, "3")
    # mean curve: (1.1 ms, 75 %) and (2.1 ms, 85 %); latency mode's mean point: (1.2 ms, 85 %)
    assert row["seeds"] == 2 and row["latency_ms"] == pytest.approx(1.2) and row["top1"] == pytest.approx(0.85)
    assert row["flops_mode_ms_at_equal_top1"] == pytest.approx(2.1)
    assert row["latency_saving_pct"] == pytest.approx(100 * (1 - 1.2 / 2.1))
    assert row["flops_mode_top1_at_equal_latency"] == pytest.approx(0.76)
    assert row["top1_gain_points"] == pytest.approx(9.0)
    per_seed = compare(records, latency, "3")  # each seed on its own curve: 1.6 ms, and 84 % is beyond seed 1's
    assert [r["flops_mode_ms_at_equal_top1"] for r in per_seed] == [pytest.approx(1.6), None]


def test_the_quick_run_on_the_simulated_device(tmp_path):
    setup = replace(latency_pareto.QUICK, out=str(tmp_path / "out"), cache=str(tmp_path / "cache"), runtime="pytorch",
                    model="resnet20", round_to="auto", flops_round_to=1)
    # a device whose convs are 3 x slower per MAC off 8-channel blocks: latency mode's table measures it
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5, block=8, unaligned_factor=3.0):
        result = latency_pareto.run(setup)
    runs = {(r["mode"], r["target"]): r for r in result["runs"]}
    assert result["table"]["alignment"]["round_to"] == 8
    assert {r["mode"]: r["round_to"] for r in result["runs"]} == {"flops": 1, "latency": 8}
    assert all(k % 8 == 0 or k == full for k, full in runs[("latency", 0.4)]["kept"].values())
    assert set(runs) == {("flops", 0.5), ("flops", 0.3), ("latency", 0.4)}
    assert runs[("flops", 0.5)]["flops_ratio"] == pytest.approx(0.5, rel=0.05)
    latency = runs[("latency", 0.4)]
    assert latency["landing"]["within"]  # the simulated device is exact: the landing meets the target
    assert latency["latency_ratio"] == pytest.approx(0.4, rel=0.03)  # and the final re-timing agrees
    assert len(result["comparison"]) == 1 and result["table"]["scale"] == pytest.approx(1.0, rel=1e-4)
    assert "| 0 | latency | 0.4 |" in latency_pareto.markdown(result)
    assert "round_to: FLOPs mode 1, latency mode auto (measured: 8;" in latency_pareto.markdown(result)


def test_the_harness_refuses_two_latency_models_at_once():
    from benchmarks import learned
    from wgates_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="predictor .* or cost_model .*not both"):
        learned.wgates(None, gate_lr=1e-3, weight_lr=0.01, momentum=0.9, weight_decay=5e-4, predictor=object(),
                       cost_model=object())
