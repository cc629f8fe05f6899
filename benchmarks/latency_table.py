"""The per-layer latency lookup table against the LPNet: error, collection cost, and the networks they produce.

For each model, on one device and protocol:

1. **Samples**: pruned candidates measured whole (as for the LPNet, resumable; shared with
   ``benchmarks.latency_mode`` when the work folder is).
2. **LPNet**: a network LPNet trained on 80 % of the candidates (the default split), scored on the
   held-out 20 %; with ``--select-weight-decay``, a second one whose weight decay is chosen by 4-fold
   cross-validation on the 80 % (``train_predictor(weight_decays=...)``), scored on the same 20 %.
3. **Table**: every layer a gate moves, timed alone over ``points`` channel counts per varying axis
   (:func:`~wgates_plugin.profiling.collect_table`), scored on *the same* held-out candidates.
4. **Noise floor**: held-out candidates measured a second time, scored against their first
   measurement: no predictor can beat it on these labels.
5. **Networks**: W-Gates (warm start, no training: latency depends on the counts, not the weights)
   frozen at a latency target with each cost model, and FLOPs mode at the FLOPs each reached; all
   exported and timed side by side in interleaved, shuffled rounds, with the cost model's prediction.

With ``--paired`` the candidates (and the floor's second measurement) are timed beside the unpruned
model and labelled by their ratio to it (``collect_latency(paired=True)``); the table, whose
reference is its own measurement of the unpruned model, is then scored on its predicted ratio.

Run ``python -m benchmarks.latency_table --help``; output: Markdown on stdout and, with ``--json``, every
figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from wgates_plugin import WGates, count_macs
from wgates_plugin.efficiency import (
    WEIGHT_DECAY_GRID,
    FitConfig,
    LatencyTable,
    Timing,
    device_name,
    latency_errors,
)
from wgates_plugin.efficiency.lpnet import split_indices
from wgates_plugin.errors import BudgetError
from wgates_plugin.profiling import collect_table, train_predictor

from . import latency_mode
from .latency_mode import _collect, _model, noise_floor, side_by_side


@dataclass(frozen=True)
class Setup:
    """Every knob of the run (defaults: the run recorded in RESULTS.md)."""

    work: str = "latency-table-bench"
    models: tuple[str, ...] = ("resnet18", "mobilenet_v2")
    size: int = 64
    samples: int = 300
    noise_samples: int = 40
    points: int = 6
    epochs: int = 300
    targets: tuple[float, ...] = (0.5,)
    device: str = "cpu"
    batch: int = 8
    threads: int = 1
    clock: str = "cpu"
    warmup: int = 2
    repeats: int = 7
    rounds: int = 15
    seed: int = 0
    statistic: str = "median"
    paired: bool = False
    weight_decays: tuple[float, ...] = ()  # non-empty: also an LPNet whose weight decay is chosen among these by CV

    @property
    def timing(self) -> Timing:
        return self.for_latency_mode().timing

    def for_latency_mode(self) -> latency_mode.Setup:
        """The same protocol in ``benchmarks.latency_mode``'s terms (its collection and noise floor)."""
        return replace(latency_mode.Setup(), work=self.work, device=self.device, batch=self.batch, threads=self.threads,
                       clock=self.clock, warmup=self.warmup, repeats=self.repeats, noise_samples=self.noise_samples,
                       rounds=self.rounds, seed=self.seed, statistic=self.statistic, paired=self.paired)


QUICK = Setup(work="latency-table-bench-quick", models=("resnet18",), size=32, samples=12, noise_samples=3, points=3,
              epochs=30, rounds=2, warmup=0, repeats=2)


def _table(setup: Setup, name: str, x: torch.Tensor) -> LatencyTable:
    t = setup.timing
    path = Path(setup.work) / (f"{name}_{setup.size}_p{setup.points}_b{setup.batch}_w{t.warmup}_n{t.repeats}"
                               f"_t{t.threads}_{t.clock}_{t.runtime}_{t.statistic}.table.json")
    if path.exists():
        return LatencyTable.load(path)
    table = collect_table(_model(name), x, device=setup.device, batch=setup.batch, timing=setup.timing,
                          points=setup.points, model_name=name)
    table.save(path)
    return table


