"""benchmarks.segmentation: the scenes it builds and the metrics it reports, exactly."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.segmentation import CLASSES, Setup, evaluate, scenes


def test_scenes_place_garments_and_label_their_pixels():
    images = torch.zeros(3, 1, 28, 28)
    images[0, 0, 5:10, 5:10] = 1.0  # a 5x5 garment of class 4
    images[1, 0, 0:28, 0:2] = 0.9  # a 28x2 one of class 7
    images[2, 0] = 0.1  # below the threshold everywhere: leaves no pixel
    labels = torch.tensor([4, 7, 2])
    setup = Setup(size=40, items=3, threshold=0.3)
    x, y = scenes(images, labels, 16, setup, seed=0)
    assert x.shape == (16, 3, 40, 40) and y.shape == (16, 40, 40) and bool((x[:, 0] == x[:, 2]).all())
    assert set(y.unique().tolist()) <= {0, 5, 8}  # background, class 4 + 1, class 7 + 1; never class 2 + 1
    assert bool(((y > 0) == (x[:, 0] > 0.3)).all())  # a pixel is labelled exactly where a garment shows
    again = scenes(images, labels, 16, setup, seed=0)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)  # deterministic in the seed


class Oracle(nn.Module):
    """Predicts the stored masks (the batch index picks them), for exact metric checks."""

    def __init__(self, masks: torch.Tensor, flip: int = 0) -> None:
        super().__init__()
        self.masks, self.flip, self.seen = masks, flip, 0

    def forward(self, x):
        y = self.masks[self.seen:self.seen + len(x)].clone()
        self.seen += len(x)
        y[:, : self.flip] = 0  # the first `flip` rows predicted as background
        return {"out": nn.functional.one_hot(y, CLASSES).permute(0, 3, 1, 2).float()}


def test_mean_iou_and_pixel_accuracy():
    y = torch.zeros(4, 8, 8, dtype=torch.long)
    y[:, 4:, :] = 3  # half the pixels class 3
    x = torch.zeros(4, 3, 8, 8)
    perfect = evaluate(Oracle(y), (x, y), batch=2)
    assert perfect == {"miou": 1.0, "pixel_acc": 1.0}
    y2 = y.clone()
    y2[:, :, :] = 3  # every pixel class 3; the oracle predicts the top half as background
    half = evaluate(Oracle(y2, flip=4), (x, y2), batch=2)
    assert half["pixel_acc"] == 0.5 and abs(half["miou"] - 0.25) < 1e-6  # IoU 0 (background) and 0.5 (class 3)
