"""The validation screen's paired report, on hand-made rows (no training)."""

from __future__ import annotations

import pytest

from benchmarks import recipe
from wgates_plugin.errors import ConfigError

KEYS = {0.0: "plain", 0.5: "kd"}


def _row(variant: str, seed: int, pruned: float, val: dict[str, float], key: str = "plain",
         baseline: str | None = "a", budget: float = 0.25) -> dict:
    return {"model": "resnet20", "protocol_key": key, "budget": budget, "seed": seed, "variant": variant,
            "val_pruned": pruned, "val": val, "baseline_sha256": baseline}


def test_pairs_seeds_on_one_baseline_and_states_the_rows_left_out():
    rows = [_row("l1", s, 0.50, {"1": 0.88, "3": 0.90}) for s in range(3)]
    rows += [_row("l1", s, 0.50 + 0.01 * s, {"1": 0.90, "3": 0.91}, key="kd") for s in range(3)]
    rows.append(_row("l1", 3, 0.1, {"1": 0.1, "3": 0.1}, baseline=None))  # unrecorded baseline: left out
    rows.append(_row("l1", 4, 0.1, {"1": 0.1, "3": 0.1}, key="kd", baseline="b"))  # no partner on baseline b
    text = recipe.paired_report(rows, [("l1@0.5", "l1")], KEYS)
    assert text.startswith("Rows without a recorded baseline, left out: 1.")
    assert "| 25% | right after pruning + BN | 51.0 | 50.0 | **ties** +1.00 (+0.00 / +1.00 / +2.00) |" in text
    assert "| 25% | @ 1 epochs | 90.0 | 88.0 | **wins** +2.00 (+2.00 / +2.00 / +2.00) |" in text
    assert "| 25% | @ 3 epochs | 91.0 | 90.0 | **wins** +1.00" in text


def test_a_seed_whose_two_runs_started_from_different_baselines_is_not_paired():
    rows = [_row("l1", 0, 0.5, {"1": 0.9}), _row("wg_warm_lr1e-3", 0, 0.6, {"1": 0.9}, baseline="b")]
    text = recipe.paired_report(rows, [("wg_warm_lr1e-3", "l1")], KEYS)
    assert "| 25% |" not in text


@pytest.mark.parametrize(("spec", "message"), [
    ("l2", "no variant, rival or method 'l2'"),
    ("l1@half", "the share after '@' must be a number"),
    ("l1@0.3", "no protocol key for distill=0.3"),
])
def test_a_bad_side_names_the_value(spec, message):
    with pytest.raises(ConfigError, match=message):
        recipe.paired_report([_row("l1", 0, 0.5, {"1": 0.9})], [(spec, "l1")], KEYS)


def test_the_fine_tuning_lr_is_chosen_per_point_on_the_seeds_every_lr_has():
    keys = {0.01: "plain", 0.003: "lr3"}
    rows = [_row("l1", s, 0.5, {"1": 0.88, "3": 0.91}) for s in range(2)]
    rows += [_row("l1", s, 0.5, {"1": 0.89, "3": 0.90}, key="lr3") for s in range(2)]
    rows.append(_row("l1", 2, 0.5, {"1": 0.99, "3": 0.99}, key="lr3"))  # no run at 0.01: left out
    rows += [_row("uniform", 0, 0.5, {"1": 0.80}), _row("uniform", 0, 0.5, {"1": 0.80}, key="lr3")]  # a tie
    rows.append(_row("uniform", 1, 0.5, {"1": 0.95}, key="lr3", baseline="b"))  # no partner on baseline b
    text = recipe.lr_choice(rows, keys, ["l1", "uniform"])
    assert "| l1 | 25% | @ 1 epochs | 88.00 | 89.00 | 2 | 0.003 |" in text
    assert "| l1 | 25% | @ 3 epochs | 91.00 | 90.00 | 2 | 0.01 |" in text
    assert "| uniform | 25% | @ 1 epochs | 80.00 | 80.00 | 1 | 0.01 |" in text  # a tie keeps the larger lr
