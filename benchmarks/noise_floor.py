"""How low the measurement noise floor goes, protocol by protocol, measured side by side.

The noise floor is what no latency predictor can beat: held-out networks measured twice, the second
measurement scored against the first (MAPE, share within ±5 % / ±10 %). This benchmark measures the
same ``networks`` pruned candidates of a model in two passes (each pass in its own shuffled order),
and in each pass times every network both ways, one right after the other:

- **sequential**: the network alone, ``warmup`` + ``repeats`` forwards
  (:func:`~wgates_plugin.efficiency.timing.measure_times`), what ``collect_latency`` does by default;
- **paired**: the network in turns with the unpruned model
  (:func:`~wgates_plugin.efficiency.timing.measure_interleaved`), the latency taken as the ratio of the
  two, as ``collect_latency(paired=True)`` records it.

Every statistic of the repeats (median, min, interquartile mean) is computed from the same raw
timings, so the table compares estimators on identical data. The cost column is the seconds each
protocol spent timing, over both passes.

Run ``python -m benchmarks.noise_floor --help``; Markdown on stdout and, with ``--json``, every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from wgates_plugin.efficiency import Timing, device_name, latency_errors, measure_interleaved, summarize
from wgates_plugin.efficiency.timing import STATISTICS, measure_times
from wgates_plugin.profiling import CandidateSpace

from .latency_mode import _model

PROTOCOLS = ("sequential", "paired")


@dataclass(frozen=True)
class Setup:
    """Every knob of the run (defaults: the run recorded in RESULTS.md)."""

    model: str = "resnet18"
    size: int = 64
    batch: int = 8
    networks: int = 40
    threads: int = 1
    clock: str = "cpu"
    runtime: str = "pytorch"
    warmup: int = 2
    repeats: int = 7
    seed: int = 0

    @property
    def timing(self) -> Timing:
        return Timing(self.warmup, self.repeats, self.threads, self.clock, self.runtime)


QUICK = Setup(size=32, batch=2, networks=3, warmup=0, repeats=3)


def run(setup: Setup) -> dict[str, Any]:
    torch.set_num_threads(setup.threads)
    model = _model(setup.model)
    space = CandidateSpace(model, torch.zeros(2, 3, setup.size, setup.size))
    x = torch.randn(setup.batch, 3, setup.size, setup.size)
    nets = [space.build(space.sample(i, setup.seed)) for i in range(setup.networks)]
    raw: dict[str, list[list[Any]]] = {p: [[None] * setup.networks for _ in range(2)] for p in PROTOCOLS}
    seconds = dict.fromkeys(PROTOCOLS, 0.0)
    rng = random.Random(setup.seed)
    for p in range(2):
        order = list(range(setup.networks))
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            raw["sequential"][p][i] = measure_times(nets[i], x, setup.timing)
            seconds["sequential"] += time.perf_counter() - start
            start = time.perf_counter()
            raw["paired"][p][i] = measure_interleaved([model, nets[i]], x, setup.timing)  # [reference, network]
            seconds["paired"] += time.perf_counter() - start
    floors: dict[str, dict[str, Any]] = {}
    for protocol in PROTOCOLS:
        for statistic in STATISTICS:
            value = summarize if protocol == "sequential" else _ratio
            first = [value(t, statistic) for t in raw[protocol][0]]
            again = [value(t, statistic) for t in raw[protocol][1]]
            floors[f"{protocol}, {statistic}"] = latency_errors(again, first).asdict() | {
                "protocol": protocol, "statistic": statistic, "timing_s": seconds[protocol]}
    return {"setup": asdict(setup), "device": device_name("cpu", setup.runtime), "torch": torch.__version__,
            "floors": floors, "raw": raw}


def _ratio(pair: list[list[float]], statistic: str) -> float:
    reference, network = pair
    return summarize(network, statistic) / summarize(reference, statistic)


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"Device `{result['device']}`, torch {result['torch']}; {s['model']} at {s['size']}×{s['size']}, batch "
             f"{s['batch']}, {s['threads']} thread(s), clock {s['clock']}, {s['warmup']} warm-up + {s['repeats']} "
             f"repeats; {s['networks']} pruned candidates (seed {s['seed']}), each measured in two passes.", "",
             "| protocol | statistic | floor MAPE % | within ±5 % | within ±10 % | worst % | timing s (both passes) |",
             "|---|---|---|---|---|---|---|"]
    for f in result["floors"].values():
        lines.append(f"| {f['protocol']} | {f['statistic']} | {f['mape']:.2f} | {100 * f['within_5']:.0f} % | "
                     f"{100 * f['within_10']:.0f} % | {f['max_ape']:.1f} | {f['timing_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.noise_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized preset")
    parser.add_argument("--model", help="torchvision model name (default resnet18)")
    parser.add_argument("--networks", type=int, help="pruned candidates measured (default 40)")
    parser.add_argument("--runtime", choices=("pytorch", "onnxruntime"), help="what times the networks")
    parser.add_argument("--clock", choices=("wall", "cpu"), help="the clock (default cpu)")
    parser.add_argument("--json", help="also write every figure (raw timings included) to this JSON file")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    changes = {k: v for k, v in (("model", args.model), ("networks", args.networks), ("runtime", args.runtime),
                                 ("clock", args.clock)) if v is not None}
    setup = replace(setup, **changes)
    result = run(setup)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
