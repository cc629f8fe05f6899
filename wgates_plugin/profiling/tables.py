"""Collecting a per-layer latency lookup table on this device (the cost model is
:class:`~wgates_plugin.efficiency.table.TableModel`).

Every Conv2d / Linear layer whose channels a gate moves is timed alone over a grid of channel counts;
the unpruned network and a few uniformly thinned ones are timed whole to calibrate the tables' sum.

Example (a deterministic clock stands in for the device):
    >>> import torch, torchvision
    >>> from wgates_plugin.efficiency.timing import SimulatedClock, Timing
    >>> model = torchvision.models.resnet18(num_classes=10).eval()
    >>> with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=1e-5):
    ...     table = collect_table(model, torch.zeros(1, 3, 32, 32), batch=2, timing=Timing(warmup=0, repeats=1),
    ...                           points=3, progress=False)
    >>> round(table.scale, 6)  # the simulated device's latency is exactly the tables' sum plus a constant
    1.0
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..efficiency.flops import count_macs
from ..efficiency.latency import context_timing, measure_in_context, measurement_context
from ..efficiency.table import LatencyTable, LayerSpec, LayerTable, grid, varying_layers
from ..efficiency.timing import Timing, fixed_threads, measure_interleaved, measure_times
from ..errors import ConfigError, ConfigTypeError, MeasurementError
from ..utils import check_number, kept_modes
from .candidates import CandidateSpace

if TYPE_CHECKING:
    from torch import nn

    from ..config import WGatesConfig

__all__ = ["collect_table", "measure_alignment", "ALIGNMENTS"]

ALIGNMENTS = (1, 2, 4, 8, 16)
"""The channel multiples ``round_to='auto'`` tries (SIMD lanes and NCHWc blocks are 4, 8 or 16 wide)."""


def collect_table(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    config: WGatesConfig | None = None,
    device: str | torch.device = "cpu",
    batch: int = 8,
    timing: Timing | None = None,
    points: int = 6,
    round_to: int | str = 1,
    calibrate: int = 3,
    model_name: str | None = None,
    progress: bool = True,
) -> LatencyTable:
    """Time every layer whose channels a gate moves, alone, over a grid of channel counts; and the unpruned model.

    Args:
        model: the unpruned model (not modified; its train/eval modes are restored).
        example_inputs: an image batch ``(N, C, H, W)`` for tracing; the unpruned model is timed on a
            random batch of shape ``(batch, C, H, W)`` and each layer on its own input at that batch.
        config: selects the gated groups, as for ``WGates``.
        device / batch / timing: where and how every latency is measured (default :class:`Timing`).
        points: grid points per varying axis (>= 2): kept fractions ``0, 1/(points-1), ..., 1``.
        round_to: grid counts are multiples of it (with the full width), to match ``WGates(round_to=...)``;
            ``'auto'``: the multiple this device wants, measured first by :func:`measure_alignment`
            (stored in ``info['alignment']``; :attr:`LatencyTable.round_to` is what to prune with).
        calibrate: whole networks timed to fit the tables' scale: the unpruned one and ``calibrate - 1``
            uniformly thinned ones (every group at kept fractions evenly spaced in (0, 1)); 1 fits
            nothing (scale 1, the remainder only).
        model_name: stored in the context (default the model's class name).
        progress: show a progress bar.

    Raises:
        ConfigTypeError: ``example_inputs`` is not a 4-D tensor.
        ConfigError: ``points``, ``round_to``, ``batch`` or ``calibrate`` out of range (``round_to``: an int
            >= 1 or ``'auto'``).
        MeasurementError: the thinned networks did not measure faster than the unpruned one (no scale fits).
    """
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise ConfigTypeError("example_inputs must be an image tensor (N, C, H, W) for a latency table")
    check_number("points", points, ">= 2", integer=True, what="an integer", type_error=ConfigError)
    if round_to != "auto" and not (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
        raise ConfigError(f"round_to={round_to!r} must be an integer >= 1 or 'auto' (the multiple measured on the "
                          "device, see measure_alignment)")
    check_number("batch", batch, ">= 1", integer=True, what="an integer", type_error=ConfigError)
    check_number("calibrate", calibrate, ">= 1", integer=True, what="an integer", type_error=ConfigError)
    timing = timing or Timing()
    with kept_modes(model):
        return _collect(model.eval(), example_inputs, config, device, batch, timing, points, round_to, calibrate,
                        model_name, progress)


def _collect(model: nn.Module, example_inputs: torch.Tensor, config: WGatesConfig | None, device: str | torch.device,
             batch: int, timing: Timing, points: int, round_to: int | str, calibrate: int, model_name: str | None,
             progress: bool) -> LatencyTable:
    start = time.perf_counter()
    space = CandidateSpace(model, example_inputs, config)
    groups = space.groups
    specs, channels = varying_layers(model, example_inputs, groups)
    context = measurement_context(model, example_inputs, timing, device, batch, model_name) | {
        "groups": [g.name for g in groups], "sizes": [int(g.size) for g in groups]}
    unique = {s.key(): s for _, s in specs}
    tables: dict[str, LayerTable] = {}
    alignment = None
    with fixed_threads(timing.resolved_threads()):
        if round_to == "auto":
            alignment = _alignment(space, context)
            round_to = alignment["round_to"]
        bar = tqdm(unique.items(), desc="latency table", unit="layer", disable=not progress)
        for key, spec in bar:
            tables[key] = _measure_spec(spec, points, round_to, batch, device, timing)
        reference = measure_in_context(model, context)
        table = LatencyTable(tables, [(n, s.key()) for n, s in specs], channels, context,
                             {"ms": timing.summary(reference), "times": reference}, {})
        table.calibration = _calibration(table, space, calibrate, round_to)
    measurements = sum(len(t.c_in) * len(t.c_out) for t in tables.values())
    table.info = {"points": points, "round_to": round_to, "calibrate": calibrate, "measurements": measurements,
                  "layers": len(specs), "tables": len(tables), "seconds": round(time.perf_counter() - start, 3)}
    if alignment is not None:
        table.info["alignment"] = alignment
    return table


def measure_alignment(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    config: WGatesConfig | None = None,
    device: str | torch.device = "cpu",
    batch: int = 8,
    timing: Timing | None = None,
    candidates: tuple[int, ...] = ALIGNMENTS,
    fraction: float = 0.5,
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """The channel multiple this device's kernels want: whole networks timed with counts at each alignment.

    For every candidate ``r`` one network is built whose every group keeps a multiple of ``r`` but not of
    ``2 r`` channels, just below the count at ``fraction`` of its width rounded to the largest candidate
    (e.g. 31, 30, 28, 24 and 16 below 32). They are timed whole, in turns, and each is scored in
    milliseconds (of the timed batch) per GMAC (of one input), ``ms_per_gmac``; the answer is the
    smallest ``r`` whose score is within ``1 + tolerance`` of the best. Where kernels fall off a fast
    path at unaligned widths (onnxruntime's NCHWc blocks of 8 or 16 channels, depthwise layers
    especially; benchmarks/RESULTS.md, "Deployment"), the unaligned networks cost more per MAC and a
    larger multiple wins; where they do not, the answer is 1 and pruning keeps every count open.

    Returns:
        ``{'round_to': r, 'fraction', 'tolerance', 'candidates': [{'round_to', 'counts', 'macs', 'ms',
        'ms_per_gmac'}, ...]}``.

    Raises:
        ConfigError: ``candidates`` not distinct ints >= 1, ``fraction`` outside (0, 1), ``tolerance`` < 0.
    """
    if (not isinstance(candidates, (tuple, list)) or not candidates or len(set(candidates)) != len(candidates)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in candidates)):
        raise ConfigError(f"candidates={candidates!r} must be distinct integers >= 1, e.g. {ALIGNMENTS}")
    check_number("fraction", fraction, "(0, 1)", what="", type_error=ConfigError)
    check_number("tolerance", tolerance, ">= 0", type_error=ConfigError)
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise ConfigTypeError("example_inputs must be an image tensor (N, C, H, W) to measure alignment")
    timing = timing or Timing()
    with kept_modes(model):
        model.eval()
        space = CandidateSpace(model, example_inputs, config)
        context = measurement_context(model, example_inputs, timing, device, batch, None)
        with fixed_threads(timing.resolved_threads()):
            return _alignment(space, context, tuple(sorted(candidates)), fraction, tolerance)


def _alignment(space: CandidateSpace, context: dict[str, Any], candidates: tuple[int, ...] = ALIGNMENTS,
               fraction: float = 0.5, tolerance: float = 0.1) -> dict[str, Any]:
    timing = context_timing(context)
    counts = [[_unaligned(b, fraction, r, candidates[-1]) for b in space.bounds] for r in candidates]
    nets = [space.build(c) for c in counts]
    x = torch.randn(context["batch"], *context["input_shape"], device=context["device"].split(":")[0])
    times = measure_interleaved(nets, x, timing)  # in turns: a drift of the machine falls on all alike
    points = []
    for r, c, net, t in zip(candidates, counts, nets, times):
        ms, macs = timing.summary(t), count_macs(net, space.example_inputs)
        points.append({"round_to": r, "counts": c, "macs": macs, "ms": ms, "ms_per_gmac": 1e9 * ms / macs})
    best = min(p["ms_per_gmac"] for p in points)
    chosen = next(p["round_to"] for p in points if p["ms_per_gmac"] <= (1 + tolerance) * best)
    return {"round_to": chosen, "fraction": fraction, "tolerance": tolerance, "candidates": points}


def _unaligned(bounds: Any, fraction: float, r: int, largest: int) -> int:
    """A count of a group near ``fraction`` of its width that is a multiple of ``r`` (and of the group's
    unit) but not of ``2 r``: the largest such count below the ``largest``-aligned one, within bounds
    (the aligned count itself where the group has no room below it)."""
    base = _thinned(bounds, fraction, largest)
    step = math.lcm(bounds.tie, r)
    low = max(bounds.low * bounds.tie, step)
    count = (base - 1) // step * step
    while count >= low and count % (2 * r) == 0:
        count -= step
    return count if count >= low else base


def _calibration(table: LatencyTable, space: CandidateSpace, calibrate: int, round_to: int) -> dict[str, Any]:
    """The tables' scale: least squares through the unpruned network's point, over uniformly thinned ones
    (their counts multiples of ``round_to``, as the networks the table will price)."""
    full = table.own_model()  # scale 1
    ref_ms, ref_tables = float(table.reference["ms"]), full.tables_ms(space.full_counts())
    points = [{"fraction": 1.0, "counts": space.full_counts(), "ms": ref_ms, "tables_ms": ref_tables}]
    for i in range(1, calibrate):
        fraction = 1 - i / calibrate
        counts = [_thinned(b, fraction, round_to) for b in space.bounds]
        ms = context_timing(table.context).summary(measure_in_context(space.build(counts), table.context))
        points.append({"fraction": fraction, "counts": counts, "ms": ms, "tables_ms": full.tables_ms(counts)})
    dx = [p["tables_ms"] - ref_tables for p in points[1:]]
    dy = [p["ms"] - ref_ms for p in points[1:]]
    denominator = sum(d * d for d in dx)
    scale = sum(a * b for a, b in zip(dx, dy)) / denominator if denominator > 0 else 1.0
    if not (math.isfinite(scale) and scale > 0):
        raise MeasurementError(
            f"the whole networks measured {[round(p['ms'], 4) for p in points]} ms where the tables sum to "
            f"{[round(p['tables_ms'], 4) for p in points]} ms: thinner networks did not measure faster, so the "
            "tables cannot be calibrated. HINT: measure again with more repeats and no other jobs on the cores "
            "(or clock='cpu' with threads=1)")
    return {"scale": scale, "points": points}


def _thinned(bounds: Any, fraction: float, round_to: int) -> int:
    """The count a group keeps at ``fraction`` of its width: a multiple of its unit and of ``round_to``
    (or the whole group), within its bounds."""
    step = math.lcm(bounds.tie, round_to)
    full = bounds.high * bounds.tie
    count = min(full, max(step, step * round(fraction * full / step), bounds.low * bounds.tie))
    return count if count % bounds.tie == 0 else full


def _measure_spec(spec: LayerSpec, points: int, round_to: int, batch: int, device: str | torch.device,
                  timing: Timing) -> LayerTable:
    vary_in, vary_out = spec.axes
    step = math.lcm(spec.step, round_to)
    c_in = grid(spec.in_channels, points, step) if vary_in else [spec.in_channels]
    c_out = grid(spec.out_channels, points, step) if vary_out else [spec.out_channels]
    ms = []
    for ci in c_in:
        row = []
        for co in c_out:
            layer = spec.build(co if spec.depthwise else ci, co)
            x = spec.example(co if spec.depthwise else ci, batch, device)
            row.append(timing.summary(measure_times(layer, x, timing, device)))
        ms.append(row)
    return LayerTable(spec, c_in, c_out, ms)


