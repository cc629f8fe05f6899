#!/usr/bin/env bash
# The latency benchmarks on a GPU, the paper's setting: the per-layer lookup table and the LPNet
# against the measured noise floor, sequential and paired (RESULTS "Latency mode", (e) and (g)).
#
# Written for a lent GPU machine whose python3 already holds torch, torchvision, tqdm, safetensors,
# scipy and scikit-learn but not torch-pruning. Prepare once, here, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl torch-pruning==1.6.1
# then run it there from the repository root (carrying .whl): bash scripts/device-latency.sh
# Every figure goes under $OUT (default device-out): device.txt (GPU, driver, torch, CUDA) and, per
# protocol, the Markdown and JSON of benchmarks.latency_table. Further arguments go to both benchmark
# runs: `DEVICE=cpu bash scripts/device-latency.sh --quick --size 32` runs the same steps smoke-sized
# on a machine without a GPU. A run that fails or passes SECONDS_EACH is noted in device.txt and the
# next one still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
DEVICE=${DEVICE:-cuda}
SECONDS_EACH=${SECONDS_EACH:-240}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$OUT/device.txt"
run() {  # name, then benchmarks.latency_table's options
    local name=$1; shift
    timeout "$SECONDS_EACH" python3 -m benchmarks.latency_table --device "$DEVICE" --work "/tmp/$name" \
        --json "$OUT/$name.json" "$@" | tee "$OUT/$name.md" || echo "$name: exit $?" | tee -a "$OUT/device.txt"
}
run latency_table --size 224 --batch 8 "$@"
run latency_table_paired --size 224 --batch 8 --paired --statistic iqm --select-weight-decay "$@"
