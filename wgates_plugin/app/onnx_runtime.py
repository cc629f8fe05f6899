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

import inspect
import io
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..efficiency.timing import Timing, measure_times
from ..errors import ConfigError, ExportError
from ..export import check_outputs
from ..files import atomic_path
from ..utils import eval_outputs, kept_modes, tensors_in

__all__ = ["OPSET", "require_onnx", "export_onnx", "onnx_bytes", "OnnxRuntimeModule", "deployment_report",
           "format_deployment"]

OPSET = 17


def require_onnx() -> Any:
    """onnxruntime, or a :class:`ConfigError` naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX export and onnxruntime timing need the onnx extra: "
                          "pip install 'wgates-plugin[onnx]'") from None
    return onnxruntime


def onnx_bytes(model: nn.Module, example_inputs: torch.Tensor, opset: int = OPSET) -> bytes:
    """The ONNX graph of ``model`` in eval mode on a batch like ``example_inputs`` (batch size dynamic).

    Uses torch's TorchScript-based exporter where torch still offers it (``dynamo=False``): it needs
    no extra package and handles every torchvision/timm CNN the plugin prunes.

    Raises:
        ConfigError: ``example_inputs`` is not one tensor.
        ExportError: torch cannot export the model.
    """
    if not torch.is_tensor(example_inputs):
        raise ConfigError(f"ONNX export takes one input tensor, got {type(example_inputs).__name__}")
    options: dict[str, Any] = {"input_names": ["input"], "opset_version": opset,
                               "dynamic_axes": {"input": {0: "batch"}}}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    buffer = io.BytesIO()
    with kept_modes(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        try:
            torch.onnx.export(model.eval(), (example_inputs,), buffer, **options)
        except Exception as exc:  # torch raises many types (UnsupportedOperatorError, RuntimeError, ...)
            raise ExportError(f"torch.onnx.export failed on {type(model).__name__}: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:400]}") from exc
    return buffer.getvalue()


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | Path, opset: int = OPSET) -> Path:
    """Write the ONNX graph of ``model`` to ``path`` (atomically: never a torn file) and return the path."""
    data = onnx_bytes(model, example_inputs, opset)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


class OnnxRuntimeModule(nn.Module):
    """An ONNX model run by onnxruntime on the CPU, called like the PyTorch module it came from.

    Args:
        model: a path to an ``.onnx`` file, or its bytes.
        threads: onnxruntime's intra-op threads (inter-op is 1); None lets onnxruntime choose.
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = 1) -> None:
        super().__init__()
        ort = require_onnx()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        if not isinstance(model, (bytes, bytearray)) and not Path(source).is_file():
            raise ConfigError(f"ONNX file '{source}' does not exist")
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            raise ConfigError(f"onnxruntime cannot load the model: {type(exc).__name__}: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"the ONNX model takes {len(self.input_names)} input(s) {self.input_names}, "
                              f"got {len(inputs)}")
        feed = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _median_ms(module: nn.Module, inputs: torch.Tensor, timing: Timing) -> dict[str, float]:
    times = measure_times(module, inputs, timing, "cpu")
    return {"ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def deployment_report(unpruned: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor, out: str | Path,
                      timing: Timing | None = None, rtol: float = 1e-4, atol: float = 1e-5) -> dict[str, Any]:
    """Export ``pruned`` to ``<out>/model.onnx``, check onnxruntime's outputs on ``example_inputs`` against
    PyTorch's, and time the unpruned and the pruned model in PyTorch and in onnxruntime.

    ``timing`` (default ``Timing(threads=1)``) is used for both runtimes (its threads are onnxruntime's
    intra-op threads). Every latency is the median of ``timing.repeats`` forwards of ``example_inputs``
    after ``timing.warmup`` untimed ones.

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
                                         "batch": int(example_inputs.shape[0])}}
    for runtime, (full, small) in (("pytorch", (unpruned, pruned)), ("onnxruntime", (unpruned_ort, pruned_ort))):
        before, after = _median_ms(full, example_inputs, timing), _median_ms(small, example_inputs, timing)
        report[runtime] = {"unpruned": before, "pruned": after, "speedup": before["ms"] / after["ms"]}
    return report


def format_deployment(report: dict[str, Any]) -> str:
    """The deployment table: latency of the unpruned and pruned model in PyTorch and onnxruntime."""
    t = report["timing"]
    lines = [f"ONNX: {report['onnx_file']} (opset {report['opset']}), onnxruntime outputs within "
             f"{report['max_abs_diff']:.2e} of PyTorch's",
             f"latency (ms, batch {t['batch']}, {t['threads']} thread(s), median of {t['repeats']}):",
             f"{'':14}{'unpruned':>10}{'pruned':>10}{'speedup':>9}"]
    for runtime in ("pytorch", "onnxruntime"):
        r = report[runtime]
        lines.append(f"{runtime:14}{r['unpruned']['ms']:>10.2f}{r['pruned']['ms']:>10.2f}{r['speedup']:>8.2f}x")
    return "\n".join(lines)
