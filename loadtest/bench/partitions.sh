#!/usr/bin/env bash
# What a partition costs an idle stack: consumers, NATS messages, CPU and memory for each
# TGPIPE_PARTITIONS.
#
# For each partition count: a fresh 3-node NATS cluster on loopback (streams and the
# ownership bucket with 3 replicas, monitoring on), redis-server, one tgpipe-ingress, the
# Bot API stand-in and WORKERS idle tgpipe-example-bot workers. Once the workers own
# their shares of the partitions and WARMUP has passed, it measures over IDLE seconds:
# the CPU time of the nats-servers and of the workers (/proc/<pid>/stat), the messages
# the nats-servers took in and sent out (/varz; routes between them included) and those
# from and to their clients alone (/connz), their resident memory and the workers'
# (VmRSS), and the consumer replicas on the cluster (/jsz). Then the cost of one
# partition: each figure's change over the smallest count, divided by the partitions
# added.
#
#   ./loadtest/bench/partitions.sh                     # 16 32 64 partitions, 3 workers, 30 s idle
#   PARTITIONS="16 64" IDLE=60 ./loadtest/bench/partitions.sh
#
# Environment: PARTITIONS ("16 32 64"; at most TGPIPE_SHARDS, 64), WORKERS (3), IDLE (30,
# seconds measured), WARMUP (5, seconds between settled ownership and the measurement),
# SETTLE_TIMEOUT (60, seconds to wait for ownership to settle).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

PARTITIONS=${PARTITIONS:-16 32 64}
WORKERS=${WORKERS:-3}
IDLE=${IDLE:-30}
WARMUP=${WARMUP:-5}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-60}
BOT_ID=123456
SECRET=partitions-secret
TOKEN=$BOT_ID:partitions-token

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
T=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-partitions.XXXXXX)
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
# cannot be read.
metric_sum() { # url, name
  { curl -fsS "$1" 2>/dev/null || true; } |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }'
}

# Waits until the workers on the given ops ports own all $1 partitions between them,
# each its share (partitions / workers, rounded down or up).
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

# Samples, IDLE seconds apart, the CPU time of the nats-servers and of the workers and
# the servers' message counters; then reads memory and consumers. Prints one JSON line.
measure() { # nats pids (comma separated), worker pids (comma separated), monitor ports (comma separated)
  python3 - "$1" "$2" "$3" "$IDLE" <<'PY'
import json, os, sys, time, urllib.request

nats = [int(p) for p in sys.argv[1].split(",")]
workers = [int(p) for p in sys.argv[2].split(",")]
monitors = sys.argv[3].split(",")
idle = float(sys.argv[4])
tick = os.sysconf("SC_CLK_TCK")

def cpu(pids):
    total = 0
    for pid in pids:
        # utime and stime, the 14th and 15th fields; the name before them may hold spaces.
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick

def rss_mib(pids):
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024

def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)

def msgs():
    """Messages in and out of the servers (client and route traffic), and in from and
    out to their clients alone (the workers' pull requests, acks and lease writes; the
    deliveries, heartbeats and expired pulls they receive)."""
    ins = outs = from_clients = to_clients = 0
    for port in monitors:
        v = get(port, "/varz")
        ins += v["in_msgs"]
        outs += v["out_msgs"]
        for c in get(port, "/connz?limit=10000")["connections"]:
            from_clients += c["in_msgs"]
            to_clients += c["out_msgs"]
    return ins, outs, from_clients, to_clients

c0, w0, m0, t0 = cpu(nats), cpu(workers), msgs(), time.monotonic()
time.sleep(idle)
c1, w1, m1, t1 = cpu(nats), cpu(workers), msgs(), time.monotonic()
dt = t1 - t0
# Each server counts the consumers it holds a replica of.
replicas = sum(get(port, "/jsz")["consumers"] for port in monitors)
print(json.dumps({
    "nats_cpu": (c1 - c0) / dt, "worker_cpu": (w1 - w0) / dt,
    "in_per_s": (m1[0] - m0[0]) / dt, "out_per_s": (m1[1] - m0[1]) / dt,
    "from_clients_per_s": (m1[2] - m0[2]) / dt, "to_clients_per_s": (m1[3] - m0[3]) / dt,
    "nats_rss": rss_mib(nats), "worker_rss": rss_mib(workers),
    "consumer_replicas": replicas, "load": open("/proc/loadavg").read().split()[0],
}))
PY
}

