"""Closed-loop landing on measured latency, against a deterministic simulated device whose latency is
not proportional to the FLOPs the budget is expressed in (a fixed cost per layer)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from wgates_plugin import WGates
from wgates_plugin.efficiency.timing import SimulatedClock, Timing, measure_times
from wgates_plugin.errors import ConfigError
from wgates_plugin.latency_landing import land_on_latency

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def device(model):
    return measure_times(model, X, Timing(warmup=0, repeats=3))


@pytest.fixture
def gated():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    wg = WGates(model, X, target=0.5)
    yield model, wg
    wg.remove()


def test_the_loop_corrects_a_budget_whose_network_measures_slower_than_asked(gated):
    model, wg = gated
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=5e-4):  # fixed per-layer cost: latency != FLOPs
        reference = device(model)[0]
        landing = land_on_latency(wg, 0.5, device, reference_ms=reference)
        again = device(landing.model)[0]
    first = landing.rounds[0].measured_ms / reference
    assert first > 0.5 * 1.03  # frozen at 50 % of the FLOPs, the network measures well above 50 % of the time
    assert len(landing.rounds) > 1 and landing.within
    assert abs(landing.measured_ratio / 0.5 - 1) <= 0.03 and again == landing.rounds[landing.chosen].measured_ms
    chosen = landing.rounds[landing.chosen]
    assert wg.flops_ratio() <= chosen.budget * (1 + 1e-6) and chosen.budget < 0.5  # wg is frozen where it landed
    assert chosen.spread_ms == 0.0  # the simulated device has no noise
    report = landing.report()
    assert report["within"] and abs(report["gap_pct"]) <= 3 and len(report["rounds"]) == len(landing.rounds)


def test_an_unreachable_target_keeps_the_fastest_network_and_reports_the_gap(gated):
    model, wg = gated
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=5e-2):  # the layers' fixed cost dominates
        reference = device(model)[0]
        landing = land_on_latency(wg, 0.5, device, reference_ms=reference, rounds=4)
    assert not landing.within and landing.report()["gap_pct"] > 3
    measured = [r.measured_ms for r in landing.rounds]
    assert landing.rounds[landing.chosen].measured_ms == min(measured)  # none reaches 30 %: the fastest is kept
    assert landing.rounds[-1].budget == pytest.approx(wg.floor_ratio())  # the loop went down to the floor


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"target": 0.0}, "target=0.0 must be in \\(0, 1\\]"),
    ({"target": 0.5, "tolerance": 0.6}, "tolerance=0.6 must be in \\(0, 0.5\\)"),
    ({"target": 0.5, "rounds": 0}, "rounds=0 must be an int >= 1"),
    ({"target": 0.5, "reference_ms": float("nan")}, "reference_ms=nan must be a number > 0"),
])
def test_bad_values_are_refused(gated, kwargs, match):
    _, wg = gated
    with pytest.raises(ConfigError, match=match):
        land_on_latency(wg, measure=device, **kwargs)


def test_re_measuring_the_reference_around_each_candidate_cancels_a_drifting_device(gated):
    model, wg = gated
    unpruned = torchvision.models.resnet18(num_classes=10).eval()  # the same architecture: the same latency
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=5e-4):
        reference = device(unpruned)[0]  # measured before the device slowed down
        calls = [0]

        def drifting(m):  # another job ramping up: every measurement 20 % slower than the one before
            calls[0] += 1
            return [t * (1 + 0.2 * calls[0]) for t in device(m)]

        stale = land_on_latency(wg, 0.5, drifting, reference_ms=reference)
        stale_truth = device(stale.model)[0] / reference
        calls[0] = 0
        fresh = land_on_latency(wg, 0.5, drifting, reference_ms=reference, reference=unpruned)
        fresh_truth = device(fresh.model)[0] / reference  # on the undisturbed device
    assert fresh.within and abs(fresh_truth / 0.5 - 1) <= 0.03  # the linear drift cancels exactly
    assert abs(stale_truth / 0.5 - 1) > 0.03  # against the stale reference the landing lands elsewhere
    assert all(r.reference_ms is not None for r in fresh.rounds) and stale.rounds[0].reference_ms is None
    assert fresh.report()["reference_ms"] == fresh.rounds[fresh.chosen].reference_ms
