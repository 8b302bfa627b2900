#!/usr/bin/env bash
# The official `openai` Python client (PyPI, in a venv made here) against `smolbit serve` on the
# default model, over loopback: greedy chat completions, whole and streamed, equal to `smolbit
# generate --chat`; a text completion; the model list; a wrong key refused. Run by .ci/run after
# the tests (it uses the binary they built).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bin="${SMOLBIT_BIN:-$target/debug/smolbit}"
[ -x "$bin" ] || cargo build -p smolbit --bins
work="$(mktemp -d)"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

venv="${SMOLBIT_OPENAI_VENV:-$HOME/.cache/smolbit/openai-venv}"
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openai==3.63.0"
fi

model="$work/smollm2"
"$bin" convert "$(cargo xtask model-path)" --out "$model" >/dev/null
"$bin" --threads 2 serve --model "$model" --port 0 --api-key check-key 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 600); do
  grep -q 'listening on' "$work/serve.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.1
done
addr="$(sed -n 's/.*listening on http:\/\///p' "$work/serve.log" | head -1)"
[ -n "$addr" ] || { cat "$work/serve.log"; exit 1; }

prompt="Write a Python function that adds two numbers."
want="$("$bin" --threads 2 generate --model "$model" --prompt "$prompt" --chat --max-new-tokens 24 --json)"
timeout 300 "$venv/bin/python" scripts/serve_check.py "http://$addr/v1" smollm2 "$prompt" "$want"

kill -TERM "$server"
wait "$server"
server=""
grep -q 'ttft' "$work/serve.log"
echo "serve-check: the openai client agrees with smolbit generate"
