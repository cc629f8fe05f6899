#!/usr/bin/env bash
# The whole test suite against the oldest releases pyproject.toml allows (constraints/oldest.txt),
# in its own virtual environment (.venv-oldest, or $VENV). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv-oldest}
CONSTRAINTS=constraints/oldest.txt bash scripts/setup.sh
"$VENV/bin/python" -m pip list 2>/dev/null | grep -E -i "^(torch|torchvision|torch-pruning|nni|numpy|pytorch-lightning) "
"$VENV/bin/python" -m pytest -n 2 "$@"
