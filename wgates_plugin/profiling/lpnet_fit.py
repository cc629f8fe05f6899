"""Training LPNets from latency samples and scoring them on held-out candidates.

The 80/20 split is over *candidates* (whole measured networks), for both kinds: a block LPNet is
scored on the blocks of networks it never saw, and on those networks' summed latency. The reference
(unpruned) measurement is always in the training part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..efficiency.latency import KINDS, LatencyPredictor
from ..efficiency.lpnet import (
    FitConfig,
    LatencyErrors,
    fit_lpnet,
    latency_errors,
    select_weight_decay,
    split_indices,
)
from ..efficiency.table import LatencyTable
from ..errors import ConfigError
from .samples import LatencySamples

__all__ = ["train_predictor", "evaluate_predictor", "evaluate_table"]


def train_predictor(
    samples: LatencySamples,
    kind: str = "network",
    fit: FitConfig | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    progress: bool = False,
    weight_decays: Sequence[float] | None = None,
) -> tuple[LatencyPredictor, dict[str, Any]]:
    """Fit an LPNet of ``kind`` on ``samples``; return it and its held-out report.

    Args:
        samples: from :func:`~wgates_plugin.profiling.profiler.collect_latency` (with ``blocks`` for
            the block kind).
        kind: ``'network'`` (one LPNet on the whole encoding) or ``'block'`` (one per block type).
        fit: LPNet training settings (default :class:`FitConfig`).
        test_fraction: share of candidates held out (the paper's 20 %).
        split_seed: seed of the split.
        progress: show a progress bar per LPNet.
        weight_decays: when given, each LPNet's ``fit.weight_decay`` is chosen from these by 4-fold
            cross-validation on the *training* candidates (:func:`~wgates_plugin.efficiency.lpnet.
            select_weight_decay`; for the block kind, on each type's blocks of the training candidates),
            so the held-out figures stay a test the choice never saw.

    Returns:
        The predictor and ``{'network': LatencyErrors.asdict(), 'blocks': {type: ...}, 'n_train',
        'n_test'}`` on the held-out candidates (``'blocks'`` for the block kind only); with
        ``weight_decays``, also ``'weight_decay': {type: {'chosen', 'cv_mape': {value: MAPE %}}}``
        (type ``'network'`` for the network kind).

    Raises:
        ConfigError: unknown kind, too few samples, no reference, or no block timings for ``block``.
    """
    reference = _check(samples, kind)
    fit = fit or FitConfig()
    train, test = split_indices(len(samples.records), test_fraction, split_seed)
    train_recs = [reference] + [samples.records[i] for i in train]
    test_recs = [samples.records[i] for i in test]
    if kind == "network":
        types, data = ["network"], [_network_data(samples, train_recs)]
    else:
        types = list(samples.context["blocks"]["features"])
        data = [_block_data(t, train_recs) for t in types]
    nets, chosen = [], {}
    for t, (x, y) in zip(types, data):
        own = fit
        if weight_decays is not None:
            if x.shape[0] < 4:
                raise ConfigError(f"choosing the weight decay by cross-validation needs >= 4 training samples, got "
                                  f"{x.shape[0]} ({t}); fix the weight decay instead")
            own, scores = select_weight_decay(x, y, fit, weight_decays, folds=min(4, x.shape[0] // 2))
            chosen[t] = {"chosen": own.weight_decay, "cv_mape": scores}
        nets.append(fit_lpnet(x, y, own, progress))
    # the settings the saved net was fitted with (a block predictor's chosen decays are per type, below)
    fitted = replace(fit, weight_decay=chosen["network"]["chosen"]) if "network" in chosen else fit
    info = {"reference": reference, "fit": fitted.asdict(),
            "split": {"test_fraction": test_fraction, "seed": split_seed}}
    if chosen:
        info["weight_decay"] = {t: {"chosen": c["chosen"], "cv_mape": {str(k): v for k, v in c["cv_mape"].items()}}
                                for t, c in chosen.items()}
    predictor = LatencyPredictor(kind, types, nets, samples.context, info)
    report = _report(predictor, reference, test_recs) | {"n_train": len(train_recs), "n_test": len(test_recs)}
    if chosen:
        report["weight_decay"] = info["weight_decay"]
    predictor.info["report"] = report
    return predictor, report


def _check(samples: LatencySamples, kind: str) -> dict[str, Any]:
    """The samples' reference record, after checking they can train an LPNet of ``kind``."""
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {KINDS}")
    if samples.reference is None or len(samples.records) < 4:
        raise ConfigError(f"need the reference and >= 4 measured candidates, got {len(samples.records)}")
    if kind == "block" and not samples.context.get("blocks"):
        raise ConfigError("these samples have no block timings; collect them with blocks=True (--blocks)")
    return samples.reference


def _network_data(samples: LatencySamples, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The network LPNet's encodings ``(N, G)`` (kept fractions) and latencies ``(N,)`` of ``records``."""
    sizes = torch.tensor(samples.context["sizes"], dtype=torch.float32)
    x = torch.tensor([r["counts"] for r in records], dtype=torch.float32) / sizes  # (N, G)
    y = torch.tensor([r["ms"] for r in records], dtype=torch.float32)  # (N,)
    return x, y


def _block_data(block_type: str, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """A block type's features ``(N, F)`` and latencies ``(N,)`` over the blocks of ``records``."""
    rows = [b for r in records for b in r["blocks"] if b["type"] == block_type]
    x = torch.tensor([b["features"] for b in rows], dtype=torch.float32)  # (N, F)
    y = torch.tensor([b["ms"] for b in rows], dtype=torch.float32)  # (N,)
    return x, y


def _report(predictor: LatencyPredictor, reference: dict, records: list[dict]) -> dict[str, Any]:
    report: dict[str, Any] = {"network": _network_errors(predictor, reference, records).asdict()}
    if predictor.kind == "block":
        report["blocks"] = {t: e.asdict() for t, e in _block_errors(predictor, records).items()}
    return report


def _network_errors(predictor: LatencyPredictor, reference: dict, records: list[dict]) -> LatencyErrors:
    predicted = [predictor.predict_record(r, reference) for r in records]
    return latency_errors(predicted, [r["ms"] for r in records])


def _block_errors(predictor: LatencyPredictor, records: list[dict]) -> dict[str, LatencyErrors]:
    blocks = [b for r in records for b in r["blocks"]]
    predicted = predictor.predict_blocks(blocks).numpy()
    out = {}
    for t in predictor.types:
        rows = np.array([b["type"] == t for b in blocks])
        if rows.sum() >= 2:
            out[t] = latency_errors(predicted[rows], np.array([b["ms"] for b in blocks])[rows])
    return out


def evaluate_predictor(predictor: LatencyPredictor, samples: LatencySamples) -> dict[str, Any]:
    """Score ``predictor`` on every candidate of ``samples`` (e.g. another model built of the same blocks).

    Raises:
        LatencyContextError: the samples were measured in a context the predictor does not cover.
        ConfigError: the samples have no reference or fewer than 2 candidates.
    """
    predictor.check_samples(samples.context)
    reference = samples.reference
    if reference is None or len(samples.records) < 2:
        raise ConfigError("evaluation needs the samples' reference and >= 2 measured candidates")
    if predictor.kind == "block" and not samples.context.get("blocks"):
        raise ConfigError("a block LPNet needs samples collected with blocks=True (--blocks)")
    return _report(predictor, reference, samples.records) | {"n_test": len(samples.records)}


def evaluate_table(table: LatencyTable, samples: LatencySamples) -> dict[str, Any]:
    """Score a latency table on every candidate of ``samples`` measured on its own model and setting.

    Raises:
        LatencyContextError: the samples were measured on another model, device, batch, input or clock.
        ConfigError: the samples have fewer than 2 candidates.
    """
    table.check_samples(samples.context)
    if len(samples.records) < 2:
        raise ConfigError("evaluation needs >= 2 measured candidates")
    own = table.own_model()
    predicted = [own.predicted_ms(r["counts"]) for r in samples.records]
    errors = latency_errors(predicted, [r["ms"] for r in samples.records])
    return {"network": errors.asdict(), "n_test": len(samples.records)}
