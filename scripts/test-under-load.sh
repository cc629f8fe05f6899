#!/usr/bin/env bash
# A test command (default: the README's, scripts/test.sh) while every core is kept busy by another
# process, one busy loop per core, stopped when the tests end. The suite must pass like this:
# no test may depend on measured time. Example: TEST=scripts/test-oldest.sh bash scripts/test-under-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=${TEST:-scripts/test.sh}
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq "$(nproc)"); do
    python3 -c "while True: pass" &
    pids+=("$!")
done
echo "[test-under-load] ${#pids[@]} busy loops running (pids ${pids[*]}): $TEST $*" >&2
bash "$TEST" "$@"
