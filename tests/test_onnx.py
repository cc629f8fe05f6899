"""ONNX deployment: export, onnxruntime outputs against PyTorch's, latency in both runtimes (with an
injected clock: every timing asserted here is exact), the CLI command and ``wgates prune --onnx``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import calibrated_model
from tests.test_cli import TINY
from wgates_plugin import WGates
from wgates_plugin.app.onnx_runtime import OnnxRuntimeModule, deployment_report, export_onnx
from wgates_plugin.app.serialization import load_pruned
from wgates_plugin.efficiency.timing import Timing, use_clock
from wgates_plugin.errors import ConfigError, ExportError

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'wgates-plugin[onnx]'")


class Durations:
    """A clock for :func:`use_clock`: the i-th timed forward lasts ``durations[i]`` seconds exactly."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def __call__(self) -> float:
        if self.calls % 2:  # the end of a forward
            self.now += self.durations[self.calls // 2]
        self.calls += 1
        return self.now


def _pruned_resnet18():
    model = calibrated_model("resnet18", 32).eval()
    x = torch.randn(4, 3, 32, 32)
    wg = WGates(model, x, target=0.5)
    wg.freeze()
    small = wg.export()
    wg.remove()  # the unpruned model without its gate hooks
    return model, small, x


def test_deployment_report_checks_onnxruntime_and_times_both_runtimes_exactly(tmp_path):
    unpruned, pruned, x = _pruned_resnet18()
    repeats = 3
    # PyTorch, then onnxruntime; in each, the unpruned (u) and pruned (p) model in turns: u p, p u, u p.
    # Exact in binary, so every median and ratio below is exact
    def turns(u: float, p: float) -> list[float]:
        return [u, p, p, u, u, p]

    clock = Durations(turns(0.5, 0.25) + turns(0.375, 0.125))
    with use_clock(clock):
        report = deployment_report(unpruned, pruned, x, tmp_path, Timing(warmup=1, repeats=repeats, threads=1))
    assert clock.calls == 2 * 4 * repeats
    assert report["pytorch"]["unpruned"] == {"ms": 500.0, "min_ms": 500.0, "max_ms": 500.0}
    assert report["pytorch"]["pruned"]["ms"] == 250.0 and report["pytorch"]["speedup"] == 2.0
    assert report["onnxruntime"]["unpruned"]["ms"] == 375.0 and report["onnxruntime"]["speedup"] == 3.0
    assert report["timing"] == {"warmup": 1, "repeats": 3, "threads": 1, "clock": "wall", "statistic": "median",
                                "batch": 4}
    assert report["onnx_file"] == "model.onnx" and report["max_abs_diff"] < 1e-4
    ort = OnnxRuntimeModule(tmp_path / "model.onnx")
    fresh = torch.randn(7, 3, 32, 32)  # another batch size: the batch dimension is dynamic
    torch.testing.assert_close(ort(fresh), pruned(fresh), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in unpruned.parameters())


class _CountsCalls(nn.Module):
    """Its output depends on how often it ran: the traced ONNX graph freezes the count it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * float(self.calls)


def test_an_onnx_graph_that_differs_from_pytorch_is_refused_and_removed(tmp_path):
    net = _CountsCalls().eval()
    x = torch.randn(2, 3, 8, 8)
    message = (r"(?s)onnxruntime's outputs differ from PyTorch's \(rtol=0\.0001, atol=1e-05\): .*"
               r"Greatest absolute difference.*the file was removed")
    with pytest.raises(ExportError, match=message):
        deployment_report(nn.Conv2d(3, 4, 3).eval(), net, x, tmp_path, Timing(warmup=0, repeats=1))
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_runtime_module_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"ONNX file '.*missing\.onnx' does not exist"):
        OnnxRuntimeModule(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match=r"onnxruntime cannot load the model: "):
        OnnxRuntimeModule(tmp_path / "bad.onnx")
    path = export_onnx(nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8), tmp_path / "conv.onnx")
    with pytest.raises(ConfigError, match=r"takes 1 input\(s\) \['input'\], got 2"):
        OnnxRuntimeModule(path)(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"ONNX export takes one input tensor, got tuple"):
        export_onnx(nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), tmp_path / "x.onnx")


def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wgates_plugin.app.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


def test_prune_with_onnx_then_export_onnx_again(tmp_path):
    out = tmp_path / "out"
    proc = _cli("prune", "--model", "resnet18", "--data", "digits", "--size", "16", "--flops-target", "0.5",
                "--batch-size", "16", "--onnx", "--onnx-batch", "2", "--onnx-repeats", "2", "--out", str(out), *TINY)
    assert "onnxruntime outputs within" in proc.stdout and "onnxruntime " in proc.stdout
    report = json.loads((out / "report.json").read_text())
    deployment = report["deployment"]
    assert deployment == json.loads((out / "deployment.json").read_text())
    assert deployment["timing"]["batch"] == 2 and deployment["max_abs_diff"] < 1e-3
    assert "## Deployment (ONNX)" in (out / "summary.md").read_text()
    model = load_pruned(out).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(OnnxRuntimeModule(out / "model.onnx")(x), model(x), rtol=1e-4, atol=1e-5)

    refused = _cli("export-onnx", str(out), ok=False)
    assert refused.stderr.startswith("wgates export-onnx: error: ") and "pass --force to overwrite" in refused.stderr
    again = _cli("export-onnx", str(out), "--force", "--onnx-batch", "1", "--onnx-repeats", "2")
    assert "saved model.onnx and deployment.json" in again.stdout
    assert json.loads((out / "deployment.json").read_text())["timing"]["batch"] == 1
    bad = _cli("export-onnx", str(out), "--force", "--onnx-repeats", "0", ok=False)
    assert "--onnx-repeats=0 must be >= 1" in bad.stderr


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0", "googlenet"])
def test_pruned_torchvision_models_run_the_same_in_onnxruntime(tmp_path, name):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    wg = WGates(model, x, target=0.5)
    wg.freeze()
    small = wg.export().eval()
    ort = OnnxRuntimeModule(export_onnx(small, x, tmp_path / f"{name}.onnx"))
    fresh = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ort(fresh), small(fresh), rtol=1e-4, atol=1e-4)


class CountingNet(nn.Module):
    """Counts its PyTorch forwards: onnxruntime runs the exported graph, never this Python code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.calls = nn.Conv2d(3, 4, 3), 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


@pytest.mark.parametrize(("runtime", "pytorch_forwards"), [("pytorch", 2 + 3), ("onnxruntime", 1)])
def test_timing_in_onnxruntime_runs_the_exported_graph(runtime, pytorch_forwards):
    from wgates_plugin.efficiency.timing import measure_times

    net, x = CountingNet().eval(), torch.randn(2, 3, 8, 8)
    with use_clock(Durations([0.001, 0.002, 0.003])):
        times = measure_times(net, x, Timing(warmup=2, repeats=3, threads=1, runtime=runtime))
    assert times == pytest.approx([1.0, 2.0, 3.0])
    assert net.calls == pytorch_forwards  # onnxruntime: the one traced forward of the export


def test_onnxruntime_is_another_device_for_a_latency_table():
    from wgates_plugin.efficiency.timing import device_name
    from wgates_plugin.profiling import collect_table

    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.zeros(1, 3, 16, 16)
    timing = Timing(warmup=0, repeats=1, threads=1, runtime="onnxruntime")
    ticks = iter(range(10_000))
    with use_clock(lambda: next(ticks) * 1e-3):  # every timed forward lasts exactly 1 ms
        table = collect_table(model, x, batch=1, timing=timing, points=2, progress=False)
    import onnxruntime

    assert table.context["device"] == device_name("cpu") + f" (onnxruntime {onnxruntime.__version__})"
    assert table.context["timing"]["runtime"] == "onnxruntime"
    assert all(v == pytest.approx(1.0) for t in table.tables.values() for row in t.ms for v in row)
    latency = table.for_model(model, x)  # the same runtime: accepted
    assert latency.reference() == pytest.approx(1.0)


def test_onnxruntime_timing_refuses_what_it_cannot_do():
    from wgates_plugin.efficiency.timing import measure_times

    with pytest.raises(ConfigError, match="runtime='tvm' is not one of \\('pytorch', 'onnxruntime'\\)"):
        Timing(runtime="tvm")
    with pytest.raises(ConfigError, match="onnxruntime's CPU execution; got device cuda"):
        measure_times(nn.Identity(), torch.ones(1), Timing(runtime="onnxruntime"), device="cuda")


def test_lpnet_collect_and_table_time_in_onnxruntime_from_the_command_line(tmp_path, capsys):
    from wgates_plugin.app.cli import main
    from wgates_plugin.efficiency import LatencyTable
    from wgates_plugin.profiling import load_samples

    common = ["--model", "resnet18", "--input-size", "16", "--batch", "1", "--warmup", "0", "--repeats", "1",
              "--runtime", "onnxruntime"]
    ticks = iter(range(100_000))
    with use_clock(lambda: next(ticks) * 1e-3):
        assert main(["lpnet", "table", *common, "--points", "2", "--out", str(tmp_path / "t.json")]) == 0
        assert main(["lpnet", "collect", *common, "--samples", "2", "--out", str(tmp_path / "s.jsonl")]) == 0
    table, samples = LatencyTable.load(tmp_path / "t.json"), load_samples(tmp_path / "s.jsonl")
    assert "(onnxruntime " in table.context["device"] and samples.context["device"] == table.context["device"]
    table.check_samples(samples.context)  # one device: the table can be scored on these samples
