"""The comparison protocol: data, the cached baseline, BN re-calibration and budgeted fine-tuning.

Every method of :mod:`benchmarks.compare` starts from the same trained baseline, gets the same total
number of training steps (its own pruning-time training plus fine-tuning) and is evaluated the same
way: BatchNorm statistics re-calibrated on training batches before every evaluation.

The fine-tuning learning rate is constant, so one fine-tuning run yields the accuracy at every step
budget (1, 3, 10 epochs' worth): the checkpoint at budget ``B`` is exactly what a run stopped at ``B``
would give. A cosine schedule would tie the curve to its end point.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from wgates_plugin.app.data import load_digits, load_fashion_mnist, loaders
from wgates_plugin.app.training import Distillation, evaluate, fit, recalibrate_bn, train_steps
from wgates_plugin.errors import ConfigError

__all__ = ["Protocol", "Data", "Augmented", "make_data", "baseline", "checkpoints", "finetune_curve", "steps_per_epoch"]


@dataclass(frozen=True)
class Protocol:
    """Every knob of the comparison, with its default.

    Attributes:
        dataset: ``'fashion-mnist'`` (60 000 + 10 000 real images, the main dataset) or ``'digits'``
            (the bundled 1 797, for smoke runs).
        data_root: Fashion-MNIST's IDX folder (default: where Debian's package installs it).
        size: image side (Fashion-MNIST resized from 28, digits upsampled from 8).
        train_size: training images (Fashion-MNIST: a fixed random subset of the training set left
            after the validation split; digits: the rest of the 1 797 are the test split).
        val_size: validation images carved from the training set, where every method's knobs are chosen
            (Fashion-MNIST only; the test set is never used for a choice).
        augment: random shifts of up to ``shift`` pixels and horizontal flips on every training batch,
            the same for every method.
        evaluate_on: ``'test'``, or ``'val'`` to choose knobs: every figure of the run (after pruning,
            after BN re-calibration, along the fine-tuning curve) is then measured on the validation
            split and the test set is not read.
        batch: training batch size (the last partial batch is dropped: 31 steps per epoch at 1 000).
        baseline_epochs: epochs of baseline training (SGD, cosine from ``baseline_lr``), seed 0.
        baseline_lr: initial learning rate of baseline training and of "scratch" (constant there).
        prune_epochs: training the pruning step itself may spend (W-Gates' gate training, Slimming's
            sparsity training, Taylor's gradient accumulation, Gate Decorator's Tick-Tock), in epochs.
        budget_epochs: total training budgets (pruning-time training + fine-tuning) at which every
            method is evaluated.
        finetune_lr: constant SGD learning rate of fine-tuning.
        momentum / weight_decay: SGD settings of every phase.
        bn_batches: training batches averaged by BN re-calibration before each evaluation.
        gate_lr: Adam learning rate of the W-Gates gates (short pruning budgets need a fast one).
        latency_batch: batch size of the latency measurement (1 thread, CPU clock, median).
        latency_repeats: timed forwards per latency measurement.
        tolerance: every method's achieved FLOPs must be within ``budget * (1 ± tolerance)``.
        test_limit: evaluate on the first this many test images only (None: all 797; smoke runs).
        distill / temperature: knowledge distillation from the unpruned baseline for *every* method —
            its share of the loss in the pruning-time training the harness runs (W-Gates' gate training,
            Slimming's and DepGraph's sparse training) and in fine-tuning, and its temperature (0: off).
            NNI's Taylor and Gate Decorator's Tick-Tock train through their own loops and do not use it.
        prune_shortcuts: every method prunes the residual-coupled groups too (one shared choice per
            coupled group; what torch-pruning users get by default), not only the paper's plain groups.
        tune_lr: constant SGD learning rate of the fine-tuning phase alone, for every method (None:
            ``finetune_lr``, which the pruning-time training of the weights uses too). A knob screened
            on validation; set, it enters the protocol key.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    size: int = 32
    train_size: int = 10000
    val_size: int = 5000
    augment: bool = True
    shift: int = 2
    evaluate_on: str = "test"
    batch: int = 32
    baseline_epochs: int = 30
    baseline_lr: float = 0.1
    prune_epochs: float = 1.0
    budget_epochs: tuple[float, ...] = (1.0, 3.0, 10.0)
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_batches: int = 20
    gate_lr: float = 1e-3
    latency_batch: int = 32
    latency_repeats: int = 15
    tolerance: float = 0.02
    test_limit: int | None = None
    distill: float = 0.0
    temperature: float = 4.0
    prune_shortcuts: bool = False
    tune_lr: float | None = None

    def __post_init__(self) -> None:
        if self.dataset not in ("fashion-mnist", "digits"):
            raise ConfigError(f"dataset={self.dataset!r} is not one of 'fashion-mnist', 'digits'")
        if self.evaluate_on not in ("test", "val"):
            raise ConfigError(f"evaluate_on={self.evaluate_on!r} is not one of 'test', 'val'")
        if not self.budget_epochs or any(b <= 0 for b in self.budget_epochs):
            raise ConfigError(f"budget_epochs={self.budget_epochs!r} must be positive numbers")
        if self.prune_epochs < 0:
            raise ConfigError(f"prune_epochs={self.prune_epochs!r} must be >= 0")
        if self.tune_lr is not None and not self.tune_lr > 0:
            raise ConfigError(f"tune_lr={self.tune_lr!r} must be a positive learning rate, or None for finetune_lr")
        object.__setattr__(self, "budget_epochs", tuple(sorted(float(b) for b in self.budget_epochs)))

    def baseline_key(self, model: str) -> str:
        """Hash of everything the baseline depends on (model, data, baseline recipe, torch version)."""
        fields = {"model": model, "dataset": self.dataset, "size": self.size, "train_size": self.train_size,
                  "val_size": self.val_size, "augment": self.augment, "shift": self.shift, "batch": self.batch,
                  "epochs": self.baseline_epochs, "lr": self.baseline_lr, "momentum": self.momentum,
                  "weight_decay": self.weight_decay, "torch": torch.__version__.split("+")[0]}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def asdict(self) -> dict[str, Any]:
        """The fields (the distillation, shortcut and fine-tuning-lr ones only when set, the last only when
        it differs from ``finetune_lr``: runs recorded before they existed keep their protocol key)."""
        out = asdict(self)
        if not out["distill"]:
            del out["distill"], out["temperature"]
        if not out["prune_shortcuts"]:
            del out["prune_shortcuts"]
        if out["tune_lr"] is None or out["tune_lr"] == out["finetune_lr"]:
            del out["tune_lr"]  # fine-tunes exactly as without it, so it is the same protocol
        return out


