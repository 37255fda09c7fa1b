#!/usr/bin/env bash
# The ingress with many registry bots: its resident memory with one bot and after
# BOTS more are added at runtime with `bots add` (no restart), and that the last bot
# added is served. One nats-server, the Bot API stand-in, one tgpipe-ingress.
#
#   ./loadtest/bench/registry.sh              # BOTS=1000
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

BOTS=${BOTS:-1000}
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
B=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-registry.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

nats=$(free_port); mon=$(free_port); sink=$(free_port); web=$(free_port); ops=$(free_port)
"$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$nats" -m "$mon" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$mon/healthz?js-enabled-only=true" nats-server
"$B/tgpipe-loadtest" sink --listen "127.0.0.1:$sink" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$sink/_sink/stats" "the Bot API stand-in"
export NATS_URL="nats://127.0.0.1:$nats" TGPIPE_API_URL="http://127.0.0.1:$sink" \
  TGPIPE_WEBHOOK_URL=https://hooks.example.com RUST_LOG=warn
"$B/tgpipe-ingress" provision >/dev/null
add() { TGPIPE_NEW_BOT_TOKEN="$1:bench-token-$1" "$B/tgpipe-example-bot" bots add >/dev/null; }
add 1000000

TGPIPE_ALLOWED_CIDRS=any TGPIPE_LISTEN="127.0.0.1:$web" TGPIPE_OPS_LISTEN="127.0.0.1:$ops" \
  "$B/tgpipe-ingress" >"$WORK/ingress.log" 2>&1 & ING=$!; PIDS+=($ING)
wait_http "http://127.0.0.1:$ops/readyz" tgpipe-ingress
rss() { awk '/^VmRSS/ {print $2}' "/proc/$ING/status"; }
sleep 2
one=$(rss)
log "adding $BOTS bots with bots add"
start=$(date +%s)
for i in $(seq 1 "$BOTS"); do add $((1000000 + i)); done
log "added in $(( $(date +%s) - start )) s"
sleep 3
many=$(rss)
# The last one is served: its secret is what setWebhook was given.
last=$((1000000 + BOTS))
secret=$(curl -fsS "http://127.0.0.1:$sink/_sink/calls?since=0" | python3 -c "
import json, sys
calls = [c for c in json.load(sys.stdin) if c['method'] == 'setWebhook' and c['params'].get('url', '').endswith('/$last')]
print(calls[-1]['params']['secret_token'])")
status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Telegram-Bot-Api-Secret-Token: $secret" \
  -H 'Content-Type: application/json' \
  -d '{"update_id":1,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"text":"hi"}}' \
  "http://127.0.0.1:$web/webhook/$last")
echo "ingress VmRSS: 1 registry bot ${one} KiB; $((BOTS + 1)) bots ${many} KiB; +$(( (many - one) )) KiB ($(( (many - one) * 1024 / BOTS )) bytes per bot); bot $last answered $status"
[ "$status" = 200 ]
