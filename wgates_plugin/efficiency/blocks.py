"""Building blocks and their encodings, for the block-level LPNet (the paper's ResNet-50 setting).

A *block* is a module whose latency is predicted as a unit: by default every torchvision ``BasicBlock``,
``Bottleneck`` and MobileNetV2 ``InvertedResidual``; or the modules the user names. Blocks of one
*type* (the module class) share one LPNet, so a net trained on resnet50's bottlenecks predicts
resnet101's.

A block's encoding lists, for each Conv2d inside it (a *slot*, named relative to the block, e.g.
``conv2`` or ``downsample.0``), five numbers: live input channels, live output channels, output
positions (``H_out * W_out``), kernel area and stride. The first two follow the gated groups' channel
counts; the other three are the fixed factors of where the block sits (feature-map size,
downsampling, kernel). A slot a block lacks (a bottleneck without a downsample conv) is all zeros.
How a group's count maps to a block's inputs is exactly what the FLOPs model already knows: the live
in/out channels of every conv as a differentiable function of the group counts
(:meth:`FlopsModel.live_channels`), so the encoding is differentiable in the gates too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..errors import ConfigError, LatencyContextError
from ..groups import ChannelGroup
from .flops import FlopsModel, LayerShape, record_layer_shapes

__all__ = ["SLOT_FEATURES", "BlockInfo", "type_key", "default_block_types", "find_blocks", "BlockEncoder"]

SLOT_FEATURES = ("c_in", "c_out", "positions", "kernel", "stride")


@dataclass(frozen=True)
class BlockInfo:
    """One block of a model: its qualified name, type key and the relative names of its convs."""

    name: str
    type: str
    slots: tuple[str, ...]


def type_key(module: nn.Module) -> str:
    """The block type of ``module``: its class's module path and qualified name."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def default_block_types() -> tuple[type[nn.Module], ...]:
    """torchvision's residual and inverted-residual blocks."""
    return (BasicBlock, Bottleneck, InvertedResidual)


def find_blocks(
    model: nn.Module,
    block_types: Sequence[type[nn.Module]] | None = None,
    names: Sequence[str] | None = None,
) -> list[BlockInfo]:
    """The blocks of ``model``: the named modules, or the outermost instances of ``block_types``.

    Raises:
        ConfigError: a name is not a module of the model, or no block was found.
    """
    modules = dict(model.named_modules())
    if names is not None:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"block names {missing} are not modules of {type(model).__name__}")
        chosen = list(names)
    else:
        types = tuple(block_types) if block_types is not None else default_block_types()
        chosen = outermost([n for n, m in modules.items() if n and isinstance(m, types)])
    blocks = [BlockInfo(n, type_key(modules[n]), _conv_slots(modules[n])) for n in chosen]
    blocks = [b for b in blocks if b.slots]
    if not blocks:
        raise ConfigError(
            f"no building block with a Conv2d found in {type(model).__name__}; pass block_types=(YourBlock,) "
            "or the block module names"
        )
    return blocks


def outermost(names: list[str]) -> list[str]:
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _conv_slots(block: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in block.named_modules() if isinstance(m, nn.Conv2d))


def layout_of(blocks: Sequence[BlockInfo]) -> dict[str, list[str]]:
    """Slots per block type: the union of its blocks' conv names, in order of first appearance."""
    layout: dict[str, list[str]] = {}
    for b in blocks:
        slots = layout.setdefault(b.type, [])
        slots += [s for s in b.slots if s not in slots]
    return layout


class BlockEncoder(nn.Module):
    """Maps the network encoding (live channels per gated group) to every block's encoding.

    Args:
        model: the unpruned model.
        example_inputs: a batch it accepts (for the layer shapes).
        groups: the gated groups, in encoding order.
        blocks: from :func:`find_blocks`.
        layout: slots per block type; default from ``blocks``. Pass a saved LPNet's layout to check
            that this model's blocks fit it.

    Raises:
        LatencyContextError: a block has a conv the ``layout`` does not know.
    """

    flops: FlopsModel

    def __init__(self, model: nn.Module, example_inputs: object, groups: Sequence[ChannelGroup],
                 blocks: Sequence[BlockInfo], layout: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.shapes: list[LayerShape] = record_layer_shapes(model, example_inputs)
        self.flops = FlopsModel(self.shapes, groups)
        self.blocks = list(blocks)
        self.layout = {k: list(v) for k, v in (layout or layout_of(self.blocks)).items()}
        self._check_layout()
        first: dict[str, int] = {}
        for i, s in enumerate(self.shapes):
            first.setdefault(s.name, i)
        modules = dict(model.named_modules())
        self._index: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for t in self.types:
            self._index[t] = self._type_tensors(t, first, modules)

    @property
    def types(self) -> list[str]:
        """Block types present in this model (a subset of the layout's types)."""
        return list(dict.fromkeys(b.type for b in self.blocks))

    def names(self, block_type: str) -> list[str]:
        return [b.name for b in self.blocks if b.type == block_type]

    def feature_names(self, block_type: str) -> list[str]:
        return [f"{slot}.{f}" for slot in self.layout[block_type] for f in SLOT_FEATURES]

    def _check_layout(self) -> None:
        for b in self.blocks:
            known = self.layout.get(b.type)
            extra = [s for s in b.slots if known is None or s not in known]
            if extra:
                raise LatencyContextError(
                    f"block '{b.name}' ({b.type}) has convs {extra} that the block LPNet does not know "
                    f"(it knows types {sorted(self.layout)}); train a block LPNet on this block type"
                )

    def _type_tensors(self, block_type: str, first: dict[str, int], modules: dict[str, nn.Module]):
        slots = self.layout[block_type]
        rows, present, static = [], [], []
        for name in self.names(block_type):
            full = [f"{name}.{s}" for s in slots]
            missing = [f for f, s in zip(full, slots) if f in modules and f not in first]
            if missing:
                raise ConfigError(f"convs {missing} are never called in a forward; exclude them from the blocks")
            rows.append([first.get(f, 0) for f in full])
            present.append([f in first for f in full])
            static.append([self._static(modules.get(f), first.get(f)) for f in full])
        return (torch.tensor(rows, dtype=torch.long), torch.tensor(present, dtype=torch.float32),
                torch.tensor(static, dtype=torch.float32))

    def _static(self, conv: nn.Module | None, index: int | None) -> list[float]:
        if not isinstance(conv, nn.Conv2d) or index is None:
            return [0.0, 0.0, 0.0]
        shape = self.shapes[index]
        return [float(shape.positions), float(shape.kernel), float(conv.stride[0])]

    def features(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{block type: encodings}``, each ``(n_blocks_of_type, 5 * n_slots)``, differentiable in counts."""
        c_in, c_out = self.flops.live_channels(counts)  # (L,), (L,)
        out = {}
        for t, (rows, present, static) in self._index.items():
            live = torch.stack([c_in[rows], c_out[rows]], dim=-1)  # (B, S, 2)
            feats = torch.cat([live, static.to(live)], dim=-1) * present.to(live).unsqueeze(-1)  # (B, S, 5)
            out[t] = feats.flatten(1)  # (B, 5S)
        return out