@dataclass
class Data:
    """The fixed splits; ``train(seed)`` gives a loader whose shuffling (and augmentation) is seeded."""

    train_set: Any
    val_set: Any
    test_set: Any
    batch: int
    shift: int = 0  # 0: no augmentation
    evaluate_on: str = "test"

    def train(self, seed: int) -> Iterable:
        train = Augmented(self.train_set, self.shift, seed) if self.shift else self.train_set
        return loaders(train, self.test_set, self.batch, seed=seed)[0]

    def split(self, name: str) -> Iterable:
        """The ``'val'`` or ``'test'`` loader."""
        return loaders(self.train_set, self.val_set if name == "val" else self.test_set, self.batch, seed=0,
                       test_batch_size=256)[1]

    def val(self) -> Iterable:
        return self.split("val")

    def test(self) -> Iterable:
        """The evaluation split: the test set, or the validation set when the protocol chooses knobs."""
        return self.split(self.evaluate_on)


class Augmented(torch.utils.data.Dataset):
    """``base`` with every image shifted by up to ``shift`` pixels (zero padding, i.e. the normalized
    mean) and flipped horizontally with probability 1/2, drawn from a generator seeded by ``seed``."""

    def __init__(self, base: Any, shift: int, seed: int) -> None:
        self.base, self.shift = base, shift
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        x, y = self.base[index]  # (C, H, W)
        s = self.shift
        dx, dy, flip = torch.randint(0, 2 * s + 1, (2,), generator=self.generator).tolist() + \
            [bool(torch.rand((), generator=self.generator) < 0.5)]
        x = torch.nn.functional.pad(x, (s, s, s, s))[:, dy: dy + x.shape[1], dx: dx + x.shape[2]]
        return (x.flip(-1) if flip else x), y


def make_data(protocol: Protocol) -> Data:
    """The protocol's splits, drawn once with seed 0 (the same for every run and method)."""
    if protocol.dataset == "digits":
        train_set, test_set = load_digits(protocol.size, protocol.train_size, seed=0)
        val_set = test_set  # the digits are for smoke runs: no knob is chosen on them
    else:
        train_set, val_set, test_set = load_fashion_mnist(protocol.data_root, protocol.size, protocol.val_size, seed=0)
        if protocol.train_size > len(train_set):
            raise ConfigError(f"train_size={protocol.train_size} exceeds the {len(train_set)} training images left "
                              f"after the validation split (val_size={protocol.val_size})")
        train_set = TensorDataset(*(t[: protocol.train_size] for t in train_set.tensors))
    if protocol.test_limit is not None:
        test_set = torch.utils.data.Subset(test_set, range(min(protocol.test_limit, len(test_set))))
    return Data(train_set, val_set, test_set, protocol.batch, protocol.shift if protocol.augment else 0,
                protocol.evaluate_on)


def steps_per_epoch(protocol: Protocol) -> int:
    return protocol.train_size // protocol.batch


