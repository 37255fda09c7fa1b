#!/usr/bin/env bash
# Instructions per request: tgpipe-ingress (durable publish) vs the bare axum handler,
# and per echoed update for the worker (tgpipe-example-bot, the compare.sh mix), each
# run under valgrind's callgrind, which counts instructions rather than seconds:
# the figure does not move with the machine's other load, so a change to the ingress's
# hot path can be measured on a busy machine (ingress.sh and delivery.sh cannot).
#
#   ./loadtest/bench/instructions.sh               # 2000 and 6000 updates per target
#   SMALL=1000 LARGE=4000 ./loadtest/bench/instructions.sh
#   KEEP=/tmp/cg ./loadtest/bench/instructions.sh  # keeps the callgrind files (callgrind_annotate)
#   TARGETS=worker ./loadtest/bench/instructions.sh  # baseline, ingress, worker (default: all)
#
# Each target is started twice and sent SMALL, then LARGE updates (Telegram's delivery,
# 40 connections, 1000 chats); the difference of the two totals divided by LARGE - SMALL
# is the cost of one request without start-up and shutdown. The nats-server is not
# counted (it runs natively). The worker is measured behind a native ingress, with
# redis-server and the Bot API stand-in, answering the mix text,command,callback,member
# (25000 Bot API calls per 20000 updates) with rate limits off, as in compare.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

SMALL=${SMALL:-2000}
LARGE=${LARGE:-6000}
TARGETS=${TARGETS:-baseline ingress worker}
command -v valgrind >/dev/null || { log "installing valgrind"; apt-get update -qq && apt-get install -y -qq valgrind; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
T=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/callgrind.* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

NATS=$(free_port); REDIS=$(free_port); SINK=$(free_port); ING=$(free_port); ING_OPS=$(free_port)
"$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$NATS" -js -sd "$WORK/nats" >/dev/null 2>&1 & PIDS+=($!)
"$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS" --save '' --appendonly no --dir "$WORK" >/dev/null 2>&1 & PIDS+=($!)
"$T/tgpipe-loadtest" sink --listen "127.0.0.1:$SINK" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
sleep 1
if [[ " $TARGETS " == *" worker "* ]]; then
  # The worker's updates come through a native ingress.
  NATS_URL=nats://127.0.0.1:$NATS TGPIPE_LISTEN=127.0.0.1:$ING TGPIPE_OPS_LISTEN=127.0.0.1:$ING_OPS \
    TGPIPE_BOTS=123456:bench-secret TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 RUST_LOG=warn \
    "$T/tgpipe-ingress" >"$WORK/ingress.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$ING_OPS/readyz"
fi

# update_ids differ between all passes (measure runs in a subshell: the next id is kept
# in a file), or the broker's and the worker's duplicate checks would skip them.
echo 1 >"$WORK/next_id"
# Total instructions (callgrind's "summary") of one target's life with $2 updates sent.
measure() { # target (baseline|ingress), updates -> instructions
  local target=$1 n=$2 port ops pid out=$WORK/callgrind.$1.$2
  port=$(free_port); ops=$(free_port)
  local url="http://127.0.0.1:$port" extra=()
  if [ "$target" = worker ]; then
    NATS_URL=nats://127.0.0.1:$NATS REDIS_URL=redis://127.0.0.1:$REDIS TGPIPE_LISTEN=127.0.0.1:$ops \
      TGPIPE_BOT_TOKENS=123456:bench-token TGPIPE_API_URL=http://127.0.0.1:$SINK TGPIPE_RATE_LIMITS=off \
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$T/tgpipe-example-bot" run 2>"$WORK/vg.log" & pid=$!
    for _ in $(seq 600); do curl -fs "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done
    url="http://127.0.0.1:$ING"
    # At a steady rate the worker keeps up under callgrind (about 50x slower), within its
    # Redis and Bot API timeouts.
    extra=(--sink "http://127.0.0.1:$SINK" --mix text,command,callback,member --reply-timeout 300 --rate "${WORKER_RATE:-100}")
    curl -fsS -X POST "http://127.0.0.1:$SINK/_sink/reset" >/dev/null
  elif [ "$target" = baseline ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$T/tgpipe-loadtest" baseline --listen "127.0.0.1:$port" 2>"$WORK/vg.log" & pid=$!
    for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  else
    NATS_URL=nats://127.0.0.1:$NATS TGPIPE_LISTEN=127.0.0.1:$port TGPIPE_OPS_LISTEN=127.0.0.1:$ops \
      TGPIPE_BOTS=123456:bench-secret TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 RUST_LOG=warn \
      valgrind --tool=callgrind --callgrind-out-file="$out" "$T/tgpipe-ingress" 2>"$WORK/vg.log" & pid=$!
    for _ in $(seq 600); do curl -fs "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done
  fi
  local first; first=$(cat "$WORK/next_id"); echo $((first + n)) >"$WORK/next_id"
  "$T/tgpipe-loadtest" run --url "$url" --secret bench-secret --bot-id 123456 \
    --updates "$n" --chats 1000 --connections 40 --first-id "$first" "${extra[@]}" \
    --json >"$WORK/run.json" 2>/dev/null
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["accepted"] == int(sys.argv[2]) else 1)' \
    "$WORK/run.json" "$n" || { echo "error: $target did not accept all $n updates" >&2; kill "$pid"; exit 1; }
  if [ "$target" = worker ]; then
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["replied"] == int(sys.argv[2]) and r["lost"] == 0 else 1)' \
      "$WORK/run.json" "$n" || { echo "error: the worker did not answer all $n updates" >&2; kill "$pid"; exit 1; }
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  sed -n 's/^summary: //p' "$out"
}

declare -A PER
for target in $TARGETS; do
  log "$target under callgrind: $SMALL, then $LARGE updates"
  small=$(measure "$target" "$SMALL") && [ -n "$small" ] || exit 1
  large=$(measure "$target" "$LARGE") && [ -n "$large" ] || exit 1
  PER[$target]=$(( (large - small) / (LARGE - SMALL) ))
done

echo
echo "| target | instructions per update |"
echo "| --- | ---: |"
[ -n "${PER[baseline]:-}" ] && echo "| bare axum handler | ${PER[baseline]} |"
[ -n "${PER[ingress]:-}" ] && echo "| tgpipe-ingress (durable publish) | ${PER[ingress]} |"
[ -n "${PER[worker]:-}" ] && echo "| tgpipe-example-bot (worker, echoed update) | ${PER[worker]} |"
echo
if [ -n "${PER[baseline]:-}" ] && [ -n "${PER[ingress]:-}" ]; then
  python3 -c 'import sys; print("ingress / bare handler, instructions: %.2fx" % (int(sys.argv[2]) / int(sys.argv[1])))' \
    "${PER[baseline]}" "${PER[ingress]}"
fi
