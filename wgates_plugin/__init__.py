"""W-Gates: weight-dependent gates for network pruning (Li et al., arXiv:2007.02066).

The public API is small: the W-Gates method (:class:`WGates`), its configuration, the cost models'
base, :func:`speedup` for any NNI pruner's masks, and the errors. Framework front ends (NNI,
torch-pruning) live in ``wgates_plugin.integrations`` and are imported only when used; Gate Decorator
is under :mod:`wgates_plugin.gate_decorator`; the layers below are documented in ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from typing import Any

from .budget import Budget
from .config import BudgetMode, LayerBounds, ScoreInput, WGatesConfig
from .efficiency import EfficiencyModel, FlopsModel, count_macs
from .errors import (
    BudgetError,
    ConfigError,
    ConfigTypeError,
    ExportError,
    FileFormatError,
    LatencyContextError,
    MeasurementError,
    MissingFileError,
    StateError,
    TracingError,
    WGatesError,
)
from .pruner import WGates
from .speedup import speedup  # eager: a lazy function named like its module would be shadowed by it
from .utils import import_front_end

__version__ = "0.1.0"

# Imported on first access, so that ``import wgates_plugin`` does not import nni.
_LAZY = {
    "WGatesPruner": "wgates_plugin.integrations.nni",
    "WGatesImportance": "wgates_plugin.integrations.torch_pruning",
    "WGatesMetaPruner": "wgates_plugin.integrations.torch_pruning",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'wgates_plugin' has no attribute {name!r}")
    return getattr(import_front_end(_LAZY[name]), name)



__all__ = [
    "WGates",
    "WGatesConfig",
    "WGatesPruner",
    "WGatesImportance",
    "WGatesMetaPruner",
    "speedup",
    "Budget",
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
    "FileFormatError",
    "LatencyContextError",
    "MeasurementError",
    "MissingFileError",
    "StateError",
    "TracingError",
    "__version__",
]
