"""The comparison harness end to end on its smoke preset: every method, one budget, a few steps.

Every latency (the LPNet's samples, the latency budget, the recorded latencies) is timed by a
:class:`SimulatedClock`, so the run is the same whatever else the machine is doing."""

from __future__ import annotations

import json

import pytest

from benchmarks import compare, report
from wgates_plugin.efficiency import SimulatedClock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with SimulatedClock():
        rc = compare.main(["--preset", "smoke", "--out", str(out / "out"), "--cache", str(out / "cache")])
    assert rc == 0
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_method_lands_on_the_budget_with_a_full_record(smoke):
    runs = [r for r in _lines(smoke / "out" / "runs.jsonl") if r["kind"] == "run"]
    assert sorted(r["method"] for r in runs) == sorted(compare.ALL_METHODS)
    setup = compare.parse(["--preset", "smoke"])
    for r in runs:
        assert abs(r["flops_ratio"] / 0.5 - 1) <= setup.protocol.tolerance, r["method"]
        assert set(r["top1"]) == {"0.5", "1"}
        assert 0 < r["params_ratio"] < 1 and r["latency_ms"] > 0 and r["prune_seconds"] >= 0
        assert set(r["val_top1"]) == set(r["top1"])  # validation figures at every checkpoint, to choose one
        assert ("val_top1_pruned" in r) == ("top1_pruned" in r)
        for value in [*r["top1"].values(), *r["val_top1"].values(), r.get("top1_pruned", 0.5)]:
            assert value is None or 0 <= value <= 1


def test_training_steps_are_charged_against_the_budget(smoke):
    runs = {r["method"]: r for r in _lines(smoke / "out" / "runs.jsonl") if r["kind"] == "run"}
    setup = compare.parse(["--preset", "smoke"])
    prune_steps = round(setup.protocol.prune_epochs * setup.protocol.train_size // setup.protocol.batch)
    assert runs["wgates"]["steps_used"] == prune_steps == 2
    assert runs["l1"]["steps_used"] == runs["uniform"]["steps_used"] == runs["scratch"]["steps_used"] == 0
    assert "top1_pruned" not in runs["scratch"]  # re-initialized: nothing to evaluate before training
    # scratch trains exactly the W-Gates architecture
    assert runs["scratch"]["params"] == runs["wgates"]["params"]
    assert runs["scratch"]["macs"] == runs["wgates"]["macs"]


def test_a_second_invocation_resumes_without_rerunning(smoke):
    before = (smoke / "out" / "runs.jsonl").read_text()
    with SimulatedClock():
        assert compare.main(["--preset", "smoke", "--out", str(smoke / "out"), "--cache", str(smoke / "cache")]) == 0
    after = (smoke / "out" / "runs.jsonl").read_text()
    new = [json.loads(line) for line in after[len(before):].splitlines() if line.strip()]
    assert [r["kind"] for r in new] == ["model"]  # the cached baseline is reloaded, no run repeated
    assert new[0]["baseline"] == _lines(smoke / "out" / "runs.jsonl")[0]["baseline"]


def test_report_writes_tables_and_plots(smoke):
    out = smoke / "out"
    text = (out / "results.md").read_text()
    for method in compare.ALL_METHODS:
        assert report.LABELS[method] in text
    assert "W-Gates against every other method, paired per seed" in text and "W-Gates FLOPs, 50% FLOPs:" in text
    assert "| uniform width | " in text and "(1 seed: no verdict)" in text  # the smoke run has one seed
    assert "every method's checkpoint chosen on validation within each budget" in text
    for png in ("acc_vs_flops_resnet20.png", "kept_channels_resnet20.png", "gate_training_resnet20.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        compare.parse(["--budgets", "1.5"])
    assert "--budgets 1.5: a budget is a fraction of the FLOPs in (0, 1]" in capsys.readouterr().err


def test_ablations_run_every_variant_and_report_them(smoke):
    from benchmarks import ablations

    out, cache = smoke / "out", smoke / "cache"
    with SimulatedClock():
        assert ablations.main(["--preset", "smoke", "--seeds", "0", "--alphas", "2", "--budget", "0.5",
                               "--out", str(out), "--cache", str(cache)]) == 0
    rows = {r["variant"]: r for r in _lines(out / "ablations.jsonl")}
    assert set(rows) == set(ablations.VARIANTS) | {"alpha=2"}
    for name in ablations.VARIANTS:
        assert abs(rows[name]["flops_ratio"] / 0.5 - 1) <= 0.02
    assert rows["alpha=2"]["options"] == {"mode": "paper", "alpha": 2.0}
    text = (out / "ablations.md").read_text()
    assert text.count("| resnet20 |") == 4
    assert (out / "alpha_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_with_prune_shortcuts_every_method_prunes_the_residual_coupled_groups_too(smoke):
    """The second table of the comparison: the rivals prune every group, W-Gates with prune_shortcuts=True."""
    methods = ["l1", "slim", "gate_decorator", "wgates"]
    with SimulatedClock():
        assert compare.main(["--preset", "smoke", "--prune-shortcuts", "--methods", *methods, "--out",
                             str(smoke / "shortcuts"), "--cache", str(smoke / "cache")]) == 0
    lines = _lines(smoke / "shortcuts" / "runs.jsonl")
    plain = next(r for r in _lines(smoke / "out" / "runs.jsonl") if r["kind"] == "model")
    model = next(r for r in lines if r["kind"] == "model")
    assert len(model["prunable"]) > len(plain["prunable"])  # the shortcut-coupled producers are in
    assert model["environment"]["protocol"]["prune_shortcuts"] is True
    shortcut = sorted(set(model["prunable"]) - set(plain["prunable"]))
    for r in (r for r in lines if r["kind"] == "run"):
        assert abs(r["flops_ratio"] / 0.5 - 1) <= 0.02, r["method"]
        if r["method"] == "wgates":  # its plan names the roots it cut: some are shortcut-coupled
            assert set(r["info"]["removed"]) & set(shortcut), r["info"]["removed"]
        else:  # the rivals rank the shortcut-coupled groups with the others
            assert set(r["info"]["kept"]) & set(shortcut), (r["method"], r["info"]["kept"])
