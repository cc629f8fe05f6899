"""NNI ``config_list`` for W-Gates: validation, canonicalization and per-layer settings.

NNI itself validates a config entry's *shape* (its schema) but silently accepts entries that select
nothing (``op_types: ['conv2d']``) or ratios that make no sense. Here every entry is checked up front
and every mistake raises a :class:`~wgates_plugin.errors.ConfigError` that says what is wrong:

1. each entry is a dict whose keys NNI knows (an unknown key names the closest known one);
2. ratios lie in range: ``sparse_ratio`` and ``min_sparse_ratio`` in [0, 1), ``max_sparse_ratio`` in (0, 1];
3. W-Gates-specific limits: whole output channels only (no ``sparse_threshold``, ``granularity`` other
   than ``'default'`` / ``'out_channel'``, ``apply_method`` other than ``'mul'``, ``align``,
   ``internal_metric_block``);
4. NNI's own schema accepts the entry;
5. the entry selects at least one layer of the model (with a "did you mean" for a lower-case
   ``conv2d`` or a misspelled name).

Legacy NNI 2 entries are translated first: ``{'exclude': True, 'op_names': [...]}`` excludes those
layers from every other entry, and ``sparsity`` / ``sparsity_per_layer`` / ``total_sparsity`` become
``sparse_ratio`` (``total_sparsity`` with a ``global_group_id`` of its own).

Selection follows NNI: a layer is chosen by the first entry that selects it (later entries do not
override it), and ``exclude_op_*`` remove layers from their entry.
"""

from __future__ import annotations

import copy
import difflib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nni.compression.base.config import default_config_schema, select_modules_by_config, trans_legacy_config_list
from nni.compression.base.setting import canonicalize_settings
from schema import SchemaError
from torch import nn

from ..errors import ConfigError, ConfigTypeError
from ..utils import check_number

__all__ = ["LayerSetting", "canonical_config_list", "select_layers", "PRUNABLE_TYPES"]

SELECTORS = ("op_types", "op_names", "op_names_re")
EXCLUDERS = ("exclude_op_types", "exclude_op_names", "exclude_op_names_re")
SETTING_KEYS = ("sparse_ratio", "sparse_threshold", "max_sparse_ratio", "min_sparse_ratio", "global_group_id",
                "dependency_group_id", "internal_metric_block", "granularity", "apply_method", "align")
LEGACY_KEYS = ("exclude", "sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer",
               "op_partial_names")
KNOWN_KEYS = SELECTORS + EXCLUDERS + ("target_names", "target_settings") + SETTING_KEYS + LEGACY_KEYS
# Layers W-Gates can select: producers of output channels and the per-channel BatchNorms after them.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class LayerSetting:
    """What the config list asks for one selected layer (NNI's canonical ``weight`` setting).

    Attributes:
        name: qualified layer name.
        entry: index of the ``config_list`` entry that selected it.
        sparse_ratio: fraction of output channels to remove, or None.
        min_sparse_ratio / max_sparse_ratio: bounds on that fraction, or None.
        global_group_id: id of a shared budget, or None.
    """

    name: str
    entry: int
    sparse_ratio: float | None = None
    min_sparse_ratio: float | None = None
    max_sparse_ratio: float | None = None
    global_group_id: int | str | None = None

    def key(self) -> tuple:
        """What must agree between the layers of one coupled group."""
        return (self.sparse_ratio, self.min_sparse_ratio, self.max_sparse_ratio, self.global_group_id)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in zip(("sparse_ratio", "min_sparse_ratio", "max_sparse_ratio",
                                             "global_group_id"), self.key()) if v is not None]
        return f"'{self.name}' ({', '.join(parts) or 'no ratio'}; config_list[{self.entry}])"


