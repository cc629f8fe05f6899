"""Front ends for the host frameworks, each loaded on first access: NNI 3 pruners (:mod:`.nni`
``WGatesPruner``, :mod:`.nni_gate_decorator` ``GateDecoratorPruner``, both on :mod:`.nni_front`; the
``nni`` extra) and torch-pruning's importance and pruner (:mod:`.torch_pruning`)."""

from __future__ import annotations

from typing import Any

from ..utils import import_front_end

__all__ = ["WGatesPruner", "WGatesImportance", "WGatesMetaPruner", "GateDecoratorPruner"]

_HOMES = {"WGatesPruner": ".nni", "WGatesImportance": ".torch_pruning", "WGatesMetaPruner": ".torch_pruning",
          "GateDecoratorPruner": ".nni_gate_decorator"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_front_end(__name__ + _HOMES[name]), name)
