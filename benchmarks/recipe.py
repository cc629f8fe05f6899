"""Choosing the W-Gates recipe on the validation split: variants against the rivals, one seed at a time.

Every run goes through the comparison harness (:func:`benchmarks.compare.run_one`) with
``Protocol.evaluate_on='val'``, so no figure here reads the test set. A variant is W-Gates with some
of its levers set (``warm_start``, ``ramp_steps``, ``freeze_stable`` / ``freeze_flips``, the weights'
schedule, ``settle``, ``self_distill``, the gate learning rate, a cap on the gating steps); a rival is any method of the
harness, or one with its own knob changed
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

from wgates_plugin.errors import ConfigError

from . import compare, learned, report
from .methods import METHODS, with_hyper
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
    # the weights' lr decays (cosine) to 0 over the gate steps: they settle on the mask that is frozen
    "wg_warm_lr1e-3_cos": {"warm_start": True, "gate_lr": 1e-3, "weight_schedule": "cosine"},
    # the last quarter of the gate steps trains the exported network at its frozen widths, the
    # weights' lr decaying (cosine) to 0: the pruning phase hands back a settled network
    "wg_warm_lr1e-3_settle25": {"warm_start": True, "gate_lr": 1e-3, "settle": 0.25},
    # the same over the last tenth (16 of 156 steps): less taken from the gates
    "wg_warm_lr1e-3_settle10": {"warm_start": True, "gate_lr": 1e-3, "settle": 0.1},
    # distillation from the unpruned model in W-Gates' own steps only (gate training, settling); the
    # harness's fine-tuning stays cross-entropy, as for every method (unlike --distill, which is every method's)
    "wg_warm_lr1e-3_kdgate": {"warm_start": True, "gate_lr": 1e-3, "self_distill": 0.5},
    # the weights' lr held, then decayed (cosine) to 0 over the last quarter of the gate steps, gates training
    "wg_warm_lr1e-3_costail25": {"warm_start": True, "gate_lr": 1e-3, "weight_schedule": "cosine",
                                 "weight_anneal": 0.25},
    # early freeze once 8 steps changed at most 2 % of the gated channels (the exact rule never fires)
    "wg_warm_lr1e-3_freeze8_2pct": {"warm_start": True, "gate_lr": 1e-3, "freeze_stable": 8, "freeze_flips": 0.02},
    # soft-to-hard annealing: sigmoid(k s) gates, k rising geometrically from 4 to the binary limit over
    # the gating epoch (312 steps of the subset), so freezing changes (almost) nothing
    "wg_warm_lr1e-3_anneal": {"warm_start": True, "gate_lr": 1e-3, "activation": "sigmoid", "sigmoid_k": 4.0,
                              "anneal_steps": 312},
    # the weights train at lr 0.003 while the gates train (the protocol's pruning-time lr is 0.01)
    "wg_warm_lr1e-3_wlr3e-3": {"warm_start": True, "gate_lr": 1e-3, "weight_lr": 3e-3},
}

# name -> (rival method, MethodDefaults overrides, cap on its pruning-time steps or None): the rivals'
# own knobs, chosen on validation like ours; "_h": half an epoch of sparse training, the rest fine-tuning
RIVALS: dict[str, tuple[str, dict[str, float], int | None]] = {
    **{f"slim_{reg}": ("slim", {"slim_reg": float(reg)}, None) for reg in ("1e-3", "1e-2", "3e-2", "1e-1")},
    **{f"depgraph_{reg}": ("depgraph", {"depgraph_reg": float(reg)}, None) for reg in ("1e-3", "3e-3", "1e-2", "3e-2")},
    "slim_h": ("slim", {}, 156), "slim_1e-1_h": ("slim", {"slim_reg": 0.1}, 156),
    "depgraph_h": ("depgraph", {}, 156), "depgraph_1e-2_h": ("depgraph", {"depgraph_reg": 0.01}, 156),
    # the weights' lr of the pruning-time training at 0.003 instead of 0.01, for every method that trains
    **{f"{m}_lr3e-3": (m, {"lr": 3e-3}, None) for m in ("slim", "taylor", "depgraph", "gate_decorator")},
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
    return with_hyper(learned.gate_decorator if method == "gate_decorator" else METHODS[method], cap, **overrides)


def _screen(budget_epochs: list[float], distill: float, prune_epochs: float = Protocol.prune_epochs,
            tune_lr: float | None = None) -> Protocol:
    return dataclasses.replace(Protocol(), budget_epochs=tuple(budget_epochs), distill=distill,
                               prune_epochs=prune_epochs, tune_lr=tune_lr, **SCREEN)


def _side(spec: str) -> tuple[str, float]:
    """``"variant"`` or ``"variant@distill"`` (the distillation share the runs were made with)."""
    name, _, share = spec.partition("@")
    if name not in VARIANTS and name not in RIVALS and name not in compare.ALL_METHODS:
        raise ConfigError(f"{spec!r}: no variant, rival or method {name!r} (see --variants)")
    try:
        return name, float(share) if share else 0.0
    except ValueError:
        raise ConfigError(f"{spec!r}: the share after '@' must be a number (e.g. l1@0.5)") from None


def paired_report(rows: list[dict], pairs: list[tuple[str, str]], keys: dict[float, str]) -> str:
    """Markdown: for each pair ``(a, b)``, validation top-1 of both and ``a - b`` per seed at every point.

    ``keys`` maps a distillation share to the protocol key its runs were recorded under. A seed is
    paired only where both runs exist on the same baseline (equal ``baseline_sha256``); rows without a
    recorded baseline are left out, and the count of rows left out is stated.
    """
    def runs(spec: str) -> dict[tuple[float, int], dict]:
        name, share = _side(spec)
        if share not in keys:
            raise ConfigError(f"{spec!r}: no protocol key for distill={share} (known: {sorted(keys)})")
        return {(r["budget"], r["seed"]): r for r in rows
                if r["variant"] == name and r.get("protocol_key") == keys[share] and r.get("baseline_sha256")}

    unrecorded = sum(1 for r in rows if not r.get("baseline_sha256"))
    out = [f"Rows without a recorded baseline, left out: {unrecorded}.", ""]
    for a, b in pairs:
        ra, rb = runs(a), runs(b)
        common = sorted(k for k in ra if k in rb and ra[k]["baseline_sha256"] == rb[k]["baseline_sha256"])
        out += [f"**{a} − {b}** (validation top-1, points)", "",
                "| FLOPs | point | " + a + " | " + b + " | difference per seed |", "|---|---|---|---|---|"]
        for budget in sorted({k[0] for k in common}, reverse=True):
            seeds = [k for k in common if k[0] == budget]
            epochs = sorted({e for k in seeds for e in ra[k]["val"]}, key=float)
            for point in [None, *epochs]:
                def value(r: dict, point: str | None = point) -> float | None:
                    return r["val_pruned"] if point is None else r["val"].get(point)

                both = [(value(ra[k]), value(rb[k])) for k in seeds
                        if value(ra[k]) is not None and value(rb[k]) is not None]
                if not both:
                    continue
                label = "right after pruning + BN" if point is None else f"@ {point} epochs"
                mean_a = 100 * sum(x for x, _ in both) / len(both)
                mean_b = 100 * sum(y for _, y in both) / len(both)
                diffs = [100 * (x - y) for x, y in both]
                out.append(f"| {budget:.0%} | {label} | {mean_a:.1f} | {mean_b:.1f} | {report.verdict(diffs)} |")
        out.append("")
    return "\n".join(out)


def lr_choice(rows: list[dict], keys: dict[float, str], variants: list[str]) -> str:
    """Markdown: each variant's fine-tuning lr chosen on validation, per FLOPs budget and training budget.

    ``keys`` maps a fine-tuning lr to the protocol key its runs were recorded under. A seed counts only
    where the variant has a run at every lr, all on one baseline, so the means compare the same seeds.
    The chosen lr has the highest mean validation top-1 at that point; an exact tie goes to the larger lr.
    """
    lrs = sorted(keys, reverse=True)
    lr_of = {key: lr for lr, key in keys.items()}
    head = " | ".join(f"lr {lr:g}" for lr in lrs)
    out = [f"| variant | FLOPs | point | {head} | seeds | chosen |", "|---|---|---|" + "---|" * len(lrs) + "---|---|"]
    for name in variants:
        found: dict[tuple[float, int], dict[float, dict]] = {}
        for r in rows:
            lr = lr_of.get(r.get("protocol_key"))
            if r["variant"] == name and lr is not None and r.get("baseline_sha256"):
                found.setdefault((r["budget"], r["seed"]), {})[lr] = r
        for budget in sorted({b for b, _ in found}, reverse=True):
            seeds = sorted(s for (b, s), by_lr in found.items() if b == budget and len(by_lr) == len(lrs)
                           and len({x["baseline_sha256"] for x in by_lr.values()}) == 1)
            if not seeds:
                continue
            for point in sorted({e for s in seeds for e in found[(budget, s)][lrs[0]]["val"]}, key=float):
                values = [[found[(budget, s)][lr]["val"].get(point) for s in seeds] for lr in lrs]
                if any(v is None for vs in values for v in vs):
                    continue
                means = [100 * sum(vs) / len(vs) for vs in values]
                best = max(range(len(lrs)), key=lambda i: (means[i], lrs[i]))
                cells = " | ".join(f"{m:.2f}" for m in means)
                out.append(f"| {name} | {budget:.0%} | @ {point} epochs | {cells} | {len(seeds)} | {lrs[best]:g} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20", choices=MODELS)
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.25])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--variants", nargs="+", default=["uniform", "l1", "wg_default", "wg_warm_lr1e-3"],
                    choices=sorted(VARIANTS) + sorted(RIVALS) + list(compare.ALL_METHODS))
    ap.add_argument("--budget-epochs", nargs="+", type=float, default=[1.0, 3.0])
    ap.add_argument("--prune-epochs", type=float, default=Protocol.prune_epochs,
                    help="pruning-time training of every method, in epochs of the subset (the test-set "
                         "comparison's 'fashion' preset uses 0.5)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe"))
    ap.add_argument("--cache", type=Path, default=Path(".cache/benchmarks"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill", type=float, default=0.0,
                    help="knowledge distillation from the baseline for every variant and rival (share of the loss)")
    ap.add_argument("--tune-lr", type=float, default=None,
                    help="fine-tuning's constant lr for every variant and rival (default: the protocol's "
                         "finetune_lr, which pruning-time weight training keeps); a knob chosen on validation")
    ap.add_argument("--report", nargs=2, action="append", metavar=("A", "B"),
                    help="print A minus B paired per seed on one baseline from the recorded runs (no training); "
                         "a side is a variant, or variant@share for its runs with distillation, e.g. l1@0.5")
    ap.add_argument("--choose-tune-lr", nargs="+", type=float, metavar="LR",
                    help="print each of --variants' fine-tuning lr chosen on validation among these, from the "
                         "recorded runs (no training); the protocol's finetune_lr stands for runs without --tune-lr")
    args = ap.parse_args(argv)

    def key(distill: float, tune_lr: float | None) -> str:
        """The protocol key of this screen's runs with that distillation share and fine-tuning lr."""
        protocol = _screen(args.budget_epochs, distill, args.prune_epochs, tune_lr)
        return compare.Setup((args.model,), (), (), (), protocol, args.out, args.cache, trace_seeds=()).protocol_key()

    def recorded() -> list[dict]:
        rows = [json.loads(line) for line in (args.out / "runs.jsonl").read_text().splitlines() if line.strip()]
        return [r for r in rows if r["model"] == args.model]

    if args.choose_tune_lr:
        # the protocol's own finetune_lr keys as runs recorded without --tune-lr (Protocol.asdict)
        keys = {lr: key(args.distill, lr) for lr in args.choose_tune_lr}
        print(lr_choice(recorded(), keys, args.variants))
        return
    if args.report:
        shares = {0.0, args.distill, *(_side(s)[1] for pair in args.report for s in pair)}
        print(paired_report(recorded(), [tuple(p) for p in args.report],
                            {share: key(share, args.tune_lr) for share in shares}))
        return
    torch.set_num_threads(args.threads)
    protocol = _screen(args.budget_epochs, args.distill, args.prune_epochs, args.tune_lr)
    setup = compare.Setup((args.model,), tuple(args.budgets), tuple(args.seeds), tuple(args.variants), protocol,
                          args.out, args.cache, trace_seeds=())
    data = make_data(protocol)
    state = compare.prepare(args.model, setup, data)
    runs = args.out / "runs.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = set()
    if runs.exists():
        rows = [json.loads(line) for line in runs.read_text().splitlines() if line.strip()]
        # a run counts as done only on this very baseline (rows recorded before baselines were
        # identified carry no digest and are run again: a re-trained baseline has the same cache key)
        done = {(r["model"], r["budget"], r["seed"], r["variant"]) for r in rows
                if r.get("protocol_key") == setup.protocol_key()
                and r.get("baseline_sha256") == state.info["weights_sha256"]}
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
                       "val": record["top1"], "seconds": round(time.perf_counter() - start, 1),
                       "distill": args.distill, "baseline_sha256": record["baseline_sha256"]}
                if args.tune_lr is not None:
                    row["tune_lr"] = args.tune_lr
                print(json.dumps(row), file=sys.stderr, flush=True)
                with runs.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    compare.method_fn = original


if __name__ == "__main__":
    main()
