"""Latency mode, measured: LPNet accuracy, FLOPs mode vs latency mode at equal FLOPs, collection cost.

(a) **LPNet error figures** on held-out candidates (80/20 split over measured networks):
    a network LPNet for resnet18 and a block LPNet (one net per block type, summed) for resnet50,
    each with the log-latency loss (default) and plain MSE on milliseconds; the resnet50 block LPNet
    reused unchanged on resnet101; a network LPNet on the resnet50 samples for comparison. Next to
    them, the *measurement noise floor*: held-out candidates measured a second time, later in the run,
    scored against their first measurement with the same figures.
(b) **FLOPs mode vs latency mode at the same FLOPs**, side by side: a resnet18 baseline is trained
    on the bundled digits; W-Gates prunes a copy in latency target mode (budget = a fraction of the
    measured latency, LPNet from (a)); its exported FLOPs ratio becomes the FLOPs-mode target for a
    second copy; a uniformly thinned network at the same FLOPs is the third. All three exported
    models (and the baseline) are timed in interleaved rounds (order shuffled every round) so machine
    drifts hit all alike; the median over rounds is reported, with top-1 after BN re-calibration (no
    fine-tuning) to show the networks are intact.
(c) **Collection cost**: candidates measured per second in (a).

Run ``python -m benchmarks.latency_mode --help``; ``--quick`` is a smoke-sized preset. Output: markdown
on stdout and, with ``--json``, every figure as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from wgates_plugin import WGates, count_macs
from wgates_plugin.budget import Budget, land
from wgates_plugin.efficiency import (
    FitConfig,
    FlopsModel,
    LatencyPredictor,
    Timing,
    device_name,
    latency_errors,
    measure_ms,
    measure_paired,
    record_layer_shapes,
    split_indices,
)
from wgates_plugin.profiling import CandidateSpace, collect_latency, evaluate_predictor, load_samples, train_predictor


@dataclass(frozen=True)
class Setup:
    """Every knob of the run (defaults: the full run recorded in RESULTS.md)."""

    work: str = "latency-bench"  # samples and LPNets are written (and resumed) here
    device: str = "cpu"
    batch: int = 8
    threads: int = 1
    clock: str = "cpu"
    warmup: int = 2
    repeats: int = 7
    r18_size: int = 64
    r18_samples: int = 600
    r50_size: int = 64
    r50_samples: int = 200
    r101_samples: int = 30
    noise_samples: int = 40
    epochs: int = 300
    baseline_steps: int = 150
    gate_steps: int = 150
    gate_lr: float = 3e-3
    latency_targets: tuple[float, ...] = (0.5, 0.7)
    rounds: int = 15
    seed: int = 0
    block_models: bool = True  # the resnet50 / resnet101 part of (a)
    statistic: str = "median"  # Timing.statistic of every measurement
    paired: bool = False  # samples timed beside the unpruned model (collect_latency(paired=True))

    @property
    def timing(self) -> Timing:
        return Timing(self.warmup, self.repeats, self.threads, self.clock, statistic=self.statistic)


QUICK = Setup(work="latency-bench-quick", r18_size=32, r18_samples=30, r50_size=32, r50_samples=8, r101_samples=4,
              noise_samples=4, epochs=30, baseline_steps=5, gate_steps=5, latency_targets=(0.5,), rounds=2)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10).eval()


def _collect(setup: Setup, name: str, size: int, samples: int, blocks: bool) -> tuple[Any, dict[str, float]]:
    """Collect (or resume) samples of ``name``; return them with the collection rate of this call."""
    protocol = ("_paired" if setup.paired else "") + ("" if setup.statistic == "median" else f"_{setup.statistic}")
    path = Path(setup.work) / f"{name}_{size}{'_blocks' if blocks else ''}{protocol}.jsonl"
    model = _model(name)
    done = len(load_samples(path)) if path.exists() else 0
    start = time.perf_counter()
    data = collect_latency(model, torch.zeros(2, 3, size, size), path, samples, device=setup.device,
                           batch=setup.batch, timing=setup.timing, seed=setup.seed, blocks=blocks,
                           model_name=name, progress=True, paired=setup.paired and not blocks)
    seconds = time.perf_counter() - start
    measured = len(data) - done
    rate = {"model": name, "size": size, "blocks": blocks, "measured": measured, "seconds": seconds,
            "per_second": measured / seconds if measured else float("nan")}
    return data, rate


def _train(samples: Any, kind: str, setup: Setup, log_target: bool = True) -> tuple[LatencyPredictor, dict]:
    fit = FitConfig(log_target=log_target, epochs=setup.epochs, seed=setup.seed)
    return train_predictor(samples, kind, fit, progress=True)


def noise_floor(setup: Setup, name: str, size: int, samples: Any) -> dict[str, Any]:
    """Held-out candidates measured again now, as the samples were (paired or not), scored against their
    first measurement."""
    _, test = split_indices(len(samples.records), 0.2, 0)
    records = [samples.records[i] for i in test[: setup.noise_samples]]
    model = _model(name)
    space = CandidateSpace(model, torch.zeros(2, 3, size, size))
    x = torch.randn(setup.batch, 3, size, size, device=setup.device)
    if samples.context.get("paired"):
        base = samples.references[0]["ms"]
        again = [measure_paired(model, space.build(r["counts"]), x, setup.timing, base)[0] for r in records]
    else:
        again = [measure_ms(space.build(r["counts"]), x, setup.timing) for r in records]
    return latency_errors(again, [r["ms"] for r in records]).asdict()


def part_a(setup: Setup) -> dict[str, Any]:
    """LPNet error figures (network: resnet18; block: resnet50, reused on resnet101) and noise floors."""
    out: dict[str, Any] = {"rates": []}
    r18, rate = _collect(setup, "resnet18", setup.r18_size, setup.r18_samples, blocks=False)
    out["rates"].append(rate)
    net, report = _train(r18, "network", setup)
    out["resnet18_network"] = {"log": report, "mse": _train(r18, "network", setup, log_target=False)[1]}
    net.save(Path(setup.work) / "resnet18_network.lpnet")
    out["resnet18_noise"] = noise_floor(setup, "resnet18", setup.r18_size, r18)
    if setup.block_models:
        blocks = _block_part(setup)
        out["rates"] += blocks.pop("rates")
        out.update(blocks)
    return out


def _block_part(setup: Setup) -> dict[str, Any]:
    """Block LPNet on resnet50, reused on resnet101; a network LPNet on resnet50 for comparison."""
    out: dict[str, Any] = {"rates": []}
    r50, rate = _collect(setup, "resnet50", setup.r50_size, setup.r50_samples, blocks=True)
    out["rates"].append(rate)
    block, report = _train(r50, "block", setup)
    out["resnet50_block"] = {"log": report, "mse": _train(r50, "block", setup, log_target=False)[1]}
    out["resnet50_network"] = {"log": _train(r50, "network", setup)[1]}
    block.save(Path(setup.work) / "resnet50_block.lpnet")
    out["resnet50_noise"] = noise_floor(setup, "resnet50", setup.r50_size, r50)

    r101, rate = _collect(setup, "resnet101", setup.r50_size, setup.r101_samples, blocks=True)
    out["rates"].append(rate)
    out["resnet101_from_resnet50_block"] = evaluate_predictor(block, r101)
    return out


# ---------------------------------------------------------------------------- (b) FLOPs vs latency mode
def _digits(setup: Setup) -> tuple[Any, Any]:
    from wgates_plugin.app.data import load_digits, loaders

    train, test = load_digits(setup.r18_size, seed=setup.seed)
    return loaders(train, test, batch_size=32, seed=setup.seed)


def _baseline(setup: Setup, train_loader: Any) -> nn.Module:
    from wgates_plugin.app.training import fit

    model = _model("resnet18").train()
    fit(model, train_loader, setup.baseline_steps, progress=True, desc="baseline")
    return model


def _prune(base: nn.Module, x: torch.Tensor, train_loader: Any, setup: Setup, **wg_kwargs: Any) -> tuple:
    from wgates_plugin.app.training import Recipe, train_gates

    model = copy.deepcopy(base)
    wg = WGates(model, x, **wg_kwargs)
    trace = train_gates(model, wg, train_loader, Recipe(gate_steps=setup.gate_steps, gate_lr=setup.gate_lr,
                                                        log_every=25), progress=True)
    wg.freeze()
    pruned = wg.export()
    counts = [int(c) for c in wg.counts()]
    wg.remove()
    return pruned, counts, trace


def _uniform(base: nn.Module, x: torch.Tensor, flops_ratio: float) -> tuple[nn.Module, list[int]]:
    """Every group thinned by the same factor to ``flops_ratio`` of the FLOPs (no training)."""
    space = CandidateSpace(base, x)
    flops = FlopsModel(record_layer_shapes(base, x), space.groups)
    units = land([b.high for b in space.bounds], space.bounds, [Budget.fraction(flops, flops_ratio)])
    counts = [u * b.tie for u, b in zip(units, space.bounds)]
    return space.build(counts), counts


def side_by_side(models: dict[str, nn.Module], setup: Setup, size: int,
                 timing: Timing | None = None) -> dict[str, dict[str, float]]:
    """Median over interleaved, shuffled rounds of each model's latency with ``timing`` (default the
    setup's CPU clock) and, for PyTorch timing, the wall clock too."""
    x = torch.randn(setup.batch, 3, size, size, device=setup.device)
    timing = timing or setup.timing
    clocks = {"ms": timing}
    if timing.runtime == "pytorch":
        clocks["wall_ms"] = replace(timing, clock="wall")
    times: dict[str, dict[str, list[float]]] = {k: {c: [] for c in clocks} for k in models}
    rng = random.Random(setup.seed)
    for _ in range(setup.rounds):
        for name in rng.sample(list(models), len(models)):
            for c, t in clocks.items():
                times[name][c].append(measure_ms(models[name], x, t))
    return {k: {c: statistics.median(v) for c, v in per.items()} for k, per in times.items()}


