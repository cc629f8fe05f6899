"""Smoke test of benchmarks/overhead.py: a tiny configuration end to end, output structure only
(timings are the benchmark's business, never asserted here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "resnet18", "--size", "32", "--batch", "2", "--threads", "1", "--steps", "2", "--warmup", "1",
        "--repeats", "2", "--memory-steps", "1"]
ROWS = [
    "training step, wall clock (median)",
    "training step, process CPU time (median)",
    "attach: WGates(...)",
    "freeze() + export()",
    "peak live tensor memory of one step (torch profiler)",
    "peak RSS during the steps minus RSS before them",
    "peak RSS during the steps (whole process)",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("overhead") / "result.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.overhead", *TINY, "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(out.read_text())


def test_prints_one_markdown_row_per_measurement(run):
    stdout, _ = run
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("resnet18, input 2x3x32x32, 1 threads, 2 timed steps of each kind after 1 warm-up")
    header = lines.index("| measurement | without gates | with gates | ratio | target | met |")
    assert lines[header + 1] == "|---|---|---|---|---|---|"
    rows = [line.split(" | ") for line in lines[header + 2: header + 2 + len(ROWS)]]
    assert [r[0].removeprefix("| ") for r in rows] == ROWS
    assert all(len(r) == 6 for r in rows)
    assert re.fullmatch(r"\d+\.\d ms", rows[0][1]) and re.fullmatch(r"\d+\.\d ms", rows[0][2])
    assert re.fullmatch(r"\d+\.\d{3}x", rows[0][3]) and rows[0][4] == "<= 1.05x"
    assert rows[0][5].removesuffix(" |") in ("yes", "no")
    assert re.fullmatch(r"\d+\.\d{3} s", rows[2][2]) and rows[2][4] == "<= 1.0 s"
    for row in rows[4:]:
        assert re.fullmatch(r"\d+ MiB", row[1]) and re.fullmatch(r"\d+ MiB", row[2])
        assert re.fullmatch(r"\d+\.\d{3}x \(-?\d+ MiB more\)", row[3])
    footer = r"torch \S+, torchvision \S+, Python \S+, CPU: .+, load average at start \d+\.\d\d, \d{4}-\d\d-\d\d"
    assert re.fullmatch(footer, lines[-1])


def test_json_holds_every_sample(run):
    _, result = run
    assert result["setup"]["model"] == "resnet18" and result["setup"]["steps"] == 2
    for key in ("step_plain_s", "step_gated_s", "step_plain_cpu_s", "step_gated_cpu_s"):
        assert len(result[key]) == 2 and all(v > 0 for v in result[key])
    assert len(result["attach_s"]) == len(result["export_s"]) == 2
    for variant in ("plain", "gated"):
        memory = result["memory"][variant]
        assert memory["steps_peak_kib"] >= memory["before_steps_kib"] > 0
        assert memory["steps_growth_kib"] == memory["steps_peak_kib"] - memory["before_steps_kib"]
        assert 0 < memory["tensor_peak_kib"] < memory["steps_peak_kib"]


@pytest.mark.parametrize("flag", ["--steps", "--repeats", "--threads"])
def test_counts_below_one_are_refused(flag, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not an installed package
    from benchmarks import overhead

    with pytest.raises(SystemExit) as exc:
        overhead.parse_args([flag, "0"])
    assert exc.value.code == 2
    assert "--steps, --repeats, --memory-steps, --size, --batch and --threads must be >= 1" in capsys.readouterr().err
