#!/usr/bin/env bash
# Isolation: how long the chats and bots beside a flood wait for their replies (issue 23).
#
# One nats-server, redis-server, one tgpipe-ingress serving two bots, one
# tgpipe-example-bot worker and the Bot API stand-in (release builds). Two cases, each
# measured alone and beside its flood, every pass on a fresh stack:
#
# - flood: Telegram's rate limits in the worker (1 reply a second in a private chat);
#   one chat delivers FLOOD_UPDATES updates back to back (over TGPIPE_MAX_HELD_PER_CHAT,
#   2048 by default), then VICTIMS other chats send one update each.
# - fair share: the stand-in answers after 100 ms, the worker runs SLOTS chats at once;
#   bot A delivers BACKLOG updates over BACKLOG_CHATS chats, then (2 s after A's last
#   one was stored) bot B's B_UPDATES chats send one update each.
#
# The victims' latency (first send to first reply, matched at the stand-in by
# `tgpipe-loadtest run`) is reported as p50 / p99 / max, with how many were answered
# within REPLY_TIMEOUT seconds.
#
#   ./loadtest/bench/isolation.sh
#   FLOOD_UPDATES=5000 BACKLOG=20000 ./loadtest/bench/isolation.sh
#
# Environment: FLOOD_UPDATES (2500), VICTIMS (40), BACKLOG (10000), BACKLOG_CHATS (1000),
# B_UPDATES (10), SLOTS (8), REPLY_TIMEOUT (30).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

FLOOD_UPDATES=${FLOOD_UPDATES:-2500}
VICTIMS=${VICTIMS:-40}
BACKLOG=${BACKLOG:-10000}
BACKLOG_CHATS=${BACKLOG_CHATS:-1000}
B_UPDATES=${B_UPDATES:-10}
SLOTS=${SLOTS:-8}
REPLY_TIMEOUT=${REPLY_TIMEOUT:-30}
BOT_A=123456
BOT_B=654321
SECRET=isolation-secret

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
T=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-isolation.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/bin"
for b in tgpipe-ingress tgpipe-example-bot tgpipe-loadtest; do cp "$T/$b" "$WORK/bin/"; done
B=$WORK/bin

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

# A fresh stack: the stand-in answering after $1 ms, one worker with the environment
# given after it. Sets INGRESS and SINK.
stack() {
  local latency=$1 dir
  shift
  dir=$(mktemp -d "$WORK/pass.XXXX")
  local nats redis ops ing_ops
  nats=$(free_port)
  "$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$nats" -js -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
  PIDS+=($!)
  redis=$(free_port)
  "$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$redis" --save '' --appendonly no \
    >"$dir/redis.log" 2>&1 & PIDS+=($!)
  SINK=http://127.0.0.1:$(free_port)
  "$B/tgpipe-loadtest" sink --listen "${SINK#http://}" --latency-ms "$latency" \
    >"$dir/sink.log" 2>&1 & PIDS+=($!)
  wait_http "$SINK/_sink/stats" "the Bot API stand-in"
  INGRESS=http://127.0.0.1:$(free_port)
  ing_ops=$(free_port)
  NATS_URL=nats://127.0.0.1:$nats TGPIPE_LISTEN=${INGRESS#http://} \
    TGPIPE_OPS_LISTEN=127.0.0.1:$ing_ops TGPIPE_BOTS=$BOT_A:$SECRET,$BOT_B:$SECRET \
    TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 RUST_LOG=warn \
    "$B/tgpipe-ingress" >"$dir/ingress.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$ing_ops/readyz" tgpipe-ingress
  ops=$(free_port)
  env NATS_URL=nats://127.0.0.1:$nats REDIS_URL=redis://127.0.0.1:$redis \
    TGPIPE_LISTEN=127.0.0.1:$ops TGPIPE_BOT_TOKENS=$BOT_A:token-a,$BOT_B:token-b \
    TGPIPE_API_URL="$SINK" RUST_LOG=warn "$@" \
    "$B/tgpipe-example-bot" run >"$dir/worker.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$ops/readyz" "the worker"
  # Ownership settles: the worker holds every partition before the load starts.
  sleep 3
}

# Delivers like Telegram, without waiting for replies: `background <bot> <updates>
# <chats> <first chat> <first update_id> [connections]`.
background() {
  "$B/tgpipe-loadtest" run --url "$INGRESS" --secret "$SECRET" --bot-id "$1" \
    --updates "$2" --chats "$3" --first-chat "$4" --first-id "$5" \
    --connections "${6:-100}" --mix text 2>/dev/null
}

# The victims: `victims <bot> <updates> <first chat> <first update_id>`, one update per
# chat, replies matched; prints the report's JSON line.
victims() {
  "$B/tgpipe-loadtest" run --url "$INGRESS" --secret "$SECRET" --bot-id "$1" \
    --updates "$2" --chats "$2" --first-chat "$3" --first-id "$4" --connections 100 \
    --mix text --sink "$SINK" --reply-timeout "$REPLY_TIMEOUT" --json 2>/dev/null | tail -n 1
}

# A table row from a victims' report: `row <case> <report>`. A victim not answered
# within the timeout counts as slower than it: the percentiles it reaches read "> N s".
row() {
  python3 -c '
import json, math, sys
case, r, timeout = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
n, answered, l = r["accepted"], r["replied"], r["latency_ms"]
def cell(p, v):
    return ("> %s s" % timeout) if math.ceil(p / 100 * n) > answered else "%.0f" % v
print("| %s | %d of %d | %s | %s | %s |" % (case, answered, n, cell(50, l["p50"]),
      cell(99, l["p99"]), cell(100, l["max"])))
' "$1" "$2" "$REPLY_TIMEOUT"
}

log "isolation: a chat flooding $FLOOD_UPDATES updates beside $VICTIMS chats (Telegram's limits); bot A's $BACKLOG updates over $BACKLOG_CHATS chats beside bot B's $B_UPDATES ($SLOTS slots, stand-in at 100 ms)"
printf '%s\n' "| case | victims answered within ${REPLY_TIMEOUT} s | p50 ms | p99 ms | max ms |"
printf '%s\n' "| --- | ---: | ---: | ---: | ---: |"

# Flood: the worker keeps Telegram's limits (the default), and the stand-in answers at once.
stack 0 TGPIPE_RATE_LIMITS=telegram
row "$VICTIMS chats alone" "$(victims $BOT_A "$VICTIMS" 30000000 1000000)"
stop_all
stack 0 TGPIPE_RATE_LIMITS=telegram
background $BOT_A "$FLOOD_UPDATES" 1 20000000 2000000 1
row "$VICTIMS chats beside one chat's $FLOOD_UPDATES" "$(victims $BOT_A "$VICTIMS" 30000000 3000000)"
stop_all

# Fair share: two bots on one lane, $SLOTS slots, the stand-in at 100 ms.
stack 100 TGPIPE_RATE_LIMITS=off TGPIPE_CONCURRENCY="$SLOTS"
row "bot B's $B_UPDATES alone" "$(victims $BOT_B "$B_UPDATES" 50000000 4000000)"
stop_all
stack 100 TGPIPE_RATE_LIMITS=off TGPIPE_CONCURRENCY="$SLOTS"
background $BOT_A "$BACKLOG" "$BACKLOG_CHATS" 40000000 5000000
sleep 2
row "bot B's $B_UPDATES beside bot A's $BACKLOG" "$(victims $BOT_B "$B_UPDATES" 50000000 6000000)"
stop_all
