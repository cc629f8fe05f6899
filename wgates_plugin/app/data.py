"""Real data for pruning runs: the bundled handwritten digits, or an ImageFolder of your own images.

scikit-learn ships 1 797 real 8x8 handwritten digits (10 classes) with the package, so every command
and test here runs offline on data nobody made up. :func:`load_digits` turns them into an image
classification task a torchvision CNN accepts (3 x ``size`` x ``size``); :func:`image_folder` reads
a directory laid out as ``root/<class>/<image>`` for users with their own data.

Example:
    >>> from wgates_plugin.app.data import load_digits, loaders
    >>> train, test = load_digits(size=32)
    >>> len(train), len(test), tuple(train[0][0].shape)
    (1000, 797, (3, 32, 32))
    >>> train_loader, test_loader = loaders(train, test, batch_size=64)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits as sklearn_digits
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from ..errors import ConfigError
from ..utils import check_number

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = ["DIGITS_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "load_digits", "image_folder", "folder_splits", "loaders"]

DIGITS_SIZE = 1797  # images in scikit-learn's bundled digits
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_digits(size: int = 32, train_size: int = 1000, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The bundled digits as ``(train, test)`` datasets of ``(image (3, size, size), label)`` pairs.

    Pixels (0..16) are scaled to [0, 1], bilinearly upsampled from 8x8 to ``size`` x ``size`` and
    replicated to 3 channels; both splits are normalized with the *train* split's mean and std (one
    value for all channels, since they are copies). The split is a fixed permutation drawn from
    ``seed``: the same arguments always give the same tensors.

    Args:
        size: output height and width, an int >= 8.
        train_size: images in the train split, in [1, 1796]; the rest form the test split.
        seed: seed of the split permutation.

    Returns:
        ``(train, test)``: images float32 ``(N, 3, size, size)``, labels int64 ``(N,)``.

    Raises:
        ConfigError: ``size`` or ``train_size`` is out of range.
    """
    check_number("size", size, ">= 8", integer=True, what="")
    check_number("train_size", train_size, f"[1, {DIGITS_SIZE - 1}]", integer=True, what="")
    raw = sklearn_digits()
    images = torch.from_numpy(raw.images).float().div(16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(raw.target).long()  # (1797,)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    order = torch.randperm(DIGITS_SIZE, generator=torch.Generator().manual_seed(seed))
    train_idx, test_idx = order[:train_size], order[train_size:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = ((images - mean) / std).expand(-1, 3, -1, -1).contiguous()  # (1797, 3, size, size)
    return TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[test_idx], labels[test_idx])


def image_folder(
    root: str | Path,
    size: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageFolder:
    """A torchvision ``ImageFolder`` over ``root/<class>/<image>``, resized to ``size`` x ``size``.

    Args:
        root: directory with one sub-directory of images per class.
        size: output height and width, an int >= 8 (images are resized, not cropped).
        mean, std: per-channel normalization (default: ImageNet's, what torchvision's weights expect).

    Raises:
        FileNotFoundError: ``root`` does not exist, is not a directory, or holds no class directory
            with a readable image.
        ConfigError: ``size`` is out of range.
    """
    check_number("size", size, ">= 8", integer=True, what="")
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder '{path}' does not exist or is not a directory")
    tf = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(list(mean), list(std)),
    ])
    try:
        return datasets.ImageFolder(str(path), transform=tf, loader=_rgb_loader)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(
            f"image folder '{path}' holds no images in class sub-directories ({exc}). "
            "HINT: lay it out as <root>/<class name>/<image>.png"
        ) from None


def folder_splits(
    root: str | Path,
    size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Dataset, Dataset, list[str]]:
    """``(train, test, classes)`` from an image directory.

    If ``root`` holds ``train/`` and ``val/`` (or ``test/``) sub-directories, they are the splits;
    otherwise ``root`` itself is an ImageFolder, split at random (seeded) with ``val_fraction`` of the
    images held out.

    Raises:
        FileNotFoundError: no images (see :func:`image_folder`).
        ConfigError: ``val_fraction`` not in (0, 1), the two splits' classes differ, or a split would
            be empty.
    """
    path = Path(root)
    held_out = next((path / n for n in ("val", "test") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and held_out is not None:
        train, test = image_folder(path / "train", size, mean, std), image_folder(held_out, size, mean, std)
        if train.classes != test.classes:
            raise ConfigError(f"'{path / 'train'}' and '{held_out}' have different class directories: "
                              f"{train.classes} vs {test.classes}")
        return train, test, list(train.classes)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    full = image_folder(path, size, mean, std)
    n_test = round(len(full) * val_fraction)
    if not 0 < n_test < len(full):
        raise ConfigError(f"'{path}' has {len(full)} images, too few to hold out val_fraction={val_fraction}")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(full, order[n_test:]), Subset(full, order[:n_test]), list(full.classes)


def _rgb_loader(path: str) -> object:
    with Image.open(path) as img:
        return img.convert("RGB")


def loaders(
    train: Dataset,
    test: Dataset,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    test_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)``: the train loader shuffles with a generator seeded by ``seed``.

    Args:
        train, test: the datasets.
        batch_size: train batch size (the last, smaller batch is dropped so BN sees full batches).
        seed: seed of the shuffling generator, so the batch order is reproducible.
        num_workers: DataLoader worker processes.
        test_batch_size: evaluation batch size (default: ``4 * batch_size``).

    Raises:
        ConfigError: ``batch_size`` is not a positive int or exceeds the train split.
    """
    check_number("batch_size", batch_size, f"[1, {len(train)}]", integer=True, what="")  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True,
                              generator=generator, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=test_batch_size or 4 * batch_size, shuffle=False,
                             num_workers=num_workers)
    return train_loader, test_loader