def _networks(setup: Setup, name: str, x: torch.Tensor, cost_models: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in setup.targets:
        exported, info = {"baseline": _model(name)}, {}
        for label, source in cost_models.items():
            model = _model(name)
            try:
                wg = WGates(model, x, target=target, efficiency=source.efficiency(model, x))
            except BudgetError as error:  # below this device's floor: recorded, and the other figures still come
                rows.append({"model": name, "target": target, "method": label, "unreachable": str(error)})
                continue
            wg.freeze()
            exported[label] = wg.export()
            info[label] = {"predicted_ms": wg.efficiency.predicted_ms(wg.counts()), "cost_ratio": wg.cost_ratio(),
                           "counts": [int(c) for c in wg.counts()]}
            wg.remove()
            flops = count_macs(exported[label], x) / count_macs(exported["baseline"], x)
            model = _model(name)
            wg = WGates(model, x, target=flops)
            wg.freeze()
            exported[f"FLOPs mode at {label}'s FLOPs"] = wg.export()
            wg.remove()
        timed = side_by_side(exported, setup.for_latency_mode(), setup.size)
        base = count_macs(exported["baseline"], x)
        for label, model in exported.items():
            rows.append({"model": name, "target": target, "method": label, "flops_ratio": count_macs(model, x) / base,
                         **timed[label], "latency_ratio": timed[label]["ms"] / timed["baseline"]["ms"],
                         **info.get(label, {})})
    return rows


def run(setup: Setup) -> dict[str, Any]:
    Path(setup.work).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(setup.threads)
    lm = setup.for_latency_mode()
    out: dict[str, Any] = {"setup": asdict(setup), "device": device_name(setup.device), "torch": torch.__version__,
                           "models": {}, "networks": []}
    for name in setup.models:
        x = torch.zeros(2, 3, setup.size, setup.size)
        samples, rate = _collect(lm, name, setup.size, setup.samples, blocks=False)
        start = time.perf_counter()
        lpnet, report = train_predictor(samples, "network", FitConfig(epochs=setup.epochs, seed=setup.seed))
        fit_seconds = time.perf_counter() - start
        selected = None
        if setup.weight_decays:
            start = time.perf_counter()
            lpnet_cv, cv_report = train_predictor(samples, "network", FitConfig(epochs=setup.epochs, seed=setup.seed),
                                                  weight_decays=setup.weight_decays)
            selected = {**cv_report["network"], "weight_decay": cv_report["weight_decay"]["network"],
                        "fit_s": time.perf_counter() - start}
        _, test = split_indices(len(samples.records), 0.2, 0)  # train_predictor's held-out candidates
        held_out = [samples.records[i] for i in test]
        table = _table(setup, name, x)
        table.check_samples(samples.context)  # one device, batch, input, clock and model
        own = table.own_model()
        # paired labels are ratios to the unpruned model (times the samples' reference): the table is scored
        # on its predicted ratio too (its reference is its own measurement of the unpruned model)
        scale = samples.reference["ms"] / own.reference_ms if setup.paired else 1.0
        table_errors = latency_errors([scale * own.predicted_ms(r["counts"]) for r in held_out],
                                      [r["ms"] for r in held_out])
        out["models"][name] = {
            "lpnet": report["network"], "table": table_errors.asdict(), "n_test": len(held_out),
            **({"lpnet_cv": selected} if selected else {}),
            "noise": noise_floor(lm, name, setup.size, samples),
            "cost": {"lpnet": {"networks": rate["measured"], "collect_s": rate["seconds"], "fit_s": fit_seconds},
                     "table": {"layer_measurements": table.info["measurements"], "tables": table.info["tables"],
                               "layers": table.info["layers"], "collect_s": table.info["seconds"]}},
        }
        cost_models = {"latency mode (LPNet)": lpnet, "latency mode (table)": table}
        if selected:
            cost_models["latency mode (LPNet, weight decay by CV)"] = lpnet_cv
        out["networks"] += _networks(setup, name, x, cost_models)
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"Device `{result['device']}`, torch {result['torch']}; input {s['size']}×{s['size']}, "
             f"batch {s['batch']}, "
             f"{s['threads']} thread(s), clock {s['clock']}, {s['warmup']} warm-up + {s.get('statistic', 'median')} of "
             f"{s['repeats']}{'; samples paired with the unpruned model' if s.get('paired') else ''}.", "",
             "| model | predictor (same held-out candidates) | n | MAPE % | within ±5 % | within ±10 % | Spearman | "
             "max % |", "|---|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        rows = [("network LPNet", "lpnet")]
        if "lpnet_cv" in m:
            rows.append((f"network LPNet, weight decay {m['lpnet_cv']['weight_decay']['chosen']:g} by CV", "lpnet_cv"))
        for label, key in (*rows, ("per-layer table", "table"), ("noise floor (re-measured)", "noise")):
            e = m[key]
            lines.append(f"| {name} | {label} | {e['n']} | {e['mape']:.2f} | {100 * e['within_5']:.1f} | "
                         f"{100 * e['within_10']:.1f} | {e['spearman']:.4f} | {e['max_ape']:.1f} |")
    for name, m in result["models"].items():
        if "lpnet_cv" in m:
            scores = ", ".join(f"{float(k):g}: {v:.2f} %" for k, v in m["lpnet_cv"]["weight_decay"]["cv_mape"].items())
            lines += ["", f"{name}: 4-fold CV MAPE on the training candidates by weight decay: {scores} "
                          f"(fits {m['lpnet_cv']['fit_s']:.0f} s)."]
    lines += ["", "| model | cost model | what is measured | seconds |", "|---|---|---|---|"]
    for name, m in result["models"].items():
        c = m["cost"]
        lines.append(f"| {name} | LPNet | {c['lpnet']['networks']} whole networks (+ fit {c['lpnet']['fit_s']:.0f} s)"
                     f" | {c['lpnet']['collect_s']:.0f} |")
        lines.append(f"| {name} | table | {c['table']['layer_measurements']} single-layer timings "
                     f"({c['table']['layers']} layers in {c['table']['tables']} tables) | "
                     f"{c['table']['collect_s']:.0f} |")
    lines += ["", "| model | target | method | FLOPs ratio | predicted ms | measured ms | latency ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in result["networks"]:
        if "unreachable" in r:
            lines.append(f"| {r['model']} | {r['target']} | {r['method']} | unreachable: {r['unreachable']} | | | |")
            continue
        predicted = f"{r['predicted_ms']:.3f}" if "predicted_ms" in r else ""
        lines.append(f"| {r['model']} | {r['target']} | {r['method']} | {r['flops_ratio']:.4f} | {predicted} | "
                     f"{r['ms']:.3f} | {r['latency_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized preset")
    parser.add_argument("--work", help="samples and tables are written (and resumed) here")
    parser.add_argument("--models", nargs="+", help="torchvision model names")
    parser.add_argument("--samples", type=int, help="whole-network candidates for the LPNet")
    parser.add_argument("--points", type=int, help="table grid points per varying axis")
    parser.add_argument("--size", type=int, help="input height and width")
    parser.add_argument("--statistic", choices=("median", "min", "iqm"), help="Timing.statistic (default median)")
    parser.add_argument("--paired", action="store_true", default=None,
                        help="collect the samples (and the noise floor) paired with the unpruned model")
    parser.add_argument("--device", help="where to time: cpu (default) or cuda[:N]; a GPU is timed with the wall "
                                             "clock, synchronised around every forward")
    parser.add_argument("--batch", type=int, help="batch size of every timed forward (default 8)")
    parser.add_argument("--targets", type=float, nargs="+", help="latency targets of the networks each cost model "
                                                                 "produces (fractions of the unpruned latency)")
    parser.add_argument("--select-weight-decay", type=float, nargs="*", metavar="WD",
                        help="also fit an LPNet whose weight decay is chosen among these by 4-fold cross-validation "
                             "on the training candidates (no values: the library's default grid)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    if args.device is not None and torch.device(args.device).type != "cpu":
        setup = replace(setup, device=args.device, clock="wall")  # the CPU clock does not see GPU work
    for key in ("work", "samples", "points", "size", "statistic", "paired", "batch"):
        if getattr(args, key) is not None:
            setup = replace(setup, **{key: getattr(args, key)})
    if args.models:
        setup = replace(setup, models=tuple(args.models))
    if args.targets:
        setup = replace(setup, targets=tuple(args.targets))
    if args.select_weight_decay is not None:
        setup = replace(setup, weight_decays=tuple(args.select_weight_decay) or WEIGHT_DECAY_GRID)
    result = run(setup)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
