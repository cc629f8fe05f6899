"""The package's layers only look down: no import cycle, no cost model importing the core, no
function-level import but of optional dependencies, and the core works without nni."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "wgates_plugin"
OPTIONAL = ("nni", "pytorch_lightning", "lightning", "matplotlib", "timm", "onnx", "onnxruntime")
# (a module prefix, the packages it must not import): each layer only imports those below it.
LAYERS = [
    ("wgates_plugin.utils", ("wgates_plugin.groups", "wgates_plugin.efficiency", "wgates_plugin.core")),
    ("wgates_plugin.files", ("wgates_plugin.groups", "wgates_plugin.efficiency", "wgates_plugin.core")),
    ("wgates_plugin.groups", ("wgates_plugin.efficiency", "wgates_plugin.core", "wgates_plugin.export")),
    ("wgates_plugin.efficiency", ("wgates_plugin.core", "wgates_plugin.pruner", "wgates_plugin.export",
                                  "wgates_plugin.config", "wgates_plugin.budget", "wgates_plugin.gate_decorator",
                                  "wgates_plugin.profiling", "wgates_plugin.integrations", "wgates_plugin.app")),
    ("wgates_plugin.export", ("wgates_plugin.core", "wgates_plugin.pruner", "wgates_plugin.gate_decorator")),
    ("wgates_plugin.core", ("wgates_plugin.pruner", "wgates_plugin.gate_decorator", "wgates_plugin.profiling",
                            "wgates_plugin.integrations", "wgates_plugin.app")),
    ("wgates_plugin.pruner", ("wgates_plugin.gate_decorator", "wgates_plugin.profiling",
                              "wgates_plugin.integrations", "wgates_plugin.app")),
    ("wgates_plugin.gate_decorator", ("wgates_plugin.pruner", "wgates_plugin.profiling", "wgates_plugin.app")),
    ("wgates_plugin.profiling", ("wgates_plugin.pruner", "wgates_plugin.gate_decorator",
                                 "wgates_plugin.integrations", "wgates_plugin.app")),
    ("wgates_plugin.integrations", ("wgates_plugin.app", "wgates_plugin.profiling")),
    ("wgates_plugin.latency_landing", ("wgates_plugin.integrations", "wgates_plugin.app", "wgates_plugin.profiling")),
    ("wgates_plugin.detection", ("wgates_plugin.integrations", "wgates_plugin.app", "wgates_plugin.profiling",
                                 "wgates_plugin.gate_decorator")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(package modules imported at module level, (line, module) of every other runtime import)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    guarded = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    top, nested = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + [base])
            targets = [base.rstrip(".")] + [f"{base.rstrip('.')}.{a.name}" for a in node.names]
        else:
            targets = [a.name for a in node.names]
        if node in tree.body:
            top |= {t for t in targets if t in MODULES and t != name}
        else:
            nested.append((node.lineno, targets[0]))
    return top, nested


GRAPH = {name: _imports(name)[0] for name in MODULES}


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize(("layer", "above"), LAYERS)
def test_layers_only_look_down(layer, above):
    for name, deps in GRAPH.items():
        if name == layer or name.startswith(layer + "."):
            bad = sorted(d for d in deps if d.startswith(above))
            assert not bad, f"{name} imports {bad}, which sit above it"


def test_no_function_level_imports_but_optional_dependencies():
    nested = [(name, line, target) for name in MODULES for line, target in _imports(name)[1]
              if not target.startswith(OPTIONAL)]
    assert nested == []


def test_the_core_works_without_nni_and_says_which_extra_the_front_end_needs():
    code = ("import sys; sys.modules['nni'] = None\n"
            "import torch, wgates_plugin\n"
            "wg = wgates_plugin.WGates(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),\n"
            "    torch.nn.Conv2d(8, 4, 3)), torch.randn(1, 3, 8, 8), target=0.9, prune_shortcuts=True)\n"
            "print(len(wg.groups))\n"
            "try:\n    wgates_plugin.WGatesPruner\nexcept ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "1"
    assert lines[1] == ("wgates_plugin.integrations.nni needs the optional dependency 'nni': "
                        "pip install 'wgates-plugin[nni]'")
