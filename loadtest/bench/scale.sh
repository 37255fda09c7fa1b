#!/usr/bin/env bash
# Scale-out: the same stack with 1, 2, 3 (and 5) workers, replies per second, order, and
# each pod's share of the work.
#
# A 3-node NATS cluster on loopback (streams and the ownership bucket with 3 replicas),
# redis-server, one tgpipe-ingress, N tgpipe-example-bot workers (partitioned
# consumption), and the Bot API stand-in answering every call after LATENCY_MS. The load
# generator delivers like Telegram (a chat's next update only after the 200 for its
# previous one, at most CONNECTIONS requests in flight) and matches every reply at the
# stand-in: replies/s, lost, duplicates, and updates answered out of order in their chat.
# After the load, each worker's /metrics gives the updates it handled and the partitions
# it owned. A row per partition count and worker count: replies/s, and over the first
# row of its partition count (the fewest workers); each worker's share, and how far the
# busiest and the least busy worker are from an even share.
#
#   ./loadtest/bench/scale.sh                          # 6000 updates, 300 chats, 1 2 3 workers
#   WORKERS="1 3" UPDATES=12000 ./loadtest/bench/scale.sh
#   MODE=latency ./loadtest/bench/scale.sh             # 200 ms calls, 16 slots a pod, 1 2 3 5 workers
#   MODE=latency PARTITIONS="16 64" ./loadtest/bench/scale.sh
#   MODE=latency BALANCE="count backlog" ./loadtest/bench/scale.sh
#
# MODE=throughput (the default) loads the workers' CPU: 6000 updates, the stand-in at
# 50 ms, 128 run slots a pod. MODE=latency makes every update wait on the Bot API: 3000
# updates, the stand-in at 200 ms, 16 run slots a pod, so one pod answers at most 80
# updates a second and N pods should answer N times as many.
#
# Environment (defaults: throughput / latency): UPDATES (6000 / 3000), CHATS (300),
# CONNECTIONS (100, Telegram's maximum), LATENCY_MS (50 / 200), WORKERS ("1 2 3" /
# "1 2 3 5"), TGPIPE_CONCURRENCY (the workers' run slots, 128 / 16), PARTITIONS (the
# workers' TGPIPE_PARTITIONS, one pass of every worker count for each value listed;
# unset, their default: one per shard, 64), BALANCE (the workers' TGPIPE_BALANCE, one
# pass of every worker count for each value listed; backlog by default), ROUNDS (1; with more, each pass's median
# round is reported), SETTLE_TIMEOUT (60: seconds to wait for ownership to settle).
# Every pass gets a fresh cluster, Redis and stand-in record.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

MODE=${MODE:-throughput}
case $MODE in
  throughput) d_updates=6000 d_latency=50 d_workers="1 2 3" d_concurrency=128 ;;
  latency) d_updates=3000 d_latency=200 d_workers="1 2 3 5" d_concurrency=16 ;;
  *) echo "error: MODE is throughput or latency, not $MODE" >&2; exit 2 ;;
esac
UPDATES=${UPDATES:-$d_updates}
CHATS=${CHATS:-300}
CONNECTIONS=${CONNECTIONS:-100}
LATENCY_MS=${LATENCY_MS:-$d_latency}
WORKERS=${WORKERS:-$d_workers}
ROUNDS=${ROUNDS:-1}
CONCURRENCY=${TGPIPE_CONCURRENCY:-$d_concurrency}
# The workers' default: one partition per shard.
PARTITIONS=${PARTITIONS:-${TGPIPE_PARTITIONS:-${TGPIPE_SHARDS:-64}}}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-60}
BALANCE=${BALANCE:-${TGPIPE_BALANCE:-backlog}}
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

# The sum of a metric's samples (every label set) on a Prometheus page; 0 when the page
# cannot be read. With a third argument, only the samples whose labels contain it.
metric_sum() { # url, name, [label text]
  { curl -fsS "$1" 2>/dev/null || true; } |
    awk -v n="$2" -v f="${3:-}" '($1 == n || index($1, n "{") == 1) && index($1, f) { s += $NF } END { printf "%d\n", s }'
}

