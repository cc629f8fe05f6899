"""W-Gates: weight-dependent gates for network pruning (Li et al., arXiv:2007.02066).

The public API is small; framework integrations (NNI, torch-pruning) live in
``wgates_plugin.integrations`` and are imported only when used.
"""

from __future__ import annotations

from .config import BudgetMode, LayerBounds, WGatesConfig
from .efficiency import EfficiencyModel, FlopsModel, count_macs
from .errors import (
    BudgetError,
    ConfigError,
    ConfigTypeError,
    ExportError,
    StateError,
    TracingError,
    WGatesError,
)
from .gates import ScoreInput
from .pruner import WGates

__version__ = "0.1.0"

__all__ = [
    "WGates",
    "WGatesConfig",
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
    "StateError",
    "TracingError",
    "__version__",
]
