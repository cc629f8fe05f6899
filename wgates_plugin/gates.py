"""The W-Gates themselves: the binary activation (Eq. 3-7) and the weight-dependent gate module (Eq. 2).

A :class:`WeightGate` scores every output channel of one channel group from the filter weights of the
convolutions that produce it, and turns the scores into 0/1 gates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .config import GateActivation, ScoreInput
from .errors import ConfigError

__all__ = ["BinaryGate", "GateActivation", "ScoreInput", "Producer", "WeightGate", "binary_gate"]


class BinaryGate(torch.autograd.Function):
    """``(sign(s) + 1) / 2`` forward, the Bi-Real piecewise-polynomial derivative (Eq. 7) backward.

    ``s == 0`` gives 1: a filter whose score is exactly zero is kept (ties go to keeping, matching the
    ``0 <= s < 1/2`` branch of Eq. 7 and the fact that an all-zero FC vector must not prune anything).

    The backward uses ``d lambda / ds = 2 + 4s`` on ``[-1/2, 0)``, ``2 - 4s`` on ``[0, 1/2)`` and ``0``
    elsewhere.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(scores)
        return (scores >= 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        slope = torch.where(s < 0, 2 + 4 * s, 2 - 4 * s)  # (C,)
        slope = torch.where(s.abs() < 0.5, slope, torch.zeros_like(s))
        # s == -1/2 belongs to the left branch, where 2 + 4s = 0 anyway.
        return grad_out * slope


def binary_gate(scores: torch.Tensor) -> torch.Tensor:
    """Apply :class:`BinaryGate` to a score tensor."""
    return BinaryGate.apply(scores)


@dataclass(frozen=True)
class Producer:
    """A layer whose output filters belong to a gated group.

    Attributes:
        module: the Conv2d / Linear producing the channels.
        rows: which of the module's output filters belong to the group, shape ``(n,)``.
        channels: the group channel each of those rows is, shape ``(n,)``.
    """

    module: nn.Module
    rows: torch.Tensor
    channels: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:
        """The producer's current weight (NNI's wrappers may swap the module for one of theirs)."""
        return cast(torch.Tensor, self.module.weight)

    @property
    def features(self) -> int:
        return int(self.weight[0].numel())


class WeightGate(nn.Module):
    """Weight-dependent gate of one channel group (paper Fig. 2, Eq. 2-4).

    The reshaped filters of every producer are concatenated per channel into ``X`` of shape
    ``(C, sum_j D_j)``: a group spanning several convolutions (a depthwise pair, a residual-coupled
    stack) is scored by one FC vector over all of its filters, ``s = X @ fc + bias``. This equals the sum
    of one FC score per producer, so for a single conv it is exactly the paper's ``s = W* w``.

    Initialization: ``fc = 0`` and ``bias = init_score`` (default 0.25): every gate is open, and every
    score lies inside the gradient window ``|s| < 1/2`` of Eq. (7), so gates can move from step 0.

    ``tie > 1`` (groups feeding or produced by a grouped convolution with ``tie`` groups) makes the
    channel pattern identical in every conv group: channel ``c`` shares the gate of ``c % (C / tie)``,
    and that unit's score is the mean of its channels' scores. This keeps grouped convolutions valid
    after removal.

    Args:
        producers: the layers whose filters are scored.
        channels: number of channels ``C`` in the group.
        score_input: what the FC reads, see :class:`ScoreInput`.
        weight_grad: whether the gate path sends gradients into the conv weights. Default False: the
            weights are trained by the task loss only; letting the efficiency loss shrink filters
            through the score would change the network to fit the pruning criterion instead of
            letting the criterion learn from the network, and costs a backward through every weight.
        tie: conv-group count the pattern must repeat over (1 = free).
        min_units / max_units: bounds on the number of open units (``tie`` channels each), enforced in every forward by
            opening the best-scored / closing the worst-scored channels (``BINARY``; a ``SIGMOID`` gate
            is bounded when frozen).
        init_score: initial score of every channel.
        activation: binary (the paper) or scaled sigmoid (ablation), see :class:`GateActivation`.
        sigmoid_k: the sigmoid's scale ``k`` (paper Table II: 4).
    """

    frozen: torch.Tensor  # a registered buffer: empty while the gate is not frozen

    def __init__(
        self,
        producers: list[Producer],
        channels: int,
        score_input: ScoreInput = ScoreInput.WEIGHT,
        weight_grad: bool = False,
        tie: int = 1,
        min_units: int = 1,
        max_units: int | None = None,
        init_score: float = 0.25,
        activation: GateActivation = GateActivation.BINARY,
        sigmoid_k: float = 4.0,
    ) -> None:
        super().__init__()
        if not producers:
            raise ConfigError("WeightGate needs at least one producer layer to score")
        if channels % tie:
            raise ConfigError(f"tie={tie} must divide the group's {channels} channels")
        self.producers = producers
        self.channels = channels
        self.score_input = ScoreInput(score_input)
        self.weight_grad = weight_grad
        self.tie = tie
        self.units = channels // tie
        self.activation = GateActivation(activation)
        self.sigmoid_k = float(sigmoid_k)
        self.min_units = min_units
        self.max_units = self.units if max_units is None else max_units
        features = sum(p.features for p in producers)
        self.fc = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.tensor(float(init_score)))
        self.register_buffer("frozen", torch.ones(0))  # empty = not frozen

    @property
    def is_frozen(self) -> bool:
        return self.frozen.numel() > 0

    def filter_features(self) -> torch.Tensor:
        """``X``: the group's reshaped filters, shape ``(C, sum_j D_j)``."""
        blocks = []
        for p in self.producers:
            w = p.weight if self.weight_grad else p.weight.detach()
            w2d = w.reshape(w.shape[0], -1).index_select(0, p.rows)  # (n, D_j)
            if self.score_input is ScoreInput.ABS:
                w2d = w2d.abs()
            elif self.score_input is ScoreInput.CONSTANT:
                w2d = torch.ones_like(w2d)
            block = w2d.new_zeros(self.channels, w2d.shape[1])
            blocks.append(block.index_copy(0, p.channels, w2d))  # (C, D_j)
        return torch.cat(blocks, dim=1)  # (C, D)

    def unit_scores(self) -> torch.Tensor:
        """Real-valued score per gate unit, shape ``(C / tie,)``; rank by these, never by the gates.

        Computes ``filter_features() @ fc + bias`` without building ``X``: one matrix-vector product
        per producer on a view of its weight, scattered to the group's channels (``X`` is zero outside
        a producer's rows). Building ``X`` copied every gated weight several times per call.
        """
        fc = self.fc.to(self.producers[0].weight.dtype)
        s = fc.new_zeros(self.channels)  # (C,)
        for p, fc_j in zip(self.producers, fc.split([p.features for p in self.producers])):
            s = s.index_add(0, p.channels, self._producer_scores(p, fc_j).index_select(0, p.rows))
        s = s + self.bias  # (C,)
        return s.view(self.tie, self.units).mean(dim=0)  # (units,)

    def _producer_scores(self, p: Producer, fc_j: torch.Tensor) -> torch.Tensor:
        """Score contribution of every output filter of one producer, shape ``(out,)``."""
        w = p.weight if self.weight_grad else p.weight.detach()
        w2d = w.reshape(w.shape[0], -1)  # (out, D_j), a view of the weight
        if self.score_input is ScoreInput.ABS:
            return w2d.abs() @ fc_j
        if self.score_input is ScoreInput.CONSTANT:
            return fc_j.sum().expand(w2d.shape[0])
        return w2d @ fc_j  # (out,)

    def channel_scores(self) -> torch.Tensor:
        """Real-valued score per channel (unit scores repeated over tied conv groups), ``(C,)``."""
        return self.unit_scores().repeat(self.tie)

    def forward(self) -> torch.Tensor:
        """Current gate per channel, shape ``(C,)``: 0/1 differentiable through Eq. (7) (``BINARY``) or
        ``sigmoid(k * s)`` (``SIGMOID``); the frozen 0/1 mask once frozen."""
        if self.is_frozen:
            return self.frozen
        s = self.unit_scores()  # (units,)
        if self.activation is GateActivation.SIGMOID:
            return torch.sigmoid(self.sigmoid_k * s).repeat(self.tie)  # (C,)
        return self._binary(s).repeat(self.tie)  # (C,)

    def hard(self) -> torch.Tensor:
        """The 0/1 gate per channel that freezing now would keep (bounds applied), shape ``(C,)``."""
        if self.is_frozen:
            return self.frozen
        with torch.no_grad():
            return self._binary(self.unit_scores()).repeat(self.tie)

    def _binary(self, s: torch.Tensor) -> torch.Tensor:
        """Bounded 0/1 gate of the unit scores ``s (units,)`` with the Eq. (7) gradient."""
        gate = binary_gate(s)
        mask = bounded_mask(s.detach(), gate.detach(), self.min_units, self.max_units)
        return gate + (mask - gate).detach()  # forward value = mask, gradient = Eq. (7)

    def freeze(self, units_mask: torch.Tensor | None = None) -> None:
        """Fix the gates to ``units_mask`` (default: the current gates); ``forward`` returns them after."""
        with torch.no_grad():
            mask = self.hard().view(self.tie, self.units)[0] if units_mask is None else units_mask
            self.frozen = mask.float().repeat(self.tie).to(self.fc.device)

    def warm_start(self, keep: int, scale: float = 0.25) -> None:
        """Set the FC vector so that the scores rank the filters by their norm, keeping the ``keep`` units
        of largest norm: the minimum-norm ``fc`` solving ``X fc = s*`` (``bias = 0``), where ``s*`` is each
        unit's norm minus the threshold between the ``keep``-th and the next, scaled into ``(-scale, scale)``.
        ``X`` has more columns than rows in a conv group, so the solution is exact there (least squares
        where it is not). Gates then start as magnitude pruning at ``keep`` and stay inside the gradient
        window of Eq. (7)."""
        with torch.no_grad():
            x = self.filter_features().double()  # (C, D)
            norms = x.norm(dim=1).view(self.tie, self.units).mean(0)  # (units,)
            ranked = torch.sort(norms, descending=True).values
            keep = min(max(keep, 1), self.units)
            thr = (ranked[keep - 1] + ranked[keep]) / 2 if keep < self.units else ranked[-1] - 1
            target = norms - thr
            target = scale * target / target.abs().max().clamp_min(1e-12)  # (units,) in [-scale, scale]
            fc = torch.linalg.lstsq(x, target.repeat(self.tie).unsqueeze(1), driver="gelsd").solution[:, 0]
            self.fc.copy_(fc.to(self.fc))
            self.bias.zero_()

    def kept_units(self) -> int:
        """Units (``tie`` channels each) that freezing now would keep."""
        return int(self.hard().sum()) // self.tie

    def freeze_top(self, k: int, votes: torch.Tensor | None = None) -> None:
        """Freeze keeping the ``k`` best-scored units; with ``votes`` (one count per unit), the ``k`` most
        voted, ties broken by score."""
        with torch.no_grad():
            scores = self.unit_scores()
            if votes is None:
                self.freeze(top_k_mask(scores, k))
            else:  # counts compared exactly (float64), whatever the gates' dtype
                self.freeze(top_k_mask(votes.to(device=scores.device, dtype=torch.float64), k, tiebreak=scores))

    def unfreeze(self) -> None:
        self.frozen = self.fc.new_ones(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        frozen = state_dict.get(prefix + "frozen")
        if frozen is not None and frozen.numel() not in (0, self.channels):
            raise ConfigError(f"saved gate '{prefix}' has {frozen.numel()} channels, this one {self.channels}")
        if frozen is not None:
            self.frozen = torch.empty_like(frozen)  # frozen / not frozen changes the buffer's size
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def bounded_mask(scores: torch.Tensor, gate: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """``gate`` with its count clamped into ``[low, high]`` by score rank, shape ``(n,)``."""
    kept = int(gate.sum())
    if low <= kept <= high:
        return gate
    return top_k_mask(scores, min(max(kept, low), high))


def top_k_mask(scores: torch.Tensor, k: int, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """1 on the ``k`` highest scores, 0 elsewhere; ties broken by the higher ``tiebreak`` (when given), then
    by the lower index."""
    mask = torch.zeros_like(scores)
    if tiebreak is None:
        order = torch.argsort(scores, descending=True, stable=True)
    else:  # sorting by the second key first, then stably by the first, orders by (scores, tiebreak)
        second = torch.argsort(tiebreak, descending=True, stable=True)
        order = second[torch.argsort(scores[second], descending=True, stable=True)]
    mask[order[:k]] = 1
    return mask


class GateList(nn.ModuleList):
    """A ``ModuleList`` of :class:`WeightGate` (typed iteration and indexing)."""

    def __iter__(self) -> Iterator[WeightGate]:
        return cast(Iterator[WeightGate], super().__iter__())

    def __getitem__(self, idx: int) -> WeightGate:  # type: ignore[override]
        return cast(WeightGate, super().__getitem__(idx))
