#!/usr/bin/env bash
# Scale-out: the same stack with 1, 2 and 3 workers, replies per second and order.
#
# A 3-node NATS cluster on loopback (streams and the ownership bucket with 3 replicas),
# redis-server, one tgpipe-ingress, N tgpipe-example-bot workers (partitioned
# consumption), and the Bot API stand-in answering every call after LATENCY_MS. The load
# generator delivers like Telegram (a chat's next update only after the 200 for its
# previous one, at most CONNECTIONS requests in flight) and matches every reply at the
# stand-in: replies/s, lost, duplicates, and updates answered out of order in their chat.
#
#   ./loadtest/bench/scale.sh                          # 6000 updates, 300 chats, 1 2 3 workers
#   WORKERS="1 3" UPDATES=12000 ./loadtest/bench/scale.sh
#
# Environment: UPDATES (6000), CHATS (300), CONNECTIONS (100, Telegram's maximum),
# LATENCY_MS (50), WORKERS ("1 2 3"), TGPIPE_CONCURRENCY (the workers', default 128 as shipped),
# ROUNDS (1; with more, each worker count's median round is reported).
# Every worker count gets a fresh cluster, Redis and stand-in record.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

UPDATES=${UPDATES:-6000}
CHATS=${CHATS:-300}
CONNECTIONS=${CONNECTIONS:-100}
LATENCY_MS=${LATENCY_MS:-50}
WORKERS=${WORKERS:-1 2 3}
ROUNDS=${ROUNDS:-1}
CONCURRENCY=${TGPIPE_CONCURRENCY:-128}
BOT_ID=123456
SECRET=scale-secret
TOKEN=$BOT_ID:scale-token

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
T=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-scale.XXXXXX)
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

# One pass: a fresh stack with $1 workers; prints the load generator's JSON report.
pass() {
  local n=$1 dir="$WORK/pass-$1-$2"
  mkdir -p "$dir"
  local ports=() cports=() routes=() urls=() i
  for i in 0 1 2; do
    ports+=("$(free_port)")
    cports+=("$(free_port)")
    routes+=("nats://127.0.0.1:${cports[$i]}")
    urls+=("nats://127.0.0.1:${ports[$i]}")
  done
  for i in 0 1 2; do
    "$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "${ports[$i]}" -js -n "n$i" -sd "$dir/nats$i" \
      --cluster_name scale --cluster "nats://127.0.0.1:${cports[$i]}" \
      --routes "$(IFS=,; echo "${routes[*]}")" >"$dir/nats$i.log" 2>&1 &
    PIDS+=($!)
  done
  local nats_url
  nats_url=$(IFS=,; echo "${urls[*]}")
  local redis sink ing
  redis=$(free_port)
  "$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$redis" --save '' --appendonly no \
    >"$dir/redis.log" 2>&1 & PIDS+=($!)
  sink=$(free_port)
  "$B/tgpipe-loadtest" sink --listen "127.0.0.1:$sink" --latency-ms "$LATENCY_MS" \
    >"$dir/sink.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$sink/_sink/stats" "the Bot API stand-in"
  ing=$(free_port)
  local ing_ops
  ing_ops=$(free_port)
  # The ingress creates the R3 streams once the cluster has a JetStream leader.
  NATS_URL=$nats_url TGPIPE_LISTEN=127.0.0.1:$ing TGPIPE_OPS_LISTEN=127.0.0.1:$ing_ops TGPIPE_BOTS=$BOT_ID:$SECRET \
    TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 TGPIPE_STREAM_REPLICAS=3 RUST_LOG=warn \
    "$B/tgpipe-ingress" >"$dir/ingress.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$ing_ops/readyz" tgpipe-ingress
  local w ops
  for w in $(seq 1 "$n"); do
    ops=$(free_port)
    NATS_URL=$nats_url REDIS_URL=redis://127.0.0.1:$redis TGPIPE_LISTEN=127.0.0.1:$ops \
      TGPIPE_BOT_TOKENS=$TOKEN TGPIPE_API_URL=http://127.0.0.1:$sink TGPIPE_RATE_LIMITS=off \
      TGPIPE_STREAM_REPLICAS=3 TGPIPE_CONCURRENCY=$CONCURRENCY TGPIPE_MEMBER=w$w RUST_LOG=warn \
      "$B/tgpipe-example-bot" run >"$dir/worker$w.log" 2>&1 & PIDS+=($!)
    wait_http "http://127.0.0.1:$ops/readyz" "worker $w"
  done
  # Ownership settles: every worker holds its share before the load starts.
  sleep 3
  "$B/tgpipe-loadtest" run --url "http://127.0.0.1:$ing" --secret "$SECRET" --bot-id "$BOT_ID" \
    --updates "$UPDATES" --chats "$CHATS" --connections "$CONNECTIONS" --mix text \
    --sink "http://127.0.0.1:$sink" --reply-timeout 120 --json | tail -n 1
  stop_all
}

log "scale-out: $UPDATES updates over $CHATS chats, $CONNECTIONS connections, stand-in at ${LATENCY_MS} ms, workers: $WORKERS"
printf '%s\n' "| workers | replies/s | accepted/s | lost | duplicates | out of order | p50 ms | p99 ms |"
printf '%s\n' "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
declare -A RATE
for n in $WORKERS; do
  reports=()
  for r in $(seq 1 "$ROUNDS"); do
    reports+=("$(pass "$n" "$r")")
  done
  line=$(printf '%s\n' "${reports[@]}" | python3 -c '
import json, statistics, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
rs.sort(key=lambda r: r["reply_per_s"])
r = rs[len(rs) // 2]
print(r["reply_per_s"], "| %d | %.0f | %.0f | %d | %d | %d | %.1f | %.1f |" % (
    int(sys.argv[1]), r["reply_per_s"], r["accept_per_s"], r["lost"], r["duplicates"],
    r["out_of_order"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]))
' "$n")
  RATE[$n]=${line%% *}
  echo "${line#* }"
done
first=${WORKERS%% *}
for n in $WORKERS; do
  [ "$n" = "$first" ] && continue
  python3 -c "print('$n workers / $first: %.2fx' % (${RATE[$n]} / ${RATE[$first]}))"
done
