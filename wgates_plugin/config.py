"""Configuration of a W-Gates run: one frozen dataclass that validates itself on construction."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ConfigTypeError
from .utils import check_number

__all__ = ["BudgetMode", "ScoreInput", "GateActivation", "WGatesConfig", "LayerBounds", "ANNEALED_K"]

#: the sigmoid scale soft-to-hard annealing ends at: sigmoid(100 * s) is 0/1 to 1e-10 for |s| >= 1/4
#: (the initial score), so freezing then changes almost nothing.
ANNEALED_K = 100.0


class BudgetMode(str, enum.Enum):
    """How the efficiency loss is formed.

    ``PAPER``: ``alpha * log(1 + Eff(c) / Eff_0)`` (Eq. 12 with the cost normalized by the unpruned
    model's, so ``alpha`` means the same on every model); the budget is whatever ``alpha`` reaches.
    ``TARGET``: a two-sided term ``lambda_t * |Eff(c) / Eff_0 - target| / target`` whose multiplier
    follows ``lambda_{t+1} = max(0, lambda_t + rate * (Eff(c) / Eff_0 - target) / target)`` (grows
    above budget, shrinks below), then an exact projection onto the budget when the gates are frozen.
    ``NONE``: no efficiency term (fixed per-layer ratios, e.g. NNI ``sparse_ratio``).
    """

    PAPER = "paper"
    TARGET = "target"
    NONE = "none"


class ScoreInput(str, enum.Enum):
    """What the gate's FC layer reads for each filter.

    ``WEIGHT`` is the paper's Eq. (2). ``ABS`` feeds ``|W|`` (lets the score express magnitude, which a
    linear function of W cannot). ``CONSTANT`` feeds ones: the paper's "constant input" ablation
    (Table I), where the gate cannot tell filters apart by their weights.
    """

    WEIGHT = "weight"
    ABS = "abs"
    CONSTANT = "constant"


class GateActivation(str, enum.Enum):
    """How scores become gates.

    ``BINARY`` is the paper's method: ``(sign(s) + 1) / 2`` with the Eq. (7) gradient, so training sees
    exactly the network that will be exported. ``SIGMOID`` is the paper's Table II ablation: a scaled
    sigmoid ``sigmoid(k * s)`` multiplies each channel during training (a soft, continuous gate whose
    sum is the soft channel count of the efficiency loss); freezing keeps the channels with
    ``s >= 0`` (gate >= 1/2), so the frozen network differs from the trained one.
    """

    BINARY = "binary"
    SIGMOID = "sigmoid"


@dataclass(frozen=True)
class LayerBounds:
    """Bounds on the kept fraction of one group's channels; ``min_keep <= kept / size <= max_keep``."""

    min_keep: float = 0.0
    max_keep: float = 1.0

    def __post_init__(self) -> None:
        check_number("min_keep", self.min_keep, "[0, 1]", what="")
        check_number("max_keep", self.max_keep, "(0, 1]", what="")
        if self.min_keep > self.max_keep:
            raise ConfigError(f"min_keep={self.min_keep} must not exceed max_keep={self.max_keep}")


