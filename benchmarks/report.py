"""Tables and plots from a comparison's ``runs.jsonl``: ``python -m benchmarks.report <out dir>``.

``--with <dir> ...`` pools more seeds from other comparisons run under the same protocol (for instance
seeds 3-4 re-run on another machine): their runs join the (model, budget) points ``<out dir>`` holds;
a seed is still paired only where both runs started from the same baseline.

Writes ``<out>/results.md`` (also printed) and PNG plots next to it:
``acc_vs_flops_<model>.png`` (top-1 against achieved FLOPs, one panel per training budget),
``kept_channels_<model>.png`` (W-Gates' kept channels per layer, as the paper's Fig. 6/7),
``widths_<model>.png`` (every method's kept channels per layer, mean over seeds) and
``gate_training_<model>.png`` (live FLOPs / predicted latency and top-1 during gate training, Fig. 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = {"uniform": "uniform width", "random": "random channels", "l1": "L1 (NNI)", "fpgm": "FPGM (NNI)",
          "slim": "Network Slimming", "taylor": "Taylor (NNI)", "taylor_wlr": "Taylor (NNI), lr 0.003 while pruning",
          "depgraph": "DepGraph GroupNorm",
          "gate_decorator": "Gate Decorator", "wgates_wlr": "W-Gates FLOPs, weights at lr 0.003 while gating",
          "wgates": "W-Gates FLOPs",
          "wgates_open": "W-Gates FLOPs (open start)", "wgates_latency": "W-Gates latency",
          "wgates_kd": "W-Gates FLOPs, distilling while pruning",
          "wgates_vote": "W-Gates FLOPs, distilling, frozen by vote", "scratch": "scratch (W-Gates arch.)"}
OURS = ("wgates_wlr", "wgates", "wgates_open", "wgates_latency", "wgates_kd", "wgates_vote")
DEFAULT = "wgates_wlr"  # the library's defaults: also paired against the other W-Gates variants


def rivals_of(ours: str, by_method: dict[str, list[dict]]) -> list[str]:
    """The methods ``ours`` is paired against: every other method, and for the library default
    (:data:`DEFAULT`) the other W-Gates variants too (the old defaults side by side with the new)."""
    return [m for m in by_method if m != ours and (m not in OURS or ours == DEFAULT)]


def load(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """``(models, runs)`` of the newest protocol in ``path`` (earlier protocols are ignored)."""
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a directory a comparison wrote its runs.jsonl into")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no record")
    key = lines[-1]["protocol_key"]
    models = {r["model"]: r for r in lines if r["kind"] == "model" and r["protocol_key"] == key}
    runs = [r for r in lines if r["kind"] == "run" and r["protocol_key"] == key]
    return models, runs


def pool(runs: list[dict], key: str, path: Path) -> list[dict]:
    """``runs`` plus the runs of ``path`` (another comparison's ``runs.jsonl``) recorded under the protocol
    ``key``, at the (model, budget) points ``runs`` already holds. A run both hold (same model, budget,
    method and seed) is an error: which of the two a table should show is not for the report to guess."""
    points = {(r["model"], r["budget"]) for r in runs}
    _, theirs = load(path)
    extra = [r for r in theirs if r["protocol_key"] == key and (r["model"], r["budget"]) in points]
    if not extra:
        raise SystemExit(f"{path} holds no run of protocol {key} at the points of this report "
                         f"({', '.join(f'{m} {b:.0%}' for m, b in sorted(points))})")
    ident = {(r["model"], r["budget"], r["method"], r["seed"]) for r in runs}
    clash = sorted({(r["model"], r["budget"], r["method"], r["seed"]) for r in extra} & ident)
    if clash:
        raise SystemExit(f"{path} repeats runs this report already holds (model, budget, method, seed): {clash[:5]}"
                         f"{' ...' if len(clash) > 5 else ''}; pool comparisons that ran different seeds")
    return runs + extra


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float | None], scale: float = 100.0, digits: int = 1) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_std([v * scale for v in vals])
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"


def grouped(runs: list[dict]) -> dict[tuple[str, float], dict[str, list[dict]]]:
    """``{(model, budget): {method: [runs over seeds]}}``."""
    out: dict[tuple[str, float], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        out[(r["model"], r["budget"])][r["method"]].append(r)
    return out


def epochs_of(runs: list[dict]) -> list[str]:
    return sorted({e for r in runs for e in r["top1"]}, key=float)


# ---------------------------------------------------------------------------- tables
def table(model: dict, by_method: dict[str, list[dict]], epochs: list[str]) -> list[str]:
    head = (["method", "FLOPs", "params", "top-1 pruned (raw)", "top-1 pruned + BN"]
            + [f"top-1 @ {e} ep" for e in epochs] + ["latency ms", "pruning s", "steps", "seeds"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in sorted(by_method, key=lambda m: list(LABELS).index(m)):
        rs = by_method[method]
        cells = [LABELS[method], _pm([r["flops_ratio"] for r in rs], 100, 1) + " %",
                 _pm([r["params_ratio"] for r in rs], 100, 0) + " %",
                 _pm([r.get("top1_pruned_raw") for r in rs]), _pm([r.get("top1_pruned") for r in rs])]
        cells += [_pm([r["top1"][e] for r in rs]) for e in epochs]
        cells += [_pm([r["latency_ms"] for r in rs], 1, 2), _pm(_pruning_seconds(rs), 1, 1),
                  str(rs[0]["steps_used"]), str(len(rs))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _pruning_seconds(rs: list[dict]) -> list[float]:
    """Pruning wall times; runs whose time still includes live-trace evaluations are left out."""
    def clean(r: dict) -> bool:
        trace = r["info"].get("trace") or [{}]
        return "top1" not in trace[0] or "eval_seconds" in r["info"]

    return [r["prune_seconds"] for r in rs if clean(r)]


def markdown(models: dict[str, dict], runs: list[dict]) -> str:
    lines: list[str] = []
    epochs = epochs_of(runs)
    groups = grouped(runs)
    for name, info in models.items():
        base = info["baseline"]
        lines += [f"### {name}", "",
                  f"Baseline: top-1 {100 * base['top1']:.1f} %, {info['macs'] / 1e6:.1f} M MACs, "
                  f"{info['params'] / 1e6:.3f} M params, {info['latency_ms']:.2f} ms "
                  f"(batch {info['environment']['protocol']['latency_batch']}, 1 thread, CPU clock).", ""]
        lines += baselines_note([r for r in runs if r["model"] == name])
        for budget in sorted({b for (m, b) in groups if m == name}, reverse=True):
            by_method = groups[(name, budget)]
            lines += [f"**{name}, {budget:.0%} FLOPs**", ""] + table(info, by_method, epochs) + [""]
        lines += widths_table(name, groups) + summary(name, groups, epochs)
        lines += [""] + chosen_summary(name, groups, epochs)
    return "\n".join(lines)


def baselines_note(runs: list[dict]) -> list[str]:
    """Where a model's runs started from more than one baseline (seeds pooled from comparisons run on
    different machines), which seeds each digest covers; nothing where they share one."""
    seeds: dict[str, set[int]] = defaultdict(set)
    for r in runs:
        seeds[(r.get("baseline_sha256") or "not recorded")[:16]].add(r["seed"])
    if len(seeds) < 2:
        return []
    listed = "; ".join(f"{d}: seeds {', '.join(map(str, sorted(s)))}" for d, s in sorted(seeds.items()))
    return [f"Runs from more than one baseline (digest: seeds; a seed is paired only on one baseline): {listed}.", ""]


def kept_widths(runs: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """``(mean kept channels per gated layer over the runs, full width per layer where recorded)``.
    Score-based methods record a layer's kept count; the gated ones ``[kept, full]``."""
    kept: dict[str, list[int]] = defaultdict(list)
    full: dict[str, int] = {}
    for r in runs:
        for layer, k in r["info"].get("kept", {}).items():
            if isinstance(k, list):
                k, full[layer] = k
            kept[layer].append(k)
    return {layer: statistics.fmean(ks) for layer, ks in kept.items()}, full


