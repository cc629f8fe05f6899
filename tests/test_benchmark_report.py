"""The comparison report's verdicts and tables, on hand-made records."""

from __future__ import annotations

import pytest

from benchmarks import report


def _runs(method: str, accs: list[float]) -> list[dict]:
    return [{"method": method, "seed": i, "top1": {"1": a}, "flops_ratio": 0.5, "params_ratio": 0.5,
             "latency_ms": 1.0, "prune_seconds": 0.1, "steps_used": 0, "info": {}} for i, a in enumerate(accs)]


@pytest.mark.parametrize(("ours", "rival", "verdict"), [
    ([0.95, 0.96, 0.97], [0.90, 0.91, 0.92], "**wins** +5.00 (+5.00 / +5.00 / +5.00)"),  # the same gap every seed
    ([0.90, 0.91, 0.92], [0.95, 0.96, 0.97], "**loses** -5.00"),
    ([0.95, 0.96, 0.97], [0.95, 0.96, 0.97], "**ties** +0.00"),
    ([0.95, 0.96, 0.97], [0.94, 0.97, 0.96], "**ties** +0.33 (+1.00 / -1.00 / +1.00)"),  # p = 0.42
    ([0.95, 0.96, 0.97, 0.98], [0.94, 0.945, 0.96, 0.965], "**wins** +1.25"),  # diffs 1, 1.5, 1, 1.5: p = 0.002
])
def test_verdicts_are_paired_per_seed(ours, rival, verdict):
    assert report.paired(_runs("wgates", ours), _runs("l1", rival), "1").startswith(verdict)


def test_a_paired_verdict_needs_three_seeds_and_skips_unpaired_ones():
    assert report.paired(_runs("wgates", [0.9, 0.8]), _runs("l1", [0.8, 0.8]), "1") == \
        "+10.00 / +0.00 (2 seeds: no verdict)"
    ours, rival = _runs("wgates", [0.9, 0.9, 0.9, 0.9]), _runs("l1", [0.8, 0.8, 0.8])  # seed 3 has no rival run
    assert report.paired(ours, rival, "1") == "**wins** +10.00 (+10.00 / +10.00 / +10.00)"


def test_seeds_run_on_different_baselines_are_not_paired():
    ours, rival = _runs("wgates", [0.9, 0.9, 0.9, 0.9]), _runs("l1", [0.8, 0.8, 0.8, 0.7])
    for r in ours + rival:
        r["baseline_sha256"] = "a"
    rival[3]["baseline_sha256"] = "b"  # seed 3's rival started from a re-trained baseline
    assert report.paired(ours, rival, "1") == "**wins** +10.00 (+10.00 / +10.00 / +10.00)"


def test_table_shows_mean_and_std_and_a_dash_for_missing_budgets():
    runs = _runs("l1", [0.9, 0.92])
    runs[0]["top1"]["3"], runs[1]["top1"]["3"] = None, None  # pruning alone exceeded that budget
    rows = report.table({}, {"l1": runs}, ["1", "3"])
    assert rows[2].startswith("| L1 (NNI) | 50.0 ± 0.0 % |")
    assert "| 91.0 ± 1.4 | — |" in rows[2]
