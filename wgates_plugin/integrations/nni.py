"""W-Gates as an NNI 3 pruner: a drop-in for ``L1NormPruner`` / ``FPGMPruner`` that learns from data.

How it sits in NNI (the way NNI's own training-aware ``SlimPruner`` / ``TaylorPruner`` do): the
constructor wraps the selected layers with NNI's module wrappers; :meth:`WGatesPruner.compress`
binds the wrapped model to the evaluator, patches the user's training step (the efficiency term is
added to the loss) and optimizer step (an Adam over the gate parameters steps with it), trains for
``training_steps`` optimizer steps, then freezes the gates and writes them into NNI's masks.

How it sits next to NNI's wrappers: the W-Gates core applies the gates with forward pre-hooks at the
inputs of the layers that consume a group's channels, so zeroing a channel there is exactly removing
it. NNI's wrapper replaces a layer's ``forward`` but not its ``__call__``, so those hooks keep
running on wrapped layers. While a layer is wrapped, its trainable weight is the wrapper's
parameter (NNI turns the layer's own ``weight`` into a buffer that only holds the last masked copy),
so each gate scores the wrapper's live weight; :meth:`WGatesPruner.unwrap_model` points the gates
back to the layers and removes the hooks, leaving the plain model exactly as NNI's pruners do.

Contract: after ``compress()`` and before ``unwrap_model()``, the wrapped model's eval forward applies
the final gates (and NNI's masks, which only zero what the gates already remove); after
``unwrap_model()``, ``wgates_plugin.speedup(model, masks, dummy_input)`` builds a physically smaller
model with the same eval outputs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from nni.compression.utils import Evaluator
from torch import nn

from ..budget import Budget
from ..config import BudgetMode, WGatesConfig
from ..core import GateHook
from ..distill import DEFAULT_DISTILL, DISTILL, TEMPERATURE, Distillation, is_logits
from ..errors import ConfigError
from ..gates import Producer
from ..pruner import WGates
from ..utils import check_number, device_of, dtype_of, eval_outputs
from .nni_front import GatingPruner, Text
from .nni_plan import GroupPlan, group_bounds, shared_budgets

__all__ = ["WGatesPruner"]

# WGatesConfig fields a user may set; the rest follow from config_list and the budget arguments.
OPTION_FIELDS = ("alpha", "controller_rate", "tolerance", "score_input", "weight_grad", "init_score", "warm_start")

class WGatesPruner(GatingPruner):
    """Weight-dependent gates (W-Gates) as an NNI 3 pruner.

    Args:
        model, evaluator, dummy_input, target, efficiency: see
            :class:`~wgates_plugin.integrations.nni_front.GatingPruner`; ``target`` lands exactly.
        config_list: NNI config list. ``op_types`` / ``op_names`` / ``op_names_re`` select layers,
            ``exclude_op_*`` (or a legacy ``{'exclude': True, ...}`` entry) exclude them;
            ``sparse_ratio`` alone = that ratio of output channels removed per layer, the channels chosen
            by learned gate score; with ``global_group_id`` = one shared budget (in weight elements, as
            NNI counts it) whose per-layer split the gates learn; ``min_sparse_ratio`` /
            ``max_sparse_ratio`` bound a layer. Layers coupled to a selected layer (residual additions,
            depthwise partners) share its gate and get identical masks.
        training_steps: optimizer steps of gate training; required by :meth:`compress`.
        gate_lr: Adam learning rate of the gate parameters (the decisive knob: too high closes whole
            layers within a few steps, too low never moves a gate).
        distill / temperature: share, in [0, 1], of knowledge distillation from the unpruned model (a copy
            taken here, before the layers are wrapped, when there is an evaluator to train with) in the loss
            of the pruner's own training steps, and its temperature
            (:class:`~wgates_plugin.distill.Distillation`): the training step's loss ``L`` becomes
            ``(1 - distill) * L + distill * T^2 * KL``, the teacher run on the inputs of the model's last
            training-mode forward with gradients on (steps under ``no_grad`` or in eval mode, e.g. a
            validation loss, are left alone); fine-tuning after ``compress()`` is the user's. A share > 0
            needs the training step to call the model itself and get single-label ``(batch, classes)``
            logits back, and raises :class:`ConfigError` otherwise. ``"auto"``: 0.5
            (:data:`~wgates_plugin.distill.DISTILL`) when the model's eval output on the dummy input is such
            logits, else 0 (detectors, segmenters, one-column heads); if a training step then turns out not
            to fit (a train-mode output of another form, a submodule called directly, a model that cannot be
            copied), it warns once and trains on with the user's loss alone. ``pruner.distill`` says which.
            The copy keeps the model's own forward hooks. 0 (default): the user's loss unchanged, no copy
            kept; chosen on Fashion-MNIST's validation split with fine-tuning at lr 0.003, where 0.5 tied
            after fine-tuning and lowered the network right after pruning at 12 % FLOPs
            (``benchmarks/RESULTS.md``, "The distillation screen at lr 0.003").
        **options: W-Gates knobs ``alpha`` (Eq. 12 weight; in target mode the initial multiplier),
            ``controller_rate``, ``tolerance``, ``score_input``, ``weight_grad``, ``init_score``
            (see :class:`~wgates_plugin.WGatesConfig`).

    When neither a target, a ratio nor a global group decides a selected layer's width, ``alpha``
    does (the paper's mode: ``L + alpha * log(1 + FLOPs / FLOPs_0)``).

    Raises:
        ConfigError: the config list is invalid or selects nothing prunable; an option is invalid.
        BudgetError: a target or global budget is unreachable under the per-layer bounds.

    Example: see :class:`~wgates_plugin.integrations.nni_front.GatingPruner`.
    """

    TEXT = Text(why="learns which filters to drop from data", example="training_steps=200",
                steps="optimizer steps of gate training", runs="trains for",
                done="the gates are frozen and the masks final")
    NEEDS_INPUT = False

    @property
    def budgets(self) -> list[Budget]:
        """The global groups' budgets: the core's budgets over some of its groups (it trains and lands them)."""
        return [] if self._core is None else [b for b in self._core.budgets if b.index is not None]

    @property
    def wgates(self) -> WGates | None:
        """The W-Gates core, or None when the pruner was built without an example batch."""
        return self._core

    def _check_options(self, target: float | None, options: dict[str, Any]) -> dict[str, Any]:
        gate_lr = options.pop("gate_lr", 1e-3)
        check_number("gate_lr", gate_lr, "> 0", type_error=ConfigError)
        distill, temperature = options.pop("distill", DEFAULT_DISTILL), options.pop("temperature", TEMPERATURE)
        if distill != "auto":
            check_number("distill", distill, "[0, 1]", what="", type_error=ConfigError)
        check_number("temperature", temperature, "> 0", type_error=ConfigError)
        unknown = sorted(set(options) - set(OPTION_FIELDS))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}: WGatesPruner accepts gate_lr, distill, temperature, "
                              f"{', '.join(OPTION_FIELDS)} (bounds, exclusions and ratios come from config_list)")
        self.gate_lr, self.temperature = float(gate_lr), float(temperature)
        self.distill: float | str = distill if distill == "auto" else float(distill)
        self._auto = distill == "auto"
        self._kd: Distillation | None = None
        self._kd_handle: Any = None
        self._kd_place: tuple[torch.device, torch.dtype] | None = None
        self._seen: tuple[tuple, dict, Any] | None = None
        return options

    def _plan_layers(self, model: nn.Module, config_list: Sequence[Any], evaluator: Evaluator | None,
                     training_steps: int | None, dummy_input: Any) -> list[dict[str, Any]]:
        self._trains = evaluator is not None  # no evaluator, no compress(): no teacher to keep
        return super()._plan_layers(model, config_list, evaluator, training_steps, dummy_input)

    def _build_core(self, model: nn.Module, target: float | None, efficiency: Any, **options: Any) -> WGates:
        if self._trains:
            self._make_teacher(model)
        mode, target = _budget_mode(self.plans, target)
        bounds = {p.name: group_bounds(plan) for plan in self.plans for p in plan.group.producers}
        config = WGatesConfig(mode=mode, target=target, prune_shortcuts=True, layer_bounds=bounds, **options)
        core = WGates(model, self.dummy_input, config=config, efficiency=efficiency,
                      groups=[plan.group for plan in self.plans]).to(device_of(model))
        budgets = shared_budgets(self.plans, core.groups, config.alpha, config.controller_rate)
        for budget in budgets:
            budget.check_feasible(core.unit_bounds())
        core.budgets += budgets
        return core

    # ------------------------------------------------------------------ wrapping
    def wrap_model(self) -> None:
        """Wrap the layers (NNI) and point every gate at the wrappers' trainable weights."""
        super().wrap_model()
        if self._core is not None:
            self._point_gates(wrapped=True)
            self._core.attach()

    def unwrap_model(self) -> None:
        """Unwrap (NNI) and remove the gate hooks: the model is plain again, its weights unmasked."""
        self._drop_teacher()
        super().unwrap_model()
        if self._core is not None:
            self._core.remove()
            self._point_gates(wrapped=False)

    def _point_gates(self, wrapped: bool) -> None:
        for group, gate in zip(self.core.groups, self.core.gates):
            gate.producers = [Producer(_weight_owner(m.module, wrapped), m.idxs, m.channels) for m in group.producers]

    # ------------------------------------------------------------------ compression
    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Any]:
        """See :meth:`GatingPruner.compress`; if training raises, the teacher and its hook are gone too."""
        try:
            return super().compress(max_steps, max_epochs)
        except BaseException:
            self._drop_teacher()
            raise

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        self._fusion_compress(self.training_steps, None)

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        optimizer = torch.optim.Adam(self.core.parameters(), lr=self.gate_lr)
        evaluator.patch_optimizer_step(before_step_tasks=[optimizer.step],
                                       after_step_tasks=[optimizer.zero_grad, self._after_step])
        evaluator.patch_loss(self._patch_loss)
        if self._kd is not None:
            self._drop_hook()
            self._kd_handle = self.bound_model.register_forward_hook(GateHook(self._remember), with_kwargs=True)

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        if not self._compressed:
            warnings.warn(f"the training function ran {self._step} optimizer steps, fewer than "
                          f"training_steps={self.training_steps}; the gates are frozen where they are", stacklevel=2)
            self._finish()

    def _patch_loss(self, loss: torch.Tensor, _batch: Any) -> torch.Tensor:
        if self._kd is not None and torch.is_grad_enabled() and self.bound_model.training:
            loss = self._distilled(loss)
        return loss + self.efficiency_loss().to(loss)

    # ------------------------------------------------------------------ distillation
    def _make_teacher(self, model: nn.Module) -> None:
        """The unpruned model as teacher (before any wrapper or gate hook is on it); ``"auto"`` decides first."""
        if self._auto:
            self.distill = DISTILL if is_logits(eval_outputs(model, self.dummy_input)) else 0.0
        if not self.distill:
            return
        try:
            teacher = copy.deepcopy(model).eval()
        except Exception as error:  # noqa: BLE001 - whatever stops a copy, the reason is reported
            self._refuse(f"the model could not be copied as the teacher ({type(error).__name__}: {error})")
            return
        self._kd = Distillation(teacher, float(self.distill), self.temperature)

    def _remember(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self._seen = (args, kwargs, output)

    def _distilled(self, loss: torch.Tensor) -> torch.Tensor:
        """The training step's loss mixed with distillation from the unpruned model on the same inputs."""
        seen, self._seen = self._seen, None
        if seen is None:
            return self._refuse("the training step computed its loss without a training-mode forward of the model "
                                "itself (a submodule called directly?)", loss)
        args, kwargs, outputs = seen
        if not is_logits(outputs):
            what = (f"a tensor of shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor)
                    else type(outputs).__name__)
            return self._refuse(f"the model's training forward returned {what}, not single-label (batch, classes) "
                                "logits", loss)
        kd = self._kd
        assert kd is not None
        place = (device_of((args, kwargs)) if args or kwargs else outputs.device, dtype_of(self.bound_model))
        if place != self._kd_place:
            kd.teacher.to(device=place[0], dtype=place[1])
            self._kd_place = place
        return kd.mix(loss, outputs, kd.targets(*args, **kwargs))

    def _refuse(self, why: str, loss: torch.Tensor | None = None) -> Any:
        """An explicit share raises; ``"auto"`` warns once, turns distillation off and returns ``loss``."""
        if not self._auto:
            raise ConfigError(f"distill={self.distill!r} distils the model's class logits, and {why}: make the "
                              "training step call the model and return its logits, or pass distill=0")
        warnings.warn(f"distill='auto' turned distillation off: {why}", stacklevel=3)
        self.distill = 0.0
        self._drop_teacher()
        return loss

    def _drop_hook(self) -> None:
        if self._kd_handle is not None:
            self._kd_handle.remove()
        self._kd_handle = self._seen = None

    def _drop_teacher(self) -> None:
        self._drop_hook()
        self._kd = self._kd_place = None

    def _after_step(self) -> None:
        self.core.update_multiplier()
        self._step += 1
        if self._step == self.training_steps:
            self._finish()

    def efficiency_loss(self) -> torch.Tensor:
        """The term added to the task loss: the core's (every global group's penalty included)."""
        return self.core.efficiency_loss()

    def _finish(self) -> None:
        """Freeze the gates (landing every budget exactly) and write them into NNI's masks; the teacher goes."""
        self._drop_teacher()
        self.core.freeze()
        self.update_masks(self.gate_masks())
        self._compressed = True

    # ------------------------------------------------------------------ results
    def stats(self) -> dict[str, Any]:
        """Live W-Gates statistics: FLOPs / cost ratio, kept channels per group, multipliers."""
        out = self.core.stats()
        with torch.no_grad():
            counts = self.core.counts()
            out["global_groups"] = {b.name: float(b.ratio(counts)) for b in self.budgets}
        return out


# ---------------------------------------------------------------------------- helpers
def _budget_mode(plans: Sequence[GroupPlan], target: float | None) -> tuple[BudgetMode, float | None]:
    shared = sorted({str(p.setting.global_group_id) for p in plans if p.setting.global_group_id is not None})
    free = [name for p in plans if p.free for name in p.selected]
    if target is not None and shared:
        raise ConfigError(f"a target and global_group_id {shared} are two budgets on the same model: use one "
                          "(drop the target, or replace the global groups by plain sparse_ratio / bounds)")
    if target is not None:
        return BudgetMode.TARGET, target
    if shared and free:
        raise ConfigError(f"layers {free[:6]} have no sparse_ratio and no global_group_id, so nothing sets how "
                          "much to prune them: give them a ratio or a global group, or pass target")
    return (BudgetMode.PAPER if free else BudgetMode.NONE), None


def _weight_owner(module: nn.Module, wrapped: bool) -> nn.Module:
    """Who holds the layer's trainable weight: NNI's wrapper while wrapped, else the layer."""
    return getattr(module, "_nni_wrapper", module) if wrapped else module
