"""The learned methods of the comparison: W-Gates (FLOPs and latency mode), Gate Decorator, scratch.

Each follows the :mod:`benchmarks.methods` contract: ``method(ctx) -> Pruned`` with the physically
pruned model, the training steps spent while pruning (they count against the total budget) and
JSON-serializable details. Extra knobs are bound with :func:`functools.partial` by the harness.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wgates_plugin import WGates
from wgates_plugin.app.training import Recipe, evaluate, recalibrate_bn, train_gates
from wgates_plugin.app.training import settle as settle_exported
from wgates_plugin.budget import Budget, land
from wgates_plugin.distill import Distillation
from wgates_plugin.efficiency import FitConfig, LatencyPredictor, Timing
from wgates_plugin.errors import BudgetError, ConfigError
from wgates_plugin.gate_decorator import GateDecorator, TickTock
from wgates_plugin.latency_landing import land_on_latency
from wgates_plugin.profiling import collect_latency, train_predictor
from wgates_plugin.utils import check_number

from .methods import PruneContext, Pruned

__all__ = ["wgates", "gate_decorator", "scratch", "latency_predictor", "TraceEval", "uniform_counts"]

TraceEval = Callable[[nn.Module], float]  # calibrated top-1 of the (gated) model, for live traces


def wgates(ctx: PruneContext, gate_lr: float, weight_lr: float, momentum: float, weight_decay: float,
           predictor: LatencyPredictor | None = None, trace_eval: TraceEval | None = None, eval_every: int = 8,
           freeze_stable: int = 0, freeze_flips: float = 0.0, cost_model: Any = None,
           weight_schedule: str = Recipe.weight_schedule,
           settle: float = Recipe.settle, weight_anneal: float = Recipe.weight_anneal, self_distill: float = 0.0,
           freeze_votes: float = Recipe.freeze_votes, **options: Any) -> Pruned:
    """W-Gates in target mode: gates and weights trained jointly for ``ctx.steps``, then frozen on budget.

    FLOPs mode (``predictor=None``) lands the FLOPs budget exactly. Latency mode trains against an
    LPNet latency budget (initially the predicted latency of the uniformly thinned network of the same
    FLOPs), then freezes at the latency target whose network has the FLOPs budget (bisection), so both
    modes are compared at equal FLOPs.

    Args:
        ctx: the pruning context (``ctx.model`` is trained in place and keeps no hooks afterwards).
        gate_lr: Adam learning rate of the gates.
        weight_lr / momentum / weight_decay: SGD on the weights during gate training.
        weight_schedule: ``Recipe.weight_schedule`` (constant or cosine ``weight_lr`` over the gate steps).
        weight_anneal: ``Recipe.weight_anneal`` (the share of the gate steps a cosine schedule decays over).
        settle: ``Recipe.settle``: the share of ``ctx.steps`` that trains the exported network at its frozen
            widths (cosine lr to 0) before it is handed back; those steps are charged too.
        freeze_votes: ``Recipe.freeze_votes`` (the share of the last gate steps whose masks the freeze keeps by
            vote).
        self_distill: share of knowledge distillation from the unpruned model (a copy taken before the
            gates attach) in the loss of W-Gates' own steps only, gate training and settling: the
            network it hands back has learned from the unpruned one, and the harness's fine-tuning
            stays plain cross-entropy, as for every other method. 0: none. Exclusive with the
            protocol's ``distill`` (``ctx.distill``), which distils in every method's training.
        predictor: an LPNet of ``ctx.model``'s architecture (latency mode at equal FLOPs).
        cost_model: a measured-latency model source (``LatencyTable`` or ``LatencyPredictor``): latency
            mode *at the latency budget* — ``ctx.budget`` is then a fraction of the measured latency, and
            the gates are frozen by the closed-loop landing on the device's measurement.
        trace_eval: if given, the gated model's calibrated top-1 is recorded every ``eval_every`` steps.
        options: further :class:`~wgates_plugin.WGatesConfig` fields (the ablations use them).
    """
    if predictor is not None and cost_model is not None:
        raise ConfigError("pass predictor (latency mode at equal FLOPs) or cost_model (at the latency budget), "
                          "not both")
    torch.manual_seed(ctx.seed)
    model, x = ctx.model, ctx.example
    efficiency, target = None, ctx.budget
    if predictor is not None:
        efficiency = predictor.efficiency(model, x)
        target = _uniform_latency(predictor, model, x, ctx.budget)
    elif cost_model is not None:
        efficiency = cost_model.efficiency(model, x)
    if options.get("mode") == "paper":  # alpha alone decides the widths (the Table VI sweep): no target
        target = None
    reference = copy.deepcopy(model).eval() if cost_model is not None else None  # unpruned, hook-free
    kd = _own_distillation(ctx, model, self_distill)
    wg = WGates(model, x, target=target, efficiency=efficiency, **options)
    _check_same_layers(wg, ctx)
    recipe = Recipe(gate_steps=ctx.steps, gate_lr=gate_lr, weight_lr=weight_lr, weight_schedule=weight_schedule,
                    momentum=momentum, settle=settle, weight_anneal=weight_anneal,
                    weight_decay=weight_decay, freeze_stable=freeze_stable,
                    freeze_flips=freeze_flips, freeze_votes=freeze_votes, distill=kd.weight if kd else 0.0,
                    temperature=kd.temperature if kd else Recipe.temperature)
    trace = train_wgates(model, wg, ctx, recipe, trace_eval, eval_every, teacher=kd.teacher if kd else None)
    gated, timed = _timed_eval(trace_eval, model, "top1_before_freeze")
    landed = wg.config.target
    if cost_model is not None:
        landing = land_on_latency(wg, ctx.budget, wg.efficiency.measure_times, reference=reference)
        gated["landing"] = landing.report()
        landed = landing.rounds[landing.chosen].budget  # the budget the gates were frozen at
    elif predictor is None:
        wg.freeze()
    else:
        gated["freeze"], landed = _freeze_at_flops(wg, ctx.budget, ctx.tolerance / 4, ctx.tolerance / 2)
    after, timed_after = _timed_eval(trace_eval, model, "top1_after_freeze")
    gated.update(after)
    eval_seconds = sum(p.get("eval_seconds", 0.0) for p in trace) + timed + timed_after
    pruned = wg.export()
    info = {**gated, "kept": {k: list(v) for k, v in wg.kept().items()}, "trace": trace, "target": landed,
            "predicted_cost_ratio": wg.cost_ratio(),
            "removed": {k: v.tolist() for k, v in wg.removal_plan().items()}, "eval_seconds": eval_seconds}
    wg.remove()
    settled = settle_exported(pruned, ctx.train_loader, recipe, progress=False, teacher=kd.teacher if kd else None)
    info["settle_steps"] = settled
    return Pruned(pruned, wg.steps + settled, info)  # the steps used: gate training (all, or until stable) + settling


def _own_distillation(ctx: PruneContext, model: nn.Module, share: float) -> Distillation | None:
    """The distillation W-Gates' own steps use: the protocol's (``ctx.distill``), or with ``share`` > 0 one
    from a hook-free copy of the unpruned ``model`` at ``Recipe.temperature``."""
    check_number("self_distill", share, "[0, 1]", what="", type_error=ConfigError)
    if share and ctx.distill is not None:
        raise ConfigError(f"self_distill={share!r} distils in W-Gates' own steps only; the protocol already distils "
                          f"in every method's training (distill={ctx.distill.weight!r}): set one of them")
    if share:
        return Distillation(copy.deepcopy(model).eval(), share, Recipe.temperature)
    return ctx.distill


def _timed_eval(trace_eval: TraceEval | None, model: nn.Module, key: str) -> tuple[dict[str, Any], float]:
    if trace_eval is None:
        return {}, 0.0
    start = time.perf_counter()
    value = trace_eval(model)
    return {key: value}, time.perf_counter() - start


def train_wgates(model: nn.Module, wg: WGates, ctx: PruneContext, recipe: Recipe, trace_eval: TraceEval | None,
                 eval_every: int, teacher: nn.Module | None = None) -> list[dict[str, Any]]:
    """:func:`~wgates_plugin.app.training.train_gates` with a live trace of FLOPs/cost/top-1."""
    trace: list[dict[str, Any]] = [_point(-1, wg, model, trace_eval)]

    def log(step: int, stats: dict[str, float]) -> None:
        if (step + 1) % eval_every == 0 or step == ctx.steps - 1:
            trace.append({**_point(step, wg, model, trace_eval), "loss": stats["loss"]})

    train_gates(model, wg, ctx.train_loader, recipe, progress=False, on_step=log, teacher=teacher)
    return trace


def _point(step: int, wg: WGates, model: nn.Module, trace_eval: TraceEval | None) -> dict[str, Any]:
    point: dict[str, Any] = {"step": step + 1, "flops_ratio": wg.flops_ratio(), "cost_ratio": wg.cost_ratio(),
                             "multiplier": wg.multiplier.value}
    if trace_eval is not None:
        start = time.perf_counter()
        point["top1"] = trace_eval(model)
        point["eval_seconds"] = time.perf_counter() - start  # not part of the pruning time
    return point


def _check_same_layers(wg: WGates, ctx: PruneContext) -> None:
    gated = sorted({m.name for g in wg.groups for m in g.producers})
    if gated != sorted(ctx.prunable):
        raise BudgetError(f"W-Gates gates {gated[:4]}..., the harness's prunable set is {sorted(ctx.prunable)[:4]}...")


def uniform_counts(wg: WGates, ratio: float) -> list[int]:
    """Channel counts of the network thinned by one factor in every gated group to ``ratio`` FLOPs."""
    bounds = wg.unit_bounds()
    units = land([b.high for b in bounds], bounds, [Budget.fraction(wg.flops, ratio)])
    return [u * b.tie for u, b in zip(units, bounds)]


def _uniform_latency(predictor: LatencyPredictor, model: nn.Module, x: torch.Tensor, budget: float) -> float:
    """Predicted latency ratio of the uniformly thinned network at ``budget`` FLOPs."""
    probe = WGates(copy.deepcopy(model), x, target=budget)
    counts = uniform_counts(probe, budget)
    latency = predictor.for_model(model, x, probe.groups)
    probe.remove()
    return latency.budget_of(counts, f"the uniformly thinned network at {budget} of the FLOPs")


def _freeze_at_flops(wg: WGates, budget: float, tolerance: float, accept: float,
                     iterations: int = 40) -> tuple[str, float | None]:
    """Freeze at the latency target whose landed network has ``budget`` FLOPs (bisection).

    Landing moves one channel at a time, so the FLOPs it lands on jump as the latency target moves;
    if no target lands within ``tolerance``, the closest one within ``accept`` is used, and failing
    that the learned gates are landed on the FLOPs budget directly. Returns how, and the latency target.
    """
    lo, hi = wg.floor_ratio() * 1.0001, 1.0
    tried: list[tuple[float, float]] = []
    for _ in range(iterations):
        t = (lo + hi) / 2
        ratio = _freeze_at(wg, Budget.fraction(wg.efficiency, t))
        tried.append((abs(ratio / budget - 1), t))
        if tried[-1][0] <= tolerance:
            return "latency target", t
        lo, hi = (t, hi) if ratio < budget else (lo, t)
    gap, t = min(tried)
    if gap <= accept:
        _freeze_at(wg, Budget.fraction(wg.efficiency, t))
        return "closest latency target", t
    _freeze_at(wg, Budget.fraction(wg.flops, budget))
    return "FLOPs projection of the latency-trained gates", None


def _freeze_at(wg: WGates, budget: Budget) -> float:
    wg.unfreeze()
    wg.freeze(budgets=[budget])
    return wg.flops_ratio()


# ---------------------------------------------------------------------------- Gate Decorator
def gate_decorator(ctx: PruneContext, prune_shortcuts: bool = False, **schedule: Any) -> Pruned:
    """Gate Decorator (GBN + Taylor importance + Tick-Tock) within ``ctx.steps`` training steps."""
    torch.manual_seed(ctx.seed)
    gd = GateDecorator(ctx.model, ctx.example, target=ctx.budget, prune_shortcuts=prune_shortcuts)
    # the weights train at the rivals' pruning-time lr (``ctx.hyper.lr``) unless the schedule sets its own
    trace = gd.run(ctx.train_loader, TickTock(**{"weight_lr": ctx.hyper.lr, **schedule}), max_steps=ctx.steps)
    pruned = gd.export()
    info = {"kept": {k: list(v) for k, v in gd.kept().items()}, "rounds": len(trace.rounds),
            "prunes": _jsonable([asdict(p) for p in trace.prunes])}
    steps = gd.steps_used
    gd.remove()
    return Pruned(pruned, steps, info)


# ---------------------------------------------------------------------------- scratch
def scratch(architecture: nn.Module, seed: int) -> Pruned:
    """The same architecture with every parameter re-initialized (Liu et al. 2019); trained by the harness."""
    model = copy.deepcopy(architecture)
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()  # type: ignore[operator]
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return Pruned(model, 0, {"reinitialized": True})


# ---------------------------------------------------------------------------- LPNet for latency mode
def latency_predictor(name: str, model: nn.Module, x: torch.Tensor, cache: Path, key: str, batch: int,
                      samples: int, repeats: int) -> tuple[LatencyPredictor, dict[str, Any]]:
    """A network LPNet of ``model`` (1 thread, CPU clock), cached; collection resumes if interrupted."""
    path = Path(cache) / f"lpnet_{name}_{key}_b{batch}_n{samples}.lpnet"
    report_path = path.with_suffix(".json")
    if path.exists() and report_path.exists():
        return LatencyPredictor.load(path), json.loads(report_path.read_text())
    timing = Timing(repeats=repeats, threads=1, clock="cpu")
    start = time.perf_counter()
    data = collect_latency(model, x, path.with_suffix(".jsonl"), samples, batch=batch, timing=timing,
                           seed=0, model_name=name, progress=False)
    collect_s = time.perf_counter() - start
    predictor, report = train_predictor(data, "network", FitConfig(seed=0))
    predictor.save(path)
    report = {**_jsonable(report), "collect_seconds": round(collect_s, 1), "samples": samples}
    report_path.write_text(json.dumps(report, indent=1))
    return predictor, report


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def gated_top1(data: Any, seed: int, bn_batches: int) -> TraceEval:
    """Calibrated top-1 of a gated model during training; its BN statistics are left as they were."""
    def top1(model: nn.Module) -> float:
        buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
        recalibrate_bn(model, data.train(seed + 20_000), bn_batches)
        try:
            return evaluate(model, data.test())
        finally:
            model.load_state_dict(buffers, strict=False)

    return top1
