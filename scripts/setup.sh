#!/usr/bin/env bash
# Create .venv and install wgates_plugin with its test extras.
# torch and torchvision are resolved together from the package index (never pin torch alone: a
# locally offered CPU-only torch wheel does not match the index's torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,bench]"
