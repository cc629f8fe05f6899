"""W-Gates (and Gate Decorator) in a Lightning 2 ``Trainer.fit``, with no NNI in the path:
:class:`WGatesCallback` and :class:`GateDecoratorCallback`.

The callback attaches the gates to the network at fit start, adds the efficiency loss to every
training step's loss, trains the gates with their own optimizer, freezes them at a chosen step (the
rest of ``fit`` fine-tunes the network at a fixed architecture) and exports the smaller network at
fit end. Its state (gates, gate optimizer, multiplier, step count, frozen or not) goes into
Lightning's checkpoints, so ``trainer.fit(..., ckpt_path=...)`` resumes where it stopped; under DDP
the gates start from rank 0's and their gradients are averaged
(:func:`~wgates_plugin.distributed.sync_gates`), so every rank holds the same gates.

Example::

    import lightning.pytorch as pl
    from wgates_plugin.integrations.lightning import WGatesCallback

    gates = WGatesCallback(target=0.5, freeze_step=800, module="model")   # pl_module.model is pruned
    trainer = pl.Trainer(max_steps=1000, callbacks=[gates])
    trainer.fit(lit_module, datamodule)
    small = gates.pruned                                                   # also pl_module.model now

How the loss is added: Lightning back-propagates the ``training_step`` loss; the callback then
back-propagates the efficiency loss (divided by ``accumulate_grad_batches``, as Lightning divides the
task loss) in ``on_after_backward``. The efficiency loss depends on the gate parameters only, so the
gradients are those of ``task loss + efficiency loss``. The gate optimizer steps whenever Lightning's
optimizer stepped (``global_step`` moved), then the target-mode multiplier takes its dual step.

Needs the ``lightning2`` extra (``lightning>=2.1``). NNI users keep
:class:`~wgates_plugin.integrations.nni.WGatesPruner` with NNI's ``LightningEvaluator``, which needs
``pytorch-lightning<2`` (the ``lightning`` extra).
"""

from __future__ import annotations

import abc
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..core import ChannelGating
from ..distributed import sync_gates
from ..errors import ConfigError, StateError
from ..gate_decorator import GateDecorator
from ..pruner import WGates
from ..utils import check_number

__all__ = ["WGatesCallback", "GateDecoratorCallback"]


