"""Running a model in onnxruntime as a PyTorch module: the ONNX graph of a module (:func:`onnx_bytes`)
and :class:`OnnxRuntimeModule`, which every consumer of timings can use as its device
(``Timing(runtime="onnxruntime")``). Export to files and the deployment report are in
:mod:`wgates_plugin.app.onnx_runtime`. Needs the ``onnx`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ExportError
from ..utils import kept_modes

__all__ = ["OPSET", "require_onnx", "onnx_bytes", "OnnxRuntimeModule"]

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
