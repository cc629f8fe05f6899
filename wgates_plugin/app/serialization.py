"""Saving and loading pruned models without pickle: safetensors weights + a JSON recipe.

A pruned model's classes are the original ones with smaller tensors, so pickling the module is the
only way ``torch.save(model)`` can store it, and ``torch.load(weights_only=True)`` (the default since
torch 2.6) refuses that. Instead :func:`save_pruned` writes

* ``model.safetensors`` — the pruned state dict;
* ``pruning.json`` — the :class:`~wgates_plugin.app.models.Architecture` (constructor name, kwargs,
  example input shape) and torch-pruning's pruning history (``wg.history`` after ``wg.export()``).

:func:`load_pruned` builds the original architecture, replays the history through torch-pruning's
``DependencyGraph.load_pruning_history`` and loads the weights: the result computes exactly what the
saved model computed, and nothing in the files is ever executed. The files are untrusted input:
``pruning.json`` is size-limited and checked field by field; the model it describes is first built
on the ``meta`` device, so a record declaring an absurd width or input is refused before anything
is allocated (:data:`~wgates_plugin.files.LIMITS`); the weights' header is checked against the
rebuilt model before a tensor is read, and their SHA-256 (recorded at save) is compared after, so a
changed byte is a :class:`~wgates_plugin.errors.FileFormatError`, never a different model. Both
files are written atomically.

Example:
    >>> import tempfile, torch, torchvision
    >>> from wgates_plugin import WGates
    >>> from wgates_plugin.app.models import Architecture
    >>> from wgates_plugin.app.serialization import save_pruned, load_pruned
    >>> arch = Architecture("resnet18", {"num_classes": 10}, input_shape=(1, 3, 32, 32))
    >>> model = torchvision.models.resnet18(num_classes=10).eval()
    >>> wg = WGates(model, arch.example_input(), target=0.5)
    >>> wg.freeze(); small = wg.export().eval()
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_pruned(folder, small, wg.history, arch)
    >>> again = load_pruned(folder)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.equal(again(x), small(x))
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FileFormatError, WGatesError
from ..files import LIMITS, read_json, read_tensors, save_tensors, tensors_digest, write_text
from ..groups import build_graph
from .models import Architecture, Builder, build_model

__all__ = ["WEIGHTS_FILE", "RECIPE_FILE", "save_pruned", "load_pruned", "rebuild", "read_recipe", "load_weights"]

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "pruning.json"
FORMAT = "wgates-pruned"
FORMAT_VERSION = 2  # 2: the weights' SHA-256 is recorded and checked

HistoryEntry = tuple[str, bool, list[int]]


def save_pruned(directory: str | Path, model: nn.Module, history: Sequence[Sequence[Any]],
                arch: Architecture) -> Path:
    """Write ``model``'s weights and the recipe that rebuilds its architecture into ``directory``.

    Args:
        directory: created if missing; ``model.safetensors`` and ``pruning.json`` are (over)written.
        model: the pruned model (e.g. ``wg.export()``, possibly fine-tuned since).
        history: torch-pruning's pruning history that turns ``arch`` into ``model``'s shapes
            (``wg.history``), a list of ``(layer name, out-channel pruning?, indices)``.
        arch: how to build the unpruned model.

    Returns:
        The directory.

    Each file is written to a temporary name and renamed into place (the weights first), so an
    interrupted save never leaves a torn file; interrupted between the two, the new weights do not
    match the old record's checksum and loading refuses them rather than build a wrong model.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    entries = _check_history(history)
    state = model.state_dict()
    digest = tensors_digest(state)
    save_tensors(folder / WEIGHTS_FILE, state, metadata={"format": FORMAT, "sha256": digest})
    recipe = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": arch.to_json(),
              "history": [list(e) for e in entries], "weights_sha256": digest, "torch": torch.__version__}
    write_text(folder / RECIPE_FILE, json.dumps(recipe, indent=1))
    return folder


def read_recipe(directory: str | Path) -> tuple[Architecture, list[HistoryEntry]]:
    """The architecture and pruning history stored in ``directory/pruning.json``.

    Raises:
        MissingFileError: the file is missing (also a ``FileNotFoundError``).
        FileFormatError: it is not a W-Gates pruning record, or a field is malformed or past the limits.
    """
    arch, history, _ = _read_record(Path(directory) / RECIPE_FILE)
    return arch, history


def _read_record(path: Path) -> tuple[Architecture, list[HistoryEntry], str]:
    data = read_json(path, "pruning recipe")
    found = data.get("format") if isinstance(data, dict) else None
    if found != FORMAT:
        raise FileFormatError(f"'{path}' is not a {FORMAT} record (format={found!r})")
    if data.get("version") != FORMAT_VERSION:
        raise FileFormatError(f"'{path}' has version {data.get('version')!r}; this release reads version "
                              f"{FORMAT_VERSION} (save the model again with this release)")
    digest = data.get("weights_sha256")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise FileFormatError(f"'{path}' has no valid weights_sha256 (the checksum of {WEIGHTS_FILE})")
    try:
        arch = Architecture.from_json(data["architecture"]) if isinstance(data.get("architecture"), dict) else None
        history = _check_history(data["history"]) if isinstance(data.get("history"), list) else None
    except (ConfigError, TypeError, ValueError) as exc:
        raise FileFormatError(f"'{path}': {exc}") from None
    if arch is None or history is None:
        raise FileFormatError(f"'{path}' needs an 'architecture' object and a 'history' list")
    _check_sizes(path, arch)
    return arch, history, digest


