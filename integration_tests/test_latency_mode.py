"""Latency mode end to end through the CLI: collect -> train -> eval -> prune to a latency budget,
and a block LPNet trained on one ResNet reused on a deeper one.

Latencies that a test asserts on are timed by a :class:`SimulatedClock` (exact, whatever the load);
where the real clock runs, only the form of what it measured is checked."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet

from wgates_plugin.app.cli import main
from wgates_plugin.efficiency import FitConfig, LatencyPredictor, SimulatedClock, Timing
from wgates_plugin.profiling import collect_latency, evaluate_predictor, load_samples, train_predictor

pytestmark = pytest.mark.slow

CPU = ["--threads", "1", "--clock", "cpu", "--warmup", "1", "--repeats", "3"]



def test_collect_train_eval_prune_to_a_latency_budget(tmp_path, capsys):
    samples, lpnet, out = tmp_path / "r18.jsonl", tmp_path / "r18.lpnet", tmp_path / "pruned"
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        assert main(["lpnet", "collect", "--model", "resnet18", "--input-size", "32", "--samples", "60",
                     "--out", str(samples), *CPU]) == 0
        assert len(load_samples(samples)) == 60
        assert main(["lpnet", "train", "--samples", str(samples), "--out", str(lpnet), "--epochs", "200",
                     "--report", str(tmp_path / "train.json")]) == 0
        report = json.loads((tmp_path / "train.json").read_text())
        assert (report["n_train"], report["n_test"]) == (49, 12)
        assert main(["lpnet", "eval", "--lpnet", str(lpnet), "--samples", str(samples)]) == 0
        assert "network LPNet (resnet18) on 60 candidates of resnet18" in capsys.readouterr().out

        assert main(["prune", "--model", "resnet18", "--size", "32", "--lpnet", str(lpnet), "--latency-target",
                     "0.6", "--steps", "20", "--finetune-steps", "5", "--bn-batches", "2", "--out", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "latency (LPNet device and batch): predicted" in printed and "landed on the measured latency" in printed
    report = json.loads((out / "report.json").read_text())
    lat, landing = report["latency"], report["latency_landing"]
    assert lat["predicted_ms"] == pytest.approx(lat["cost_ratio"] * lat["reference_ms"], rel=1e-5)
    assert lat["error_pct"] == pytest.approx(100 * (lat["predicted_ms"] / lat["measured_ms"] - 1))
    # the *measured* latency lands on the budget (closed loop on the simulated device), whatever LPNet's error
    assert landing["within"] and abs(lat["measured_ms"] / lat["reference_ms"] / 0.6 - 1) <= 0.03
    chosen = landing["rounds"][landing["chosen"]]
    assert chosen["measured_ms"] == pytest.approx(lat["measured_ms"]) and chosen["spread_ms"] == 0.0


def test_prune_refuses_a_lpnet_for_another_input_size(tmp_path, capsys):
    samples, lpnet = tmp_path / "s.jsonl", tmp_path / "s.lpnet"
    assert main(["lpnet", "collect", "--model", "resnet18", "--input-size", "32", "--samples", "5",
                 "--out", str(samples), *CPU]) == 0
    measured = load_samples(samples)  # the real clock: only the form of what it measured is checked
    assert len(measured) == 5 and all(math.isfinite(r["ms"]) and r["ms"] > 0 for r in measured.records)
    assert main(["lpnet", "train", "--samples", str(samples), "--out", str(lpnet), "--epochs", "5"]) == 0
    capsys.readouterr()
    code = main(["prune", "--model", "resnet18", "--size", "64", "--lpnet", str(lpnet), "--latency-target", "0.5",
                 "--out", str(tmp_path / "p"), "--no-progress"])
    assert code == 2
    assert "input_shape: saved [3, 32, 32], now [3, 64, 64]" in capsys.readouterr().err


def test_block_lpnet_trained_on_one_resnet_predicts_a_deeper_one(tmp_path):
    """Blocks of resnet18 (a downsampling and an identity block per stage) predict resnet34's 16 blocks.

    The deeper model holds only block configurations the LPNet has seen (more of them); a model whose
    identity blocks have widths it never saw is extrapolation, which a block LPNet does not do well."""
    timing = Timing(warmup=1, repeats=3, threads=1, clock="cpu")
    x = torch.zeros(2, 3, 32, 32)
    shallow = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10).eval()  # resnet18
    deeper = ResNet(BasicBlock, [3, 4, 6, 3], num_classes=10).eval()  # resnet34
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        train = collect_latency(shallow, x, tmp_path / "a.jsonl", 60, timing=timing, blocks=True, progress=False)
        test = collect_latency(deeper, x, tmp_path / "b.jsonl", 10, timing=timing, blocks=True, progress=False)
        predictor, _ = train_predictor(train, "block", FitConfig(epochs=200))
        predictor.save(tmp_path / "block.lpnet")
        report = evaluate_predictor(LatencyPredictor.load(tmp_path / "block.lpnet"), test)
    assert report["n_test"] == 10 and report["blocks"]["torchvision.models.resnet.BasicBlock"]["n"] == 160
    assert report["network"]["mape"] < 10 and report["network"]["spearman"] > 0.9
