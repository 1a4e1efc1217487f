#!/usr/bin/env bash
# The stacked trainer on a GPU in one device call: its CUDA-graph test, then the trial-throughput table.
#
# The lent H200 image has torch 2.11 + CUDA but not pydantic or ASE; fetch their wheels here first
# (Python 3.12 there), from the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 ase==3.29.0
# then run this script there with `.whl` carried (about 5 minutes; leave room for a rerun):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# and put the table it prints into docs/benchmarks.md (section "GPU").
set -euo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_stacked.py 2>&1 | tee "$out/test_stacked.log"
python3 benchmarks/trial_throughput.py --device cuda --k 5 --steps 60 --warmup 5 --rounds 1 \
  --layouts folds,stack,graphs,graphs-autograd 2>&1 | tee "$out/trial_throughput.md"
