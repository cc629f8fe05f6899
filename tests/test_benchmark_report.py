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


def _checkpoints(pruned: tuple[float, float], **curve: tuple[float | None, float | None]) -> dict:
    """One run: (test, validation) top-1 right after pruning and at each budget (keys "1", "3", ...)."""
    return {"seed": 0, "top1_pruned": pruned[0], "val_top1_pruned": pruned[1],
            "top1": {e[1:]: t for e, (t, _) in curve.items()}, "val_top1": {e[1:]: v for e, (_, v) in curve.items()}}


def test_the_checkpoint_is_chosen_on_validation_within_the_budget():
    r = _checkpoints((0.90, 0.91), e1=(0.95, 0.89), e3=(0.80, 0.92))
    assert report.chosen(r, "1") == (0.90, "pruned")  # validation prefers the pruned network to epoch 1's
    assert report.chosen(r, "3") == (0.80, "3")  # a later checkpoint is open at 3 epochs: its *test* figure
    tie = _checkpoints((0.90, 0.91), e1=(0.95, 0.91))
    assert report.chosen(tie, "1") == (0.90, "pruned")  # equal on validation: the earliest, the fewest steps
    exceeded = _checkpoints((0.90, 0.91), e1=(None, None), e3=(0.93, 0.90))
    assert report.chosen(exceeded, "1") == (None, None)  # pruning alone exceeded 1 epoch
    assert report.chosen(exceeded, "3") == (0.90, "pruned")
    assert report.chosen({"top1": {"1": 0.9}}, "1") == (None, None)  # no validation figures recorded


def test_verdicts_on_chosen_checkpoints_are_paired_per_seed():
    ours = [dict(_checkpoints((0.90, 0.91), e1=(0.88, 0.89)), seed=s) for s in range(3)]
    rival = [dict(_checkpoints((0.70, 0.71), e1=(0.89, 0.90)), seed=s) for s in range(3)]
    assert report.paired(ours, rival, "1").startswith("**loses** -1.00")  # at the 1-epoch checkpoint
    assert report.paired(ours, rival, "1", on_val=True).startswith("**wins** +1.00")  # each its chosen one
    for r in ours + rival:
        r.update(method="wgates" if r in ours else "l1", flops_ratio=0.5, params_ratio=0.5, latency_ms=1.0,
                 prune_seconds=0.1, steps_used=0, info={})
    text = "\n".join(report.chosen_summary("resnet20", {("resnet20", 0.5): {"wgates": ours, "l1": rival}}, ["1"]))
    assert "| W-Gates FLOPs | 90.0 ± 0.0 (pruned ×3) |" in text and "| L1 (NNI) | 89.0 ± 0.0 (1 ep ×3) |" in text
    assert "| L1 (NNI) | **wins** +1.00 (+1.00 / +1.00 / +1.00) |" in text
    del rival[0]["val_top1"]  # seed 0 recorded no validation figures: the reading covers seeds 1 and 2
    text = "\n".join(report.chosen_summary("resnet20", {("resnet20", 0.5): {"wgates": ours, "l1": rival}}, ["1"]))
    assert "50% FLOPs (seeds 1, 2: the others recorded no validation figures):" in text
    assert "| W-Gates FLOPs | 90.0 ± 0.0 (pruned ×2) |" in text
    assert "| L1 (NNI) | +1.00 / +1.00 (2 seeds: no verdict) |" in text
    for r in ours:
        del r["val_top1"]  # no seed has validation figures for every method: no second reading at all
    assert report.chosen_summary("resnet20", {("resnet20", 0.5): {"wgates": ours, "l1": rival}}, ["1"]) == []


def test_the_library_default_is_paired_against_the_other_wgates_variants_too():
    assert report.DEFAULT == "wgates_wlr"
    by_method = {"wgates_wlr": _runs("wgates_wlr", [0.92] * 3), "wgates_kd": _runs("wgates_kd", [0.9] * 3),
                 "l1": _runs("l1", [0.8] * 3)}
    assert report.rivals_of("wgates_wlr", by_method) == ["wgates_kd", "l1"]  # the other variants side by side
    assert report.rivals_of("wgates_kd", by_method) == ["l1"]  # other variants are paired with rivals only
    text = "\n".join(report.summary("resnet20", {("resnet20", 0.5): {m: [dict(r, budget=0.5) for r in rs]
                                                                     for m, rs in by_method.items()}}, ["1"]))
    assert "| W-Gates FLOPs, distilling while pruning | — | **wins** +2.00 (+2.00 / +2.00 / +2.00) |" in text


