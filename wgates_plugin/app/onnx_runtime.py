"""A pruned model where it is served: ONNX export, onnxruntime outputs checked against PyTorch's, and
the latency in onnxruntime beside PyTorch's (fewer FLOPs do not always mean a faster runtime).

* :func:`export_onnx` writes the model's eval graph (batch dimension dynamic) atomically.
* :class:`OnnxRuntimeModule` runs an ONNX file in onnxruntime as an ``nn.Module`` (tensors in,
  tensors out), so every consumer of timings — :func:`~wgates_plugin.efficiency.timing.measure_ms`,
  the closed-loop latency landing, the benchmarks — can use onnxruntime as its device, and
  :func:`~wgates_plugin.export.check_outputs` compares its outputs with PyTorch's.
* :func:`deployment_report` exports the unpruned and the pruned model, checks the pruned one's
  outputs in onnxruntime, and times both in both runtimes with one :class:`Timing`.

Needs the ``onnx`` extra (``pip install 'wgates-plugin[onnx]'``: onnx, onnxruntime).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from wgates_plugin.app.onnx_runtime import OnnxRuntimeModule, export_onnx
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> path = export_onnx(net, x, "net.onnx")  # written atomically
    >>> ort = OnnxRuntimeModule(path)
    >>> torch.allclose(ort(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..efficiency.runtime import OPSET, OnnxRuntimeModule, onnx_bytes, require_onnx
from ..efficiency.timing import Timing, measure_interleaved
from ..errors import ExportError
from ..export import check_outputs
from ..files import atomic_path
from ..utils import eval_outputs, tensors_in

__all__ = ["OPSET", "require_onnx", "export_onnx", "onnx_bytes", "OnnxRuntimeModule", "deployment_report",
           "format_deployment"]

def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | Path, opset: int = OPSET) -> Path:
    """Write the ONNX graph of ``model`` to ``path`` (atomically: never a torn file) and return the path."""
    data = onnx_bytes(model, example_inputs, opset)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _latency(times: list[float], timing: Timing) -> dict[str, float]:
    return {"ms": timing.summary(times), "min_ms": min(times), "max_ms": max(times)}


def deployment_report(unpruned: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor, out: str | Path,
                      timing: Timing | None = None, rtol: float = 1e-4, atol: float = 1e-5) -> dict[str, Any]:
    """Export ``pruned`` to ``<out>/model.onnx``, check onnxruntime's outputs on ``example_inputs`` against
    PyTorch's, and time the unpruned and the pruned model in PyTorch and in onnxruntime.

    ``timing`` (default ``Timing(threads=1)``) is used for both runtimes (its threads are onnxruntime's
    intra-op threads). Every latency is ``timing.statistic`` (the median by default) of
    ``timing.repeats`` forwards of ``example_inputs`` after ``timing.warmup`` untimed ones; in each
    runtime the unpruned and the pruned model are timed in turns (:func:`measure_interleaved`), so a
    drift of the machine's speed does not enter the speedup.

    Returns:
        ``{"onnx_file", "max_abs_diff", "opset", "pytorch": {...}, "onnxruntime": {...}, "timing"}``;
        each runtime holds ``unpruned`` and ``pruned`` (``ms``, ``min_ms``, ``max_ms``) and ``speedup``.

    Raises:
        ExportError: onnxruntime's outputs differ from PyTorch's (the file is removed).
    """
    timing = timing or Timing(threads=1)
    out = Path(out)
    path = export_onnx(pruned, example_inputs, out / "model.onnx")
    pruned_ort = OnnxRuntimeModule(path, timing.threads)
    expected = eval_outputs(pruned, example_inputs)
    try:
        check_outputs(pruned_ort, example_inputs, expected, rtol, atol, subject="onnxruntime's outputs differ from "
                      "PyTorch's", hint="The ONNX graph does not compute what the module does (Python state or "
                      "control flow the tracer froze); the file was removed.")
    except ExportError:
        path.unlink(missing_ok=True)
        raise
    actual = pruned_ort(example_inputs)
    diff = max(float((a - e).abs().max()) for a, e in zip(tensors_in(actual), tensors_in(expected)))
    unpruned_ort = OnnxRuntimeModule(onnx_bytes(unpruned, example_inputs), timing.threads)
    report: dict[str, Any] = {"onnx_file": path.name, "max_abs_diff": diff, "opset": OPSET,
                              "timing": {"warmup": timing.warmup, "repeats": timing.repeats,
                                         "threads": timing.threads, "clock": timing.clock,
                                         "statistic": timing.statistic, "batch": int(example_inputs.shape[0])}}
    for runtime, (full, small) in (("pytorch", (unpruned, pruned)), ("onnxruntime", (unpruned_ort, pruned_ort))):
        times = measure_interleaved([full, small], example_inputs, timing, "cpu")
        before, after = _latency(times[0], timing), _latency(times[1], timing)
        report[runtime] = {"unpruned": before, "pruned": after, "speedup": before["ms"] / after["ms"]}
    return report


def format_deployment(report: dict[str, Any]) -> str:
    """The deployment table: latency of the unpruned and pruned model in PyTorch and onnxruntime."""
    t = report["timing"]
    lines = [f"ONNX: {report['onnx_file']} (opset {report['opset']}), onnxruntime outputs within "
             f"{report['max_abs_diff']:.2e} of PyTorch's",
             f"latency (ms, batch {t['batch']}, {t['threads']} thread(s), {t.get('statistic', 'median')} of "
             f"{t['repeats']}, the two models timed in turns):",
             f"{'':14}{'unpruned':>10}{'pruned':>10}{'speedup':>9}"]
    for runtime in ("pytorch", "onnxruntime"):
        r = report[runtime]
        lines.append(f"{runtime:14}{r['unpruned']['ms']:>10.2f}{r['pruned']['ms']:>10.2f}{r['speedup']:>8.2f}x")
    return "\n".join(lines)
