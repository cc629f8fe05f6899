#!/usr/bin/env bash
# The whole test suite against the oldest releases pyproject.toml allows (constraints/oldest.txt),
# in its own virtual environment (.venv-oldest, or $VENV). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-oldest}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints/oldest.txt -e ".[test,bench]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -E -i "^(torch|torchvision|torch-pruning|nni|numpy|pytorch-lightning) "
"$VENV/bin/python" -m pytest -n 2 "$@"
