"""Gate Decorator (You et al., NeurIPS 2019), the second method on the channel-gating core:
:class:`GateDecorator` (:mod:`.method`), the Tick-Tock schedule (:mod:`.tick_tock`) and the NNI front
end ``GateDecoratorPruner`` (imported on first access, so that importing this package imports no nni).
"""

from __future__ import annotations

from typing import Any

from ..utils import import_front_end
from .method import GateDecorator, ScaleSite
from .tick_tock import TickTock, TickTockTrace, run_tick_tock

__all__ = ["GateDecorator", "ScaleSite", "TickTock", "TickTockTrace", "run_tick_tock", "GateDecoratorPruner"]


def __getattr__(name: str) -> Any:
    if name == "GateDecoratorPruner":
        return import_front_end("wgates_plugin.integrations.nni_gate_decorator").GateDecoratorPruner
    raise AttributeError(f"module 'wgates_plugin.gate_decorator' has no attribute {name!r}")
