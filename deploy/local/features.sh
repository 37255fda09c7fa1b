#!/usr/bin/env bash
# Keeps the framework-only build true: `tgpipe --no-default-features` (the framework,
# for a crate of handlers and its unit tests) and `tgpipe-bot --no-default-features`
# (the Bot API client) depend on no broker client, HTTP server, CLI parser, Redis
# client, metrics exporter or trace exporter, and they build, with every test and
# benchmark that does not name a feature. The same for `tgpipe-shared` without features
# (the wire contract).
#
# `cargo tree` takes about a second. The `cargo check`s type-check the framework and its
# feature-free tests once more without the runtime (about a minute on two cores, cached
# after): the price of noticing a `use` of a gated module in the framework.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

# Crates only the runtime may pull in. reqwest (the Bot API client) stays, and with it
# hyper's and hyper-util's client halves: their server features are checked below.
forbidden='async-nats axum axum-core clap redis metrics-exporter-prometheus
  opentelemetry opentelemetry_sdk opentelemetry-otlp tracing-opentelemetry
  tracing-subscriber'

failed=0
check_tree() { # package
  local tree features c before=$failed
  tree=$(cargo tree -p "$1" --no-default-features -e normal --prefix none --locked)
  for c in $forbidden; do
    if grep -q "^$c v" <<<"$tree"; then
      log "FAIL: $1 --no-default-features depends on $c:"
      cargo tree -p "$1" --no-default-features -e normal --locked -i "$c" >&2
      failed=1
    fi
  done
  features=$(cargo tree -p "$1" --no-default-features -e normal,features --prefix none --locked)
  if grep -Eq '^hyper(-util)? feature "server' <<<"$features"; then
    log "FAIL: $1 --no-default-features builds an HTTP server (hyper's \"server\" feature):"
    cargo tree -p "$1" --no-default-features -e normal,features --locked -i hyper >&2
    failed=1
  fi
  [ "$failed" = "$before" ] || return 0
  log "$1 --no-default-features: $(sed 's/ (\*)$//' <<<"$tree" | sort -u | wc -l) crates, none of the runtime's"
}

check_tree tgpipe-shared
check_tree tgpipe-bot
check_tree tgpipe
[ "$failed" = 0 ] || exit 1

log "cargo check tgpipe-shared, tgpipe-bot, tgpipe --no-default-features"
cargo check -p tgpipe-shared --no-default-features --lib --locked
cargo check -p tgpipe-bot -p tgpipe --no-default-features --all-targets --locked
