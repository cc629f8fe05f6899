"""``wgates prune`` on the user's model and data: a timm model with a state dict on an ImageFolder, the
user's own builder (``module:function``), and the summary and picture written beside the result."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from tests.test_cli import TINY, _check_report, _check_saved, _image_folder
from wgates_plugin.app.cli import main
from wgates_plugin.app.data import folder_splits, loaders
from wgates_plugin.app.models import CUSTOM, TIMM, parse_model_spec
from wgates_plugin.app.serialization import load_pruned, read_recipe
from wgates_plugin.app.summary import summary_markdown
from wgates_plugin.app.training import evaluate
from wgates_plugin.errors import ConfigError

timm = pytest.importorskip("timm", reason="the timm extra is not installed: pip install 'wgates-plugin[timm]'")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "wgates_plugin.app.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)


def _check_summary(out, report: dict) -> None:
    text = (out / "summary.md").read_text()
    assert text == summary_markdown(report, "kept_channels.png", None)  # the file is the report, rendered
    b, a = report["before"], report["after"]
    assert f"| parameters (M) | {b['params'] / 1e6:.3f} | {a['params'] / 1e6:.3f} |" in text
    assert f"| MACs (M) | {b['macs'] / 1e6:.2f} | {a['macs'] / 1e6:.2f} |" in text
    assert f"| top-1 (%) | {100 * b['top1']:.2f} | {100 * a['top1']:.2f} |" in text
    for name, (k, n) in report["kept"].items():
        assert f"| `{name}` | {k} | {n} |" in text
    assert text.count("\n| ") >= len(report["kept"]) + len(report["trace"])
    picture = (out / "kept_channels.png").read_bytes()
    assert picture[:8] == PNG_MAGIC and len(picture) > 5000


def test_prune_a_timm_model_with_its_weights_on_an_image_folder(tmp_path):
    images = tmp_path / "images"
    _image_folder(images, classes=("a", "b", "c"))
    torch.manual_seed(5)
    baseline = timm.create_model("resnet18", pretrained=False, num_classes=3)
    save_file(baseline.state_dict(), str(tmp_path / "baseline.safetensors"))
    out = tmp_path / "out"
    proc = _run("prune", "--model", "timm:resnet18", "--weights", str(tmp_path / "baseline.safetensors"),
                "--data", str(images), "--size", "32", "--flops-target", "0.5", "--batch-size", "4",
                "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "saved the pruned model, report.json and summary.md" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 0.5)
    assert report["model"] == "timm:resnet18"
    _, test, _ = folder_splits(images, size=32)
    test_loader = loaders(test, test, batch_size=3)[1]
    assert report["before"]["top1"] == evaluate(baseline, test_loader)  # the given weights were the baseline
    arch, _ = read_recipe(out)
    assert (arch.source, arch.name, dict(arch.kwargs)) == (TIMM, "resnet18", {"num_classes": 3})
    _check_saved(out, report, test_loader)  # rebuilt from timm by name, history replayed, same top-1
    _check_summary(out, report)


BUILDER = '''
    import torch
    from torch import nn


    def build(num_classes=10, width=32):
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


    def not_a_model():
        return 3

    RATE = 0.5
'''


def test_prune_the_users_own_builder_and_load_it_back_only_with_the_builder(tmp_path):
    (tmp_path / "mynets.py").write_text(textwrap.dedent(BUILDER))
    images = tmp_path / "images"
    _image_folder(images)
    proc = _run("prune", "--model", "mynets:build", "--data", "images", "--size", "16", "--flops-target", "0.6",
                "--batch-size", "4", "--train-steps", "2", "--out", "out", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 0.6)
    arch, _ = read_recipe(out)
    assert (arch.source, arch.name, dict(arch.kwargs)) == (CUSTOM, "mynets:build", {"num_classes": 2})
    with pytest.raises(ConfigError, match=r"custom builder 'mynets:build'; pass it back: builder="):
        load_pruned(out)  # a name read from a file is never imported
    sys.path.insert(0, str(tmp_path))
    try:
        model = load_pruned(out, builder=importlib.import_module("mynets").build)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets", None)
    assert model[-1].out_features == 2
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    _check_summary(out, report)


@pytest.mark.parametrize(("spec", "match"), [
    ("timm:resnet19", r"model='resnet19' is not a timm model\. Did you mean one of \["),
    ("convnext_atto", r"model='convnext_atto' is not a torchvision classification model\..* It is a timm model: "
                      r"pass timm:convnext_atto\."),
    ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz' \(ModuleNotFoundError"),
    ("mynets:missing", r"module 'mynets' has no 'missing' \(its functions: \['build', 'not_a_model'\]\)"),
    ("mynets:RATE", r"'RATE' is a float, not a function that returns an nn\.Module"),
    ("mynets:not_a_model", r"the builder of 'mynets:not_a_model' returned a int, not an nn\.Module"),
    ("a:b:c", r"a custom builder is 'module:function'"),
    (":build", r"a custom builder is 'module:function'"),
])
def test_bad_model_specs_are_one_line_errors(tmp_path, monkeypatch, capsys, spec, match):
    (tmp_path / "mynets.py").write_text(textwrap.dedent(BUILDER))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    assert main(["prune", "--model", spec, "--out", str(tmp_path / "out"), "--no-progress", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wgates prune: error: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert not (tmp_path / "out" / "report.json").exists()


def test_model_specs_resolve_from_either_library():
    assert parse_model_spec("resnet18") == ("torchvision", "resnet18")
    assert parse_model_spec("torchvision:resnet18") == ("torchvision", "resnet18")
    assert parse_model_spec("timm:convnext_atto") == ("timm", "convnext_atto")
    assert parse_model_spec("pkg.sub.nets:build_v2") == ("custom", "pkg.sub.nets:build_v2")
