#!/usr/bin/env bash
# The GPU check for a lent GPU machine (docs/gpu.md): the wgpu golden-logit, kernel and fused-step
# tests on the real card, then prefill/decode benchmarks of random-weight SmolLM2-135M- and
# SmolLM3-3B-shaped checkpoints, f16 against b158, on wgpu through the fused decode step and
# through burn's ops (SMOLBIT_BURN_DECODE=1, the path before it), and the b158 models on that
# machine's CPU for scale, and b158 prefill through the tiled ternary kernel
# (SMOLBIT_GPU_PREFILL=tiled) against unpack + burn's GEMM. Each bench line carries
# launches_per_token and device_reads_per_token.
# Meant to fit in 5 minutes on a 16-core H100 machine once the binaries are there (not yet timed
# on one).
#
# Usage: scripts/gpu-check.sh BIN_DIR OUT_DIR
#   BIN_DIR holds `smolbit` (built with the wgpu feature), `xtask` and `wgpu-tests` (the
#   smolbit-model `wgpu` test binary), built elsewhere when the GPU machine has no Rust toolchain:
#     cargo build -p smolbit -p xtask && cargo test -p smolbit-model --features wgpu --test wgpu --no-run
#   OUT_DIR receives card.txt, tests.log, bench.jsonl (one `smolbit bench --json` line per case,
#   with the case's name added) and summary.txt.
# Vulkan: if the machine has no Vulkan loader, `.gl/*.deb` (libvulkan1 and the GL/EGL dispatch
# libraries, downloaded beside the checkout) are unpacked first.
set -uo pipefail
BIN=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
WORK=${WORK:-/tmp/smolbit-gpu}
mkdir -p "$WORK"
# Binaries may come gzipped (to travel light).
for f in "$BIN"/*.gz; do
  [ -e "$f" ] || continue
  mkdir -p "$WORK/bin" && gunzip -c "$f" >"$WORK/bin/$(basename "$f" .gz)" && chmod +x "$WORK/bin/$(basename "$f" .gz)"
done
[ -d "$WORK/bin" ] && BIN="$WORK/bin"
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi

# The test binary finds testdata/ through the checkout path it was compiled in (BUILT_AT).
BUILT_AT=${BUILT_AT:-/work/main}
if [ ! -e "$BUILT_AT" ]; then
  mkdir -p "$(dirname "$BUILT_AT")"
  ln -sfn "$PWD" "$BUILT_AT"
fi
say "tests"
SMOLBIT_REQUIRE_WGPU=1 "$BIN/wgpu-tests" --test-threads 1 2>&1 | tee "$OUT/tests.log"
say "tests exit ${PIPESTATUS[0]}"

bench() { # name model device new_tokens [env assignment]
  say "bench $1 on $3 ${5:-}"
  line=$(env ${5:-} "$BIN/smolbit" --threads "${THREADS:-16}" bench --model "$2" --device "$3" \
    --prompt-tokens 128 --new-tokens "$4" --repeats 3 --json 2>>"$OUT/summary.txt" | tail -1)
  echo "$line" | tee -a "$OUT/summary.txt"
  case $line in
    \{*) echo "{\"case\": \"$1\", \"result\": $line}" >>"$OUT/bench.jsonl" ;;
  esac
}

# GPU memory in use, every 500 ms, for the whole benchmark.
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -lms 500 >"$OUT/gpu-memory.csv" &
sampler=$!
for shape in smollm2-135m smollm3-3b; do
  f16="$WORK/$shape-f16" b158="$WORK/$shape-b158"
  [ -d "$f16" ] || "$BIN/xtask" random-model --shape "$shape" --out "$f16" 2>&1 | tee -a "$OUT/summary.txt"
  if [ ! -d "$b158" ]; then
    t0=$(date +%s.%N)
    "$BIN/smolbit" quantize --model "$f16" --scheme b158 --out "$b158" 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
    say "quantize $shape: $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
  fi
  bench "$shape f16 fused" "$f16" wgpu 64
  bench "$shape b158 fused" "$b158" wgpu 64
  bench "$shape f16 burn-ops" "$f16" wgpu 16 SMOLBIT_BURN_DECODE=1
  bench "$shape b158 burn-ops" "$b158" wgpu 16 SMOLBIT_BURN_DECODE=1
  # Prefill through the tiled ternary kernel instead of unpack + burn's GEMM.
  bench "$shape b158 tiled-prefill" "$b158" wgpu 4 SMOLBIT_GPU_PREFILL=tiled
  bench "$shape b158" "$b158" cpu 32
done
kill "$sampler"
say "done"
