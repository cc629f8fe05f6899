"""Timing one forward robustly: warm-up, repeats, median, fixed threads, CUDA synchronisation.

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

__all__ = ["Timing", "CLOCKS", "RUNTIMES", "fixed_threads", "measure_ms", "measure_times", "device_name", "use_clock",
           "SimulatedClock"]


@dataclass(frozen=True)
class Timing:
    """How one latency is measured.

    Attributes:
        warmup: untimed forwards first (new shapes trigger kernel selection; keep >= 1).
        repeats: timed forwards; the median is the latency.
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
    """

    warmup: int = 3
    repeats: int = 15
    threads: int | None = None
    clock: str = "wall"
    runtime: str = "pytorch"

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
        if self.clock == "cpu" and self.threads != 1:
            raise ConfigError(f"clock='cpu' needs threads=1 (got {self.threads!r}): with more threads CPU time "
                              "adds up the threads' work and is not a latency")

    def resolved_threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()


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

    Used as a context manager, it is injected into :func:`measure_ms` (see :func:`use_clock`).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=1e-4):  # 1 ns per MAC, 0.1 ms per layer
        ...     ms = measure_ms(conv, torch.ones(2, 3, 4, 4), Timing(warmup=1, repeats=3))
        >>> round(ms, 9)  # 2 * 8 * 4 * 4 outputs of 3 * 3 * 3 MACs = 6 912 ns, plus 0.1 ms
        0.106912
    """

    def __init__(self, seconds_per_mac: float = 1e-9, seconds_per_layer: float = 1e-5) -> None:
        for name, value in (("seconds_per_mac", seconds_per_mac), ("seconds_per_layer", seconds_per_layer)):
            check_number(name, value, ">= 0", what="a finite number", type_error=ConfigError)
        self.seconds_per_mac = float(seconds_per_mac)
        self.seconds_per_layer = float(seconds_per_layer)
        self.now = 0.0
        self._active: list[contextlib.ExitStack] = []

    def __call__(self) -> float:
        return self.now

    def cost(self, module: nn.Module, output: Any) -> float:
        """Seconds one forward of ``module`` producing ``output`` costs (0 for other module types)."""
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            kh, kw = module.kernel_size
            macs = output.numel() * (module.in_channels // module.groups) * kh * kw  # per output element
        elif isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            macs = output.numel() * module.in_features
        else:
            return 0.0
        return self.seconds_per_mac * macs + self.seconds_per_layer

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
    return statistics.median(measure_times(module, inputs, timing, device))


def measure_times(module: nn.Module, inputs: Any, timing: Timing = Timing(),
                  device: str | torch.device | None = None) -> list[float]:
    """Every timed forward of :func:`measure_ms`, in milliseconds (``timing.repeats`` of them)."""
    device = torch.device(device) if device is not None else device_of(inputs)
    if timing.clock == "cpu" and device.type != "cpu":
        raise ConfigError(f"clock='cpu' times CPU work; on {device} use clock='wall'")
    if timing.runtime == "onnxruntime":
        module, inputs = _in_onnxruntime(module, inputs, device, timing)
    clock = _INJECTED[-1] if _INJECTED else CLOCKS[timing.clock]
    times = []
    with kept_modes(module):
        module.to(device).eval()
        with torch.no_grad(), fixed_threads(timing.resolved_threads()):
            for _ in range(timing.warmup):
                call_model(module, inputs)
            for _ in range(timing.repeats):
                _sync(device)
                start = clock()
                call_model(module, inputs)
                _sync(device)
                times.append(1e3 * (clock() - start))
    return times


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
