"""Reusable training, evaluation and measurement loops (host-agnostic: plain PyTorch).

The CLI, the benchmarks and the NNI trial all use these, so every number they report comes from the
same code. Loaders yield ``(inputs, labels)`` batches; models are moved to nothing — inputs follow
the model's device.

Example:
    >>> import torch, torchvision
    >>> from wgates_plugin.app.data import load_digits, loaders
    >>> from wgates_plugin.app.training import train_steps, evaluate
    >>> train, test = loaders(*load_digits(size=32), batch_size=32)
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    >>> losses = train_steps(model, train, opt, steps=2, progress=False)
    >>> 0.0 <= evaluate(model, test) <= 1.0
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..distill import DEFAULT_DISTILL, TEMPERATURE, Distillation
from ..efficiency import Timing, count_macs, measure_ms
from ..efficiency.latency import MeasuredLatency
from ..errors import ConfigError
from ..latency_landing import land_on_latency
from ..pruner import WGates
from ..utils import check_number, device_of, kept_modes

__all__ = ["train_steps", "fit", "evaluate", "recalibrate_bn", "measure_latency", "count_params", "cycle",
           "Distillation", "Recipe", "PruneResult", "Stage", "describe", "train_gates", "prune_and_finetune",
           "prune_phase", "finetune_phase"]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, dict[str, float]], "Mapping[str, Any] | None"]


def cycle(loader: Iterable) -> Iterator:
    """Endless iteration over ``loader``, re-iterating it (and so re-shuffling) at every epoch."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the data loader yields no batch (dataset smaller than one batch with drop_last?)")


