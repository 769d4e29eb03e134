# The two commands: `make dev` and `make test`. Each does all set-up first (idempotent).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export WRANGLER_SEND_METRICS := false

.PHONY: setup build dev test lint unit e2e chaos clean

setup:
	@bash scripts/setup.sh

build: setup
	@bash scripts/build-worker.sh

## Run the Worker locally on http://127.0.0.1:8787 (local Durable Object SQLite + KV).
dev: build
	@bash scripts/dev.sh

## Everything: formatting, clippy (native + wasm32), unit tests, end-to-end tests on workerd.
test: build lint unit e2e

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy -p router-worker --target wasm32-unknown-unknown --locked -- -D warnings

unit: setup
	cargo test --workspace --exclude ccr-e2e --locked

e2e: build
	cargo test -p ccr-e2e --locked -- --test-threads=2

## Delivery under faults at full size (1,000 commands; `make test` runs about 100).
chaos: build
	CCR_CHAOS_COMMANDS=$${CCR_CHAOS_COMMANDS:-1000} CCR_CHAOS_REPORT=target/chaos.md \
	  cargo test -p ccr-e2e --locked --test chaos -- --nocapture

clean:
	cargo clean
	rm -rf crates/router-worker/build .wrangler