# One pass: a fresh idle stack whose workers run $1 partitions; prints measure's line.
pass() { # partitions
  local parts=$1 dir="$WORK/pass-$1"
  mkdir -p "$dir"
  local ports=() cports=() mports=() routes=() urls=() nats_pids=() i
  for i in 0 1 2; do
    ports+=("$(free_port)")
    cports+=("$(free_port)")
    mports+=("$(free_port)")
    routes+=("nats://127.0.0.1:${cports[$i]}")
    urls+=("nats://127.0.0.1:${ports[$i]}")
  done
  for i in 0 1 2; do
    "$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "${ports[$i]}" -m "${mports[$i]}" -js -n "n$i" -sd "$dir/nats$i" \
      --cluster_name partitions --cluster "nats://127.0.0.1:${cports[$i]}" \
      --routes "$(IFS=,; echo "${routes[*]}")" >"$dir/nats$i.log" 2>&1 &
    PIDS+=($!)
    nats_pids+=($!)
  done
  local nats_url
  nats_url=$(IFS=,; echo "${urls[*]}")
  local redis sink ing ing_ops
  redis=$(free_port)
  "$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$redis" --save '' --appendonly no \
    >"$dir/redis.log" 2>&1 & PIDS+=($!)
  sink=$(free_port)
  "$B/tgpipe-loadtest" sink --listen "127.0.0.1:$sink" >"$dir/sink.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$sink/_sink/stats" "the Bot API stand-in"
  ing=$(free_port)
  ing_ops=$(free_port)
  # The ingress creates the R3 streams once the cluster has a JetStream leader.
  NATS_URL=$nats_url TGPIPE_LISTEN=127.0.0.1:$ing TGPIPE_OPS_LISTEN=127.0.0.1:$ing_ops TGPIPE_BOTS=$BOT_ID:$SECRET \
    TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 TGPIPE_STREAM_REPLICAS=3 RUST_LOG=warn \
    "$B/tgpipe-ingress" >"$dir/ingress.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$ing_ops/readyz" tgpipe-ingress
  local w ops=() worker_pids=()
  for w in $(seq 1 "$WORKERS"); do
    ops+=("$(free_port)")
    NATS_URL=$nats_url REDIS_URL=redis://127.0.0.1:$redis TGPIPE_LISTEN=127.0.0.1:${ops[-1]} \
      TGPIPE_BOT_TOKENS=$TOKEN TGPIPE_API_URL=http://127.0.0.1:$sink TGPIPE_RATE_LIMITS=off \
      TGPIPE_STREAM_REPLICAS=3 TGPIPE_PARTITIONS=$parts TGPIPE_MEMBER=w$w RUST_LOG=warn \
      "$B/tgpipe-example-bot" run >"$dir/worker$w.log" 2>&1 & PIDS+=($!)
    worker_pids+=($!)
    wait_http "http://127.0.0.1:${ops[-1]}/readyz" "worker $w"
  done
  wait_settled "$parts" "${ops[@]}"
  sleep "$WARMUP"
  measure "$(IFS=,; echo "${nats_pids[*]}")" "$(IFS=,; echo "${worker_pids[*]}")" \
    "$(IFS=,; echo "${mports[*]}")" >"$dir/idle.json"
  stop_all
}

log "partition cost: $WORKERS idle workers, partitions: $PARTITIONS, ${IDLE}s measured after ${WARMUP}s"
args=()
for parts in $PARTITIONS; do
  pass "$parts"
  args+=("$parts" "$WORK/pass-$parts/idle.json")
done
python3 - "${args[@]}" <<'PY'
import json, sys

runs = [(int(sys.argv[i]), json.load(open(sys.argv[i + 1]))) for i in range(1, len(sys.argv), 2)]
cols = [
    ("consumer replicas", "consumer_replicas", "%d", "%.1f"),
    ("NATS msgs in/s", "in_per_s", "%.0f", "%.1f"),
    ("NATS msgs out/s", "out_per_s", "%.0f", "%.1f"),
    ("from clients/s", "from_clients_per_s", "%.0f", "%.1f"),
    ("to clients/s", "to_clients_per_s", "%.0f", "%.1f"),
    ("nats-server CPU %", "nats_cpu", "%.1f", "%.2f"),
    ("worker CPU %", "worker_cpu", "%.1f", "%.2f"),
    ("nats-server RSS MiB", "nats_rss", "%.1f", "%.2f"),
    ("worker RSS MiB", "worker_rss", "%.1f", "%.2f"),
]
pct = {"nats_cpu", "worker_cpu"}
value = lambda r, k: 100 * r[k] if k in pct else r[k]
print("| partitions | " + " | ".join(c[0] for c in cols) + " | load avg |")
print("| ---: " * (len(cols) + 2) + "|")
for p, r in runs:
    print(f"| {p} | " + " | ".join(f % value(r, k) for _, k, f, _ in cols) + f" | {r['load']} |")
p0, r0 = runs[0]
for p, r in runs[1:]:
    print(f"| per partition, {p0} to {p} | "
          + " | ".join(("%+" + g[1:]) % ((value(r, k) - value(r0, k)) / (p - p0)) for _, k, _, g in cols) + " | |")
PY
