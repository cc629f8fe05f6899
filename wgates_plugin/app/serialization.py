"""Saving and loading pruned models without pickle: safetensors weights + a JSON recipe.

A pruned model's classes are the original ones with smaller tensors, so pickling the module is the
only way ``torch.save(model)`` can store it, and ``torch.load(weights_only=True)`` (the default since
torch 2.6) refuses that. Instead :func:`save_pruned` writes

* ``model.safetensors`` — the pruned state dict;
* ``pruning.json`` — the :class:`~wgates_plugin.app.models.Architecture` (constructor name, kwargs,
  example input shape) and torch-pruning's pruning history (``wg.history`` after ``wg.export()``).

:func:`load_pruned` builds the original architecture, replays the history through torch-pruning's
``DependencyGraph.load_pruning_history`` and loads the weights: the result computes exactly what the
saved model computed, and nothing in the files is ever executed.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError
from ..groups import build_graph
from .models import Architecture, Builder, build_model

__all__ = ["WEIGHTS_FILE", "RECIPE_FILE", "save_pruned", "load_pruned", "rebuild", "read_recipe", "load_weights"]

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "pruning.json"
FORMAT = "wgates-pruned"
FORMAT_VERSION = 1

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
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    entries = _check_history(history)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    recipe = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": arch.to_json(),
              "history": [list(e) for e in entries], "torch": torch.__version__}
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=1))
    return folder


def read_recipe(directory: str | Path) -> tuple[Architecture, list[HistoryEntry]]:
    """The architecture and pruning history stored in ``directory/pruning.json``.

    Raises:
        FileNotFoundError: the file is missing.
        ConfigError: it is not a W-Gates pruning record.
    """
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pruning recipe at '{path}' (expected {RECIPE_FILE} written by save_pruned)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"'{path}' is not valid JSON: {exc}") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found != FORMAT:
        raise ConfigError(f"'{path}' is not a {FORMAT} record (format={found!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ConfigError(f"'{path}' has version {data.get('version')!r}; this release reads version {FORMAT_VERSION}")
    return Architecture.from_json(data["architecture"]), _check_history(data["history"])


def rebuild(arch: Architecture, history: Sequence[Sequence[Any]], builder: Builder | None = None) -> nn.Module:
    """The pruned architecture with fresh weights: build ``arch`` and replay ``history`` on it.

    Load a state dict into the result (e.g. one read with ``torch.load(path, weights_only=True)``).

    Raises:
        ConfigError: the history names a layer the architecture lacks, or indices out of range.
    """
    model = build_model(arch, builder).eval()
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
        FileNotFoundError: a file is missing.
        ConfigError: the history or the weights do not fit the architecture.
    """
    folder = Path(directory)
    weights = folder / WEIGHTS_FILE
    arch, history = read_recipe(folder)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at '{weights}' (expected {WEIGHTS_FILE} written by save_pruned)")
    model = rebuild(arch, history, builder)
    load_weights(model, load_file(str(weights)), f"the replayed '{arch.name}'")
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
