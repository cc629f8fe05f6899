"""The bundled digits dataset, ImageFolder loading and seeded loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wgates_plugin.app.data import DIGITS_SIZE, image_folder, load_digits, loaders
from wgates_plugin.errors import ConfigError, ConfigTypeError


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=16)


def test_shapes_split_and_labels(digits):
    train, test = digits
    x_tr, y_tr = train.tensors
    x_te, y_te = test.tensors
    assert x_tr.shape == (1000, 3, 16, 16) and x_te.shape == (DIGITS_SIZE - 1000, 3, 16, 16)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert set(y_tr.tolist()) == set(range(10)) and set(y_te.tolist()) == set(range(10))
    # the three channels are copies of one grey image
    torch.testing.assert_close(x_tr[:, 0], x_tr[:, 2], rtol=0, atol=0)


def test_normalized_with_train_statistics(digits):
    train, test = digits
    x = train.tensors[0]
    torch.testing.assert_close(x.mean(), torch.tensor(0.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(x[:, 0].std(), torch.tensor(1.0), rtol=0, atol=1e-4)
    # the test split uses the train statistics, so it is close to but not exactly standardized
    assert abs(float(test.tensors[0].mean())) < 0.05


def test_split_is_a_permutation_of_the_originals():
    from sklearn.datasets import load_digits as sk

    raw = sk()
    train, test = load_digits(size=8)  # 8 -> 8 bilinear interpolation is the identity
    ours = torch.cat([train.tensors[0], test.tensors[0]])[:, 0].double()  # (1797, 8, 8)
    # pixels span 0..16 overall, so the normalization (p/16 - mean) / std is undone from min and max
    lo, hi = ours.min(), ours.max()
    pixels = ((ours - lo) / (hi - lo) * 16).round()  # (1797, 8, 8)
    torch.testing.assert_close(pixels, (ours - lo) / (hi - lo) * 16, rtol=0, atol=1e-3)
    as_rows = lambda t: sorted(tuple(r) for r in t.flatten(1).long().tolist())
    assert as_rows(pixels) == as_rows(torch.from_numpy(raw.images))
    labels = torch.cat([train.tensors[1], test.tensors[1]])
    assert sorted(labels.tolist()) == sorted(raw.target.tolist())


def test_deterministic_and_seeded(digits):
    again = load_digits(size=16)
    assert torch.equal(again[0].tensors[0], digits[0].tensors[0])
    assert torch.equal(again[1].tensors[1], digits[1].tensors[1])
    other = load_digits(size=16, seed=1)
    assert not torch.equal(other[0].tensors[1], digits[0].tensors[1])


def test_train_size_and_upsampling():
    train, test = load_digits(size=8, train_size=1500)
    assert len(train) == 1500 and len(test) == DIGITS_SIZE - 1500
    assert train.tensors[0].shape[-2:] == (8, 8)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"size": 4}, ConfigError, r"size=4 must be >= 8"),
    ({"size": 32.0}, ConfigTypeError, r"size=32.0 must be an int"),
    ({"train_size": 0}, ConfigError, r"train_size=0 must be in \[1, 1796\]"),
    ({"train_size": 1797}, ConfigError, r"train_size=1797 must be in \[1, 1796\]"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_digits(**kwargs)


def test_loaders_are_seeded(digits):
    train, test = digits
    first = [y for _, y in loaders(train, test, batch_size=100, seed=3)[0]]
    second = [y for _, y in loaders(train, test, batch_size=100, seed=3)[0]]
    other = [y for _, y in loaders(train, test, batch_size=100, seed=4)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    train_loader, test_loader = loaders(train, test, batch_size=300)
    assert [len(y) for _, y in train_loader] == [300, 300, 300]  # drop_last: BN sees full batches
    assert sum(len(y) for _, y in test_loader) == len(test)


def test_loaders_reject_bad_batch_size(digits):
    with pytest.raises(ConfigError, match=r"batch_size=1001 must be in \[1, 1000\]"):
        loaders(*digits, batch_size=1001)


def _write_folder(root, classes=("cat", "dog"), per_class=3, size=10):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path)
    ds = image_folder(tmp_path, size=12, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    x, y = ds[4]
    assert x.shape == (3, 12, 12) and y == 1
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # (pixel/255 - 0.5) / 0.5


def test_image_folder_reads_grey_images_as_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((9, 9), 255, dtype=np.uint8), mode="L").save(tmp_path / "a" / "0.png")
    x, _ = image_folder(tmp_path, size=8, mean=(0, 0, 0), std=(1, 1, 1))[0]
    torch.testing.assert_close(x, torch.ones(3, 8, 8))


def test_image_folder_missing_or_empty(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"image folder '.*nope' does not exist"):
        image_folder(missing)
    with pytest.raises(FileNotFoundError, match=r"image folder '.*' holds no images.*<root>/<class name>/"):
        image_folder(tmp_path)
