"""A per-layer latency lookup table: the network's latency as the sum of its layers' measured latencies,
each a function of the layer's live input and output channels (HALP, Shen et al., NeurIPS 2022: a
latency table per layer over its channel counts; MDP, Sun et al., CVPR 2025: over input *and* output
channels).

Collection (:func:`~wgates_plugin.profiling.collect_table`) times every Conv2d / Linear layer whose channels
follow a gated group *alone*, as a fresh layer with the same kernel, stride, padding, dilation, grouping and bias, fed
a random input of the size it receives inside the network, at a grid of channel counts: the kept
fraction ``0, 1/(P-1), ..., 1`` of each varying axis (snapped to what the layer allows; ``P`` =
``points``). A depthwise conv has one axis (its channels); a layer whose input and output both vary
has a ``P x P`` table. Layers of equal settings and input size share one table, so a ResNet's repeated
blocks are measured once.

Prediction (:class:`TableModel`) maps the gate counts to every layer's live channels (the same
:class:`~wgates_plugin.efficiency.flops.ChannelMap` the FLOPs model uses), reads each table by bilinear
interpolation — piecewise linear in the counts, so differentiable in the gates — and calibrates the
sum to whole networks: ``latency = scale * sum + remainder``. The remainder makes the unpruned
network predict its measurement (it holds what the tables do not see: layers no gate touches,
framework overhead); the scale is fitted by least squares on a few uniformly thinned networks timed
whole at collection (``calibrate``), and absorbs what grows with the tabulated convs but is not in
them: the normalisation and activation layers between them, and the difference between a layer timed
alone and inside the network.

What a table cannot see: how these effects differ from layer to layer (the scale is one number for
the network). :mod:`benchmarks.latency_table` measures the resulting error
beside the LPNet's on the same held-out networks.

A table is tied to a device, batch, input size and timing (checked when binding), not to one
architecture: :meth:`LatencyTable.for_model` binds it to any model whose varying layers it holds
(resnet18's table serves a resnet34 at the same input size), measuring that model's unpruned latency
for the remainder.

Files are JSON (``wgates-latency-table/1``): every number is checked finite and positive and every
table's shape against its grids when loading; nothing in a file is executed.

Example (a deterministic clock stands in for the device; a conv's latency is then bilinear in its
channels, which the table's interpolation reproduces exactly):
    >>> import torch, torchvision
    >>> from wgates_plugin.efficiency.timing import SimulatedClock, Timing
    >>> from wgates_plugin.profiling import collect_table
    >>> model = torchvision.models.resnet18(num_classes=10).eval()
    >>> x = torch.zeros(1, 3, 32, 32)
    >>> with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=1e-5):
    ...     table = collect_table(model, x, batch=2, timing=Timing(warmup=0, repeats=1), points=3,
    ...                           progress=False)
    >>> table.info["layers"], table.info["tables"]  # resnet18's 16 varying convs share 11 tables
    (16, 11)
    >>> latency = table.for_model(model, x)  # an EfficiencyModel: WGates(..., efficiency=latency)
    >>> abs(latency.predicted_reference() - latency.reference()) < 1e-4  # the remainder calibrates it
    True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError, ConfigTypeError, FileFormatError, LatencyContextError
from ..files import LIMITS, read_json, require, write_text
from ..groups import ChannelGroup, gated_groups
from .flops import ChannelMap, FlopsModel, LayerShape, record_layer_shapes
from .latency import (
    MEASUREMENT_KEYS,
    MeasuredLatency,
    architecture_hash,
    check_measurement_use,
    context_diff,
    context_timing,
    measure_in_context,
    protocol_diff,
)

if TYPE_CHECKING:
    from ..config import WGatesConfig

__all__ = ["TABLE_FORMAT", "LayerSpec", "LayerTable", "LatencyTable", "TableModel", "grid", "varying_layers"]

TABLE_FORMAT = "wgates-latency-table/1"


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


@dataclass(frozen=True)
class LayerSpec:
    """What a layer is, for timing it alone: its settings, full widths, input size and varying axes."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str
    in_size: tuple[int, ...]
    vary_in: bool
    vary_out: bool

    @classmethod
    def of(cls, module: nn.Module, shape: LayerShape, vary_in: bool, vary_out: bool) -> LayerSpec:
        if isinstance(module, nn.Conv2d):
            padding = module.padding if isinstance(module.padding, str) else _pair(module.padding)
            return cls("conv", module.in_channels, module.out_channels, _pair(module.kernel_size),
                       _pair(module.stride), padding, _pair(module.dilation), module.groups,
                       module.bias is not None, module.padding_mode, tuple(shape.in_size), vary_in, vary_out)
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, (1, 1), (1, 1), (0, 0), (1, 1), 1,
                       module.bias is not None, "zeros", tuple(shape.in_size), vary_in, vary_out)
        raise ConfigTypeError(f"a latency table times Conv2d and Linear layers, not {type(module).__name__}")

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.in_channels == self.out_channels > 1

    @property
    def axes(self) -> tuple[bool, bool]:
        """Whether the table varies along (input, output) channels; a depthwise conv's one axis is its output."""
        if self.depthwise:
            return False, self.vary_in or self.vary_out
        return self.vary_in, self.vary_out

    @property
    def step(self) -> int:
        """Channel counts a grouped (not depthwise) conv accepts are multiples of its groups."""
        return 1 if self.depthwise else self.groups

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def build(self, c_in: int, c_out: int) -> nn.Module:
        """A fresh layer of these settings with ``c_in`` inputs and ``c_out`` outputs (eval mode)."""
        if self.kind == "linear":
            return nn.Linear(c_in, c_out, bias=self.bias).eval()
        groups = c_out if self.depthwise else self.groups
        return nn.Conv2d(c_out if self.depthwise else c_in, c_out, self.kernel, self.stride, self.padding,
                         self.dilation, groups, self.bias, self.padding_mode).eval()

    def example(self, c_in: int, batch: int, device: str | torch.device) -> torch.Tensor:
        if self.kind == "linear":
            return torch.randn(batch, *self.in_size, c_in, device=device)
        return torch.randn(batch, c_in, *self.in_size, device=device)


