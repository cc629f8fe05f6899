"""Real data for pruning runs: the bundled handwritten digits, Fashion-MNIST, or your own images.

scikit-learn ships 1 797 real 8x8 handwritten digits (10 classes) with the package, so every command
and test here runs offline on data nobody made up. :func:`load_digits` turns them into an image
classification task a torchvision CNN accepts (3 x ``size`` x ``size``). :func:`load_fashion_mnist`
reads Fashion-MNIST's IDX files (60 000 + 10 000 real 28x28 images; Debian's ``dataset-fashion-mnist``
package installs them, :func:`read_idx` reads any IDX file); :func:`image_folder` reads a directory
laid out as ``root/<class>/<image>`` for users with their own data.

Example:
    >>> from wgates_plugin.app.data import load_digits, loaders
    >>> train, test = load_digits(size=32)
    >>> len(train), len(test), tuple(train[0][0].shape)
    (1000, 797, (3, 32, 32))
    >>> train_loader, test_loader = loaders(train, test, batch_size=64)
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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

__all__ = ["DIGITS_SIZE", "FASHION_MNIST_DIR", "IMAGENET_MEAN", "IMAGENET_STD", "read_idx", "load_digits",
           "load_fashion_mnist", "image_folder", "folder_splits", "loaders"]

DIGITS_SIZE = 1797  # images in scikit-learn's bundled digits
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs it
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# IDX type codes (the third byte of the magic number) and their big-endian numpy types.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
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


def read_idx(path: str | Path) -> torch.Tensor:
    """The array in an IDX file (``.gz`` or not): magic ``00 00 <type> <ndim>``, ``ndim`` big-endian
    uint32 sizes, then the data.

    Raises:
        ConfigError: the file is not IDX (bad magic, unknown type code) or is truncated or too long.
    """
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise ConfigError(f"'{path}' is not an IDX file (magic {raw[:4].hex() or 'empty'}; expected 0000 followed "
                          f"by a type code in {sorted(f'{c:02x}' for c in IDX_TYPES)} and a dimension count >= 1)")
    ndim, dtype = raw[3], np.dtype(IDX_TYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"'{path}' is truncated: its header promises {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"'{path}' holds {len(raw)} bytes, its header {tuple(shape)} of {dtype.name} needs {expected}"
                          f" ({'truncated' if len(raw) < expected else 'trailing bytes'})")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="))).clone()


def _idx_files(root: Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of ``split`` under ``root`` or torchvision's ``root/FashionMNIST/raw``."""
    tried = []
    for folder in (root, root / "FashionMNIST" / "raw"):
        for suffix in (".gz", ""):
            paths = tuple(folder / (name + suffix) for name in IDX_NAMES[split])
            tried.append(str(paths[0]))
            if all(p.is_file() for p in paths):
                return paths  # type: ignore[return-value]
    raise FileNotFoundError(f"no Fashion-MNIST {split} IDX files under '{root}' (looked for {', '.join(tried)}). "
                            "HINT: apt-get install dataset-fashion-mnist, or pass root=<folder with the IDX files>")


def load_fashion_mnist(root: str | Path | None = None, size: int = 28, val_size: int = 5000,
                       seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Fashion-MNIST as ``(train, val, test)`` datasets of ``(image (3, size, size), label)`` pairs.

    ``val`` is carved from the 60 000 training images (a permutation drawn from ``seed``; the test set
    is the official 10 000). Pixels are scaled to [0, 1], resized bilinearly when ``size != 28``, and
    normalized with the mean and std of the ``train`` part; the 3 channels are views of one.

    Args:
        root: a folder with the four IDX files (``.gz`` or not), or torchvision's layout below it
            (``root/FashionMNIST/raw``); default :data:`FASHION_MNIST_DIR`.
        size: output height and width, an int >= 8.
        val_size: training images held out for validation, in [0, 59 999].
        seed: seed of the validation split.

    Raises:
        FileNotFoundError: the IDX files are not there (the message names where it looked).
        ConfigError: a file is not IDX, or images and labels disagree.
    """
    check_number("size", size, ">= 8", integer=True, what="")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    splits = {}
    for split in IDX_NAMES:
        images_path, labels_path = _idx_files(folder, split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise ConfigError(f"'{images_path}' holds images {tuple(images.shape)} and '{labels_path}' labels "
                              f"{tuple(labels.shape)}: expected (N, H, W) and (N,)")
        splits[split] = (images.unsqueeze(1).float().div(255.0), labels.long())  # (N, 1, H, W), (N,)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    check_number("val_size", val_size, f"[0, {len(train_x) - 1}]", integer=True, what="")
    if size != train_x.shape[-1]:
        train_x, test_x = (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
                           for t in (train_x, test_x))
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    mean, std = train_x[train_idx].mean(), train_x[train_idx].std()

    def dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
        return TensorDataset(((x - mean) / std).expand(-1, 3, -1, -1), y)

    return dataset(train_x[train_idx], train_y[train_idx]), dataset(train_x[val_idx], train_y[val_idx]), \
        dataset(test_x, test_y)


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
