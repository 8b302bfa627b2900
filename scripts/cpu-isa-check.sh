#!/usr/bin/env bash
# The CPU check for a machine whose CPU has an instruction set this project's own machine lacks
# (AVX-512 VNNI on a lent GPU machine's host): the packed-kernel tests there, so that every fast
# path is compared with the scalar reference on the CPU that runs it, then the kernel benchmark
# and `smolbit bench` with the best implementation against AVX2 (`SMOLBIT_ISA=avx2`), alternating,
# in the same run.
#
# Usage: scripts/cpu-isa-check.sh BIN_DIR OUT_DIR
#   BIN_DIR holds (optionally gzipped) `smolbit`, `xtask`, `ternary-tests` (smolbit-ternary's unit
#   tests), `props-tests` (its tests/props.rs), `golden-tests` (smolbit-model's tests/golden.rs)
#   and `kernels-bench`, built where Rust is:
#     cargo build -p smolbit -p xtask && cargo test -p smolbit-ternary -p smolbit-model --no-run
#     cargo bench --profile dev -p smolbit-ternary --bench kernels --no-run
#   OUT_DIR receives cpu.txt, tests.log, kernels.log, bench.jsonl (one `smolbit bench --json` line
#   per case, with the case's name added) and summary.txt.
# THREADS (default "1 2") lists the thread counts benchmarked; SHAPES (default
# "smollm2-135m smollm3-3b") the random-weight models; PROMPT_3B and NEW_3B (default 32 and 32)
# the 3B-shaped runs' prompt and new tokens (the 135M-shaped ones use 128 and 64), to keep the
# whole check within a few minutes of lent time.
set -uo pipefail
BIN=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
WORK=${WORK:-/tmp/smolbit-isa}
mkdir -p "$WORK/bin"
for f in "$BIN"/*; do
  case $f in
    *.gz) gunzip -c "$f" >"$WORK/bin/$(basename "$f" .gz)" ;;
    *) cp "$f" "$WORK/bin/" ;;
  esac
done
chmod +x "$WORK/bin"/*
BIN=$WORK/bin
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }

{ lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket'; grep -o -w -E 'avx2|avx512f|avx512vl|avx512_vnni|avx_vnni' /proc/cpuinfo | sort | uniq -c; } | tee "$OUT/cpu.txt"

# The test binaries find testdata/ through the checkout path they were compiled in (BUILT_AT).
BUILT_AT=${BUILT_AT:-/work/main}
if [ ! -e "$BUILT_AT" ]; then
  mkdir -p "$(dirname "$BUILT_AT")"
  ln -sfn "$PWD" "$BUILT_AT"
fi
for t in ternary-tests props-tests golden-tests; do
  say "tests $t"
  "$BIN/$t" 2>&1 | tail -25 | tee -a "$OUT/tests.log"
  say "tests $t exit ${PIPESTATUS[0]}"
done

say "kernel benchmark"
for threads in ${THREADS:-1 2}; do
  RAYON_NUM_THREADS=$threads SMOLBIT_BENCH_ONLY=${KERNEL_ONLY:-3b ffn up 11008x2048 b158 a8 avx} \
    SMOLBIT_BENCH_REPS=${KERNEL_REPS:-20} "$BIN/kernels-bench" 2>&1 | tee -a "$OUT/kernels.log"
done

bench() { # name model threads isa prompt new
  say "bench $1 threads=$3 isa=${4:-best}"
  line=$(SMOLBIT_ISA=${4:-} "$BIN/smolbit" --threads "$3" bench --model "$2" --device cpu \
    --prompt-tokens "$5" --new-tokens "$6" --repeats 3 --json 2>>"$OUT/summary.txt" | tail -1)
  echo "$line" | tee -a "$OUT/summary.txt"
  case $line in
    \{*) echo "{\"case\": \"$1\", \"isa_env\": \"${4:-best}\", \"result\": $line}" >>"$OUT/bench.jsonl" ;;
  esac
}
for shape in ${SHAPES:-smollm2-135m smollm3-3b}; do
  f16="$WORK/$shape-f16" b158="$WORK/$shape-b158"
  if [ ! -d "$b158" ]; then
    t0=$(date +%s)
    "$BIN/xtask" random-model --shape "$shape" --out "$f16" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
    "$BIN/smolbit" quantize --model "$f16" --scheme b158 --out "$b158" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
    rm -rf "$f16"
    say "made $shape b158 in $(($(date +%s) - t0)) s"
  fi
  tokens="128 64"
  [ "$shape" = smollm3-3b ] && tokens="${PROMPT_3B:-32} ${NEW_3B:-32}"
  for threads in ${THREADS:-1 2}; do
    # Alternating, so that drift in the machine's speed falls on both.
    for isa in avx2 "" avx2 ""; do
      # shellcheck disable=SC2086
      bench "$shape b158" "$b158" "$threads" "$isa" $tokens
    done
  done
done
say "done"
