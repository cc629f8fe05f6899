"""How large torch-pruning's group searches grow, model by model: the evidence behind the default
:attr:`~wgates_plugin.groups.TraceLimits.group_indices`.

Every group search records its coupled layers with their channel indices. This benchmark traces each
model with the default limits and reports, for the largest search that ended, how many indices it
recorded as a multiple of the model's layer width (:func:`~wgates_plugin.groups.layer_width`), and
which searches were stopped by a limit. A search that ends stays a small multiple of the width; the
endless one in YOLO11's C2PSA doubles its indices on every turn until the limit stops it.

Run ``python -m benchmarks.group_search --help``; a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch_pruning.dependency.group import Group

from wgates_plugin.groups import LIMITS, layer_width, trace_groups

TORCHVISION = ("resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "googlenet",
               "inception_v3", "vgg11_bn", "convnext_tiny", "squeezenet1_0", "mnasnet1_0", "resnext50_32x4d")
TIMM = ("resnet18", "resnext26ts", "efficientnet_b0", "mobilenetv3_small_100", "mobilenetv4_conv_small", "regnetx_002",
        "convnext_atto", "cspresnet50", "darknet17", "dla34", "densenet121", "dpn48b", "ese_vovnet19b_dw",
        "selecsls42b", "tinynet_e", "ghostnet_100", "hrnet_w18_small", "repvgg_a0", "res2net50_14w_8s", "mixnet_s")
YOLO = ("yolov8n.yaml", "yolo11n.yaml")


def _builders(sources: list[str]) -> list[tuple[str, Callable[[], tuple[nn.Module, torch.Tensor]]]]:
    found: list[tuple[str, Callable[[], tuple[nn.Module, torch.Tensor]]]] = []
    if "torchvision" in sources:
        for name in TORCHVISION:
            options = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
            side = 299 if name == "inception_v3" else 224
            found.append((f"torchvision {name}", lambda n=name, o=options, s=side: (
                getattr(torchvision.models, n)(**o), torch.randn(1, 3, s, s))))
    if "timm" in sources:
        import timm

        for name in TIMM:
            found.append((f"timm {name}", lambda n=name: (
                timm.create_model(n, pretrained=False, num_classes=10), torch.randn(1, 3, 64, 64))))
    if "yolo" in sources:
        from ultralytics.nn.tasks import DetectionModel

        logging.getLogger("ultralytics").setLevel(logging.WARNING)  # its notes would land in the table

        for name in YOLO:
            found.append((f"ultralytics {name}", lambda n=name: (
                DetectionModel(n, nc=5, verbose=False), torch.randn(1, 3, 128, 128))))
    return found


class _SearchSizes:
    """Count the channel indices every ``get_pruning_group`` call records (while installed)."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, bool]] = []  # (indices recorded, whether the search ended)
        self.current = 0

    def __enter__(self) -> _SearchSizes:
        self.add_dep, self.search = Group.add_dep, tp.DependencyGraph.get_pruning_group
        sizes = self

        def add_dep(group: Group, dep: object, idxs: list) -> None:
            sizes.current += len(idxs)
            sizes.add_dep(group, dep, idxs)

        def search(graph: tp.DependencyGraph, *args: object, **kwargs: object) -> object:
            sizes.current = 0
            try:
                found = sizes.search(graph, *args, **kwargs)
            except BaseException:
                sizes.sizes.append((sizes.current, False))
                raise
            sizes.sizes.append((sizes.current, True))
            return found

        Group.add_dep, tp.DependencyGraph.get_pruning_group = add_dep, search
        return self

    def __exit__(self, *exc: object) -> None:
        Group.add_dep, tp.DependencyGraph.get_pruning_group = self.add_dep, self.search


def measure(name: str, build: Callable[[], tuple[nn.Module, torch.Tensor]]) -> dict:
    torch.manual_seed(0)
    model, x = build()
    model.eval()
    width = max(layer_width(model), 1)
    start = time.perf_counter()
    with _SearchSizes() as sizes:
        traced = trace_groups(model, x)
    limits = ("kept growing", "did not finish")
    stopped = [g.name for g in traced.groups if g.reason and any(text in g.reason for text in limits)]
    ended = [size for size, end in sizes.sizes if end]
    return {"model": name, "width": width, "groups": len(traced.groups), "largest": max(ended, default=0),
            "ratio": max(ended, default=0) / width, "stopped": stopped, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["torchvision", "timm", "yolo"],
                        choices=["torchvision", "timm", "yolo"], help="model families to trace")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"Default limit: group_indices = {LIMITS.group_indices:g} x the layer width.\n")
    print("| model | layer width | groups | largest search that ended (indices) | / width "
          "| stopped by a limit | trace s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, build in _builders(args.sources):
        r = measure(name, build)
        print(f"| {r['model']} | {r['width']} | {r['groups']} | {r['largest']} | {r['ratio']:.2f} | "
              f"{', '.join(r['stopped']) or '-'} | {r['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