def _record(method: str, seed: int, top1: float, digest: str, key: str = "k1") -> dict:
    return {"kind": "run", "protocol_key": key, "model": "resnet20", "method": method, "budget": 0.5,
            "seed": seed, "top1": {"1": top1}, "top1_pruned": top1, "baseline_sha256": digest,
            "flops_ratio": 0.5, "params_ratio": 0.5, "latency_ms": 1.0, "prune_seconds": 0.1, "steps_used": 0,
            "info": {"kept": {"conv": [4, 8]}}}


def _comparison(path, runs: list[dict], key: str = "k1") -> None:
    import json

    path.mkdir()
    model = {"kind": "model", "protocol_key": key, "model": "resnet20", "macs": 4e7, "params": 2.7e5,
             "latency_ms": 10.0, "baseline": {"top1": 0.91}, "environment": {"protocol": {"latency_batch": 32}}}
    (path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in [model, *runs]) + "\n")


def test_seeds_from_another_comparison_are_pooled_and_paired_on_their_own_baseline(tmp_path):
    _comparison(tmp_path / "a", [_record(m, s, acc, "first") for s in (0, 1, 2)
                                 for m, acc in (("wgates", 0.92), ("l1", 0.90))])
    _comparison(tmp_path / "b", [_record(m, s, acc, "second") for s in (3, 4)
                                 for m, acc in (("wgates", 0.93), ("l1", 0.90))])
    assert report.main([str(tmp_path / "a"), "--with", str(tmp_path / "b")]) == 0
    text = (tmp_path / "a" / "results.md").read_text()
    assert "**wins** +2.40 (+2.00 / +2.00 / +2.00 / +3.00 / +3.00)" in text  # five seeds, each on one baseline
    assert "first: seeds 0, 1, 2; second: seeds 3, 4" in text


