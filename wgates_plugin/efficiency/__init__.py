"""Efficiency models: map a channel-count encoding to a cost (FLOPs, measured latency)."""

from .base import EfficiencyModel
from .flops import FlopsModel, LayerShape, count_macs, record_layer_shapes

__all__ = ["EfficiencyModel", "FlopsModel", "LayerShape", "count_macs", "record_layer_shapes"]