# ---------------------------------------------------------------------------- canonical list
def canonical_config_list(config_list: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate ``config_list`` and return it in NNI 3's canonical form (legacy entries translated).

    Raises:
        ConfigTypeError: ``config_list`` is not a list of dicts.
        ConfigError: an entry has an unknown key, a ratio out of range, a setting W-Gates cannot
            honour, or NNI's schema rejects it.
    """
    if isinstance(config_list, (str, bytes, Mapping)) or not isinstance(config_list, Sequence):
        raise ConfigTypeError(f"config_list must be a list of dicts, got {type(config_list).__name__}")
    if not config_list:
        raise ConfigError("config_list is empty: give at least one entry, e.g. "
                          "[{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}]")
    for i, entry in enumerate(config_list):
        if not isinstance(entry, Mapping):
            raise ConfigTypeError(f"config_list[{i}] must be a dict, got {type(entry).__name__}")
        _check_keys(i, entry)
    entries = _apply_legacy_excludes([copy.deepcopy(dict(e)) for e in config_list])
    entries = [_translate_legacy(i, e) for i, e in entries]
    for i, entry in entries:
        _check_values(i, entry)
        _check_schema(i, entry)
    return [e for _, e in entries]


def _check_keys(i: int, entry: Mapping[str, Any]) -> None:
    for key in entry:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"config_list[{i}] has an unknown key '{key}'{hint}; "
                              f"known keys: {', '.join(KNOWN_KEYS[:-len(LEGACY_KEYS)])}")
    if not any(k in entry for k in SELECTORS + ("op_partial_names",)):
        raise ConfigError(f"config_list[{i}] selects no layer: give 'op_types', 'op_names' or 'op_names_re'")
    for key in SELECTORS + EXCLUDERS + ("op_partial_names", "target_names"):
        value = entry.get(key, [])
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            hint = f" (did you mean [{value!r}]?)" if isinstance(value, str) else ""
            raise ConfigTypeError(f"config_list[{i}]: {key}={value!r} must be a list of strings{hint}")
    if not isinstance(entry.get("exclude", False), bool):
        raise ConfigTypeError(f"config_list[{i}]: exclude={entry['exclude']!r} must be True or False")
    group = entry.get("global_group_id")
    if "global_group_id" in entry and (isinstance(group, bool) or not isinstance(group, (int, str))):
        raise ConfigTypeError(f"config_list[{i}]: global_group_id={group!r} must be an int or a string")
    if not isinstance(entry.get("target_settings", {}), Mapping):
        raise ConfigTypeError(f"config_list[{i}]: target_settings must be a dict")


def _apply_legacy_excludes(entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """NNI 2's ``{'exclude': True, ...}`` entries become ``exclude_op_*`` of every other entry."""
    excluded: dict[str, list[str]] = {key: [] for key in EXCLUDERS}
    kept = []
    for i, entry in enumerate(entries):
        if entry.pop("exclude", False):
            for sel, exc in zip(SELECTORS, EXCLUDERS):
                excluded[exc] += list(entry.get(sel, []))
        else:
            kept.append((i, entry))
    if not kept:
        raise ConfigError("config_list only excludes layers: add an entry that selects the layers to prune")
    for _, entry in kept:
        for exc, names in excluded.items():
            if names:
                entry[exc] = list(entry.get(exc, [])) + names
    return kept


def _translate_legacy(i: int, entry: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if not any(k in entry for k in LEGACY_KEYS):
        return i, entry
    total = "total_sparsity" in entry
    (new,) = trans_legacy_config_list([entry])
    weight = new.get("target_settings", {}).get("weight", {})
    if total:  # NNI 2's total_sparsity is one shared budget per entry
        weight.pop("group_id", None)
        weight["global_group_id"] = f"total_sparsity_{i}"
    for key in EXCLUDERS:
        if not new.get(key):
            new.pop(key, None)
    return i, new


def weight_setting(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's settings for the ``weight`` target: top-level keys overridden by ``target_settings``."""
    top = {k: v for k, v in entry.items() if k in SETTING_KEYS}
    return {**top, **dict(entry.get("target_settings", {}).get("weight", {}))}


def _check_values(i: int, entry: Mapping[str, Any]) -> None:
    where = f"config_list[{i}]"
    setting = weight_setting(entry)
    for key, allowed in (("sparse_ratio", "[0, 1)"), ("min_sparse_ratio", "[0, 1)"), ("max_sparse_ratio", "(0, 1]")):
        if setting.get(key) is not None:
            check_number(f"{where}: {key}", setting[key], allowed, what="", kind="a float")
    low, high = setting.get("min_sparse_ratio"), setting.get("max_sparse_ratio")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}: min_sparse_ratio={low} exceeds max_sparse_ratio={high}")
    _check_unsupported(where, setting)
    targets = entry.get("target_names", ["weight", "bias"])
    if "weight" not in targets or not set(targets) <= {"weight", "bias"}:
        raise ConfigError(f"{where}: target_names={targets!r}; W-Gates prunes output channels through "
                          "'weight' (and aligns 'bias'): use ['weight'] or ['weight', 'bias']")
    if "dependency_group_id" in setting:
        warnings.warn(f"{where}: dependency_group_id is not needed and is ignored: W-Gates finds coupled "
                      "layers from the dependency graph and gives each coupled group one shared gate",
                      stacklevel=4)


def _check_unsupported(where: str, setting: Mapping[str, Any]) -> None:
    if setting.get("sparse_threshold") is not None:
        raise ConfigError(f"{where}: sparse_threshold is not supported: W-Gates learns which channels to "
                          "keep; give sparse_ratio (fixed per layer) or global_group_id (shared budget)")
    if setting.get("granularity", "default") not in ("default", "out_channel"):
        raise ConfigError(f"{where}: granularity={setting['granularity']!r}; W-Gates removes whole output "
                          "channels: use 'default' or 'out_channel'")
    if setting.get("apply_method", "mul") != "mul":
        raise ConfigError(f"{where}: apply_method={setting['apply_method']!r}; W-Gates masks by 'mul' only")
    for key in ("align", "internal_metric_block"):
        if setting.get(key) is not None:
            raise ConfigError(f"{where}: '{key}' is not supported: W-Gates aligns coupled layers and "
                              "biases itself from the dependency graph")


def _check_schema(i: int, entry: Mapping[str, Any]) -> None:
    try:
        default_config_schema("pruning").validate(dict(entry))
    except SchemaError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"NNI's config schema rejects config_list[{i}]: {message}") from None


# ---------------------------------------------------------------------------- selection
def select_layers(model: nn.Module, entries: Sequence[Mapping[str, Any]]) -> tuple[dict[str, LayerSetting], set[str]]:
    """Resolve canonical ``entries`` on ``model``.

    Returns:
        ``(settings, excluded)``: the setting of every selected layer (first entry wins, as in NNI)
        and the layers an ``exclude_op_*`` names that no entry selects.

    Raises:
        ConfigError: an entry selects no layer (the message says why), or selects a layer type
            W-Gates cannot prune.
    """
    settings: dict[str, LayerSetting] = {}
    excluded: set[str] = set()
    names = {n for n, _ in model.named_modules()}
    for i, entry in enumerate(entries):
        if not set(entry.get("op_names", [])) <= names:  # NNI raises a bare KeyError on them
            raise ConfigError(f"config_list[{i}] selects no layer of the model: {_why_empty(model, entry)}")
        modules, public, _ = select_modules_by_config(model, dict(entry))
        if not modules:
            raise ConfigError(f"config_list[{i}] selects no layer of the model: {_why_empty(model, entry)}")
        for name, module in sorted(modules.items()):
            _check_type(i, name, module)
            settings.setdefault(name, _setting(i, name, module, public))
        excluded |= _excluded(model, entry)
    return settings, excluded - set(settings)


def _setting(i: int, name: str, module: nn.Module, public: Mapping[str, Any]) -> LayerSetting:
    weight = canonicalize_settings(module, dict(public), "pruning")["weight"]
    return LayerSetting(name, i, weight.get("sparse_ratio"), weight.get("min_sparse_ratio"),
                        weight.get("max_sparse_ratio"), weight.get("global_group_id"))


def _check_type(i: int, name: str, module: nn.Module) -> None:
    if not isinstance(module, PRUNABLE_TYPES):
        raise ConfigError(f"config_list[{i}] selects '{name}', a {type(module).__name__}; W-Gates prunes the "
                          "output channels of Conv2d and Linear layers (selecting a BatchNorm selects its "
                          "channels): narrow the entry with op_types, e.g. ['Conv2d']")


def _excluded(model: nn.Module, entry: Mapping[str, Any]) -> set[str]:
    names = set(entry.get("exclude_op_names", []))
    types = set(entry.get("exclude_op_types", []))
    patterns = list(entry.get("exclude_op_names_re", []))
    return {n for n, m in model.named_modules()
            if n in names or type(m).__name__ in types or any(re.match(p, n) for p in patterns)}


def _why_empty(model: nn.Module, entry: Mapping[str, Any]) -> str:
    classes = sorted({type(m).__name__ for m in model.modules()})
    names = [n for n, _ in model.named_modules()]
    for t in entry.get("op_types", []):
        if t not in classes:
            hint = _did_you_mean(t, classes) or f" (its classes: {', '.join(classes)})"
            return f"op_types contains '{t}', which is not a module class of the model" + hint
    for n in entry.get("op_names", []):
        if n not in names:
            return f"op_names contains '{n}', which is not a layer of the model" + _did_you_mean(n, names)
    for p in entry.get("op_names_re", []):
        if not any(re.match(p, n) for n in names):
            return f"op_names_re pattern {p!r} matches no layer name"
    return "the layers its op_names / op_names_re and op_types choose do not overlap, or all are excluded"


def _did_you_mean(value: str, options: Sequence[str]) -> str:
    same_case = [o for o in options if o.lower() == value.lower()]
    if same_case:
        return f" (did you mean '{same_case[0]}'? names are case-sensitive)"
    close = difflib.get_close_matches(value, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