def train_steps(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    steps: int,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    loss_fn: Criterion = F.cross_entropy,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    desc: str = "train",
    stop: Callable[[], bool] | None = None,
    distill: Distillation | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps, cycling ``loader`` as often as needed.

    Each step: forward, ``loss_fn(outputs, labels)`` plus ``extra_loss()`` (called *after* the
    forward, e.g. ``wg.efficiency_loss`` which reads the gates that forward used), one backward, then
    every optimizer steps (and ``scheduler``, if given).

    Args:
        model: put in train mode.
        loader: yields ``(inputs, labels)``.
        optimizer: one optimizer or several (e.g. SGD on the weights and Adam on the gates).
        steps: number of steps (0 trains nothing).
        extra_loss: zero-argument callable added to the task loss.
        loss_fn: ``(outputs, labels) -> scalar``; default cross-entropy.
        scheduler: stepped after every optimizer step.
        callback: ``callback(step, {"loss": task, "extra": extra})`` after every step; a returned
            mapping is shown in the progress bar.
        progress: show a tqdm progress bar.
        desc: progress bar label.
        stop: checked after every step; training ends early when it returns True.
        distill: a :class:`Distillation`: the task loss is its loss (it replaces ``loss_fn``).

    Returns:
        The task loss of every step.
    """
    check_number("steps", steps, ">= 0", integer=True, type_error=ConfigError)
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    device, batches, losses = device_of(model), cycle(loader), []
    model.train()
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for step in range(steps):
            x, y = next(batches)
            task, extra = _step(model, x.to(device), y.to(device), optimizers, extra_loss, loss_fn, distill)
            if scheduler is not None:
                scheduler.step()
            losses.append(task)
            shown = callback(step, {"loss": task, "extra": extra}) if callback else None
            bar.set_postfix({"loss": f"{task:.3f}", **(shown or {})}, refresh=False)
            bar.update()
            if stop is not None and stop():
                break
    return losses


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizers: list[torch.optim.Optimizer],
          extra_loss: Callable[[], torch.Tensor] | None, loss_fn: Criterion,
          distill: Distillation | None = None) -> tuple[float, float]:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    out = model(x)
    task = distill(out, y, x) if distill is not None else loss_fn(out, y)
    extra = extra_loss() if extra_loss is not None else task.new_zeros(())
    (task + extra).backward()
    for opt in optimizers:
        opt.step()
    return float(task.detach()), float(extra.detach())


def fit(
    model: nn.Module,
    loader: Iterable,
    steps: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    progress: bool = True,
    desc: str = "train",
    distill: Distillation | None = None,
) -> list[float]:
    """Plain supervised training: SGD with momentum and a cosine learning-rate decay to 0 over ``steps``.

    Args:
        model: trained in place.
        loader: yields ``(inputs, labels)``.
        steps: optimizer steps.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        progress: show a progress bar.
        desc: progress bar label.
        distill: learn from a teacher too (:class:`Distillation`).

    Returns:
        The loss of every step.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return train_steps(model, loader, opt, steps, scheduler=sched, progress=progress, desc=desc, distill=distill)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, progress: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader``, in [0, 1] (eval mode; the mode is restored after)."""
    device = device_of(model)
    correct = total = 0
    with kept_modes(model):
        model.eval()
        for x, y in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
            pred = model(x.to(device)).argmax(dim=1)  # (B,)
            correct += int((pred == y.to(device)).sum())
            total += len(y)
    if total == 0:
        raise ConfigError("evaluate() got an empty loader")
    return correct / total


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` batches of ``loader``.

    After pruning, a BN's running mean/var no longer match what reaches it (its inputs lost channels
    upstream). Running stats are reset and re-estimated as the cumulative average over the batches
    (``momentum=None``), with only the BN layers in train mode: dropout and every other layer stay in
    eval mode, no gradient is computed and no parameter changes. Modes and momenta are restored.

    Args:
        model: the model, changed in place (BN buffers only).
        loader: yields ``(inputs, labels)``; labels are ignored.
        batches: number of batches to average over (the loader is cycled if shorter).

    Returns:
        The number of BatchNorm layers re-calibrated.
    """
    check_number("batches", batches, ">= 1", integer=True, type_error=ConfigError)
    bns = _batchnorms(model)
    if not bns:
        return 0
    momenta, device = [bn.momentum for bn in bns], device_of(model)
    with kept_modes(model):
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
            bn.train()
        try:
            for _, (x, _y) in zip(range(batches), cycle(loader)):
                model(x.to(device))
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
    return len(bns)


def count_params(model: nn.Module) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def measure_latency(model: nn.Module, example_input: torch.Tensor, threads: int = 1, repeats: int = 20,
                    number: int = 5, warmup: int = 5) -> float:
    """Median time of one forward of ``model`` on ``example_input``, in seconds.

    :func:`~wgates_plugin.efficiency.measure_ms` (eval mode, no grad, ``threads`` fixed, CUDA
    synchronized, the model's mode restored) over ``repeats * number`` timed forwards after
    ``warmup`` untimed ones; an injected clock (:func:`~wgates_plugin.efficiency.use_clock`) is used.
    """
    for name, value, low in (("threads", threads, 1), ("repeats", repeats, 1), ("number", number, 1)):
        check_number(name, value, f">= {low}", integer=True, type_error=ConfigError)
    return measure_ms(model, example_input, Timing(warmup=warmup, repeats=repeats * number, threads=threads)) / 1e3


# ---------------------------------------------------------------------------- the end-to-end recipe
WEIGHT_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Recipe:
    """Every knob of :func:`prune_and_finetune`, with its default.

    Attributes:
        gate_steps: steps of joint training (gates by Adam, weights by SGD) under the budget.
        finetune_steps: steps of fine-tuning the physically pruned model.
        gate_lr: Adam learning rate of the gate FC vectors and biases. The gates start at the target
            (``WGatesConfig.warm_start``), so the rate refines a ranking instead of having to close
            channels quickly: chosen on Fashion-MNIST's validation split (ResNet-20, 25 % and 12 %
            FLOPs, 5 seeds, ``python -m benchmarks.recipe``), where 1e-3 beat 1e-2 and 3e-4.
        weight_lr: SGD learning rate of the weights during gate training: 0.003, chosen on Fashion-MNIST's
            validation split against 0.01 (ResNet-20, 25 % and 12 % FLOPs, 5 seeds, fine-tuning at 0.003;
            ahead at 3 of the 4 fine-tuned points, benchmarks/RESULTS.md, "The pruning-time lr").
        weight_schedule: how ``weight_lr`` changes over the gate steps: ``"constant"``, or ``"cosine"``
            (decay to 0 by the last gate step, so the weights settle on the mask that is frozen
            instead of ending on a step of size ``weight_lr``).
        weight_anneal: with ``weight_schedule="cosine"``, the share of the gate steps, at their end, over
            which the decay runs (1: all of them; 0.25: ``weight_lr`` held for the first three quarters,
            then decayed to 0 over the last, while the gates keep training).
        finetune_lr: initial SGD learning rate of fine-tuning (cosine decay to 0).
        momentum: SGD momentum (both phases).
        weight_decay: SGD L2 penalty (both phases).
        bn_batches: training batches used to re-calibrate BatchNorm statistics after export.
        log_every: record the live FLOPs / cost ratio every this many gate steps.
        freeze_stable: end gate training early once the cost is within the target and the keep masks
            have not changed for this many steps (0: train all ``gate_steps``); the steps left go to
            fine-tuning the exported model.
        freeze_flips: with ``freeze_stable``, the share of the gated channels that may differ from the
            mask the stable stretch began with (0: none may change). The masks of a channel at the
            threshold keep flipping while the weights train, so an exact rule may never fire.
        freeze_votes: share of the gate-training steps, at their end, whose keep masks are tallied
            (:meth:`~wgates_plugin.WGates.record_votes`): the freeze then keeps, in every group, the channels
            open most often over them, at their mean count, landed on the budget, instead of the last step's
            mask (0: the last step's). The channels at the threshold keep flipping until the last step, so the
            last mask is one draw of them; the tally is the mask the weights trained under most often. A share
            above 0 tallies one step at least; exclusive with ``freeze_stable``, whose early end would cut the
            tally short.
        settle: share of ``gate_steps`` spent after the freeze, inside the pruning phase: the exported
            network is trained at its frozen widths with the weights' lr decaying (cosine) from
            ``weight_lr`` to 0, so the network the pruning phase hands back sits in a minimum for its
            own mask instead of ending on a step of size ``weight_lr`` taken for a mask that was still
            moving (Gate Decorator's Tick-Tock and gradual pruning's fine-tuning between pruning steps
            do the same). 0: every gate step trains the gates (:meth:`split`).
        distill / temperature: share of knowledge distillation from the unpruned model in the loss of
            gate training and settling (and of fine-tuning with ``distill_finetune``; :class:`Distillation`;
            0: plain cross-entropy), and its temperature. The default is 0: on Fashion-MNIST's validation
            split with fine-tuning at lr 0.003 (ResNet-20 at 25/12 % FLOPs, 5 seeds) a share of 0.5 in the
            pruning phase tied after fine-tuning and lowered the network right after pruning at 12 % by 2.3
            points on every seed (``benchmarks/RESULTS.md``, "The distillation screen at lr 0.003"). 0.5
            (:data:`~wgates_plugin.distill.DISTILL`) is the share chosen when distillation was screened on its own.
        distill_finetune: whether fine-tuning distils too (False: only the pruning phase, gate training and
            settling, learns from the unpruned model; fine-tuning is plain cross-entropy).
        latency_tolerance: in latency mode (a measured-latency cost model: LPNet or table), freezing ends with the
            exported network timed on the device and the budget corrected until its measured median is within
            this relative distance of the target (:func:`~wgates_plugin.latency_landing.land_on_latency`).
    """

    gate_steps: int = 100
    finetune_steps: int = 100
    gate_lr: float = 1e-3
    weight_lr: float = 0.003
    weight_schedule: str = "constant"
    weight_anneal: float = 1.0
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_batches: int = 20
    log_every: int = 10
    freeze_stable: int = 0
    freeze_flips: float = 0.0
    freeze_votes: float = 0.0
    settle: float = 0.0
    distill: float = DEFAULT_DISTILL
    temperature: float = TEMPERATURE
    distill_finetune: bool = False
    latency_tolerance: float = 0.03

    def __post_init__(self) -> None:
        for name in ("gate_steps", "finetune_steps", "bn_batches", "log_every", "freeze_stable"):
            value = getattr(self, name)
            low = 0 if name.endswith(("steps", "stable")) else 1
            check_number(name, value, f">= {low}", integer=True, type_error=ConfigError)
        for name in ("gate_lr", "weight_lr", "finetune_lr", "momentum", "weight_decay"):
            check_number(name, getattr(self, name), ">= 0", type_error=ConfigError)
        if self.weight_schedule not in WEIGHT_SCHEDULES:
            raise ConfigError(f"weight_schedule={self.weight_schedule!r} is not one of "
                              f"{', '.join(map(repr, WEIGHT_SCHEDULES))}")
        check_number("freeze_flips", self.freeze_flips, "[0, 1)", what="", type_error=ConfigError)
        check_number("freeze_votes", self.freeze_votes, "[0, 1]", what="", type_error=ConfigError)
        check_number("weight_anneal", self.weight_anneal, "(0, 1]", what="", type_error=ConfigError)
        check_number("settle", self.settle, "[0, 1)", what="", type_error=ConfigError)
        if self.weight_anneal != 1.0 and self.weight_schedule != "cosine":
            raise ConfigError(f"weight_anneal={self.weight_anneal!r} shapes the cosine weight schedule: it needs "
                              f"weight_schedule='cosine', not {self.weight_schedule!r}")
        if self.freeze_votes and self.freeze_stable:
            raise ConfigError(f"freeze_votes={self.freeze_votes!r} tallies the last gate steps and freeze_stable="
                              f"{self.freeze_stable!r} may end gate training before them: set one of them")
        if self.freeze_flips and not self.freeze_stable:
            raise ConfigError(f"freeze_flips={self.freeze_flips!r} loosens the early freeze: it needs freeze_stable "
                              ">= 1 (0 turns the early freeze off)")
        check_number("distill", self.distill, "[0, 1]", what="", type_error=ConfigError)
        check_number("temperature", self.temperature, "> 0", type_error=ConfigError)
        if not isinstance(self.distill_finetune, bool):
            raise ConfigError(f"distill_finetune={self.distill_finetune!r} must be True or False")
        check_number("latency_tolerance", self.latency_tolerance, "(0, 0.5)", what="", type_error=ConfigError)

    def split(self) -> tuple[int, int]:
        """``gate_steps`` as (steps training the gates, steps settling the exported network): ``settle``'s share,
        rounded, goes to the second."""
        settling = min(round(self.settle * self.gate_steps), self.gate_steps)
        return self.gate_steps - settling, settling

    @property
    def finetune_distils(self) -> bool:
        """Whether fine-tuning distils (``distill`` > 0 and ``distill_finetune``): whether it needs the teacher."""
        return bool(self.distill) and self.distill_finetune

    def distillation(self, teacher: nn.Module | None, finetune: bool = False) -> Distillation | None:
        """The distillation loss from ``teacher`` (the unpruned model) in the pruning phase, or in fine-tuning
        with ``finetune``; None when ``distill`` is 0, or in fine-tuning without ``distill_finetune``."""
        if not self.distill or teacher is None or (finetune and not self.finetune_distils):
            return None
        return Distillation(teacher, self.distill, self.temperature)


@dataclass
class PruneResult:
    """What :func:`prune_and_finetune` hands back.

    Attributes:
        model: the physically pruned, fine-tuned model.
        wgates: the :class:`~wgates_plugin.WGates` used (frozen; ``wgates.history`` replays the pruning).
        report: JSON-serializable figures (see :func:`prune_and_finetune`).
    """

    model: nn.Module
    wgates: Any
    report: dict[str, Any] = field(default_factory=dict)


def describe(model: nn.Module, example_inputs: Any, loader: Iterable | None,
             latency_input: torch.Tensor | None, threads: int) -> dict[str, Any]:
    """Parameters, MACs per sample, top-1 (when ``loader``) and latency (when ``latency_input``)."""
    out: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, example_inputs)}
    out["top1"] = evaluate(model, loader) if loader is not None else None
    out["latency_s"] = measure_latency(model, latency_input, threads) if latency_input is not None else None
    return out


