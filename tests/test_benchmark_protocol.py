"""The benchmark protocol's data: Fashion-MNIST splits (validation disjoint from training), the same
seeded augmentation for every method, and the digits for smoke runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.protocol import Augmented, Protocol, finetune_curve, make_data
from tests.test_fashion_mnist import small_set, write_split
from wgates_plugin.app.training import evaluate
from wgates_plugin.errors import ConfigError


@pytest.fixture()
def fashion_root(tmp_path):
    train_x, train_y, test_x, test_y = small_set(n_train=40, n_test=8)
    write_split(tmp_path, "train", train_x, train_y, gz=True)
    write_split(tmp_path, "test", test_x, test_y, gz=True)
    return tmp_path


def test_fashion_splits_are_disjoint_and_sized(fashion_root):
    data = make_data(Protocol(data_root=str(fashion_root), size=28, train_size=20, val_size=10, augment=False))
    train, val, test = data.train_set.tensors[0], data.val_set.tensors[0], data.test_set.tensors[0]
    assert (len(train), len(val), len(test)) == (20, 10, 8)
    rows = {tuple(x[0].flatten().tolist()) for x in train}
    assert not rows & {tuple(x[0].flatten().tolist()) for x in val}  # no validation image is trained on
    with pytest.raises(ConfigError, match=r"train_size=31 exceeds the 30 training images left"):
        make_data(Protocol(data_root=str(fashion_root), size=28, train_size=31, val_size=10))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_augmentation_is_a_seeded_shift_and_flip(seed):
    images = torch.randn(6, 3, 8, 8)
    base = torch.utils.data.TensorDataset(images, torch.arange(6))
    a, b = Augmented(base, 2, seed), Augmented(base, 2, seed)
    for i in range(6):
        x, y = a[i]
        assert torch.equal(x, b[i][0]) and y == i  # the same seed draws the same augmentation
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        candidates = [padded[:, dy: dy + 8, dx: dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(x, c) or torch.equal(x, c.flip(-1)) for c in candidates)


def test_the_loader_augments_only_when_asked(fashion_root):
    plain = make_data(Protocol(data_root=str(fashion_root), size=28, train_size=20, val_size=10, augment=False,
                               batch=20))
    aug = make_data(Protocol(data_root=str(fashion_root), size=28, train_size=20, val_size=10, batch=20))
    x_plain, _ = next(iter(plain.train(3)))
    x_aug, _ = next(iter(aug.train(3)))
    assert not torch.equal(x_plain, x_aug)
    assert torch.equal(next(iter(aug.train(3)))[0], x_aug)  # seeded: the same batches again
    assert np.isclose(float(next(iter(aug.val()))[0].mean()), float(next(iter(plain.val()))[0].mean()))


def test_digits_stay_for_smoke_runs():
    data = make_data(Protocol(dataset="digits", train_size=256, augment=False, test_limit=64))
    assert (len(data.train_set), len(data.test_set)) == (256, 64)
    with pytest.raises(ConfigError, match=r"dataset='cifar' is not one of 'fashion-mnist', 'digits'"):
        Protocol(dataset="cifar")


def _small_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


@pytest.mark.parametrize("seed", [0, 3])
def test_recording_validation_figures_leaves_training_and_test_figures_unchanged(fashion_root, seed):
    p = Protocol(data_root=str(fashion_root), size=28, train_size=20, val_size=10, batch=4, bn_batches=2,
                 budget_epochs=(0.4, 1.0, 2.0))
    data = make_data(p)
    plain, recorded = _small_cnn(seed), _small_cnn(seed)
    val: dict = {}
    curve = finetune_curve(plain, data, seed, p, steps_used=3)
    assert finetune_curve(recorded, data, seed, p, steps_used=3, val=val) == curve  # the same test figures
    for a, b in zip(plain.state_dict().values(), recorded.state_dict().values()):
        assert torch.equal(a, b)  # and the same weights and BN statistics
    assert set(val) == set(curve) and val["0.4"] is None and curve["0.4"] is None  # pruning alone exceeded 0.4
    assert val["2"] == evaluate(recorded, data.val())  # the last checkpoint, read on the validation split


@pytest.mark.parametrize("seed", [0, 5])
def test_the_fine_tuning_lr_knob_drives_fine_tuning_alone_and_enters_the_key_only_when_set(fashion_root, seed):
    base = Protocol(data_root=str(fashion_root), size=28, train_size=20, val_size=10, batch=4, bn_batches=2,
                    budget_epochs=(1.0, 2.0))
    tuned = dataclasses.replace(base, tune_lr=0.003)
    assert "tune_lr" not in base.asdict()  # runs recorded before the knob keep their protocol key
    same = dataclasses.replace(base, tune_lr=base.finetune_lr)  # fine-tunes exactly as without it
    assert same.asdict() == base.asdict()
    assert tuned.asdict()["tune_lr"] == 0.003 and tuned.finetune_lr == base.finetune_lr
    data = make_data(base)
    by_protocol, by_argument, by_default = _small_cnn(seed), _small_cnn(seed), _small_cnn(seed)
    curve = finetune_curve(by_protocol, data, seed, tuned, steps_used=1)
    assert finetune_curve(by_argument, data, seed, base, steps_used=1, lr=0.003) == curve
    finetune_curve(by_default, data, seed, base, steps_used=1)
    first = [k for k, v in by_protocol.state_dict().items() if v.is_floating_point()][0]
    for a, b in zip(by_protocol.state_dict().values(), by_argument.state_dict().values()):
        assert torch.equal(a, b)  # the knob is exactly an lr of 0.003 for fine-tuning
    assert not torch.equal(by_protocol.state_dict()[first], by_default.state_dict()[first])  # not finetune_lr's


@pytest.mark.parametrize("bad", [0.0, -0.01, float("nan")])
def test_a_fine_tuning_lr_that_is_not_positive_is_refused(bad):
    with pytest.raises(ConfigError, match=r"tune_lr=.* must be a positive learning rate, or None for finetune_lr"):
        Protocol(tune_lr=bad)


def test_the_comparison_cli_sets_the_fine_tuning_lr_for_every_method():
    from benchmarks import compare

    assert compare.parse(["--preset", "fashion"]).protocol.tune_lr is None
    setup = compare.parse(["--preset", "fashion", "--tune-lr", "0.003"])
    assert setup.protocol.tune_lr == 0.003 and setup.protocol.finetune_lr == Protocol.finetune_lr
    assert setup.protocol_key() != compare.parse(["--preset", "fashion"]).protocol_key()


def test_the_default_wgates_trains_its_weights_at_the_library_lr_and_the_old_one_at_the_protocols():
    """``wgates_wlr`` (the library's defaults) trains the weights at ``Recipe.weight_lr`` (0.003, chosen on
    validation) while the gates train; ``wgates``, the recorded default before that screen, keeps the
    protocol's pruning-time lr, as every rival does, so the runs recorded under its name keep their meaning."""
    from benchmarks import compare
    from wgates_plugin.app.cli import build_parser
    from wgates_plugin.app.commands.prune import build_recipe
    from wgates_plugin.app.training import Recipe

    setup = compare.parse(["--preset", "fashion", "--tune-lr", "0.003"])
    new = compare.method_fn("wgates_wlr", None, setup, None, 0, {})
    old = compare.method_fn("wgates", None, setup, None, 0, {})
    assert new.keywords["weight_lr"] == Recipe.weight_lr == 0.003
    assert old.keywords["weight_lr"] == setup.protocol.finetune_lr == 0.01
    same = [k for k in new.keywords if k not in ("weight_lr", "trace_eval")]  # trace_eval: a fresh closure each
    assert new.keywords.keys() == old.keywords.keys() and all(new.keywords[k] == old.keywords[k] for k in same)
    parser = build_parser()
    base = ["prune", "--model", "resnet18", "--out", "x"]
    assert build_recipe(parser.parse_args(base)).weight_lr == 0.003
    assert build_recipe(parser.parse_args([*base, "--weight-lr", "0.01"])).weight_lr == 0.01