def part_b(setup: Setup) -> list[dict[str, Any]]:
    """For each latency target: latency mode, FLOPs mode at its FLOPs, uniform at its FLOPs; timed together."""
    from wgates_plugin.app.training import evaluate, recalibrate_bn

    train_loader, test_loader = _digits(setup)
    base = _baseline(setup, train_loader)
    x = torch.zeros(1, 3, setup.r18_size, setup.r18_size)
    predictor = LatencyPredictor.load(Path(setup.work) / "resnet18_network.lpnet")
    rows = []
    for target in setup.latency_targets:
        lat, lat_counts, lat_trace = _prune(base, x, train_loader, setup, target=target,
                                            efficiency=predictor.efficiency(base, x))
        ratio = count_macs(lat, x) / count_macs(base, x)
        flp, flp_counts, flp_trace = _prune(base, x, train_loader, setup, target=ratio)
        uni, uni_counts = _uniform(base, x, ratio)
        models = {"baseline": base, "latency mode": lat, "FLOPs mode": flp, "uniform": uni}
        timed = side_by_side(models, setup, setup.r18_size)
        latency = predictor.for_model(base, x)
        counts = {"baseline": latency.full_counts().tolist(), "latency mode": lat_counts,
                  "FLOPs mode": flp_counts, "uniform": uni_counts}
        for name, model in models.items():
            if name != "baseline":
                recalibrate_bn(model, train_loader, 20)
            with torch.no_grad():
                predicted = float(latency.cost(torch.tensor(counts[name], dtype=torch.float32)))
            rows.append({"target": target, "method": name, "flops_ratio": count_macs(model, x) / count_macs(base, x),
                         "predicted_ms": predicted, **timed[name], "top1_recalibrated": evaluate(model, test_loader),
                         "counts": counts[name]})
        rows.append({"target": target, "traces": {"latency mode": lat_trace, "FLOPs mode": flp_trace}})
    return rows


