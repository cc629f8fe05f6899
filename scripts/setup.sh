#!/usr/bin/env bash
# Create .venv (or $VENV) and install wgates_plugin with every extra (NNI, Lightning, timm, ONNX, tests, benchmarks).
# torch and torchvision are resolved together from the package index (never pin torch alone: a
# locally offered CPU-only torch wheel does not match the index's torchvision).
# $CONSTRAINTS, if set, is a pip constraints file (scripts/test-oldest.sh passes constraints/oldest.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[nni,lightning,lightning2,timm,onnx,yolo,test,bench]"
# Fashion-MNIST (the benchmark's data; tests read it where installed) from Debian's package, where this
# machine can install packages; elsewhere pass its IDX folder to load_fashion_mnist(root=...).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
        echo "setup.sh: could not install dataset-fashion-mnist; the test on the real files will be skipped" >&2
fi
