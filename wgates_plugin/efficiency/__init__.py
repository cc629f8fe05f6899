"""Cost models: map a channel-count encoding to a cost (FLOPs, latency predicted by an LPNet or a per-layer
lookup table).

They depend on the channel groups only; the tooling that measures latencies and trains LPNets is
:mod:`wgates_plugin.profiling`.
"""

from ..errors import LatencyContextError
from .base import EfficiencyModel
from .blocks import BlockEncoder, find_blocks
from .flops import FlopsModel, LayerShape, count_macs, record_layer_shapes
from .latency import LatencyModel, LatencyPredictor, MeasuredLatency, architecture_hash
from .lpnet import (
    WEIGHT_DECAY_GRID,
    FitConfig,
    LatencyErrors,
    LPNet,
    latency_errors,
    select_weight_decay,
    split_indices,
)
from .table import LatencyTable, TableModel
from .timing import (
    SimulatedClock,
    Timing,
    device_name,
    measure_interleaved,
    measure_ms,
    measure_paired,
    summarize,
    use_clock,
)

__all__ = [
    "EfficiencyModel", "FlopsModel", "LayerShape", "count_macs", "record_layer_shapes",
    "Timing", "measure_ms", "measure_interleaved", "measure_paired", "summarize", "device_name", "use_clock",
    "SimulatedClock",
    "LatencyContextError",
    "BlockEncoder", "find_blocks", "architecture_hash",
    "LPNet", "FitConfig", "LatencyErrors", "latency_errors", "split_indices", "select_weight_decay",
    "WEIGHT_DECAY_GRID",
    "LatencyPredictor", "LatencyModel", "MeasuredLatency", "LatencyTable", "TableModel",
]
