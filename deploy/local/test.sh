#!/usr/bin/env bash
# Runs every test of tgpipe on this machine: formatting, clippy, the framework-only
# build (deploy/local/features.sh), the unit and integration tests (against real
# nats-server and redis-server processes that the test harness starts on free ports, one
# private pair per test), the doc tests, and the Helm chart's offline validation.
# Installs nats-server and redis-server when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

ensure_nats_server
ensure_redis_server
log "nats-server: $TGPIPE_NATS_SERVER ($("$TGPIPE_NATS_SERVER" --version))"
log "redis-server: $TGPIPE_REDIS_SERVER ($("$TGPIPE_REDIS_SERVER" --version | cut -d' ' -f3))"

# Every server a test starts keeps its files under this directory; whatever a killed
# test leaves running is stopped on the way out.
TMPDIR=$(mktemp -d -t tgpipe-test.XXXXXX)
export TMPDIR
cleanup() {
  pkill -f -- "$TMPDIR" 2>/dev/null || true
  rm -rf -- "$TMPDIR"
}
trap cleanup EXIT

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "framework without the runtime (cargo features)"
bash deploy/local/features.sh
log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # The tests that measure times (failover and handover on a 3-node NATS cluster, a
  # rolling change of the partition count there, timers
  # firing on time through a pod kill and a leader loss there, the
  # registry watch under leader loss, the resumption after a Redis outage, isolation
  # between chats and bots, the load of a 300,000-record registry, alone and by the binaries) run after the others,
  # one at a time, so that other tests do not stretch them.
  timed='binary(partitions) | binary(repartition) | binary(timers_cluster) | binary(registry_cluster) | binary(redis_outage) | binary(isolation) | binary(registry_load) | binary(registry_scale)'
  cargo nextest run --workspace --locked --profile ci -E "not ($timed)"
  log "tests: timed (3-node NATS cluster: partitions, registry watch; a Redis outage; isolation; a large registry)"
  cargo nextest run --workspace --locked --profile ci -E "$timed"
else
  cargo test --workspace --locked --all-targets
fi
log "doc tests"
cargo test --workspace --locked --doc
log "cargo doc (every crate's front page and links, -D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
if [ -f deploy/helm-test/run.sh ]; then
  log "helm chart"
  bash deploy/helm-test/run.sh
fi
log "all checks passed"
