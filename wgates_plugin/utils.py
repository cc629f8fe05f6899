"""Ground-floor helpers every layer uses: calling a model on a batch, devices, argument checks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from wgates_plugin.utils import call_model, check_number, device_of, move_to
    >>> call_model(nn.Identity(), {"input": torch.ones(2)}).tolist()
    [1.0, 1.0]
    >>> device_of(nn.Linear(2, 2)).type
    'cpu'
    >>> move_to((torch.ones(1), "label"), torch.device("cpu"))[1]
    'label'
    >>> check_number("ratio", 1.5, "(0, 1]", what="a fraction")
    Traceback (most recent call last):
    ...
    wgates_plugin.errors.ConfigError: ratio=1.5 must be a fraction in (0, 1]
"""

from __future__ import annotations

import importlib
import math
import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ConfigTypeError

__all__ = ["call_model", "eval_outputs", "device_of", "move_to", "check_number", "check_names", "import_front_end"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments, a tuple or list as positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def eval_outputs(model: nn.Module, inputs: Any) -> Any:
    """The model's outputs on ``inputs`` in eval mode under ``no_grad``; its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    finally:
        model.train(was_training)


def device_of(obj: Any) -> torch.device:
    """Where a module's parameters (or a batch's tensors) live; the CPU when it has none."""
    if isinstance(obj, nn.Module):
        param = next(obj.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    if isinstance(obj, torch.Tensor):
        return obj.device
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return next((device_of(v) for v in values if isinstance(v, (torch.Tensor, tuple, list, dict))),
                torch.device("cpu"))


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested tuples, lists and dicts too) moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _within(value: float, allowed: str) -> bool:
    """``value`` in an interval written ``'(0, 1]'`` / ``'[1, 8]'``, or a bound written ``'>= 1'``."""
    if allowed[0] in "([":
        low, high = (float(v) for v in allowed[1:-1].split(","))
        return (low < value if allowed[0] == "(" else low <= value) and \
            (value < high if allowed[-1] == ")" else value <= high)
    op, bound = allowed.split()
    return bool(_OPS[op](value, float(bound)))


def check_number(name: str, value: object, allowed: str, *, integer: bool = False, what: str | None = None,
                 kind: str | None = None, type_error: type[Exception] = ConfigTypeError) -> None:
    """Raise unless ``value`` is a finite number (an int if ``integer``; never a bool) within ``allowed``:
    an interval ``'(0, 1]'``, ``'[1, 8]'`` or a bound ``'>= 1'``, ``'> 0'``.

    A value that is not a number raises ``type_error`` (:class:`ConfigTypeError`), one outside
    ``allowed`` :class:`ConfigError`; the message is ``'{name}={value!r} must be {what} {allowed}'``,
    ``what`` defaulting to ``kind`` (``'an int'`` / ``'a number'``; ``''`` says only the interval).
    """
    kind = kind or ("an int" if integer else "a number")
    phrase = f"in {allowed}" if allowed[0] in "([" else allowed
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise type_error(f"{name}={value!r} must be {what or kind} {phrase}")
    if not (math.isfinite(value) and _within(float(value), allowed)):
        described = kind if what is None else what
        raise ConfigError(f"{name}={value!r} must be {described + ' ' if described else ''}{phrase}")


def check_names(model: nn.Module, what: str, names: Iterable[str]) -> None:
    """Raise :class:`ConfigError` when ``names`` holds a qualified module name ``model`` does not have."""
    unknown = set(names) - {n for n, _ in model.named_modules()}
    if unknown:
        raise ConfigError(f"{what} names layers that are not in the model: {sorted(unknown)}")


def import_front_end(module: str) -> Any:
    """Import a front-end module; a missing optional dependency names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        extra = {"nni": "nni", "pytorch_lightning": "lightning"}.get(missing)
        if extra is None:
            raise
        raise ImportError(f"{module} needs the optional dependency '{missing}': "
                          f"pip install 'wgates-plugin[{extra}]'") from exc
