"""W-Gates on a segmentation network trained on real images: a short demonstration.

Data, built offline from Fashion-MNIST (real photographs of garments with their class labels): every
scene is a ``size x size`` canvas holding ``items`` garments at random places (later ones on top); a
pixel's class is the garment's class + 1 where the garment's intensity exceeds ``threshold``, else 0
(background) — 11 classes. Training scenes come from the training images, test scenes from the
official test images only.

Model: torchvision's ``lraspp_mobilenet_v3_large`` (``weights=None, weights_backbone=None``, 11 classes),
trained from scratch. Three networks, all with the same total training steps after the baseline:

- **baseline, trained on**: the unpruned network trained ``gate_steps + finetune_steps`` more steps;
- **W-Gates**: ``WGates(model, x, target=flops_target)`` trained jointly for ``gate_steps`` (task loss +
  efficiency loss, Adam on the gates), frozen, exported (the exported model's outputs are checked equal
  to the gated model's), BN re-calibrated, fine-tuned ``finetune_steps``;
- **uniform**: every gated group thinned by one factor to the same FLOPs, fine-tuned as long as W-Gates
  trains in all.

Reported: mean IoU (over the classes present in the test scenes' truth or prediction) and pixel
accuracy on the test scenes, FLOPs, parameters and
PyTorch CPU latency (1 thread, CPU clock). Run ``python -m benchmarks.segmentation --help``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from wgates_plugin import WGates, count_macs
from wgates_plugin.app.data import load_fashion_mnist
from wgates_plugin.app.training import recalibrate_bn, train_steps
from wgates_plugin.efficiency import Timing, device_name, measure_ms

from .latency_mode import _uniform

CLASSES = 11  # background + the 10 garment classes


@dataclass(frozen=True)
class Setup:
    """Every knob of the run (defaults: the run recorded in RESULTS.md)."""

    size: int = 64
    items: int = 2
    threshold: float = 0.3
    train_scenes: int = 8000
    test_scenes: int = 1000
    batch: int = 16
    baseline_steps: int = 1500
    gate_steps: int = 300
    finetune_steps: int = 300
    lr: float = 0.05
    gate_lr: float = 1e-3
    flops_target: float = 0.5
    bn_batches: int = 20
    seed: int = 0
    threads: int = 1
    data_root: str | None = None


QUICK = Setup(size=48, train_scenes=256, test_scenes=64, baseline_steps=20, gate_steps=6, finetune_steps=6,
              bn_batches=2)


def scenes(images: torch.Tensor, labels: torch.Tensor, count: int, setup: Setup,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes ``(N, 3, S, S)`` in [0, 1] and their masks ``(N, S, S)`` (0 = background)."""
    g = torch.Generator().manual_seed(seed)
    s, side = setup.size, images.shape[-1]
    x = torch.zeros(count, 1, s, s)
    y = torch.zeros(count, s, s, dtype=torch.long)
    for n in range(count):
        for i in torch.randint(0, len(images), (setup.items,), generator=g).tolist():
            top, left = (int(v) for v in torch.randint(0, s - side + 1, (2,), generator=g))
            item = images[i, 0]
            on = item > setup.threshold
            x[n, 0, top:top + side, left:left + side][on] = item[on]
            y[n, top:top + side, left:left + side][on] = int(labels[i]) + 1
    return x.expand(-1, 3, -1, -1).contiguous(), y


def _raw(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images back in [0, 1] (the loader normalizes them) and labels of a Fashion-MNIST split."""
    images, labels = dataset.tensors
    images = images[:, :1]
    low, high = images.amin(), images.amax()
    return (images - low) / (high - low), labels


def make_scenes(setup: Setup) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    train, _, test = load_fashion_mnist(setup.data_root, size=28, val_size=0)
    return (scenes(*_raw(train), setup.train_scenes, setup, setup.seed),
            scenes(*_raw(test), setup.test_scenes, setup, setup.seed + 1))


def build(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=CLASSES)


def batches(data: tuple[torch.Tensor, torch.Tensor], batch: int, seed: int):
    x, y = data
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            yield x[idx], y[idx]


def train(model: nn.Module, stream, steps: int, lr: float, wg: WGates | None = None, gate_lr: float = 1e-3) -> None:
    """SGD (momentum 0.9, cosine) on pixel cross-entropy; with ``wg``, plus its efficiency loss and Adam
    on the gates (:func:`~wgates_plugin.app.training.train_steps`)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    optimizers = [opt] if wg is None else [opt, torch.optim.Adam(wg.parameters(), lr=gate_lr)]
    train_steps(model, stream, optimizers, steps, extra_loss=wg.efficiency_loss if wg is not None else None,
                loss_fn=lambda out, y: nn.functional.cross_entropy(out["out"], y),
                scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)),
                callback=(lambda _step, _stats: wg.update_multiplier()) if wg is not None else None, progress=False)


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch: int = 50) -> dict[str, float]:
    """Mean IoU over the classes present (in prediction or truth) and pixel accuracy."""
    model.eval()
    x, y = data
    confusion = torch.zeros(CLASSES, CLASSES, dtype=torch.long)
    for i in range(0, len(x), batch):
        pred = model(x[i:i + batch])["out"].argmax(1)
        confusion += torch.bincount(y[i:i + batch].flatten() * CLASSES + pred.flatten(),
                                    minlength=CLASSES * CLASSES).view(CLASSES, CLASSES)
    inter = confusion.diag().float()
    union = confusion.sum(0).float() + confusion.sum(1).float() - inter
    present = union > 0
    return {"miou": float((inter[present] / union[present]).mean()),
            "pixel_acc": float(inter.sum() / confusion.sum())}


