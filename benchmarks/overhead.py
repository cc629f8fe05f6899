"""What attaching W-Gates costs: training-step time, peak memory, time to attach and to export.

Side by side in one run, on one model (default: torchvision resnet50 with random weights, CPU):

- **training step** with gates (task loss + ``efficiency_loss()``, SGD on the weights and Adam on the
  gates) vs. without (task loss, SGD): the two kinds of step are interleaved on the same model (gate
  hooks removed for the plain step, re-attached for the gated one) so that drifts of the machine hit
  both alike; medians over ``--steps`` steps of each after ``--warmup`` steps of each;
- **peak memory** of ``--memory-steps`` training steps, each variant in a fresh subprocess: the
  process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` right
  before the steps), and that minus its resident set just before them (what the steps add:
  activations kept for backward, gradients, optimizer state). ``tracemalloc`` does not see tensor
  memory (torch's CPU allocator bypasses Python's), and a process's high-water mark cannot be
  lowered once a variant has run, hence one process per variant; glibc's mmap threshold is fixed
  (see ``MALLOC_ENV``) so resident memory follows the live tensors;
  and, in the same processes, the peak of live torch tensor memory during one more step, from the
  profiler's memory timeline (exact for what torch allocates, blind to the C library's caching);
- **attach**: constructing ``WGates(model, x, target=...)`` (tracing, groups, gates, FLOPs model),
  and **export**: ``freeze()`` + ``export()`` (physical removal and the output check), medians over
  ``--repeats``.

Run ``python -m benchmarks.overhead --help`` for the options; the result is a markdown table on stdout
(and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from wgates_plugin import WGates

STEP_TARGET = 1.05  # gated / plain training-step time
ATTACH_TARGET_S = 1.0
EXPORT_TARGET_S = 1.0


@dataclass(frozen=True)
class Setup:
    """What is measured: model, input, threads, repeat counts."""

    model: str = "resnet50"
    size: int = 64
    batch: int = 16
    threads: int = 2
    steps: int = 20
    warmup: int = 3
    repeats: int = 5
    memory_steps: int = 3
    target: float = 0.5
    gate_lr: float = 1e-3
    weight_lr: float = 1e-3
    seed: int = 0


@dataclass
class Results:
    """Raw samples (wall-clock seconds, and process CPU seconds of all threads) and memory figures."""

    setup: Setup
    step_plain_s: list[float] = field(default_factory=list)
    step_gated_s: list[float] = field(default_factory=list)
    step_plain_cpu_s: list[float] = field(default_factory=list)
    step_gated_cpu_s: list[float] = field(default_factory=list)
    attach_s: list[float] = field(default_factory=list)
    export_s: list[float] = field(default_factory=list)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- setup
def build(setup: Setup) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model (random weights, train mode), a batch ``(B, 3, S, S)`` and its labels ``(B,)``."""
    torch.manual_seed(setup.seed)
    model = getattr(torchvision.models, setup.model)(num_classes=10).train()
    x = torch.randn(setup.batch, 3, setup.size, setup.size)
    y = torch.randint(0, 10, (setup.batch,))
    return model, x, y


def attach(model: nn.Module, x: torch.Tensor, setup: Setup) -> WGates:
    return WGates(model, x[:1], target=setup.target)


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def gated_step(model: nn.Module, wg: WGates, opts: Sequence[torch.optim.Optimizer],
               x: torch.Tensor, y: torch.Tensor) -> None:
    for opt in opts:
        opt.zero_grad()
    (nn.functional.cross_entropy(model(x), y) + wg.efficiency_loss()).backward()
    for opt in opts:
        opt.step()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# ---------------------------------------------------------------------------------------------- timing
def measure_steps(setup: Setup, results: Results) -> None:
    """Interleaved plain / gated training steps on the same model; records the timed ones."""
    model, x, y = build(setup)
    wg = attach(model, x, setup)
    weights = torch.optim.SGD(model.parameters(), lr=setup.weight_lr, momentum=0.9)
    gates = torch.optim.Adam(wg.parameters(), lr=setup.gate_lr)
    for i in range(setup.warmup + setup.steps):
        wg.remove()
        plain = timed(lambda: plain_step(model, weights, x, y))
        wg.attach()
        gated = timed(lambda: gated_step(model, wg, (weights, gates), x, y))
        if i >= setup.warmup:
            results.step_plain_s.append(plain[0])
            results.step_gated_s.append(gated[0])
            results.step_plain_cpu_s.append(plain[1])
            results.step_gated_cpu_s.append(gated[1])


def measure_attach_export(setup: Setup, results: Results) -> None:
    """Median-ready samples of WGates construction and of freeze() + export()."""
    model, x, _ = build(setup)
    for _ in range(setup.repeats):
        start = time.perf_counter()
        wg = attach(model, x, setup)
        results.attach_s.append(time.perf_counter() - start)
        results.export_s.append(timed(lambda wg=wg: (wg.freeze(), wg.export()))[0])
        wg.remove()


# ---------------------------------------------------------------------------------------------- memory
def _status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]


