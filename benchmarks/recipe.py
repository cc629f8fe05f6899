"""Choosing the W-Gates recipe on the validation split: variants against the rivals, one seed at a time.

Every run goes through the comparison harness (:func:`benchmarks.compare.run_one`) with
``Protocol.evaluate_on='val'``, so no figure here reads the test set. A variant is W-Gates with some
of its levers set (``warm_start``, ``ramp_steps``, ``freeze_stable``, the gate learning rate, a cap
on the gating steps); a rival is any method of the harness, or one with its own knob changed
(``slim_1e-2``: Network Slimming with L1 strength 1e-2; ``depgraph_3e-3``: DepGraph's group-norm
strength), so the rivals' knobs are chosen on validation too. Results are appended to
``benchmarks/results/recipe/runs.jsonl``; a (model, budget, seed, variant) already there is skipped,
so the command resumes.

    python -m benchmarks.recipe --budgets 0.25 0.12 --variants uniform l1 wg_default wg_warm_lr1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import compare, learned
from .methods import METHODS
from .models import MODELS
from .protocol import Protocol, make_data

# name -> learned.wgates options (``steps``: cap on the gating steps, the rest goes to fine-tuning).
# "wg_default" is the recipe before this screen (all gates open, gate lr 1e-2); warm start + gate lr
# 1e-3 won it and is the default now.
VARIANTS: dict[str, dict[str, Any]] = {
    "wg_default": {"warm_start": False},
    "wg_ramp": {"warm_start": False, "ramp_steps": 156},
    "wg_warm": {"warm_start": True},
    "wg_warm_freeze3": {"warm_start": True, "freeze_stable": 3},
    "wg_warm_lr1e-3": {"warm_start": True, "gate_lr": 1e-3},
    "wg_warm_lr3e-4": {"warm_start": True, "gate_lr": 3e-4},
    "wg_warm_lr1e-3_freeze3": {"warm_start": True, "gate_lr": 1e-3, "freeze_stable": 3},
    "wg_warm_lr1e-3_ramp": {"warm_start": True, "gate_lr": 1e-3, "ramp_steps": 156},
    "wg_warm_lr1e-3_g156": {"warm_start": True, "gate_lr": 1e-3, "steps": 156},
    "wg_warm_g156": {"warm_start": True, "steps": 156},
    "wg_warm_lr1e-3_g78": {"warm_start": True, "gate_lr": 1e-3, "steps": 78},
    # soft-to-hard annealing: sigmoid(k s) gates, k rising geometrically from 4 to the binary limit over
    # the gating epoch (312 steps of the subset), so freezing changes (almost) nothing
    "wg_warm_lr1e-3_anneal": {"warm_start": True, "gate_lr": 1e-3, "activation": "sigmoid", "sigmoid_k": 4.0,
                              "anneal_steps": 312},
}

# name -> (rival method, MethodDefaults overrides, cap on its pruning-time steps or None): the rivals'
# own knobs, chosen on validation like ours; "_h": half an epoch of sparse training, the rest fine-tuning
RIVALS: dict[str, tuple[str, dict[str, float], int | None]] = {
    **{f"slim_{reg}": ("slim", {"slim_reg": float(reg)}, None) for reg in ("1e-3", "1e-2", "3e-2", "1e-1")},
    **{f"depgraph_{reg}": ("depgraph", {"depgraph_reg": float(reg)}, None) for reg in ("1e-3", "3e-3", "1e-2", "3e-2")},
    "slim_h": ("slim", {}, 156), "slim_1e-1_h": ("slim", {"slim_reg": 0.1}, 156),
    "depgraph_h": ("depgraph", {}, 156), "depgraph_1e-2_h": ("depgraph", {"depgraph_reg": 0.01}, 156),
}


# The protocol the screen runs under: the validation split, and the gate lr of the variants that set
# none (the default when the screen began; kept so the recorded runs stay comparable and resumable).
SCREEN = {"evaluate_on": "val", "gate_lr": 1e-2}


def variant_fn(name: str, protocol: Protocol) -> Any:
    options = {"gate_lr": protocol.gate_lr, "weight_lr": protocol.finetune_lr, "momentum": protocol.momentum,
               "weight_decay": protocol.weight_decay, **VARIANTS[name]}
    cap = options.pop("steps", None)
    fn = functools.partial(learned.wgates, **options)
    if cap is None:
        return fn
    return lambda ctx: fn(dataclasses.replace(ctx, steps=min(cap, ctx.steps)))


def rival_fn(name: str) -> Any:
    """A rival with some of its ``MethodDefaults`` changed (e.g. Slimming's L1 strength)."""
    method, overrides, cap = RIVALS[name]
    return lambda ctx: METHODS[method](dataclasses.replace(ctx, hyper=dataclasses.replace(ctx.hyper, **overrides),
                                                           steps=ctx.steps if cap is None else min(cap, ctx.steps)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20", choices=MODELS)
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.25])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--variants", nargs="+", default=["uniform", "l1", "wg_default", "wg_warm_lr1e-3"],
                    choices=sorted(VARIANTS) + sorted(RIVALS) + list(compare.ALL_METHODS))
    ap.add_argument("--budget-epochs", nargs="+", type=float, default=[1.0, 3.0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe"))
    ap.add_argument("--cache", type=Path, default=Path(".cache/benchmarks"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill", type=float, default=0.0,
                    help="knowledge distillation from the baseline for every variant and rival (share of the loss)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = dataclasses.replace(Protocol(), budget_epochs=tuple(args.budget_epochs), distill=args.distill, **SCREEN)
    setup = compare.Setup((args.model,), tuple(args.budgets), tuple(args.seeds), tuple(args.variants), protocol,
                          args.out, args.cache, trace_seeds=())
    data = make_data(protocol)
    state = compare.prepare(args.model, setup, data)
    runs = args.out / "runs.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = set()
    if runs.exists():
        rows = [json.loads(line) for line in runs.read_text().splitlines() if line.strip()]
        done = {(r["model"], r["budget"], r["seed"], r["variant"]) for r in rows
                if r.get("protocol_key") == setup.protocol_key()}
    original = compare.method_fn
    for budget in args.budgets:
        for seed in args.seeds:
            for name in args.variants:
                if (args.model, budget, seed, name) in done:
                    continue
                fn = variant_fn(name, protocol) if name in VARIANTS else rival_fn(name) if name in RIVALS else None
                compare.method_fn = (lambda *a, fn=fn, **k: fn) if fn is not None else original
                method = "wgates" if name in VARIANTS else RIVALS[name][0] if name in RIVALS else name
                start = time.perf_counter()
                record = compare.run_one(state, method, budget, seed, setup, data, {})
                row = {"protocol_key": setup.protocol_key(), "model": args.model, "budget": budget, "seed": seed,
                       "variant": name, "flops_ratio": record["flops_ratio"], "steps_used": record["steps_used"],
                       "val_pruned_raw": record.get("top1_pruned_raw"), "val_pruned": record.get("top1_pruned"),
                       "val": record["top1"], "seconds": round(time.perf_counter() - start, 1)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                with runs.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    compare.method_fn = original


if __name__ == "__main__":
    main()
