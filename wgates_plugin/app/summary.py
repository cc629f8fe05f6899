"""The report a person reads at a glance, written beside a pruned model by ``wgates prune``.

* ``summary.md``: before/after parameters, MACs, latency and top-1, the top-1 right after pruning
  and after BN re-calibration, the latency model's prediction (LPNet or table) and the landing where latency
  mode ran, the per-layer kept
  channels and the gate trace (FLOPs ratio, cost ratio, multiplier and loss along gate training).
* ``kept_channels.png``: kept against original channels of every gated layer, in model order, and
  the FLOPs ratio along gate training with the target. It needs matplotlib (the ``plots`` extra);
  without it the Markdown says so and no picture is written.

Example:
    >>> from wgates_plugin.app.summary import summary_markdown
    >>> report = {"model": "resnet18", "target": 0.5, "flops_ratio": 0.5,
    ...           "before": {"params": 2e6, "macs": 4e8, "latency_s": 0.02, "top1": 0.9},
    ...           "after": {"params": 1e6, "macs": 2e8, "latency_s": 0.012, "top1": 0.88},
    ...           "top1": {"pruned": 0.8, "recalibrated": 0.85, "finetuned": 0.88},
    ...           "kept": {"layer1.0.conv1": [32, 64]}, "trace": []}
    >>> print(summary_markdown(report).splitlines()[0])
    # resnet18 pruned to 0.500 of its FLOPs (target 0.5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path, write_text
from .onnx_runtime import format_deployment

__all__ = ["SUMMARY_FILE", "PLOT_FILE", "summary_markdown", "write_summary"]

SUMMARY_FILE = "summary.md"
PLOT_FILE = "kept_channels.png"


def _fmt(value: float | None, scale: float, digits: int) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _change(before: float | None, after: float | None, points: bool = False) -> str:
    if before is None or after is None:
        return "–"
    if points:
        return f"{(after - before) * 100:+.1f} pts"
    return f"{(after / before - 1) * 100:+.1f} %" if before else "–"


def summary_markdown(report: dict[str, Any], plot: str | None = None, latency: str | None = None) -> str:
    """The Markdown summary of a ``wgates prune`` report.

    Args:
        plot: the picture's file name, if one was written.
        latency: the latency-mode lines (the latency model's prediction vs the measurement, the landing), if
            latency mode ran.
    """
    b, a = report["before"], report["after"]
    latency_mode = "latency" in report
    goal = "latency target" if latency_mode else "target"
    lines = [f"# {report.get('model', 'model')} pruned to {report['flops_ratio']:.3f} of its FLOPs "
             f"({goal} {report['target']:g})", ""]
    batch = report.get("latency_batch", "?")
    lines += ["| | baseline | pruned | change |", "|---|---:|---:|---:|",
              f"| parameters (M) | {_fmt(b['params'], 1e-6, 3)} | {_fmt(a['params'], 1e-6, 3)} | "
              f"{_change(b['params'], a['params'])} |",
              f"| MACs (M) | {_fmt(b['macs'], 1e-6, 2)} | {_fmt(a['macs'], 1e-6, 2)} | "
              f"{_change(b['macs'], a['macs'])} |",
              f"| latency (ms, batch {batch}) | {_fmt(b.get('latency_s'), 1e3, 2)} | "
              f"{_fmt(a.get('latency_s'), 1e3, 2)} | {_change(b.get('latency_s'), a.get('latency_s'))} |",
              f"| top-1 (%) | {_fmt(b.get('top1'), 100, 2)} | {_fmt(a.get('top1'), 100, 2)} | "
              f"{_change(b.get('top1'), a.get('top1'), points=True)} |", ""]
    t = report.get("top1", {})
    if t.get("pruned") is not None:
        lines += [f"Top-1 right after pruning {_fmt(t['pruned'], 100, 2)} %, after BN re-calibration "
                  f"{_fmt(t.get('recalibrated'), 100, 2)} %, after fine-tuning "
                  f"{_fmt(t.get('finetuned'), 100, 2)} %.", ""]
    if latency:
        lines += ["## Latency", "", *[f"{line}  " for line in latency.splitlines()], ""]
    if report.get("deployment"):
        lines += ["## Deployment (ONNX)", "", "```text", format_deployment(report["deployment"]), "```", ""]
    if plot:
        lines += [f"![kept channels per layer and the gate trace]({plot})", ""]
    kept = report.get("kept", {})
    if kept:
        lines += ["## Kept channels per gated layer", "", "| layer | kept | of | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` | {k} | {n} | {k / n:.2f} |" for name, (k, n) in kept.items()]
        lines.append("")
    trace = report.get("trace", [])
    if trace:
        lines += ["## Gate training", "", "| step | FLOPs ratio | cost ratio | multiplier | loss |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r['flops_ratio']:.3f} | {r['cost_ratio']:.3f} | {r['multiplier']:.3g} | "
                  f"{r['loss']:.4f} |" for r in trace]
        lines.append("")
    if report.get("plot_skipped"):
        lines += [f"_No picture: {report['plot_skipped']}_", ""]
    return "\n".join(lines)


def write_summary(out: Path, report: dict[str, Any], latency: str | None = None) -> list[Path]:
    """Write ``summary.md`` (and ``kept_channels.png`` where matplotlib is installed) into ``out``.

    Returns:
        The files written.
    """
    out = Path(out)
    written = []
    try:
        plot_kept(report, out / PLOT_FILE)
        written.append(out / PLOT_FILE)
    except ImportError:
        report = {**report, "plot_skipped": "matplotlib is not installed (pip install 'wgates-plugin[plots]')"}
    write_text(out / SUMMARY_FILE, summary_markdown(report, PLOT_FILE if written else None, latency))
    return [out / SUMMARY_FILE, *written]


def plot_kept(report: dict[str, Any], path: Path) -> None:
    """Kept vs original channels per gated layer, and the FLOPs ratio along gate training.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = report.get("kept", {})
    names = list(kept)
    trace = report.get("trace", [])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.22 * len(names) + 1.2)),
                                  gridspec_kw={"width_ratios": [2, 1]})
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, [kept[n][1] for n in names], color="#d9d9d9", label="original")
    ax.barh(ys, [kept[n][0] for n in names], color="#2b6cb0", label="kept")
    ax.set_yticks(ys, names, fontsize=7)
    ax.set(xlabel="channels", title=f"kept channels per gated layer ({report['flops_ratio']:.3f} of the FLOPs)")
    ax.legend(fontsize=8, loc="lower right")
    if trace:
        ax2.plot([r["step"] for r in trace], [r["flops_ratio"] for r in trace], label="FLOPs ratio")
        if any(r["cost_ratio"] != r["flops_ratio"] for r in trace):
            ax2.plot([r["step"] for r in trace], [r["cost_ratio"] for r in trace], label="cost ratio")
    ax2.axhline(report["target"], color="k", ls="--", lw=0.8, label="target")
    ax2.set(xlabel="gate training step", ylabel="ratio of the original", title="gate training", ylim=(0, 1.05))
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
