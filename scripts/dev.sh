#!/usr/bin/env bash
# `make dev`: the Worker under `wrangler dev` on 127.0.0.1:8787 with state in .wrangler/state.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .dev.vars ]; then
  key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  sed "s/^CCR_API_KEY=$/CCR_API_KEY=$key/" .dev.vars.example > .dev.vars
  chmod 600 .dev.vars
  echo "dev: created .dev.vars with a new admin key (shown once; it stays in .dev.vars):"
  echo "  CCR_API_KEY=$key"
  echo "  try: curl -H \"X-API-Key: $key\" http://127.0.0.1:8787/sessions"
fi
export CCR_SKIP_BUILD=1 WRANGLER_SEND_METRICS=false
exec node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "${PORT:-8787}" \
  --persist-to .wrangler/state "$@"