# ---------------------------------------------------------------------------- the baseline, trained once
def baseline(name: str, build: Callable[[str], nn.Module], protocol: Protocol, data: Data, cache: Path,
             progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The trained baseline of model ``name``: loaded from ``cache`` or trained once and stored there.

    Stored as safetensors (no code runs on loading) with the protocol hash, test top-1 and training
    time in its metadata. A file whose metadata does not match this protocol is never used: it is
    retrained under its own key, so changing a baseline knob cannot silently reuse an old model.
    """
    from safetensors.torch import load_file, save_file

    key = protocol.baseline_key(name)
    path = Path(cache) / f"baseline_{name}_{key}.safetensors"
    torch.manual_seed(0)
    model = build(name)
    if path.exists():
        model.load_state_dict(load_file(path), strict=True)
        return model, json.loads(_metadata(path)["info"])
    start = time.perf_counter()
    fit(model, data.train(0), protocol.baseline_epochs * steps_per_epoch(protocol), protocol.baseline_lr,
        protocol.momentum, protocol.weight_decay, progress=progress, desc=f"baseline {name}")
    info = {"model": name, "key": key, "top1": evaluate(model, data.split("test")),
            "val_top1": evaluate(model, data.split("val")),
            "seconds": round(time.perf_counter() - start, 1), "epochs": protocol.baseline_epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"info": json.dumps(info)})
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written baseline
    return model, info


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# ---------------------------------------------------------------------------- evaluation and fine-tuning
def calibrated_top1(model: nn.Module, data: Data, seed: int, protocol: Protocol) -> float:
    """Top-1 on the test split after re-estimating BN statistics on training batches (in place)."""
    recalibrate_bn(model, data.train(seed + 10_000), protocol.bn_batches)
    return evaluate(model, data.test())


def checkpoints(protocol: Protocol, steps_used: int) -> dict[str, int | None]:
    """Fine-tuning steps at each total budget (``None``: the pruning step alone exceeded it)."""
    spe = steps_per_epoch(protocol)
    out: dict[str, int | None] = {}
    for epochs in protocol.budget_epochs:
        left = round(epochs * spe) - steps_used
        out[_label(epochs)] = left if left >= 0 else None
    return out


def _label(epochs: float) -> str:
    return f"{epochs:g}"


def finetune_curve(model: nn.Module, data: Data, seed: int, protocol: Protocol, steps_used: int,
                   lr: float | None = None, progress: bool = False,
                   teacher: nn.Module | None = None,
                   val: dict[str, float | None] | None = None) -> dict[str, float | None]:
    """Fine-tune ``model`` (constant lr: ``lr``, else the protocol's ``tune_lr``, else its ``finetune_lr``)
    and record calibrated top-1 at every total step budget (distilling from ``teacher`` when
    ``protocol.distill`` is set).

    Args:
        val: when given, filled with the validation top-1 at the same checkpoints and the same keys, so a
            checkpoint can be chosen on validation afterwards. It reads the same BN calibration and draws
            nothing from any random generator: the training and the returned figures are unchanged.

    Returns:
        ``{budget in epochs (str): top-1, or None when ``steps_used`` alone exceeds that budget}``.
    """
    marks = checkpoints(protocol, steps_used)
    wanted = sorted({s for s in marks.values() if s is not None})
    if lr is None:
        lr = protocol.finetune_lr if protocol.tune_lr is None else protocol.tune_lr
    opt = torch.optim.SGD(model.parameters(), lr=lr,
                          momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    stream, done, top1, val_top1 = _Stream(data.train(seed)), 0, {}, {}
    kd = distillation(protocol, teacher)
    for target in wanted:
        train_steps(model, stream, opt, target - done, progress=progress, desc="finetune", distill=kd)
        done = target
        top1[target] = calibrated_top1(model, data, seed, protocol)
        if val is not None:
            val_top1[target] = evaluate(model, data.val())  # the same calibrated network

    def by_label(at_step: dict[int, float]) -> dict[str, float | None]:
        return {label: (None if s is None else at_step[s]) for label, s in marks.items()}

    if val is not None:
        val.update(by_label(val_top1))
    return by_label(top1)


def distillation(protocol: Protocol, teacher: nn.Module | None) -> Distillation | None:
    """The protocol's distillation loss from ``teacher``, or None when it is off."""
    if not protocol.distill or teacher is None:
        return None
    return Distillation(teacher, protocol.distill, protocol.temperature)


class _Stream:
    """One endless batch sequence shared by successive ``train_steps`` calls (each continues it)."""

    def __init__(self, loader: Iterable) -> None:
        from wgates_plugin.app.training import cycle

        self.iterator = cycle(loader)

    def __iter__(self) -> Any:
        return self.iterator


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    import statistics

    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
