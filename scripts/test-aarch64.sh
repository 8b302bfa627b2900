#!/usr/bin/env bash
# Run the ternary crate's tests (every kernel against the scalar reference) as an aarch64
# binary under qemu-user, once on a CPU with the dot-product extension (NEON + sdot) and once
# on one without (NEON only). Installs what it needs: the Rust target, a cross linker, qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
for cpu in max cortex-a57; do
  echo "== aarch64 tests on qemu -cpu $cpu"
  if ! out=$(CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
    cargo test --quiet -p smolbit-ternary --target "$target" --lib -- --nocapture 2>&1); then
    echo "$out"
    exit 1
  fi
  grep -E "implementations checked|test result" <<<"$out"
done
