"""Building classification models by name (torchvision, timm, or the user's own function), with a
recipe that can rebuild them.

An :class:`Architecture` is what :mod:`wgates_plugin.app.serialization` writes next to a pruned model's
weights: which constructor to call (a torchvision or timm model name, or the name of a builder the user
passes back at load time), its keyword arguments, and the example input shape used for tracing.
:func:`parse_model_spec` reads the ``--model`` forms: ``resnet18`` or ``torchvision:resnet18``,
``timm:convnext_atto``, and ``package.module:function`` (the user's builder, imported by
:func:`load_entry_point`; a saved model records only its name, and loading it needs the function
passed back, so no code named in a file is ever imported).

Example:
    >>> from wgates_plugin.app.models import Architecture, build_model
    >>> arch = Architecture("resnet18", {"num_classes": 10}, input_shape=(1, 3, 32, 32))
    >>> model = build_model(arch)
    >>> model.fc.out_features
    10
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn

from ..errors import ConfigError, ConfigTypeError

__all__ = ["TORCHVISION", "TIMM", "CUSTOM", "Architecture", "classification_models", "timm_models",
           "check_model_name", "parse_model_spec", "load_entry_point", "builder_kwargs", "model_from_spec",
           "build_model"]

TORCHVISION = "torchvision"
TIMM = "timm"
CUSTOM = "custom"
_SOURCES = (TORCHVISION, TIMM, CUSTOM)

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Architecture:
    """How to rebuild a model before its pruning history is replayed.

    Attributes:
        name: a torchvision classification model name (``source="torchvision"``), a timm model name
            (``source="timm"``, built with ``pretrained=False``), or the name of the builder the user
            passes to the loader (``source="custom"``, e.g. ``"mypackage.nets:build"``).
        kwargs: JSON-serializable keyword arguments of the constructor (e.g. ``{"num_classes": 10}``).
        input_shape: shape of the example input used to trace the model, batch first.
        source: ``"torchvision"``, ``"timm"`` or ``"custom"``.
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
        if self.source != CUSTOM:
            check_model_name(self.name, self.source)

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


@functools.lru_cache(maxsize=1)
def timm_models() -> tuple[str, ...]:
    """Names of timm's models (needs the ``timm`` extra)."""
    return tuple(_timm().list_models())


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm models need the timm extra: pip install 'wgates-plugin[timm]'") from None
    return timm


def check_model_name(name: str, source: str = TORCHVISION) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a torchvision classification model (or a timm model)."""
    known = classification_models() if source == TORCHVISION else timm_models()
    if name not in known:
        close = [k for k in known if name.lower()[:4] in k][:6]
        hint = f" Did you mean one of {close}?" if close else ""
        what = "a torchvision classification model" if source == TORCHVISION else "a timm model"
        listing = f" Known: {', '.join(known)}" if source == TORCHVISION else " (timm.list_models() lists them)"
        also = (" It is a timm model: pass timm:" + name + "." if source == TORCHVISION and _in_timm(name) else "")
        raise ConfigError(f"model={name!r} is not {what}.{hint}{also}{listing}")


def _in_timm(name: str) -> bool:
    try:
        return name in timm_models()
    except ConfigError:
        return False


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``(source, name)`` of a ``--model`` value.

    ``resnet18`` and ``torchvision:resnet18`` are torchvision's, ``timm:resnet50`` timm's; any other
    ``module:function`` (``mypackage.nets:build``) is the user's builder (``source="custom"``).

    Raises:
        ConfigError: an empty name, or a name its library does not have.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigTypeError(f"model={spec!r} must be a model name such as resnet18, timm:resnet50 or "
                              "mypackage.nets:build")
    prefix, sep, rest = spec.partition(":")
    if not sep:
        source, name = TORCHVISION, spec
    elif prefix in (TORCHVISION, TIMM):
        source, name = prefix, rest
    else:
        if not prefix or not rest or not all(p.isidentifier() for p in prefix.split(".")) or not rest.isidentifier():
            raise ConfigError(f"model={spec!r}: a custom builder is 'module:function' (e.g. mypackage.nets:build), "
                              "with a dotted module path and a function name")
        return CUSTOM, spec
    check_model_name(name, source)
    return source, name


def load_entry_point(spec: str) -> Builder:
    """Import the user's builder ``module:function`` (a command-line choice, never a name read from a file).

    Raises:
        ConfigError: the module cannot be imported, or has no such attribute.
        ConfigTypeError: the attribute is not callable.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model={spec!r}: cannot import module '{module_name}' ({type(exc).__name__}: {exc}); "
                          "run from the folder that holds it or install its package") from None
    builder = getattr(module, attr, None)
    if builder is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:10]
        raise ConfigError(f"model={spec!r}: module '{module_name}' has no '{attr}' (its functions: {public})")
    if not callable(builder):
        raise ConfigTypeError(f"model={spec!r}: '{attr}' is a {type(builder).__name__}, not a function that "
                              "returns an nn.Module")
    return builder


def builder_kwargs(builder: Builder, num_classes: int) -> dict[str, Any]:
    """``{"num_classes": n}`` when ``builder`` takes it (by name or ``**kwargs``), else ``{}``."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return {}
    takes = any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {"num_classes": num_classes} if takes else {}


# torchvision models whose auxiliary classifiers turn the training output into a tuple: built without them
_NO_AUX = {"googlenet", "inception_v3"}


def model_from_spec(spec: str, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, Architecture]:
    """A freshly initialized model for a ``--model`` value (:func:`parse_model_spec`) and its recipe.

    A custom builder gets ``num_classes`` when its signature takes it; the recipe records the spec as the
    builder's name, so loading the saved model asks for the function back.
    """
    source, name = parse_model_spec(spec)
    builder = load_entry_point(spec) if source == CUSTOM else None
    if builder is not None:
        kwargs = builder_kwargs(builder, num_classes)
    else:
        kwargs = {"num_classes": num_classes, **({"aux_logits": False} if source == TORCHVISION and name in _NO_AUX
                                                else {})}
    arch = Architecture(name, kwargs, input_shape=input_shape, source=source)
    return build_model(arch, builder), arch


def build_model(arch: Architecture, builder: Builder | None = None) -> nn.Module:
    """A freshly initialized model for ``arch`` (no pretrained weights are downloaded).

    Args:
        arch: the recipe.
        builder: the constructor for ``source="custom"`` architectures (called with ``arch.kwargs``);
            for torchvision and timm architectures it overrides the library's constructor.

    Raises:
        ConfigError: a custom architecture and no builder; a timm architecture without timm.
        ConfigTypeError: the builder returned something other than an ``nn.Module``.
    """
    if builder is not None:
        model = builder(**arch.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigTypeError(f"the builder of {arch.name!r} returned a {type(model).__name__}, not an nn.Module")
        return model
    if arch.source == CUSTOM:
        raise ConfigError(f"the architecture was built by the custom builder {arch.name!r}; "
                          f"pass it back: builder=<the function that builds {arch.name!r}>")
    if arch.source == TIMM:
        return _timm().create_model(arch.name, pretrained=False, **arch.kwargs)
    return torchvision.models.get_model(arch.name, weights=None, **arch.kwargs)
