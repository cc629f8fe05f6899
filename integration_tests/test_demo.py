"""``wgates demo --quick`` as a user runs it: the installed console script, the table, the saved files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wgates_plugin.app.data import load_digits, loaders
from wgates_plugin.app.serialization import RECIPE_FILE, WEIGHTS_FILE, load_pruned
from wgates_plugin.app.training import evaluate


def _wgates() -> list[str]:
    script = Path(sys.executable).with_name("wgates")
    return [str(script)] if script.exists() else [shutil.which("wgates") or "wgates"]


@pytest.mark.slow
def test_demo_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_wgates(), "demo", "--quick", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "wgates-demo"  # the default --out, relative to the working directory
    assert {p.name for p in out.iterdir()} == {WEIGHTS_FILE, RECIPE_FILE, "report.json", "summary.md",
                                               "kept_channels.png"}
    report = json.loads((out / "report.json").read_text())

    # the printed table carries the report's numbers
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(params \(M\)|MACs \(M\)|latency \(ms, batch 32\)|top-1 \(%\))\s+(\S+)\s+(\S+)",
                                 proc.stdout, re.M)}
    assert set(rows) == {"params (M)", "MACs (M)", "latency (ms, batch 32)", "top-1 (%)"}
    assert rows["params (M)"] == (round(report["before"]["params"] / 1e6, 3), round(report["after"]["params"] / 1e6, 3))
    assert rows["top-1 (%)"] == (round(report["before"]["top1"] * 100, 1), round(report["after"]["top1"] * 100, 1))
    assert abs(report["flops_ratio"] - 0.5) <= 0.005 and rows["MACs (M)"][1] < rows["MACs (M)"][0]
    assert report["model"] == "resnet18" and report["input_shape"] == [1, 3, 32, 32]

    # the saved model is the one that was measured
    model = load_pruned(out)
    _, test = load_digits(size=32)
    assert evaluate(model, loaders(test, test, batch_size=64)[1]) == report["after"]["top1"]
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
