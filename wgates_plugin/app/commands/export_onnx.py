"""``wgates export-onnx``: a pruned model folder to ONNX, checked in onnxruntime, timed in both runtimes.

Example:
    wgates export-onnx pruned/ --batch 8 --threads 1
    wgates export-onnx pruned-mine/ --builder mynets:build

Writes ``<folder>/model.onnx`` and ``<folder>/deployment.json`` (onnxruntime's largest output
difference, and the unpruned vs pruned latency in PyTorch and in onnxruntime) and prints the table.
The unpruned model is the saved architecture rebuilt with fresh weights (latency does not depend on
the weights' values).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ...efficiency.timing import Timing
from ...errors import ConfigError
from ...files import write_text
from ...utils import check_number
from ..models import build_model, load_entry_point
from ..onnx_runtime import deployment_report, format_deployment, require_onnx
from ..serialization import load_pruned, read_recipe

DEPLOYMENT_FILE = "deployment.json"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="export a pruned model to ONNX, check it in onnxruntime and time both runtimes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder written by 'wgates prune'")
    parser.add_argument("--builder", default=None, metavar="MODULE:FUNCTION",
                        help="the builder function of a model pruned with --model module:function")
    add_deployment_arguments(parser)
    parser.add_argument("--force", action="store_true", help="overwrite model.onnx / deployment.json")
    parser.set_defaults(func=run)


def add_deployment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx-batch", type=int, default=8, help="batch size of the check and the timing (default 8)")
    parser.add_argument("--onnx-threads", type=int, default=1, help="threads of both runtimes (default 1)")
    parser.add_argument("--onnx-repeats", type=int, default=30, help="timed forwards, median reported (default 30)")
    parser.add_argument("--onnx-clock", choices=("wall", "cpu"), default="wall",
                        help="'wall' (latency) or 'cpu' (the process's CPU time: on a busy machine, the latency an "
                             "idle core would give; needs --onnx-threads 1)")


def timing_of(args: argparse.Namespace) -> tuple[Timing, int]:
    """The :class:`Timing` and batch size of the deployment measurement, validated."""
    for name in ("onnx_batch", "onnx_threads", "onnx_repeats"):
        check_number(f"--{name.replace('_', '-')}", getattr(args, name), ">= 1", integer=True, what="",
                     type_error=ConfigError)
    if args.onnx_clock == "cpu" and args.onnx_threads != 1:
        raise ConfigError(f"--onnx-clock cpu times one thread's work; got --onnx-threads {args.onnx_threads}")
    timing = Timing(warmup=5, repeats=args.onnx_repeats, threads=args.onnx_threads, clock=args.onnx_clock)
    return timing, args.onnx_batch


def deploy(folder: Path, pruned: torch.nn.Module, unpruned: torch.nn.Module, input_shape: tuple[int, ...],
           args: argparse.Namespace) -> dict[str, Any]:
    """Export, check and time (see :func:`~wgates_plugin.app.onnx_runtime.deployment_report`); write
    ``deployment.json``; return the report."""
    timing, batch = timing_of(args)
    x = torch.randn((batch, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    report = deployment_report(unpruned.eval(), pruned.eval(), x, folder, timing)
    write_text(folder / DEPLOYMENT_FILE, json.dumps(report, indent=1))
    return report


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    require_onnx()
    timing_of(args)  # bad numbers fail before anything is loaded
    held = [n for n in ("model.onnx", DEPLOYMENT_FILE) if (folder / n).exists()]
    if held and not args.force:
        raise ConfigError(f"'{folder}' already holds {', '.join(held)}; pass --force to overwrite")
    builder = load_entry_point(args.builder) if args.builder else None
    arch, _ = read_recipe(folder)
    pruned = load_pruned(folder, builder=builder)
    torch.manual_seed(0)
    unpruned = build_model(arch, builder)
    report = deploy(folder, pruned, unpruned, arch.input_shape, args)
    print(format_deployment(report))
    print(f"saved model.onnx and {DEPLOYMENT_FILE} to {folder}")
    return 0
