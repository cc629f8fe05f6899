"""The ``wgates`` command. Each sub-command lives in ``wgates_plugin.app.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it.

Every user error of every sub-command (a bad value, a missing, unreadable or foreign file, an output
that cannot be written) is one line on stderr, ``wgates <command>: error: ...``, and exit status 2,
as argparse reports a bad flag; an interrupt is one line and status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import WGatesError

COMMANDS = ("demo", "prune", "lpnet", "export_onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgates", description="W-Gates filter pruning for PyTorch CNNs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"wgates_plugin.app.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # as with `python -m`: --model mymodels:build finds ./mymodels.py
        sys.path.insert(0, os.getcwd())
    command = " ".join(c for c in (args.command, getattr(args, "lpnet_command", None)) if c)
    try:
        return int(args.func(args) or 0)
    except (WGatesError, OSError) as exc:
        return fail(command, exc)
    except KeyboardInterrupt:
        print(f"wgates {command}: interrupted", file=sys.stderr)
        return 130


def fail(command: str, exc: BaseException) -> int:
    """Print ``exc`` as a one-line CLI error (argparse style) and return exit status 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"wgates {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
