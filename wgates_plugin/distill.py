"""Knowledge distillation from a fixed teacher, shared by the training loops and the NNI pruner."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .utils import check_number, kept_modes

__all__ = ["Distillation", "DISTILL", "DEFAULT_DISTILL", "TEMPERATURE", "is_logits"]

# W-Gates' pruning-phase distillation when it is on (WGatesPruner(distill="auto"), the harness's wgates_kd): its
# share of the loss and its temperature, chosen on Fashion-MNIST's validation split (benchmarks/RESULTS.md,
# "Distillation in W-Gates' own steps only"); the temperature is the default of every distillation.
DISTILL, TEMPERATURE = 0.5, 4.0
# The default share of the CLI's Recipe and of WGatesPruner: off, as the later screen at fine-tuning lr 0.003
# chose (benchmarks/RESULTS.md, "The distillation screen at lr 0.003").
DEFAULT_DISTILL = 0.0


def is_logits(outputs: Any) -> bool:
    """Whether ``outputs`` look like single-label class logits, a ``(batch, classes)`` float tensor with at least
    two classes: what :class:`Distillation` matches (a one-column output, a binary or regression head, has
    nothing to soften)."""
    return (isinstance(outputs, torch.Tensor) and outputs.is_floating_point() and outputs.dim() == 2
            and outputs.shape[1] >= 2)


class Distillation:
    """Knowledge distillation from a fixed teacher (Hinton et al. 2015, "Distilling the Knowledge in a
    Neural Network"): ``(1 - weight) * CE(student, y) + weight * T^2 * KL(softmax(teacher / T) ||
    softmax(student / T))``. The teacher (e.g. the unpruned model) runs in eval mode under ``no_grad``
    on the same batch; its modes are restored.

    Args:
        teacher: the model whose outputs are matched; not trained.
        weight: share of the distillation term, in [0, 1] (0: plain cross-entropy).
        temperature: ``T`` > 0.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from wgates_plugin.distill import Distillation
        >>> net = nn.Linear(4, 3)
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> kd = Distillation(net, weight=1.0, temperature=2.0)
        >>> float(kd(net(x), y, x))   # a student equal to its teacher has nothing to learn from it
        0.0
    """

    def __init__(self, teacher: nn.Module, weight: float = DISTILL, temperature: float = TEMPERATURE) -> None:
        check_number("weight", weight, "[0, 1]", what="", type_error=ConfigError)
        check_number("temperature", temperature, "> 0", type_error=ConfigError)
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        task = F.cross_entropy(outputs, labels)
        if self.weight == 0:
            return task
        return self.mix(task, outputs, self.targets(inputs))

    def targets(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The teacher's outputs on the batch (eval mode, no gradient; its modes restored)."""
        with torch.no_grad(), kept_modes(self.teacher):
            return self.teacher.eval()(*args, **kwargs)

    def mix(self, task: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(1 - weight) * task + weight * T^2 * KL(softmax(targets / T) || softmax(outputs / T))``: the task
        loss ``task`` (cross-entropy, or the user's own) mixed with the softened match of ``outputs`` to
        ``targets`` over their class dimension (1)."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(outputs / t, dim=1), F.log_softmax(targets / t, dim=1), log_target=True,
                        reduction="batchmean") * t * t
        return (1 - self.weight) * task + self.weight * soft
