"""Timing one forward robustly: warm-up, repeats, a robust statistic of them, fixed threads, CUDA
synchronisation, and networks timed interleaved (:func:`measure_interleaved`) so that a machine's
drift falls on all of them alike.

``clock="wall"`` measures latency; ``clock="cpu"`` measures the CPU time of a single-threaded forward,
which is what the latency would be on an idle core (for shared, busy machines).

Everything that consumes timings (the profiler, LPNet reports, latency budgets, the benchmarks) reads
the clock through :func:`measure_ms`, so a deterministic clock can be injected with :func:`use_clock`:
:class:`SimulatedClock` advances only by the work the forwards do, which makes every measured latency
an exact, load-independent number (for tests and dry runs of a latency pipeline).
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ConfigTypeError
from ..utils import call_model, check_number, device_of, kept_modes
from .runtime import OnnxRuntimeModule, onnx_bytes, require_onnx

__all__ = ["Timing", "CLOCKS", "RUNTIMES", "STATISTICS", "summarize", "fixed_threads", "measure_ms", "measure_times",
           "measure_interleaved", "measure_paired", "device_name", "use_clock", "SimulatedClock"]


@dataclass(frozen=True)
class Timing:
    """How one latency is measured.

    Attributes:
        warmup: untimed forwards first (new shapes trigger kernel selection; keep >= 1).
        repeats: timed forwards; ``statistic`` of them is the latency.
        threads: CPU threads during timing (``torch.set_num_threads``); None keeps the current count.
        clock: ``'wall'`` times with ``time.perf_counter`` (the latency). ``'cpu'`` times with
            ``time.process_time``: the CPU time the forward costs, which on a shared, busy machine is
            what the latency would be on an idle core (waiting for the core is not counted; cache
            sharing still is). Only for ``threads=1`` on a CPU device, where the two agree when the
            machine is idle.
        runtime: ``'pytorch'`` times the module in eager PyTorch; ``'onnxruntime'`` exports it to ONNX
            once and times onnxruntime running it on the CPU (``threads`` = its intra-op threads): the
            latency a deployment in onnxruntime sees, which can differ from PyTorch's (see
            ``benchmarks/RESULTS.md``, "Deployment"). Needs the ``onnx`` extra.
        statistic: how the repeats become one latency (:func:`summarize`): ``'median'``; ``'min'``, the
            least disturbed forward (on a busy machine interference only ever adds time); ``'iqm'``, the
            interquartile mean (the mean of what is left once a quarter of the repeats, rounded
            down, is dropped at each end: outliers on both sides rejected, less jumpy than the
            median; the median below 4 repeats). ``benchmarks/RESULTS.md`` ("noise floor") compares
            them.
    """

    warmup: int = 3
    repeats: int = 15
    threads: int | None = None
    clock: str = "wall"
    runtime: str = "pytorch"
    statistic: str = "median"

    def __post_init__(self) -> None:
        for name, low in (("warmup", 0), ("repeats", 1)):
            check_number(name, getattr(self, name), f">= {low}", integer=True, what="an integer",
                         type_error=ConfigError)
        if self.threads is not None:
            check_number("threads", self.threads, ">= 1", integer=True, what="None or an integer",
                         type_error=ConfigError)
        if self.clock not in CLOCKS:
            raise ConfigError(f"clock={self.clock!r} is not one of {tuple(CLOCKS)}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime={self.runtime!r} is not one of {RUNTIMES}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"statistic={self.statistic!r} is not one of {STATISTICS}")
        if self.clock == "cpu" and self.threads != 1:
            raise ConfigError(f"clock='cpu' needs threads=1 (got {self.threads!r}): with more threads CPU time "
                              "adds up the threads' work and is not a latency")

    def resolved_threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()

    def summary(self, times: list[float]) -> float:
        """``statistic`` of ``times`` (:func:`summarize`)."""
        return summarize(times, self.statistic)


STATISTICS = ("median", "min", "iqm")


def summarize(times: list[float], statistic: str = "median") -> float:
    """One latency from repeated timings: ``'median'``, ``'min'`` or ``'iqm'`` (the interquartile mean:
    the mean of the sorted values once ``n // 4`` are dropped at each end, i.e. the middle half when
    ``n`` is a multiple of 4; with fewer than 4 values nothing could be dropped, and it is the median).

    Example:
        >>> times = [5.0, 1.0, 2.0, 3.0, 40.0, 4.0, 2.5, 3.5, 30.0]
        >>> summarize(times), summarize(times, "min"), summarize(times, "iqm")
        (3.5, 1.0, 3.6)
    """
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic={statistic!r} is not one of {STATISTICS}")
    if not times:
        raise ConfigError("no timings to summarize: repeats must be >= 1")
    if statistic == "min":
        return min(times)
    if statistic == "median":
        return statistics.median(times)
    if len(times) < 4:
        return statistics.median(times)
    ordered = sorted(times)
    cut = len(ordered) // 4
    middle = ordered[cut:len(ordered) - cut]
    return sum(middle) / len(middle)


@contextlib.contextmanager
def fixed_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``; restore the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RUNTIMES = ("pytorch", "onnxruntime")
_INJECTED: list[Callable[[], float]] = []  # innermost use_clock() last


@contextlib.contextmanager
def use_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Inside the block, :func:`measure_ms` reads ``clock()`` (seconds) instead of ``Timing.clock``'s clock.

    Example:
        >>> from torch import nn
        >>> ticks = iter([0.0, 0.004, 1.0, 1.002, 2.0, 2.009])  # three timed forwards: 4, 2 and 9 ms
        >>> with use_clock(lambda: next(ticks)):
        ...     measure_ms(nn.Identity(), torch.ones(1), Timing(warmup=0, repeats=3))
        4.0
    """
    if not callable(clock):
        raise ConfigTypeError(f"use_clock() takes a callable returning seconds, got {type(clock).__name__}")
    _INJECTED.append(clock)
    try:
        yield
    finally:
        _INJECTED.remove(clock)


