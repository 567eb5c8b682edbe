#!/usr/bin/env bash
# Resolve mrrec with its [gpu] extra (vLLM, DeepSpeed) with pip's resolver, without installing anything: the declared
# requirements of vllm, deepspeed, torch, transformers and trl must agree. Writes the resolver's report and prints the
# versions it chose. Usage: scripts/check_gpu_extra.sh [report.json]
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-/tmp/mrrec-gpu-extra-report.json}"
python -m pip install --dry-run --ignore-installed --quiet --report "$report" -e ".[gpu]"
python - "$report" <<'PY'
import json, sys
chosen = {i['metadata']['name'].lower(): i['metadata']['version'] for i in json.load(open(sys.argv[1]))['install']}
for name in ('mrrec', 'torch', 'vllm', 'deepspeed', 'transformers', 'trl', 'accelerate'):
    print(f"{name:13s} {chosen.get(name, 'MISSING')}")
missing = [n for n in ('torch', 'vllm', 'deepspeed') if n not in chosen]
sys.exit(f"not resolved: {missing}" if missing else 0)
PY
