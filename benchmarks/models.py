"""The benchmark models, all for 32x32 inputs.

- ``resnet20`` / ``resnet56``: the CIFAR ResNets of He et al. 2016 (Sec. 4.2): a 3x3 stem with 16
  channels, three stages of ``n`` basic blocks (``n`` = 3 / 9) with 16 / 32 / 64 channels, the first
  block of stages 2 and 3 at stride 2, global average pooling and one linear layer. The shortcut
  that changes width is *option B* (a 1x1 stride-2 conv + BatchNorm) rather than the paper's option A
  (zero padding), so that torch-pruning's dependency graph can trace it. Option B adds 2 752
  parameters (:func:`option_b_extra_params`): ResNet-20 has 272 474 (269 722 with option A) and
  ResNet-56 855 770 (853 018); at 32x32 they cost 40.81 M and 125.75 M MACs.
- ``vgg16_bn``: torchvision's ``vgg16_bn`` feature stack unchanged (configuration "D": 13 3x3 convs
  with BatchNorm, 5 max-pools), so a 32x32 input leaves a 1x1x512 map; the 7x7 adaptive pool and the
  4096-wide classifier are dropped for ``flatten -> Linear(512, num_classes)``, the common CIFAR
  variant.
- ``resnet18``: torchvision's ``resnet18`` with ``conv1`` a 3x3 stride-1 conv and ``maxpool`` an
  identity, the usual CIFAR adaptation (the stages then see 32/16/8/4 pixel maps).
- ``mobilenet_v2``: torchvision's ``mobilenet_v2`` (width 1.0) with the stem conv at stride 1, the
  usual CIFAR adaptation (the inverted-residual stages then see 32/16/8/4/2 pixel maps): a depthwise
  network, where latency follows FLOPs least (24.46 M MACs at 32x32).

Every conv is initialized Kaiming-normal (fan-out, ReLU gain), every BatchNorm with weight 1 and bias
0, every linear layer with PyTorch's default (Kaiming-uniform). No pretrained weight is loaded.

Example:
    >>> import torch
    >>> from benchmarks.models import build
    >>> build("resnet20")(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from wgates_plugin.errors import ConfigError

__all__ = ["MODELS", "build", "CifarResNet", "BasicBlock", "Vgg32", "init_weights", "option_b_extra_params"]

MODELS = ("resnet20", "resnet56", "vgg16_bn", "resnet18", "mobilenet_v2")

# torchvision's vgg configuration "D" (vgg16): conv widths, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; option-B shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, Sec. 4.2), option-B shortcuts.

    Args:
        blocks: ``n``, basic blocks per stage (3 -> ResNet-20, 9 -> ResNet-56).
        num_classes: outputs of the final linear layer.
    """

    def __init__(self, blocks: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, classes)


def option_b_extra_params() -> int:
    """Parameters the two option-B shortcuts add over option A (1x1 convs and their BN affine terms)."""
    return (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


class Vgg32(nn.Module):
    """torchvision's VGG feature stack for 32x32 inputs (a 1x1x512 map), then one linear classifier."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            width = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # (N, 512) -> (N, classes)


def _resnet18(num_classes: int) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _mobilenet_v2(num_classes: int) -> nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    return model


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": lambda classes: CifarResNet(3, classes),
    "resnet56": lambda classes: CifarResNet(9, classes),
    "vgg16_bn": lambda classes: Vgg32(VGG16_CFG, classes),
    "resnet18": _resnet18,
    "mobilenet_v2": _mobilenet_v2,
}


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal convs (fan-out, ReLU), BN weight 1 / bias 0, default linear init; returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    return model


def build(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialized benchmark model (seed torch's global generator first for repeatability).

    Args:
        name: one of :data:`MODELS`.
        num_classes: outputs of the classifier.

    Raises:
        ConfigError: ``name`` is not a benchmark model, or ``num_classes`` is below 1.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"model={name!r} is not a benchmark model; allowed: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be a positive int")
    return init_weights(_BUILDERS[name](num_classes))
