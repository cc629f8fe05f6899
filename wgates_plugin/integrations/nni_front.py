"""What both NNI 3 front ends share: config list → planned channel groups, the layers NNI wraps, the
``compress()`` contract and the masks.

:class:`~wgates_plugin.integrations.nni.WGatesPruner` and
:class:`~wgates_plugin.integrations.nni_gate_decorator.GateDecoratorPruner` derive from
:class:`GatingPruner`; they differ in the core they attach and in what a training step does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from nni.compression.base.compressor import Pruner
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.utils import Evaluator
from torch import nn

from ..core import EfficiencyArg
from ..errors import ConfigError, ConfigTypeError, StateError
from ..export import Masks
from ..groups import trace_groups
from ..utils import check_number, unchanged_on_error
from .nni_config import canonical_config_list, select_layers
from .nni_plan import GroupPlan, plan_groups

__all__ = ["GatingPruner", "Text", "evaluator_dummy_input", "full_masks", "check_front_end_arguments"]


# How a front end's messages speak of its method: why compress() needs an evaluator, the example call's
# arguments, what ``training_steps`` counts, how compress() uses it, and the state after compress().
class Text(NamedTuple):
    why: str
    example: str
    steps: str
    runs: str
    done: str


class GatingPruner(Pruner):
    """An NNI pruner whose masks come from a :class:`~wgates_plugin.core.ChannelGating` core.

    The constructor validates the common arguments, reads the config list, traces the model once
    (``dummy_input``, or the evaluator's) to plan the gated groups, lets the subclass build its core
    from ``self.plans`` (:meth:`_build_core`, with the method's own ``options`` checked by
    :meth:`_check_options`) and wraps the layers. Subclasses implement NNI's ``_single_compress`` and
    the evaluator patches, and set the messages below.

    Args:
        model: the model to prune (trained, ideally). It is wrapped in place, as by every NNI pruner.
        config_list: NNI config list (see the subclass for what it may set).
        evaluator: NNI ``TorchEvaluator`` or ``LightningEvaluator``; required by :meth:`compress`.
        training_steps: optimizer steps :meth:`compress` may train for; required by it.
        dummy_input: a batch the model accepts, used to trace channel dependencies. Default: the
            evaluator's ``dummy_input``.
        target: keep this fraction of the unpruned cost of ``efficiency`` (FLOPs: conv + linear MACs,
            by default), in (0, 1].
        efficiency: a custom cost model instead of FLOPs (e.g. a latency predictor): an
            :class:`~wgates_plugin.efficiency.EfficiencyModel` or a callable ``groups -> model``.
        **options: the method's knobs (see the subclass).

    Example (both front ends through a real NNI evaluator over one random batch):
        >>> import nni, torch, torchvision
        >>> from nni.compression import TorchEvaluator
        >>> from wgates_plugin import WGatesPruner, count_macs, speedup
        >>> from wgates_plugin.gate_decorator import GateDecoratorPruner
        >>> x = torch.randn(4, 3, 32, 32)
        >>> def step(batch, model): return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        >>> def train(model, opt, step, schedulers=None, max_steps=None, max_epochs=None):
        ...     for _ in range(max_steps):
        ...         opt.zero_grad(); step((x, torch.arange(4)), model).backward(); opt.step()
        >>> def evaluator(model):
        ...     return TorchEvaluator(train, nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01), step,
        ...                           dummy_input=x)
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> pruner = WGatesPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}], evaluator(model), 2)
        >>> model, masks = pruner.compress(); pruner.unwrap_model()
        >>> speedup(model, masks, x).layer1[0].conv1.out_channels
        32
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> before = count_macs(model, x)
        >>> pruner = GateDecoratorPruner(model, [{'op_types': ['Conv2d']}], evaluator(model), 6, target=0.6)
        >>> model, masks = pruner.compress(); pruner.unwrap_model()
        >>> count_macs(speedup(model, masks, x), x) <= 0.6 * before   # the schedule fits in 6 steps
        True
    """

    TEXT: Text  # the method's words in the messages
    NEEDS_INPUT = True  # False: without an evaluator, the pruner may be built untraced (no core)

    @unchanged_on_error
    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[Mapping[str, Any]],
        evaluator: Evaluator | None = None,
        training_steps: int | None = None,
        *,
        dummy_input: Any = None,
        target: float | None = None,
        efficiency: EfficiencyArg = None,
        **options: Any,
    ) -> None:
        check_front_end_arguments(evaluator, training_steps, target)
        options = self._check_options(target, options)
        entries = self._plan_layers(model, config_list, evaluator, training_steps, dummy_input)
        if self.dummy_input is None and (self.NEEDS_INPUT or evaluator is not None):
            name = type(self).__name__
            raise ConfigError(f"{name} traces the model's channel dependencies from an example batch: pass "
                              f"dummy_input=<a batch the model accepts> to {name} or to the evaluator")
        self._core = None if self.dummy_input is None else self._build_core(model, target, efficiency, **options)
        followers = sorted({m.name for plan in self.plans for m in plan.group.producers} - set(self.settings))
        super().__init__(model, entries + ([{"op_names": followers}] if followers else []), evaluator)

    @property
    def core(self) -> Any:
        """The channel-gating core attached to the model."""
        if self._core is None:
            raise StateError(f"{type(self).__name__} has no gates: it was built without an evaluator or dummy_input, "
                             "so it could not trace the model; pass dummy_input=<a batch the model accepts>")
        return self._core

    def _check_options(self, target: float | None, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the method's options (and its need for a target); return them with their defaults."""
        raise NotImplementedError

    def _build_core(self, model: nn.Module, target: float | None, efficiency: Any, **options: Any) -> Any:
        """The core over ``self.plans``."""
        raise NotImplementedError

    def _plan_layers(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], evaluator: Evaluator | None,
                     training_steps: int | None, dummy_input: Any) -> list[dict[str, Any]]:
        """Read the config list and plan the gated groups (when there is an example batch to trace)."""
        entries = canonical_config_list(config_list)
        self._check_entries(entries)
        self.settings, self.excluded = select_layers(model, entries)
        self.training_steps = training_steps
        self.dummy_input = dummy_input if dummy_input is not None else evaluator_dummy_input(evaluator)
        self.plans: list[GroupPlan] = []
        self.notes: list[str] = []
        if self.dummy_input is not None:
            self.plans, self.notes = plan_groups(trace_groups(model, self.dummy_input).groups, self.settings,
                                                 self.excluded)
            for note in self.notes:
                warnings.warn(note, stacklevel=4)
        self._compressed = False
        self._step = 0
        return entries

    def _check_entries(self, entries: list[dict[str, Any]]) -> None:
        """Refuse config entries this method cannot honour (default: none)."""

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Train through the evaluator within ``training_steps`` optimizer steps; return ``(model, masks)``.

        Raises:
            ConfigError: no evaluator or no ``training_steps``; ``max_steps`` / ``max_epochs`` given.
            StateError: the pruner was already compressed.
        """
        if self.evaluator is None:
            name = type(self).__name__
            raise ConfigError(
                f"{name} {self.TEXT.why}, so compress() trains through an NNI evaluator, and none was given. Pass one, "
                f"plus the number of {self.TEXT.steps}:\n"
                "    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)\n"
                "    evaluator = TorchEvaluator(training_func, optimizer, training_step, dummy_input=example_batch)\n"
                f"    {name}(model, config_list, evaluator=evaluator, {self.TEXT.example})\n"
                "(a LightningEvaluator works the same way).")
        if self.training_steps is None:
            raise ConfigError(f"compress() needs training_steps=<{self.TEXT.steps}> (an int >= 1)")
        if max_steps is not None or max_epochs is not None:
            raise ConfigError(f"{type(self).__name__} {self.TEXT.runs} training_steps optimizer steps; do not pass "
                              "max_steps / max_epochs to compress()")
        if self._compressed:
            raise StateError(f"compress() was already called: {self.TEXT.done}")
        return super().compress(max_steps, max_epochs)  # type: ignore[return-value]

    def gate_masks(self) -> Masks:
        """NNI masks of the core's keep decisions: every wrapped producer (and selected BatchNorm) of a
        gated group; a closed channel zeroes its filter row in ``weight`` and its entry in ``bias``,
        every wrapped layer outside the gated groups gets all-ones masks."""
        return self.core.nni_masks({name: full_masks(wrapper) for name, wrapper in self._module_wrappers.items()})


def check_front_end_arguments(evaluator: Any, training_steps: Any, target: Any) -> None:
    """The checks both NNI front ends make: the evaluator's type, ``training_steps``, ``target``."""
    if evaluator is not None and not isinstance(evaluator, Evaluator):
        raise ConfigTypeError(f"evaluator must be an NNI Evaluator (TorchEvaluator, LightningEvaluator), "
                              f"got {type(evaluator).__name__}")
    if training_steps is not None:
        check_number("training_steps", training_steps, ">= 1", integer=True, type_error=ConfigError)
    if target is not None:
        check_number("target", target, "(0, 1]", what="a fraction", type_error=ConfigError)


def evaluator_dummy_input(evaluator: Evaluator | None) -> Any:
    """The dummy input a user gave the evaluator (TorchEvaluator / LightningEvaluator), else None.

    NNI's ``LightningEvaluator.get_dummy_input()`` falls back to a whole training batch (inputs *and*
    labels), which is not something the model accepts, so only an explicitly given one is used.
    """
    if evaluator is None:
        return None
    explicit = getattr(evaluator, "dummy_input", None)
    return explicit if explicit is not None else getattr(evaluator, "_dummy_input", None)


def full_masks(wrapper: ModuleWrapper) -> dict[str, Any]:
    """All-ones masks (nothing pruned) for every pruning target of an NNI module wrapper."""
    return {name: torch.ones_like(space.target.detach()) for name, space in wrapper.pruning_target_spaces.items()
            if space.target is not None}
