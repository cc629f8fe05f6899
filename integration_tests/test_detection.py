"""torchvision detection and segmentation models end to end: gates on the backbone (detectors) or the
whole network (segmentation), the target a fraction of the whole network's FLOPs, export exact on the
models' own eval outputs (boxes, scores, labels, masks; segmentation logits) and smaller.

Random weights; BatchNorms randomized and calibrated (``tests.helpers.calibrate``) so outputs depend
on the input; score thresholds at 0 so every image keeps detections (an empty output would make the
equality vacuous)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import calibrate
from wgates_plugin import ConfigTypeError, WGates, count_macs
from wgates_plugin.detection import backbone_batch, detector_wgates, export_detector

pytestmark = [pytest.mark.zoo, pytest.mark.usefixtures("one_thread")]

SIDE = 128
# name -> (constructor arguments, attribute holding the score threshold, FLOPs target of the whole network)
DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_fpn": ({"min_size": SIDE, "max_size": SIDE, "box_score_thresh": 0.0,
                                           "box_detections_per_img": 20}, 0.85),
    "retinanet_resnet50_fpn": ({"min_size": SIDE, "max_size": SIDE, "score_thresh": 0.0,
                                "detections_per_img": 20}, 0.7),
    "fcos_resnet50_fpn": ({"min_size": SIDE, "max_size": SIDE, "score_thresh": 0.0, "detections_per_img": 20}, 0.7),
    "maskrcnn_resnet50_fpn": ({"min_size": SIDE, "max_size": SIDE, "box_score_thresh": 0.0,
                               "box_detections_per_img": 10}, 0.8),
    "ssdlite320_mobilenet_v3_large": ({"score_thresh": 0.0, "detections_per_img": 20}, 0.85),
}
SEGMENTERS = {"deeplabv3_mobilenet_v3_large": 0.5, "fcn_resnet50": 0.5, "lraspp_mobilenet_v3_large": 0.5}
HEAVY = {"maskrcnn_resnet50_fpn", "fcn_resnet50"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _train_gates(wg: WGates, loss_of, steps: int = 2) -> None:
    opt = torch.optim.Adam(wg.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = loss_of() + wg.efficiency_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", _params(list(DETECTORS)))
def test_detector_prunes_its_backbone_and_exports_exactly(name):
    kwargs, target = DETECTORS[name]
    torch.manual_seed(0)
    det = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5, **kwargs)
    side = 320 if name.startswith("ssdlite") else SIDE
    calibrate(det.backbone, side)
    det.eval()
    images = [torch.rand(3, SIDE, SIDE), torch.rand(3, SIDE + 16, SIDE - 16)]
    full_params = sum(p.numel() for p in det.parameters())
    wg = detector_wgates(det, images, target=target)
    batch = backbone_batch(det, images)
    _train_gates(wg, lambda: sum(v.square().mean() for v in det.backbone(batch).values()))
    wg.freeze()
    assert wg.cost_ratio() <= target * (1 + wg.config.tolerance) and wg.cost_ratio() == pytest.approx(target, abs=0.02)
    small = export_detector(det, wg, images)  # raises unless every output equals the gated detector's
    with torch.no_grad():
        out, ref = small(images), det(images)
    assert all(len(o["boxes"]) > 0 for o in ref)  # non-vacuous: every image has detections
    for o, r in zip(out, ref):
        assert o.keys() == r.keys() and torch.equal(o["labels"], r["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"], rtol=1e-4, atol=1e-3)
    assert sum(p.numel() for p in small.parameters()) < full_params
    full, pruned = count_macs(det, (images,)), count_macs(small, (images,))
    assert pruned / full == pytest.approx(wg.cost_ratio(), rel=1e-4)  # the whole detector, heads included
    fpn_out = [g for g in wg.traced.groups if g.reason and "produces the model's output" in g.reason]
    assert fpn_out, "the backbone's output layers (read by the heads) must be reported, not pruned"


@pytest.mark.parametrize("name", _params(list(SEGMENTERS)))
def test_segmentation_model_prunes_and_exports_exactly(name):
    torch.manual_seed(0)
    model = calibrate(torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5,
                                                   aux_loss=False), 96).eval()
    x = torch.randn(2, 3, 96, 96)
    target = SEGMENTERS[name]
    wg = WGates(model, x, target=target)
    _train_gates(wg, lambda: model(x)["out"].square().mean())
    wg.freeze()
    small = wg.export()
    fresh = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(fresh)["out"]
        assert not torch.allclose(ref[0], ref[1], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(small(fresh)["out"], ref, rtol=1e-4, atol=1e-4)
    ratio = count_macs(small, x) / count_macs(model, x)
    assert ratio <= target * (1 + wg.config.tolerance) and ratio == pytest.approx(target, abs=0.01)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_model_without_transform_or_images_is_refused():
    with pytest.raises(ConfigTypeError, match=r"has no 'transform': detector_wgates takes torchvision detectors"):
        detector_wgates(nn.Conv2d(3, 3, 1), [torch.rand(3, 8, 8)], target=0.5)
    det = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None,
                                       num_classes=3)
    with pytest.raises(ConfigTypeError, match=r"images must be a non-empty list of \(3, H, W\) tensors.*got Tensor"):
        detector_wgates(det, torch.rand(1, 3, 8, 8), target=0.5)
