"""Every docstring example in the package runs and stays true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import wgates_plugin

MODULES = sorted(m.name for m in pkgutil.walk_packages(wgates_plugin.__path__, "wgates_plugin."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if ">>>" in (module.__file__ and open(module.__file__, encoding="utf-8").read()):
        assert result.attempted > 0, f"{name} has docstring examples that do not run"


def test_every_module_is_found():
    assert {"wgates_plugin.core", "wgates_plugin.export", "wgates_plugin.gate_decorator.method",
            "wgates_plugin.integrations.nni", "wgates_plugin.app.training"} <= set(MODULES)