def grid(full: int, points: int, step: int = 1) -> list[int]:
    """The channel counts a varying axis is timed at: ``points`` kept fractions ``0 .. 1`` snapped to
    multiples of ``step`` (at least ``step``), the full width always included.

    Example:
        >>> grid(64, 5), grid(16, 4, step=4), grid(3, 6)
        ([1, 16, 32, 48, 64], [4, 12, 16], [1, 2, 3])
    """
    values = {full}
    for i in range(points - 1):
        values.add(min(full, max(step, step * round(full * i / (points - 1) / step))))
    return sorted(values)


@dataclass
class LayerTable:
    """Measured latencies (ms) of one layer spec over its grid: ``ms[i][j]`` at ``(c_in[i], c_out[j])``."""

    spec: LayerSpec
    c_in: list[int]
    c_out: list[int]
    ms: list[list[float]]

    def full_ms(self) -> float:
        return self.ms[-1][-1]

    def to_json(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "c_in": self.c_in, "c_out": self.c_out, "ms": self.ms}


class LatencyTable:
    """Per-layer latency tables measured on a device, with the model they were collected on bound.

    Build with :func:`~wgates_plugin.profiling.collect_table` or :meth:`load`; :meth:`for_model` /
    :meth:`efficiency` give the :class:`TableModel` that ``WGates(..., efficiency=...)`` uses.

    Attributes:
        tables: ``{spec key: LayerTable}``.
        layers: the collection model's tabulated layers, ``[(layer name, spec key)]``, in call order.
        channels: their live channels as a function of the collection model's group counts.
        context: the measurement context (device, batch, input shape, threads, clock, timing, model,
            architecture hash, gated groups and their sizes).
        reference: ``{'ms': the unpruned model's measured latency, 'times': its timed forwards}``.
        calibration: ``{'scale': the tables' factor, 'points': the whole networks it was fitted on,
            each {'fraction', 'counts', 'ms', 'tables_ms'}}``.
        info: collection settings and cost (``points``, ``round_to``, ``measurements``, ``seconds``).
    """

    def __init__(self, tables: Mapping[str, LayerTable], layers: Sequence[tuple[str, str]], channels: ChannelMap,
                 context: dict[str, Any], reference: dict[str, Any], info: dict[str, Any],
                 calibration: dict[str, Any] | None = None) -> None:
        self.tables, self.layers, self.channels = dict(tables), [tuple(x) for x in layers], channels
        self.context, self.reference, self.info = context, reference, info
        self.calibration = calibration or {"scale": 1.0, "points": []}

    @property
    def scale(self) -> float:
        return float(self.calibration["scale"])

    @property
    def round_to(self) -> int:
        """The channel multiple the grid was collected at: prune with ``WGates(round_to=table.round_to)``
        (with ``collect_table(round_to='auto')``, the one measured on the device, ``info['alignment']``)."""
        return int(self.info.get("round_to", 1))

    # ------------------------------------------------------------------ binding
    def for_model(self, model: nn.Module, example_inputs: torch.Tensor, groups: Sequence[ChannelGroup] | None = None,
                  *, config: WGatesConfig | None = None, device: str | torch.device | None = None,
                  batch: int | None = None, reference_ms: float | None = None) -> TableModel:
        """The efficiency model of ``model``'s gated ``groups`` (default: those ``config`` gates).

        The collection model is bound without measuring anything; another model needs every varying
        layer's spec in the tables, and its unpruned latency is measured here for the remainder
        (unless ``reference_ms`` is given).

        Raises:
            LatencyContextError: other device, input shape or batch than the table's, or a varying layer
                of ``model`` that no table holds.
        """
        if groups is None:
            groups = gated_groups(model, example_inputs, **(config.selection() if config is not None else {}))[1]
        check_measurement_use(self.context, example_inputs, device, batch, "latency table")
        same = (architecture_hash(model) == self.context["model_hash"]
                and [g.name for g in groups] == self.context["groups"])
        if same:
            keys, channels = [k for _, k in self.layers], self.channels
        else:
            specs, channels = varying_layers(model, example_inputs, groups)
            missing = [f"{name} ({s.kind} {s.in_channels}->{s.out_channels}, kernel {s.kernel}, stride {s.stride}, "
                       f"input {s.in_size})" for name, s in specs if s.key() not in self.tables]
            if missing:
                raise LatencyContextError(
                    f"the latency table of {self.context['model']!r} holds no table for {len(missing)} varying "
                    f"layer(s) of {type(model).__name__}: {missing[:3]}. HINT: collect a table for this model "
                    "(wgates lpnet table)")
            keys = [s.key() for _, s in specs]
        if reference_ms is None:
            reference_ms = float(self.reference["ms"]) if same else context_timing(self.context).summary(
                measure_in_context(model, self.context))
        return TableModel(self, groups, channels, keys, reference_ms)

    def efficiency(self, model: nn.Module, example_inputs: torch.Tensor,
                   **kwargs: Any) -> Callable[[list[ChannelGroup]], TableModel]:
        """A factory for ``WGates(..., efficiency=...)``: binds this table to the groups WGates gates."""
        return lambda groups: self.for_model(model, example_inputs, groups, **kwargs)

    def own_model(self) -> TableModel:
        """The table bound to the model it was collected on, without the model (e.g. to score samples)."""
        groups = [_Named(n, s) for n, s in zip(self.context["groups"], self.context["sizes"])]
        return TableModel(self, groups, self.channels, [k for _, k in self.layers], float(self.reference["ms"]))

    def check_samples(self, context: Mapping[str, Any]) -> None:
        """Raise :class:`LatencyContextError` unless latency samples of ``context`` are this table's setting."""
        # paired samples are allowed: their ratios to the unpruned model are what a budget reads
        diff = (context_diff(self.context, context, MEASUREMENT_KEYS + ("model_hash", "groups"))
                + protocol_diff(self.context, context, paired=False))
        if diff:
            raise LatencyContextError(f"the latency table was measured in another context: {'; '.join(diff)}. "
                                      "HINT: collect the table and the samples on one device, batch and model")

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "context": self.context, "reference": self.reference, "info": self.info,
                "calibration": self.calibration,
                "layers": [list(x) for x in self.layers], "channels": self.channels.to_json(),
                "tables": [t.to_json() for t in self.tables.values()]}

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file atomically (a crash leaves the previous file or none)."""
        write_text(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a file written by :meth:`save` (size-limited JSON; nothing is executed).

        Raises:
            MissingFileError: no such file.
            FileFormatError: not a W-Gates latency table, or a field is missing, malformed, not finite,
                not positive, or does not fit its grids.
        """
        data = read_json(path, "W-Gates latency table")
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike = "<table>") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise FileFormatError(f"'{path}' is not a W-Gates latency table (no format {TABLE_FORMAT!r})")
        require(data, {"context": dict, "reference": dict, "info": dict, "layers": list, "channels": dict,
                       "tables": list, "calibration": dict}, path, "a latency table")
        context = require(data["context"], {"model": str, "model_hash": str, "device": str, "batch": int,
                                            "input_shape": list, "timing": dict, "groups": list, "sizes": list},
                          path, "the latency table's context")
        _check_context(path, context)
        ms = require(data["reference"], {"ms": (int, float)}, path, "the latency table's reference")["ms"]
        if not _positive(ms):
            raise FileFormatError(f"'{path}': the reference latency is {ms!r} ms, not a finite number > 0")
        scale = require(data["calibration"], {"scale": (int, float)}, path, "the latency table's calibration")["scale"]
        if not _positive(scale):
            raise FileFormatError(f"'{path}': the calibration scale is {scale!r}, not a finite number > 0")
        tables = {}
        for i, raw in enumerate(data["tables"]):
            table = _checked_table(path, i, raw)
            tables[table.spec.key()] = table
        layers = data["layers"]
        if not all(isinstance(x, list) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in layers):
            raise FileFormatError(f"'{path}': 'layers' must be [name, spec key] pairs")
        unknown = [name for name, key in layers if key not in tables]
        if unknown:
            raise FileFormatError(f"'{path}': layers {unknown[:3]} name no table of the file")
        channels = _checked_channels(path, data["channels"], len(layers), len(context["sizes"]))
        if channels.group_sizes != context["sizes"]:
            raise FileFormatError(f"'{path}': the channel map's group sizes differ from the context's; refused")
        return cls(tables, [tuple(x) for x in layers], channels, context, data["reference"], data["info"],
                   data["calibration"])


