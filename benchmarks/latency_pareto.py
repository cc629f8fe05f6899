"""Latency mode against FLOPs mode where latency is not FLOPs: top-1 at equal *measured* latency, and
latency at equal top-1, on Fashion-MNIST.

The device is **onnxruntime on the CPU** (what a deployment measures; ``Timing(runtime="onnxruntime")``),
the network a depthwise one (``mobilenet_v2``, CIFAR adaptation, see :mod:`benchmarks.models`). Both modes
use the same recipe (the W-Gates defaults of the comparison harness: warm start, Adam on the gates,
``prune_epochs`` of joint training, BN re-calibration, then fine-tuning to the total budget) and
``round_to`` (kept counts multiples of 8, onnxruntime's channel blocking). They differ in one thing
(by default; ``--flops-round-to 1 --round-to auto`` sets FLOPs mode at the library's default, any
count, against latency mode on the multiple its table measured on the device,
:func:`~wgates_plugin.profiling.measure_alignment`):

- **FLOPs mode** prunes to a FLOPs target (``flops_targets``);
- **latency mode** prunes to a latency target (``latency_targets``, fractions of the unpruned model's
  measured onnxruntime latency) with a per-layer lookup table measured in onnxruntime
  (:func:`~wgates_plugin.profiling.collect_table`), frozen by the closed-loop landing on the measured
  latency.

Every run is one JSON line in ``runs.jsonl`` (resumable). At the end every exported architecture is
rebuilt (latency depends on the channel counts only) and timed again in onnxruntime in interleaved,
shuffled rounds; the medians are what the comparison uses. Per seed, each latency-mode point is compared
with the FLOPs-mode curve of the same seed (same baseline, same data order), linearly interpolated:
the latency FLOPs mode needs for the same top-1, and the top-1 it reaches at the same latency.

Run ``python -m benchmarks.latency_pareto --help``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from wgates_plugin import count_macs
from wgates_plugin.app.commands.lpnet import round_to_arg
from wgates_plugin.app.training import evaluate
from wgates_plugin.efficiency import LatencyTable, Timing, device_name
from wgates_plugin.errors import ConfigError
from wgates_plugin.profiling import CandidateSpace, collect_table
from wgates_plugin.utils import check_number

from . import latency_mode, learned
from .latency_mode import side_by_side
from .methods import PruneContext, prunable_layers
from .models import build
from .protocol import Protocol, baseline, calibrated_top1, finetune_curve, make_data, steps_per_epoch
from .report import verdict


@dataclass(frozen=True)
class Setup:
    """Every knob of the run (defaults: the run recorded in RESULTS.md)."""

    out: str = "benchmarks/results/latency_pareto"
    cache: str = ".cache/benchmarks"
    model: str = "mobilenet_v2"
    flops_targets: tuple[float, ...] = (0.6, 0.45, 0.3, 0.2)
    latency_targets: tuple[float, ...] = (0.45, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2)
    round_to: int | str = 8
    flops_round_to: int = 8
    dataset: str = "fashion-mnist"
    train_size: int = 10000
    prune_epochs: float = 1.0
    baseline_epochs: int = 10
    budget_epochs: float = 3.0
    latency_batch: int = 8
    points: int = 6
    warmup: int = 5
    repeats: int = 15
    rounds: int = 7
    threads: int = 1
    runtime: str = "onnxruntime"

    @property
    def protocol(self) -> Protocol:
        """The comparison harness's protocol (Fashion-MNIST defaults) with this run's epochs."""
        return Protocol(dataset=self.dataset, train_size=self.train_size, baseline_epochs=self.baseline_epochs,
                        prune_epochs=self.prune_epochs, budget_epochs=(self.budget_epochs,), tolerance=0.05)

    @property
    def timing(self) -> Timing:
        return Timing(self.warmup, self.repeats, self.threads, "cpu" if self.threads == 1 else "wall", self.runtime)


QUICK = Setup(out="latency-pareto-quick", flops_targets=(0.5, 0.3), latency_targets=(0.4,), seeds=(0,),
              dataset="digits", train_size=1200, prune_epochs=0.1, baseline_epochs=1, budget_epochs=0.2, points=3,
              warmup=1, repeats=3, rounds=2)


def _table(setup: Setup, base: torch.nn.Module, x: torch.Tensor, key: str) -> LatencyTable:
    t = setup.timing
    path = Path(setup.cache) / (f"table_{setup.model}_{key}_{t.runtime}_b{setup.latency_batch}_r{setup.round_to}"
                                f"_p{setup.points}_w{t.warmup}_n{t.repeats}_t{t.threads}_{t.clock}.json")
    if path.exists():
        return LatencyTable.load(path)
    table = collect_table(copy.deepcopy(base).eval(), x, batch=setup.latency_batch, timing=setup.timing,
                          points=setup.points, round_to=setup.round_to, model_name=setup.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    return table


def _done(path: Path) -> set[tuple[str, float, int]]:
    if not path.exists():
        return set()
    return {(r["mode"], r["target"], r["seed"]) for r in _records(path)}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(setup: Setup, p: Protocol, data: Any, base: torch.nn.Module, x: torch.Tensor, table: LatencyTable,
            mode: str, target: float, seed: int) -> dict[str, Any]:
    steps = round(p.prune_epochs * steps_per_epoch(p))
    torch.manual_seed(seed)
    ctx = PruneContext(copy.deepcopy(base).train(), x, data.train(seed), target, seed, steps,
                       prunable_layers(base, x), p.tolerance)
    sgd = {"weight_lr": p.finetune_lr, "momentum": p.momentum, "weight_decay": p.weight_decay}
    start = time.perf_counter()
    latency = mode == "latency"
    pruned = learned.wgates(ctx, gate_lr=p.gate_lr, cost_model=table if latency else None,
                            round_to=table.round_to if latency else setup.flops_round_to, **sgd)
    seconds = time.perf_counter() - start
    model = pruned.model
    record = {"mode": mode, "target": target, "seed": seed,
              "round_to": table.round_to if latency else setup.flops_round_to,
              "flops_ratio": count_macs(model, x) / count_macs(base, x),
              "steps_used": pruned.steps_used, "prune_seconds": round(seconds, 1),
              "kept": pruned.info["kept"],
              "top1_pruned_raw": evaluate(model, data.test()), "top1_pruned": calibrated_top1(model, data, seed, p)}
    record["top1"] = finetune_curve(model, data, seed, p, pruned.steps_used)
    if "landing" in pruned.info:
        record["landing"] = pruned.info["landing"]
    return record


def time_all(setup: Setup, base: torch.nn.Module, x: torch.Tensor, records: list[dict[str, Any]]) -> dict[str, float]:
    """Median latency of every recorded architecture and the baseline, interleaved and shuffled
    (:func:`benchmarks.latency_mode.side_by_side` with this run's timing)."""
    space = CandidateSpace(base, x, None)
    nets = {"baseline": copy.deepcopy(base).eval()}
    for r in records:
        nets[_key(r)] = space.build([int(r["kept"][g.name][0]) for g in space.groups])
    lm = replace(latency_mode.Setup(), batch=setup.latency_batch, rounds=setup.rounds, seed=0)
    timed = side_by_side(nets, lm, x.shape[-1], setup.timing)
    return {k: v["ms"] for k, v in timed.items()}


def _key(r: dict[str, Any]) -> str:
    return f"{r['mode']}:{r['target']}:{r['seed']}"


def _interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """``y`` at ``x = at`` on the piecewise-linear curve through ``points`` (x sorted); None outside it."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= at <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return None


def compare(records: list[dict[str, Any]], latency: dict[str, float], budget: str) -> list[dict[str, Any]]:
    """Per seed and latency-mode point: FLOPs mode's latency at the same top-1 and top-1 at the same latency."""
    rows = []
    for seed in sorted({r["seed"] for r in records}):
        flops = [r for r in records if r["seed"] == seed and r["mode"] == "flops"]
        curve_lat = [(r["top1"][budget], latency[_key(r)]) for r in flops]  # top-1 -> latency
        curve_top = [(latency[_key(r)], r["top1"][budget]) for r in flops]  # latency -> top-1
        for r in (r for r in records if r["seed"] == seed and r["mode"] == "latency"):
            ms, top1 = latency[_key(r)], r["top1"][budget]
            flops_ms = _interpolate(curve_lat, top1)
            flops_top1 = _interpolate(curve_top, ms)
            rows.append({"seed": seed, "target": r["target"], "latency_ms": ms, "top1": top1,
                         "flops_ratio": r["flops_ratio"], "flops_mode_ms_at_equal_top1": flops_ms,
                         "latency_saving_pct": None if flops_ms is None else 100 * (1 - ms / flops_ms),
                         "flops_mode_top1_at_equal_latency": flops_top1,
                         "top1_gain_points": None if flops_top1 is None else 100 * (top1 - flops_top1)})
    return rows


def pooled(records: list[dict[str, Any]], latency: dict[str, float], budget: str) -> list[dict[str, Any]]:
    """Per latency target, over the seeds: latency mode's mean point against FLOPs mode's mean curve.

    Each FLOPs target's point is the mean over the seeds of its measured latency and top-1, and each
    latency target's point the same over the seeds that ran it; the mean curve is read as in
    :func:`compare`. Averaging over seeds smooths the top-1 noise of short budgets (a per-seed curve is
    not even monotone), at the price of pairing: the per-seed rows of :func:`compare` keep it.
    """
    def mean_point(runs: list[dict[str, Any]]) -> tuple[float, float]:
        return (statistics.fmean(latency[_key(r)] for r in runs), statistics.fmean(r["top1"][budget] for r in runs))

    flops = [mean_point([r for r in records if r["mode"] == "flops" and r["target"] == t])
             for t in sorted({r["target"] for r in records if r["mode"] == "flops"})]
    rows = []
    for target in sorted({r["target"] for r in records if r["mode"] == "latency"}, reverse=True):
        runs = [r for r in records if r["mode"] == "latency" and r["target"] == target]
        ms, top1 = mean_point(runs)
        flops_ms = _interpolate([(t, m) for m, t in flops], top1)
        flops_top1 = _interpolate(flops, ms)
        rows.append({"target": target, "seeds": len(runs), "latency_ms": ms, "top1": top1,
                     "flops_mode_ms_at_equal_top1": flops_ms,
                     "latency_saving_pct": None if flops_ms is None else 100 * (1 - ms / flops_ms),
                     "flops_mode_top1_at_equal_latency": flops_top1,
                     "top1_gain_points": None if flops_top1 is None else 100 * (top1 - flops_top1)})
    return rows


def run(setup: Setup) -> dict[str, Any]:
    torch.set_num_threads(setup.threads)
    out = Path(setup.out)
    out.mkdir(parents=True, exist_ok=True)
    p = setup.protocol
    data = make_data(p)
    base, info = baseline(setup.model, build, p, data, Path(setup.cache), progress=True)
    base.eval()
    x = torch.zeros(1, 3, p.size, p.size)
    table = _table(setup, base, torch.zeros(2, 3, p.size, p.size), p.baseline_key(setup.model))
    runs = out / "runs.jsonl"
    done = _done(runs)
    for seed in setup.seeds:
        for mode, targets in (("flops", setup.flops_targets), ("latency", setup.latency_targets)):
            for target in targets:
                if (mode, target, seed) in done:
                    continue
                print(f"[latency_pareto] {mode} {target} seed {seed}", flush=True)
                record = run_one(setup, p, data, base, x, table, mode, target, seed)
                with runs.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    records = _records(runs)
    latency = time_all(setup, base, x, records)
    budget = f"{setup.budget_epochs:g}"
    result = {"setup": asdict(setup), "seeds": sorted({r["seed"] for r in records}),
              "device": device_name("cpu", setup.runtime), "torch": torch.__version__,
              "baseline": {**info, "latency_ms": latency["baseline"]}, "table": {**table.info, "scale": table.scale},
              "runs": [{**r, "latency_ms": latency[_key(r)], "latency_ratio": latency[_key(r)] / latency["baseline"]}
                       for r in records],
              "comparison": compare(records, latency, budget), "pooled": pooled(records, latency, budget)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def markdown(result: dict[str, Any]) -> str:
    s, b = result["setup"], result["baseline"]
    alignment = result.get("table", {}).get("alignment")
    budget = f"{s['budget_epochs']:g}"
    lines = [f"Device `{result['device']}`, torch {result['torch']}; {s['model']}, batch {s['latency_batch']}, "
             f"{s['threads']} thread(s), {'CPU' if s['threads'] == 1 else 'wall'} clock, median of {s['rounds']} "
             f"interleaved rounds (each a median of {s['repeats']}).",
             f"Baseline: top-1 {100 * b['top1']:.2f} %, {b['latency_ms']:.3f} ms in onnxruntime.",
             f"round_to: FLOPs mode {s.get('flops_round_to', s['round_to'])}, latency mode {s['round_to']}"
             + (f" (measured: {alignment['round_to']}; ms per GMAC by multiple: " + ", ".join(
                 f"{c['round_to']}: {c['ms_per_gmac']:.1f}" for c in alignment["candidates"]) + ")"
                if alignment else "") + ".", "",
             f"| seed | mode | target | FLOPs ratio | onnxruntime ms | latency ratio | top-1 % after pruning | "
             f"top-1 % at {budget} epochs |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["runs"], key=lambda r: (r["seed"], r["mode"], -r["target"])):
        lines.append(f"| {r['seed']} | {r['mode']} | {r['target']} | {r['flops_ratio']:.3f} | {r['latency_ms']:.3f} | "
                     f"{r['latency_ratio']:.3f} | {100 * r['top1_pruned']:.2f} | {100 * r['top1'][budget]:.2f} |")
    lines += ["", "| seed | latency target | latency-mode ms | top-1 % | FLOPs mode's ms at equal top-1 | saving | "
              "FLOPs mode's top-1 % at equal latency | gain (points) |", "|---|---|---|---|---|---|---|---|"]
    def fmt(v: float | None, spec: str, unit: str = "") -> str:
        return "outside its curve" if v is None else format(v, spec) + unit

    def cells(c: dict[str, Any]) -> str:
        equal_latency = _pct(c["flops_mode_top1_at_equal_latency"])
        return (f"{c['latency_ms']:.3f} | {100 * c['top1']:.2f} | {fmt(c['flops_mode_ms_at_equal_top1'], '.3f')} | "
                f"{fmt(c['latency_saving_pct'], '+.1f', ' %')} | {fmt(equal_latency, '.2f')} | "
                f"{fmt(c['top1_gain_points'], '+.2f')} |")

    for c in result["comparison"]:
        lines.append(f"| {c['seed']} | {c['target']} | " + cells(c))
    lines += ["", "Over the seeds, per latency target: the mean latency-mode point against the mean FLOPs-mode "
              "curve, and the per-seed gains at equal latency (points) as a paired verdict (t-test, p < 0.05).", "",
              "| latency target | seeds | latency-mode ms | top-1 % | FLOPs mode's ms at equal top-1 | saving | "
              "FLOPs mode's top-1 % at equal latency | gain (points) | per-seed gains |", "|---" * 9 + "|"]
    for c in result.get("pooled", []):
        gains = [g["top1_gain_points"] for g in result["comparison"]
                 if g["target"] == c["target"] and g["top1_gain_points"] is not None]
        lines.append(f"| {c['target']} | {c['seeds']} | " + cells(c) + f" {verdict(gains) if gains else '—'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_pareto", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized preset (digits, minutes)")
    parser.add_argument("--out", help="runs.jsonl and result.json go (and resume) here")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--report", action="store_true", help="only time and report the runs recorded so far")
    parser.add_argument("--round-to", type=round_to_arg,
                        help="latency mode's (and the table's) channel multiple, or 'auto': measured on the device "
                             f"(default {Setup.round_to})")
    parser.add_argument("--flops-round-to", type=int,
                        help=f"FLOPs mode's channel multiple (default {Setup.flops_round_to})")
    parser.add_argument("--flops-targets", type=float, nargs="+")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    if args.out:
        setup = replace(setup, out=args.out)
    if args.seeds:
        setup = replace(setup, seeds=tuple(args.seeds))
    if args.round_to is not None:
        setup = replace(setup, round_to=args.round_to)
    if args.flops_round_to is not None:
        check_number("--flops-round-to", args.flops_round_to, ">= 1", integer=True, type_error=ConfigError)
        setup = replace(setup, flops_round_to=args.flops_round_to)
    if args.flops_targets:
        setup = replace(setup, flops_targets=tuple(args.flops_targets))
    if args.report:
        setup = replace(setup, seeds=())
    result = run(setup)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
