"""One NNI trial: train a small CNN on the bundled digits, prune it with WGatesPruner, fine-tune it.

The tuner picks ``alpha`` (the efficiency term's initial weight), ``budget`` (the fraction of the FLOPs
to keep) and ``gate_lr`` (the gates' Adam learning rate). The trial reports the test accuracy as
intermediate results (after gate training, after removal and BatchNorm re-calibration, during
fine-tuning) and, as the final result, ``default`` = fine-tuned accuracy plus the achieved FLOPs ratio.

Run it alone (``python trial.py``) to see one trial with the default parameters, or through the
experiment: ``nnictl create --config config.yml``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import nni
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from torch import nn

from wgates_plugin import WGatesPruner, count_macs, speedup
from wgates_plugin.app.data import load_digits, loaders
from wgates_plugin.app.training import cycle, evaluate, fit, recalibrate_bn

DEFAULTS = {"alpha": 1.0, "budget": 0.5, "gate_lr": 1e-3}


def small_cnn(width: int = 32, classes: int = 10) -> nn.Sequential:
    """Three conv-BN-ReLU stages and a linear head: small enough for a CPU trial in seconds."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c_out in enumerate((width, 2 * width, 2 * width)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def make_evaluator(model: nn.Module, train_loader: Any, weight_lr: float, example: torch.Tensor) -> TorchEvaluator:
    """NNI's evaluator: the training loop W-Gates trains its gates in (SGD on the weights)."""
    batches: Iterator = cycle(train_loader)

    def training_step(batch: Any, model: nn.Module) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def training_func(model: nn.Module, optimizer: Any, step_fn: Any, lr_schedulers: Any = None,
                      max_steps: int | None = None, max_epochs: int | None = None) -> None:
        model.train()
        for _ in range(max_steps or len(train_loader)):
            optimizer.zero_grad()
            step_fn(next(batches), model).backward()
            optimizer.step()

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=weight_lr, momentum=0.9)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=example)


def run(args: argparse.Namespace, params: dict[str, float]) -> dict[str, float]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_loader, test_loader = loaders(*load_digits(size=args.size, seed=args.seed), batch_size=args.batch_size)
    example = next(iter(train_loader))[0][:2]
    model = small_cnn(args.width)
    fit(model, train_loader, args.baseline_steps, lr=0.05, progress=False)
    baseline = evaluate(model, test_loader)
    full_macs = count_macs(model, example)

    evaluator = make_evaluator(model, train_loader, 0.01, example)
    pruner = WGatesPruner(model, [{"op_types": ["Conv2d"]}], evaluator=evaluator, training_steps=args.gate_steps,
                          target=params["budget"], alpha=params["alpha"], gate_lr=params["gate_lr"])
    wrapped, masks = pruner.compress()
    nni.report_intermediate_result(evaluate(wrapped, test_loader))  # gated network
    pruner.unwrap_model()
    small = speedup(model, masks, example)
    recalibrate_bn(small, train_loader, batches=10)
    nni.report_intermediate_result(evaluate(small, test_loader))  # physically pruned, BN re-calibrated
    for _ in range(args.finetune_rounds):
        fit(small, train_loader, args.finetune_steps, lr=0.01, progress=False)
        nni.report_intermediate_result(evaluate(small, test_loader))
    result = {"default": evaluate(small, test_loader), "flops_ratio": count_macs(small, example) / full_macs,
              "baseline": baseline, **params}
    nni.report_final_result(result)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="image side (digits are 8x8, upsampled)")
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-steps", type=int, default=300, help="SGD steps training the baseline")
    parser.add_argument("--gate-steps", type=int, default=100, help="steps of gate training (WGatesPruner)")
    parser.add_argument("--finetune-steps", type=int, default=50, help="fine-tuning steps per reported round")
    parser.add_argument("--finetune-rounds", type=int, default=4, help="fine-tuning rounds (one report each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    params = {**DEFAULTS, **(nni.get_next_parameter() or {})}
    print(json.dumps(run(args, params)))


if __name__ == "__main__":
    main()
