"""Files are untrusted input: a changed byte, an absurd declared size, a foreign or torn file is one
documented error naming the file, before anything is allocated; writes are atomic; the CLI checks
where it will write before it trains and prints one line with exit status 2 for every user error."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest
import torch
from safetensors.torch import save_file

from wgates_plugin import WGates
from wgates_plugin.app import serialization
from wgates_plugin.app.cli import main
from wgates_plugin.app.models import Architecture
from wgates_plugin.app.serialization import RECIPE_FILE, WEIGHTS_FILE, load_pruned, save_pruned
from wgates_plugin.efficiency.latency import LatencyPredictor
from wgates_plugin.efficiency.lpnet import LPNet
from wgates_plugin.errors import ConfigError, FileFormatError, MissingFileError
from wgates_plugin.files import LIMITS, read_json, read_tensors, tensors_digest, write_text

ARCH = Architecture("resnet18", {"num_classes": 10}, input_shape=(1, 3, 32, 32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pruned ResNet-18 saved by save_pruned: (folder, model)."""
    torch.manual_seed(0)
    from wgates_plugin.app.models import build_model

    model = build_model(ARCH).eval()
    wg = WGates(model, ARCH.example_input(), target=0.5)
    wg.freeze()
    small = wg.export().eval()
    folder = tmp_path_factory.mktemp("saved")
    save_pruned(folder, small, wg.history, ARCH)
    return folder, small


def copy_of(saved, tmp_path):
    folder, _ = saved
    for name in (WEIGHTS_FILE, RECIPE_FILE):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    return tmp_path


def edit_record(folder, **changes):
    path = folder / RECIPE_FILE
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_a_saved_model_loads_back_exactly_and_records_its_checksum(saved):
    folder, small = saved
    record = json.loads((folder / RECIPE_FILE).read_text())
    assert record["weights_sha256"] == tensors_digest(small.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_pruned(folder)(x), small(x))


@pytest.mark.parametrize("offset", [-1, -1000, -50_000])
def test_one_changed_byte_in_the_weights_is_refused(saved, tmp_path, offset):
    folder = copy_of(saved, tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[offset] ^= 0x01  # inside the tensor data: the header still parses
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="does not match the checksum recorded in pruning.json"):
        load_pruned(folder)


def test_random_bytes_as_weights_are_refused_naming_the_file(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(os.urandom(4096))
    with pytest.raises(FileFormatError, match=f"{WEIGHTS_FILE}' is not a weights file: not a readable safetensors"):
        load_pruned(folder)


def test_a_header_declaring_huge_tensors_is_refused_before_reading(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4]}}).encode()
    (folder / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(FileFormatError, match=f"{WEIGHTS_FILE}'"):
        load_pruned(folder)


@pytest.mark.parametrize(("change", "match"), [
    ({"architecture": {"name": "resnet18", "kwargs": {"num_classes": 10}, "input_shape": [1, 3, 100000, 100000],
                       "source": "torchvision"}}, "input_shape \\(1, 3, 100000, 100000\\).*LIMITS.input_elements"),
    ({"architecture": {"name": "resnet18", "kwargs": {"num_classes": 10**12}, "input_shape": [1, 3, 32, 32],
                       "source": "torchvision"}}, "num_classes.*above 1048576.*LIMITS.width"),
    ({"version": 1}, "has version 1; this release reads version 2"),
    ({"weights_sha256": None}, "no valid weights_sha256"),
    ({"history": "all of it"}, "needs an 'architecture' object and a 'history' list"),
    ({"architecture": {"name": "resnet18"}}, "architecture record lacks"),
])
def test_a_record_declaring_bad_or_absurd_values_is_refused(saved, tmp_path, change, match):
    folder = copy_of(saved, tmp_path)
    edit_record(folder, **change)
    with pytest.raises(FileFormatError, match=match):
        load_pruned(folder)


def test_a_model_bigger_than_the_limit_is_refused_before_it_is_built(saved, tmp_path, monkeypatch):
    folder = copy_of(saved, tmp_path)
    monkeypatch.setattr(LIMITS, "tensor_elements", 1000)
    built = []
    original = serialization.build_model
    monkeypatch.setattr(serialization, "build_model",
                        lambda *a, **k: built.append(str(torch.empty(0).device)) or original(*a, **k))
    with pytest.raises(FileFormatError, match="would have 11\\d{6} parameters, more than 1000"):
        load_pruned(folder)
    assert built == ["meta"]  # only the meta-device count ran: nothing was allocated


@pytest.mark.parametrize(("content", "match"), [
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"format": ', "not valid JSON"),
    (b"[1, 2]", "is not a wgates-pruned record"),
])
def test_corrupt_records_are_one_error_naming_the_file(saved, tmp_path, content, match):
    folder = copy_of(saved, tmp_path)
    (folder / RECIPE_FILE).write_bytes(content)
    with pytest.raises(FileFormatError, match=f"{RECIPE_FILE}'.*{match}|{match}"):
        load_pruned(folder)


def test_a_json_file_past_the_size_limit_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 100 + "0]")
    monkeypatch.setattr(LIMITS, "json_bytes", 50)
    with pytest.raises(FileFormatError, match="is 203 bytes, more than a report can be \\(50 bytes at most"):
        read_json(path, "report")
    with pytest.raises(MissingFileError, match="no report at") as info:
        read_json(tmp_path / "none.json", "report")
    assert isinstance(info.value, FileNotFoundError)


