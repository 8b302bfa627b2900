#!/usr/bin/env bash
# Decode on wgpu through burn's ops (SMOLBIT_BURN_DECODE=1, one dispatch per op) against the fused
# decode step, on the same machine in one run: `smolbit bench --json` for each model and path, and
# the kernels per decoded token counted by CubeCL's own profiler (independent of smolbit's
# counters: executions logged with 11 new tokens minus those with 3, over 16 decode steps).
#
# Usage: scripts/gpu-decode-compare.sh OUT.jsonl MODEL_DIR...   (SMOLBIT: the binary to run,
#   default target/debug/smolbit; THREADS: host threads, default 2)
# One JSON line per (model, path): {"model", "path", "cubecl_kernels_per_token", "bench": {...}}.
set -euo pipefail
out=$1
shift
bin=${SMOLBIT:-target/debug/smolbit}
threads=${THREADS:-2}
: >"$out"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
executions() { # model env-arguments new_tokens
  rm -f "$log"
  env $2 CUBECL_DEBUG_LOG="$log" CUBECL_DEBUG_OPTION=profile "$bin" --threads "$threads" bench \
    --model "$1" --device wgpu --prompt-tokens 4 --new-tokens "$3" --repeats 1 >/dev/null 2>&1
  grep -c '^| [0-9.]*[mµn]s' "$log"
}
for model in "$@"; do
  for path in burn-ops fused; do
    envs="-u SMOLBIT_BURN_DECODE"
    [ "$path" = burn-ops ] && envs=SMOLBIT_BURN_DECODE=1
    short=$(executions "$model" "$envs" 3)
    long=$(executions "$model" "$envs" 11)
    per=$(( (long - short) / 16 ))
    line=$(env $envs "$bin" --threads "$threads" bench --model "$model" --device wgpu \
      --prompt-tokens 32 --new-tokens 16 --repeats 3 --json 2>/dev/null | tail -1)
    echo "{\"model\": \"$model\", \"path\": \"$path\", \"cubecl_kernels_per_token\": $per, \"bench\": $line}" | tee -a "$out"
  done
done
