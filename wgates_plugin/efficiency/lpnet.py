"""The Latency Prediction Network (paper Eq. 8, Fig. 4) and how it is fitted and scored.

An :class:`LPNet` is three fully-connected layers with a ReLU after the first two. Inputs are
standardized with the training set's mean and standard deviation; the target is standardized too.

Loss: by default the net regresses the *logarithm* of the latency with MSE (``log_target=True``).
MSE on ``log(latency)`` is a relative-error loss: ``(log y_hat - log y)^2 ~ ((y_hat - y) / y)^2`` for
small errors, which is what the reported figures (mean absolute percentage error, share within
+-5 % / +-10 %) measure, and its prediction ``exp(...)`` is always positive. That matters because
gate training drives the encoding to the edge of the sampled space, where a net regressing
milliseconds (``log_target=False``, the paper's MSE) can extrapolate to zero or negative latency,
which the efficiency loss would then reward. On held-out candidates the two losses are within
0.4 points of MAPE of each other (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import trange

from ..errors import ConfigError
from ..utils import check_number
from .timing import fixed_threads

__all__ = ["LPNet", "FitConfig", "fit_lpnet", "select_weight_decay", "WEIGHT_DECAY_GRID", "LatencyErrors",
           "latency_errors", "split_indices"]

#: weight decays :func:`select_weight_decay` tries by default: none, and three strengths around the one
#: that regularizes a 128-128 LPNet on a few hundred noisy whole-network timings (on the CPU the latency
#: is nearly log-linear in the counts, and an unregularized net fits the measurement noise).
WEIGHT_DECAY_GRID = (0.0, 1e-3, 1e-2, 3e-2)


class LPNet(nn.Module):
    """``in -> hidden[0] -> ReLU -> hidden[1] -> ReLU -> 1``, on standardized inputs and targets.

    Args:
        in_features: length of the encoding.
        hidden: widths of the two hidden layers.
        log_target: the net predicts ``log(ms)`` (see the module docstring).

    ``forward(x)`` maps encodings ``(N, in_features)`` to latencies in ms ``(N,)``; it is
    differentiable in ``x``.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, in_features: int, hidden: Sequence[int] = (128, 128), log_target: bool = True) -> None:
        super().__init__()
        if len(hidden) != 2 or min(hidden) < 1:
            raise ConfigError(f"hidden={tuple(hidden)!r} must be two positive layer widths")
        self.in_features = in_features
        self.hidden = tuple(int(h) for h in hidden)
        self.log_target = log_target
        self.layers = nn.Sequential(
            nn.Linear(in_features, self.hidden[0]), nn.ReLU(),
            nn.Linear(self.hidden[0], self.hidden[1]), nn.ReLU(),
            nn.Linear(self.hidden[1], 1),
        )
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_std", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def set_normalization(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Standardize with the statistics of training encodings ``x (N, F)`` and latencies ``y (N,)``."""
        t = self._target(y)  # (N,)
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))  # constant features stay 0
        self.y_mean.copy_(t.mean())
        self.y_std.copy_(t.std(unbiased=False).clamp_min(1e-6))

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log(y) if self.log_target else y

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The raw network output for encodings ``x (N, F)``: the standardized target, ``(N,)``."""
        return self.layers((x - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.normalized(x) * self.y_std + self.y_mean  # (N,)
        return torch.exp(t) if self.log_target else t

    def spec(self) -> dict:
        """Constructor arguments and normalization constants, JSON-serializable."""
        return {"in_features": self.in_features, "hidden": list(self.hidden), "log_target": self.log_target,
                "x_mean": self.x_mean.tolist(), "x_std": self.x_std.tolist(),
                "y_mean": float(self.y_mean), "y_std": float(self.y_std)}

    @classmethod
    def from_spec(cls, spec: dict) -> LPNet:
        net = cls(int(spec["in_features"]), spec["hidden"], bool(spec["log_target"]))
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(net, name).copy_(torch.tensor(spec[name], dtype=torch.float32))
        return net


@dataclass(frozen=True)
class FitConfig:
    """How an LPNet is trained (Adam on the standardized target, cosine-decayed learning rate).

    Attributes:
        hidden: the two hidden widths.
        log_target: regress ``log(ms)`` (a relative-error loss) instead of ``ms``.
        epochs: passes over the training set.
        lr: Adam's initial learning rate (cosine decay to 1 % of it).
        batch_size: minibatch size.
        weight_decay: Adam's L2 weight decay.
        seed: initialization and shuffling seed.
        threads: CPU threads while fitting. The MLP is tiny: one thread is fastest, and on a shared
            CPU more threads are several times slower.
    """

    hidden: tuple[int, int] = (128, 128)
    log_target: bool = True
    epochs: int = 300
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} must be > 0")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0")

    def asdict(self) -> dict:
        return asdict(self)


def fit_lpnet(x: torch.Tensor, y: torch.Tensor, fit: FitConfig = FitConfig(), progress: bool = False) -> LPNet:
    """Train an LPNet on encodings ``x (N, F)`` and measured latencies ``y (N,)`` in ms.

    Raises:
        ConfigError: fewer than 2 samples, shapes disagree, or a latency is not positive.
    """
    if x.dim() != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ConfigError(f"need encodings (N, F) and latencies (N,) with N >= 2, "
                          f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bool((y > 0).all()):
        raise ConfigError("every measured latency must be > 0 ms")
    torch.manual_seed(fit.seed)
    net = LPNet(x.shape[1], fit.hidden, fit.log_target)
    x, y = x.float(), y.float()
    net.set_normalization(x, y)
    with fixed_threads(fit.threads):
        _train(net, x, (net._target(y) - net.y_mean) / net.y_std, fit, progress)
    return net.eval()


def select_weight_decay(x: torch.Tensor, y: torch.Tensor, fit: FitConfig = FitConfig(),
                        grid: Sequence[float] = WEIGHT_DECAY_GRID, folds: int = 4,
                        seed: int = 0) -> tuple[FitConfig, dict[float, float]]:
    """Choose ``fit.weight_decay`` from ``grid`` by ``folds``-fold cross-validation on ``(x, y)`` alone.

    Each value is scored by the mean held-out MAPE of its fold fits (the same folds for every value);
    the lowest wins, and the first in ``grid`` order on a tie. Pass only training samples: the point is
    that the choice never sees the candidates the predictor is finally scored on.

    Args:
        x / y: encodings ``(N, F)`` and latencies ``(N,)`` in ms, as for :func:`fit_lpnet`.
        fit: every other setting of the fits.
        grid: the weight decays tried (each >= 0, no repeats).
        folds: number of folds (>= 2, and at most ``N // 2`` so every fold scores >= 2 samples).
        seed: seed of the fold assignment.

    Returns:
        ``fit`` with the chosen weight decay, and ``{weight_decay: CV MAPE in %}`` for every value.

    Raises:
        ConfigError: an empty grid, a negative or repeated value, or a fold count out of range.
    """
    values = [float(v) for v in grid]
    if not values or any(not v >= 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"grid={tuple(grid)!r} must be a non-empty list of distinct weight decays >= 0")
    n = int(x.shape[0])
    check_number("folds", folds, f"[2, {n // 2}]", integer=True,
                 what=f"an int, for {n} samples (every fold scores >= 2 of them),")
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    scores: dict[float, float] = {}
    for value in values:
        trial, errors = replace(fit, weight_decay=value), []
        for k, held in enumerate(parts):
            kept = np.concatenate([p for j, p in enumerate(parts) if j != k])
            net = fit_lpnet(x[kept], y[kept], trial)
            with torch.no_grad():
                errors.append(latency_errors(net(x[held].float()).numpy(), y[held].numpy()).mape)
        scores[value] = float(np.mean(errors))
    best = min(values, key=lambda v: scores[v])  # min keeps the first on a tie
    return replace(fit, weight_decay=best), scores


def _train(net: LPNet, x: torch.Tensor, target: torch.Tensor, fit: FitConfig, progress: bool) -> None:
    """Adam with cosine decay on MSE between the net's output and the standardized ``target (N,)``."""
    gen = torch.Generator().manual_seed(fit.seed)
    opt = torch.optim.Adam(net.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    steps = fit.epochs * math.ceil(x.shape[0] / fit.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=fit.lr * 0.01)
    for _ in trange(fit.epochs, desc="LPNet epochs", disable=not progress, leave=False):
        for idx in torch.randperm(x.shape[0], generator=gen).split(fit.batch_size):
            loss = nn.functional.mse_loss(net.normalized(x[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@dataclass(frozen=True)
class LatencyErrors:
    """Prediction quality on held-out candidates.

    Attributes:
        n: number of predictions scored.
        mape: mean absolute percentage error, in percent.
        within_5 / within_10: share (0-1) of predictions within +-5 % / +-10 % of the measurement.
        spearman: Spearman rank correlation of predicted and measured latencies.
        max_ape: the largest absolute percentage error, in percent.
    """

    n: int
    mape: float
    within_5: float
    within_10: float
    spearman: float
    max_ape: float

    def asdict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"n={self.n} MAPE={self.mape:.2f}% within5%={100 * self.within_5:.1f}% "
                f"within10%={100 * self.within_10:.1f}% spearman={self.spearman:.4f} max={self.max_ape:.1f}%")


def latency_errors(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> LatencyErrors:
    """Score ``predicted`` against ``measured`` latencies (same length, ms)."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1 or len(p) < 2:
        raise ConfigError(f"need two equal-length 1-D series of >= 2 latencies, got {p.shape} and {m.shape}")
    ape = np.abs(p - m) / m  # (N,)
    rho = float(spearmanr(p, m).statistic) if np.ptp(p) > 0 and np.ptp(m) > 0 else float("nan")
    return LatencyErrors(len(p), float(100 * ape.mean()), float((ape <= 0.05).mean()),
                         float((ape <= 0.10).mean()), rho, float(100 * ape.max()))


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random ``(train, test)`` split of ``range(n)``: ``round(n * test_fraction)`` held out, and at
    least 2 in each part (error figures need two points)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if n < 4:
        raise ConfigError(f"a train/test split needs >= 4 items, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(2, round(n * test_fraction)), n - 2)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