def _describe(model: nn.Module, x: torch.Tensor, data: Any, base_macs: int, seconds: float) -> dict[str, Any]:
    macs = count_macs(model, x)
    xb = torch.randn(8, *x.shape[1:])
    return {**evaluate(model, data), "flops_ratio": macs / base_macs, "macs": macs,
            "params": sum(p.numel() for p in model.parameters()),
            "latency_ms": measure_ms(copy.deepcopy(model), xb, Timing(warmup=3, repeats=15, threads=1, clock="cpu")),
            "train_seconds": round(seconds, 1)}


def run(setup: Setup) -> dict[str, Any]:
    torch.set_num_threads(setup.threads)
    train_data, test_data = make_scenes(setup)
    x = train_data[0][:2]
    stream = batches(train_data, setup.batch, setup.seed)
    start = time.perf_counter()
    base = build(setup.seed)
    train(base, stream, setup.baseline_steps, setup.lr)
    base_seconds = time.perf_counter() - start
    base_macs = count_macs(base.eval(), x)
    out: dict[str, Any] = {"setup": asdict(setup), "device": device_name("cpu"), "torch": torch.__version__,
                           "baseline": _describe(base, x, test_data, base_macs, base_seconds)}
    more = setup.gate_steps + setup.finetune_steps

    start = time.perf_counter()
    longer = copy.deepcopy(base)
    train(longer, batches(train_data, setup.batch, setup.seed + 1), more, setup.lr / 5)
    out["baseline, trained on"] = _describe(longer, x, test_data, base_macs, time.perf_counter() - start)

    start = time.perf_counter()
    gated = copy.deepcopy(base)
    wg = WGates(gated, x, target=setup.flops_target)
    train(gated, batches(train_data, setup.batch, setup.seed + 1), setup.gate_steps, setup.lr / 5, wg, setup.gate_lr)
    wg.freeze()
    pruned = wg.export()  # raises unless the exported outputs equal the gated model's
    kept = {k: list(v) for k, v in wg.kept().items()}
    wg.remove()
    stream = batches(train_data, setup.batch, setup.seed + 2)
    recalibrate_bn(pruned, [next(stream) for _ in range(setup.bn_batches)], setup.bn_batches)
    out["W-Gates, after pruning"] = evaluate(pruned, test_data)
    train(pruned, stream, setup.finetune_steps, setup.lr / 5)
    out["W-Gates"] = _describe(pruned, x, test_data, base_macs, time.perf_counter() - start) | {"kept": kept}

    start = time.perf_counter()
    uniform = _uniform(base.eval(), x, setup.flops_target)[0]  # the base's weights of the kept channels
    train(uniform, batches(train_data, setup.batch, setup.seed + 1), more, setup.lr / 5)
    out["uniform"] = _describe(uniform, x, test_data, base_macs, time.perf_counter() - start)
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"Device `{result['device']}`, torch {result['torch']}; {s['size']}×{s['size']} scenes of {s['items']} "
             f"Fashion-MNIST garments, {s['train_scenes']} training / {s['test_scenes']} test scenes, batch "
             f"{s['batch']}; baseline {s['baseline_steps']} steps, then {s['gate_steps'] + s['finetune_steps']} more "
             "for every row below it.", "",
             "| network | mIoU % | pixel acc. % | FLOPs ratio | params (M) | latency ms (batch 8, 1 thread) |",
             "|---|---|---|---|---|---|"]
    for name in ("baseline", "baseline, trained on", "W-Gates", "uniform"):
        r = result[name]
        lines.append(f"| {name} | {100 * r['miou']:.2f} | {100 * r['pixel_acc']:.2f} | {r['flops_ratio']:.3f} | "
                     f"{r['params'] / 1e6:.3f} | {r['latency_ms']:.2f} |")
    after = result["W-Gates, after pruning"]
    lines += ["", f"W-Gates right after pruning and BN re-calibration: mIoU {100 * after['miou']:.2f} %, "
                  "pixel accuracy "
                  f"{100 * after['pixel_acc']:.2f} %."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized preset")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--data-root", help="Fashion-MNIST's IDX folder (default: Debian's package)")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    if args.data_root:
        setup = replace(setup, data_root=args.data_root)
    result = run(setup)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
