"""Every filter pruner against the same baseline, budget and fine-tuning: ``python -m benchmarks.compare``.

For each model: the baseline is trained once on the protocol's data (Fashion-MNIST; the bundled digits
for smoke runs), cached as safetensors. Then for
every FLOPs budget, seed and method: a copy of the baseline is pruned (the method's own training
counts against the total step budget), its achieved FLOPs are checked to be within ±2 % of the
budget, BN statistics are re-calibrated and top-1 measured, the model is fine-tuned with a constant
learning rate and top-1 (after BN re-calibration) is recorded at each total budget (1, 3, 10 epochs'
worth by default), and its CPU latency is measured (1 thread, CPU clock, median). Beside every test
figure the run records the validation top-1 of the same calibrated network (``val_top1_pruned``,
``val_top1``; nothing is drawn from a random generator for it, so the test figures are those a run
without it gives), from which the report's second reading picks each method's checkpoint on
validation within each budget.

Every run is one JSON line in ``<out>/runs.jsonl``, written as soon as it finishes; a re-run skips
the runs already there (same protocol), so an interrupted sweep resumes. ``python -m
benchmarks.report <out>`` turns the file into tables and plots.

Methods: ``uniform`` (same ratio everywhere, first channels), ``random``, ``l1`` and ``fpgm`` (NNI), ``slim``
(Network Slimming), ``taylor`` (NNI), ``taylor_wlr`` (the same, its weights at ``TAYLOR_LR``, 0.003, while it
accumulates importance, as chosen on validation), ``depgraph`` (torch-pruning GroupNormPruner),
``gate_decorator``, ``wgates_wlr`` (the library's defaults, FLOPs mode: warm start, gate lr 1e-3, no
distillation, the weights at ``Recipe.weight_lr``, 0.003, while the gates train), ``wgates`` (the same with
the weights at the protocol's pruning-time lr, ``finetune_lr``, 0.01, as every rival that trains while
pruning: the library's default until the pruning-time lr screen in benchmarks/RESULTS.md), ``wgates_open``
(the defaults before the validation screen: every gate open, gate lr 1e-2), ``wgates_latency`` (LPNet latency
mode, frozen at the same FLOPs), ``wgates_kd`` (``wgates`` with distillation from the unpruned model in
W-Gates' own gate training and settling, ``self_distill`` at ``DISTILL``, 0.5; fine-tuning stays cross-entropy
as for every method; the library's default until the distillation screen at fine-tuning lr 0.003 in
benchmarks/RESULTS.md), ``wgates_vote`` (``wgates_kd`` freezing the channels open most often over the last
quarter of the gate steps, ``freeze_votes=0.25``) and ``scratch``
(the W-Gates architecture re-initialized and trained for the whole budget).
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import functools
import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wgates_plugin import count_macs
from wgates_plugin.app.training import Recipe, count_params, evaluate
from wgates_plugin.distill import DISTILL
from wgates_plugin.efficiency import Timing, measure_ms
from wgates_plugin.errors import ConfigError
from wgates_plugin.export import prune_groups
from wgates_plugin.files import tensors_digest

from . import learned
from .methods import METHODS, PruneContext, Pruned, prunable_layers, with_hyper
from .models import MODELS, build
from .protocol import (
    Data,
    Protocol,
    baseline,
    calibrated_top1,
    distillation,
    finetune_curve,
    make_data,
    steps_per_epoch,
)

ALL_METHODS = ("uniform", "random", "l1", "fpgm", "slim", "taylor", "taylor_wlr", "depgraph", "gate_decorator",
               "wgates_wlr", "wgates", "wgates_open", "wgates_latency", "wgates_kd", "wgates_vote", "scratch")
# Taylor's pruning-time weights' lr chosen on validation against MethodDefaults.lr (0.01): ahead at 4 of 4
# fine-tuned points (benchmarks/RESULTS.md, "The pruning-time lr"); the other rivals kept 0.01.
TAYLOR_LR = 3e-3
PRESETS: dict[str, dict[str, Any]] = {
    # The full sweep: hours on 2 cores.
    "full": {"models": ("resnet20", "resnet56", "vgg16_bn", "resnet18"), "budgets": (0.5, 0.25, 0.12),
             "seeds": (0, 1, 2), "protocol": {}},
    # Fashion-MNIST, the knobs chosen on validation (benchmarks/RESULTS.md, first section): half an epoch
    # of pruning-time training for every method, totals of 1 and 3 epochs of the 10 000-image subset
    # (a 10-epoch point triples the cost: about 6 CPU-minutes per ResNet-20 run on one core).
    "fashion": {"models": ("resnet20",), "budgets": (0.25, 0.12, 0.5), "seeds": (0, 1, 2, 3, 4),
                "protocol": {"prune_epochs": 0.5, "budget_epochs": (1.0, 3.0)}},
    # ≤ 15 minutes on 2 cores: ResNet-20, two budgets, one seed, 3 epochs' worth at most.
    "quick": {"models": ("resnet20",), "budgets": (0.5, 0.25), "seeds": (0,),
              "protocol": {"baseline_epochs": 15, "budget_epochs": (1.0, 3.0), "prune_epochs": 1.0},
              "lpnet_samples": 60},
    # The test suite's end-to-end smoke run: a few steps on a small subset.
    "smoke": {"models": ("resnet20",), "budgets": (0.5,), "seeds": (0,),
              "protocol": {"dataset": "digits", "augment": False, "train_size": 256, "batch": 32,
                           "baseline_epochs": 1, "budget_epochs": (0.5, 1.0),
                           "prune_epochs": 0.25, "bn_batches": 2, "latency_repeats": 3, "latency_batch": 4,
                           "test_limit": 64},
              "lpnet_samples": 12},
}


@dataclass
class Setup:
    """One invocation: what to run and where."""

    models: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    protocol: Protocol
    out: Path
    cache: Path
    lpnet_samples: int = 200
    trace_seeds: tuple[int, ...] = (0,)
    progress: bool = False

    def protocol_key(self) -> str:
        text = json.dumps({**self.protocol.asdict(), "lpnet_samples": self.lpnet_samples}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- one model
@dataclass
class ModelState:
    """Per-model state shared by its runs: baseline, example, prunable set, reference figures."""

    name: str
    base: nn.Module
    info: dict[str, Any]
    example: torch.Tensor
    prunable: tuple[str, ...]
    macs: int
    params: int
    latency_ms: float
    predictor: Any = None


def prepare(name: str, setup: Setup, data: Data) -> ModelState:
    """Train (or load) the baseline and measure its reference figures."""
    p = setup.protocol
    base, info = baseline(name, build, p, data, setup.cache, setup.progress)
    base.eval()
    # the baseline's identity: its cache key names the recipe, not the weights (a re-trained baseline
    # has the same key and other weights), so runs record this and are paired only on equal digests
    info["weights_sha256"] = tensors_digest(base.state_dict())[:16]
    x = torch.zeros(1, 3, p.size, p.size)
    state = ModelState(name, base, info, x, prunable_layers(base, x, p.prune_shortcuts), count_macs(base, x),
                       count_params(base),
                       latency_ms(base, p))
    if "wgates_latency" in setup.methods:
        state.predictor, state.info["lpnet"] = learned.latency_predictor(
            name, copy.deepcopy(base), torch.zeros(2, 3, p.size, p.size), setup.cache, p.baseline_key(name),
            p.latency_batch, setup.lpnet_samples, p.latency_repeats)
    return state


def latency_ms(model: nn.Module, p: Protocol) -> float:
    """Median CPU-clock latency (1 thread) of one forward of a ``latency_batch`` batch, in ms."""
    x = torch.randn(p.latency_batch, 3, p.size, p.size)
    return measure_ms(copy.deepcopy(model), x, Timing(repeats=p.latency_repeats, threads=1, clock="cpu"))


def method_fn(method: str, state: ModelState, setup: Setup, data: Data, seed: int,
              plans: dict[tuple[float, int], dict]) -> Callable[[PruneContext], Pruned]:
    """The callable that prunes with ``method`` (the learned ones get the protocol's knobs bound)."""
    p = setup.protocol
    sgd = {"weight_lr": p.finetune_lr, "momentum": p.momentum, "weight_decay": p.weight_decay,
           "prune_shortcuts": p.prune_shortcuts}
    trace = learned.gated_top1(data, seed, p.bn_batches) if seed in setup.trace_seeds else None
    if method == "wgates":
        return functools.partial(learned.wgates, gate_lr=p.gate_lr, trace_eval=trace, eval_every=4, **sgd)
    if method == "wgates_wlr":  # the library's defaults: the weights train at Recipe.weight_lr while the gates do
        return functools.partial(learned.wgates, gate_lr=p.gate_lr, trace_eval=trace, eval_every=4,
                                 **{**sgd, "weight_lr": Recipe.weight_lr})
    if method == "wgates_open":  # the defaults before the validation screen: every gate open, gate lr 1e-2
        return functools.partial(learned.wgates, gate_lr=1e-2, warm_start=False, trace_eval=trace, eval_every=4, **sgd)
    if method == "wgates_kd":  # the library's defaults: distilling from the unpruned model in W-Gates' own steps
        return functools.partial(learned.wgates, gate_lr=p.gate_lr, self_distill=DISTILL, trace_eval=trace,
                                 eval_every=4, **sgd)
    if method == "wgates_vote":  # the library's defaults, frozen on the masks of the last quarter by vote
        return functools.partial(learned.wgates, gate_lr=p.gate_lr, self_distill=DISTILL, freeze_votes=0.25,
                                 trace_eval=trace, eval_every=4, **sgd)
    if method == "wgates_latency":
        return functools.partial(learned.wgates, gate_lr=p.gate_lr, predictor=state.predictor, trace_eval=trace,
                                 eval_every=4, **sgd)
    if method == "gate_decorator":
        return functools.partial(learned.gate_decorator, prune_shortcuts=p.prune_shortcuts)
    if method == "taylor_wlr":  # Taylor's pruning-time lr as chosen on validation (RESULTS, "The pruning-time lr")
        return with_hyper(METHODS["taylor"], lr=TAYLOR_LR)
    if method == "scratch":
        return lambda ctx: _scratch(state, setup, plans, ctx)
    return METHODS[method]


def _scratch(state: ModelState, setup: Setup, plans: dict[tuple[float, int], dict], ctx: PruneContext) -> Pruned:
    plan = plans.get((ctx.budget, ctx.seed))
    if plan is None:
        raise ConfigError("scratch trains the W-Gates architecture: run method 'wgates' for this budget and seed")
    torch.manual_seed(ctx.seed)
    model = build(state.name)
    prune_groups(model, state.example, {k: torch.tensor(v, dtype=torch.long) for k, v in plan.items()})
    return learned.scratch(model, ctx.seed)


# ---------------------------------------------------------------------------- one run
def run_one(state: ModelState, method: str, budget: float, seed: int, setup: Setup, data: Data,
            plans: dict[tuple[float, int], dict]) -> dict[str, Any]:
    """Prune, check the budget, evaluate, fine-tune along the budget curve, time: one JSON record."""
    p = setup.protocol
    steps = round(p.prune_epochs * steps_per_epoch(p))
    torch.manual_seed(seed)
    kd = distillation(p, state.base)
    ctx = PruneContext(copy.deepcopy(state.base).train(), state.example, data.train(seed), budget, seed, steps,
                       state.prunable, p.tolerance, distill=kd)
    fn = method_fn(method, state, setup, data, seed, plans)
    start = time.perf_counter()
    pruned = fn(ctx)
    seconds = time.perf_counter() - start - pruned.info.get("eval_seconds", 0.0)  # live-trace evaluations excluded
    model = pruned.model
    macs = count_macs(model, state.example)
    ratio = macs / state.macs
    if abs(ratio / budget - 1) > p.tolerance:
        raise ConfigError(f"{method} reached {ratio:.4f} of the FLOPs for budget {budget} (allowed ±{p.tolerance:.0%})")
    if method == "wgates":
        plans[(budget, seed)] = pruned.info.get("removed", {})
    record: dict[str, Any] = {
        "model": state.name, "method": method, "budget": budget, "seed": seed, "flops_ratio": ratio,
        "macs": macs, "params": count_params(model), "params_ratio": count_params(model) / state.params,
        "steps_used": pruned.steps_used, "prune_seconds": round(seconds, 2),
        "baseline_sha256": state.info["weights_sha256"],
    }
    chosen_on_val = p.evaluate_on == "test"  # validation figures beside the test ones, to choose a checkpoint
    if method != "scratch":
        record["top1_pruned_raw"] = evaluate(model, data.test())
        record["top1_pruned"] = calibrated_top1(model, data, seed, p)
        if chosen_on_val:
            record["val_top1_pruned"] = evaluate(model, data.val())  # the same calibrated network
    lr = p.baseline_lr if method == "scratch" else None
    val: dict[str, float | None] | None = {} if chosen_on_val else None
    record["top1"] = finetune_curve(model, data, seed, p, pruned.steps_used, lr=lr, progress=setup.progress,
                                    teacher=state.base, val=val)
    if val is not None:
        record["val_top1"] = val
    record["latency_ms"] = latency_ms(model, p)
    record["latency_ratio"] = record["latency_ms"] / state.latency_ms
    record["info"] = pruned.info
    return record


# ---------------------------------------------------------------------------- the sweep
def done_keys(path: Path, protocol_key: str) -> set[tuple]:
    """Keys of the runs already recorded under this protocol."""
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("protocol_key") == protocol_key and r.get("kind") == "run":
                keys.add((r["model"], r["method"], r["budget"], r["seed"]))
    return keys


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line under an exclusive lock (several sweeps may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def recorded_plans(path: Path, protocol_key: str, model: str) -> dict[tuple[float, int], dict]:
    """W-Gates removal plans already recorded (scratch re-uses the architecture after a resume)."""
    plans = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if (r.get("protocol_key") == protocol_key and r.get("model") == model and r.get("method") == "wgates"
                    and r.get("kind") == "run"):
                plans[(r["budget"], r["seed"])] = r["info"].get("removed", {})
    return plans


def sweep(setup: Setup) -> Path:
    """Run every (model, budget, seed, method) not yet recorded; returns the runs file."""
    runs = setup.out / "runs.jsonl"
    key = setup.protocol_key()
    done = done_keys(runs, key)
    data = make_data(setup.protocol)
    for name in setup.models:
        state = prepare(name, setup, data)
        append(runs, {"kind": "model", "protocol_key": key, "model": name, "baseline": state.info,
                      "macs": state.macs, "params": state.params, "latency_ms": state.latency_ms,
                      "prunable": list(state.prunable), "environment": environment(setup)})
        plans = recorded_plans(runs, key, name)
        for budget in setup.budgets:
            for seed in setup.seeds:
                for method in _ordered(setup.methods):
                    if (name, method, budget, seed) in done:
                        continue
                    print(f"[compare] {name} budget={budget} seed={seed} {method}", file=sys.stderr, flush=True)
                    record = run_one(state, method, budget, seed, setup, data, plans)
                    append(runs, {"kind": "run", "protocol_key": key, **record})
    return runs


def _ordered(methods: Sequence[str]) -> list[str]:
    """``wgates`` before ``scratch`` (scratch trains its architecture)."""
    return sorted(methods, key=lambda m: ALL_METHODS.index(m))


def environment(setup: Setup) -> dict[str, Any]:
    import nni
    import torch_pruning

    return {"torch": torch.__version__, "torch_pruning": torch_pruning.__version__, "nni": nni.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": _cpus(), "date": time.strftime("%Y-%m-%d"), "protocol": setup.protocol.asdict(),
            "lpnet_samples": setup.lpnet_samples}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------- command line
def parse(argv: Sequence[str] | None) -> Setup:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full",
                    help="defaults for models/budgets/seeds/protocol (quick: <= 15 min on 2 cores)")
    ap.add_argument("--quick", action="store_const", const="quick", dest="preset", help="same as --preset quick")
    ap.add_argument("--models", nargs="+", choices=MODELS, help="override the preset's models")
    ap.add_argument("--budgets", nargs="+", type=float, help="FLOPs budgets (fractions of the baseline's)")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (pruning and fine-tuning; the baseline is seed 0)")
    ap.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"), help="where runs.jsonl goes")
    ap.add_argument("--cache", type=Path, default=Path(".cache/benchmarks"), help="baselines and LPNets")
    ap.add_argument("--budget-epochs", nargs="+", type=float, help="total training budgets, in epochs")
    ap.add_argument("--prune-epochs", type=float, help="training the pruning step may spend, in epochs")
    ap.add_argument("--prune-shortcuts", action="store_const", const=True, default=None,
                    help="every method prunes the residual-coupled groups too (default: the paper's plain groups)")
    ap.add_argument("--distill", type=float, help="knowledge distillation from the baseline for every method, its "
                                                  "share of the loss in [0, 1] (default 0: off)")
    ap.add_argument("--tune-lr", type=float, help="fine-tuning's constant lr for every method (default: the "
                                                  "protocol's finetune_lr, which pruning-time weight training keeps)")
    ap.add_argument("--lpnet-samples", type=int, help="networks measured to train the latency predictor")
    ap.add_argument("--trace-seeds", nargs="*", type=int, default=[0],
                    help="seeds whose W-Gates runs record the gated top-1 along gate training (default 0; "
                         "none: faster)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    overrides = {k: v for k, v in (("budget_epochs", args.budget_epochs), ("prune_epochs", args.prune_epochs),
                                   ("distill", args.distill), ("prune_shortcuts", args.prune_shortcuts),
                                   ("tune_lr", args.tune_lr))
                 if v is not None}
    protocol = replace(Protocol(), **{**preset["protocol"], **overrides})
    for budget in args.budgets or ():
        if not 0 < budget <= 1:
            ap.error(f"--budgets {budget}: a budget is a fraction of the FLOPs in (0, 1]")
    return Setup(tuple(args.models or preset["models"]), tuple(args.budgets or preset["budgets"]),
                 tuple(args.seeds if args.seeds is not None else preset["seeds"]), tuple(args.methods), protocol,
                 args.out, args.cache, args.lpnet_samples or preset.get("lpnet_samples", 200),
                 trace_seeds=tuple(args.trace_seeds), progress=args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    setup = parse(argv)
    if "scratch" in setup.methods and "wgates" not in setup.methods:
        existing = recorded_plans(setup.out / "runs.jsonl", setup.protocol_key(), setup.models[0])
        if not existing:
            print("scratch needs the W-Gates architecture: add 'wgates' to --methods", file=sys.stderr)
            return 2
    start = time.perf_counter()
    runs = sweep(setup)
    print(f"[compare] done in {time.perf_counter() - start:.0f} s: {runs}", file=sys.stderr)
    from .report import main as report

    return report([str(setup.out)])


if __name__ == "__main__":
    sys.exit(main())
