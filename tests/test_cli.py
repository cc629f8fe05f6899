"""``wgates prune`` end to end through a real subprocess, on the bundled digits and on an image folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from wgates_plugin.app.cli import main
from wgates_plugin.app.data import folder_splits, load_digits, loaders
from wgates_plugin.app.serialization import load_pruned
from wgates_plugin.app.training import Recipe, count_params, evaluate
from wgates_plugin.efficiency import count_macs

TINY = ["--steps", "3", "--finetune-steps", "2", "--bn-batches", "2", "--latency-batch", "4", "--no-progress"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wgates_plugin.app.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check_report(report: dict, target: float) -> None:
    assert abs(report["flops_ratio"] - target) <= 0.01 * target
    assert report["after"]["macs"] / report["before"]["macs"] == pytest.approx(report["flops_ratio"])
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["latency_s"] > 0 and report["before"]["latency_s"] > 0
    assert set(report["top1"]) == {"baseline", "gated", "pruned", "recalibrated", "finetuned"}
    assert report["top1"]["baseline"] == report["before"]["top1"]
    assert report["top1"]["finetuned"] == report["after"]["top1"]
    kept = report["kept"].values()
    assert kept and all(0 < k <= n for k, n in kept) and any(k < n for k, n in kept)  # budget < 1: one group shrank


def _check_saved(out, report: dict, test_loader) -> None:
    model = load_pruned(out)
    x = torch.zeros(report["input_shape"])
    assert count_params(model) == report["after"]["params"]
    assert count_macs(model, x) == report["after"]["macs"]
    assert evaluate(model, test_loader) == report["after"]["top1"]  # same weights, same data: same top-1


def test_prune_digits_with_weights(tmp_path):
    torch.manual_seed(3)
    baseline = torchvision.models.resnet18(num_classes=10)
    torch.save(baseline.state_dict(), tmp_path / "baseline.pt")
    out = tmp_path / "out"
    proc = _cli("prune", "--model", "resnet18", "--data", "digits", "--size", "16", "--flops-target", "0.4",
                "--weights", str(tmp_path / "baseline.pt"), "--batch-size", "32", "--out", str(out), *TINY)
    assert re.search(r"FLOPs: 0\.(39|40)\d* of the original \(target 0.4\)", proc.stdout) and "top-1 (%)" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 0.4)
    assert report["model"] == "resnet18" and report["input_shape"] == [1, 3, 16, 16] and report["latency_batch"] == 4
    _, test = load_digits(size=16)
    _, test_loader = loaders(test, test, batch_size=32)
    assert report["before"]["top1"] == evaluate(baseline, test_loader)  # the given weights were the baseline
    _check_saved(out, report, test_loader)


def _image_folder(root, classes=("circle", "square"), per_class=6):
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (20, 20, 3), dtype=np.uint8) + 100 * ci
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def test_prune_image_folder(tmp_path):
    images = tmp_path / "images"
    _image_folder(images)
    out = tmp_path / "out"
    _cli("prune", "--model", "resnet18", "--data", str(images), "--size", "16", "--flops-target", "0.5",
         "--batch-size", "4", "--train-steps", "2", "--out", str(out), *TINY)
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 0.5)
    model = load_pruned(out)
    assert model.fc.out_features == 2  # one output per class directory
    _, test, classes = folder_splits(images, size=16)
    assert classes == ["circle", "square"] and len(test) == 2
    _check_saved(out, report, loaders(test, test, batch_size=2)[1])


@pytest.mark.parametrize(("args", "match"), [
    (["--model", "resnet19"], r"wgates prune: error: model='resnet19' is not a torchvision classification model"),
    (["--model", "resnet18", "--flops-target", "1.5"], r"--flops-target=1.5 must be in \(0, 1\]"),
    (["--model", "resnet18", "--data", "no/such/dir"], r"image folder 'no/such/dir' does not exist"),
    (["--model", "resnet18", "--weights", "missing.pt"], r"--weights file 'missing.pt' does not exist"),
    (["--model", "resnet18", "--latency-batch", "0"], r"--latency-batch=0 must be >= 1"),
    (["--model", "alexnet", "--size", "8"], r"alexnet cannot run on 8x8 inputs \(RuntimeError: .*\)\. HINT: pick"),
])
def test_prune_bad_input_exits_2_with_the_reason(args, match, tmp_path, capsys):
    assert main(["prune", *TINY, "--out", str(tmp_path / "out"), "--size", "16", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_prune_weights_that_do_not_fit(tmp_path, capsys):
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "w.pt")
    code = main(["prune", "--model", "resnet18", "--weights", str(tmp_path / "w.pt"), "--size", "16",
                 "--out", str(tmp_path / "out"), *TINY])
    assert code == 2
    assert "weights do not fit 'resnet18' (num_classes=10): missing [], unexpected [], shape mismatches ['fc.weight" \
        in capsys.readouterr().err
    torch.save([1, 2], tmp_path / "list.pt")
    assert main(["prune", "--model", "resnet18", "--weights", str(tmp_path / "list.pt"), "--size", "16",
                 "--out", str(tmp_path / "out"), *TINY]) == 2
    assert "holds a list, not a state dict" in capsys.readouterr().err


def test_demo_arguments():
    from wgates_plugin.app.cli import build_parser
    from wgates_plugin.app.commands.demo import FULL, QUICK, demo_args
    from wgates_plugin.app.training import Recipe

    full = demo_args(build_parser().parse_args(["demo", "--seed", "3", "--latency-batch", "8"]))
    assert (full.model, full.data, full.size, full.flops_target, full.seed, full.latency_batch) == \
        ("resnet18", "digits", 32, 0.5, 3, 8)
    assert str(full.out) == "wgates-demo" and full.gate_lr == Recipe().gate_lr
    assert {k: getattr(full, k) for k in FULL} == FULL
    quick = demo_args(build_parser().parse_args(["demo", "--quick", "--out", "elsewhere"]))
    assert {k: getattr(quick, k) for k in QUICK} == QUICK and str(quick.out) == "elsewhere"


def test_weight_schedule_reaches_the_recipe_and_a_bad_one_is_refused(capsys):
    from wgates_plugin.app.cli import build_parser
    from wgates_plugin.app.commands.prune import build_recipe

    parser = build_parser()
    base = ["prune", "--model", "resnet18", "--out", "x"]
    assert build_recipe(parser.parse_args(base)).weight_schedule == "constant"
    assert build_recipe(parser.parse_args([*base, "--weight-schedule", "cosine"])).weight_schedule == "cosine"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*base, "--weight-schedule", "linear"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'linear' (choose from" in capsys.readouterr().err


def test_settle_and_weight_anneal_reach_the_recipe_and_bad_shares_are_refused():
    from wgates_plugin.app.cli import build_parser
    from wgates_plugin.app.commands.prune import build_recipe
    from wgates_plugin.errors import ConfigError

    parser = build_parser()
    base = ["prune", "--model", "resnet18", "--out", "x"]
    default = build_recipe(parser.parse_args(base))
    assert (default.settle, default.weight_anneal) == (Recipe().settle, Recipe().weight_anneal)
    chosen = build_recipe(parser.parse_args([*base, "--settle", "0.25", "--weight-schedule", "cosine",
                                             "--weight-anneal", "0.5"]))
    assert (chosen.settle, chosen.weight_schedule, chosen.weight_anneal) == (0.25, "cosine", 0.5)
    with pytest.raises(ConfigError, match=r"settle=1\.0 must be in \[0, 1\)"):
        build_recipe(parser.parse_args([*base, "--settle", "1"]))
    with pytest.raises(ConfigError, match=r"weight_anneal=0\.0 must be in \(0, 1\]"):
        build_recipe(parser.parse_args([*base, "--weight-anneal", "0"]))
    assert default.freeze_votes == Recipe().freeze_votes
    assert build_recipe(parser.parse_args([*base, "--freeze-votes", "0.25"])).freeze_votes == 0.25
    with pytest.raises(ConfigError, match=r"freeze_votes=-0\.5 must be in \[0, 1\]"):
        build_recipe(parser.parse_args([*base, "--freeze-votes", "-0.5"]))
