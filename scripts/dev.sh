#!/usr/bin/env bash
# `make dev`: the Worker under `wrangler dev` on 127.0.0.1:8787 with state in .wrangler/state.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .dev.vars ]; then
  gen() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
  key=$(gen)
  sed -e "s/^CCR_API_KEY=$/CCR_API_KEY=$key/" \
      -e "s/^TELEGRAM_WEBHOOK_SECRET=$/TELEGRAM_WEBHOOK_SECRET=$(gen)/" \
      -e "s/^RELAY_TOKEN=$/RELAY_TOKEN=$(gen)/" .dev.vars.example > .dev.vars
  chmod 600 .dev.vars
  echo "dev: created .dev.vars with a new admin key, webhook secret and relay token."
  echo "     The admin key (shown this once; all three stay in .dev.vars):"
  echo "  CCR_API_KEY=$key"
  echo "  try: curl -H \"X-API-Key: $key\" http://127.0.0.1:8787/sessions"
fi
# wrangler runs the [build] command (scripts/build-worker.sh) now and again whenever the
# Worker's sources change.
export WRANGLER_SEND_METRICS=false
exec node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "${PORT:-8787}" \
  --persist-to .wrangler/state "$@"
