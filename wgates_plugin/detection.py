"""W-Gates on torchvision detectors: gates on the backbone (and the FPN where the graph couples it),
FLOPs counted over the whole network, export checked on the detector's own eval outputs.

A detector's forward takes a list of images of any size, resizes them (``detector.transform``), runs
the backbone, then proposal, ROI and post-processing code whose channel counts are fixed by the
anchors and the classes. torch-pruning traces the backbone (its input is the transformed batch); the
heads are not gated, and the FPN output convolutions (whose channels the heads read) are reported as
producing the backbone's output (:func:`~wgates_plugin.groups.why_not`). The FLOPs model is built from
the *whole* detector's layers, so a target is a fraction of the detector's FLOPs, heads included.

Segmentation models (``deeplabv3_*``, ``fcn_*``, ``lraspp_*``) need none of this: they take a batch
tensor and return a dict, and :class:`~wgates_plugin.WGates` prunes them directly.

Example:
    >>> import torch, torchvision
    >>> det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
    ...     weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=96).eval()
    >>> images = [torch.rand(3, 96, 96)]
    >>> wg = detector_wgates(det, images, target=0.8)
    >>> wg.freeze()
    >>> small = export_detector(det, wg, images)   # raises unless boxes, scores and labels are equal
    >>> round(wg.cost_ratio(), 2), round(wg.flops_ratio(), 2)   # the detector's FLOPs; the backbone's
    (0.8, 0.7)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from .efficiency.flops import FlopsModel, record_layer_shapes
from .errors import ConfigError, ConfigTypeError
from .export import verify_outputs
from .groups import ChannelGroup
from .pruner import WGates
from .utils import kept_modes

__all__ = ["backbone_batch", "detector_wgates", "export_detector"]


def backbone_batch(detector: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
    """The batch the detector's backbone sees for ``images``: ``detector.transform``'s output tensors."""
    transform = getattr(detector, "transform", None)
    if transform is None:
        raise ConfigTypeError(f"{type(detector).__name__} has no 'transform': detector_wgates takes torchvision "
                              "detectors (GeneralizedRCNN, RetinaNet, FCOS, SSD); prune other models with WGates")
    if not isinstance(images, (list, tuple)) or not images or not all(torch.is_tensor(i) for i in images):
        raise ConfigTypeError(f"images must be a non-empty list of (3, H, W) tensors, as the detector takes them; "
                              f"got {type(images).__name__}")
    with kept_modes(detector), torch.no_grad():
        return transform.eval()(list(images))[0].tensors


def _prefixed(group: ChannelGroup, prefix: str) -> ChannelGroup:
    """The group with its layers named as in the detector (``backbone.`` + name), the group name kept."""
    members = [dataclasses.replace(m, name=prefix + m.name) for m in group.members]
    return dataclasses.replace(group, members=members)


def detector_wgates(detector: nn.Module, images: list[torch.Tensor], target: float, backbone: str = "backbone",
                    **options: Any) -> WGates:
    """:class:`~wgates_plugin.WGates` on ``detector.<backbone>`` with the whole detector's FLOPs as the cost.

    Args:
        detector: a torchvision detector (in eval mode for tracing; its mode is restored).
        images: a list of ``(3, H, W)`` images, as the detector takes them.
        target: keep this fraction of the *detector's* FLOPs (heads included, which are not pruned).
        backbone: the attribute holding the backbone (with its FPN).
        **options: :class:`~wgates_plugin.WGates` options.

    Raises:
        ConfigError: no such backbone attribute, or a target below what pruning the backbone can reach.
    """
    batch = backbone_batch(detector, images)
    inner = getattr(detector, backbone, None)
    if not isinstance(inner, nn.Module):
        raise ConfigError(f"{type(detector).__name__} has no sub-module {backbone!r}: pass backbone=<its attribute>")
    with kept_modes(detector):
        shapes = record_layer_shapes(detector.eval(), (list(images),))  # one argument: the list

    def whole_network_flops(groups: list[ChannelGroup]) -> FlopsModel:
        return FlopsModel(shapes, [_prefixed(g, backbone + ".") for g in groups])

    return WGates(inner, batch, target=target, efficiency=whole_network_flops, **options)


def export_detector(detector: nn.Module, wg: WGates, images: list[torch.Tensor], backbone: str = "backbone",
                    rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
    """A smaller copy of ``detector`` with the exported backbone, checked on the detector's eval outputs
    (boxes, scores, labels and masks of ``images`` equal the gated detector's).

    Raises:
        ExportError: the outputs differ.
    """
    small_backbone = wg.export()
    inner = getattr(detector, backbone)
    setattr(detector, backbone, nn.Identity())  # copy everything but the gated backbone (its hooks stay)
    try:
        small = copy.deepcopy(detector)
    finally:
        setattr(detector, backbone, inner)
    setattr(small, backbone, small_backbone)
    verify_outputs(detector, small, (list(images),), rtol, atol)
    return small
