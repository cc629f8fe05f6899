"""Ultralytics YOLOv8n and YOLO11n, built from their model YAML (no weight download), pruned and
exported exactly: the raw head outputs and the decoded boxes equal the gated model's. The ``yolo``
extra (ultralytics, AGPL-3.0)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import calibrate
from wgates_plugin import WGates, count_macs
from wgates_plugin.groups import trace_limits
from wgates_plugin.utils import tensors_in

pytest.importorskip("ultralytics", reason="the yolo extra is not installed: pip install 'wgates-plugin[yolo]'")
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("yaml", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_prunes_and_exports_exactly(yaml):
    torch.manual_seed(0)
    model = calibrate(DetectionModel(yaml, nc=5, verbose=False), 128).eval()
    x = torch.randn(2, 3, 128, 128)
    with trace_limits(group_seconds=600):  # YOLO11's C2PSA attention: two searches that never end, stopped
        # by their index budget (deterministic, whatever the machine's speed); the time limit only as a backstop
        wg = WGates(model, x, target=0.7)
    opt = torch.optim.Adam(wg.parameters(), lr=1e-2)
    for _ in range(2):
        loss = sum(t.square().mean() for t in tensors_in(model(x))) + wg.efficiency_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    wg.freeze()
    small = wg.export()  # checks every output (decoded boxes, raw head maps, the features the head read)
    fresh = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref, out = model(fresh), small(fresh)
    r, o = list(tensors_in(ref)), list(tensors_in(out))
    assert len(r) == len(o) >= 2
    for a, b in zip(o, r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ratio = count_macs(small, x) / count_macs(model, x)
    assert ratio <= 0.7 * (1 + wg.config.tolerance) and ratio == pytest.approx(0.7, abs=0.01)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    split = [g for g in wg.traced.groups if g.reason and "channel split" in g.reason]
    assert split, "C2f's (and C3k2's) chunk into two halves is reported, not pruned"
    stuck = sorted(g.name for g in wg.traced.groups if g.reason and "kept growing past" in g.reason)
    assert stuck == (["model.10.m.0.attn.pe.conv", "model.10.m.0.attn.qkv.conv"] if yaml == "yolo11n.yaml" else [])
