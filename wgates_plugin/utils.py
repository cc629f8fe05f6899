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

import contextlib
import copy
import functools
import importlib
import math
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import ConfigError, ConfigTypeError

__all__ = ["call_model", "eval_outputs", "device_of", "dtype_of", "move_to", "kept_modes", "ModelGuard",
           "restored_on_error", "unchanged_on_error", "tensors_in", "check_number", "check_example",
           "check_names", "import_front_end"]

F = TypeVar("F", bound=Callable[..., Any])


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments, a tuple or list as positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def eval_outputs(model: nn.Module, inputs: Any) -> Any:
    """The model's outputs on ``inputs`` in eval mode under ``no_grad``; every module's mode is restored."""
    with kept_modes(model), torch.no_grad():
        return call_model(model.eval(), inputs)


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the train/eval mode of *every* module of ``model`` on exit.

    ``model.train(was_training)`` is not enough: it sets one mode on all submodules, so a model
    trained with some BatchNorm layers kept in eval mode would come back with them training.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class ModelGuard:
    """A snapshot of a model that :meth:`restore` puts back: every module's attributes, its
    parameter / buffer / submodule / hook dictionaries (the same dict objects, so handles taken
    before stay valid) and mode; with ``tensors=True`` also the values of its parameters and buffers
    (for work that writes into them in place).

    It is shallow by default: code that replaces a parameter (torch-pruning does) is undone, code that
    writes into one is undone only with ``tensors=True``.
    """

    def __init__(self, model: nn.Module, tensors: bool = False) -> None:
        self.saved = [(m, {k: (v, copy.copy(v) if isinstance(v, dict) else None) for k, v in vars(m).items()})
                      for m in model.modules()]
        self.values = ([(t, t.detach().clone()) for t in {id(t): t for t in _state_tensors(model)}.values()]
                       if tensors else [])

    def restore(self) -> None:
        for module, attrs in self.saved:
            now = vars(module)
            for key in [k for k in now if k not in attrs]:
                del now[key]
            for key, (value, content) in attrs.items():
                if content is not None:
                    value.clear()
                    value.update(content)
                now[key] = value
        with torch.no_grad():
            for tensor, value in self.values:
                if (tensor.shape, tensor.dtype, tensor.device) == (value.shape, value.dtype, value.device):
                    tensor.copy_(value)
                else:  # replaced through .data (another shape, dtype or device)
                    tensor.data = value


def _state_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from (b for b in model.buffers() if b is not None)


@contextlib.contextmanager
def restored_on_error(model: nn.Module, tensors: bool = False) -> Iterator[ModelGuard]:
    """Run the block; if it raises (an interrupt too), ``model`` is put back as it was (:class:`ModelGuard`)."""
    guard = ModelGuard(model, tensors)
    try:
        yield guard
    except BaseException:
        guard.restore()
        raise


def unchanged_on_error(init: F) -> F:
    """Decorate a constructor: if it raises, the first ``nn.Module`` among its arguments (the model, by
    position or by name) is left as it was (attributes, hooks, modes); on success only the documented
    changes remain."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        model = next((v for v in (*args, *kwargs.values()) if isinstance(v, nn.Module)), None)
        if model is None:
            return init(self, *args, **kwargs)
        with restored_on_error(model):
            return init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


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


def dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype of a module's parameters (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


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


def check_example(example_inputs: Any, what: str = "example_inputs") -> None:
    """Raise unless ``example_inputs`` holds at least one tensor and none of them is empty or non-finite:
    an empty batch would trace no channel and cost nothing (a zero reference, a NaN loss)."""
    tensors = list(tensors_in(example_inputs))
    if not tensors:
        raise ConfigTypeError(f"{what} must be a tensor (or a tuple / list / dict of them) the model accepts, "
                              f"got {type(example_inputs).__name__}")
    for t in tensors:
        if t.numel() == 0:
            raise ConfigError(f"{what} holds an empty tensor of shape {tuple(t.shape)}: pass a batch of at least one "
                              "sample")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{what} holds NaN or inf values (shape {tuple(t.shape)}): pass a finite batch")


def tensors_in(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``batch``: a tensor, or nested tuples, lists and dicts of them (others skipped)."""
    if torch.is_tensor(batch):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for b in batch:
            yield from tensors_in(b)
    elif isinstance(batch, dict):
        for b in batch.values():
            yield from tensors_in(b)


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