def test_an_interrupted_save_leaves_the_previous_files_and_no_temporary_one(saved, tmp_path, monkeypatch):
    folder = copy_of(saved, tmp_path)
    before = {name: (folder / name).read_bytes() for name in (WEIGHTS_FILE, RECIPE_FILE)}

    def torn(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    import wgates_plugin.files

    monkeypatch.setattr(wgates_plugin.files, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(folder, saved[1], [], ARCH)
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    write_text(folder / "r.json", "{}")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "r.json"])


# ---------------------------------------------------------------------------- LPNet files
CONTEXT = {"model": "m", "device": "cpu", "batch": 2, "input_shape": [3, 8, 8], "timing": {}, "model_hash": "h",
           "groups": ["a", "b", "c"], "sizes": [4, 4, 4]}


def lpnet_file(tmp_path, **spec_changes):
    torch.manual_seed(0)
    net = LPNet(3, (4, 4))
    predictor = LatencyPredictor("network", ["network"], [net], CONTEXT, {"reference": {"ms": 1.0}})
    path = tmp_path / "n.lpnet"
    predictor.save(path)
    if spec_changes:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["wgates_lpnet"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta["nets"][0].update(spec_changes)
        save_file(tensors, str(path), metadata={"wgates_lpnet": json.dumps(meta)})
    return path


@pytest.mark.parametrize(("change", "match"), [
    ({"in_features": 10**9}, "declares in_features=1000000000"),
    ({"hidden": [4, 10**9]}, "declares hidden=\\[4, 1000000000\\]"),
    ({"x_mean": [0.0, float("nan"), 0.0]}, "x_mean that is not 3 finite numbers"),
    ({"y_std": float("inf")}, "y_std=inf"),
    ({"x_std": [1.0, 0.0, 1.0]}, "standard deviation <= 0"),
    ({"in_features": 4}, "x_mean that is not 4 finite numbers"),
])
def test_lpnet_metadata_past_the_limits_or_not_finite_is_refused(tmp_path, change, match):
    with pytest.raises(FileFormatError, match=match):
        LatencyPredictor.load(lpnet_file(tmp_path, **change))


def test_lpnet_with_nan_weights_or_weights_not_fitting_its_metadata_is_refused(tmp_path):
    path = lpnet_file(tmp_path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(tensors)[0]
    save_file({**tensors, key: tensors[key] * float("nan")}, str(path), metadata=meta)
    with pytest.raises(FileFormatError, match=f"NaN or inf values in \\['{key}'\\]"):
        LatencyPredictor.load(path)
    save_file({k: v for k, v in tensors.items() if k != key}, str(path), metadata=meta)
    with pytest.raises(FileFormatError, match=f"weights that do not fit its metadata: \\['{key}'\\]"):
        LatencyPredictor.load(path)
    path.write_bytes(os.urandom(256))
    with pytest.raises(FileFormatError, match="is not a W-Gates LPNet: not a readable safetensors"):
        LatencyPredictor.load(path)


def test_a_loaded_lpnet_predicts_what_the_saved_one_did(tmp_path):
    path = lpnet_file(tmp_path)
    loaded = LatencyPredictor.load(path)
    torch.manual_seed(0)
    net = LPNet(3, (4, 4))
    x = torch.rand(5, 3)
    torch.testing.assert_close(loaded.nets[0](x), net(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------- the CLI
def one_line_error(capsys, command: str, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"wgates {command}: error: "), err
    assert re.search(match, err), err


def test_prune_refuses_an_out_that_holds_a_result_before_any_training(saved, tmp_path, capsys):
    folder = copy_of(saved, tmp_path)
    assert main(["prune", "--model", "resnet18", "--data", str(tmp_path / "no-such-images"), "--out",
                 str(folder)]) == 2
    one_line_error(capsys, "prune", "already holds a result \\(model.safetensors, pruning.json\\); pass --force")


def test_prune_refuses_an_out_it_cannot_create_before_any_training(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["prune", "--model", "resnet18", "--data", str(tmp_path / "no-such-images"), "--out",
                 str(tmp_path / "a-file" / "out")]) == 2
    one_line_error(capsys, "prune", "cannot be created: '.*a-file' is a file")
    assert main(["prune", "--model", "resnet18", "--data", str(tmp_path / "no-such-images"), "--out",
                 str(tmp_path / "a-file")]) == 2
    one_line_error(capsys, "prune", "--out '.*a-file' is a file, not a folder")


def test_prune_with_force_gets_past_the_out_check_to_the_next_error(saved, tmp_path, capsys):
    folder = copy_of(saved, tmp_path)
    assert main(["prune", "--model", "resnet18", "--data", str(tmp_path / "no-such-images"), "--out",
                 str(folder), "--force"]) == 2
    one_line_error(capsys, "prune", "no-such-images")  # the data, read after the out check


def test_lpnet_sub_commands_print_one_line_for_user_errors(tmp_path, capsys):
    path = lpnet_file(tmp_path)
    samples = tmp_path / "s.jsonl"
    samples.write_text("not json\n")
    assert main(["lpnet", "train", "--samples", str(samples), "--out", str(path)]) == 2
    one_line_error(capsys, "lpnet train", "--out '.*n.lpnet' exists; pass --force")
    assert main(["lpnet", "train", "--samples", str(samples), "--out", str(tmp_path / "new.lpnet")]) == 2
    one_line_error(capsys, "lpnet train", "s.jsonl' line 1 is not valid JSON; the file is corrupt")
    bad = tmp_path / "bad.lpnet"
    bad.write_bytes(os.urandom(64))
    assert main(["lpnet", "eval", "--lpnet", str(bad), "--samples", str(samples)]) == 2
    one_line_error(capsys, "lpnet eval", "bad.lpnet' is not a W-Gates LPNet")
    assert main(["lpnet", "eval", "--lpnet", str(tmp_path / "none.lpnet"), "--samples", str(samples)]) == 2
    one_line_error(capsys, "lpnet eval", "no W-Gates LPNet at '.*none.lpnet'")
    assert main(["lpnet", "collect", "--model", "resnet18", "--samples", "2", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "lpnet collect", "is a folder; name the samples file")


def test_weights_that_are_not_a_state_dict_are_one_line(tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(os.urandom(100))
    assert main(["prune", "--model", "resnet18", "--weights", str(tmp_path / "w.pt"), "--out",
                 str(tmp_path / "out")]) == 2
    one_line_error(capsys, "prune", "w.pt' is not a state dict torch.load\\(weights_only=True\\) can read")
    (tmp_path / "w.safetensors").write_bytes(os.urandom(100))
    assert main(["prune", "--model", "resnet18", "--weights", str(tmp_path / "w.safetensors"), "--out",
                 str(tmp_path / "out")]) == 2
    one_line_error(capsys, "prune", "w.safetensors' is not a --weights state dict: not a readable safetensors")


def test_a_config_error_is_still_a_value_error_for_callers_that_catch_builtins():
    assert issubclass(FileFormatError, ConfigError) and issubclass(FileFormatError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)


def test_an_lpnet_with_nan_weights_or_a_non_finite_reference_cannot_be_bound():
    from tests.test_unchanged_on_error import X, net
    from wgates_plugin.efficiency.latency import LatencyModel
    from wgates_plugin.errors import MeasurementError
    from wgates_plugin.groups import gated_groups

    _, groups = gated_groups(net(), X, None, (), (), (), False)
    torch.manual_seed(0)
    predictor = LatencyPredictor("network", ["network"], [LPNet(len(groups), (4, 4))],
                                 {"sizes": [g.size for g in groups]}, {})
    model = LatencyModel(predictor, groups, 10.0)
    assert torch.isfinite(model.cost(model.full_counts()))
    with pytest.raises(MeasurementError, match="reference_ms=nan"):
        LatencyModel(predictor, groups, float("nan"))
    with torch.no_grad():
        predictor.nets[0].layers[0].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="the LPNet holds NaN or inf weights \\(\\['nets.0.layers.0.weight'\\]\\)"):
        LatencyModel(predictor, groups, 10.0)


# ---------------------------------------------------------------------------- resuming wgates prune
RUN = ["prune", "--model", "resnet18", "--data", "digits", "--size", "16", "--flops-target", "0.5",
       "--train-steps", "3", "--steps", "3", "--finetune-steps", "2", "--bn-batches", "2", "--batch-size", "32",
       "--latency-batch", "2", "--no-progress"]


def _weights(folder):
    return read_tensors(folder / WEIGHTS_FILE, "weights")[0]


@pytest.mark.parametrize("interrupt_in", ["prune_phase", "finetune_phase"])
def test_an_interrupted_prune_resumes_to_the_result_of_an_uninterrupted_run(tmp_path, monkeypatch, capsys,
                                                                               interrupt_in):
    from wgates_plugin.app.commands import prune

    assert main([*RUN, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert not (tmp_path / "whole" / ".checkpoint").exists()

    original = getattr(prune, interrupt_in)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune, interrupt_in, interrupted)
    out = tmp_path / "cut"
    assert main([*RUN, "--out", str(out)]) == 130
    assert "wgates prune: interrupted" in capsys.readouterr().err
    assert not (out / "report.json").exists() and (out / ".checkpoint" / "state.json").exists()
    monkeypatch.setattr(prune, interrupt_in, original)

    assert main([*RUN, "--out", str(out)]) == 2  # neither --resume nor --force: refused before any work
    one_line_error(capsys, "prune", "holds an interrupted run \\(.checkpoint\\); pass --resume to continue it")
    assert main([*RUN, "--out", str(out), "--resume", "--seed", "1"]) == 2
    one_line_error(capsys, "prune", "the interrupted run used other arguments \\(seed: \\[0\\] then, \\[1\\] now\\)")
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["resumed_from"] == ("baseline" if interrupt_in == "prune_phase" else "pruned")
    assert resumed["top1"] == whole["top1"] and resumed["kept"] == whole["kept"]
    assert resumed["flops_ratio"] == whole["flops_ratio"]
    a, b = _weights(out), _weights(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / ".checkpoint").exists()


def test_resume_without_a_checkpoint_and_force_with_resume_are_refused(tmp_path, capsys):
    assert main([*RUN, "--out", str(tmp_path / "none"), "--resume"]) == 2
    one_line_error(capsys, "prune", "holds no interrupted run to resume")
    assert main([*RUN, "--out", str(tmp_path / "none"), "--resume", "--force"]) == 2
    one_line_error(capsys, "prune", "--force starts over and --resume continues: pass one of them")


def test_written_files_get_the_umask_mode_or_keep_the_mode_they_had(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "old.json").write_text("{}")
        os.chmod(tmp_path / "old.json", 0o640)
        write_text(tmp_path / "old.json", "[]")
        assert (tmp_path / "old.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)


def test_json_with_an_integer_past_pythons_digit_limit_is_a_format_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"x": ' + "9" * 5000 + "}")
    with pytest.raises(FileFormatError, match="is not a record: not valid JSON"):
        read_json(path, "record")


def test_an_lpnet_without_the_context_it_needs_is_refused_at_load(tmp_path):
    path = lpnet_file(tmp_path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["wgates_lpnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for broken, match in (({**meta, "context": {}}, "the LPNet context needs 'model' \\(str\\)"),
                          ({**meta, "info": {"reference": {"ms": -1}}}, "reference latency is -1 ms"),
                          ({**meta, "context": {**CONTEXT, "sizes": None}}, "needs 'sizes' \\(list\\)")):
        save_file(tensors, str(path), metadata={"wgates_lpnet": json.dumps(broken)})
        with pytest.raises(FileFormatError, match=match):
            LatencyPredictor.load(path)


def test_a_samples_record_without_a_latency_is_refused_at_load(tmp_path):
    from wgates_plugin.profiling.samples import FORMAT, load_samples

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"context": {"format": FORMAT}}) + "\n" + json.dumps({"index": 0}) + "\n"
                    + json.dumps({"index": 1, "ms": 1.0, "counts": [1]}) + "\n")
    with pytest.raises(FileFormatError, match="the record on line 2 needs 'ms'"):
        load_samples(path)


def test_a_torchvision_model_whose_constructor_cannot_run_on_meta_is_counted_on_the_cpu():
    from wgates_plugin.app.serialization import rebuild

    model = rebuild(Architecture("regnet_y_400mf", {"num_classes": 10}, input_shape=(1, 3, 32, 32)), [])
    assert model.fc.out_features == 10


def test_resume_is_allowed_over_outputs_written_just_before_the_interrupt(tmp_path):
    from wgates_plugin.app.commands.prune import CHECKPOINT, check_out_folder

    (tmp_path / RECIPE_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a result"):
        check_out_folder(tmp_path, force=False, resume=True)  # a finished run: nothing to resume
    (tmp_path / CHECKPOINT).mkdir()
    check_out_folder(tmp_path, force=False, resume=True)  # interrupted between saving and clearing
