"""timm CNN families end to end, under the same exact-export contract as the torchvision zoo.

Each model is built with ``timm.create_model(name, pretrained=False, num_classes=10)`` (nothing is
downloaded), its BatchNorms randomized and calibrated (``tests.helpers.calibrate``), and then goes
through :func:`integration_tests.test_zoo.check_pipeline`: a few training steps of the gates, freeze
at the target, export, eval outputs equal on a fresh batch, FLOPs on target and equal to the
efficiency model's prediction, fewer parameters.

The target is 0.5 of the FLOPs where the prunable groups allow it. Where timm's design keeps most
FLOPs in groups that cannot be pruned safely, the target is the lowest round fraction reachable
(the reason is the comment); ``prune_shortcuts`` is on for RepVGG, whose every block is residual.
Families that are refused with a reason rather than pruned are tested at the end of the file.
"""

from __future__ import annotations

import pytest
import torch

from integration_tests.test_zoo import check_pipeline
from tests.helpers import calibrate
from wgates_plugin import BudgetError, WGates
from wgates_plugin.groups import trace_groups

timm = pytest.importorskip("timm", reason="the timm extra is not installed: pip install 'wgates-plugin[timm]'")

pytestmark = [pytest.mark.zoo, pytest.mark.usefixtures("one_thread")]

SIDE = 64
# family -> (timm model name, FLOPs target, extra WGates options)
FAMILIES: dict[str, tuple[str, float, dict]] = {
    "resnet": ("resnet18", 0.5, {}),
    "resnext": ("resnext26ts", 0.5, {}),
    "efficientnet": ("efficientnet_b0", 0.5, {}),
    "mobilenetv3": ("mobilenetv3_small_100", 0.5, {}),
    "mobilenetv4": ("mobilenetv4_conv_small", 0.5, {}),
    "regnet": ("regnetx_002", 0.5, {}),
    "convnext": ("convnext_atto", 0.5, {}),
    "cspnet": ("cspresnet50", 0.5, {}),  # CSP's channel split refuses only the split producers
    "darknet": ("darknet17", 0.5, {}),
    "dla": ("dla34", 0.5, {}),
    "densenet": ("densenet121", 0.5, {}),
    "dpn": ("dpn48b", 0.5, {}),
    "vovnet": ("ese_vovnet19b_dw", 0.5, {}),
    "selecsls": ("selecsls42b", 0.5, {}),
    "tinynet": ("tinynet_e", 0.5, {}),
    "ghostnet": ("ghostnet_100", 0.8, {}),  # ghost convs concatenated with their primaries; timm 1.0.9: floor 0.76
    "hrnet": ("hrnet_w18_small", 0.6, {}),  # fusion layers are summed across branches (shortcut-coupled)
    "repvgg": ("repvgg_a0", 0.5, {"prune_shortcuts": True}),  # every block is a residual sum of branches
    "res2net": ("res2net50_14w_8s", 0.9, {}),  # the scale branches split the channels (refused groups)
    "mixnet": ("mixnet_s", 0.95, {}),  # mixed kernels split the channels (refused groups)
}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = calibrate(timm.create_model(name, pretrained=False, num_classes=10), SIDE)
    return model, torch.randn(2, 3, SIDE, SIDE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_family_prunes_to_target_and_exports_exactly(family: str) -> None:
    name, target, options = FAMILIES[family]
    model, x = build(name)
    wg, _ = check_pipeline(model, x, target, **options)
    assert options.get("prune_shortcuts") or all(not g.shortcut for g in wg.groups)


def test_channel_splits_are_refused_with_the_reason() -> None:
    """MixNet's MixedConv2d concatenates its kernels' outputs and the next one splits them again at
    fixed sizes: pruning a group on either side would move the split points, so it is refused."""
    model, x = build("mixnet_s")
    wg = WGates(model, x, target=0.95)
    reasons = {g.name: g.reason for g in wg.traced.groups if g.reason}
    split = [n for n, r in reasons.items() if "channel split" in r and "fixed in the model's code" in r]
    assert len(split) >= 10, reasons
    assert not set(split) & {g.name for g in wg.groups}


def test_convs_with_unknown_per_channel_parameters_are_refused() -> None:
    """NFNet's ScaledStdConv2d holds a per-output-channel 'gain' torch-pruning would not prune."""
    model, x = build("nfnet_l0")
    with pytest.raises(BudgetError, match=r"target=0\.5 is unreachable"):
        WGates(model, x, target=0.5)
    traced = trace_groups(model, x)
    assert any("ScaledStdConv2d" in (g.reason or "") and "gain" in (g.reason or "") for g in traced.groups)