@dataclass(frozen=True)
class WGatesConfig:
    """Every knob of a W-Gates run, with its documented default.

    Attributes:
        mode: see :class:`BudgetMode`. Default ``TARGET`` when ``target`` is given, else ``PAPER``.
        target: budget as a fraction of the unpruned cost, in (0, 1]; required in ``TARGET`` mode.
        alpha: ``alpha`` of Eq. (12) in ``PAPER`` mode; the initial multiplier in ``TARGET`` mode.
        controller_rate: dual-ascent step of the ``TARGET`` multiplier.
        tolerance: relative distance to ``target`` the frozen gates must land within.
        prune_shortcuts: also gate residual-coupled groups (one gate per coupled group). The paper
            keeps them; off by default.
        score_input: what the gate FC reads (:class:`ScoreInput`).
        weight_grad: let the gate path send gradients into conv weights.
        init_score: initial score of every channel (inside ``(0, 0.5)``: open and trainable).
        warm_start: in ``TARGET`` mode, start every gate as magnitude pruning at the uniform widths that
            meet the target (:meth:`~wgates_plugin.gates.WeightGate.warm_start`); False: all open, the
            paper's start. The default, chosen on Fashion-MNIST's validation split (benchmarks/RESULTS.md).
        ramp_steps: in ``TARGET`` mode, the target the penalty trains toward falls from 1 to ``target``
            over this many training steps (cubic, as in gradual pruning); 0: the target from step 0.
        activation: ``'binary'`` (the paper) or ``'sigmoid'`` (the Table II ablation), see
            :class:`GateActivation`.
        sigmoid_k: scale ``k`` of the sigmoid gate ``sigmoid(k * s)``; > 0.
        anneal_steps: with ``activation='sigmoid'``, ``k`` rises geometrically from ``sigmoid_k`` to
            :data:`ANNEALED_K` over this many training steps (soft-to-hard annealing: the gates become
            binary before the freeze instead of at it); 0: ``k`` stays fixed.
        round_to: kept channel counts are multiples of this (a group keeps all its channels, or a
            multiple of ``round_to`` of them): hardware-friendly widths, as torch-pruning's
            ``round_to`` (SIMD / NCHWc blocks of 8 or 16 channels keep fast kernels; see RESULTS.md,
            "Deployment"). Applied at every freeze; the warm start aims at the rounded widths.
        bounds: default kept-fraction bounds of every group.
        layer_bounds: per-layer overrides, keyed by a producer layer's qualified name.
        exclude: qualified layer names never to prune (any group containing one stays intact).
        exclude_types: layer classes never to prune.
        root_types: layer classes whose output channels may be gated.
    """

    mode: BudgetMode | None = None
    target: float | None = None
    alpha: float = 1.0
    controller_rate: float = 0.05
    tolerance: float = 0.01
    prune_shortcuts: bool = False
    score_input: ScoreInput = ScoreInput.WEIGHT
    weight_grad: bool = False
    init_score: float = 0.25
    warm_start: bool = True
    ramp_steps: int = 0
    activation: GateActivation = GateActivation.BINARY
    sigmoid_k: float = 4.0
    anneal_steps: int = 0
    round_to: int = 1
    bounds: LayerBounds = field(default_factory=LayerBounds)
    layer_bounds: Mapping[str, LayerBounds] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    exclude_types: tuple[type, ...] = ()
    root_types: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        default = BudgetMode.TARGET if self.target is not None else BudgetMode.PAPER
        object.__setattr__(self, "mode", _enum(BudgetMode, "mode", default if self.mode is None else self.mode))
        object.__setattr__(self, "score_input", _enum(ScoreInput, "score_input", self.score_input))
        object.__setattr__(self, "activation", _enum(GateActivation, "activation", self.activation))
        if self.target is not None:
            check_number("target", self.target, "(0, 1]", what="")
        if self.mode is BudgetMode.TARGET and self.target is None:
            raise ConfigError("mode='target' needs target=<fraction of the original cost in (0, 1]>")
        if self.mode is BudgetMode.PAPER and self.target is not None:
            raise ConfigError(f"mode='paper' trains with alpha * log(1 + cost) and has no target, but "
                              f"target={self.target!r} was given: drop mode to train toward the target "
                              "(mode='target'), or drop target")
        for name in ("alpha", "controller_rate"):
            check_number(name, getattr(self, name), ">= 0", type_error=ConfigError)
        check_number("sigmoid_k", self.sigmoid_k, "> 0", type_error=ConfigError)
        check_number("tolerance", self.tolerance, "(0, 0.5)", what="", type_error=ConfigError)
        check_number("init_score", self.init_score, "(0, 0.5)", what="", type_error=ConfigError)  # open, |s| < 1/2
        check_number("ramp_steps", self.ramp_steps, ">= 0", integer=True, type_error=ConfigError)
        check_number("anneal_steps", self.anneal_steps, ">= 0", integer=True, type_error=ConfigError)
        check_number("round_to", self.round_to, ">= 1", integer=True, type_error=ConfigError)
        if self.anneal_steps and self.activation is not GateActivation.SIGMOID:
            raise ConfigError(f"anneal_steps={self.anneal_steps} anneals the sigmoid's scale: it needs "
                              "activation='sigmoid' (binary gates are hard already)")
        for name in ("prune_shortcuts", "weight_grad", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigTypeError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.bounds, LayerBounds):
            raise ConfigTypeError(f"bounds must be a LayerBounds, got {type(self.bounds).__name__}")
        if not isinstance(self.layer_bounds, Mapping):
            raise ConfigTypeError(f"layer_bounds must be a dict {{layer name: LayerBounds}}, got "
                                  f"{type(self.layer_bounds).__name__}")
        for key, value in self.layer_bounds.items():
            if not isinstance(value, LayerBounds):
                raise ConfigTypeError(f"layer_bounds[{key!r}] must be a LayerBounds, got {type(value).__name__}")
        object.__setattr__(self, "exclude", _sequence("exclude", self.exclude, str, "layer names"))
        for name in ("exclude_types", "root_types"):
            object.__setattr__(self, name, _sequence(name, getattr(self, name), type, "layer classes"))

    def selection(self) -> dict[str, Any]:
        """The fields that choose the gated groups, as :func:`~wgates_plugin.groups.gated_groups` takes them."""
        return {"exclude": self.exclude, "exclude_types": self.exclude_types, "root_types": self.root_types,
                "prune_shortcuts": self.prune_shortcuts}

    def bounds_for(self, layer_names: list[str]) -> LayerBounds:
        """Bounds of a group: the tightest of its layers' overrides, else the default."""
        hits = [self.layer_bounds[n] for n in layer_names if n in self.layer_bounds]
        if not hits:
            return self.bounds
        return LayerBounds(max(b.min_keep for b in hits), min(b.max_keep for b in hits))


def _sequence(name: str, value: object, kind: type, what: str) -> tuple:
    """``value`` as a tuple of ``kind`` (a list, tuple or set of them)."""
    if isinstance(value, (str, type)) or not isinstance(value, (list, tuple, set, frozenset)):
        hint = f" (did you mean [{value!r}]?)" if isinstance(value, (str, type)) else ""
        raise ConfigTypeError(f"{name}={value!r} must be a list of {what}{hint}")
    wrong = [v for v in value if not isinstance(v, kind)]
    if wrong:
        raise ConfigTypeError(f"{name} must hold only {what}; got {wrong[:3]!r}")
    return tuple(value)


def _enum(cls: type[enum.Enum], name: str, value: object) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"{name}={value!r} is not one of {allowed}") from None
