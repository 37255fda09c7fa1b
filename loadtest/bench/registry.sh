#!/usr/bin/env bash
# A fresh ingress and worker on a large bot registry: how long until the last bot's
# update is answered, and the resident memory of each then. Run once with one record
# (the baseline) and once with RECORDS. Each run: a fresh nats-server, `provision`, the
# records written to both buckets (as `bots add` writes them), then tgpipe-ingress and
# a tgpipe-example-bot worker started together, the Bot API stand-in and a redis-server.
#
#   ./loadtest/bench/registry.sh              # RECORDS=100000
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

RECORDS=${RECORDS:-100000}
FIRST=1000000
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
B=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)

WORK=$(mktemp -d -t tgpipe-registry.XXXXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_all; rm -rf "$WORK"' EXIT

# Writes records FIRST+1 ..= FIRST+n to both buckets over the NATS protocol, every
# write acknowledged by JetStream; the secret is "bench-secret".
fill() { # port, n
  python3 - "$1" "$2" "$FIRST" <<'PY'
import hashlib, json, socket, sys
port, n, first = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
digest = "sha256:" + hashlib.sha256(b"bench-secret").hexdigest()
s = socket.create_connection(("127.0.0.1", port))
s.recv(4096)
out = [b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB fill.acks 1\r\n']
for i in range(first + 1, first + n + 1):
    main = json.dumps({"id": i, "state": "active", "token": f"{i}:bench-token-{i}", "secret": digest}).encode()
    hook = json.dumps({"id": i, "state": "active", "secret": digest}).encode()
    for bucket, body in (("tgpipe_bots", main), ("tgpipe_bots_webhooks", hook)):
        out.append(b"PUB $KV.%s.%d fill.acks %d\r\n%s\r\n" % (bucket.encode(), i, len(body), body))
s.sendall(b"".join(out))
acks, buf = 0, b""
while acks < 2 * n:
    buf += s.recv(1 << 20)
    acks += buf.count(b"MSG fill.acks")
    if b"-ERR" in buf or b'"error"' in buf:
        sys.exit(f"a write was refused: {buf[:300]!r}")
    buf = buf[buf.rfind(b"\n") + 1:] if b"MSG fill.acks" in buf else buf
PY
}

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

run() { # records
  local n=$1 nats mon sink web ops wops redis
  nats=$(free_port); mon=$(free_port); sink=$(free_port); web=$(free_port); ops=$(free_port); wops=$(free_port); redis=$(free_port)
  rm -rf "$WORK/js"
  "$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$nats" -m "$mon" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 & PIDS+=($!)
  "$TGPIPE_REDIS_SERVER" --port "$redis" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$mon/healthz?js-enabled-only=true" nats-server
  "$B/tgpipe-loadtest" sink --listen "127.0.0.1:$sink" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$sink/_sink/stats" "the Bot API stand-in"
  NATS_URL="nats://127.0.0.1:$nats" RUST_LOG=warn "$B/tgpipe-ingress" provision >/dev/null
  local t0; t0=$(date +%s.%N)
  fill "$nats" "$n"
  log "$n records written to both buckets in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"

  local start; start=$(date +%s.%N)
  NATS_URL="nats://127.0.0.1:$nats" TGPIPE_ALLOWED_CIDRS=any TGPIPE_LISTEN="127.0.0.1:$web" \
    TGPIPE_OPS_LISTEN="127.0.0.1:$ops" RUST_LOG=info \
    "$B/tgpipe-ingress" >"$WORK/ingress-$n.log" 2>&1 & local ing=$!; PIDS+=($ing)
  NATS_URL="nats://127.0.0.1:$nats" REDIS_URL="redis://127.0.0.1:$redis" TGPIPE_API_URL="http://127.0.0.1:$sink" \
    TGPIPE_LISTEN="127.0.0.1:$wops" TGPIPE_RATE_LIMITS=off RUST_LOG=info \
    "$B/tgpipe-example-bot" >"$WORK/worker-$n.log" 2>&1 & local wrk=$!; PIDS+=($wrk)
  local last=$((FIRST + n)) status=0 answered=""
  local update='{"update_id":1,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"from":{"id":5,"is_bot":false,"first_name":"A"},"text":"hi"}}'
  # 404 until the ingress has the bot; then the worker answers with sendMessage.
  until [ "$status" = 200 ]; do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Telegram-Bot-Api-Secret-Token: bench-secret" \
      -H 'Content-Type: application/json' -d "$update" "http://127.0.0.1:$web/webhook/$last" || true)
    [ "$status" = 200 ] || sleep 0.05
  done
  local stored; stored=$(python3 -c "import time; print(round(time.time() - $start, 2))")
  until [ -n "$answered" ]; do
    answered=$(curl -fsS "http://127.0.0.1:$sink/_sink/calls?since=0" | python3 -c "
import json, sys
print(''.join('y' for c in json.load(sys.stdin) if c['method'] == 'sendMessage' and c.get('bot_id') == $last)[:1])")
    [ -n "$answered" ] || sleep 0.05
  done
  local served; served=$(python3 -c "import time; print(round(time.time() - $start, 2))")
  sleep 1
  local stalls; stalls=$(cat "$WORK/ingress-$n.log" "$WORK/worker-$n.log" | grep -c "bot registry watch stalled" || true)
  echo "records=$n ingress_stored_s=$stored worker_answered_s=$served ingress_rss_kib=$(rss "$ing") worker_rss_kib=$(rss "$wrk") stall_restarts=$stalls"
  grep -h "bot registry read" "$WORK/ingress-$n.log" "$WORK/worker-$n.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
  stop_all
}

run 1
run "$RECORDS"