def test_pooling_refuses_repeated_runs_and_comparisons_with_nothing_to_add(tmp_path):
    _comparison(tmp_path / "a", [_record("l1", 0, 0.9, "first")])
    _comparison(tmp_path / "b", [_record("l1", 0, 0.8, "second")])
    with pytest.raises(SystemExit, match=r"repeats runs this report already holds .*\('resnet20', 0.5, 'l1', 0\)"):
        report.main([str(tmp_path / "a"), "--with", str(tmp_path / "b")])
    _comparison(tmp_path / "c", [_record("l1", 1, 0.8, "second", key="k2")], key="k2")  # another protocol
    with pytest.raises(SystemExit, match="holds no run of protocol k1 at the points of this report"):
        report.main([str(tmp_path / "a"), "--with", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="does not exist: give a directory a comparison wrote"):
        report.main([str(tmp_path / "missing")])


def test_the_command_line_explains_itself(capsys):
    with pytest.raises(SystemExit) as done:
        report.main(["--help"])
    assert done.value.code == 0 and "--with DIR" in capsys.readouterr().out


def test_the_widths_each_method_chose_are_summed_per_stage_and_averaged_over_seeds():
    def run(method: str, seed: int, kept: dict) -> dict:
        return {"method": method, "seed": seed, "budget": 0.5, "info": {"kept": kept}}

    groups = {("resnet20", 0.5): {
        "l1": [run("l1", 0, {"layer1.0.conv1": 4, "layer1.1.conv1": 2, "layer2.0.conv1": 8})],  # counts only
        "wgates": [run("wgates", s, {"layer1.0.conv1": [k, 8], "layer1.1.conv1": [1, 8], "layer2.0.conv1": [10, 16]})
                   for s, k in ((0, 3), (1, 6))]}}  # gated methods record [kept, full]
    assert report.kept_widths(groups[("resnet20", 0.5)]["wgates"]) == (
        {"layer1.0.conv1": 4.5, "layer1.1.conv1": 1.0, "layer2.0.conv1": 10.0},
        {"layer1.0.conv1": 8, "layer1.1.conv1": 8, "layer2.0.conv1": 16})
    text = "\n".join(report.widths_table("resnet20", groups))
    assert "| method | layer1 (of 16) | layer2 (of 16) |" in text
    assert "| L1 (NNI) | 6.0 | 8.0 |" in text and "| W-Gates FLOPs | 5.5 | 10.0 |" in text
    assert report.widths_table("resnet20", {("resnet20", 0.5): {"l1": [run("l1", 0, {})]}}) == []


def test_two_methods_are_paired_on_the_validation_figures_alone(tmp_path, capsys):
    def run(method: str, seed: int, val: float, test: float, digest: str = "d") -> dict:
        r = _record(method, seed, test, digest)
        r.update(val_top1_pruned=val - 0.01, val_top1={"1": val})
        return r

    runs = [run("wgates_vote", s, 0.90 + 0.01 * s, 0.5) for s in (0, 1, 2)]
    runs += [run("wgates_kd", s, 0.89 + 0.01 * s, 0.99) for s in (0, 1, 2)]  # better on test: not read
    runs.append(run("wgates_kd", 3, 0.80, 0.99, digest="other"))  # unpaired: no vote run, other baseline
    runs.append(_record("wgates_vote", 4, 0.99, "d"))  # recorded no validation figures: left out
    _comparison(tmp_path / "a", runs)
    assert report.main([str(tmp_path / "a"), "--val-pair", "wgates_vote", "wgates_kd"]) == 0
    text = capsys.readouterr().out
    assert "| 50% | right after pruning + BN | 90.0 | 89.0 | **wins** +1.00 (+1.00 / +1.00 / +1.00) |" in text
    assert "| 50% | @ 1 epochs | 91.0 | 90.0 | **wins** +1.00" in text
    assert not (tmp_path / "a" / "results.md").exists()  # a reading, not the report
    with pytest.raises(SystemExit, match=r"--val-pair wgates_vote taylor: no run of 'taylor' here \(the runs hold "
                                         r"wgates_kd, wgates_vote\)"):
        report.main([str(tmp_path / "a"), "--val-pair", "wgates_vote", "taylor"])


@pytest.mark.parametrize("diffs", [[0.5, -0.5, 1.0], [0.46, 1.2, -0.3, 0.1, 0.8], [2.0, 1.9, 2.1]])
def test_seeds_needed_is_the_fewest_at_which_the_t_test_calls_a_win(diffs):
    import statistics

    from scipy import stats

    n = report.seeds_needed(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    assert n is not None and n >= 3
    assert stats.t.ppf(0.975, n - 1) * sd / n ** 0.5 < mean
    assert n == 3 or stats.t.ppf(0.975, n - 2) * sd / (n - 1) ** 0.5 >= mean  # one seed fewer would not do
    reached = report.verdict(diffs).startswith("**wins**")
    assert reached == (n <= len(diffs))  # the same test verdict() applies


def test_seeds_needed_is_none_without_a_lead_and_refuses_a_single_seed():
    assert report.seeds_needed([-0.2, 0.1, 0.05]) is None  # mean -0.02: no number of seeds makes it a win
    assert report.seeds_needed([0.01, -1.0, 1.0], limit=50) is None  # a lead too small for 50 seeds
    assert report.seeds_needed([0.3, 0.3]) == 3
    with pytest.raises(ValueError, match="needs 2 differences or more to estimate a spread, got 1"):
        report.seeds_needed([0.5])


def test_the_power_reading_lists_every_rival_at_every_point(tmp_path, capsys):
    runs = [_record(m, s, acc + 0.001 * s * (m == "l1"), "d") for s in (0, 1, 2)
            for m, acc in (("wgates_wlr", 0.92), ("l1", 0.90), ("wgates_kd", 0.93))]
    _comparison(tmp_path / "a", runs)
    assert report.main([str(tmp_path / "a"), "--power"]) == 0
    text = capsys.readouterr().out
    assert "| 50% | @ 1 ep | L1 (NNI) | +1.90 ± 0.10 | 3 | reached |" in text
    assert "| 50% | pruned + BN | W-Gates FLOPs, distilling while pruning | -1.00 ± 0.00 | 3 | — |" in text
