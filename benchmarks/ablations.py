"""The paper's ablations under the comparison protocol: ``python -m benchmarks.ablations``.

- **Table I, constant input**: the gate FC reads a constant tensor instead of the filter weights, so
  it cannot tell filters apart by their weights (same FLOPs budget, target mode).
- **Table II, binary vs. scaled sigmoid**: the paper's binary activation against ``sigmoid(4 s)``
  (soft gates while training, ``s >= 0`` kept at freeze), same FLOPs budget.
- **Table VI, α sweep**: the paper's loss ``L + α log(1 + FLOPs / FLOPs_0)`` with no target; the FLOPs,
  latency and accuracy each α ends at.

Each variant runs from the comparison's cached baseline with the same pruning-time training and
fine-tuning as :mod:`benchmarks.compare`; records go to ``<out>/ablations.jsonl`` (resumable), the
tables to ``<out>/ablations.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wgates_plugin import count_macs
from wgates_plugin.app.training import count_params

from . import learned
from .compare import PRESETS, Setup, append, latency_ms, prepare
from .methods import PruneContext
from .models import MODELS
from .protocol import Protocol, calibrated_top1, finetune_curve, make_data, steps_per_epoch
from .report import _pm, mean_std

VARIANTS: dict[str, dict[str, Any]] = {
    "weights (paper)": {},
    "constant input": {"score_input": "constant"},
    "sigmoid k=4": {"activation": "sigmoid", "sigmoid_k": 4.0},
}


def run_variant(state: Any, setup: Setup, data: Any, budget: float, seed: int, options: dict[str, Any],
                check_budget: bool) -> dict[str, Any]:
    """One W-Gates run with ``options``; the same measurements as a comparison run."""
    p = setup.protocol
    steps = round(p.prune_epochs * steps_per_epoch(p))
    ctx = PruneContext(copy.deepcopy(state.base).train(), state.example, data.train(seed), budget, seed, steps,
                       state.prunable, p.tolerance)
    start = time.perf_counter()
    pruned = learned.wgates(ctx, p.gate_lr, p.finetune_lr, p.momentum, p.weight_decay,
                            trace_eval=learned.gated_top1(data, seed, p.bn_batches), eval_every=10 ** 9, **options)
    seconds = time.perf_counter() - start
    model = pruned.model
    ratio = count_macs(model, state.example) / state.macs
    if check_budget and abs(ratio / budget - 1) > p.tolerance:
        raise RuntimeError(f"variant {options} reached {ratio:.4f} FLOPs for budget {budget}")
    record = {"flops_ratio": ratio, "params_ratio": count_params(model) / state.params,
              "top1_before_freeze": pruned.info["top1_before_freeze"],
              "top1_after_freeze": pruned.info["top1_after_freeze"],
              "top1_pruned": calibrated_top1(model, data, seed, p),
              "prune_seconds": round(seconds, 2)}
    record["top1"] = finetune_curve(model, data, seed, p, pruned.steps_used)
    record["latency_ratio"] = latency_ms(model, p) / state.latency_ms
    record["kept"] = pruned.info["kept"]
    return record


def sweep(setup: Setup, budget: float, alphas: Sequence[float]) -> Path:
    path = setup.out / "ablations.jsonl"
    key = setup.protocol_key()
    done = _done(path, key)
    data = make_data(setup.protocol)
    jobs = [(name, options, True, budget) for name, options in VARIANTS.items()]
    jobs += [(f"alpha={a:g}", {"mode": "paper", "alpha": a}, False, 1.0) for a in alphas]
    for model in setup.models:
        state = prepare(model, setup, data)
        for seed in setup.seeds:
            for name, options, check, b in jobs:
                if (model, name, seed) in done:
                    continue
                print(f"[ablations] {model} {name} seed={seed}", file=sys.stderr, flush=True)
                record = run_variant(state, setup, data, b, seed, options, check)
                append(path, {"protocol_key": key, "model": model, "variant": name, "seed": seed, "budget": b,
                              "options": options, **record})
    return path


def _done(path: Path, key: str) -> set[tuple]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["model"], r["variant"], r["seed"]) for r in rows if r["protocol_key"] == key}


def markdown(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    key = rows[-1]["protocol_key"]
    rows = [r for r in rows if r["protocol_key"] == key]
    epochs = sorted({e for r in rows for e in r["top1"]}, key=float)
    head = (["model", "variant", "FLOPs", "latency", "top-1 gated (before freeze)", "top-1 frozen",
             "top-1 exported + BN"] + [f"top-1 @ {e} ep" for e in epochs] + ["seeds"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    variants: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        variants.setdefault((r["model"], r["variant"]), []).append(r)
    for (model, name), rs in variants.items():
        cells = [model, name, _pm([r["flops_ratio"] for r in rs], 100, 1) + " %",
                 _pm([r["latency_ratio"] for r in rs], 100, 1) + " %", _pm([r["top1_before_freeze"] for r in rs]),
                 _pm([r["top1_after_freeze"] for r in rs]), _pm([r["top1_pruned"] for r in rs])]
        cells += [_pm([r["top1"][e] for r in rs]) for e in epochs] + [str(len(rs))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_alpha(path: Path) -> Path | None:
    """Final FLOPs / latency and top-1 against α (Table VI as a figure)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["variant"].startswith("alpha=") and r["protocol_key"] == rows[-1]["protocol_key"]]
    if not rows:
        return None
    from .report import _plt, _save

    plt = _plt()
    alphas = sorted({r["options"]["alpha"] for r in rows})
    last = max(rows[0]["top1"], key=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for field, label in (("flops_ratio", "FLOPs kept (%)"), ("latency_ratio", "latency kept (%)")):
        ax.plot(alphas, [100 * mean_std([r[field] for r in rows if r["options"]["alpha"] == a])[0] for a in alphas],
                marker="o", label=label)
    acc = ax.twinx()
    for key, style, label in ((None, "k:", "top-1 exported + BN"), (last, "k--", f"top-1 @ {last} ep")):
        acc.plot(alphas, [100 * mean_std([r["top1_pruned"] if key is None else r["top1"][key]
                                          for r in rows if r["options"]["alpha"] == a])[0] for a in alphas],
                 style, marker="s", label=label)
    ax.set(xscale="log", xlabel="α", ylabel="kept (%)", title="α sweep (paper mode, no target)")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.minorticks_off()
    acc.set_ylabel("top-1 (%)")
    ax.legend(loc="center right", fontsize=8)
    acc.legend(loc="lower left", fontsize=8)
    return _save(fig, path.parent / "alpha_sweep.png")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=["resnet20"])
    ap.add_argument("--budget", type=float, default=0.25, help="FLOPs budget of Tables I and II")
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--prune-epochs", type=float, help="gate training, in epochs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"))
    ap.add_argument("--cache", type=Path, default=Path(".cache/benchmarks"))
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    protocol = replace(Protocol(), **preset["protocol"])
    if args.prune_epochs is not None:
        protocol = replace(protocol, prune_epochs=args.prune_epochs)
    setup = Setup(tuple(args.models), (args.budget,), tuple(args.seeds), ("wgates",), protocol, args.out, args.cache)
    path = sweep(setup, args.budget, args.alphas)
    text = markdown(path)
    (args.out / "ablations.md").write_text(text + "\n")
    plot_alpha(path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
