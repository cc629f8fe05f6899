"""benchmarks.noise_floor on deterministic devices: on the simulated device every protocol's floor is
exactly zero; on one whose speed drifts between the two passes only the paired protocol (a ratio to
the unpruned model timed beside the network) still has a zero floor."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks import noise_floor
from tests.test_profiler import DriftingClock
from wgates_plugin.efficiency.timing import STATISTICS, SimulatedClock


def test_every_floor_is_zero_on_a_device_without_noise():
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        result = noise_floor.run(noise_floor.QUICK)
    assert set(result["floors"]) == {f"{p}, {s}" for p in noise_floor.PROTOCOLS for s in STATISTICS}
    for floor in result["floors"].values():
        assert floor["n"] == 3 and floor["mape"] == pytest.approx(0.0, abs=1e-9) and floor["within_5"] == 1.0
    text = noise_floor.markdown(result)
    assert "| paired | iqm | 0.00 | 100 % | 100 % |" in text and "3 pruned candidates" in text


def test_a_drifting_device_raises_the_sequential_floor_and_not_the_paired_one():
    setup = replace(noise_floor.QUICK, repeats=4)  # rounds a b, b a, a b, b a: both at the same mean drift
    with DriftingClock(0.002):  # every timed forward 0.2 % slower than the one before
        result = noise_floor.run(setup)
    floors = result["floors"]
    for statistic in STATISTICS:
        assert floors[f"sequential, {statistic}"]["mape"] > 1.0
    for statistic in ("median", "iqm"):
        assert floors[f"paired, {statistic}"]["mape"] == pytest.approx(0.0, abs=1e-9)
