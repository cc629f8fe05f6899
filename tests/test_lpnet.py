"""LPNet: the network, its fit and error figures, saved predictors, and latency budgets in WGates."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from wgates_plugin import ConfigError, ConfigTypeError, MeasurementError, WGates
from wgates_plugin.efficiency import (
    FitConfig,
    LatencyContextError,
    LatencyModel,
    LatencyPredictor,
    LPNet,
    SimulatedClock,
    Timing,
    latency_errors,
    measure_ms,
)
from wgates_plugin.efficiency.lpnet import WEIGHT_DECAY_GRID, fit_lpnet, select_weight_decay, split_indices
from wgates_plugin.profiling import CandidateSpace, collect_latency, evaluate_predictor, load_samples, train_predictor

FAST = Timing(warmup=1, repeats=2, threads=1)
QUICK_FIT = FitConfig(hidden=(32, 32), epochs=60)


def resnet(block: type[nn.Module], num_classes: int = 10, layers=(1, 1, 1, 1)) -> nn.Module:
    torch.manual_seed(0)
    return ResNet(block, list(layers), num_classes=num_classes).eval()



@pytest.fixture(scope="module", autouse=True)
def clock():
    """Every latency in this module is timed by a simulated clock: exact and independent of the load."""
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5) as simulated:
        yield simulated


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory):
    return tmp_path_factory.mktemp("lat") / "r10.jsonl"


@pytest.fixture(scope="module")
def collected(samples_file):
    """24 measured candidates (with block timings) of a one-block-per-stage BasicBlock ResNet."""
    model, x = resnet(BasicBlock), torch.randn(2, 3, 32, 32)
    samples = collect_latency(model, x, samples_file, 24, batch=2, timing=FAST, blocks=True, progress=False)
    return model, x, samples


@pytest.fixture(scope="module")
def network(collected):
    return train_predictor(collected[2], "network", QUICK_FIT)


@pytest.fixture(scope="module")
def block(collected):
    return train_predictor(collected[2], "block", QUICK_FIT)


# ---------------------------------------------------------------------------- the network and its fit
def test_lpnet_is_three_fc_layers_with_relu_after_the_first_two():
    net = LPNet(7, (16, 8))
    assert [type(m) for m in net.layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    linear = [(m.in_features, m.out_features) for m in net.layers if isinstance(m, nn.Linear)]
    assert linear == [(7, 16), (16, 8), (8, 1)]
    assert net(torch.rand(5, 7)).shape == (5,)


def test_lpnet_rejects_a_bad_hidden_spec():
    with pytest.raises(ConfigError, match=r"hidden=\(16,\) must be two positive layer widths"):
        LPNet(4, (16,))


@pytest.mark.parametrize("log_target", [True, False])
def test_fit_learns_a_smooth_latency_surface_to_under_two_percent(log_target):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(250, 3, generator=gen)
    x[:, 2] = 0.5  # a constant feature (std 0) must not break the normalization
    y = 2 + 3 * x[:, 0] + 4 * x[:, 1] ** 2  # ms, from 2 to 9
    net = fit_lpnet(x[:200], y[:200], FitConfig(hidden=(64, 64), epochs=100, log_target=log_target))
    with torch.no_grad():
        errors = latency_errors(net(x[200:]).numpy(), y[200:].numpy())
    assert errors.mape < 2.0 and errors.spearman > 0.99


def test_fit_refuses_non_positive_latencies_and_bad_shapes():
    with pytest.raises(ConfigError, match="every measured latency must be > 0 ms"):
        fit_lpnet(torch.rand(4, 2), torch.tensor([1.0, 0.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match=r"got \(4, 2\) and \(3,\)"):
        fit_lpnet(torch.rand(4, 2), torch.ones(3))


def test_error_figures_by_hand():
    errors = latency_errors([1.0, 2.08, 2.76, 4.0], [1.0, 2.0, 3.0, 4.0])  # errors 0, 4, 8, 0 %
    assert errors.mape == pytest.approx(3.0) and errors.max_ape == pytest.approx(8.0)
    assert (errors.within_5, errors.within_10, errors.n) == (0.75, 1.0, 4)
    assert errors.spearman == pytest.approx(1.0)
    assert latency_errors([1, 3, 2, 4], [1, 2, 3, 4]).spearman == pytest.approx(0.8)


def test_split_is_a_disjoint_80_20_partition():
    train, test = split_indices(50, 0.2, seed=1)
    assert len(test) == 10 and set(train) | set(test) == set(range(50)) and not set(train) & set(test)
    with pytest.raises(ConfigError, match="test_fraction=1.0 must be in \\(0, 1\\)"):
        split_indices(10, 1.0)
    assert [len(part) for part in split_indices(5, 0.2)] == [3, 2]  # two points at least to score
    with pytest.raises(ConfigError, match="needs >= 4 items, got 3"):
        split_indices(3)


def test_weight_decay_selection_scores_every_value_on_the_same_folds_and_keeps_the_lowest():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=gen)
    y = 2 + 3 * x[:, 0] + 0.2 * torch.rand(40, generator=gen)  # ms, noisy
    fit = FitConfig(hidden=(16, 16), epochs=20)
    chosen, scores = select_weight_decay(x, y, fit, grid=(0.0, 0.1, 10.0), folds=4)
    assert list(scores) == [0.0, 0.1, 10.0]
    assert chosen == FitConfig(hidden=(16, 16), epochs=20, weight_decay=min(scores, key=scores.get))
    # each score is the mean held-out MAPE of the four fold fits, the folds a seeded permutation
    parts = np.array_split(np.random.default_rng(0).permutation(40), 4)
    by_hand = []
    for k, held in enumerate(parts):
        kept = np.concatenate([p for j, p in enumerate(parts) if j != k])
        net = fit_lpnet(x[kept], y[kept], FitConfig(hidden=(16, 16), epochs=20, weight_decay=0.1))
        with torch.no_grad():
            by_hand.append(latency_errors(net(x[held]).numpy(), y[held].numpy()).mape)
    assert scores[0.1] == pytest.approx(float(np.mean(by_hand)), rel=1e-12)


@pytest.mark.parametrize("grid, folds, match", [
    ((), 4, r"grid=\(\) must be a non-empty list of distinct weight decays >= 0"),
    ((0.0, -1e-3), 4, r"grid=\(0.0, -0.001\) must be"),
    ((1e-3, 1e-3), 4, r"grid=\(0.001, 0.001\) must be"),
    ((0.0,), 1, r"folds=1 must be an int, for 10 samples \(every fold scores >= 2 of them\), in \[2, 5\]"),
    ((0.0,), 6, r"folds=6 must be an int, for 10 samples .* in \[2, 5\]"),
    ((0.0,), 2.0, r"folds=2.0 must be an int, for 10 samples"),
])
def test_weight_decay_selection_refuses_a_bad_grid_or_fold_count(grid, folds, match):
    error = ConfigTypeError if isinstance(folds, float) else ConfigError  # a fold count that is not an int
    with pytest.raises(error, match=match):
        select_weight_decay(torch.rand(10, 2), torch.ones(10), QUICK_FIT, grid=grid, folds=folds)


def test_a_negative_weight_decay_is_refused():
    with pytest.raises(ConfigError, match=r"weight_decay=-0.1 must be >= 0"):
        FitConfig(weight_decay=-0.1)


# ---------------------------------------------------------------------------- training from samples
def test_report_is_the_held_out_error_of_the_saved_predictor(collected, network):
    _, _, samples = collected
    predictor, report = network
    assert (report["n_train"], report["n_test"]) == (20, 5)  # reference + 19 train, 5 held out
    _, test = split_indices(24, 0.2, 0)
    held_out = [samples.records[i] for i in test]
    predicted = [predictor.predict_record(r, samples.reference) for r in held_out]
    assert report["network"] == latency_errors(predicted, [r["ms"] for r in held_out]).asdict()


@pytest.mark.parametrize("kind", ["network", "block"])
def test_weight_decay_is_chosen_on_training_candidates_only(collected, kind):
    """The choice and its scores are the same whatever the held-out candidates measured: they never see them."""
    _, _, samples = collected
    _, test = split_indices(len(samples.records), 0.2, 0)
    changed = copy.deepcopy(samples)
    for i in test:
        changed.records[i]["ms"] *= 7.0
        for b in changed.records[i].get("blocks", []):
            b["ms"] *= 7.0
    grid = (0.0, 1e-2)
    first, report = train_predictor(samples, kind, QUICK_FIT, weight_decays=grid)
    _, other = train_predictor(changed, kind, QUICK_FIT, weight_decays=grid)
    types = ["network"] if kind == "network" else first.types
    assert set(report["weight_decay"]) == set(types)
    assert report["weight_decay"] == other["weight_decay"]
    for t in types:
        c = report["weight_decay"][t]
        assert list(c["cv_mape"]) == ["0.0", "0.01"] and c["chosen"] == float(min(c["cv_mape"], key=c["cv_mape"].get))
    assert first.info["weight_decay"] == report["weight_decay"]  # saved with the predictor
    assert report["network"] != other["network"]  # the held-out figures do see the change


def test_lpnet_train_cli_selects_the_weight_decay_and_prints_the_choice(collected, samples_file, tmp_path, capsys):
    from wgates_plugin.app.cli import main

    out, report = tmp_path / "n.lpnet", tmp_path / "r.json"
    common = ["lpnet", "train", "--samples", str(samples_file), "--epochs", "20", "--hidden", "16", "16", "--force"]
    assert main([*common, "--out", str(out), "--select-weight-decay", "0", "0.01", "--report", str(report)]) == 0
    written = json.loads(report.read_text())
    chosen = written["weight_decay"]["network"]["chosen"]
    assert chosen in (0.0, 0.01) and list(written["weight_decay"]["network"]["cv_mape"]) == ["0.0", "0.01"]
    assert f"network: weight decay {chosen} chosen by cross-validation on the training candidates" in \
        capsys.readouterr().out
    assert LatencyPredictor.load(out).info["fit"]["weight_decay"] == chosen  # what the saved net was fitted with
    # by default the library's grid is tried; a fixed --weight-decay skips the selection
    assert main([*common, "--out", str(out), "--report", str(report)]) == 0
    assert list(json.loads(report.read_text())["weight_decay"]["network"]["cv_mape"]) == \
        [str(v) for v in WEIGHT_DECAY_GRID]
    assert main([*common, "--out", str(out), "--weight-decay", "0.01", "--report", str(report)]) == 0
    assert "weight_decay" not in json.loads(report.read_text())
    assert LatencyPredictor.load(out).info["fit"]["weight_decay"] == 0.01
    few = tmp_path / "few.jsonl"  # the reference and 5 candidates: too few for the default cross-validation
    lines = samples_file.read_text().splitlines(keepends=True)
    few.write_text("".join(lines[:7]))
    assert len(load_samples(few)) == 5 and load_samples(few).reference is not None
    assert main([*common, "--samples", str(few), "--out", str(out), "--report", str(report)]) == 0
    assert "5 candidates are too few to cross-validate the weight decay (>= 10); weight decay 0 used" in \
        capsys.readouterr().out and "weight_decay" not in json.loads(report.read_text())
    with pytest.raises(ConfigError, match=r"needs >= 4 training samples, got 3 \(network\); fix the weight decay"):
        four = load_samples(few)
        train_predictor(dataclasses.replace(four, records=four.records[:4]), "network", QUICK_FIT,
                        weight_decays=(0.0, 1e-2))
    with pytest.raises(SystemExit):  # one way of setting it, not both
        main([*common, "--out", str(out), "--weight-decay", "0.01", "--select-weight-decay", "0"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_block_report_scores_blocks_and_their_sums(block):
    _, report = block
    bb = "torchvision.models.resnet.BasicBlock"
    assert report["blocks"][bb]["n"] == 5 * 4  # 4 blocks in each of the 5 held-out networks
    assert 0 <= report["network"]["mape"] < 100 and -1 <= report["blocks"][bb]["spearman"] <= 1


def test_block_kind_needs_block_timings(collected, tmp_path):
    model, x, _ = collected
    plain = collect_latency(model, x, tmp_path / "p.jsonl", 4, batch=2, timing=FAST, progress=False)
    with pytest.raises(ConfigError, match="no block timings; collect them with blocks=True"):
        train_predictor(plain, "block", QUICK_FIT)
    with pytest.raises(ConfigError, match="kind='layer' is not one of"):
        train_predictor(plain, "layer", QUICK_FIT)


# ---------------------------------------------------------------------------- saving and loading
def test_save_load_round_trip_keeps_predictions_and_metadata(collected, block, tmp_path):
    _, _, samples = collected
    predictor, _ = block
    path = tmp_path / "b.lpnet"
    predictor.save(path)
    loaded = LatencyPredictor.load(path)
    blocks = samples.records[0]["blocks"]
    torch.testing.assert_close(loaded.predict_blocks(blocks), predictor.predict_blocks(blocks), rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["wgates_lpnet"])
    ctx = meta["context"]
    assert {"model", "model_hash", "device", "torch", "threads", "batch", "input_shape", "groups"} <= set(ctx)
    assert meta["nets"][0]["x_mean"] == predictor.nets[0].x_mean.tolist()  # normalization in the JSON


def test_loading_a_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(ConfigError, match="is not a W-Gates LPNet file"):
        LatencyPredictor.load(path)


def test_binding_to_another_input_size_device_batch_or_model_is_refused(collected, network, tmp_path):
    model, x, _ = collected
    predictor, _ = network
    predictor.save(tmp_path / "n.lpnet")
    loaded = LatencyPredictor.load(tmp_path / "n.lpnet")
    with pytest.raises(LatencyContextError, match=r"input_shape: saved \[3, 32, 32\], now \[3, 16, 16\]"):
        loaded.for_model(model, torch.randn(2, 3, 16, 16))
    with pytest.raises(LatencyContextError, match="batch: saved 2, now 8"):
        loaded.for_model(model, x, batch=8)
    with pytest.raises(LatencyContextError, match="model_hash: saved .* another architecture|another architecture"):
        loaded.for_model(resnet(BasicBlock, num_classes=7), x)
    loaded.context = dict(loaded.context, device="cpu: Imaginary CPU 9000")
    with pytest.raises(LatencyContextError, match="device: saved 'cpu: Imaginary CPU 9000', now 'cpu: "):
        loaded.for_model(model, x)


def test_evaluating_on_samples_of_another_context_is_refused(collected, network, tmp_path):
    model, x, _ = collected
    other = collect_latency(model, x, tmp_path / "o.jsonl", 2, batch=3, timing=FAST, progress=False)
    with pytest.raises(LatencyContextError, match="batch: saved 2, now 3"):
        evaluate_predictor(network[0], other)


# ---------------------------------------------------------------------------- as an efficiency model
@pytest.mark.parametrize("kind", ["network", "block"])
def test_gradient_flows_from_predicted_latency_to_the_counts(collected, network, block, kind):
    model, x, _ = collected
    latency = (network if kind == "network" else block)[0].for_model(model, x)
    counts = (latency.full_counts() * 0.7).requires_grad_()
    latency.cost(counts).backward()
    assert torch.isfinite(counts.grad).all() and counts.grad.abs().sum() > 0


def test_reference_is_the_measured_unpruned_latency(collected, network, block):
    model, x, samples = collected
    net = network[0].for_model(model, x)
    assert net.reference() == samples.reference["ms"]
    blk = block[0].for_model(model, x)
    assert blk.reference() == samples.reference["ms"]
    assert blk.predicted_reference() == pytest.approx(samples.reference["ms"], rel=1e-5)  # remainder calibrates


def test_block_lpnet_binds_to_a_deeper_model_of_the_same_block_type(collected, block):
    _, x, _ = collected
    deeper = resnet(BasicBlock, layers=(2, 2, 2, 2))  # resnet18
    latency = block[0].for_model(deeper, x)
    assert len(latency.encoder.blocks) == 8 and latency.reference() > 0  # measured on this device now
    assert latency.predicted_reference() == pytest.approx(latency.reference(), rel=1e-5)
    with pytest.raises(LatencyContextError, match="Bottleneck.*does not know"):
        block[0].for_model(resnet(Bottleneck), x)


def test_a_latency_budget_is_derived_in_zero_one_or_refused_naming_both_latencies(collected, network):
    model, x, _ = collected
    latency = network[0].for_model(model, x)
    half = latency.full_counts() * 0.5
    with torch.no_grad():
        assert latency.budget_of(half) == float(latency.cost(half)) / latency.reference()
    assert 0 < latency.budget_of(half) < 1
    # a reference measured while other jobs slowed the candidates down: the thinned network looks slower
    groups = CandidateSpace(model, x).groups
    disturbed = LatencyModel(network[0], groups, latency.predicted_reference() / 1.2368)
    with pytest.raises(MeasurementError, match=r"predicts the unpruned network at [\d.]+ ms, 1.2368 of the unpruned "
                       r"model's measured [\d.]+ ms, so it is no latency budget \(allowed: \(0, 1\]\).*HINT: "
                       r"collect them again with more repeats"):
        disturbed.budget_of(disturbed.full_counts(), "the unpruned network")


def test_network_lpnet_refuses_other_gated_groups(collected, network):
    model, x, _ = collected
    with pytest.raises(LatencyContextError, match="groups: saved"):
        network[0].for_model(model, x, config=None, groups=[])


def test_latency_target_lands_the_predicted_latency_and_export_reports_measured(collected, network):
    model, x, _ = collected
    predictor = network[0]
    before = {k: v.clone() for k, v in predictor.state_dict().items()}
    wg = WGates(model, x, target=0.6, efficiency=predictor.efficiency(model, x))
    opt = torch.optim.Adam(wg.parameters(), lr=1e-2)
    for _ in range(5):
        loss = model(x).logsumexp(1).mean() + wg.efficiency_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    wg.freeze()
    assert 0.6 * (1 - wg.config.tolerance) <= wg.cost_ratio() <= 0.6
    small = wg.export()
    report = wg.efficiency.compare(small, wg.counts(), FAST)
    assert report["predicted_ms"] == pytest.approx(wg.cost_ratio() * wg.reference_cost, rel=1e-5)
    assert report["reference_ms"] == wg.reference_cost
    batch = torch.randn(predictor.context["batch"], *x.shape[1:])
    assert report["measured_ms"] == pytest.approx(measure_ms(small, batch, FAST), rel=1e-12)  # the exported model
    assert report["measured_ms"] < wg.reference_cost
    assert report["error_pct"] == pytest.approx(100 * (report["predicted_ms"] / report["measured_ms"] - 1))
    for k, v in predictor.state_dict().items():  # the LPNet is fixed while the gates train
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    wg.remove()


def test_paper_mode_loss_is_alpha_log_one_plus_relative_latency(collected, block):
    model, x, _ = collected
    wg = WGates(model, x, mode="paper", alpha=0.3, efficiency=block[0].efficiency(model, x))
    loss = wg.efficiency_loss()
    with torch.no_grad():
        expected = 0.3 * math.log1p(float(wg.efficiency(wg.counts())) / wg.reference_cost)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert sum(float(g.fc.grad.abs().sum()) for g in wg.gates) > 0
    wg.remove()


@pytest.mark.parametrize("extra, match", [
    (["--lpnet", "x.lpnet"], "--latency-target goes with --lpnet or --latency-table.*--lpnet=x.lpnet"),
    (["--latency-target", "0.5"], "--latency-target goes with --lpnet or --latency-table"),
    (["--latency-table", "x.lpnet"], "--latency-target goes with.*--latency-table=x.lpnet, --latency-target=None"),
    (["--latency-table", "missing.json", "--latency-target", "0.5"],
     "--latency-table file 'missing.json' does not exist"),
    (["--lpnet", "missing.lpnet", "--latency-target", "0.5"], "--lpnet file 'missing.lpnet' does not exist"),
    (["--lpnet", "x.lpnet", "--latency-target", "1.5"], r"--latency-target=1.5 must be in \(0, 1\]"),
])
def test_prune_latency_options_are_checked(tmp_path, capsys, monkeypatch, extra, match):
    from wgates_plugin.app.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.lpnet").write_bytes(b"")
    code = main(["prune", "--model", "resnet18", "--size", "32", "--out", "p", "--no-progress", *extra])
    assert code == 2
    assert re.search(match, capsys.readouterr().err)