# ---------------------------------------------------------------------------- report
def _errors_row(label: str, e: dict[str, Any]) -> str:
    return (f"| {label} | {e['n']} | {e['mape']:.2f} | {100 * e['within_5']:.1f} | {100 * e['within_10']:.1f} "
            f"| {e['spearman']:.4f} | {e['max_ape']:.1f} |")


def markdown(a: dict[str, Any], b: list[dict[str, Any]], setup: Setup, seconds: float) -> str:
    lines = ["| predictor (held-out candidates) | n | MAPE % | within ±5 % | within ±10 % | Spearman | max % |",
             "|---|---|---|---|---|---|---|"]
    r18 = f"resnet18 {setup.r18_size}x{setup.r18_size}"
    lines.append(_errors_row(f"{r18} network LPNet, log-MSE loss", a["resnet18_network"]["log"]["network"]))
    lines.append(_errors_row(f"{r18} network LPNet, MSE on ms", a["resnet18_network"]["mse"]["network"]))
    lines.append(_errors_row(f"{r18} noise floor (re-measured)", a["resnet18_noise"]))
    lines += _block_rows(a) if "resnet50_block" in a else []
    lines += ["", "| latency target | method | FLOPs ratio | predicted ms | measured ms (CPU clock) | "
                  "measured ms (wall) | top-1 after BN recal. |", "|---|---|---|---|---|---|---|"]
    for r in b:
        if "method" in r:
            lines.append(f"| {r['target']} | {r['method']} | {r['flops_ratio']:.4f} | {r['predicted_ms']:.3f} | "
                         f"{r['ms']:.3f} | {r['wall_ms']:.3f} | {100 * r['top1_recalibrated']:.1f} |")
    lines += ["", "| collection | candidates | seconds | candidates / s |", "|---|---|---|---|"]
    for r in a["rates"]:
        what = f"{r['model']} {r['size']}x{r['size']}" + (" + every block" if r["blocks"] else "")
        lines.append(f"| {what} | {r['measured']} | {r['seconds']:.0f} | {r['per_second']:.2f} |")
    lines.append(f"\ndevice '{device_name(setup.device)}', torch {torch.__version__}, {setup.threads} thread(s), "
                 f"batch {setup.batch}, clock {setup.clock}; whole run {seconds / 60:.1f} min")
    return "\n".join(lines)


