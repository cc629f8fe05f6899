"""Building torchvision classification models by name, with a recipe that can rebuild them.

An :class:`Architecture` is what :mod:`wgates_plugin.app.serialization` writes next to a pruned model's
weights: which constructor to call (a torchvision model name, or the name of a builder the user
passes back at load time), its keyword arguments, and the example input shape used for tracing.

Example:
    >>> from wgates_plugin.app.models import Architecture, build_model
    >>> arch = Architecture("resnet18", {"num_classes": 10}, input_shape=(1, 3, 32, 32))
    >>> model = build_model(arch)
    >>> model.fc.out_features
    10
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn

from ..errors import ConfigError, ConfigTypeError

__all__ = ["TORCHVISION", "CUSTOM", "Architecture", "classification_models", "check_model_name", "build_model"]

TORCHVISION = "torchvision"
CUSTOM = "custom"
_SOURCES = (TORCHVISION, CUSTOM)

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Architecture:
    """How to rebuild a model before its pruning history is replayed.

    Attributes:
        name: a torchvision classification model name (``source="torchvision"``), or the name of the
            builder the user passes to the loader (``source="custom"``).
        kwargs: JSON-serializable keyword arguments of the constructor (e.g. ``{"num_classes": 10}``).
        input_shape: shape of the example input used to trace the model, batch first.
        source: ``"torchvision"`` or ``"custom"``.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 3, 32, 32)
    source: str = TORCHVISION

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ConfigError(f"source={self.source!r} is not one of {_SOURCES}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigTypeError(f"name={self.name!r} must be a non-empty string")
        shape = tuple(self.input_shape)
        if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(f"input_shape={self.input_shape!r} must be positive ints, batch first")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if self.source == TORCHVISION:
            check_model_name(self.name)

    def example_input(self) -> torch.Tensor:
        """A zero tensor of ``input_shape`` (tracing needs shapes, not values)."""
        return torch.zeros(self.input_shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs), "input_shape": list(self.input_shape),
                "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Architecture:
        missing = {"name", "kwargs", "input_shape", "source"} - set(data)
        if missing:
            raise ConfigError(f"architecture record lacks {sorted(missing)}")
        return cls(data["name"], data["kwargs"], tuple(data["input_shape"]), data["source"])


@functools.lru_cache(maxsize=1)
def classification_models() -> tuple[str, ...]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a torchvision classification model."""
    known = classification_models()
    if name not in known:
        close = [k for k in known if name.lower()[:4] in k][:6]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ConfigError(f"model={name!r} is not a torchvision classification model.{hint} "
                          f"Known: {', '.join(known)}")


def build_model(arch: Architecture, builder: Builder | None = None) -> nn.Module:
    """A freshly initialized model for ``arch`` (no pretrained weights are downloaded).

    Args:
        arch: the recipe.
        builder: the constructor for ``source="custom"`` architectures (called with ``arch.kwargs``);
            for torchvision architectures it overrides ``torchvision.models.get_model``.

    Raises:
        ConfigError: a custom architecture and no builder.
    """
    if builder is not None:
        return builder(**arch.kwargs)
    if arch.source == CUSTOM:
        raise ConfigError(f"the architecture was built by the custom builder {arch.name!r}; "
                          f"pass it back: builder=<the function that builds {arch.name!r}>")
    return torchvision.models.get_model(arch.name, weights=None, **arch.kwargs)
