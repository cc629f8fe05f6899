"""W-Gates: weight-dependent gates for network pruning (Li et al., arXiv:2007.02066).

The public API is small; framework integrations (NNI, torch-pruning) live in
``wgates_plugin.integrations`` and are imported only when used.
"""

from __future__ import annotations

from typing import Any

from .config import BudgetMode, LayerBounds, WGatesConfig
from .efficiency import EfficiencyModel, FlopsModel, count_macs
from .errors import (
    BudgetError,
    ConfigError,
    ConfigTypeError,
    ExportError,
    MeasurementError,
    StateError,
    TracingError,
    WGatesError,
)
from .gate_decorator import GateDecorator
from .gates import ScoreInput
from .pruner import WGates
from .speedup import speedup  # eager: a lazy function named like its module would be shadowed by it
from .tick_tock import TickTock

__version__ = "0.1.0"

# Imported on first access, so that ``import wgates_plugin`` does not import nni.
_LAZY = {
    "WGatesPruner": "wgates_plugin.integrations.nni",
    "WGatesImportance": "wgates_plugin.integrations.torch_pruning",
    "WGatesMetaPruner": "wgates_plugin.integrations.torch_pruning",
    "GateDecoratorPruner": "wgates_plugin.integrations.nni_gate_decorator",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'wgates_plugin' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "WGates",
    "WGatesConfig",
    "WGatesPruner",
    "WGatesImportance",
    "WGatesMetaPruner",
    "GateDecorator",
    "GateDecoratorPruner",
    "TickTock",
    "speedup",
    "BudgetMode",
    "LayerBounds",
    "ScoreInput",
    "EfficiencyModel",
    "FlopsModel",
    "count_macs",
    "WGatesError",
    "ConfigError",
    "ConfigTypeError",
    "BudgetError",
    "ExportError",
    "MeasurementError",
    "StateError",
    "TracingError",
    "__version__",
]
