"""Every ```python block of README.md runs, in order, in one namespace: the docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wgates_plugin.efficiency.timing import SimulatedClock

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 3, "README.md should show the API with runnable python blocks"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The blocks that time networks (latency samples, tables, landing) are timed on the simulated
    device: what they print then depends on the architectures alone, never on the machine's load."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    with SimulatedClock(seconds_per_mac=1e-9, seconds_per_layer=2e-5):
        for i, block in enumerate(BLOCKS):
            try:
                exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"README python block {i} failed: {type(exc).__name__}: {exc}\n{block}")


def test_quick_start_has_exactly_two_commands():
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, flags=re.S)
    assert block is not None, "Quick start needs one bash block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert "wgates demo" in commands[0] or "demo" in commands[0]
    assert (README.parent / ".ci" / "run").read_text().count(commands[1].split()[-1]) >= 1
