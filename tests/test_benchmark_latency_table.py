"""benchmarks.latency_table end to end on the deterministic simulated device: there the per-layer table is
exact (a conv's simulated latency is bilinear in its channels), so its held-out error is zero, the
noise floor is zero, and each latency-mode network measures what its cost model predicted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks import latency_table
from wgates_plugin.efficiency.timing import SimulatedClock


def test_the_quick_run_scores_both_cost_models_on_the_same_candidates(tmp_path):
    setup = replace(latency_table.QUICK, work=str(tmp_path))
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        result = latency_table.run(setup)
    m = result["models"]["resnet18"]
    assert m["table"]["n"] == m["lpnet"]["n"] == m["n_test"] == 2  # 20 % of 12 candidates, the same ones
    assert m["table"]["mape"] == pytest.approx(0.0, abs=1e-3) and m["noise"]["mape"] == pytest.approx(0.0, abs=1e-9)
    assert m["lpnet"]["mape"] > 0  # 10 networks and 30 epochs: an LPNet is no exact model
    rows = {r["method"]: r for r in result["networks"]}
    table = rows["latency mode (table)"]
    assert table["predicted_ms"] == pytest.approx(table["ms"], rel=1e-5)
    assert table["latency_ratio"] == pytest.approx(table["cost_ratio"], rel=1e-5) and table["cost_ratio"] <= 0.5
    for label in ("latency mode (LPNet)", "latency mode (table)"):
        assert rows[f"FLOPs mode at {label}'s FLOPs"]["flops_ratio"] <= rows[label]["flops_ratio"] + 1e-6
    text = latency_table.markdown(result)
    assert "| resnet18 | per-layer table | 2 | 0.00 |" in text and "single-layer timings" in text


def test_the_paired_protocol_runs_end_to_end_and_its_floor_is_zero_on_the_simulated_device(tmp_path):
    setup = replace(latency_table.QUICK, work=str(tmp_path), paired=True, statistic="iqm", targets=())
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        result = latency_table.run(setup)
    m = result["models"]["resnet18"]
    assert m["noise"]["mape"] == pytest.approx(0.0, abs=1e-9) and m["table"]["mape"] == pytest.approx(0.0, abs=1e-3)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["resnet18_32_paired_iqm.jsonl"]


def test_a_target_below_the_devices_floor_is_recorded_with_its_reason_and_the_run_goes_on(tmp_path):
    setup = replace(latency_table.QUICK, work=str(tmp_path), targets=(0.01,))
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        result = latency_table.run(setup)
    assert result["models"]["resnet18"]["table"]["mape"] == pytest.approx(0.0, abs=1e-3)  # the figures still came
    unreachable = {r["method"]: r["unreachable"] for r in result["networks"] if "unreachable" in r}
    assert set(unreachable) == {"latency mode (LPNet)", "latency mode (table)"}
    assert all(reason.startswith("target=0.01 is unreachable") for reason in unreachable.values())
    assert [r["method"] for r in result["networks"] if "unreachable" not in r] == ["baseline"]
    assert "| resnet18 | 0.01 | latency mode (table) | unreachable: target=0.01" in latency_table.markdown(result)


def test_an_lpnet_with_the_weight_decay_chosen_by_cv_is_scored_on_the_same_candidates(tmp_path):
    setup = replace(latency_table.QUICK, work=str(tmp_path), targets=(0.5,), weight_decays=(0.0, 1e-2))
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        result = latency_table.run(setup)
    m = result["models"]["resnet18"]
    cv = m["lpnet_cv"]
    assert cv["n"] == m["lpnet"]["n"] == m["n_test"] == 2
    assert set(cv["weight_decay"]["cv_mape"]) == {"0.0", "0.01"} and cv["weight_decay"]["chosen"] in (0.0, 0.01)
    if cv["weight_decay"]["chosen"] == 0.0:  # the same fit as the plain LPNet: the same held-out figures
        assert cv["mape"] == m["lpnet"]["mape"]
    assert "latency mode (LPNet, weight decay by CV)" in {r["method"] for r in result["networks"]}
    text = latency_table.markdown(result)
    assert f"| resnet18 | network LPNet, weight decay {cv['weight_decay']['chosen']:g} by CV | 2 |" in text
    assert "4-fold CV MAPE on the training candidates by weight decay: 0: " in text
