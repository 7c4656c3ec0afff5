#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time, from the kept corpus and seeds: CI's check that
# no input it knows of, nor any found in those seconds, panics or allocates without bound.
# Installs the pinned cargo-fuzz when it is missing; the nightly toolchain must already be there
# (rustup cannot download one on these machines). Exits non-zero if any target fails, after trying
# them all. The long runs behind docs/operations.md are the same command with `-runs=10000000`.
#
#   fuzz/run.sh                      every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=60 fuzz/run.sh client_frame token_verify
set -euo pipefail
cd "$(dirname "$0")"

# `cargo install` puts cargo-fuzz in $CARGO_HOME/bin, which need not be on PATH (CI sets its own
# CARGO_HOME).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
CARGO_FUZZ_VERSION=0.13.2
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=(client_frame stored_message history_request token_verify presence_key)
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
fi

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "fuzz: toolchain '$TOOLCHAIN' is not installed (see rustup toolchain list)" >&2
  exit 2
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
echo "fuzz: $(cargo fuzz --version), $(rustup run "$TOOLCHAIN" rustc --version)"

# The committed Cargo.lock is the one used: fail here rather than let the build rewrite it.
cargo "+$TOOLCHAIN" fetch --locked --quiet
build_start=$(date +%s)
cargo "+$TOOLCHAIN" fuzz build
echo "fuzz: built in $(($(date +%s) - build_start)) s"

# New inputs go to a scratch corpus (libFuzzer writes only to the first directory), so a run leaves
# the kept corpus as it was; crashes are written to fuzz/artifacts/<target>/.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${TARGETS[@]}"; do
  mkdir -p "$scratch/$target" "corpus/$target" "seeds/$target"
  echo "fuzz: $target for ${SECONDS_EACH} s"
  log="$scratch/$target.log"
  # A client frame may be as long as the gateway's GATEWAY_MAX_FRAME_BYTES default, 64 KiB; the
  # other inputs are short, and libFuzzer's default of 4 KiB bounds them.
  max_len=()
  [ "$target" = client_frame ] && max_len=(-max_len=65536)
  if cargo "+$TOOLCHAIN" fuzz run "$target" "$scratch/$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
    "${max_len[@]}" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" | sed "s/^/fuzz: $target: /" || true
  else
    failed+=("$target")
    echo "fuzz: $target FAILED:" >&2
    # The panic (before its long backtrace), libFuzzer's verdict and where the input went.
    grep -E -A2 'panicked at' "$log" | head -n 20 >&2 || true
    grep -E 'ERROR:|SUMMARY:|Test unit written|^Base64:' "$log" >&2 || true
    echo "fuzz: the end of the $target log:" >&2
    tail -n 30 "$log" >&2
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}; the inputs are in fuzz/artifacts/<target>/," >&2
  echo "fuzz: reproduce one with: cargo +$TOOLCHAIN fuzz run <target> fuzz/artifacts/<target>/<file>" >&2
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
