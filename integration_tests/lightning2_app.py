"""A small Lightning 2 application for the WGatesCallback tests: a CNN, seeded data, a LightningModule.

Also a DDP worker: ``python integration_tests/lightning2_app.py OUT_DIR`` fits with ``strategy="ddp"``
on 2 CPU processes (gloo) and writes every rank's gates to ``OUT_DIR/rank<r>.safetensors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wgates_plugin.integrations.lightning import WGatesCallback


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = cnn()
        self.example_input_array = torch.zeros(2, 3, 16, 16)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data(batches: int = 5, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batches * batch_size, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(**kwargs) -> pl.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True}
    return pl.Trainer(**{**options, **kwargs})


def ddp_worker(out: Path) -> None:
    gates = WGatesCallback(target=0.5, freeze_step=4, replace=False)
    module = Classifier()
    t = trainer(max_steps=6, strategy="ddp", devices=2, use_distributed_sampler=True, callbacks=[gates])
    t.fit(module, data(batches=12))
    rank = t.global_rank
    state = {k: v.clone() for k, v in gates.wgates.state_dict().items() if torch.is_tensor(v)}
    state["multiplier"] = torch.tensor(gates.wgates.multiplier.value)
    state["kept"] = torch.tensor([k for k, _ in gates.wgates.kept().values()])
    save_file(state, str(out / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    ddp_worker(Path(sys.argv[1]))
