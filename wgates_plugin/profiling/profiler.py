"""Latency profiler: sample pruned candidates, build them physically, measure them on the device.

Candidates (network encodings: live channels per gated group) come from
:class:`~wgates_plugin.profiling.candidates.CandidateSpace`, which builds each one physically through
torch-pruning. Each is timed on the target device: warm-up runs, then ``Timing.statistic`` (the median
by default) of ``repeats`` single forwards, in eval mode under ``torch.no_grad``, with a fixed thread
count, synchronising CUDA around every forward. With ``paired=True`` every candidate is timed in turns
with the unpruned model (:func:`~wgates_plugin.efficiency.timing.measure_interleaved`) and recorded as
its latency *ratio* to the unpruned model timed beside it, times the reference latency: a machine
whose speed drifts over the collection (other jobs, frequency) moves both alike, so the ratio, which
is what a latency budget is, stays put. The samples go to a JSON-lines file with their
context (see :mod:`~wgates_plugin.profiling.samples`); an interrupted collection resumes there.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin.profiling.profiler import collect_latency, Timing
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> samples = collect_latency(model, torch.randn(2, 3, 32, 32), "r18.jsonl", samples=4,
    ...                           timing=Timing(warmup=1, repeats=3, threads=1), progress=False)
    >>> len(samples), samples.reference["ms"] > 0
    (4, True)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import WGatesConfig
from ..efficiency.blocks import BlockEncoder, BlockInfo, find_blocks, layout_of
from ..efficiency.latency import measurement_context
from ..efficiency.timing import Timing, fixed_threads, measure_ms, measure_paired
from ..errors import ConfigError, ConfigTypeError
from ..utils import call_model, check_number, device_of
from .candidates import CandidateSpace
from .samples import FORMAT, REFERENCE, LatencySamples, SampleWriter

__all__ = ["time_blocks", "collect_latency", "capture_block_inputs"]


def capture_block_inputs(model: nn.Module, inputs: Any, names: Sequence[str]) -> dict[str, tuple]:
    """Run one eval forward and return the positional inputs every named block received."""
    modules = dict(model.named_modules())
    captured: dict[str, tuple] = {}
    handles = [modules[n].register_forward_pre_hook(_recorder(captured, n)) for n in names]
    try:
        with torch.no_grad():
            call_model(model.eval(), inputs)
    finally:
        for h in handles:
            h.remove()
    return captured


def _recorder(store: dict[str, tuple], name: str) -> Callable:
    def hook(_module: nn.Module, args: tuple) -> None:
        store.setdefault(name, args)

    return hook


def time_blocks(model: nn.Module, inputs: Any, blocks: Sequence[BlockInfo], timing: Timing) -> list[float]:
    """Latency (ms) of every block of ``model`` alone, fed what it receives inside the network."""
    captured = capture_block_inputs(model, inputs, [b.name for b in blocks])
    modules = dict(model.named_modules())
    return [measure_ms(modules[b.name], captured[b.name], timing) for b in blocks]


@dataclass(frozen=True)
class _Job:
    """Everything one collection needs besides the model."""

    space: CandidateSpace
    inputs: Any  # the timed batch, on the device
    timing: Timing
    encoder: BlockEncoder | None
    seed: int
    spread: float
    paired: nn.Module | None = None  # the unpruned model every candidate is timed beside (paired=True)


def _measure(job: _Job, index: int, reference_ms: float | None = None) -> dict[str, Any]:
    counts = job.space.full_counts() if index == REFERENCE else job.space.sample(index, job.seed, job.spread)
    model = job.space.build(counts) if index != REFERENCE else copy.deepcopy(job.space.model).eval()
    model.to(device_of(job.inputs))
    if job.paired is not None and index != REFERENCE and reference_ms is not None:
        paired_ms, ms, beside_ms = measure_paired(job.paired, model, job.inputs, job.timing, reference_ms)
        return {"index": index, "counts": counts, "ms": paired_ms, "measured_ms": ms, "reference_beside_ms": beside_ms}
    record: dict[str, Any] = {"index": index, "counts": counts, "ms": measure_ms(model, job.inputs, job.timing)}
    if job.encoder is not None:
        record["blocks"] = _block_records(job.encoder, job, model, counts)
    return record


def _block_records(encoder: BlockEncoder, job: _Job, model: nn.Module, counts: list[int]) -> list[dict[str, Any]]:
    with torch.no_grad():
        feats = encoder.features(torch.tensor(counts, dtype=torch.float32))
    times = dict(zip([b.name for b in encoder.blocks], time_blocks(model, job.inputs, encoder.blocks, job.timing)))
    out = []
    for t, f in feats.items():
        out += [{"name": n, "type": t, "features": [float(v) for v in row], "ms": times[n]}
                for n, row in zip(encoder.names(t), f)]
    return out


def collect_latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | os.PathLike,
    samples: int,
    *,
    device: str | torch.device = "cpu",
    batch: int = 8,
    timing: Timing | None = None,
    seed: int = 0,
    spread: float = 0.5,
    reference_every: int = 100,
    config: WGatesConfig | None = None,
    blocks: bool | Sequence[str] = False,
    block_types: Sequence[type[nn.Module]] | None = None,
    model_name: str | None = None,
    progress: bool = True,
    paired: bool = False,
) -> LatencySamples:
    """Measure the unpruned model and ``samples`` pruned candidates; append them to ``path``.

    Resumes: records already in ``path`` (same context) are skipped, so re-running the same call after
    an interruption measures only what is missing.

    Args:
        model: the unpruned model (not modified).
        example_inputs: an image batch ``(N, C, H, W)`` for tracing; latency is timed on a random batch
            of shape ``(batch, C, H, W)``.
        path: the JSON-lines samples file.
        samples: number of candidates (not counting the reference).
        device: where to time (``'cpu'``, ``'cuda'``, ``'cuda:1'``).
        batch: batch size of the timed forward.
        timing: warm-up, repeats, thread count and clock (default :class:`Timing`).
        seed / spread: the candidate sampler (see :meth:`CandidateSpace.sample`).
        reference_every: measure the unpruned model again before every this many candidates; the
            reference latency (the budget's base) is the median of these measurements.
        config: selects the gated groups and their bounds, as for ``WGates``.
        blocks: also time every block alone, for the block LPNet: True for ``block_types`` (default
            torchvision's residual blocks), or a list of block module names.
        block_types: block classes when ``blocks`` is True.
        model_name: stored in the context (default the model's class name).
        progress: show a progress bar.
        paired: time every candidate in turns with the unpruned model and record ``ms`` as the
            reference latency (its one measurement at the start; ``reference_every`` is then unused)
            times the ratio of the two (the raw ``measured_ms`` and the ``reference_beside_ms`` are
            kept in the record). Doubles the timing work; whole networks only (not with ``blocks``).

    Raises:
        ConfigError: ``paired`` with ``blocks``.
        LatencyContextError: ``path`` holds samples collected in another context.
    """
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise ConfigTypeError("example_inputs must be an image tensor (N, C, H, W) for latency profiling")
    for name, value, low in (("samples", samples, 0), ("reference_every", reference_every, 1)):
        check_number(name, value, f">= {low}", integer=True, what="an integer", type_error=ConfigError)
    if not isinstance(paired, bool):
        raise ConfigTypeError(f"paired must be True or False, got {paired!r}")
    if paired and blocks is not False:
        raise ConfigError("paired=True times whole networks beside the unpruned one; block timings (blocks=...) are "
                          "not paired: collect them without paired")
    timing = timing or Timing()
    space = CandidateSpace(model, example_inputs, config)
    encoder = _encoder(space, blocks, block_types)
    beside = copy.deepcopy(space.model).eval().to(device) if paired else None
    job = _Job(space, torch.randn(batch, *example_inputs.shape[1:], device=device), timing, encoder, seed, spread,
               beside)
    context = _context(model, example_inputs, job, device, batch, model_name)
    if paired:
        context["paired"] = True  # only when set: files collected before the option keep their context
    else:
        context["reference_every"] = reference_every  # paired: each candidate has its reference beside it
    writer = SampleWriter(path, context)
    todo = [i for i in range(samples) if i not in writer.samples.done]
    with fixed_threads(timing.resolved_threads()):  # building and capturing too: no oversubscribed cores
        if REFERENCE not in writer.samples.done:
            writer.append(_measure(job, REFERENCE))
        for index in tqdm(todo, total=samples, initial=samples - len(todo), desc="latency samples", unit="net",
                          disable=not progress):
            if not paired and index and index % reference_every == 0:  # paired: each candidate has its own
                writer.append(_measure(job, REFERENCE))
            writer.append(_measure(job, index, writer.samples.references[0]["ms"] if paired else None))
    return writer.samples


def _encoder(space: CandidateSpace, blocks: bool | Sequence[str], block_types) -> BlockEncoder | None:
    if blocks is False:
        return None
    names = None if blocks is True else list(blocks)
    found = find_blocks(space.model, block_types, names)
    return BlockEncoder(space.model, space.example_inputs, space.groups, found)


def _context(model, example_inputs, job: _Job, device, batch: int, model_name: str | None) -> dict[str, Any]:
    space, enc = job.space, job.encoder
    return {"format": FORMAT} | measurement_context(model, example_inputs, job.timing, device, batch, model_name) | {
        "groups": [g.name for g in space.groups],
        "sizes": space.sizes,
        "bounds": [[b.low, b.high, b.tie] for b in space.bounds],
        "sampling": {"seed": job.seed, "spread": job.spread},
        "blocks": None if enc is None else {"layout": layout_of(enc.blocks),
                                            "features": {t: enc.feature_names(t) for t in enc.types}},
    }