def weight_anneal_factor(steps: int, share: float) -> Callable[[int], float]:
    """The factor on ``weight_lr`` after ``step`` scheduler steps of ``steps``: 1 until the last ``share`` of
    them, then a cosine decay reaching 0 at ``steps`` (``share=1`` is ``CosineAnnealingLR(T_max=steps)``)."""
    span = max(round(share * steps), 1)
    start = steps - span

    def factor(step: int) -> float:
        return 1.0 if step <= start else 0.5 * (1 + math.cos(math.pi * min(step - start, span) / span))
    return factor


def train_gates(model: nn.Module, wg: WGates, loader: Iterable, recipe: Recipe, progress: bool = True,
                on_step: StepCallback | None = None, teacher: nn.Module | None = None) -> list[dict]:
    """Joint training: SGD on the weights, Adam on the gates, task loss + ``wg.efficiency_loss()``.

    Trains for the gate share of ``recipe.gate_steps`` (:meth:`Recipe.split`; all of them unless
    ``recipe.settle``: the rest is :func:`settle`'s, after the freeze). Every step ends with the
    target-mode multiplier step (``wg.update_multiplier()``), then
    ``on_step(step, {"loss": ..., "extra": ...})`` if given. With ``recipe.freeze_stable``, training
    ends once the cost is within the target and the masks were stable that long (``wg.steps`` counts
    the steps taken). An earlier tally of ``wg`` (:meth:`~wgates_plugin.WGates.record_votes`) is forgotten;
    with ``recipe.freeze_votes``, the keep masks of the last steps are tallied for the freeze that follows.
    With ``recipe.distill`` and a ``teacher``, the task loss distills from it.

    Returns:
        The live trace, one record every ``recipe.log_every`` steps: step, loss, FLOPs and cost
        ratios, multiplier.
    """
    weights = torch.optim.SGD(model.parameters(), lr=recipe.weight_lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    gates = torch.optim.Adam(wg.parameters(), lr=recipe.gate_lr)
    trace: list[dict] = []
    stable = {"mask": None, "steps": 0}
    steps = recipe.split()[0]
    # the last steps whose masks the freeze keeps by vote (one at least where a share is asked for)
    voting = min(steps, max(1, round(recipe.freeze_votes * steps))) if recipe.freeze_votes else 0
    wg.clear_votes()  # the freeze that follows reads this training's masks only

    def settled() -> bool:  # within the target, and within freeze_flips of the mask the stable stretch began with
        mask = torch.cat(wg.keep_masks())
        ref = stable["mask"]
        flips = mask.numel() if ref is None else int((mask != ref).sum())  # type: ignore[union-attr]
        if flips <= recipe.freeze_flips * mask.numel():
            stable["steps"] += 1  # type: ignore[operator]
        else:
            stable["mask"], stable["steps"] = mask, 0
        target = wg.config.target
        within = target is not None and wg.cost_ratio() <= target * (1 + wg.config.tolerance)
        return bool(recipe.freeze_stable) and within and stable["steps"] >= recipe.freeze_stable  # type: ignore[operator]

    def log(step: int, stats: dict[str, float]) -> dict[str, str]:
        wg.update_multiplier()
        if voting and step >= steps - voting:
            wg.record_votes()
        if on_step is not None:
            on_step(step, stats)
        live = {"flops": wg.flops_ratio(), "cost": wg.cost_ratio()}
        if step % recipe.log_every == 0 or step == steps - 1:
            trace.append({"step": step, "loss": stats["loss"], "flops_ratio": live["flops"],
                          "cost_ratio": live["cost"], "multiplier": wg.multiplier.value})
        return {"flops": f"{live['flops']:.3f}"}

    schedule = (torch.optim.lr_scheduler.LambdaLR(weights, weight_anneal_factor(steps, recipe.weight_anneal))
                if recipe.weight_schedule == "cosine" and steps else None)
    train_steps(model, loader, [weights, gates], steps, extra_loss=wg.efficiency_loss,
                scheduler=schedule, callback=log, progress=progress, desc="gates",
                stop=settled if recipe.freeze_stable else None, distill=recipe.distillation(teacher))
    return trace


def settle(pruned: nn.Module, loader: Iterable, recipe: Recipe, progress: bool = True,
           teacher: nn.Module | None = None) -> int:
    """The settling share of the gate steps (``recipe.settle``): train the exported network ``pruned`` at its
    frozen widths, SGD with the weights' lr decaying (cosine) from ``recipe.weight_lr`` to 0. Returns the steps
    taken (0 when ``recipe.settle`` is 0)."""
    steps = recipe.split()[1]
    if steps:
        fit(pruned, loader, steps, recipe.weight_lr, recipe.momentum, recipe.weight_decay, progress, desc="settle",
            distill=recipe.distillation(teacher))
    return steps


def prune_and_finetune(
    model: nn.Module,
    example_inputs: Any,
    train_loader: Iterable,
    test_loader: Iterable | None = None,
    target: float = 0.5,
    recipe: Recipe | None = None,
    wgates: Any = None,
    latency_input: torch.Tensor | None = None,
    threads: int = 1,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` to a FLOPs budget with W-Gates and fine-tune it: the whole recipe.

    Steps: measure the baseline → attach :class:`~wgates_plugin.WGates` (target mode, ``target`` of
    the FLOPs) → train gates and weights jointly for ``recipe.gate_steps`` (less the ``recipe.settle``
    share) → ``freeze()`` (lands the budget exactly) → ``export()`` (a physically smaller copy,
    verified) → :func:`settle` it for the rest of the gate steps → re-calibrate BN →
    fine-tune for ``recipe.finetune_steps`` → measure again. ``model`` itself is trained in place
    during the gate phase and its gate hooks are removed at the end.

    Args:
        model: the trained baseline.
        example_inputs: a batch the model accepts, for tracing and FLOPs counting.
        train_loader: ``(inputs, labels)`` batches for every training phase and BN re-calibration.
        test_loader: for top-1 figures (``None`` skips them).
        target: FLOPs budget as a fraction of the baseline's, in (0, 1]; ignored when ``wgates`` is given.
        recipe: the knobs (default :class:`Recipe`).
        wgates: an already attached ``WGates`` on ``model`` (e.g. with a latency model) to use instead.
        latency_input: a batch to time the baseline and the result on (``None`` skips latency).
        threads: threads used for the latency measurement.
        progress: show progress bars.

    Returns:
        A :class:`PruneResult`. ``report`` holds ``before`` / ``after`` (params, macs, top1,
        latency_s), ``flops_ratio`` (after / before MACs), ``top1`` at every stage (baseline, gated,
        exported (only with ``recipe.settle``), pruned, recalibrated, finetuned), ``kept`` (group →
        [kept, channels]), the gate-training ``trace``, the ``recipe`` and wall ``seconds`` per phase.
    """
    recipe = recipe or Recipe()
    stage = prune_phase(model, example_inputs, train_loader, test_loader, target, recipe, wgates, latency_input,
                        threads, progress)
    report = finetune_phase(stage, example_inputs, train_loader, test_loader, recipe, latency_input, threads,
                            progress)
    return PruneResult(stage.model, stage.wgates, report)


@dataclass
class Stage:
    """The state between the pruning and the fine-tuning phase: what a resumed run starts from.

    Attributes:
        model: the exported (physically pruned), BN re-calibrated model.
        history: torch-pruning's history that turns the original architecture into ``model``'s.
        report: the figures so far (``before``, ``top1`` up to ``recalibrated``, ``kept``, ``trace``,
            ``target``, ``seconds``); JSON-serializable.
        wgates: the frozen :class:`~wgates_plugin.WGates` (None when the stage was loaded from disk).
        teacher: the unpruned model, for distillation while fine-tuning (None: none kept).
    """

    model: nn.Module
    history: list
    report: dict[str, Any]
    wgates: Any = None
    teacher: nn.Module | None = None


def prune_phase(model: nn.Module, example_inputs: Any, train_loader: Iterable, test_loader: Iterable | None,
                target: float = 0.5, recipe: Recipe | None = None, wgates: Any = None,
                latency_input: torch.Tensor | None = None, threads: int = 1, progress: bool = True) -> Stage:
    """The first half of :func:`prune_and_finetune`: baseline figures, gate training, freeze, export,
    BN re-calibration."""
    recipe = recipe or Recipe()
    clock = _Clock()
    if wgates is not None:
        wgates.remove()  # the baseline is measured without gate hooks
    before = describe(model, example_inputs, test_loader, latency_input, threads)
    teacher = copy.deepcopy(model).eval() if recipe.distill else None  # hook-free: the gates are off here
    latency_mode = (wgates is not None and isinstance(wgates.efficiency, MeasuredLatency)
                    and wgates.config.target is not None)
    reference = copy.deepcopy(model).eval() if latency_mode else None  # hook-free: timed beside every candidate
    wg = wgates if wgates is not None else WGates(model, example_inputs, target=target)
    wg.attach()
    trace = train_gates(model, wg, train_loader, recipe, progress, teacher=teacher)
    top1 = {"baseline": before["top1"], "gated": _maybe_eval(model, test_loader)}
    clock.lap("gates")
    landing = None
    if latency_mode:  # land on the measured latency, the unpruned model re-measured beside every candidate
        landing = land_on_latency(wg, wg.config.target, wg.efficiency.measure_times,
                                  tolerance=recipe.latency_tolerance, reference=reference)
        pruned = landing.model
    else:
        wg.freeze()
        pruned = wg.export()
    wg.remove()
    if recipe.split()[1]:
        top1["exported"] = _maybe_eval(pruned, test_loader)
        settle(pruned, train_loader, recipe, progress, teacher)
    top1["pruned"] = _maybe_eval(pruned, test_loader)
    recalibrate_bn(pruned, train_loader, recipe.bn_batches)
    top1["recalibrated"] = _maybe_eval(pruned, test_loader)
    clock.lap("export")
    report = {"target": wg.config.target, "before": before, "top1": top1,
              "kept": {k: list(v) for k, v in wg.kept().items()}, "trace": trace, "seconds": clock.laps}
    if landing is not None:
        report["latency_landing"] = landing.report()
    return Stage(pruned, [list(e) for e in wg.history], report, wg, teacher if recipe.finetune_distils else None)


def finetune_phase(stage: Stage, example_inputs: Any, train_loader: Iterable, test_loader: Iterable | None,
                   recipe: Recipe | None = None, latency_input: torch.Tensor | None = None, threads: int = 1,
                   progress: bool = True) -> dict[str, Any]:
    """The second half of :func:`prune_and_finetune`: fine-tune ``stage.model`` in place and measure it;
    returns the whole report."""
    recipe = recipe or Recipe()
    clock = _Clock()
    pruned = stage.model
    fit(pruned, train_loader, recipe.finetune_steps, recipe.finetune_lr, recipe.momentum, recipe.weight_decay,
        progress, desc="finetune", distill=recipe.distillation(stage.teacher, finetune=True))
    clock.lap("finetune")
    after = describe(pruned, example_inputs, test_loader, latency_input, threads)
    report = copy.deepcopy(stage.report)
    report["top1"]["finetuned"] = after["top1"]
    report.update(after=after, flops_ratio=after["macs"] / report["before"]["macs"], recipe=asdict(recipe))
    report["seconds"].update(clock.laps)
    return report


def _maybe_eval(model: nn.Module, loader: Iterable | None) -> float | None:
    return evaluate(model, loader) if loader is not None else None


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 3)
        self.start = now
