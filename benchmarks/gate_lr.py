"""Gate learning-rate sweep behind the "Gate learning rate" table of benchmarks/RESULTS.md.

    OMP_NUM_THREADS=1 python -m benchmarks.gate_lr --lrs 0,3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2

Baseline: resnet18 (10 classes), digits 32x32, fit() 300 steps at lr 0.05, seed 0 (98.2 % top-1).
Each run: prune_and_finetune(target=0.5, Recipe(gate_steps=100, finetune_steps=100, gate_lr=lr)),
with the run's seed setting the data order and torch's RNG. One JSON line per run.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torchvision

from wgates_plugin.app.data import load_digits, loaders
from wgates_plugin.app.training import Recipe, fit, prune_and_finetune


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lrs", default="0,3e-4,1e-3,3e-3,1e-2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--baseline-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--target", type=float, default=0.5)
    a = p.parse_args()
    train, test = load_digits(32)
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)
    fit(base, loaders(train, test, batch_size=64, seed=0)[0], a.baseline_steps, lr=0.05, progress=False)
    for seed in (int(s) for s in a.seeds.split(",")):
        for lr in (float(x) for x in a.lrs.split(",")):
            tr, te = loaders(train, test, batch_size=64, seed=seed)
            torch.manual_seed(seed)
            r = prune_and_finetune(copy.deepcopy(base), torch.zeros(1, 3, 32, 32), tr, te, target=a.target,
                                   recipe=Recipe(gate_steps=a.steps, finetune_steps=a.finetune_steps, gate_lr=lr,
                                                 distill=0.0),  # as recorded: before distillation was the default
                                   progress=False).report
            print(json.dumps({"seed": seed, "gate_lr": lr, "top1": r["top1"], "flops_ratio": r["flops_ratio"],
                              "live_flops": [t["flops_ratio"] for t in r["trace"]]}), flush=True)


if __name__ == "__main__":
    main()
