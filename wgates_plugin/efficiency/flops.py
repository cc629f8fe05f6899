"""FLOPs estimate of Eq. (10)-(11), generalized to every Conv2d and Linear layer of a model.

What is counted: multiply-accumulates of Conv2d and Linear layers plus their bias additions, per
sample. For a conv, ``P * k_h * k_w * (c_in / groups) * c_out + [bias] P * c_out``; for a linear layer,
``P * c_in * c_out + [bias] P * c_out``, where ``P`` is the number of output positions (``H_out * W_out``
for a conv, the product of the leading non-batch dims for a linear layer). This is what
``torch_pruning.utils.count_ops_and_params`` counts for these layers (it adds a linear bias once per
sample instead of once per position, a difference below one part in ``c_in``).

``c_in`` and ``c_out`` are live channel counts: the layer's full width minus the closed channels of
every gated group that feeds or is produced by it, so the estimate is differentiable in the gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..groups import ChannelGroup, Role, is_depthwise
from ..utils import call_model, kept_modes
from .base import EfficiencyModel

__all__ = ["LayerShape", "record_layer_shapes", "FlopsModel", "ChannelMap", "count_macs"]


@dataclass(frozen=True)
class LayerShape:
    """Static facts about one Conv2d / Linear layer, recorded by a traced forward."""

    name: str
    positions: int  # output positions per sample (H_out * W_out, or tokens)
    kernel: int  # k_h * k_w (1 for linear)
    in_channels: int
    out_channels: int
    groups: int
    bias: bool
    depthwise: bool
    in_size: tuple[int, ...] = ()  # the input's spatial size (H, W) for a conv, its token dims for a linear


def record_layer_shapes(model: nn.Module, example_inputs: object) -> list[LayerShape]:
    """Run one eval forward and record the shape of every Conv2d / Linear call (in call order)."""
    shapes: list[LayerShape] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        conv = isinstance(module, nn.Conv2d)
        batch = output.shape[0] if conv or output.dim() > 1 else 1
        per_sample = output.numel() // max(batch, 1)
        out_ch = output.shape[1] if conv else output.shape[-1]
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else output
        in_size = tuple(x.shape[-2:]) if conv else tuple(x.shape[1:-1])
        shapes.append(_shape(names[module], module, per_sample // out_ch, tuple(int(d) for d in in_size)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with kept_modes(model), torch.no_grad():
            call_model(model.eval(), example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _shape(name: str, module: nn.Module, positions: int, in_size: tuple[int, ...] = ()) -> LayerShape:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return LayerShape(name, positions, k, module.in_channels, module.out_channels, module.groups,
                          module.bias is not None, is_depthwise(module), in_size)
    linear = cast(nn.Linear, module)
    return LayerShape(name, positions, 1, linear.in_features, linear.out_features, 1,
                      linear.bias is not None, False, in_size)


def layer_macs(shape: LayerShape, c_in: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
    """MACs (+ bias adds) of one layer with ``c_in`` live inputs and ``c_out`` live outputs."""
    bias = shape.positions * c_out if shape.bias else 0
    if shape.depthwise:
        return shape.positions * shape.kernel * c_out + bias
    return shape.positions * shape.kernel * (c_in / shape.groups) * c_out + bias


def count_macs(model: nn.Module, example_inputs: object) -> int:
    """Conv + linear MACs (+ bias adds) per sample of ``model`` as it is, counted the same way."""
    total = 0.0
    for s in record_layer_shapes(model, example_inputs):  # float64: float32 rounds counts above 2**24
        c_in, c_out = (torch.tensor(float(c), dtype=torch.float64) for c in (s.in_channels, s.out_channels))
        total += float(layer_macs(s, c_in, c_out))
    return int(round(total))


class FlopsModel(EfficiencyModel):
    """Differentiable FLOPs of the model as a function of the gated groups' live channel counts.

    Args:
        shapes: from :func:`record_layer_shapes` on the unpruned model.
        groups: the gated groups, in the order of the encoding.

    Example:
        >>> import torch, torchvision
        >>> from wgates_plugin.groups import trace_groups
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> groups = [g for g in trace_groups(model, x).groups if not g.reason and not g.shortcut]
        >>> flops = FlopsModel(record_layer_shapes(model, x), groups)
        >>> round(flops.reference() / 1e6, 1)
        37.0
    """

    sizes: torch.Tensor  # registered buffer, (G,)
    unit = "MACs"

    def __init__(self, shapes: Sequence[LayerShape], groups: Sequence[ChannelGroup]) -> None:
        super().__init__()
        self.shapes = list(shapes)
        self.group_names = tuple(g.name for g in groups)
        self.register_buffer("sizes", torch.tensor([float(g.size) for g in groups]))
        index = {s.name: i for i, s in enumerate(self.shapes)}
        # (layer, group, multiplicity) terms: each closed channel of `group` removes `multiplicity`
        # inputs / outputs of `layer`.
        in_terms: list[tuple[int, int, float]] = []
        out_terms: list[tuple[int, int, float]] = []
        for gi, g in enumerate(groups):
            for m in g.members:
                if m.name not in index or m.role is Role.PASS:
                    continue
                mult = len(m.idxs) / g.size
                terms = in_terms if m.role is Role.CONSUMER else out_terms
                terms += [(li, gi, mult) for li, s in enumerate(self.shapes) if s.name == m.name]
        self._static = tuple(torch.tensor([float(getattr(s, f)) for s in self.shapes])
                             for f in ("positions", "kernel", "groups", "bias", "depthwise"))
        self.channels = ChannelMap([s.in_channels for s in self.shapes], [s.out_channels for s in self.shapes],
                                   [int(v) for v in self.sizes.tolist()], in_terms, out_terms)

    def full_counts(self) -> torch.Tensor:
        return self.sizes.clone()

    def live_channels(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Live input and output channels of every recorded layer, each shape ``(L,)``."""
        return self.channels.live(counts)

    def per_layer(self, counts: torch.Tensor) -> torch.Tensor:
        """MACs of every recorded layer, shape ``(L,)`` (vectorized :func:`layer_macs`)."""
        c_in, c_out = self.live_channels(counts)  # (L,), (L,)
        pos, kernel, groups, bias, dw = (t.to(counts) for t in self._static)
        per_out = torch.where(dw > 0, torch.ones_like(c_in), c_in / groups)  # inputs per output filter
        return pos * c_out * (kernel * per_out + bias)

    def cost(self, counts: torch.Tensor) -> torch.Tensor:
        return self.per_layer(counts).sum()


