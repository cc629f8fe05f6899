"""Latency tooling, above the core: the space of pruned candidates, latency collection on this device,
the samples file format, training / scoring latency predictors, and collecting per-layer latency tables.

The cost models these produce (:class:`~wgates_plugin.efficiency.LatencyPredictor`,
:class:`~wgates_plugin.efficiency.LatencyModel`) live in :mod:`wgates_plugin.efficiency`.
"""

from .candidates import CandidateSpace
from .lpnet_fit import evaluate_predictor, evaluate_table, train_predictor
from .profiler import capture_block_inputs, collect_latency, time_blocks
from .samples import LatencySamples, SampleWriter, load_samples
from .tables import collect_table, measure_alignment

__all__ = ["CandidateSpace", "collect_latency", "time_blocks", "capture_block_inputs", "LatencySamples",
           "SampleWriter", "load_samples", "train_predictor", "evaluate_predictor", "evaluate_table", "collect_table",
           "measure_alignment"]
