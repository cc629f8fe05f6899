"""Latency as an efficiency model: a trained LPNet bound to a model, saved with its context.

Two granularities, as in the paper:

- ``network``: one LPNet maps the whole encoding ``c / sizes`` (live fraction per gated group) to the
  network's latency (the paper's ResNet-34 setting). It is tied to one architecture.
- ``block``: one LPNet per block type maps a block's encoding (see
  :mod:`~wgates_plugin.efficiency.blocks`) to that block's latency; the network's latency is the sum
  over its blocks plus a constant *remainder* for what lies outside the blocks (stem, pooling, head):
  ``remainder = measured(unpruned) - sum of predicted blocks(unpruned)``, so the prediction for the
  unpruned network is its measured latency. Tied to a block type, reusable on every model built from
  it (resnet50 -> resnet101) on the same device, input size and batch.

The budget reference (:meth:`LatencyModel.reference`) is the *measured* latency of the unpruned model
(the median of its measurements during collection), so ``WGates(..., target=0.6)`` aims at 60 % of
what the original model measured on the device.

Files: safetensors holding the LPNet weights, with the JSON metadata (kind, the collection context:
model name and hash, device name, torch version, threads, batch, input shape, group names; the
normalization constants; the reference measurement; the held-out report) in the safetensors header.
Loading never executes code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError, FileFormatError, LatencyContextError, MeasurementError
from ..files import LIMITS, parse_json, read_tensors, require, save_tensors
from ..groups import ChannelGroup, gated_groups
from .base import EfficiencyModel
from .blocks import BlockEncoder, BlockInfo, default_block_types, find_blocks, outermost, type_key
from .lpnet import LPNet
from .timing import Timing, device_name, measure_times

if TYPE_CHECKING:
    from ..config import WGatesConfig

__all__ = ["KINDS", "LatencyPredictor", "MeasuredLatency", "LatencyModel", "measurement_context", "measure_in_context"]

KINDS = ("network", "block")
LPNET_FORMAT = "wgates-lpnet/1"
MEASUREMENT_KEYS = ("device", "input_shape", "batch", "threads", "clock")


class LatencyPredictor(nn.Module):
    """Trained LPNet(s) with the context their training latencies were measured in.

    Build one with :func:`~wgates_plugin.profiling.lpnet_fit.train_predictor`, or :meth:`load` it.

    Attributes:
        kind: ``'network'`` or ``'block'``.
        types: block type per net (``['network']`` for the network kind).
        nets: the LPNets, aligned with ``types``.
        context: the samples' collection context.
        info: reference measurement (``{'ms', 'blocks'}``), fit settings and the held-out report.
    """

    def __init__(self, kind: str, types: Sequence[str], nets: Sequence[LPNet], context: dict[str, Any],
                 info: dict[str, Any]) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"kind={kind!r} is not one of {KINDS}")
        self.kind, self.types, self.context, self.info = kind, list(types), context, info
        self.nets = nn.ModuleList(nets)

    def net(self, block_type: str) -> LPNet:
        if block_type not in self.types:
            raise LatencyContextError(f"no LPNet for block type {block_type!r}; this one knows {self.types}")
        return self.nets[self.types.index(block_type)]  # type: ignore[return-value]

    # ------------------------------------------------------------------ prediction from stored encodings
    def predict_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Network kind: latency (ms) of encodings ``counts (N, G)``, shape ``(N,)``."""
        sizes = torch.tensor(self.context["sizes"], dtype=counts.dtype, device=counts.device)
        return self.nets[0](counts / sizes)

    def predict_blocks(self, blocks: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Block kind: latency (ms) of every stored block record, shape ``(B,)``."""
        out = torch.empty(len(blocks))
        for t in dict.fromkeys(b["type"] for b in blocks):
            rows = [i for i, b in enumerate(blocks) if b["type"] == t]
            with torch.no_grad():
                out[rows] = self.net(t)(torch.tensor([blocks[i]["features"] for i in rows]))
        return out

    def predict_record(self, record: dict[str, Any], reference: dict[str, Any]) -> float:
        """Predicted network latency (ms) of one stored candidate; ``reference`` = its file's reference."""
        if self.kind == "network":
            with torch.no_grad():
                return float(self.predict_counts(torch.tensor([record["counts"]], dtype=torch.float32))[0])
        remainder = reference["ms"] - float(self.predict_blocks(reference["blocks"]).sum())
        return float(self.predict_blocks(record["blocks"]).sum()) + remainder

    def check_samples(self, context: dict[str, Any]) -> None:
        """Raise :class:`LatencyContextError` unless samples of ``context`` are predictable by this LPNet."""
        keys = MEASUREMENT_KEYS + (("model_hash", "groups") if self.kind == "network" else ())
        diff = context_diff(self.context, context, keys) + protocol_diff(self.context, context)
        if self.kind == "block":
            diff += self._layout_diff((context.get("blocks") or {}).get("features", {}))
        if diff:
            raise LatencyContextError(f"the {self.kind} LPNet was trained in another context: {'; '.join(diff)}. "
                                      "HINT: collect samples and train an LPNet for this setting")

    def _layout_diff(self, features: dict[str, list[str]]) -> list[str]:
        saved = self.context["blocks"]["features"]
        return [f"block type {t}: features {f} differ from the trained {saved.get(t)}"
                for t, f in features.items() if saved.get(t) != f]

    # ------------------------------------------------------------------ binding to a model
    def for_model(self, model: nn.Module, example_inputs: torch.Tensor, groups: Sequence[ChannelGroup] | None = None,
                  *, config: WGatesConfig | None = None, device: str | torch.device | None = None,
                  batch: int | None = None, reference_ms: float | None = None) -> LatencyModel:
        """The efficiency model of ``model``'s gated ``groups`` (default: those ``config`` gates).

        Args:
            model: the unpruned model the budget is for.
            example_inputs: a batch it accepts; its ``(C, H, W)`` must be the LPNet's input shape.
            groups: the gated groups (``WGates`` passes them when given :meth:`efficiency`).
            config: selects the groups when ``groups`` is None.
            device: where the model will run (default: the LPNet's device type); must be the same
                device model the latencies were measured on.
            batch: the batch size it will run at, checked when given.
            reference_ms: block kind on another model: its measured unpruned latency (measured here
                with the LPNet's timing settings when None).

        Raises:
            LatencyContextError: other device, input shape, batch, architecture (network kind) or
                block type (block kind) than the LPNet was trained for.
        """
        if groups is None:
            groups = gated_groups(model, example_inputs, **(config.selection() if config is not None else {}))[1]
        check_measurement_use(self.context, example_inputs, device, batch, "LPNet")
        if self.kind == "network":
            self._check_network(model, groups)
            return LatencyModel(self, groups, float(self.info["reference"]["ms"]))
        encoder = BlockEncoder(model, example_inputs, groups, self._blocks_of(model),
                               layout=self.context["blocks"]["layout"])
        same = (architecture_hash(model) == self.context["model_hash"]
                and [g.name for g in groups] == self.context["groups"])
        if reference_ms is None:
            reference_ms = float(self.info["reference"]["ms"]) if same else self.measure(model)
        return LatencyModel(self, groups, reference_ms, encoder)

    def _blocks_of(self, model: nn.Module) -> list[BlockInfo]:
        """The blocks of ``model``: modules of a type this LPNet knows, or of a default block type."""
        known, defaults = self.context["blocks"]["layout"], default_block_types()
        names = [n for n, m in model.named_modules() if n and (type_key(m) in known or isinstance(m, defaults))]
        if not names:
            raise LatencyContextError(f"{type(model).__name__} has no block of the types this block LPNet "
                                      f"knows ({sorted(known)})")
        return find_blocks(model, names=outermost(names))

    def efficiency(self, model: nn.Module, example_inputs: torch.Tensor,
                   **kwargs: Any) -> Callable[[list[ChannelGroup]], LatencyModel]:
        """A factory for ``WGates(..., efficiency=...)``: binds this LPNet to the groups WGates gates."""
        return lambda groups: self.for_model(model, example_inputs, groups, **kwargs)

    def _check_network(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        now = {"model_hash": architecture_hash(model), "groups": [g.name for g in groups]}
        diff = context_diff(self.context, now, tuple(now))
        if diff:
            raise LatencyContextError(
                f"this network LPNet was trained for another architecture ({self.context['model']!r}): "
                f"{'; '.join(diff)}. A network LPNet is tied to one architecture and its gated groups; "
                "HINT: use a block LPNet to reuse latency data across models")

    def measure(self, model: nn.Module, timing: Timing | None = None) -> float:
        """``model``'s latency (ms) as the samples were measured: device, batch, input shape, timing."""
        return (timing or context_timing(self.context)).summary(self.measure_times(model, timing))

    def measure_times(self, model: nn.Module, timing: Timing | None = None) -> list[float]:
        """Every timed forward (ms) of :meth:`measure`."""
        return measure_in_context(model, self.context, timing)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors weights with the JSON metadata in its header (atomically: a crash leaves
        the previous file or none)."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.nets.state_dict().items() if ".layers." in k}
        meta = {"format": LPNET_FORMAT, "kind": self.kind, "types": self.types, "context": self.context,
                "nets": [self.net(t).spec() for t in self.types], "info": self.info}
        save_tensors(path, tensors, metadata={"wgates_lpnet": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyPredictor:
        """Read a file written by :meth:`save` (no code is executed).

        Every declared size is checked against :data:`~wgates_plugin.files.LIMITS` and against the
        weights before anything is built, and NaN or inf weights or normalization constants are refused.

        Raises:
            MissingFileError: no such file.
            FileFormatError: the file is not a W-Gates LPNet, or its metadata or weights are malformed,
                non-finite or past the limits.
        """
        tensors, metadata = read_tensors(path, "W-Gates LPNet", finite=True)
        raw = metadata.get("wgates_lpnet")
        meta = parse_json(raw, path, "W-Gates LPNet") if raw else {}
        if not isinstance(meta, dict) or meta.get("format") != LPNET_FORMAT:
            raise FileFormatError(f"'{path}' is not a W-Gates LPNet file (no {LPNET_FORMAT} metadata)")
        types, specs = meta.get("types"), meta.get("nets")
        if meta.get("kind") not in KINDS or not isinstance(types, list) or not isinstance(specs, list) \
                or len(types) != len(specs) or not types or not all(isinstance(t, str) for t in types):
            raise FileFormatError(f"'{path}': the LPNet metadata needs a kind in {KINDS} and as many block types "
                                  "(str) as nets")
        _check_context(path, meta)
        nets = [LPNet.from_spec(_checked_spec(path, i, s)) for i, s in enumerate(specs)]
        out = cls(meta["kind"], types, nets, meta["context"], meta["info"])
        own = {k: tuple(v.shape) for k, v in out.nets.state_dict().items() if ".layers." in k}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if own != found:
            wrong = sorted(set(own) ^ set(found)) or [k for k in own if own[k] != found[k]]
            raise FileFormatError(f"'{path}' has weights that do not fit its metadata: {wrong[:5]}")
        out.nets.load_state_dict(tensors, strict=False)
        return out.eval()


def _check_context(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """The context and info fields an LPNet file must carry for binding, measuring and predicting."""
    ctx = require(meta.get("context"), {"model": str, "device": str, "batch": int, "input_shape": list,
                                        "timing": dict}, path, "the LPNet context")
    if meta["kind"] == "network":
        require(ctx, {"model_hash": str, "groups": list, "sizes": list}, path, "a network LPNet's context")
    else:
        require(ctx.get("blocks"), {"layout": dict, "features": dict}, path, "a block LPNet's context 'blocks'")
    info = require(meta.get("info"), {"reference": dict}, path, "the LPNet info")
    ms = require(info["reference"], {"ms": (int, float)}, path, "the LPNet reference")["ms"]
    if not (math.isfinite(ms) and ms > 0):
        raise FileFormatError(f"'{path}': the LPNet reference latency is {ms!r} ms, not a finite number > 0")


def _checked_spec(path: str | os.PathLike, i: int, spec: Any) -> dict[str, Any]:
    """An LPNet spec from a file, every size within :data:`~wgates_plugin.files.LIMITS` and every constant finite."""
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"'{path}': LPNet {i} {what}; refused")

    if not isinstance(spec, dict):
        raise bad("is not an object")
    features, hidden = spec.get("in_features"), spec.get("hidden")
    if not (isinstance(features, int) and not isinstance(features, bool) and 1 <= features <= LIMITS.width):
        raise bad(f"declares in_features={features!r} (an int in [1, {LIMITS.width}])")
    if not (isinstance(hidden, list) and len(hidden) == 2
            and all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= LIMITS.width for h in hidden)):
        raise bad(f"declares hidden={hidden!r} (two ints in [1, {LIMITS.width}])")
    if not isinstance(spec.get("log_target"), bool):
        raise bad("lacks log_target (true / false)")
    for name, size in (("x_mean", features), ("x_std", features)):
        values = spec.get(name)
        if not (isinstance(values, list) and len(values) == size and all(_finite(v) for v in values)):
            raise bad(f"has a {name} that is not {size} finite numbers")
    for name in ("y_mean", "y_std"):
        if not _finite(spec.get(name)):
            raise bad(f"has {name}={spec.get(name)!r}, not a finite number")
    if min(spec["x_std"]) <= 0 or spec["y_std"] <= 0:
        raise bad("has a standard deviation <= 0")
    return spec


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def architecture_hash(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the architecture: module names, types, settings and parameter shapes.

    Weight values do not enter: they do not change latency, so a fine-tuned copy hashes the same.
    """
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}|{type(module).__qualname__}|{module.extra_repr()}\n".encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
    return h.hexdigest()[:16]


def measurement_context(model: nn.Module, example_inputs: torch.Tensor, timing: Timing,
                        device: str | torch.device, batch: int, model_name: str | None = None) -> dict[str, Any]:
    """Where and how latencies are measured: the part of a context every latency cost model stores and
    checks (device, batch, input shape, threads, clock, timing) plus the model and its architecture hash."""
    return {
        "model": model_name or type(model).__name__,
        "model_hash": architecture_hash(model),
        "device": device_name(device, timing.runtime),
        "torch": torch.__version__,
        "threads": timing.resolved_threads(),
        "clock": timing.clock,
        "batch": batch,
        "input_shape": list(example_inputs.shape[1:]),
        "timing": _timing_record(timing),
    }


def _timing_record(timing: Timing) -> dict[str, Any]:
    """``timing`` as stored in a context; the runtime and the statistic only when they are not the
    defaults (PyTorch, the median), so that files written before they existed keep the same context
    (and resume, and bind)."""
    record = asdict(timing) | {"threads": timing.resolved_threads()}
    for name, default in (("runtime", "pytorch"), ("statistic", "median")):
        if record[name] == default:
            del record[name]
    return record


def context_timing(context: Mapping[str, Any]) -> Timing:
    """The :class:`Timing` a measurement context records."""
    return Timing(**context["timing"])


def check_measurement_use(context: Mapping[str, Any], example_inputs: torch.Tensor, device: str | torch.device | None,
                          batch: int | None, what: str) -> None:
    """Raise :class:`LatencyContextError` unless running on ``device`` at ``batch`` with inputs like
    ``example_inputs`` is the setting the latencies behind a cost model (``what``) were measured in."""
    runtime = context["timing"].get("runtime", "pytorch")
    now = {"device": device_name(device or context["device"].split(":")[0], runtime),
           "input_shape": list(example_inputs.shape[1:]), "batch": batch if batch is not None else context["batch"]}
    diff = context_diff(context, now, tuple(now))
    if diff:
        raise LatencyContextError(
            f"the {what} was measured for model {context['model']!r} on '{context['device']}', input "
            f"{context['input_shape']}, batch {context['batch']}; this use differs: {'; '.join(diff)}. HINT: measure "
            "latencies on this device and input size (wgates lpnet collect / train, or wgates lpnet table)")


def measure_in_context(model: nn.Module, context: Mapping[str, Any], timing: Timing | None = None) -> list[float]:
    """Every timed forward (ms) of ``model`` (a copy) as ``context`` measured: its device, batch, input
    shape and (by default) timing, on a random batch."""
    x = torch.randn(context["batch"], *context["input_shape"], device=context["device"].split(":")[0])
    return measure_times(copy.deepcopy(model), x, timing or context_timing(context))


def protocol_diff(saved: Mapping[str, Any], current: Mapping[str, Any], paired: bool = True) -> list[str]:
    """How two measurement contexts' latencies were taken differently: the timing statistic and (with
    ``paired``) whether candidates were timed beside the unpruned model. Contexts written before
    either existed read as the defaults (median, not paired)."""
    def statistic(ctx: Mapping[str, Any]) -> str:
        return (ctx.get("timing") or {}).get("statistic", "median")

    out = []
    if statistic(saved) != statistic(current):
        out.append(f"timing statistic: saved {statistic(saved)!r}, now {statistic(current)!r}")
    if paired and bool(saved.get("paired")) != bool(current.get("paired")):
        out.append(f"paired: saved {bool(saved.get('paired'))}, now {bool(current.get('paired'))}")
    return out


def context_diff(saved: Mapping[str, Any], current: Mapping[str, Any],
                 keys: tuple[str, ...] | None = None) -> list[str]:
    """Human-readable differences between two contexts, restricted to ``keys`` (default: all)."""
    keys = keys if keys is not None else tuple(sorted(set(saved) | set(current)))
    return [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


class MeasuredLatency(EfficiencyModel):
    """The efficiency model of a latency cost model fitted to measurements (LPNet, lookup table).

    :meth:`reference` is the unpruned model's *measured* latency, so a budget is a fraction of what the
    device measured; :meth:`measure_times` times an exported network as the cost model's
    measurements were taken, for the closed-loop landing (:mod:`~wgates_plugin.latency_landing`).
    Subclasses pass the measurement context, set ``source_label`` (how messages name them) and implement
    :meth:`cost`.
    """

    unit = "ms"
    sizes: torch.Tensor
    source_label = "the latency model"

    def __init__(self, groups: Sequence[ChannelGroup], reference_ms: float, context: Mapping[str, Any]) -> None:
        super().__init__()
        self.group_names = tuple(g.name for g in groups)
        self.register_buffer("sizes", torch.tensor([float(g.size) for g in groups]))
        self.context = dict(context)
        self.reference_ms = float(reference_ms)
        if not (math.isfinite(self.reference_ms) and self.reference_ms > 0):
            raise MeasurementError(f"reference_ms={reference_ms!r}: the unpruned model's latency must be a finite "
                                   "number of milliseconds > 0")

    def full_counts(self) -> torch.Tensor:
        return self.sizes.clone()

    def reference(self) -> float:
        """The unpruned model's *measured* latency (ms): the budget is a fraction of it."""
        return self.reference_ms

    def measure_times(self, model: nn.Module, timing: Timing | None = None) -> list[float]:
        """Every timed forward (ms) of ``model`` on the cost model's device, batch, input shape and timing."""
        return measure_in_context(model, self.context, timing)

    def summary(self, times: list[float]) -> float:
        """One latency from :meth:`measure_times`' timings, by the statistic the cost model's
        measurements used (:attr:`Timing.statistic`)."""
        return context_timing(self.context).summary(times)

    def budget_of(self, counts: torch.Tensor | Sequence[float], what: str = "this network") -> float:
        """The predicted latency of ``counts`` as a budget: a fraction of the measured reference in (0, 1].

        A network with fewer channels is predicted slower than the unpruned one only when the
        measurements behind the cost model or the reference were disturbed (other jobs on the cores,
        too few repeats), so a ratio outside (0, 1] is refused here, where it is derived.

        Raises:
            MeasurementError: the ratio is not in (0, 1]; the message names both latencies.
        """
        predicted = self.predicted_ms(counts)
        ratio = predicted / self.reference_ms
        if not 0 < ratio <= 1:
            ctx = self.context
            raise MeasurementError(
                f"{self.source_label} predicts {what} at {predicted:.4g} ms, {ratio:.4f} of the unpruned model's "
                f"measured {self.reference_ms:.4g} ms, so it is no latency budget (allowed: (0, 1]). The latency "
                f"measurements ({ctx.get('model')!r} on '{ctx.get('device')}', clock {ctx.get('clock', 'wall')!r}, "
                f"timing {ctx.get('timing')}) or the reference were disturbed. HINT: collect them again with more "
                "repeats and no other jobs on the cores (or clock='cpu' with threads=1 on a shared machine)")
        return ratio

    def predicted_ms(self, counts: torch.Tensor | Sequence[float]) -> float:
        """The predicted latency (ms) of the candidate keeping ``counts (G,)`` channels, as a number."""
        counts = torch.as_tensor(counts, dtype=torch.float32).detach().to(self.sizes)  # (G,)
        with torch.no_grad():
            return float(self.cost(counts))

    def predicted_reference(self) -> float:
        return self.predicted_ms(self.full_counts())

    def compare(self, pruned: nn.Module, counts: torch.Tensor, timing: Timing | None = None) -> dict[str, float]:
        """Predicted vs measured latency of an exported model whose encoding is ``counts``.

        Measured on the cost model's device with its batch, input shape and (by default) timing.
        Returns ``{'predicted_ms', 'measured_ms', 'error_pct', 'reference_ms'}``.
        """
        measured = (timing or context_timing(self.context)).summary(self.measure_times(pruned, timing))
        predicted = self.predicted_ms(counts)
        return {"predicted_ms": predicted, "measured_ms": measured,
                "error_pct": 100 * (predicted - measured) / measured, "reference_ms": self.reference_ms}


class LatencyModel(MeasuredLatency):
    """Predicted latency (ms) of a model as a differentiable function of its gated groups' counts.

    Build with :meth:`LatencyPredictor.for_model` or pass :meth:`LatencyPredictor.efficiency` to
    ``WGates``. :meth:`reference` is the measured latency of the unpruned model. The LPNet weights are
    fixed (``requires_grad=False``): the efficiency loss moves the gates, never the predictor.
    """

    source_label = "the LPNet"

    def __init__(self, predictor: LatencyPredictor, groups: Sequence[ChannelGroup], reference_ms: float,
                 encoder: BlockEncoder | None = None) -> None:
        super().__init__(groups, reference_ms, predictor.context)
        self.predictor = predictor.requires_grad_(False)  # fixed during pruning (paper Sec. III-C)
        self.encoder = encoder
        bad = [n for n, p in predictor.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise ConfigError(f"the LPNet holds NaN or inf weights ({bad[:3]}): it cannot predict a latency; "
                              "train it again (wgates lpnet train)")
        self.remainder = 0.0
        if encoder is not None:
            with torch.no_grad():
                self.remainder = self.reference_ms - float(self._blocks(encoder, self.sizes))
        with torch.no_grad():
            full = float(self.cost(self.sizes))
        if not math.isfinite(full):
            raise ConfigError(f"the LPNet predicts {full} ms for the unpruned model: its normalization constants "
                              "are not finite; train it again (wgates lpnet train)")

    def _blocks(self, encoder: BlockEncoder, counts: torch.Tensor) -> torch.Tensor:
        feats = encoder.features(counts)  # {type: (B_t, F_t)}
        return sum((self.predictor.net(t)(f).sum() for t, f in feats.items()), counts.new_zeros(()))

    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        """Predicted latency in ms of the candidate keeping ``counts (G,)`` channels; a scalar."""
        if self.encoder is None:
            return self.predictor.predict_counts(counts.unsqueeze(0))[0]
        return self._blocks(self.encoder, counts) + self.remainder
