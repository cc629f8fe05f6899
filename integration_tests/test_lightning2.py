"""``WGatesCallback`` in real Lightning 2 fits: prune and export, resume from a checkpoint with the
result an uninterrupted fit gives, and 2-process DDP with the same gates on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="the lightning2 extra is not installed")

from integration_tests.lightning2_app import Classifier, cnn, data, trainer  # noqa: E402
from wgates_plugin import ConfigError, count_macs  # noqa: E402
from wgates_plugin.integrations.lightning import GateDecoratorCallback, WGatesCallback  # noqa: E402

X = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))
pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_trains_the_gates_freezes_at_the_step_and_exports_exactly():
    gates = WGatesCallback(target=0.5, freeze_step=6, replace=False)
    module = Classifier()
    t = trainer(max_steps=10, callbacks=[gates])
    t.fit(module, data())
    wg = gates.wgates
    assert wg is not None and wg.steps == 6  # gate steps stop at the freeze
    assert all(g.is_frozen for g in wg.gates)
    assert any(g.fc.abs().sum() > 0 for g in wg.gates)
    assert "wgates/flops_ratio" in t.callback_metrics
    small = gates.pruned
    full = count_macs(cnn(), X[:1])
    ratio = count_macs(small, X[:1]) / full
    assert ratio <= 0.5 * (1 + wg.config.tolerance) and ratio == pytest.approx(0.5, abs=0.05)
    module.model.eval()
    small.eval()
    with torch.no_grad():  # replace=False: the gated network is still in place, gates frozen
        torch.testing.assert_close(small(X), module.model(X), rtol=1e-4, atol=1e-5)


def test_replace_puts_the_exported_network_into_the_module():
    gates = WGatesCallback(target=0.5, freeze_step=3)
    module = Classifier()
    trainer(max_steps=4, callbacks=[gates]).fit(module, data())
    assert module.model is gates.pruned
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.model.modules())
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in cnn().parameters())


def _fit(epochs: int, tmp: Path, ckpt: Path | None = None) -> WGatesCallback:
    gates = WGatesCallback(target=0.5, freeze_step=7, replace=False)
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp, save_last=True, every_n_epochs=1, save_top_k=-1)
    trainer(max_epochs=epochs, callbacks=[gates, save], enable_checkpointing=True).fit(
        Classifier(), data(), ckpt_path=ckpt)
    return gates


def _same(a, b) -> bool:
    """Exact equality of nested state (tensors bit for bit)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = _fit(2, tmp_path / "a")
    _fit(1, tmp_path / "b")  # stops after epoch 1 (5 steps), its checkpoint holds the gates
    resumed = _fit(2, tmp_path / "c", ckpt=tmp_path / "b" / "last.ckpt")
    assert resumed.wgates.steps == straight.wgates.steps == 7
    assert _same(straight.wgates.state_dict(), resumed.wgates.state_dict())
    assert _same(straight.pruned.state_dict(), resumed.pruned.state_dict())  # the same network, weights included


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match=r"target=1\.5 must be in \(0, 1\]"):
        WGatesCallback(target=1.5)
    with pytest.raises(ConfigError, match=r"module='model\.net' must be the name of the LightningModule's attribute"):
        WGatesCallback(target=0.5, module="model.net")
    with pytest.raises(ConfigError, match=r"start_step=9 must be in \[1, end_step=4\]"):
        GateDecoratorCallback(target=0.5, end_step=4, start_step=9)
    with pytest.raises(ConfigError, match=r"prune_every=0 must be an int >= 1"):
        GateDecoratorCallback(target=0.5, end_step=4, prune_every=0)
    gates = WGatesCallback(target=0.5, module="backbone")
    with pytest.raises(ConfigError, match=r"module='backbone': Classifier has no sub-module of that name "
                                          r"\(its children: \['model'\]\)"):
        trainer(max_steps=1, callbacks=[gates]).fit(Classifier(), data())


@pytest.mark.slow
def test_ddp_on_two_processes_keeps_the_gates_identical(tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("lightning2_app.py")), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert any(v.abs().sum() > 0 for k, v in r0.items() if k.endswith("fc"))  # the gates trained


def test_gate_decorator_prunes_on_schedule_and_exports_exactly():
    gd = GateDecoratorCallback(target=0.5, end_step=6, prune_every=2, replace=False)
    module = Classifier()
    ratios = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            ratios.append(round(gd.gate_decorator.cost_ratio(), 3))

    trainer(max_steps=9, callbacks=[gd, Watch()]).fit(module, data())
    assert gd._budget_at(2) == pytest.approx(5 / 6) and gd._budget_at(4) == pytest.approx(4 / 6)
    assert gd._budget_at(6) == 0.5 and gd._budget_at(3) is None and gd._budget_at(8) is None
    assert ratios[0] == 1.0 and ratios[-1] <= 0.5 * (1 + 1e-9) and ratios == sorted(ratios, reverse=True)
    assert ratios[1] <= 5 / 6 + 1e-9 and ratios[3] <= 4 / 6 + 1e-9  # each removal met its step of the schedule
    small = gd.pruned
    ratio = count_macs(small, X[:1]) / count_macs(cnn(), X[:1])
    assert ratio <= 0.5 * (1 + 1e-6) and ratio == pytest.approx(0.5, abs=0.05)
    module.model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(X), module.model(X), rtol=1e-4, atol=1e-5)


def _fit_gd(epochs: int, tmp: Path, ckpt: Path | None = None) -> GateDecoratorCallback:
    gd = GateDecoratorCallback(target=0.5, end_step=8, prune_every=2, replace=False)
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp, save_last=True, every_n_epochs=1, save_top_k=-1)
    t = trainer(max_epochs=epochs, callbacks=[gd, save], enable_checkpointing=True)
    t.fit(Classifier(), data(), ckpt_path=ckpt)
    return gd


def test_gate_decorator_resumes_to_the_same_network(tmp_path):
    straight = _fit_gd(2, tmp_path / "a")
    _fit_gd(1, tmp_path / "b")
    resumed = _fit_gd(2, tmp_path / "c", ckpt=tmp_path / "b" / "last.ckpt")
    assert _same(straight.pruned.state_dict(), resumed.pruned.state_dict())