def _check_parameters(arch: Architecture, count: int) -> None:
    if count > LIMITS.tensor_elements:
        raise FileFormatError(f"'{arch.name}' with {arch.kwargs} would have {count} parameters, more than "
                              f"{LIMITS.tensor_elements} (wgates_plugin.files.LIMITS.tensor_elements)")


def _check_sizes(path: Path, arch: Architecture) -> None:
    elements = math.prod(arch.input_shape)
    if elements > LIMITS.input_elements:
        raise FileFormatError(f"'{path}' declares input_shape {arch.input_shape} ({elements} elements), more than "
                              f"{LIMITS.input_elements} (wgates_plugin.files.LIMITS.input_elements)")
    big = {k: v for k, v in arch.kwargs.items() if isinstance(v, int) and not isinstance(v, bool) and v > LIMITS.width}
    if big:
        raise FileFormatError(f"'{path}' declares constructor arguments {big}, above {LIMITS.width} "
                              "(wgates_plugin.files.LIMITS.width)")


def rebuild(arch: Architecture, history: Sequence[Sequence[Any]], builder: Builder | None = None) -> nn.Module:
    """The pruned architecture with fresh weights: build ``arch`` and replay ``history`` on it.

    Load a state dict into the result (e.g. one read with ``torch.load(path, weights_only=True)``).

    Raises:
        ConfigError: the history names a layer the architecture lacks, or indices out of range.
        FileFormatError: the architecture would have more parameters than ``LIMITS.tensor_elements``
            (counted on the ``meta`` device, before anything is allocated).
    """
    try:
        with torch.device("meta"):
            planned: int | None = sum(p.numel() for p in build_model(arch, builder).parameters())
    except WGatesError:
        raise
    except Exception as exc:
        # a constructor that reads tensor values (RegNet) cannot run on meta: count the real build (its widths
        # are bounded); any other failure is the constructor refusing the recorded arguments
        if not (isinstance(exc, (NotImplementedError, RuntimeError)) and "meta" in str(exc).lower()):
            raise FileFormatError(f"'{arch.name}' cannot be built with the recorded arguments {arch.kwargs}: "
                                  f"{type(exc).__name__}: {exc}") from None
        planned = None
    if planned is not None:
        _check_parameters(arch, planned)  # before anything is allocated
    model = build_model(arch, builder).eval()
    if planned is None:
        _check_parameters(arch, sum(p.numel() for p in model.parameters()))
    graph = build_graph(model, arch.example_input())
    modules = dict(model.named_modules())
    for step, entry in enumerate(_check_history(history)):
        _check_entry(step, entry, modules, graph, arch)
        graph.load_pruning_history([entry])  # replays one entry (a whole coupled group)
    return model


def load_pruned(directory: str | Path, builder: Builder | None = None) -> nn.Module:
    """The pruned model saved by :func:`save_pruned` in ``directory``, in eval mode.

    Args:
        directory: what :func:`save_pruned` wrote.
        builder: the constructor for models saved with a custom :class:`Architecture`.

    Raises:
        MissingFileError: a file is missing (also a ``FileNotFoundError``).
        FileFormatError: a file is corrupt or changed since it was saved (the weights' checksum), or
            declares sizes past :data:`~wgates_plugin.files.LIMITS`.
        ConfigError: the history or the weights do not fit the architecture.
    """
    folder = Path(directory)
    arch, history, digest = _read_record(folder / RECIPE_FILE)
    model = rebuild(arch, history, builder)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    state, _ = read_tensors(weights, "weights file", shapes)
    if tensors_digest(state) != digest:
        raise FileFormatError(f"'{weights}' does not match the checksum recorded in {RECIPE_FILE}: the weights were "
                              "changed or damaged after saving (or a save was interrupted between the two files); "
                              "refused")
    load_weights(model, state, f"the replayed '{arch.name}'")
    return model.eval()


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state)`` with an error naming ``what`` and listing what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: saved {tuple(state[k].shape)}, architecture {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"the weights do not fit {what}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {wrong[:5]}. HINT: save weights and history of the same model"
        )
    model.load_state_dict(state)


def _check_history(history: Sequence[Sequence[Any]]) -> list[HistoryEntry]:
    entries = []
    for step, entry in enumerate(history):
        ok = (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], bool) and isinstance(entry[2], (list, tuple))
              and all(isinstance(i, int) and not isinstance(i, bool) for i in entry[2]))
        if not ok:
            raise ConfigError(f"pruning history entry {step} = {entry!r} is not (layer name, bool, [int indices])")
        entries.append((entry[0], entry[1], [int(i) for i in entry[2]]))
    return entries


def _check_entry(step: int, entry: HistoryEntry, modules: dict[str, nn.Module], graph: Any,
                 arch: Architecture) -> None:
    name, out, idxs = entry
    if name not in modules:
        raise ConfigError(f"pruning history step {step} prunes layer '{name}', which '{arch.name}' does not have; "
                          "the history does not fit this architecture")
    pruner = graph.get_pruner_of_module(modules[name])
    if pruner is None:
        raise ConfigError(f"pruning history step {step} prunes '{name}', which torch-pruning cannot prune")
    width = int(pruner.get_out_channels(modules[name]) if out else pruner.get_in_channels(modules[name]))
    if idxs and (min(idxs) < 0 or max(idxs) >= width or len(set(idxs)) >= width):
        raise ConfigError(
            f"pruning history step {step} removes channels {_brief(idxs)} of '{name}', which has {width} "
            f"{'output' if out else 'input'} channels at that point; the history does not fit '{arch.name}'"
        )


def _brief(idxs: list[int]) -> str:
    return str(idxs) if len(idxs) <= 6 else f"[{', '.join(map(str, idxs[:6]))}, ... ({len(idxs)} in all)]"
