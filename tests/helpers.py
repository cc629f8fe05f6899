"""Model set-up shared by the tests: BatchNorms whose statistics make pruning mistakes visible."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics and shifts, so that a wrongly kept channel changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def calibrated_model(name: str, side: int, **kwargs) -> nn.Module:
    """A torchvision model with random BN affine terms and statistics calibrated on random batches."""
    torch.manual_seed(0)
    return calibrate(getattr(torchvision.models, name)(num_classes=10, **kwargs), side)


def calibrate(model: nn.Module, side: int) -> nn.Module:
    """Random BN affine terms and statistics calibrated on random batches (``side`` x ``side`` inputs).

    Randomized statistics alone make many deep models output the same thing for every input, which
    would let a wrong export pass an equality check; calibrated statistics keep outputs input-dependent,
    and the non-zero shifts mean zeroing a channel before a BN instead of after it changes the outputs.
    The calibration batches come from the global RNG: seed it before building the model.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        nn.init.uniform_(m.weight, 0.5, 1.5)
        nn.init.uniform_(m.bias, -0.5, 0.5)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, side, side))
    for m in bns:
        m.momentum = 0.1
    return model


def lightning_setup(net: nn.Module, batches: list, dummy_input: torch.Tensor, training_step, max_epochs: int):
    """``(LightningModule wrapping net, NNI LightningEvaluator)`` for the pruners' Lightning tests.

    The caller checks ``pytorch_lightning < 2`` first (NNI 3.0's LightningEvaluator needs it).
    """
    import nni
    import pytorch_lightning as pl
    from nni.compression import LightningEvaluator
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _idx):
            return training_step(batch, self)

        def configure_optimizers(self):
            return nni.trace(torch.optim.SGD)(self.parameters(), lr=0.01)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])),
                              batch_size=8)

    trainer = nni.trace(pl.Trainer)(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    return Module(), LightningEvaluator(trainer, nni.trace(Data)(), dummy_input=dummy_input)
