"""The baseline pruning methods of the benchmark, each landing on the same FLOPs budget.

Every method takes a :class:`PruneContext` (a trained model it may change, a tracing input, the
training batches, the FLOPs budget and a step budget) and returns a :class:`Pruned`: a physically
pruned plain ``nn.Module`` whose conv + linear MACs (:func:`~wgates_plugin.count_macs`) are within
``budget * (1 ± tolerance)`` of the unpruned model's, the training steps it spent while pruning, and
a JSON-serializable ``info``.

All methods prune the same channel groups: the producer layers named in ``ctx.prunable``, by default
:func:`prunable_layers` = the groups W-Gates gates (residual-coupled outputs and the classifier stay
whole). Each searches one knob by bisection (:mod:`benchmarks.landing`), measuring the FLOPs of the
physically pruned candidate:

- ``uniform``: no criterion, every group keeps its first channels (a width multiplier); knob: the
  per-layer ratio.
- ``random``: a random subset per group (``torch.randperm`` seeded by ``ctx.seed``); per-layer ratio.
- ``l1``: NNI 3 ``L1NormPruner`` (filter L1 norm); per-layer ratio.
- ``fpgm``: NNI 3 ``FPGMPruner`` (summed distance to the layer's other filters); per-layer ratio.
- ``slim``: Network Slimming with torch-pruning's ``BNScalePruner``: L1 on BN gamma during
  ``ctx.steps`` training steps, then global ranking of |gamma|; knob: the global ratio.
- ``taylor``: NNI 3 ``TaylorPruner``: ``ctx.steps`` training steps accumulate ``(w * dL/dw)^2``,
  summed per filter; global ranking of that metric; global ratio.
- ``depgraph``: torch-pruning's ``GroupNormPruner``: group-norm sparse training for ``ctx.steps``
  steps, then global ranking of the (mean-normalized) group L2 norms; global ratio.

The per-layer methods remove the same number of channels from a group at a given ratio, so at one
budget ``uniform``, ``random``, ``l1`` and ``fpgm`` build the same architecture and differ only in
which channels they keep. The global methods train *once* (their pruning-time training, counted in
``steps_used``), score every channel once, and the ratio search ranks those fixed scores on deep
copies: no search step trains again.

Global ranking, also for Taylor: Molchanov et al. (2019), whose criterion NNI's ``TaylorPruner``
implements, rank all filters of the network together, as Network Slimming and DepGraph do. NNI's own
global mode (``global_group_id``) counts weight elements rather than channels and can empty a layer,
and NNI produces masks at one ratio per accumulation; so the Taylor metric NNI computes is recorded
(:class:`_RecordingTaylorPruner`) and ranked here at every ratio the search tries. Every global
ranking keeps each group's best channel, so no layer is emptied (torch-pruning's one-shot global
step would instead skip a group whose every channel falls under the threshold).

Example:
    >>> import torch
    >>> from benchmarks.methods import METHODS, PruneContext, prunable_layers
    >>> from benchmarks.models import build
    >>> model, x = build("resnet20").eval(), torch.zeros(1, 3, 32, 32)
    >>> ctx = PruneContext(model, x, [], budget=0.5, seed=0, steps=0, prunable=prunable_layers(model, x))
    >>> out = METHODS["uniform"](ctx)
    >>> abs(out.info["achieved"] / 0.5 - 1) <= 0.02
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from benchmarks.landing import FlopsMeter, GlobalPath, Landing, LayerwisePath, Plan, Window, land
from wgates_plugin.app.training import Distillation
from wgates_plugin.efficiency.flops import count_macs
from wgates_plugin.errors import BudgetError, ConfigError, ConfigTypeError
from wgates_plugin.export import prune_groups
from wgates_plugin.groups import ChannelGroup, Role, gated_groups, trace_groups

__all__ = ["MethodDefaults", "DEFAULTS", "PruneContext", "Pruned", "prunable_layers", "METHODS", "get_method",
           "uniform", "random_channels", "l1", "fpgm", "slim", "taylor", "depgraph"]


@dataclass(frozen=True)
class MethodDefaults:
    """Hyper-parameters of the methods' pruning-time training.

    Attributes:
        lr, momentum, weight_decay: SGD on cross-entropy, for every training step a method takes.
        slim_reg: Network Slimming's L1 coefficient on BN gamma (Liu et al. 2017 use 1e-4 for VGG,
            1e-5 for ResNet; the larger one, since the step budgets here are short).
        depgraph_reg: DepGraph's group-norm coefficient (torch-pruning's ``GroupNormPruner`` default).
        depgraph_alpha: the group regularization is scaled per channel within ``[1, depgraph_alpha]``,
            strongest on the least important (torch-pruning's ``regularize`` default, 2**4).
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    slim_reg: float = 1e-4
    depgraph_reg: float = 1e-4
    depgraph_alpha: float = 16.0


DEFAULTS = MethodDefaults()


@dataclass
class PruneContext:
    """What the harness gives every method.

    Attributes:
        model: a deep copy of the trained baseline, owned by the method (it may be changed).
        example: a ``(1, 3, 32, 32)`` tracing input.
        train_loader: ``(x, y)`` batches of the training split (re-iterated if ``steps`` exceeds it).
        budget: FLOPs to keep (conv + linear MACs, ``count_macs``), a fraction of the baseline's.
        seed: seeds the method's own randomness (``random``'s channel choice).
        steps: the most training steps the method may spend while pruning (0 = none).
        prunable: the producer layers whose output channels may be pruned (:func:`prunable_layers`).
        tolerance: the achieved FLOPs ratio must satisfy ``|achieved / budget - 1| <= tolerance``.
        hyper: the training hyper-parameters (:data:`DEFAULTS`).
        distill: knowledge distillation from the unpruned model for the method's training (None: off).

    Raises:
        ConfigError: a value out of range (named in the message).
        ConfigTypeError: ``budget`` or ``tolerance`` is not a number.
    """

    model: nn.Module
    example: torch.Tensor
    train_loader: Iterable
    budget: float
    seed: int
    steps: int
    prunable: tuple[str, ...]
    tolerance: float = 0.02
    hyper: MethodDefaults = DEFAULTS
    distill: Distillation | None = None

    def __post_init__(self) -> None:
        for name in ("budget", "tolerance"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ConfigTypeError(f"{name}={getattr(self, name)!r} must be a number")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget={self.budget!r} must be in (0, 1] (a fraction of the baseline's FLOPs)")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"tolerance={self.tolerance!r} must be in (0, 1) (relative to the budget)")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"steps={self.steps!r} must be an int >= 0")
        self.prunable = tuple(self.prunable)
        if not self.prunable:
            raise ConfigError("prunable is empty: name the producer layers that may be pruned "
                              "(benchmarks.methods.prunable_layers(model, example))")


@dataclass
class Pruned:
    """A method's result: the physically pruned model, the training steps it spent, and facts (JSON)."""

    model: nn.Module
    steps_used: int
    info: dict[str, Any] = field(default_factory=dict)


def with_hyper(prune: Callable[[PruneContext], Pruned], max_steps: int | None = None,
               **overrides: float) -> Callable[[PruneContext], Pruned]:
    """``prune`` run with some of its :class:`MethodDefaults` changed and, optionally, at most ``max_steps``.

    The harness's methods read their knobs from ``ctx.hyper``; this is how a screen or a named harness
    method (``taylor_wlr``) gives one of them other knobs without a copy of the method.

    Raises:
        ConfigError: an override that is not a field of :class:`MethodDefaults` (named in the message).
    """
    unknown = sorted(set(overrides) - set(MethodDefaults.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a knob of MethodDefaults; allowed: "
                          f"{', '.join(MethodDefaults.__dataclass_fields__)}")

    def run(ctx: PruneContext) -> Pruned:
        steps = ctx.steps if max_steps is None else min(max_steps, ctx.steps)
        return prune(replace(ctx, hyper=replace(ctx.hyper, **overrides), steps=steps))

    return run


# ---------------------------------------------------------------------------- the prunable groups
def prunable_layers(model: nn.Module, example: torch.Tensor, prune_shortcuts: bool = False) -> tuple[str, ...]:
    """Producer layers of the groups W-Gates gates by default (:func:`~wgates_plugin.groups.gated_groups`).

    Residual-coupled groups are included only with ``prune_shortcuts``; groups that cannot be pruned
    exactly (the classifier) never are. The model is traced in eval mode (a train-mode trace would
    move BN statistics) and left in the mode it was in.
    """
    was_training = model.training
    try:
        groups = gated_groups(model.eval(), example, prune_shortcuts=prune_shortcuts)[1]
    finally:
        model.train(was_training)
    return tuple(m.name for g in groups for m in g.producers)


def _groups(ctx: PruneContext) -> list[ChannelGroup]:
    """The traced groups ``ctx.prunable`` selects; every named layer must be a producer of one.

    Puts ``ctx.model`` in eval mode first: tracing and counting run forwards, which in train mode
    would move the baseline's BN statistics.
    """
    ctx.model.eval()
    named = set(ctx.prunable)
    chosen = [g for g in trace_groups(ctx.model, ctx.example).groups if named & set(g.layer_names)]
    for g in chosen:
        missing = sorted(set(g.layer_names) - named)
        if missing:
            raise ConfigError(f"prunable names part of the coupled group '{g.name}' but not {missing}: coupled "
                              "layers keep the same channels, so name all of them or none")
        if g.reason or g.tie > 1:
            raise ConfigError(f"prunable names '{g.name}', which cannot be pruned here: "
                              f"{g.reason or f'it feeds a grouped conv ({g.tie} groups)'}")
    unknown = sorted(named - {n for g in chosen for n in g.layer_names})
    if unknown:
        raise ConfigError(f"prunable names {unknown}, which produce no prunable channel group of the model; "
                          f"use prunable_layers(model, example)")
    return chosen


# ---------------------------------------------------------------------------- shared steps
def _window(ctx: PruneContext) -> Window:
    return Window(ctx.budget, ctx.tolerance)


def _apply(ctx: PruneContext, plan: Plan) -> None:
    prune_groups(ctx.model, ctx.example, {k: torch.tensor(v, dtype=torch.long) for k, v in plan.items() if v})


def _finish(ctx: PruneContext, name: str, meter: FlopsMeter, landing: Landing, ranking: str,
            steps_used: int = 0) -> Pruned:
    """Check the final model's FLOPs and collect the facts the harness reports."""
    ctx.model.eval()
    macs = count_macs(ctx.model, ctx.example)
    achieved = macs / meter.base
    if not _window(ctx).contains(achieved):
        raise BudgetError(f"method '{name}' built a model with {achieved:.4f} of the FLOPs for a budget of "
                          f"{ctx.budget:g} (searched {landing.achieved:.4f}); the closest achieved ratio is "
                          f"{achieved:.4f}")
    kept = {g: size - len(landing.plan.get(g, ())) for g, size in meter.sizes.items()}
    info = {"method": name, "budget": ctx.budget, "achieved": achieved, "macs": macs, "base_macs": meter.base,
            "ratio": landing.knob, "ranking": ranking, "search_iterations": landing.iterations,
            "off_path_channels": len(landing.off_path),
            "off_path": [list(step) for step in landing.off_path], "removed_fraction": 1 - sum(kept.values()) / sum(
                meter.sizes.values()), "kept": kept, "steps": steps_used}
    return Pruned(ctx.model, steps_used, info)


def _search(ctx: PruneContext, name: str, groups: Sequence[ChannelGroup],
            scores: dict[str, torch.Tensor] | None = None) -> tuple[FlopsMeter, Landing]:
    """Land the budget along the per-layer path, or along the global ranking of ``scores``."""
    ctx.model.eval()
    meter = FlopsMeter(ctx.model, ctx.example, groups)
    path = LayerwisePath(groups) if scores is None else GlobalPath(scores)
    return meter, land(path, meter, _window(ctx), name)


def _removed_counts(landing: Landing) -> dict[str, int]:
    return {g: len(v) for g, v in landing.plan.items() if v}


# ---------------------------------------------------------------------------- per-layer methods
def uniform(ctx: PruneContext) -> Pruned:
    """Same ratio in every group, keeping each group's first channels (a width multiplier)."""
    groups = _groups(ctx)
    meter, landing = _search(ctx, "uniform", groups)
    _apply(ctx, landing.plan)  # the search's plans already keep the first channels
    return _finish(ctx, "uniform", meter, landing, "per-layer")


def random_channels(ctx: PruneContext) -> Pruned:
    """Same ratio in every group, a random subset of channels kept (``torch.randperm`` seeded by ``ctx.seed``)."""
    groups = _groups(ctx)
    meter, landing = _search(ctx, "random", groups)
    gen = torch.Generator().manual_seed(ctx.seed)
    perms = {g.name: torch.randperm(g.size, generator=gen) for g in groups}  # (size,) each, in group order
    counts = _removed_counts(landing)
    _apply(ctx, {g: sorted(perms[g][:n].tolist()) for g, n in counts.items()})
    return _finish(ctx, "random", meter, landing, "per-layer")


def l1(ctx: PruneContext) -> Pruned:
    """NNI 3 ``L1NormPruner`` at the per-layer counts that land the budget; masks -> physical model."""
    from nni.compression.pruning import L1NormPruner

    return _nni_layerwise(ctx, "l1", L1NormPruner)


def fpgm(ctx: PruneContext) -> Pruned:
    """NNI 3 ``FPGMPruner`` at the per-layer counts that land the budget; masks -> physical model."""
    from nni.compression.pruning import FPGMPruner

    return _nni_layerwise(ctx, "fpgm", FPGMPruner)


def _nni_layerwise(ctx: PruneContext, name: str, pruner_cls: type) -> Pruned:
    from wgates_plugin.speedup import speedup

    groups = _groups(ctx)
    meter, landing = _search(ctx, name, groups)
    pruner = pruner_cls(ctx.model, _nni_config(groups, _removed_counts(landing)))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    speedup(ctx.model, masks, ctx.example, strict=True)
    return _finish(ctx, name, meter, landing, "per-layer")


def _nni_config(groups: Sequence[ChannelGroup], removed: dict[str, int]) -> list[dict[str, Any]]:
    """One NNI entry per group losing channels. NNI masks ``int(C * sparse_ratio)`` filters, so
    ``(n + 1/2) / C`` masks exactly ``n``."""
    return [_nni_entry(i, g, (removed[g.name] + 0.5) / g.size) for i, g in enumerate(groups) if removed.get(g.name)]


def _nni_entry(index: int, group: ChannelGroup, sparse_ratio: float) -> dict[str, Any]:
    """An NNI config entry for one group; coupled producers share a ``dependency_group_id`` (same masks)."""
    entry: dict[str, Any] = {"op_names": group.layer_names, "sparse_ratio": sparse_ratio}
    if len(group.layer_names) > 1:
        entry["dependency_group_id"] = index
    return entry


# ---------------------------------------------------------------------------- training
def _batches(loader: Iterable, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches, re-iterating ``loader`` as often as needed."""
    done = 0
    while done < steps:
        before, batches = done, iter(loader)
        while done < steps and (batch := next(batches, None)) is not None:  # no batch drawn beyond ``steps``
            yield batch[0], batch[1]
            done += 1
        if done == before:
            raise ConfigError(f"train_loader yielded no batch, but {steps} training steps were asked for")


def _train(ctx: PruneContext, regularize: Callable[[nn.Module], None] | None = None) -> int:
    """``ctx.steps`` SGD steps on cross-entropy; ``regularize`` edits the gradients before each step."""
    h = ctx.hyper
    opt = torch.optim.SGD(ctx.model.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
    ctx.model.train()
    done = 0
    for x, y in _batches(ctx.train_loader, ctx.steps):
        opt.zero_grad()
        out = ctx.model(x)
        (ctx.distill(out, y, x) if ctx.distill is not None else F.cross_entropy(out, y)).backward()
        if regularize is not None:
            regularize(ctx.model)
        opt.step()
        done += 1
    ctx.model.eval()
    return done


# ---------------------------------------------------------------------------- global methods
def _ignored(model: nn.Module, groups: Sequence[ChannelGroup]) -> list[nn.Module]:
    """Conv / linear / BN layers outside the prunable groups: torch-pruning neither regularizes nor ranks them."""
    inside = {id(m.module) for g in groups for m in g.members if m.role is not Role.CONSUMER}
    kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    return [m for m in model.modules() if isinstance(m, kinds) and id(m) not in inside]


def _tp_scores(pruner: tp.pruner.BasePruner, groups: Sequence[ChannelGroup], name: str) -> dict[str, torch.Tensor]:
    """The pruner's own importance of every group's channels, ``(size,)`` in root output order."""
    scores = {}
    for g in groups:
        fn = pruner.DG.get_pruner_of_module(g.root).prune_out_channels
        imp = pruner.estimate_importance(pruner.DG.get_pruning_group(g.root, fn, list(range(g.size))))
        if imp is None:
            raise ConfigError(f"method '{name}' has no importance for group '{g.name}' (no BatchNorm in it?)")
        scores[g.name] = imp.detach().float().cpu()
    return scores


def _global(ctx: PruneContext, name: str, groups: Sequence[ChannelGroup], scores: dict[str, torch.Tensor],
            steps_used: int) -> Pruned:
    meter, landing = _search(ctx, name, groups, scores)
    _apply(ctx, landing.plan)
    return _finish(ctx, name, meter, landing, "global", steps_used)


def slim(ctx: PruneContext) -> Pruned:
    """Network Slimming (Liu et al. 2017): L1 on BN gamma while training, then global ranking of |gamma|.

    torch-pruning's ``BNScalePruner`` adds the L1 subgradient (``regularize``) during ``ctx.steps``
    steps and scores channels with ``BNScaleImportance`` unnormalized (the paper's global threshold
    on raw |gamma|).
    """
    groups = _groups(ctx)
    pruner = tp.pruner.BNScalePruner(ctx.model, ctx.example, importance=tp.importance.BNScaleImportance(
        normalizer=None), reg=ctx.hyper.slim_reg, global_pruning=True, ignored_layers=_ignored(ctx.model, groups))
    used = _train(ctx, lambda m: pruner.regularize(m))
    return _global(ctx, "slim", groups, _tp_scores(pruner, groups, "slim"), used)


def depgraph(ctx: PruneContext) -> Pruned:
    """DepGraph group-norm pruning (Fang et al. 2023) with torch-pruning's ``GroupNormPruner``.

    Sparse training with ``regularize`` for ``ctx.steps`` steps, then global ranking of the group L2
    importance (``GroupMagnitudeImportance(p=2)``, mean-normalized per group, torch-pruning's defaults).
    """
    groups = _groups(ctx)
    h = ctx.hyper
    pruner = tp.pruner.GroupNormPruner(ctx.model, ctx.example, importance=tp.importance.GroupMagnitudeImportance(
        p=2), reg=h.depgraph_reg, global_pruning=True, ignored_layers=_ignored(ctx.model, groups))
    used = _train(ctx, lambda m: pruner.regularize(m, alpha=h.depgraph_alpha))
    return _global(ctx, "depgraph", groups, _tp_scores(pruner, groups, "depgraph"), used)


def taylor(ctx: PruneContext) -> Pruned:
    """First-order Taylor importance (Molchanov et al. 2019) accumulated by NNI 3's ``TaylorPruner``.

    NNI trains ``ctx.steps`` steps (SGD, the weights move) while summing ``(w * dL/dw)^2`` per filter;
    its metric is recorded and ranked globally here (see the module docstring for why).

    Raises:
        ConfigError: ``ctx.steps`` is 0 (the criterion needs gradients).
    """
    if ctx.steps < 1:
        raise ConfigError("method 'taylor' needs steps >= 1: its importance is accumulated from gradients")
    groups = _groups(ctx)
    metrics, used = _taylor_metrics(ctx, groups)
    return _global(ctx, "taylor", groups, {g.name: _group_scores(g, metrics) for g in groups}, used)


def _taylor_metrics(ctx: PruneContext, groups: Sequence[ChannelGroup]) -> tuple[dict[str, torch.Tensor], int]:
    import nni
    from nni.compression import TorchEvaluator

    counter: list[int] = []

    def training_step(batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    def training_func(model: nn.Module, optimizers: Any, training_step: Callable, lr_schedulers: Any = None,
                      max_steps: int | None = None, max_epochs: int | None = None) -> None:
        model.train()
        for batch in _batches(ctx.train_loader, max_steps or ctx.steps):
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            counter.append(1)

    h = ctx.hyper
    opt = nni.trace(torch.optim.SGD)(ctx.model.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
    evaluator = TorchEvaluator(training_func, opt, training_step, dummy_input=ctx.example)
    config = [_nni_entry(i, g, 0.5) for i, g in enumerate(groups)]  # the ratio is unused: masks are discarded
    pruner = _recording_taylor()(ctx.model, config, evaluator, training_steps=ctx.steps)
    pruner.compress()
    pruner.unwrap_model()
    ctx.model.eval()
    recorded = pruner.recorded or {}
    metrics = {name: entry["weight"].detach().flatten().float().cpu() for name, entry in recorded.items()}
    return metrics, len(counter)


def _recording_taylor() -> type:
    """NNI's ``TaylorPruner`` that keeps the metric it computes (NNI only keeps the masks at one ratio)."""
    from nni.compression.pruning import TaylorPruner

    class _RecordingTaylorPruner(TaylorPruner):
        recorded: dict[str, dict[str, torch.Tensor]] | None = None

        def _calculate_metrics(self, data: Any) -> Any:
            self.recorded = super()._calculate_metrics(data)
            return self.recorded

    return _RecordingTaylorPruner


def _group_scores(group: ChannelGroup, per_layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum the producers' per-filter metrics onto the group's channels; ``(size,)`` in root output order."""
    channel = torch.zeros(group.size)  # by group channel
    for m in group.producers:
        channel.index_add_(0, m.channels, per_layer[m.name][m.idxs])
    root = next(m for m in group.producers if m.module is group.root)
    out = torch.zeros(group.size)
    out[root.idxs] = channel[root.channels]
    return out


# ---------------------------------------------------------------------------- registry
METHODS: dict[str, Callable[[PruneContext], Pruned]] = {
    "uniform": uniform, "random": random_channels, "l1": l1, "fpgm": fpgm,
    "slim": slim, "taylor": taylor, "depgraph": depgraph,
}


def get_method(name: str) -> Callable[[PruneContext], Pruned]:
    """The method called ``name``; :class:`ConfigError` listing :data:`METHODS` otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method={name!r} is not a baseline method; allowed: {', '.join(METHODS)}")
    return METHODS[name]