def _block_rows(a: dict[str, Any]) -> list[str]:
    lines = []
    for loss in ("log", "mse"):
        rep = a["resnet50_block"][loss]
        tag = "log-MSE" if loss == "log" else "MSE on ms"
        lines.append(_errors_row(f"resnet50 block LPNet ({tag}): network sum", rep["network"]))
        for block_type, e in rep["blocks"].items():
            lines.append(_errors_row(f"resnet50 block LPNet ({tag}): {block_type.rsplit('.', 1)[-1]} blocks", e))
    lines.append(_errors_row("resnet50 network LPNet, log-MSE", a["resnet50_network"]["log"]["network"]))
    lines.append(_errors_row("resnet50 noise floor (re-measured)", a["resnet50_noise"]))
    reuse = a["resnet101_from_resnet50_block"]
    lines.append(_errors_row("resnet50 block LPNet on resnet101 (all candidates)", reuse["network"]))
    for block_type, e in reuse["blocks"].items():
        lines.append(_errors_row(f"... on resnet101's {block_type.rsplit('.', 1)[-1]} blocks", e))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized preset")
    parser.add_argument("--work", help="directory for samples and LPNets (resumed when re-run)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--r18-size", type=int, help="resnet18 input size for (a) and (b) (default 64)")
    parser.add_argument("--r18-samples", type=int, help="resnet18 candidates measured in (a) (default 600)")
    parser.add_argument("--only-resnet18", action="store_true", help="skip the resnet50 / resnet101 part of (a)")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    overrides = {"work": args.work, "r18_size": args.r18_size, "r18_samples": args.r18_samples,
                 "block_models": False if args.only_resnet18 else None}
    setup = replace(setup, **{k: v for k, v in overrides.items() if v is not None})
    Path(setup.work).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(setup.threads)
    start = time.perf_counter()
    a = part_a(setup)
    b = part_b(setup)
    seconds = time.perf_counter() - start
    print(markdown(a, b, setup, seconds))
    if args.json:
        args.json.write_text(json.dumps({"setup": asdict(setup), "a": a, "b": b, "seconds": seconds,
                                         "device": device_name(setup.device), "torch": torch.__version__},
                                        indent=1, default=_jsonable))
    return 0


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


if __name__ == "__main__":
    sys.exit(main())
