"""Efficiency models: map a channel-count encoding to a cost (FLOPs, measured latency)."""

from .base import EfficiencyModel
from .blocks import BlockEncoder, find_blocks
from .candidates import CandidateSpace
from .flops import FlopsModel, LayerShape, count_macs, record_layer_shapes
from .latency import LatencyModel, LatencyPredictor
from .lpnet import FitConfig, LatencyErrors, LPNet, latency_errors
from .lpnet_fit import evaluate_predictor, train_predictor
from .profiler import collect_latency
from .samples import LatencyContextError, LatencySamples, load_samples
from .timing import SimulatedClock, Timing, device_name, measure_ms, use_clock

__all__ = [
    "EfficiencyModel", "FlopsModel", "LayerShape", "count_macs", "record_layer_shapes",
    "CandidateSpace", "Timing", "measure_ms", "device_name", "use_clock", "SimulatedClock", "collect_latency",
    "LatencySamples", "load_samples", "LatencyContextError",
    "BlockEncoder", "find_blocks",
    "LPNet", "FitConfig", "LatencyErrors", "latency_errors",
    "LatencyPredictor", "LatencyModel", "train_predictor", "evaluate_predictor",
]
