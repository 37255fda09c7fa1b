#!/usr/bin/env bash
# Ingress vs a bare handler under Telegram's delivery model: tgpipe-loadtest run, at most
# 40 connections (Telegram's default max_connections), one update per chat in flight,
# retries on non-2xx. Both targets in one run; checks the ingress's own count of 200s.
#
#   ./loadtest/bench/delivery.sh                  # 30000 updates over 1000 chats
#   UPDATES=100000 CHATS=5000 CONNECTIONS=100 ./loadtest/bench/delivery.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

UPDATES=${UPDATES:-30000}
CHATS=${CHATS:-1000}
CONNECTIONS=${CONNECTIONS:-40}
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
T=$(build_release tgpipe-ingress tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

BASE=$(free_port); NATS=$(free_port); ING=$(free_port)
"$T/tgpipe-loadtest" baseline --listen "127.0.0.1:$BASE" 2>/dev/null & PIDS+=($!)
"$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$NATS" -js -sd "$WORK/nats" >/dev/null 2>&1 & PIDS+=($!)
sleep 1
ING_OPS=$(free_port)
NATS_URL=nats://127.0.0.1:$NATS TGPIPE_LISTEN=127.0.0.1:$ING TGPIPE_OPS_LISTEN=127.0.0.1:$ING_OPS TGPIPE_BOTS=123456:bench-secret \
  TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 RUST_LOG=warn "$T/tgpipe-ingress" >"$WORK/ingress.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$ING_OPS/readyz" >/dev/null && break; sleep 0.1; done

run() { "$T/tgpipe-loadtest" run --url "$1" --secret bench-secret --bot-id 123456 \
  --updates "$UPDATES" --chats "$CHATS" --connections "$CONNECTIONS" --json 2>/dev/null; }
log "tgpipe-loadtest run -> bare axum handler ($UPDATES updates, $CHATS chats, $CONNECTIONS connections)"
B=$(run "http://127.0.0.1:$BASE")
log "tgpipe-loadtest run -> tgpipe-ingress"
I=$(run "http://127.0.0.1:$ING")
COUNTED=$(curl -fsS "127.0.0.1:$ING_OPS/metrics" | sed -n 's/^tgpipe_ingress_requests_total{bot="123456",status="200"} //p')
python3 - "$B" "$I" "${COUNTED:-0}" <<'PY'
import json, sys
b, i, counted = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(float(sys.argv[3]))
print("| target | accepted | rejected | retried | accepted/s |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, r in (("bare axum handler", b), ("tgpipe-ingress (durable publish)", i)):
    print("| %s | %d | %d | %d | %.0f |" % (name, r["accepted"], r["rejected"], r["retried"], r["accept_per_s"]))
print()
print("ratio ingress / bare handler: %.2f (target >= 0.60)" % (i["accept_per_s"] / b["accept_per_s"]))
print("ingress's own count of 200 answers: %d (the generator counted %d accepted)" % (counted, i["accepted"]))
PY
