"""``wgates demo``: prune a ResNet-18 to half its FLOPs on the bundled handwritten digits, end to end.

No download: the data are scikit-learn's 1 797 real 8x8 digits upsampled to 32x32, and since no
pretrained weights are available offline a short baseline is trained first. Then W-Gates learns which
filters to drop under a 50 % FLOPs budget, the closed channels are removed, the smaller network is
fine-tuned, and a before/after table is printed. The pruned model (``model.safetensors`` +
``pruning.json``) and ``report.json`` are written to ``--out``.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import prune
from .prune import add_run_arguments

# The demo's schedule (steps of batch 64 over the 1 000 training digits, ~15 steps per epoch).
FULL = {"train_steps": 150, "steps": 100, "finetune_steps": 100, "bn_batches": 20}
QUICK = {"train_steps": 4, "steps": 4, "finetune_steps": 3, "bn_batches": 2}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="prune resnet18 to 50%% FLOPs on the bundled digits",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, default_out="wgates-demo")
    parser.add_argument("--quick", action="store_true", help="a few steps of each phase (a smoke run)")
    parser.set_defaults(func=run)


def demo_args(args: argparse.Namespace) -> argparse.Namespace:
    """The full ``wgates prune`` arguments the demo runs with: prune's own defaults (so a new prune option
    reaches the demo with its default), the demo's model and schedule, and the run options given."""

    parser = argparse.ArgumentParser(prog="wgates prune")
    prune.add_arguments(parser)
    full = parser.parse_args(["--model", "resnet18", "--out", str(args.out)])
    run_options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "quick")}  # --out, --seed, ...
    vars(full).update(data="digits", size=32, flops_target=0.5, **run_options, **(QUICK if args.quick else FULL))
    return full


def run(args: argparse.Namespace) -> int:
    """Entry point of ``wgates demo``."""
    full = demo_args(args)
    print(f"W-Gates demo: resnet18 (10 classes) on the bundled digits at 32x32, FLOPs budget 50 %\n"
          f"baseline {full.train_steps} steps, gate training {full.steps} steps, fine-tuning "
          f"{full.finetune_steps} steps (batch 64)", flush=True)
    return prune.run(full, "the pruned model (model.safetensors, pruning.json), report.json, summary.md and "
                                 "kept_channels.png")
