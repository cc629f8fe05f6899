"""Channel groups from torch-pruning's dependency graph.

A *channel group* is a set of output channels that must be removed together: the filters of one conv,
or of several convs coupled by a depthwise partner, a residual addition, a concatenation or an
element-wise product. Every group rooted at a Conv2d / Linear becomes one gated unit. For each group we
record who *produces* its channels (their filters are what the gate scores), who *consumes* them (the
points where the channels leave the group: the gates are applied there, so zeroing equals removing),
and whether it may be pruned at all, with the reason when not.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import math
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import cast

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from tqdm.auto import tqdm

from .errors import ConfigError, TracingError, WGatesError
from .utils import check_example, check_names, check_number, eval_outputs, kept_modes, tensors_in

__all__ = ["Role", "Member", "ChannelGroup", "GroupGraph", "TraceLimits", "LIMITS", "trace_limits", "trace_groups",
           "layer_width", "is_depthwise",
           "why_not", "gated_groups", "consumer_feeds", "scale_input", "along", "removal_plan"]

# Normalizations that mix channels: removing a channel changes the others' statistics, so neither
# zeroing nor removing is exact.
_CHANNEL_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CHANNEL_WISE = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)
_UNSUPPORTED_TYPES = {
    ops.OPTYPE.MHA: "multi-head attention",
    ops.OPTYPE.LSTM: "LSTM",
    ops.OPTYPE.EMBED: "embedding",
    ops.OPTYPE.CUSTOMIZED: "customized layer",
}


class Role(str, enum.Enum):
    PRODUCER = "producer"  # its output filters are the group's channels
    CONSUMER = "consumer"  # reads the group's channels as inputs; gates are applied at its input
    PASS = "pass"  # per-channel layer inside the group (BN, PReLU, a depthwise conv's input side)


@dataclass
class Member:
    """One layer touched by a group.

    Attributes:
        name: qualified module name in the model.
        module: the module.
        role: how the group touches it.
        idxs: positions in the module's output (PRODUCER/PASS) or input (CONSUMER) dimension.
        channels: the group channel each position carries, same length as ``idxs``.
    """

    name: str
    module: nn.Module
    role: Role
    idxs: torch.Tensor
    channels: torch.Tensor

    @property
    def channel_dim(self) -> int:
        """Dimension of the module input that holds channels (consumers only)."""
        return -1 if isinstance(self.module, nn.Linear) else 1


@dataclass
class ChannelGroup:
    """A set of coupled channels that are kept or removed together."""

    name: str  # qualified name of the root layer
    root: nn.Module
    size: int
    members: list[Member] = field(default_factory=list)
    shortcut: bool = False  # coupled through a residual addition
    tie: int = 1  # pattern must repeat over this many grouped-conv groups
    reason: str | None = None  # why it cannot be pruned; None when it can

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role is Role.PRODUCER]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role is Role.CONSUMER]

    @property
    def layer_names(self) -> list[str]:
        return [m.name for m in self.producers]


@dataclass
class GroupGraph:
    """The traced dependency graph and every output-channel group found in it."""

    graph: tp.DependencyGraph
    groups: list[ChannelGroup]


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


@dataclass
class TraceLimits:
    """How long tracing and the group search may take, and whether they show progress.

    Attributes:
        seconds: wall-clock limit of one :func:`trace_groups` call (graph building plus the group
            search); past it a :class:`TracingError` names the slow part and the ways out. It is
            checked once torch-pruning's graph building returns and after every group (one group's
            search is limited by ``group_seconds``). ``math.inf``: no limit.
        group_seconds: limit of torch-pruning's search for one group's coupled layers. Past it the
            search is interrupted and the group is left whole, with the reason (:func:`why_not`); the
            rest of the model is pruned as usual (``math.inf``: never interrupted). Some searches do not
            end: torch-pruning 1.6.1 loops mapping channels through the reshapes of YOLO11's C2PSA
            attention.
        group_indices: how many channel indices one group's search may record (counted as
            torch-pruning records them, the merged group included), as a multiple of the
            model's layer width (the sum of every weight's first two sizes). Past it the search is
            stopped at once and the group left whole, as past ``group_seconds``. It is the
            deterministic guard, independent of the machine's speed: the endless C2PSA search doubles
            its index lists on every turn and fills the memory faster than a loaded machine reaches a
            time limit. Searches that end stay far below it (at most 7.4x, YOLOv8n's head; 6.2x,
            VGG-11's flatten; under 2x on 30 other torchvision and timm CNNs: ``python -m
            benchmarks.group_search``); ``math.inf``: no limit.
        progress: show progress bars over the tracing and the group search (None: on a terminal, for
            models of more than 300 modules).
        clock: the clock both time limits are measured with (injectable for tests; ``group_seconds``
            reads it from a watcher thread too).
    """

    seconds: float = 600.0
    group_seconds: float = 30.0
    group_indices: float = 64.0
    progress: bool | None = None
    clock: Callable[[], float] = time.monotonic


LIMITS = TraceLimits()


@contextlib.contextmanager
def trace_limits(seconds: float | None = None, progress: bool | None = None,
                 clock: Callable[[], float] | None = None, group_seconds: float | None = None,
                 group_indices: float | None = None) -> Iterator[TraceLimits]:
    """Change :data:`LIMITS` inside a ``with`` block, e.g. ``with trace_limits(seconds=60): WGates(...)``."""
    saved = (LIMITS.seconds, LIMITS.group_seconds, LIMITS.group_indices, LIMITS.progress, LIMITS.clock)
    for name, value in (("seconds", seconds), ("group_seconds", group_seconds), ("group_indices", group_indices)):
        if value is not None and value != math.inf:
            check_number(name, value, "> 0", type_error=ConfigError)
    LIMITS.seconds = float(seconds) if seconds is not None else LIMITS.seconds
    LIMITS.group_seconds = float(group_seconds) if group_seconds is not None else LIMITS.group_seconds
    LIMITS.group_indices = float(group_indices) if group_indices is not None else LIMITS.group_indices
    LIMITS.progress = progress if progress is not None else LIMITS.progress
    LIMITS.clock = clock or LIMITS.clock
    try:
        yield LIMITS
    finally:
        LIMITS.seconds, LIMITS.group_seconds, LIMITS.group_indices, LIMITS.progress, LIMITS.clock = saved


class _SearchStopped(BaseException):
    """Raised inside torch-pruning's group search to stop it (a BaseException, so no
    ``except Exception`` inside the search can swallow it)."""


class _SearchTimeout(_SearchStopped):
    """The search passed its time limit (:class:`_deadline`)."""


class _SearchTooLarge(_SearchStopped):
    """The search recorded more channel indices than its budget (:func:`_index_budget`)."""


_BUDGET = threading.local()  # the index budget left to this thread's group search, if one is active
_ADD_DEP = {"users": 0, "original": None}
_ADD_DEP_LOCK = threading.Lock()


def _counted_add_dep(group: object, dep: object, idxs: Sequence[object]) -> None:
    left = getattr(_BUDGET, "left", None)
    if left is not None:
        _BUDGET.left = left - len(idxs)
        if _BUDGET.left < 0:
            raise _SearchTooLarge
    _ADD_DEP["original"](group, dep, idxs)


@contextlib.contextmanager
def _index_budget(limit: float) -> Iterator[None]:
    """Stop torch-pruning's group searches run by this thread inside the block (raise
    :class:`_SearchTooLarge`) once they have recorded more than ``limit`` channel indices.

    Every search records its coupled layers through ``torch_pruning``'s ``Group.add_dep`` (the
    search's own group, then the merged group it returns: a search that ends counts most of its
    indices twice); while any thread is inside such a block that method counts the indices of the
    threads that asked and passes every call on unchanged, and it is restored when the last block
    ends. A nested block gets at most what its outer block has left, and what it uses is charged to
    the outer one. ``math.inf``: no limit, nothing is changed.
    """
    if limit == math.inf:
        yield
        return
    check_number("group_indices budget", limit, "> 0", type_error=ConfigError)
    group_class = tp.dependency.group.Group
    outer = getattr(_BUDGET, "left", None)
    start = limit if outer is None else min(limit, outer)
    with _ADD_DEP_LOCK:
        if _ADD_DEP["users"] == 0:
            _ADD_DEP["original"] = group_class.add_dep
            group_class.add_dep = _counted_add_dep
        _ADD_DEP["users"] += 1
    _BUDGET.left = start
    try:
        yield
    finally:
        used = start - _BUDGET.left
        _BUDGET.left = None if outer is None else outer - used
        with _ADD_DEP_LOCK:
            _ADD_DEP["users"] -= 1
            if _ADD_DEP["users"] == 0:
                group_class.add_dep = _ADD_DEP["original"]


def layer_width(model: nn.Module) -> int:
    """The sum of the first two sizes (out and in channels or features) of every weight in ``model``:
    the unit of :attr:`TraceLimits.group_indices`."""
    return sum(sum(m.weight.shape[:2]) for m in model.modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor))


_ACTIVE = threading.local()  # whether this thread is inside a _deadline block


class _deadline:  # noqa: N801 - used as a function: ``with _deadline(seconds, clock): ...``
    """Interrupt the Python code run inside the block once ``clock`` passes ``seconds`` from its start.

    A watcher thread reads ``clock`` (so it must be callable from another thread) every ``poll``
    seconds and, past the limit, raises :class:`_SearchTimeout` asynchronously in the calling thread
    (CPython's ``PyThreadState_SetAsyncExc``); a search that is pure Python, as torch-pruning's is,
    stops at its next bytecode. The code inside runs at full speed (no trace function).

    Leaving the block, a timeout not yet delivered is cancelled: nothing escapes it later. An
    exception the block raises itself (a ``KeyboardInterrupt``, an error) propagates unchanged, never
    replaced by the timeout. A thread holds one pending asynchronous exception, so blocks do not
    nest (``RuntimeError``). ``math.inf``: no limit, no thread, the clock is never read.
    """

    def __init__(self, seconds: float, clock: Callable[[], float], poll: float = 0.02) -> None:
        if seconds != math.inf:
            check_number("group_seconds", seconds, "> 0", type_error=ConfigError)
        self.seconds, self.clock, self.poll = seconds, clock, poll
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.done = self.fired = False

    def __enter__(self) -> _deadline:
        if self.seconds == math.inf:
            return self
        if getattr(_ACTIVE, "inside", False):
            raise RuntimeError("_deadline blocks do not nest: a thread holds one pending asynchronous exception")
        _ACTIVE.inside = True
        self.target = ctypes.c_ulong(threading.get_ident())
        self.end = self.clock() + self.seconds
        threading.Thread(target=self._watch, name="wgates-group-search-limit", daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self.stop.wait(self.poll):
            with self.lock:
                if self.done:
                    return
                if self.clock() > self.end:
                    self.fired = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(self.target, ctypes.py_object(_SearchTimeout))
                    return

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if self.seconds == math.inf:
            return False
        try:
            self._close()
        except _SearchTimeout:  # delivered in here, after the block ended: the block's outcome stands
            self._close()  # the watcher fires once: nothing is pending any more
        return False  # the block's own exception (or the timeout it received) propagates as it is

    def _close(self) -> None:
        with self.lock:  # past this, the watcher cannot fire
            self.done = True
            if self.fired:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(self.target, None)  # cancel it, if not yet raised
        self.stop.set()
        _ACTIVE.inside = False


def _terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


_WAYS_OUT = ("HINT: exclude the slow part (exclude=[...] / exclude_types), gate fewer layer types (root_types), "
             "trace with a smaller example input, or allow more time: "
             "with wgates_plugin.groups.trace_limits(seconds=...): ...")


def build_graph(model: nn.Module, example_inputs: object) -> tp.DependencyGraph:
    """torch-pruning's dependency graph, with a tracing failure turned into a :class:`TracingError`.

    Every module's train/eval mode is restored (torch-pruning leaves the model in eval mode).
    """
    check_example(example_inputs)
    try:
        with torch.enable_grad(), kept_modes(model):
            return tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    except WGatesError:
        raise
    except Exception as exc:  # torch-pruning raises bare ZeroDivisionError/IndexError/... on unsupported ops
        where = _failing_node(sys.exc_info()[2])
        raise TracingError(
            f"torch-pruning cannot trace the channel dependencies of {type(model).__name__}"
            f"{where}: {type(exc).__name__}: {exc}. "
            "Nothing was pruned: without a dependency graph no channel can be removed safely. "
            "HINT: reshapes that interleave channels (e.g. a channel shuffle) are what torch-pruning "
            "cannot map; models without them trace."
        ) from exc


def _failing_node(tb: object) -> str:
    """Where torch-pruning was when it failed: the graph node and the nearest named layer feeding it."""
    node = None
    while tb is not None:  # innermost frame whose arguments include a graph node
        code = tb.tb_frame.f_code  # type: ignore[attr-defined]
        for arg in code.co_varnames[: code.co_argcount]:
            value = tb.tb_frame.f_locals.get(arg)  # type: ignore[attr-defined]
            if isinstance(value, tp.dependency.Node):
                node = value
        tb = tb.tb_next  # type: ignore[attr-defined]
    if node is None:
        return ""
    layer, frontier, seen = None, [node], set()
    while frontier and layer is None:
        current = frontier.pop(0)
        seen.add(current)
        if current is not node and isinstance(current.module, nn.Module) and current._name:
            layer = current._name
        frontier += [n for n in current.inputs if n not in seen]
    after = f" (right after layer '{layer}')" if layer else ""
    return f" at the operation {node.name}{after}"


def trace_groups(
    model: nn.Module,
    example_inputs: object,
    root_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> GroupGraph:
    """Trace ``model`` and return its output-channel groups rooted at ``root_types``.

    Groups that cannot be pruned exactly carry a ``reason``; callers decide about shortcut groups
    (``shortcut=True``) and user exclusions.
    """
    limits = LIMITS
    start = limits.clock()
    size = sum(1 for _ in model.modules())
    show = limits.progress if limits.progress is not None else (size > 300 and _terminal())
    with tqdm(total=1, desc=f"tracing {type(model).__name__} ({size} modules)", leave=False, disable=not show) as bar:
        graph = build_graph(model, example_inputs)
        bar.update()
    built = limits.clock() - start
    if built > limits.seconds:
        raise TracingError(f"tracing {type(model).__name__} took {built:.0f} s, over the {limits.seconds:g} s limit "
                           f"(torch-pruning's graph building). {_WAYS_OUT}")
    names = {m: n for n, m in model.named_modules()}
    outputs = output_modules(model, example_inputs)
    if limits.group_indices != math.inf:  # LIMITS may be set directly, not only through trace_limits
        check_number("group_indices", limits.group_indices, "> 0", type_error=ConfigError)
    budget = limits.group_indices * max(layer_width(model), 1)
    visited: set[nn.Module] = set()
    groups = []
    roots = [m for m in graph.module2node if isinstance(m, root_types)]
    slowest = ("", 0.0)
    for i, module in enumerate(tqdm(roots, desc="channel groups", leave=False, disable=not show)):
        if module in visited:
            continue
        before = limits.clock()
        group = _group_of(graph, module, names, outputs, budget)
        took = limits.clock() - before
        slowest = max(slowest, (group.name, took), key=lambda s: s[1])
        visited.update(m.module for m in group.members if m.role is not Role.CONSUMER)
        visited.add(module)
        groups.append(group)
        if limits.clock() - start > limits.seconds:
            raise TracingError(
                f"the channel-group search of {type(model).__name__} passed the {limits.seconds:g} s limit after "
                f"{i + 1} of {len(roots)} layers (graph building {built:.0f} s; slowest group '{slowest[0]}', "
                f"{slowest[1]:.0f} s). {_WAYS_OUT}")
    return GroupGraph(graph, groups)


def output_modules(model: nn.Module, example_inputs: object) -> set[nn.Module]:
    """The leaf modules whose output tensor *is* one of the model's outputs (one eval forward, no grad),
    and, through parameter-free shape-keeping modules (activations, dropout), the ones that fed them.

    torch-pruning marks an output only where the output's last operation is not a module, or where a
    module's result feeds nothing else; a feature-pyramid level that is both returned and read by the
    next level (RetinaNet's P5 and P6) would look internal, and pruning it would change the output.
    """
    produced: dict[int, list[nn.Module]] = {}
    kept: list[torch.Tensor] = []  # hold every tensor, so no id() is reused during the forward

    def record(module: nn.Module, args: tuple, out: object) -> None:
        if torch.is_tensor(out):
            kept.append(out)
            found = produced.setdefault(id(out), [])
            found.append(module)
            shape_kept = len(args) == 1 and torch.is_tensor(args[0]) and args[0].shape == out.shape
            if shape_kept and next(module.parameters(recurse=False), None) is None:  # an activation, dropout: the
                found += produced.get(id(args[0]), [])                               # returned channels are its input's

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        result = eval_outputs(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return {m for t in tensors_in(result) for m in produced.get(id(t), [])}


def _group_of(graph: tp.DependencyGraph, root: nn.Module, names: dict[nn.Module, str],
              outputs: AbstractSet[nn.Module] = frozenset(), budget: float = math.inf) -> ChannelGroup:
    pruner = graph.get_pruner_of_module(root)
    size = int(pruner.get_out_channels(root))
    group = ChannelGroup(names.get(root, type(root).__name__), root, size)
    try:
        # the budget outside the deadline: a timeout is cancelled (deadline's exit) before the budget unwinds
        with _index_budget(budget), _deadline(LIMITS.group_seconds, LIMITS.clock):
            tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(size)))
    except _SearchStopped as stopped:
        if isinstance(stopped.__context__, (KeyboardInterrupt, SystemExit, WGatesError, TimeoutError)):
            raise stopped.__context__ from None  # delivered while a stop propagated: the stop wins
        if isinstance(stopped, _SearchTooLarge):
            group.reason = (f"torch-pruning's search for its coupled layers kept growing past {budget:.0f} channel "
                            f"indices ({LIMITS.group_indices:g} x the model's layer width; "
                            "wgates_plugin.groups.LIMITS.group_indices)")
        else:
            group.reason = (f"torch-pruning's search for its coupled layers did not finish in "
                            f"{LIMITS.group_seconds:g} s (wgates_plugin.groups.LIMITS.group_seconds)")
        return group
    except (WGatesError, TimeoutError):  # ours, or an interrupt raised as an exception: not a reason, a stop
        raise
    except Exception as exc:  # torch-pruning fails inside index mapping on e.g. channel shuffles
        group.reason = f"torch-pruning cannot map its channels ({type(exc).__name__}: {exc})"
        return group
    reasons = []
    for item in tp_group:
        reason = _add_item(group, graph, item, names)
        if reason:
            reasons.append(reason)
    returned = any(m.module in outputs for m in group.members if m.role is not Role.CONSUMER)
    if returned or _reaches_output(graph, group, outputs):
        reasons.append("it produces the model's output")
    reasons += _check_coverage(group)
    reasons += _check_split_producers(group)
    reasons += _set_tie(group)
    group.reason = "; ".join(dict.fromkeys(reasons)) or None
    _name_after_first_producer(group, names)
    return group


def _name_after_first_producer(group: ChannelGroup, names: dict[nn.Module, str]) -> None:
    """Name a group after its first producer in the model's module order (stable, readable)."""
    order = {m: i for i, m in enumerate(names)}
    producers = [m for m in group.producers if isinstance(m.module, nn.Module)]
    if producers:
        first = min(producers, key=lambda m: order.get(m.module, len(order)))
        group.root, group.name = first.module, first.name


_SPLIT_NAMES = {ops._SplitOp: "torch.split / chunk", ops._SliceOp: "a slice", ops._UnbindOp: "torch.unbind"}


def _add_item(group: ChannelGroup, graph: tp.DependencyGraph, item: object, names: dict) -> str | None:
    dep, idxs = item.dep, item.idxs  # type: ignore[attr-defined]
    module, handler = dep.target.module, dep.handler
    idx_t = torch.as_tensor(list(idxs), dtype=torch.long)
    chan_t = torch.as_tensor(list(item.root_idxs), dtype=torch.long)  # type: ignore[attr-defined]
    name = names.get(module, str(module))
    node_type = dep.target.type
    if isinstance(module, ops._ElementWiseOp):
        fn = str(module._grad_fn)
        if "AddBackward" in fn or "SubBackward" in fn:
            group.shortcut = True
        return None
    if isinstance(module, (ops._SplitOp, ops._SliceOp, ops._UnbindOp)):
        return (f"its channels pass a channel split ({_SPLIT_NAMES[type(module)]}, {name}) whose sizes are fixed "
                f"in the model's code: removing channels would move the split points")
    if node_type in _UNSUPPORTED_TYPES:
        return f"its channels pass through a {_UNSUPPORTED_TYPES[node_type]} ({name})"
    if node_type == ops.OPTYPE.OUTPUT:
        return "it produces the model's output"
    if isinstance(module, _CHANNEL_MIXING) and not _is_channelwise_groupnorm(module):
        return f"{type(module).__name__} '{name}' normalizes across its channels"
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        extra = sorted(set(dict(module.named_parameters(recurse=False))) - {"weight", "bias"})
        if extra:  # e.g. timm's ScaledStdConv2d 'gain': torch-pruning would leave it at the old width
            return (f"{type(module).__name__} '{name}' carries per-channel parameters torch-pruning does not "
                    f"prune ({', '.join(extra)})")
        return _add_layer(group, graph, module, handler, name, idx_t, chan_t)
    if isinstance(module, nn.Module) and isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
        return f"{type(module).__name__} '{name}' is not supported"
    if isinstance(module, _CHANNEL_WISE) or isinstance(module, nn.Parameter):
        group.members.append(Member(name, cast(nn.Module, module), Role.PASS, idx_t, chan_t))
    return None


def _add_layer(group, graph, module, handler, name, idx_t, chan_t) -> str | None:
    if is_depthwise(module):
        group.members.append(Member(name, module, Role.PRODUCER, idx_t, chan_t))
        return None
    if graph.is_out_channel_pruning_fn(handler):
        group.members.append(Member(name, module, Role.PRODUCER, idx_t, chan_t))
    elif graph.is_in_channel_pruning_fn(handler):
        group.members.append(Member(name, module, Role.CONSUMER, idx_t, chan_t))
    return None


def _is_channelwise_groupnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels


def _reaches_output(graph: tp.DependencyGraph, group: ChannelGroup,
                    outputs: AbstractSet[nn.Module] = frozenset()) -> bool:
    """True when the group's channels reach the model output without passing a consumer layer (an output
    node, a node nothing reads, or a module whose result the model returns: ``outputs``)."""
    consumers = {m.module for m in group.consumers}
    stack = [graph.module2node[m.module] for m in group.producers if m.module in graph.module2node]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.type == ops.OPTYPE.OUTPUT or not node.outputs or node.module in outputs:
            return True
        stack += [n for n in node.outputs if n.module not in consumers]
    return False


def _check_coverage(group: ChannelGroup) -> list[str]:
    """Every layer must carry every group channel equally often, so channel counts determine its cost."""
    reasons = []
    for m in group.members:
        if m.role is Role.PASS:
            continue
        counts = torch.bincount(m.channels, minlength=group.size)
        if counts.min() != counts.max():
            reasons.append(f"'{m.name}' reads only part of its channels (split/slice)")
    return reasons


def _check_split_producers(group: ChannelGroup) -> list[str]:
    """A layer whose outputs the group holds only in part feeds a channel split (``torch.split``, ``chunk``,
    slicing): the model's code fixes the split points, so removing channels on one side would shift them."""
    reasons = []
    for m in group.producers:
        width = m.module.out_channels if isinstance(m.module, nn.Conv2d) else getattr(m.module, "out_features", None)
        if width is not None and len(m.idxs) < width:
            reasons.append(f"'{m.name}' feeds a channel split (torch.split / chunk / slicing): only {len(m.idxs)} "
                           f"of its {width} outputs are in this group, and the split points are fixed in the "
                           f"model's code")
    return reasons


def _set_tie(group: ChannelGroup) -> list[str]:
    """Grouped (not depthwise) convs need the same channel pattern in each of their conv groups."""
    tie = 1
    for m in group.members:
        mod = m.module
        if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not is_depthwise(mod):
            if not torch.equal(m.idxs, m.channels):
                return [f"grouped conv '{m.name}' reads the group through an index mapping"]
            tie = math.lcm(tie, mod.groups)
    if group.size % tie:
        return [f"its {group.size} channels cannot be split evenly over {tie} conv groups"]
    group.tie = tie
    return []


def why_not(group: ChannelGroup, selected: Sequence[ChannelGroup], prune_shortcuts: bool) -> str:
    """Why ``group`` is not among the ``selected`` (gated) groups, or ``'gated'``."""
    if group in selected:
        return "gated"
    if group.reason:
        return group.reason
    if group.shortcut and not prune_shortcuts:
        return "shortcut-coupled (pass prune_shortcuts=True to prune it)"
    return "not selected or excluded"


def gated_groups(
    model: nn.Module,
    example_inputs: object,
    select: Callable[[str, nn.Module], bool] | None = None,
    exclude: Iterable[str] = (),
    exclude_types: tuple[type, ...] = (),
    root_types: tuple[type, ...] = (),
    prune_shortcuts: bool = False,
) -> tuple[GroupGraph, list[ChannelGroup]]:
    """Trace ``model`` (its train/eval mode is restored) and select the groups to gate.

    Args:
        select: ``(name, module) -> bool`` choosing the producer layers that may be pruned (default all).
        exclude: qualified layer names never to prune (a group containing one stays whole).
        exclude_types: layer classes never to prune.
        root_types: layer classes whose output channels may be pruned (default Conv2d and Linear).
        prune_shortcuts: also select residual-coupled groups.

    Raises:
        ConfigError: ``exclude`` names a layer the model does not have, or no group is selected.
        TracingError: torch-pruning cannot trace the model.
    """
    exclude = tuple(exclude)
    check_names(model, "exclude", exclude)
    traced = trace_groups(model, example_inputs, tuple(root_types) or (nn.Conv2d, nn.Linear))
    excluded, types, include = set(exclude), tuple(exclude_types), select or (lambda _n, _m: True)
    chosen = [g for g in traced.groups if g.producers and not g.reason and (prune_shortcuts or not g.shortcut)
              and not any(p.name in excluded or isinstance(p.module, types) for p in g.producers)
              and any(include(p.name, p.module) for p in g.producers)]
    if not chosen:
        raise ConfigError("no prunable channel group was selected; groups found: "
                          + "; ".join(f"{g.name}: {why_not(g, chosen, prune_shortcuts)}" for g in traced.groups[:8]))
    return traced, chosen


def consumer_feeds(groups: Sequence[ChannelGroup]) -> dict[nn.Module, list[tuple[int, Member]]]:
    """``{consumer layer: [(group index, member)]}``: the inputs where each group's channels are read."""
    feeds: dict[nn.Module, list[tuple[int, Member]]] = defaultdict(list)
    for gi, g in enumerate(groups):
        for m in g.consumers:
            feeds[m.module].append((gi, m))
    return feeds


def scale_input(x: torch.Tensor, feeds: Sequence[tuple[int, Member]],
                vector: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``x`` with the channels a consumer reads from each group multiplied by ``vector(group index)``.

    ``feeds`` are the consumer's ``(group index, member)`` pairs (:func:`consumer_feeds`); channels of
    ``x`` that no group feeds are left as they are.
    """
    dim = feeds[0][1].channel_dim % x.dim()
    scale = x.new_ones(x.shape[dim])  # (C_in,)
    for gi, m in feeds:
        scale = scale.index_copy(0, m.idxs.to(x.device), vector(gi).to(x)[m.channels.to(x.device)])
    return x * along(scale, dim, x.dim())


def along(vector: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``vector`` shaped to broadcast along dimension ``dim`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vector.view(shape)


def removal_plan(groups: Sequence[ChannelGroup], keep: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{root layer name: its output indices to remove}`` for 0/1 keep vectors ``(C,)`` of ``groups``."""
    plan = {}
    for group, mask in zip(groups, keep):
        closed = torch.nonzero(mask.detach() < 0.5).flatten().cpu()
        root = next(m for m in group.producers if m.module is group.root)
        lookup = dict(zip(root.channels.tolist(), root.idxs.tolist()))
        plan[group.name] = torch.tensor([lookup[int(c)] for c in closed], dtype=torch.long)
    return plan
