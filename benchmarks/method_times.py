"""Wall time and knob of every baseline method at FLOPs budgets: ``python -m benchmarks.method_times``.

A baseline is trained briefly on the bundled digits (SGD, cosine), then every method of
:data:`benchmarks.methods.METHODS` prunes a copy of it to each budget with the same step budget; the
table gives the wall time of the pruning call (its own training, ratio search and physical removal),
the knob value that landed (per-layer or global ratio), the achieved FLOPs ratio, the FLOPs
measurements the search spent, the channels taken off the path and the training steps used.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from wgates_plugin.app.data import load_digits
from wgates_plugin.app.training import evaluate, fit

from .methods import METHODS, PruneContext, prunable_layers
from .models import MODELS, build

HEADER = ("| budget | method | wall s | ranking | ratio (knob) | achieved FLOPs | search iterations | off-path "
          "| steps |\n|---|---|---|---|---|---|---|---|---|")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.method_times", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20", choices=MODELS)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5], help="FLOPs to keep (fractions)")
    ap.add_argument("--steps", type=int, default=31, help="training steps each method may spend (31 = 1 epoch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--baseline-epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    return ap


def _baseline(args: argparse.Namespace) -> tuple[nn.Module, DataLoader, float]:
    """The model trained on the digits' 1 000-image train split; its loader and test top-1."""
    torch.manual_seed(0)
    train, test = load_digits(32, 1000, seed=0)
    loader = DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    base = build(args.model)
    fit(base, loader, args.baseline_epochs * len(loader), progress=False)
    return base, loader, evaluate(base, DataLoader(test, batch_size=256))


def _row(name: str, ctx: PruneContext) -> str:
    start = time.perf_counter()
    out = METHODS[name](ctx)
    seconds = time.perf_counter() - start
    i: dict[str, Any] = out.info
    return (f"| {ctx.budget} | {name} | {seconds:.2f} | {i['ranking']} | {i['ratio']:.4f} | {i['achieved']:.4f} | "
            f"{i['search_iterations']} | {i['off_path_channels']} | {out.steps_used} |")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import nni.compression.pruning  # noqa: F401  (a one-time import of about a second, not charged to l1)

    torch.set_num_threads(args.threads)
    base, loader, top1 = _baseline(args)
    x = torch.zeros(1, 3, 32, 32)
    print(f"{args.model}: baseline top-1 {100 * top1:.1f} %, {args.steps} steps of batch {args.batch}, "
          f"{args.threads} thread(s)\n\n{HEADER}")
    prunable = prunable_layers(base, x)
    for budget in args.budgets:
        for name in args.methods:
            print(_row(name, PruneContext(copy.deepcopy(base).train(), x, loader, budget, 0, args.steps, prunable)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
