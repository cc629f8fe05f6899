"""The NNI experiment in examples/nni_experiment, launched for real with ``nnictl create``.

Two short trials (tiny step counts passed on the trial command line; the search space, tuner and
training service are the example's own), on a free loopback port, with the experiment's files in a
temporary directory. The experiment is stopped whatever happens.

``nnictl create`` gives the NNI manager (a Node.js process) three seconds to answer before it gives up
(``nni.experiment.launcher._check_rest_server``, ``retry=3``); on a machine whose cores are busy the
manager can take longer to start, and the experiment then fails before it began. The test runs nnictl's
own entry point with that wait raised to ``MANAGER_START_S`` seconds; nothing else is changed.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nni_experiment"
SHORT = "--baseline-steps 60 --gate-steps 20 --finetune-steps 20 --finetune-rounds 1"
DEADLINE_S = 420
MANAGER_START_S = 90

# nnictl's console script, with the manager's start-up wait raised (see the module docstring).
NNICTL = f"""
import functools, sys
from nni.experiment import launcher
launcher._check_rest_server = functools.partial(launcher._check_rest_server, retry={MANAGER_START_S})
from nni.tools.nnictl.nnictl import parse_args
sys.argv[0] = "nnictl"
sys.exit(parse_args())
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nnictl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NNICTL, *args], capture_output=True, text=True,
                          timeout=timeout)


def short_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((EXAMPLE / "config.yml").read_text())
    config.update(trialCommand=f"{sys.executable} trial.py {SHORT}", trialCodeDirectory=str(EXAMPLE),
                  maxTrialNumber=2, trialConcurrency=1, maxExperimentDuration="10m",
                  experimentWorkingDirectory=str(tmp_path / "nni-experiments"))
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for_trials(port: int, count: int) -> list[dict]:
    from nni.experiment import rest

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        trials = rest.get(port, "/trial-jobs")
        done = [t for t in trials if t["status"] in ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED")]
        if len(done) >= count or rest.get(port, "/check-status")["status"] in ("ERROR", "DONE"):
            return trials
        time.sleep(3)
    pytest.fail(f"the experiment did not finish {count} trials within {DEADLINE_S} s")


@pytest.mark.slow
@pytest.mark.nnictl
def test_nnictl_experiment_runs_two_trials(tmp_path):
    from nni.experiment import rest

    port = free_port()
    created = nnictl("create", "--config", str(short_config(tmp_path)), "--port", str(port),
                     timeout=180 + MANAGER_START_S)
    output = re.sub(r"\x1b\[[0-9;]*m", "", created.stdout + created.stderr)  # drop colour codes
    match = re.search(r"Experiment ID: (\w+)", output)
    assert match, output
    try:
        assert created.returncode == 0, output
        trials = wait_for_trials(port, 2)
        logs = {t["trialJobId"]: t.get("stderrPath") for t in trials}
        assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"], logs
        metrics = rest.get(port, "/metric-data")
        for trial in trials:
            mine = [m for m in metrics if m["trialJobId"] == trial["trialJobId"]]
            final = [json.loads(json.loads(m["data"])) for m in mine if m["type"] == "FINAL"]
            periodical = [m for m in mine if m["type"] == "PERIODICAL"]
            assert len(final) == 1 and len(periodical) == 3  # gated, pruned, one fine-tuning round
            result = final[0]
            params = json.loads(trial["hyperParameters"][0])["parameters"]
            assert 0.0 <= result["default"] <= 1.0
            assert result["flops_ratio"] <= params["budget"] + 1e-9  # the budget the tuner chose is met
            assert result["budget"] == params["budget"] and result["alpha"] == params["alpha"]
    finally:
        stopped = nnictl("stop", match.group(1), timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
