# The two commands: `make dev` and `make test`. Each does all set-up first (idempotent).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export WRANGLER_SEND_METRICS := false

.PHONY: setup build dev test lint unit e2e chaos bench clean

setup:
	@bash scripts/setup.sh

build: setup
	@bash scripts/build-worker.sh

## Run the Worker locally on http://127.0.0.1:8787 (local Durable Object SQLite + KV).
dev: setup
	@bash scripts/dev.sh

.PHONY: deploy relay-bridge-static

## Ship the Worker to Cloudflare (the once-only steps first: README, "Deploy in ten minutes").
deploy: build
	@if grep -q '^id = "00000000000000000000000000000000"' wrangler.toml; then \
	  echo 'wrangler.toml still has the placeholder KV id: run `npx wrangler kv namespace create RELAY` and put the id it prints there' >&2; \
	  exit 1; fi
	CCR_SKIP_BUILD=1 node_modules/.bin/wrangler deploy

## relay-bridge as one static Linux binary a sandbox can download and run:
## target/x86_64-unknown-linux-musl/release/relay-bridge (rustls: no OpenSSL; ring needs musl-gcc).
relay-bridge-static:
	rustup target add x86_64-unknown-linux-musl
	@command -v musl-gcc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y musl-tools; \
	  else echo 'musl-gcc is missing: sudo apt-get install musl-tools' >&2; exit 1; fi; }
	CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked -p relay-bridge \
	  --target x86_64-unknown-linux-musl
	@file target/x86_64-unknown-linux-musl/release/relay-bridge 2>/dev/null || \
	  ls -l target/x86_64-unknown-linux-musl/release/relay-bridge

## Everything: formatting, clippy (native + wasm32), unit tests, end-to-end tests on workerd.
test: build lint unit e2e

lint: setup
	cargo fmt --all -- --check
	python3 scripts/check-imports.py crates/*/src tests/src
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy -p router-worker --target wasm32-unknown-unknown --locked -- -D warnings

unit: setup
	cargo test --workspace --exclude ccr-e2e --locked

e2e: build
	cargo test -p ccr-e2e --locked -- --test-threads=2
	# The relay suite again over long-polling (the run above used the WebSocket transport).
	CCR_E2E_RELAY_TRANSPORT=poll cargo test -p ccr-e2e --locked --test relay -- --test-threads=2
	# The streaming cases of relay_stream again over long-polling (bounded `_stream` calls).
	CCR_E2E_RELAY_TRANSPORT=poll cargo test -p ccr-e2e --locked --test relay_stream -- --test-threads=2 \
	  server_sent_events a_300_mb_download a_caller_that_goes_away a_slow_caller

## Delivery under faults at full size (1,000 commands; `make test` runs about 100).
chaos: build
	CCR_CHAOS_COMMANDS=$${CCR_CHAOS_COMMANDS:-1000} CCR_CHAOS_REPORT=target/chaos.md \
	  cargo test -p ccr-e2e --locked --test chaos -- --nocapture

## Latency, throughput and footprint on local workerd, release builds (docs/PERFORMANCE.md);
## prints one table and writes it to target/bench/bench.md and bench.json.
bench: build
	cargo build --release --locked -p relay-bridge -p machine-agent
	CCR_E2E_RELEASE=1 CLOUDFLARE_CF_FETCH_ENABLED=false \
	  cargo run --release --locked -p ccr-e2e --bin bench

clean:
	cargo clean
	rm -rf crates/router-worker/build .wrangler
