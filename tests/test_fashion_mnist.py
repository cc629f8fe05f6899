"""The IDX reader and the Fashion-MNIST loader: on small IDX files the tests write, and on the real
files where Debian's dataset-fashion-mnist package installed them (CI installs it)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from wgates_plugin.app.data import FASHION_MNIST_DIR, IDX_NAMES, load_fashion_mnist, read_idx
from wgates_plugin.errors import ConfigError


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_split(folder, split, images, labels, gz):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES[split], (images, labels)):
        data = idx_bytes(array)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)


def small_set(n_train=12, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, gz):
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.arange(-3, 3, dtype=">i4"),
                  np.linspace(-1, 1, 6, dtype=">f4").reshape(3, 2)):
        path = tmp_path / f"a{array.dtype.char}.idx"
        path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
        out = read_idx(path)
        assert tuple(out.shape) == array.shape
        assert np.array_equal(out.numpy(), array.astype(array.dtype.newbyteorder("=")))


@pytest.mark.parametrize(("data", "match"), [
    (b"\x08\x03\x00\x00", r"is not an IDX file \(magic 08030000"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", r"is not an IDX file \(magic 00000701"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", r"is truncated: its header promises 2 dimensions"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", r"holds 10 bytes, its header \(3,\) of uint8 needs 11 \(truncated\)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", r"holds 10 bytes, its header \(1,\) of uint8 needs 9 \(trailing"),
])
def test_read_idx_refuses_what_is_not_idx(tmp_path, data, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=match):
        read_idx(path)


@pytest.mark.parametrize(("layout", "gz"), [("flat", True), ("flat", False), ("torchvision", False)])
def test_fashion_mnist_splits_normalizes_and_is_seeded(tmp_path, layout, gz):
    train_x, train_y, test_x, test_y = small_set()
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    write_split(folder, "train", train_x, train_y, gz)
    write_split(folder, "test", test_x, test_y, gz)
    train, val, test = load_fashion_mnist(tmp_path, val_size=3, seed=5)
    assert (len(train), len(val), len(test)) == (9, 3, 4)
    assert tuple(train[0][0].shape) == (3, 28, 28)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    pixels = torch.from_numpy(train_x).float().div(255)
    mean, std = pixels[order[3:]].mean(), pixels[order[3:]].std()
    torch.testing.assert_close(train.tensors[0][:, 0], (pixels[order[3:]] - mean) / std)
    torch.testing.assert_close(val.tensors[0][:, 2], (pixels[order[:3]] - mean) / std)
    torch.testing.assert_close(test.tensors[0][:, 1], (torch.from_numpy(test_x).float().div(255) - mean) / std)
    assert train.tensors[1].tolist() == train_y[order[3:].numpy()].tolist()
    assert test.tensors[1].tolist() == test_y.tolist()
    again = load_fashion_mnist(tmp_path, val_size=3, seed=5)
    assert torch.equal(again[0].tensors[0], train.tensors[0])
    assert tuple(load_fashion_mnist(tmp_path, size=16, val_size=0)[2][0][0].shape) == (3, 16, 16)


def test_fashion_mnist_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no Fashion-MNIST train IDX files under .*apt-get install "
                                                r"dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    train_x, train_y, test_x, test_y = small_set()
    write_split(tmp_path, "train", train_x, train_y[:-1], gz=False)
    write_split(tmp_path, "test", test_x, test_y, gz=False)
    with pytest.raises(ConfigError, match=r"holds images \(12, 28, 28\) and .* labels \(11,\)"):
        load_fashion_mnist(tmp_path)
    write_split(tmp_path, "train", train_x, train_y, gz=False)
    with pytest.raises(ConfigError, match=r"val_size=12 must be in \[0, 11\]"):
        load_fashion_mnist(tmp_path, val_size=12)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it as root)")
def test_the_real_fashion_mnist():
    train, val, test = load_fashion_mnist(val_size=5000)
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    labels = torch.cat([train.tensors[1], val.tensors[1]])
    assert labels.bincount().tolist() == [6000] * 10  # the official, balanced training set
    assert test.tensors[1].bincount().tolist() == [1000] * 10
    assert abs(float(train.tensors[0].mean())) < 1e-5 and abs(float(train.tensors[0].std()) - 1) < 1e-5
