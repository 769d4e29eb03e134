#!/usr/bin/env bash
# One idempotent set-up for `make dev`, `make test` and `make bench`: installs only what is
# missing or of the wrong version, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
export PATH="$HOME/.cargo/bin:$PATH"

# 1. Rust's wasm target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# 2. worker-build, at the version this project was verified with.
WORKER_BUILD_VERSION=0.8.7
# `worker-build --version` prints the bare version (e.g. "0.8.7").
if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$WORKER_BUILD_VERSION" ]; then
  say "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

# 3. wasm-bindgen CLI: must equal the wasm-bindgen library version Cargo.lock resolved.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
if [ -z "$WB_VERSION" ]; then
  echo "setup: cannot read the wasm-bindgen version from Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
  say "installing wasm-bindgen-cli $WB_VERSION (5-9 minutes, once)"
  # Not --locked: a yanked transitive dependency once broke the locked install.
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi

# 4. wrangler, workerd, esbuild and wasm-opt from the npm registry, exactly as locked.
stamp=node_modules/.ccr-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# 5. tmux, for the agent and the end-to-end tests.
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing tmux"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
  else
    echo "setup: tmux is missing; install it (e.g. 'sudo apt-get install tmux' or 'brew install tmux') and rerun" >&2
    exit 1
  fi
fi
say "ready"
