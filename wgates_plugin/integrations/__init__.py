"""Front ends for the host frameworks, imported only when used.

- :mod:`wgates_plugin.integrations.nni` — :class:`WGatesPruner`, an NNI 3 pruner (needs ``nni``).
- :mod:`wgates_plugin.integrations.nni_gate_decorator` — :class:`GateDecoratorPruner`, Gate Decorator as an
  NNI 3 pruner (needs ``nni``).
- :mod:`wgates_plugin.integrations.torch_pruning` — :class:`WGatesImportance` and
  :class:`WGatesMetaPruner` for torch-pruning's pruning loop.

``import wgates_plugin.integrations`` imports neither; each name loads its module on first access.
"""

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
