#!/usr/bin/env bash
# Builds the Worker (release, wasm-opt on) with registry-only tools: worker-build would
# otherwise download wasm-bindgen, esbuild and wasm-opt from GitHub, which fails offline.
# wrangler runs this as its [build] command; CCR_SKIP_BUILD=1 skips it (tests build once).
set -euo pipefail
[ "${CCR_SKIP_BUILD:-}" = 1 ] && exit 0
root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export ESBUILD_BIN="$root/node_modules/.bin/esbuild"
export WASM_OPT_BIN="$root/node_modules/.bin/wasm-opt"
cd "$root/crates/router-worker"
# Every crate in the Worker's wasm optimised for size, not only ours (Cargo.toml's
# `[profile.release.package.router-worker]`): serde_json, workers-rs and url are most of the
# module, and the native binaries' release builds must keep opt-level 3, so it is set here,
# for this build only: 350 → 320 KB gzipped when it was introduced (latency effect measured
# by `make bench`, docs/PERFORMANCE.md).
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z
worker-build --release
# worker-build keeps the wasm "name" section (function names for stack traces): about 40 KB of
# the gzipped module, i.e. cold-start time on every isolate. Drop it unless CCR_WASM_NAMES=1
# (a debugging build). The feature list is worker-build's own, so nothing newer is emitted.
# The same pass optimises again for size, which worker-build's `-O` does not: `-Oz`, GUFA
# (whole-program type/constant flow) and `-Oz` once more to clean up after it, with two
# facts about this module that let Binaryen fold more: its memory is its own and starts
# zeroed (`--zero-filled-memory`: nothing imports it), and nothing lives below address 1024
# (`--low-memory-unused`: Rust's stack grows down from 1 MB toward it and the data segments
# sit above the stack, so only a stack overflow, which traps regardless, could reach it).
# 405.1 → 400.6 KB gzipped; about 25 s more on this machine. `--traps-never-happen` would
# cut more but may delete what runs before a panic, so it is not used.
if [ "${CCR_WASM_NAMES:-}" != 1 ]; then
  wasm=build/index_bg.wasm
  "$WASM_OPT_BIN" --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-bulk-memory --enable-multivalue --enable-reference-types \
    --enable-exception-handling --strip-debug \
    --zero-filled-memory --low-memory-unused -Oz --gufa -Oz "$wasm" -o "$wasm"
fi