# Waits until the workers on the given ops ports own all $1 partitions between them,
# each its share (partitions / workers, rounded down or up), so the load meets a settled
# assignment rather than handovers.
wait_settled() { # partitions, ops port...
  local p=$1 o sum ok owned=()
  shift
  local lo=$((p / $#)) hi=$(((p + $# - 1) / $#))
  for _ in $(seq $((SETTLE_TIMEOUT * 5 + 1))); do
    owned=() sum=0 ok=1
    for port in "$@"; do
      o=$(metric_sum "http://127.0.0.1:$port/metrics" tgpipe_worker_partitions_owned)
      owned+=("$o")
      sum=$((sum + o))
      { [ "$o" -ge "$lo" ] && [ "$o" -le "$hi" ]; } || ok=0
    done
    [ "$ok" = 1 ] && [ "$sum" = "$p" ] && return 0
    sleep 0.2
  done
  echo "error: partition ownership did not settle within ${SETTLE_TIMEOUT}s: the workers own ${owned[*]} of $p partitions (each should own $lo to $hi)" >&2
  return 1
}

# One pass: a fresh stack with $1 workers, $2 partitions and TGPIPE_BALANCE=$4. Writes
# the load generator's JSON report to $dir/report.json and "handled owned" per worker to
# $dir/pods.
pass() { # workers, partitions, round, balance
  local n=$1 parts=$2 bal=$4 dir="$WORK/pass-$1-$2-$3-$4"
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
  local w ops=()
  for w in $(seq 1 "$n"); do
    ops+=("$(free_port)")
    NATS_URL=$nats_url REDIS_URL=redis://127.0.0.1:$redis TGPIPE_LISTEN=127.0.0.1:${ops[-1]} \
      TGPIPE_BOT_TOKENS=$TOKEN TGPIPE_API_URL=http://127.0.0.1:$sink TGPIPE_RATE_LIMITS=off \
      TGPIPE_STREAM_REPLICAS=3 TGPIPE_CONCURRENCY=$CONCURRENCY TGPIPE_PARTITIONS=$parts \
      TGPIPE_BALANCE=$bal TGPIPE_MEMBER=w$w RUST_LOG=warn \
      "$B/tgpipe-example-bot" run >"$dir/worker$w.log" 2>&1 & PIDS+=($!)
    wait_http "http://127.0.0.1:${ops[-1]}/readyz" "worker $w"
  done
  wait_settled "$parts" "${ops[@]}"
  "$B/tgpipe-loadtest" run --url "http://127.0.0.1:$ing" --secret "$SECRET" --bot-id "$BOT_ID" \
    --updates "$UPDATES" --chats "$CHATS" --connections "$CONNECTIONS" --mix text \
    --sink "http://127.0.0.1:$sink" --reply-timeout 120 --json | tail -n 1 >"$dir/report.json"
  # A reply reaches the stand-in before its handler returns: wait (10 s at most) until
  # the workers have counted every replied update as handled.
  local replied handled port
  replied=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["replied"])' "$dir/report.json")
  for _ in $(seq 50); do
    handled=0
    for port in "${ops[@]}"; do
      handled=$((handled + $(metric_sum "http://127.0.0.1:$port/metrics" tgpipe_worker_outcomes_total 'outcome="handled"')))
    done
    [ "$handled" -ge "$replied" ] && break
    sleep 0.2
  done
  : >"$dir/pods"
  for port in "${ops[@]}"; do
    echo "$(metric_sum "http://127.0.0.1:$port/metrics" tgpipe_worker_outcomes_total 'outcome="handled"')" \
      "$(metric_sum "http://127.0.0.1:$port/metrics" tgpipe_worker_partitions_owned)" >>"$dir/pods"
  done
  cut -d ' ' -f 1 /proc/loadavg >"$dir/load"
  stop_all
}

log "scale-out ($MODE): $UPDATES updates over $CHATS chats, $CONNECTIONS connections, stand-in at ${LATENCY_MS} ms, $CONCURRENCY run slots a worker, workers: $WORKERS, partitions: $PARTITIONS, balance: $BALANCE"
printf '%s\n' "| partitions | balance | workers | replies/s | vs first row | accepted/s | lost | duplicates | out of order | p50 ms | p99 ms | handled per worker (share, partitions owned) | share vs mean, busiest / least | load avg |"
printf '%s\n' "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
for parts in $PARTITIONS; do
 for bal in $BALANCE; do
  first=
  for n in $WORKERS; do
    dirs=()
    for r in $(seq 1 "$ROUNDS"); do
      pass "$n" "$parts" "$r" "$bal"
      dirs+=("$WORK/pass-$n-$parts-$r-$bal")
    done
    # The median round by replies/s, with its workers' shares.
    line=$(python3 - "$n" "$parts" "${first:-0}" "$bal" "${dirs[@]}" <<'PY'
import json, sys

n, parts, first, bal = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rounds = []
for d in sys.argv[5:]:
    r = json.load(open(f"{d}/report.json"))
    r["pods"] = [tuple(map(int, l.split())) for l in open(f"{d}/pods") if l.strip()]
    r["load"] = open(f"{d}/load").read().strip()
    rounds.append(r)
rounds.sort(key=lambda r: r["reply_per_s"])
r = rounds[len(rounds) // 2]
total = sum(h for h, _ in r["pods"]) or 1
shares = [h / total for h, _ in r["pods"]]
# The busiest worker sets the pass's end; the least busy one leaves slots idle.
most, least = max(shares) * n - 1, min(shares) * n - 1
pods = " / ".join(f"{h} ({100 * s:.1f}%, {o})" for (h, o), s in zip(r["pods"], shares))
ratio = f"{r['reply_per_s'] / first:.2f}x" if first else "1.00x"
print(r["reply_per_s"], "| %d | %s | %d | %.0f | %s | %.0f | %d | %d | %d | %.1f | %.1f | %s | %+.1f%% / %+.1f%% | %s |" % (
    parts, bal, n, r["reply_per_s"], ratio, r["accept_per_s"], r["lost"], r["duplicates"],
    r["out_of_order"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], pods, 100 * most,
    100 * least, r["load"]))
PY
)
    first=${first:-${line%% *}}
    echo "${line#* }"
  done
 done
done