class _Named:
    """A group's name and size: what an efficiency model needs of a ChannelGroup."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size


def _positive(value: Any) -> bool:
    """A finite number > 0 (a JSON integer too large for a float is none)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:
        return False


def _index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _count(value: Any) -> bool:
    """A channel count or size a file may declare: an int in [1, LIMITS.width]."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= LIMITS.width


def _check_context(path: str | os.PathLike, context: dict[str, Any]) -> None:
    """The context fields binding, measuring and scoring read: well-formed, or a FileFormatError."""
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"'{path}': the latency table's context {what}; refused")

    groups, sizes = context["groups"], context["sizes"]
    if not (all(isinstance(g, str) for g in groups) and all(_count(v) for v in sizes) and len(groups) == len(sizes)
            and groups):
        raise bad("needs as many group names (str) as group sizes (ints >= 1)")
    if not (_count(context["batch"]) and context["input_shape"] and all(_count(v) for v in context["input_shape"])):
        raise bad("needs a batch and an input shape of ints >= 1")
    try:
        context_timing(context)
    except (TypeError, ConfigError) as exc:
        raise bad(f"has a timing that is no Timing ({exc})") from None


def _checked_table(path: str | os.PathLike, i: int, raw: Any) -> LayerTable:
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"'{path}': table {i} {what}; refused")

    if not isinstance(raw, dict):
        raise bad("is not an object")
    spec_raw = raw.get("spec")
    fields = LayerSpec.__dataclass_fields__
    if not isinstance(spec_raw, dict) or set(spec_raw) != set(fields):
        raise bad(f"needs a spec with exactly the fields {sorted(fields)}")
    try:
        spec = LayerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_raw.items()})
    except TypeError as exc:
        raise bad(f"has a malformed spec ({exc})") from None
    if spec.kind not in ("conv", "linear") or not all(_count(getattr(spec, f))
                                                      for f in ("in_channels", "out_channels", "groups")):
        raise bad("has a spec whose kind is not conv/linear or whose widths/groups are not ints >= 1")
    c_in, c_out, ms = raw.get("c_in"), raw.get("c_out"), raw.get("ms")
    for name, axis, full in (("c_in", c_in, spec.in_channels), ("c_out", c_out, spec.out_channels)):
        if not (isinstance(axis, list) and axis and all(isinstance(v, int) and not isinstance(v, bool) for v in axis)
                and all(1 <= v <= full for v in axis) and axis == sorted(set(axis)) and axis[-1] == full):
            raise bad(f"has a {name} grid that is not increasing ints in [1, {full}] ending at the full width")
    if not (isinstance(ms, list) and len(ms) == len(c_in)
            and all(isinstance(row, list) and len(row) == len(c_out) and all(_positive(v) for v in row)
                    for row in ms)):
        raise bad(f"needs ms as {len(c_in)} rows of {len(c_out)} finite numbers > 0")
    return LayerTable(spec, c_in, c_out, [[float(v) for v in row] for row in ms])


def _checked_channels(path: str | os.PathLike, raw: dict, layers: int, groups: int) -> ChannelMap:
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"'{path}': the channel map {what}; refused")

    for name in ("in_full", "out_full"):
        values = raw.get(name)
        if not (isinstance(values, list) and len(values) == layers and all(_count(v) for v in values)):
            raise bad(f"needs {name} as {layers} ints >= 1")
    sizes = raw.get("sizes")
    if not (isinstance(sizes, list) and len(sizes) == groups and all(_count(v) for v in sizes)):
        raise bad(f"needs sizes as {groups} ints >= 1")
    for name in ("in_terms", "out_terms"):
        terms = raw.get(name)
        if not (isinstance(terms, list) and all(
                isinstance(t, list) and len(t) == 3 and _index(t[0], layers) and _index(t[1], groups)
                and _positive(t[2]) for t in terms)):
            raise bad(f"needs {name} as [layer < {layers}, group < {groups}, multiplicity > 0] triples")
    return ChannelMap.from_json(raw)


def varying_layers(model: nn.Module, example_inputs: Any,
                    groups: Sequence[ChannelGroup]) -> tuple[list[tuple[str, LayerSpec]], ChannelMap]:
    """The Conv2d / Linear calls whose channels follow a gated group, their specs and their channel map."""
    shapes = record_layer_shapes(model, example_inputs)
    channels = FlopsModel(shapes, groups).channels
    vary_in, vary_out = channels.varying()
    modules = dict(model.named_modules())
    rows = [i for i in range(len(shapes)) if vary_in[i] or vary_out[i]]
    specs = [(shapes[i].name, LayerSpec.of(modules[shapes[i].name], shapes[i], vary_in[i], vary_out[i]))
             for i in rows]
    return specs, channels.subset(rows)


class TableModel(MeasuredLatency):
    """Predicted latency (ms): the calibrated sum of the layers' interpolated table latencies,
    ``scale * sum + remainder``.

    Build with :meth:`LatencyTable.for_model` or pass :meth:`LatencyTable.efficiency` to ``WGates``.
    Differentiable in the counts (piecewise bilinear); beyond a grid's ends it extrapolates linearly.
    """

    source_label = "the latency table"

    def __init__(self, table: LatencyTable, groups: Sequence[Any], channels: ChannelMap, keys: Sequence[str],
                 reference_ms: float) -> None:
        super().__init__(groups, reference_ms, table.context)
        if channels.group_sizes != [int(s) for s in self.sizes.tolist()]:
            raise ConfigError(f"the channel map is for groups of sizes {channels.group_sizes[:6]}..., not "
                              f"{[int(s) for s in self.sizes.tolist()][:6]}...")
        self.channels = channels
        self._parts = []  # (layer rows, c_in grid, c_out grid, ms table, depthwise) per spec key
        for key in dict.fromkeys(keys):
            t = table.tables[key]
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], dtype=torch.long)
            self._parts.append((rows, torch.tensor(t.c_in, dtype=torch.float32),
                                torch.tensor(t.c_out, dtype=torch.float32), torch.tensor(t.ms, dtype=torch.float32),
                                t.spec.depthwise))
        self.layers = len(keys)
        self.scale = table.scale
        with torch.no_grad():
            self.remainder = self.reference_ms - self.scale * float(self._tables(self.sizes))

    def _tables(self, counts: torch.Tensor) -> torch.Tensor:
        c_in, c_out = self.channels.live(counts)
        total = counts.new_zeros(())
        for rows, g_in, g_out, ms, depthwise in self._parts:
            x_out = c_out[rows]
            x_in = x_out if depthwise else c_in[rows]
            i0, i1, wi = _bracket(g_in.to(counts), x_in)
            o0, o1, wo = _bracket(g_out.to(counts), x_out)
            ms = ms.to(counts)
            total = total + ((1 - wi) * (1 - wo) * ms[i0, o0] + (1 - wi) * wo * ms[i0, o1]
                             + wi * (1 - wo) * ms[i1, o0] + wi * wo * ms[i1, o1]).sum()
        return total

    def tables_ms(self, counts: torch.Tensor | Sequence[float]) -> float:
        """The tables' uncalibrated sum (ms) for ``counts (G,)``, as a number."""
        with torch.no_grad():
            return float(self._tables(torch.as_tensor(counts, dtype=torch.float32).to(self.sizes)))

    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        """Predicted latency in ms of the candidate keeping ``counts (G,)`` channels; a scalar."""
        return self.scale * self._tables(counts) + self.remainder


def _bracket(grid_: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the grid points around ``x`` and ``x``'s weight toward the upper one (a one-point
    grid: weight 0; beyond the ends: the end segment, extrapolating)."""
    if grid_.numel() == 1:
        zero = torch.zeros_like(x, dtype=torch.long)
        return zero, zero, torch.zeros_like(x)
    i1 = torch.searchsorted(grid_, x.detach().contiguous()).clamp(1, grid_.numel() - 1)
    i0 = i1 - 1
    return i0, i1, (x - grid_[i0]) / (grid_[i1] - grid_[i0])

