"""The ``wgates`` command. Each sub-command lives in ``wgates_plugin.app.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that runs it."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "prune", "lpnet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgates", description="W-Gates filter pruning for PyTorch CNNs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"wgates_plugin.app.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
