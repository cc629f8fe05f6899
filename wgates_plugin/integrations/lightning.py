"""W-Gates in a Lightning 2 ``Trainer.fit``, with no NNI in the path: :class:`WGatesCallback`.

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

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..distributed import sync_gates
from ..errors import ConfigError, StateError
from ..pruner import WGates
from ..utils import check_number

__all__ = ["WGatesCallback"]


class WGatesCallback(pl.Callback):
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
        super().__init__()
        check_number("target", target, "(0, 1]", what="", type_error=ConfigError)
        if freeze_step is not None:
            check_number("freeze_step", freeze_step, ">= 0", integer=True, type_error=ConfigError)
        check_number("gate_lr", gate_lr, "> 0", type_error=ConfigError)
        check_number("log_every", log_every, ">= 0", integer=True, type_error=ConfigError)
        if module is not None and not (isinstance(module, str) and module.isidentifier()):
            raise ConfigError(f"module={module!r} must be the name of the LightningModule's attribute that holds "
                              "the network (e.g. 'model'), or None for the LightningModule itself")
        self.target, self.freeze_step, self.module = float(target), freeze_step, module
        self.example_inputs, self.gate_lr, self.replace, self.log_every = example_inputs, gate_lr, replace, log_every
        self.options = options
        self.wgates: WGates | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pruned: nn.Module | None = None
        self._restored: dict[str, Any] | None = None
        self._step_at_batch_start = 0

    # ------------------------------------------------------------------ set-up
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
            raise ConfigError("WGatesCallback needs a batch to trace the network: pass example_inputs=... or set "
                              "example_input_array on the LightningModule")
        return example

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self.network(pl_module)
        device = next(iter(net.parameters())).device
        example = self._example(pl_module)
        example = example.to(device) if torch.is_tensor(example) else example
        if self.wgates is None:
            self.wgates = WGates(net, example, target=self.target, **self.options)
        self.optimizer = torch.optim.Adam(self.wgates.parameters(), lr=self.gate_lr)
        if self._restored is not None:
            self._load(self._restored)
            self._restored = None
        if trainer.world_size > 1:
            sync_gates(self.wgates)  # rank 0's gates everywhere, gate gradients averaged in backward

    # ------------------------------------------------------------------ training
    def _frozen(self) -> bool:
        return bool(self.wgates is not None and self.wgates.gates and self.wgates.gates[0].is_frozen)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.wgates is None or self._frozen():
            return
        (self.wgates.efficiency_loss() / trainer.accumulate_grad_batches).backward()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        wg, opt = self.wgates, self.optimizer
        if wg is None or opt is None or trainer.global_step == self._step_at_batch_start:
            return  # no optimizer step this batch (gradient accumulation): the gates wait too
        if not self._frozen():
            opt.step()
            opt.zero_grad(set_to_none=True)
            wg.update_multiplier()
            if self.freeze_step is not None and trainer.global_step >= self.freeze_step:
                wg.freeze()
        if self.log_every and trainer.global_step % self.log_every == 0:
            pl_module.log_dict({"wgates/flops_ratio": wg.flops_ratio(), "wgates/cost_ratio": wg.cost_ratio(),
                                "wgates/multiplier": float(wg.multiplier.value)}, on_step=True, prog_bar=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wg = self.wgates
        if wg is None:
            return
        if not self._frozen():
            wg.freeze()
        self.pruned = wg.export()
        if self.replace:
            if self.module is None:
                raise StateError("replace=True needs module=<attribute>: the LightningModule itself cannot be "
                                 "swapped for its exported copy; read callback.pruned instead")
            wg.remove()
            setattr(pl_module, self.module, self.pruned)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        wg = self.wgates
        if wg is None:
            return {}
        return {"gates": wg.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "multiplier": float(wg.multiplier.value), "steps": wg.steps, "frozen": self._frozen(),
                "target": self.target}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("target") != self.target:
            raise ConfigError(f"the checkpoint's W-Gates ran with target={state_dict.get('target')}, this callback "
                              f"has target={self.target}: resume with the same target")
        if self.wgates is None:  # Lightning restores callbacks before on_fit_start builds the gates
            self._restored = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        wg = self.wgates
        assert wg is not None and self.optimizer is not None
        wg.load_state_dict(state["gates"])
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        wg.multiplier.value = float(state["multiplier"])
        wg.steps = int(state["steps"])
