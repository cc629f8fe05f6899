"""The comparison report's verdicts and tables, on hand-made records."""

from __future__ import annotations

import pytest

from benchmarks import report


def _runs(method: str, accs: list[float]) -> list[dict]:
    return [{"method": method, "seed": i, "top1": {"1": a}, "flops_ratio": 0.5, "params_ratio": 0.5,
             "latency_ms": 1.0, "prune_seconds": 0.1, "steps_used": 0, "info": {}} for i, a in enumerate(accs)]


@pytest.mark.parametrize(("ours", "rival", "verdict"), [
    ([0.95, 0.96, 0.97], [0.90, 0.91, 0.92], "wins"),
    ([0.90, 0.91, 0.92], [0.95, 0.96, 0.97], "loses"),
    ([0.95, 0.96, 0.97], [0.955, 0.96, 0.965], "ties"),  # gap 0 inside the spread
    ([0.95, 0.96, 0.97], [0.93, 0.95, 0.97], "ties"),  # gap 0.01 < the rival's std 0.02
    ([0.95, 0.96, 0.97], [0.93, 0.94, 0.95], "wins"),  # gap 0.02 > both stds (0.01)
])
def test_a_gap_counts_only_beyond_the_larger_standard_deviation(ours, rival, verdict):
    by_method = {"wgates": _runs("wgates", ours), "l1": _runs("l1", rival)}
    assert report.standing(by_method, "1").startswith(verdict)


def test_the_best_rival_excludes_both_wgates_modes_and_one_seed_gives_no_verdict():
    by_method = {"wgates": _runs("wgates", [0.9]), "wgates_latency": _runs("wgates_latency", [0.99]),
                 "uniform": _runs("uniform", [0.8])}
    text = report.standing(by_method, "1")
    assert "uniform width 80.0" in text and "one seed: no verdict" in text


def test_table_shows_mean_and_std_and_a_dash_for_missing_budgets():
    runs = _runs("l1", [0.9, 0.92])
    runs[0]["top1"]["3"], runs[1]["top1"]["3"] = None, None  # pruning alone exceeded that budget
    rows = report.table({}, {"l1": runs}, ["1", "3"])
    assert rows[2].startswith("| L1 (NNI) | 50.0 ± 0.0 % |")
    assert "| 91.0 ± 1.4 | — |" in rows[2]
