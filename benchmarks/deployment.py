"""Latency where a pruned model is served: PyTorch eager vs onnxruntime, unpruned vs pruned.

For each model and FLOPs target: W-Gates (warm start, no training: latency depends on the channel
counts, not on the weights' values) freezes at the target, exports, and
:func:`wgates_plugin.app.onnx_runtime.deployment_report` exports the pruned model to ONNX, checks
onnxruntime's outputs against PyTorch's, and times the unpruned and the pruned model in both runtimes
with one timing protocol (the four measurements of a row run back to back, in one process).

    python -m benchmarks.deployment --models resnet18 mobilenet_v2 timm:efficientnet_b0 --targets 0.5 0.25

One JSON line per (model, target) in ``--out`` (default ``benchmarks/results/deployment/runs.jsonl``),
a Markdown table on stdout. ``--clock cpu`` (the default, one thread) times the process's CPU time,
which a busy machine does not inflate.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from wgates_plugin import WGates, count_macs
from wgates_plugin.app.models import model_from_spec
from wgates_plugin.app.onnx_runtime import deployment_report
from wgates_plugin.efficiency.timing import Timing, device_name


def run_one(spec: str, target: float, size: int, batch: int, timing: Timing, round_to: int = 1) -> dict:
    torch.manual_seed(0)
    model, _ = model_from_spec(spec, 10, (1, 3, size, size))
    model.eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    wg = WGates(model, x[:2], target=target, round_to=round_to)
    wg.freeze()
    small = wg.export().eval()
    wg.remove()
    with tempfile.TemporaryDirectory() as tmp:
        report = deployment_report(model, small, x, tmp, timing)
    return {"model": spec, "target": target, "round_to": round_to, "size": size, "batch": batch,
            "flops_ratio": count_macs(small, x[:1]) / count_macs(model, x[:1]), **report}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.deployment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "timm:efficientnet_b0"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16],
                    help="kept channel counts a multiple of each (W-Gates round_to)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/deployment/runs.jsonl"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    timing = Timing(warmup=5, repeats=args.repeats, threads=1, clock=args.clock)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": device_name("cpu"), "python": platform.python_version()}
    print("| model | target | round_to | FLOPs kept | PyTorch ms (unpruned → pruned) | speedup | onnxruntime ms "
          "| speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.models:
        for target in args.targets:
            for round_to in args.round_to:
                _row(run_one(spec, target, args.size, args.batch, timing, round_to) | {"environment": env}, args.out)


def _row(r: dict, out: Path) -> None:
    """Append one result to ``out`` and print its table row."""
    with out.open("a") as f:
        f.write(json.dumps(r) + "\n")
    pt, ort = r["pytorch"], r["onnxruntime"]
    print(f"| {r['model']} | {r['target']:g} | {r['round_to']} | {r['flops_ratio']:.3f} | "
          f"{pt['unpruned']['ms']:.2f} → {pt['pruned']['ms']:.2f} | {pt['speedup']:.2f}x | "
          f"{ort['unpruned']['ms']:.2f} → {ort['pruned']['ms']:.2f} | {ort['speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