def widths_table(name: str, groups: dict[tuple[str, float], dict[str, list[dict]]]) -> list[str]:
    """The widths each method chose: kept channels per stage (the gated layers summed by the first part
    of their name, ``layer1``, ``layer2`` ...), mean over seeds, with the stage's full width."""
    rows = [f"**{name}: the widths each method chose** (kept channels of the gated layers, summed per stage, "
            f"mean over seeds; per layer: `widths_{name}.png`)", ""]
    for budget in sorted({b for (m, b) in groups if m == name}, reverse=True):
        by_method = groups[(name, budget)]
        widths = {m: kept_widths(rs) for m, rs in by_method.items()}
        full = {layer: w for _, f in widths.values() for layer, w in f.items()}
        stages = list(dict.fromkeys(_stage(layer) for _, (k, _) in widths.items() for layer in k))
        if not stages:
            continue
        head = [f"{st} (of {_stage_total(full, st):.0f})" if full else st for st in stages]
        rows += [f"{budget:.0%} FLOPs:", "", "| method | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
        rows += [f"| {LABELS[m]} | " + " | ".join(f"{_stage_total(widths[m][0], st):.1f}" for st in stages) + " |"
                 for m in sorted(by_method, key=lambda m: list(LABELS).index(m)) if widths[m][0]] + [""]
    return rows if len(rows) > 2 else []  # no run recorded its widths: no heading either


def _stage(layer: str) -> str:
    """A gated layer's stage: the first part of its name (``layer2.1.conv1`` -> ``layer2``)."""
    return layer.split(".")[0]


def _stage_total(widths: dict[str, float], stage: str) -> float:
    return sum(v for layer, v in widths.items() if _stage(layer) == stage)


def summary(name: str, groups: dict[tuple[str, float], dict[str, list[dict]]], epochs: list[str]) -> list[str]:
    """Where each W-Gates mode wins, ties or loses against every other method, paired per seed."""
    rows = [f"**{name}: W-Gates against every other method, paired per seed** (W-Gates minus the rival, "
            "points of top-1, per seed and mean; *wins* / *loses*: a paired t-test over seeds at p < 0.05, "
            "else *ties*)", ""]
    for ours in OURS:
        for budget in sorted({b for (m, b) in groups if m == name}, reverse=True):
            by_method = groups[(name, budget)]
            if ours not in by_method:
                continue
            rows += [f"{LABELS[ours]}, {budget:.0%} FLOPs:", "", "| rival | right after pruning + BN | " + " | ".join(
                f"@ {e} epochs" for e in epochs) + " |", "|" + "---|" * (len(epochs) + 2)]
            for rival in rivals_of(ours, by_method):
                cells = [paired(by_method[ours], by_method[rival], e) for e in [None, *epochs]]
                rows.append(f"| {LABELS[rival]} | " + " | ".join(cells) + " |")
            rows.append("")
    return rows


def paired(ours: list[dict], rival: list[dict], epoch: str | None, on_val: bool = False) -> str:
    """The per-seed differences ``ours - rival`` at ``epoch`` (None: right after pruning + BN) and the verdict
    (:func:`paired_diffs`; "—" where no seed pairs)."""
    diffs = paired_diffs(ours, rival, epoch, on_val)
    return verdict(diffs) if diffs else "—"


def paired_diffs(ours: list[dict], rival: list[dict], epoch: str | None, on_val: bool = False) -> list[float]:
    """The per-seed differences ``ours - rival`` in points at ``epoch`` (None: right after pruning + BN), by seed.

    With ``on_val``, each run is read at its checkpoint chosen on validation within ``epoch`` (:func:`chosen`).
    A seed is paired only where both runs started from the same baseline (equal ``baseline_sha256``,
    where both recorded it)."""
    def value(r: dict) -> float | None:
        if on_val:
            return None if epoch is None else chosen(r, epoch)[0]
        return r.get("top1_pruned") if epoch is None else r["top1"].get(epoch)

    def same_baseline(r: dict, t: dict) -> bool:  # runs recorded before baselines were identified pair as before
        a, b = r.get("baseline_sha256"), t.get("baseline_sha256")
        return a is None or b is None or a == b

    theirs = {r["seed"]: r for r in rival}
    return [100 * (value(r) - value(theirs[r["seed"]])) for r in sorted(ours, key=lambda r: r["seed"])  # type: ignore[operator]
            if value(r) is not None and r["seed"] in theirs and value(theirs[r["seed"]]) is not None
            and same_baseline(r, theirs[r["seed"]])]


SEEDS_LIMIT = 1000  # the most seeds seeds_needed() counts up to by default


def seeds_needed(diffs: list[float], limit: int = SEEDS_LIMIT) -> int | None:
    """The fewest seeds at which paired differences with this mean and spread would be a win (:func:`verdict`'s
    t-test, p < 0.05): the smallest ``n`` with ``t(0.975, n - 1) * sd / sqrt(n) < mean``. None where the mean is
    not above 0 (no number of seeds makes it a win), or where ``limit`` seeds would not; the mean and spread are
    the observed ones, so it reads how far a tie is from a win, not a promise."""
    if len(diffs) < 2:
        raise ValueError(f"seeds_needed needs 2 differences or more to estimate a spread, got {len(diffs)}")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if mean <= 0:
        return None
    if sd == 0:
        return 3  # verdict()'s least
    from scipy import stats

    return next((n for n in range(3, limit + 1) if stats.t.ppf(0.975, n - 1) * sd / n ** 0.5 < mean), None)


def power_table(runs: list[dict], ours: str = DEFAULT) -> str:
    """Markdown, per model: ``ours`` minus each rival at every budget and point, the mean and spread of the
    per-seed differences, the seeds paired, and :func:`seeds_needed` (how far each reading is from a win;
    "—": no lead). The "scratch" baseline (the W-Gates architecture re-trained) is not a rival here."""
    points = grouped(runs)
    out = []
    for model in sorted({m for m, _ in points}):
        out += [f"### {model}", "", "| FLOPs | point | rival | mean ± sd | seeds | seeds a win would need |",
                "|---|---|---|---|---|---|"]
        for budget in sorted((b for m, b in points if m == model), reverse=True):
            by_method = points[(model, budget)]
            if ours not in by_method:
                continue
            rivals = sorted((m for m in rivals_of(ours, by_method) if m != "scratch"), key=list(LABELS).index)
            for epoch in [None, *epochs_of(by_method[ours])]:
                for rival in rivals:
                    diffs = paired_diffs(by_method[ours], by_method[rival], epoch)
                    if len(diffs) < 2:
                        continue
                    mean, need = statistics.fmean(diffs), seeds_needed(diffs)
                    shown = ("—" if mean <= 0 else f"> {SEEDS_LIMIT}" if need is None
                             else "reached" if need <= len(diffs) else str(need))
                    point = "pruned + BN" if epoch is None else f"@ {epoch} ep"
                    out.append(f"| {budget:.0%} | {point} | {LABELS[rival]} | {mean:+.2f} ± "
                               f"{statistics.stdev(diffs):.2f} | {len(diffs)} | {shown} |")
        out.append("")
    return "\n".join(out)


def chosen(r: dict, epoch: str) -> tuple[float | None, str | None]:
    """``(test top-1, checkpoint)`` of the run's checkpoint with the best *validation* top-1 among those
    a run stopped at ``epoch`` epochs could return: right after pruning + BN (``"pruned"``) and every
    fine-tuning checkpoint up to ``epoch``; on a tie the earliest (the fewest steps). ``(None, None)``
    where the run recorded no validation figures or the pruning alone exceeded ``epoch``."""
    val = r.get("val_top1")
    if val is None or r["top1"].get(epoch) is None:
        return None, None
    options = [(v, float(e), e) for e, v in val.items() if v is not None and float(e) <= float(epoch)]
    if r.get("val_top1_pruned") is not None:
        options.append((r["val_top1_pruned"], -1.0, "pruned"))
    best = max(options, key=lambda o: (o[0], -o[1]))[2]  # the best validation top-1, then the earliest
    return (r["top1_pruned"] if best == "pruned" else r["top1"][best]), best


def chosen_summary(name: str, groups: dict[tuple[str, float], dict[str, list[dict]]], epochs: list[str]) -> list[str]:
    """The second reading, on the seeds whose runs all recorded validation figures: each method returns,
    within each training budget, its checkpoint with the best validation top-1 (early stopping on
    validation, the same rule for every method), and W-Gates is paired against every other method on
    those. Seeds with a run that recorded none (runs from before validation was tracked) are left out,
    and the heading says which seeds the reading covers."""
    covered = {}
    for (m, b), by_method in groups.items():
        if m != name:
            continue
        seeds = {r["seed"] for rs in by_method.values() for r in rs}
        bare = {r["seed"] for rs in by_method.values() for r in rs if "val_top1" not in r}
        if seeds - bare:
            covered[b] = (sorted(seeds - bare), bool(bare))
    if not covered:
        return []
    rows = [f"**{name}: every method's checkpoint chosen on validation within each budget** (right after pruning "
            "+ BN or any fine-tuning checkpoint up to the budget, the best validation top-1; test top-1, mean ± "
            "std, with how often each checkpoint was chosen; then W-Gates minus each rival, paired per seed)", ""]
    head = "| {} | " + " | ".join(f"@ {e} ep" for e in epochs) + " |\n|" + "---|" * (len(epochs) + 1)
    for budget in sorted(covered, reverse=True):
        seeds, partial = covered[budget]
        by_method = {m: [r for r in rs if r["seed"] in seeds] for m, rs in groups[(name, budget)].items()}
        by_method = {m: rs for m, rs in by_method.items() if rs}
        note = f" (seeds {', '.join(map(str, seeds))}: the others recorded no validation figures)" if partial else ""
        rows += [f"{budget:.0%} FLOPs{note}:", "", head.format("method")]
        rows += [f"| {LABELS[m]} | " + " | ".join(_chosen_cell(by_method[m], e) for e in epochs) + " |"
                 for m in sorted(by_method, key=lambda m: list(LABELS).index(m))] + [""]
        for ours in (m for m in OURS if m in by_method):
            rows += [f"{LABELS[ours]} minus each rival, {budget:.0%} FLOPs, checkpoints chosen on validation:", "",
                     head.format("rival")]
            rows += [f"| {LABELS[rival]} | " + " | ".join(
                paired(by_method[ours], by_method[rival], e, on_val=True) for e in epochs) + " |"
                for rival in rivals_of(ours, by_method)] + [""]
    return rows


def _chosen_cell(runs: list[dict], epoch: str) -> str:
    """Mean ± std of the chosen checkpoints' test top-1, and how often each checkpoint was chosen."""
    picks = [chosen(r, epoch) for r in runs]
    names = [k for _, k in picks if k]
    counts = ", ".join(f"{k if k == 'pruned' else k + ' ep'} ×{names.count(k)}" for k in dict.fromkeys(names))
    return _pm([v for v, _ in picks]) + (f" ({counts})" if counts else "")


def verdict(diffs: list[float]) -> str:
    """Paired differences (ours minus the rival, one per seed) as a verdict: *wins* / *loses* where a
    paired t-test over them gives p < 0.05, else *ties*; below 3 differences, no verdict."""
    mean = statistics.fmean(diffs)
    listed = " / ".join(f"{d:+.2f}" for d in diffs)
    if len(diffs) < 3:
        return f"{listed} ({len(diffs)} seed{'s' if len(diffs) > 1 else ''}: no verdict)"
    sd = statistics.stdev(diffs)
    if sd == 0:
        outcome = "ties" if mean == 0 else "wins" if mean > 0 else "loses"
    else:
        from scipy import stats

        p = 2 * stats.t.sf(abs(mean) / (sd / len(diffs) ** 0.5), len(diffs) - 1)
        outcome = "ties" if p >= 0.05 else "wins" if mean > 0 else "loses"
    return f"**{outcome}** {mean:+.2f} ({listed})"


# ---------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(name: str, models: dict, runs: list[dict], out: Path) -> Path:
    """Top-1 (mean ± std over seeds) against achieved FLOPs, one panel per total training budget."""
    plt = _plt()
    epochs = epochs_of(runs)
    fig, axes = plt.subplots(1, len(epochs), figsize=(5 * len(epochs), 4.2), squeeze=False)
    mine = [r for r in runs if r["model"] == name]
    for ax, e in zip(axes[0], epochs):
        for method in [m for m in LABELS if any(r["method"] == m for r in mine)]:
            pts = _curve([r for r in mine if r["method"] == method], e)
            if pts:
                xs, ys, ss = zip(*pts)
                ax.errorbar(xs, ys, yerr=ss, marker="o" if method in OURS else ".", capsize=2,
                            lw=2.2 if method in OURS else 1, color=_color(method),
                            ls="--" if method == "scratch" else "-", label=LABELS[method])
        ax.axhline(100 * models[name]["baseline"]["top1"], color="k", ls="--", lw=0.8, label="baseline")
        ax.set(title=f"{name}: {e} epochs' training budget", xlabel="FLOPs kept (%)", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return _save(fig, out / f"acc_vs_flops_{name}.png")


def _color(method: str) -> Any:
    """One fixed colour per method across every plot (tab10, then black for scratch)."""
    import matplotlib

    order = [m for m in LABELS if m != "scratch"]
    return "black" if method == "scratch" else matplotlib.colormaps["tab10"](order.index(method) % 10)


def _curve(rs: list[dict], epoch: str) -> list[tuple[float, float, float]]:
    by_budget: dict[float, list[dict]] = defaultdict(list)
    for r in rs:
        if r["top1"].get(epoch) is not None:
            by_budget[r["budget"]].append(r)
    pts = []
    for _b, group in sorted(by_budget.items()):
        fm, _ = mean_std([100 * r["flops_ratio"] for r in group])
        am, asd = mean_std([100 * r["top1"][epoch] for r in group])
        pts.append((fm, am, asd))
    return pts


def plot_kept(name: str, runs: list[dict], out: Path) -> Path | None:
    """Kept channels per gated layer (W-Gates, first seed), FLOPs and latency mode, every budget."""
    first = min(r["seed"] for r in runs)
    chosen = [r for r in runs if r["model"] == name and r["method"] in OURS and r["seed"] == first]
    if not chosen:
        return None
    plt = _plt()
    budgets = sorted({r["budget"] for r in chosen}, reverse=True)
    fig, axes = plt.subplots(len(budgets), 1, figsize=(11, 2.6 * len(budgets)), squeeze=False)
    for ax, budget in zip(axes[:, 0], budgets):
        rs = {r["method"]: r for r in chosen if r["budget"] == budget}
        layers = list(next(iter(rs.values()))["info"]["kept"])
        full = [next(iter(rs.values()))["info"]["kept"][k][1] for k in layers]
        pos = range(len(layers))
        ax.bar(pos, full, color="0.85", label="original")
        width = 0.8 / max(len(rs), 1)
        for i, (method, r) in enumerate(sorted(rs.items())):
            kept = [r["info"]["kept"][k][0] for k in layers]
            ax.bar([p - 0.4 + width * (i + 0.5) for p in pos], kept, width=width, label=LABELS[method])
        ax.set_xticks(list(pos), layers, rotation=90, fontsize=6)
        ax.set(title=f"{name}, {budget:.0%} FLOPs: kept channels per gated layer", ylabel="channels")
        ax.legend(fontsize=7)
    return _save(fig, out / f"kept_channels_{name}.png")


def plot_widths(name: str, runs: list[dict], out: Path) -> Path | None:
    """Kept channels per gated layer, mean over seeds, every method, one panel per budget."""
    mine = [r for r in runs if r["model"] == name and r["info"].get("kept")]
    if not mine:
        return None
    plt = _plt()
    budgets = sorted({r["budget"] for r in mine}, reverse=True)
    fig, axes = plt.subplots(len(budgets), 1, figsize=(11, 2.8 * len(budgets)), squeeze=False)
    for ax, budget in zip(axes[:, 0], budgets):
        here = [r for r in mine if r["budget"] == budget]
        _, full = kept_widths(here)
        layers = list(dict.fromkeys(layer for r in here for layer in r["info"]["kept"]))
        pos = list(range(len(layers)))
        if full:
            ax.bar(pos, [full.get(layer, 0) for layer in layers], color="0.9", label="original")
        for method in [m for m in LABELS if any(r["method"] == m for r in here)]:
            kept, _ = kept_widths([r for r in here if r["method"] == method])
            ax.plot(pos, [kept.get(layer, float("nan")) for layer in layers], marker="o" if method in OURS else ".",
                    lw=2.2 if method in OURS else 1, color=_color(method), label=LABELS[method])
        ax.set_xticks(pos, layers, rotation=90, fontsize=6)
        ax.set(title=f"{name}, {budget:.0%} FLOPs: kept channels per gated layer, mean over seeds", ylabel="channels")
        ax.legend(fontsize=6, ncol=2, loc="upper left")
    return _save(fig, out / f"widths_{name}.png")


def plot_training(name: str, runs: list[dict], out: Path) -> Path | None:
    """Live FLOPs / predicted-latency ratio and calibrated top-1 while the gates train (seed with a trace)."""
    traced = [r for r in runs if r["model"] == name and r["method"] in OURS
              and r["info"].get("trace") and "top1" in r["info"]["trace"][0]]
    if not traced:
        return None
    plt = _plt()
    budgets = sorted({r["budget"] for r in traced}, reverse=True)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        acc_ax = ax.twinx()
        for r in [r for r in traced if r["budget"] == budget]:
            t = r["info"]["trace"]
            steps = [p["step"] for p in t]
            color = "C0" if r["method"] == "wgates" else "C1"
            ax.plot(steps, [100 * p["flops_ratio"] for p in t], color=color, label=f"{LABELS[r['method']]}: FLOPs %")
            if r["method"] == "wgates_latency":
                ax.plot(steps, [100 * p["cost_ratio"] for p in t], color=color, ls=":", label="predicted latency %")
            acc_ax.plot(steps, [100 * p["top1"] for p in t], color=color, ls="--", marker=".",
                        label=f"{LABELS[r['method']]}: top-1")
        ax.axhline(100 * budget, color="k", lw=0.6)
        ax.set(title=f"{name}, {budget:.0%} FLOPs: gate training", xlabel="step", ylabel="FLOPs / latency kept (%)")
        acc_ax.set_ylabel("top-1 of the gated model (%)")
        ax.legend(fontsize=7, loc="upper right")
        acc_ax.legend(fontsize=7, loc="lower left")
    return _save(fig, out / f"gate_training_{name}.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def validation_pairs(runs: list[dict], pairs: list[tuple[str, ...]]) -> str:
    """Markdown, per model: for each pair ``(a, b)`` of methods, ``a - b`` per seed on the validation figures
    (right after pruning + BN, and along the fine-tuning curve), on the runs that recorded them; a seed is
    paired only on one baseline (:func:`benchmarks.recipe.paired_report`, the recipe screen's reading)."""
    from .recipe import paired_report  # the recipe screen imports this module

    known = {r["method"] for r in runs}
    for pair in pairs:
        for method in pair:
            if method not in known:
                raise SystemExit(f"--val-pair {' '.join(pair)}: no run of {method!r} here (the runs hold "
                                 f"{', '.join(sorted(known))})")
    key = runs[0]["protocol_key"]
    out = []
    for model in sorted({r["model"] for r in runs}):
        rows = [{"variant": r["method"], "protocol_key": key, "budget": r["budget"], "seed": r["seed"],
                 "val_pruned": r.get("val_top1_pruned"), "val": r["val_top1"],
                 "baseline_sha256": r.get("baseline_sha256")}
                for r in runs if r["model"] == model and "val_top1" in r]
        out += [f"### {model}", "", paired_report(rows, list(pairs), {0.0: key})]  # type: ignore[arg-type]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory holding a comparison's runs.jsonl; results.md goes there")
    parser.add_argument("--with", dest="extra", type=Path, nargs="+", default=[], metavar="DIR",
                        help="more comparisons (same protocol, other seeds) whose runs join this one's points")
    reading = parser.add_mutually_exclusive_group()
    reading.add_argument("--val-pair", nargs=2, action="append", metavar=("A", "B"),
                        help="print method A minus method B per seed on the validation figures the runs recorded "
                             "(the reading a knob is chosen on), for each model, instead of writing the report")
    reading.add_argument("--power", action="store_true",
                        help=f"print, for the library default ({DEFAULT}) against each rival at every point, the mean "
                             "and spread of the per-seed differences and the seeds a win would need at them, "
                             "instead of writing the report")
    args = parser.parse_args(argv)
    models, runs = load(args.out / "runs.jsonl")
    if args.extra and not runs:
        raise SystemExit(f"{args.out / 'runs.jsonl'} holds no run to pool more seeds with")
    for other in args.extra:
        runs = pool(runs, runs[0]["protocol_key"], other / "runs.jsonl")
    if args.val_pair:
        print(validation_pairs(runs, [tuple(p) for p in args.val_pair]))
        return 0
    if args.power:
        print(power_table(runs))
        return 0
    out = args.out
    text = markdown(models, runs)
    (out / "results.md").write_text(text + "\n")
    for name in models:
        plot_accuracy(name, models, runs, out)
        plot_kept(name, runs, out)
        plot_widths(name, runs, out)
        plot_training(name, runs, out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