Term = tuple[int, int, float]  # (layer, group, multiplicity)


class ChannelMap:
    """Live input and output channels of layers as a differentiable function of the group counts.

    Each closed channel of group ``g`` removes ``multiplicity`` inputs (``in_terms``) or outputs
    (``out_terms``) of a layer; ``multiplicity`` is the member's share of the group (1 for a plain
    conv, more when a layer holds a group several times, e.g. after a concatenation).
    """

    def __init__(self, in_full: Sequence[int], out_full: Sequence[int], sizes: Sequence[int],
                 in_terms: Sequence[Term], out_terms: Sequence[Term]) -> None:
        self.in_full, self.out_full = [int(v) for v in in_full], [int(v) for v in out_full]
        self.group_sizes = [int(v) for v in sizes]
        self.in_terms = [(int(a), int(b), float(c)) for a, b, c in in_terms]
        self.out_terms = [(int(a), int(b), float(c)) for a, b, c in out_terms]
        self._in, self._out = _term_tensors(self.in_terms), _term_tensors(self.out_terms)
        self._full = torch.tensor(self.in_full, dtype=torch.float32), torch.tensor(self.out_full, dtype=torch.float32)
        self._sizes = torch.tensor(self.group_sizes, dtype=torch.float32)

    def live(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_in, c_out)`` of every layer, each shape ``(L,)``, for group counts ``(G,)``."""
        closed = self._sizes.to(counts) - counts  # (G,)
        c_in = self._full[0].to(counts).index_add(0, self._in[0], -closed[self._in[1]] * self._in[2].to(counts))
        c_out = self._full[1].to(counts).index_add(0, self._out[0], -closed[self._out[1]] * self._out[2].to(counts))
        return c_in, c_out

    def varying(self) -> tuple[list[bool], list[bool]]:
        """Per layer: whether its input / output channels follow a gated group."""
        ins, outs = {t[0] for t in self.in_terms}, {t[0] for t in self.out_terms}
        return [i in ins for i in range(len(self.in_full))], [i in outs for i in range(len(self.out_full))]

    def subset(self, layers: Sequence[int]) -> ChannelMap:
        """The map of ``layers`` only, renumbered ``0 .. len(layers) - 1`` in that order."""
        new = {old: i for i, old in enumerate(layers)}
        return ChannelMap([self.in_full[i] for i in layers], [self.out_full[i] for i in layers], self.group_sizes,
                          [(new[a], b, c) for a, b, c in self.in_terms if a in new],
                          [(new[a], b, c) for a, b, c in self.out_terms if a in new])

    def to_json(self) -> dict[str, list]:
        return {"in_full": self.in_full, "out_full": self.out_full, "sizes": self.group_sizes,
                "in_terms": [list(t) for t in self.in_terms], "out_terms": [list(t) for t in self.out_terms]}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> ChannelMap:
        return cls(data["in_full"], data["out_full"], data["sizes"], data["in_terms"], data["out_terms"])


def _term_tensors(terms: Sequence[Term]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layer = torch.tensor([t[0] for t in terms], dtype=torch.long)
    group = torch.tensor([t[1] for t in terms], dtype=torch.long)
    mult = torch.tensor([t[2] for t in terms], dtype=torch.float32)
    return layer, group, mult