class SimulatedClock:
    """A deterministic clock whose time advances only by the work that module forwards do.

    Every ``nn.Conv2d`` / ``nn.Linear`` forward run while the clock is active advances it by
    ``seconds_per_mac * MACs + seconds_per_layer`` (MACs of the whole batch). A fixed cost per layer
    makes latency differ from FLOPs, as on real hardware. Nothing else moves it, so measured latencies
    are exact functions of the architecture and the batch, whatever else the machine is doing.

    With ``block > 1`` it also models a kernel library with channel blocking (onnxruntime's NCHWc, SIMD
    lanes): a Conv2d whose input or output channel count is not a multiple of ``block`` costs
    ``unaligned_factor`` times as much per MAC.

    Used as a context manager, it is injected into :func:`measure_ms` (see :func:`use_clock`).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=1e-4):  # 1 ns per MAC, 0.1 ms per layer
        ...     ms = measure_ms(conv, torch.ones(2, 3, 4, 4), Timing(warmup=1, repeats=3))
        >>> round(ms, 9)  # 2 * 8 * 4 * 4 outputs of 3 * 3 * 3 MACs = 6 912 ns, plus 0.1 ms
        0.106912
    """

    def __init__(self, seconds_per_mac: float = 1e-9, seconds_per_layer: float = 1e-5, *, block: int = 1,
                 unaligned_factor: float = 1.0) -> None:
        for name, value in (("seconds_per_mac", seconds_per_mac), ("seconds_per_layer", seconds_per_layer)):
            check_number(name, value, ">= 0", what="a finite number", type_error=ConfigError)
        check_number("block", block, ">= 1", integer=True, type_error=ConfigError)
        check_number("unaligned_factor", unaligned_factor, ">= 1", what="a finite number", type_error=ConfigError)
        self.seconds_per_mac = float(seconds_per_mac)
        self.seconds_per_layer = float(seconds_per_layer)
        self.block, self.unaligned_factor = int(block), float(unaligned_factor)
        self.now = 0.0
        self._active: list[contextlib.ExitStack] = []

    def __call__(self) -> float:
        return self.now

    def cost(self, module: nn.Module, output: Any) -> float:
        """Seconds one forward of ``module`` producing ``output`` costs (0 for other module types)."""
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            kh, kw = module.kernel_size
            macs = output.numel() * (module.in_channels // module.groups) * kh * kw  # per output element
            unaligned = module.in_channels % self.block or module.out_channels % self.block
            factor = self.unaligned_factor if unaligned else 1.0
        elif isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            macs, factor = output.numel() * module.in_features, 1.0
        else:
            return 0.0
        return self.seconds_per_mac * factor * macs + self.seconds_per_layer

    def _advance(self, module: nn.Module, _args: tuple, output: Any) -> None:
        self.now += self.cost(module, output)

    def __enter__(self) -> SimulatedClock:
        stack = contextlib.ExitStack()
        stack.enter_context(use_clock(self))
        stack.callback(torch.nn.modules.module.register_module_forward_hook(self._advance).remove)
        self._active.append(stack)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active.pop().close()


def measure_ms(module: nn.Module, inputs: Any, timing: Timing = Timing(),
               device: str | torch.device | None = None) -> float:
    """Median latency in milliseconds of ``module(inputs)`` on ``device`` (eval mode, no grad).

    ``inputs`` (a tensor, tuple or dict) must already be on ``device``; the module is moved there.
    The module's train/eval mode is restored afterwards.
    """
    return timing.summary(measure_times(module, inputs, timing, device))


def measure_times(module: nn.Module, inputs: Any, timing: Timing = Timing(),
                  device: str | torch.device | None = None) -> list[float]:
    """Every timed forward of :func:`measure_ms`, in milliseconds (``timing.repeats`` of them)."""
    return measure_interleaved([module], inputs, timing, device)[0]


def measure_interleaved(modules: list[nn.Module], inputs: Any, timing: Timing = Timing(),
                        device: str | torch.device | None = None) -> list[list[float]]:
    """Every timed forward (ms) of each module, timed in turns: round ``r`` times every module once
    (in order, then in reverse order the next round), so a drift of the machine's speed (another job
    starting, the clock's frequency) falls on all modules alike instead of on whichever ran last.

    Each module is warmed up ``timing.warmup`` times first; ``timing.repeats`` rounds follow. Returns
    one list of ``repeats`` timings per module, in the order given (:func:`measure_times` is the case
    of one module). With an even number of rounds every module is first as often as last, so a
    linear drift in the machine's speed falls on each module's mean (and median) alike.

    Example:
        >>> from torch import nn
        >>> ticks = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.125, 3.0, 3.5])  # four timed forwards
        >>> with use_clock(lambda: next(ticks)):  # round 0: a then b; round 1: b then a
        ...     measure_interleaved([nn.Identity(), nn.Identity()], torch.ones(1), Timing(warmup=0, repeats=2))
        [[250.0, 500.0], [500.0, 125.0]]
    """
    if not isinstance(modules, (list, tuple)) or not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise ConfigTypeError("measure_interleaved() takes a non-empty list of modules, got "
                              f"{type(modules).__name__}")
    device = torch.device(device) if device is not None else device_of(inputs)
    if timing.clock == "cpu" and device.type != "cpu":
        raise ConfigError(f"clock='cpu' times CPU work; on {device} use clock='wall'")
    runs = []
    for module in modules:
        run, x = (_in_onnxruntime(module, inputs, device, timing) if timing.runtime == "onnxruntime"
                  else (module, inputs))
        runs.append((run, x))
    clock = _INJECTED[-1] if _INJECTED else CLOCKS[timing.clock]
    times: list[list[float]] = [[] for _ in modules]
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(kept_modes(module))
        for run, _ in runs:
            run.to(device).eval()
        with torch.no_grad(), fixed_threads(timing.resolved_threads()):
            for run, x in runs:
                for _ in range(timing.warmup):
                    call_model(run, x)
            for r in range(timing.repeats):
                order = range(len(runs)) if r % 2 == 0 else range(len(runs) - 1, -1, -1)
                for i in order:
                    run, x = runs[i]
                    _sync(device)
                    start = clock()
                    call_model(run, x)
                    _sync(device)
                    times[i].append(1e3 * (clock() - start))
    return times


def measure_paired(reference: nn.Module, model: nn.Module, inputs: Any, timing: Timing = Timing(),
                   reference_ms: float = 1.0) -> tuple[float, float, float]:
    """``model``'s latency read against ``reference``, the two timed in turns (:func:`measure_interleaved`):
    ``reference_ms * own / beside``, where ``own`` and ``beside`` are ``timing``'s statistic of the two
    modules' timings. Returns ``(that latency, own, beside)``, all in ms. A drift of the machine's speed
    falls on both modules alike and cancels in the ratio; ``reference_ms`` is the reference's latency
    measured once, on its own (the default, 1.0, returns the plain ratio as the first value).

    Example:
        >>> from torch import nn
        >>> ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.25, 3.0, 3.5])  # round 0: ref, model; round 1: model, ref
        >>> with use_clock(lambda: next(ticks)):
        ...     measure_paired(nn.Identity(), nn.Identity(), torch.ones(1), Timing(warmup=0, repeats=2), 4.0)
        (2.0, 250.0, 500.0)
    """
    beside, own = measure_interleaved([reference, model], inputs, timing)
    own_ms, beside_ms = timing.summary(own), timing.summary(beside)
    return reference_ms * own_ms / beside_ms, own_ms, beside_ms


def _in_onnxruntime(module: nn.Module, inputs: Any, device: torch.device, timing: Timing) -> tuple[nn.Module, Any]:
    """``module`` exported to ONNX and loaded in onnxruntime (CPU, ``timing``'s threads), and its one input."""
    if device.type != "cpu":
        raise ConfigError(f"runtime='onnxruntime' times onnxruntime's CPU execution; got device {device}")
    x = inputs[0] if isinstance(inputs, (tuple, list)) and len(inputs) == 1 else inputs
    return OnnxRuntimeModule(onnx_bytes(module, x), timing.resolved_threads()), x


def device_name(device: str | torch.device, runtime: str = "pytorch") -> str:
    """``'<type>: <model name>'`` of a device, e.g. ``'cuda: NVIDIA H100'`` or ``'cpu: Intel(R) Xeon(R) ...'``;
    with ``runtime='onnxruntime'``, ``' (onnxruntime <version>)'`` is appended: another runtime is
    another device for a latency model."""
    device = torch.device(device)
    if device.type == "cuda":
        name = f"cuda: {torch.cuda.get_device_name(device)}" if torch.cuda.is_available() else "cuda: unavailable"
    else:
        name = f"{device.type}: {_cpu_model()}"
    if runtime == "onnxruntime":
        name += f" (onnxruntime {require_onnx().__version__})"
    return name


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