class _GatingCallback(pl.Callback, abc.ABC):
    """What both callbacks share: the network, tracing at fit start, the gate optimizer stepped with
    Lightning's, export at fit end, checkpoints. Subclasses build the core and say what a step does."""

    core: ChannelGating | None

    def __init__(self, target: float, module: str | None, example_inputs: Any, lr: float, replace: bool) -> None:
        super().__init__()
        check_number("target", target, "(0, 1]", what="", type_error=ConfigError)
        check_number("lr", lr, "> 0", type_error=ConfigError)
        if module is not None and not (isinstance(module, str) and module.isidentifier()):
            raise ConfigError(f"module={module!r} must be the name of the LightningModule's attribute that holds "
                              "the network (e.g. 'model'), or None for the LightningModule itself")
        self.target, self.module, self.example_inputs, self.lr, self.replace = (
            float(target), module, example_inputs, lr, replace)
        self.core = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pruned: nn.Module | None = None
        self._restored: dict[str, Any] | None = None
        self._step_at_batch_start = 0

    def network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network this callback prunes."""
        if self.module is None:
            return pl_module
        net = getattr(pl_module, self.module, None)
        if not isinstance(net, nn.Module):
            have = [n for n, m in pl_module.named_children()]
            raise ConfigError(f"module={self.module!r}: {type(pl_module).__name__} has no sub-module of that name "
                              f"(its children: {have}); pass module=<the attribute holding the network>")
        return net

    def _example(self, pl_module: pl.LightningModule) -> Any:
        example = self.example_inputs if self.example_inputs is not None else pl_module.example_input_array
        if example is None:
            raise ConfigError(f"{type(self).__name__} needs a batch to trace the network: pass example_inputs=... "
                              "or set example_input_array on the LightningModule")
        return example

    @abc.abstractmethod
    def _build(self, net: nn.Module, example: Any) -> ChannelGating:
        """The method's core on ``net``, traced with ``example``."""

    def _optimizer(self, core: ChannelGating) -> torch.optim.Optimizer:
        return torch.optim.Adam(core.parameters(), lr=self.lr)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self.network(pl_module)
        device = next(iter(net.parameters())).device
        example = self._example(pl_module)
        example = example.to(device) if torch.is_tensor(example) else example
        if self.core is None:
            self.core = self._build(net, example)
        self.optimizer = self._optimizer(self.core)
        if self._restored is not None:
            self._load(self._restored)
            self._restored = None
        if trainer.world_size > 1:
            self._distribute()

    @abc.abstractmethod
    def _distribute(self) -> None:
        """Keep the core identical on every rank (called under DDP)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.core is None or self.optimizer is None or trainer.global_step == self._step_at_batch_start:
            return  # no optimizer step this batch (gradient accumulation): the gates wait too
        self._after_step(trainer, pl_module)

    @abc.abstractmethod
    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """What the method does once Lightning's optimizer stepped."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Bring the core to its final architecture before the export."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        core = self.core
        if core is None:
            return
        self._finish()
        self.pruned = core.export()
        if self.replace:
            if self.module is None:
                raise StateError("replace=True needs module=<attribute>: the LightningModule itself cannot be "
                                 "swapped for its exported copy; read callback.pruned instead")
            core.remove()
            setattr(pl_module, self.module, self.pruned)

    def state_dict(self) -> dict[str, Any]:
        if self.core is None:
            return {}
        return {"core": self.core.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "target": self.target, **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("target") != self.target:
            raise ConfigError(f"the checkpoint's {type(self).__name__} ran with target={state_dict.get('target')}, "
                              f"this one has target={self.target}: resume with the same target")
        if self.core is None:  # Lightning restores callbacks before on_fit_start builds the gates
            self._restored = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        assert self.core is not None and self.optimizer is not None
        self.core.load_state_dict(state["core"])
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        self._load_extra(state)

    def _load_extra(self, state: dict[str, Any]) -> None:
        pass


class WGatesCallback(_GatingCallback):
    """Prune ``pl_module.<module>`` with W-Gates inside ``Trainer.fit``.

    Args:
        target: keep this fraction of the unpruned cost (FLOPs by default), in (0, 1].
        freeze_step: the ``global_step`` at which the gates freeze (landing exactly on the target);
            None freezes at fit end. Steps after it fine-tune at the fixed architecture.
        module: the attribute of the LightningModule holding the network to prune (``"model"``);
            None prunes the LightningModule itself (its ``forward`` must run the network).
        example_inputs: a batch the network accepts, for tracing; default the LightningModule's
            ``example_input_array``.
        gate_lr: Adam learning rate of the gates (the plugin's default, chosen on validation).
        replace: at fit end, put the exported network in place of ``pl_module.<module>``.
        log_every: log ``wgates/flops_ratio``, ``wgates/cost_ratio`` and ``wgates/multiplier`` every
            that many steps (0: never).
        **options: :class:`~wgates_plugin.WGates` / :class:`~wgates_plugin.WGatesConfig` options
            (``prune_shortcuts``, ``round_to``, ``efficiency``, ``warm_start``, ...).

    Attributes:
        wgates: the :class:`~wgates_plugin.WGates` of this fit (None before fit start).
        pruned: the exported network after fit end (None before).
    """

    def __init__(self, target: float, freeze_step: int | None = None, module: str | None = "model",
                 example_inputs: Any = None, gate_lr: float = 1e-3, replace: bool = True, log_every: int = 1,
                 **options: Any) -> None:
        if freeze_step is not None:
            check_number("freeze_step", freeze_step, ">= 0", integer=True, type_error=ConfigError)
        check_number("log_every", log_every, ">= 0", integer=True, type_error=ConfigError)
        super().__init__(target, module, example_inputs, gate_lr, replace)
        self.freeze_step, self.log_every, self.options = freeze_step, log_every, options

    @property
    def wgates(self) -> WGates | None:
        return self.core  # type: ignore[return-value]

    def _build(self, net: nn.Module, example: Any) -> WGates:
        return WGates(net, example, target=self.target, **self.options)

    def _distribute(self) -> None:
        sync_gates(self.wgates)  # rank 0's gates everywhere, gate gradients averaged in backward

    def _frozen(self) -> bool:
        wg = self.wgates
        return bool(wg is not None and wg.gates and wg.gates[0].is_frozen)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.wgates is None or self._frozen():
            return
        (self.wgates.efficiency_loss() / trainer.accumulate_grad_batches).backward()

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wg, opt = self.wgates, self.optimizer
        assert wg is not None and opt is not None
        if not self._frozen():
            opt.step()
            opt.zero_grad(set_to_none=True)
            wg.update_multiplier()
            if self.freeze_step is not None and trainer.global_step >= self.freeze_step:
                wg.freeze()
        if self.log_every and trainer.global_step % self.log_every == 0:
            pl_module.log_dict({"wgates/flops_ratio": wg.flops_ratio(), "wgates/cost_ratio": wg.cost_ratio(),
                                "wgates/multiplier": float(wg.multiplier.value)}, on_step=True, prog_bar=False)

    def _finish(self) -> None:
        if not self._frozen():
            self.wgates.freeze()

    def _extra_state(self) -> dict[str, Any]:
        wg = self.wgates
        return {"multiplier": float(wg.multiplier.value), "steps": wg.steps, "frozen": self._frozen()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.wgates.multiplier.value = float(state["multiplier"])
        self.wgates.steps = int(state["steps"])


class GateDecoratorCallback(_GatingCallback):
    """Prune ``pl_module.<module>`` with Gate Decorator (You et al. 2019) inside ``Trainer.fit``.

    Every training step accumulates the Taylor importance ``|phi * dL/dphi|`` of the task loss's
    backward, adds the L1 term on ``phi`` (``l1``), and trains ``phi`` with its own SGD; every
    ``prune_every`` steps between ``start_step`` and ``end_step`` the least important channels,
    ranked globally, are removed so the cost falls linearly from 1 to ``target`` (at ``end_step`` it
    lands on the target); the importance is reset after each removal. The remaining steps
    fine-tune at the fixed architecture; at fit end ``phi`` is merged into the BatchNorms and the
    network exported.

    Args:
        target: keep this fraction of the unpruned cost, in (0, 1].
        end_step: the ``global_step`` of the last removal (the target is met from there on).
        prune_every: steps between removals (>= 1).
        start_step: the step of the first removal (default ``prune_every``).
        l1: weight of the L1 term on ``phi`` (0: none).
        module, example_inputs, replace: as :class:`WGatesCallback`.
        phi_lr: SGD learning rate of ``phi``.
        **options: :class:`~wgates_plugin.gate_decorator.GateDecorator` options.

    Attributes:
        gate_decorator: the :class:`~wgates_plugin.gate_decorator.GateDecorator` (None before fit start).
        pruned: the exported network after fit end.
    """

    def __init__(self, target: float, end_step: int, prune_every: int = 10, start_step: int | None = None,
                 l1: float = 1e-4, module: str | None = "model", example_inputs: Any = None, phi_lr: float = 1e-2,
                 replace: bool = True, **options: Any) -> None:
        check_number("end_step", end_step, ">= 1", integer=True, type_error=ConfigError)
        check_number("prune_every", prune_every, ">= 1", integer=True, type_error=ConfigError)
        start = prune_every if start_step is None else start_step
        check_number("start_step", start, ">= 1", integer=True, type_error=ConfigError)
        if start > end_step:
            raise ConfigError(f"start_step={start} must be in [1, end_step={end_step}]")
        check_number("l1", l1, ">= 0", type_error=ConfigError)
        super().__init__(target, module, example_inputs, phi_lr, replace)
        self.end_step, self.prune_every, self.start_step, self.l1, self.options = (
            end_step, prune_every, start, l1, options)

    @property
    def gate_decorator(self) -> GateDecorator | None:
        return self.core  # type: ignore[return-value]

    def _build(self, net: nn.Module, example: Any) -> GateDecorator:
        return GateDecorator(net, example, target=self.target, **self.options)

    def _optimizer(self, core: ChannelGating) -> torch.optim.Optimizer:
        return torch.optim.SGD(core.parameters(), lr=self.lr)

    def _distribute(self) -> None:
        raise ConfigError("GateDecoratorCallback runs on one process: its importance is accumulated per rank "
                          "(use WGatesCallback under DDP)")

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gd = self.gate_decorator
        if gd is None:
            return
        gd.accumulate()  # the task loss's gradient only: before the L1 term's
        if self.l1:
            (self.l1 * gd.l1_penalty() / trainer.accumulate_grad_batches).backward()

    def _budget_at(self, step: int) -> float | None:
        """The cost ratio to prune to at ``step``: linear from 1 at ``start_step - prune_every`` to the target."""
        if step > self.end_step or step < self.start_step:
            return None
        if step != self.end_step and (step - self.start_step) % self.prune_every:
            return None
        span = self.end_step - self.start_step + self.prune_every
        done = (step - self.start_step + self.prune_every) / span
        return 1.0 - (1.0 - self.target) * done

    def _after_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gd, opt = self.gate_decorator, self.optimizer
        assert gd is not None and opt is not None
        opt.step()
        opt.zero_grad(set_to_none=True)
        budget = self._budget_at(trainer.global_step)
        if budget is not None:
            gd.prune(target=budget)
            gd.reset_importance()
        pl_module.log("gate_decorator/cost_ratio", gd.cost_ratio(), on_step=True)

    def _finish(self) -> None:
        if not self.gate_decorator.finished:
            self.gate_decorator.prune(target=self.target)