def memory_child(setup: Setup, variant: str) -> dict[str, int]:
    """Run in a fresh process: resident memory around ``memory_steps`` training steps of ``variant``."""
    torch.set_num_threads(setup.threads)
    model, x, y = build(setup)
    weights = torch.optim.SGD(model.parameters(), lr=setup.weight_lr, momentum=0.9)
    if variant == "gated":
        wg = attach(model, x, setup)
        opts = (weights, torch.optim.Adam(wg.parameters(), lr=setup.gate_lr))
        step = lambda: gated_step(model, wg, opts, x, y)  # noqa: E731
    else:
        step = lambda: plain_step(model, weights, x, y)  # noqa: E731
    setup_peak, before = _status_kib("VmHWM"), _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    for _ in range(setup.memory_steps):
        step()
    peak = _status_kib("VmHWM")
    return {"setup_peak_kib": setup_peak, "before_steps_kib": before, "steps_peak_kib": peak,
            "steps_growth_kib": peak - before, "tensor_peak_kib": profiled_tensor_peak(step) // 1024}


def profiled_tensor_peak(step: Callable[[], object]) -> int:
    """Peak bytes of live torch CPU tensors during one call of ``step``, from the profiler's memory timeline.

    Counts what torch's allocator hands out (parameters, gradients, optimizer state, activations,
    temporaries), independent of how the C library keeps freed memory. ``export_memory_timeline`` is
    deprecated in favour of a CUDA-only API, hence the silenced warning.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True,
                                with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())  # sizes: (events, categories) bytes
    return max(sum(row) for row in sizes)


# glibc keeps freed blocks below its (self-raising) mmap threshold: fix the threshold so that every
# tensor above 128 KiB is mapped on allocation and unmapped on free, and resident memory follows the
# live tensors instead of what earlier phases (tracing, building the model) left in the heap.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def measure_memory(setup: Setup, results: Results) -> None:
    """One fresh process per variant (a process's high-water mark cannot be lowered once set)."""
    env = {**os.environ, **MALLOC_ENV}
    for variant in ("plain", "gated"):
        args = [sys.executable, "-m", "benchmarks.overhead", "--memory-child", variant, *setup_args(setup)]
        done = subprocess.run(args, check=True, capture_output=True, text=True, env=env,
                              cwd=Path(__file__).parent.parent)
        results.memory[variant] = json.loads(done.stdout.strip().splitlines()[-1])


def setup_args(setup: Setup) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(setup).items()]


# ---------------------------------------------------------------------------------------------- report
def environment() -> dict[str, str]:
    """Versions, CPU, date, and the machine's 1-minute load average when the run started."""
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "cpu": f"{_cpu_name()} ({os.cpu_count()} logical cores)", "date": time.strftime("%Y-%m-%d"),
            "load_at_start": f"{os.getloadavg()[0]:.2f}"}


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else "unknown"


def _ms(samples: Sequence[float]) -> str:
    return f"{1000 * statistics.median(samples):.1f} ms"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def table(results: Results) -> str:
    """The markdown report: one row per measurement, target and verdict where there is one."""
    s = results.setup
    plain, gated = statistics.median(results.step_plain_s), statistics.median(results.step_gated_s)
    attach_s, export_s = statistics.median(results.attach_s), statistics.median(results.export_s)
    rows = [
        ("training step, wall clock (median)", _ms(results.step_plain_s), _ms(results.step_gated_s),
         f"{gated / plain:.3f}x", f"<= {STEP_TARGET}x", _verdict(gated / plain <= STEP_TARGET)),
        ("training step, process CPU time (median)", _ms(results.step_plain_cpu_s), _ms(results.step_gated_cpu_s),
         f"{_ratio(results.step_gated_cpu_s, results.step_plain_cpu_s):.3f}x", "", ""),
        ("attach: WGates(...)", "", f"{attach_s:.3f} s", "", f"<= {ATTACH_TARGET_S} s",
         _verdict(attach_s <= ATTACH_TARGET_S)),
        ("freeze() + export()", "", f"{export_s:.3f} s", "", f"<= {EXPORT_TARGET_S} s",
         _verdict(export_s <= EXPORT_TARGET_S)),
    ]
    labels = (("tensor_peak_kib", "peak live tensor memory of one step (torch profiler)"),
              ("steps_growth_kib", "peak RSS during the steps minus RSS before them"),
              ("steps_peak_kib", "peak RSS during the steps (whole process)"))
    for key, label in labels if results.memory else ():
        p, g = results.memory["plain"][key], results.memory["gated"][key]
        rows.append((label, _mib(p), _mib(g), f"{g / p:.3f}x ({_mib(g - p)} more)", "", ""))
    head = (f"{s.model}, input {s.batch}x3x{s.size}x{s.size}, {s.threads} threads, "
            f"{s.steps} timed steps of each kind after {s.warmup} warm-up, {s.repeats} repeats of attach/export, "
            f"target {s.target} FLOPs")
    lines = [head, "", "| measurement | without gates | with gates | ratio | target | met |", "|---" * 6 + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    env = results.environment
    lines += ["", f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, Python {env.get('python')}, "
              f"CPU: {env.get('cpu')}, load average at start {env.get('load_at_start')}, {env.get('date')}"]
    return "\n".join(lines)


def _ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def _verdict(ok: bool) -> str:
    return "yes" if ok else "no"


# ---------------------------------------------------------------------------------------------- cli
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Setup()
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=defaults.model, help="torchvision classification model name")
    for name in ("size", "batch", "threads", "steps", "warmup", "repeats", "memory_steps", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("target", "gate_lr", "weight_lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--no-memory", action="store_true", help="skip the two memory subprocesses")
    p.add_argument("--json", type=Path, help="also write the raw samples and results here")
    p.add_argument("--memory-child", choices=("plain", "gated"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.memory_steps, args.size, args.batch, args.threads) < 1:
        p.error("--steps, --repeats, --memory-steps, --size, --batch and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup = Setup(**{f: getattr(args, f) for f in Setup.__dataclass_fields__})
    if args.memory_child:
        print(json.dumps(memory_child(setup, args.memory_child)))
        return 0
    torch.set_num_threads(setup.threads)
    results = Results(setup, environment=environment())
    measure_steps(setup, results)
    measure_attach_export(setup, results)
    if not args.no_memory:
        measure_memory(setup, results)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
