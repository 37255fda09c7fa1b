#!/usr/bin/env bash
# End to end: tgpipe vs an aiogram 3 bot vs a teloxide bot, the same echo bot in each
# (loadtest/compare/), in one run on the same machine. Each contender gets the same
# `tgpipe-loadtest run`: Telegram's delivery model (at most CONNECTIONS requests in
# flight, one update per chat in flight, retries), the same update mix, replies matched
# at one Bot API stand-in (`tgpipe-loadtest sink`, reset between contenders).
#
#   ./loadtest/bench/compare.sh                        # 20000 updates, 1000 chats, 40 connections
#   UPDATES=50000 CONTENDERS="tgpipe teloxide" ./loadtest/bench/compare.sh
#
# Environment: UPDATES, CHATS, CONNECTIONS, MIX (text,command,callback,member),
# CONTENDERS (tgpipe aiogram teloxide), ROUNDS (3: the contenders take turns, each one's
# median round is reported), LATENCY_UPDATES (updates of the second pass, run
# at half of tgpipe's reply rate for latency percentiles; 0 skips it), COMPARE_CACHE
# (where the teloxide build and the aiogram venv are kept between runs; default
# <cargo target dir>/compare), TGPIPE_CONCURRENCY (the worker's, default its own),
# PERF=1 (perf-records the worker during tgpipe's first round; the flat profile goes to
# $COMPARE_CACHE/perf-worker.txt, and the round is slower for it).
#
# tgpipe runs as deployed: tgpipe-ingress and tgpipe-example-bot (the worker) on a fresh
# nats-server (JetStream, file storage) and redis-server. Peak RSS is VmHWM from
# /proc/<pid>/status, summed over a contender's processes (for tgpipe: ingress, worker,
# nats-server and redis-server). CPU µs per update is each process's user + system time
# during the median round's pass over the updates it accepted, summed per contender and
# checked against the targets (tgpipe's <= teloxide's; the worker's <= 60 µs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

UPDATES=${UPDATES:-20000}
CHATS=${CHATS:-1000}
CONNECTIONS=${CONNECTIONS:-40}
MIX=${MIX:-text,command,callback,member}
CONTENDERS=${CONTENDERS:-tgpipe aiogram teloxide}
LATENCY_UPDATES=${LATENCY_UPDATES:-$((UPDATES / 4))}
ROUNDS=${ROUNDS:-3}
BOT_ID=123456
SECRET=compare-secret
TOKEN=$BOT_ID:compare-token

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
ensure_nats_server
ensure_redis_server
T=$(build_release tgpipe-ingress tgpipe-example-bot tgpipe-loadtest)
CACHE=${COMPARE_CACHE:-$(dirname "$T")/compare}
mkdir -p "$CACHE"

WORK=$(mktemp -d -t tgpipe-compare.XXXXXX)
PIDS=()      # the stand-in's
CURRENT=()   # the running contender's
cleanup() {
  for p in ${PERF_PID:-} "${CURRENT[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The binaries are copied out of the target directory, which other builds may share.
mkdir -p "$WORK/bin"
for b in tgpipe-ingress tgpipe-example-bot tgpipe-loadtest; do cp "$T/$b" "$WORK/bin/"; done
B=$WORK/bin

log "building the teloxide bot (release, target dir $CACHE)"
if ! CARGO_TARGET_DIR=$CACHE cargo build --release --locked \
  --manifest-path loadtest/compare/teloxide/Cargo.toml 2>"$WORK/teloxide-build.log"; then
  grep -v -E "^\s+(Compiling|Downloaded|Downloading)" "$WORK/teloxide-build.log" >&2
  echo "error: the teloxide bot did not build" >&2
  exit 1
fi
TELOXIDE_BIN=$CACHE/release/compare-teloxide

VENV=$CACHE/aiogram-venv
if ! cmp -s loadtest/compare/aiogram/requirements.txt "$VENV/requirements.txt" 2>/dev/null; then
  log "installing aiogram into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r loadtest/compare/aiogram/requirements.txt >&2
  cp loadtest/compare/aiogram/requirements.txt "$VENV/requirements.txt"
fi

wait_http() { # url, what: any HTTP answer counts
  for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true)
    [ -n "$code" ] && [ "$code" != 000 ] && return 0
    sleep 0.1
  done
  echo "error: $2 did not answer at $1; see $WORK/*.log" >&2
  exit 1
}

SINK_PORT=$(free_port)
SINK=http://127.0.0.1:$SINK_PORT
"$B/tgpipe-loadtest" sink --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
wait_http "$SINK/_sink/stats" "the Bot API stand-in"

# update_ids must fit Telegram's (and teloxide's) 32 bits and differ between passes.
NEXT_ID=1000000000
start_tgpipe() {
  local nats redis ing ops
  nats=$(free_port); redis=$(free_port); ing=$(free_port); ops=$(free_port)
  "$TGPIPE_NATS_SERVER" -a 127.0.0.1 -p "$nats" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 & CURRENT+=($!)
  "$TGPIPE_REDIS_SERVER" --bind 127.0.0.1 --port "$redis" --save '' --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 & CURRENT+=($!)
  sleep 0.5
  local ing_ops
  ing_ops=$(free_port)
  NATS_URL=nats://127.0.0.1:$nats TGPIPE_LISTEN=127.0.0.1:$ing TGPIPE_OPS_LISTEN=127.0.0.1:$ing_ops \
    TGPIPE_BOTS=$BOT_ID:$SECRET TGPIPE_ALLOWED_CIDRS=127.0.0.0/8 RUST_LOG=warn \
    "$B/tgpipe-ingress" >"$WORK/ingress.log" 2>&1 & CURRENT+=($!)
  wait_http "http://127.0.0.1:$ing_ops/readyz" tgpipe-ingress
  NATS_URL=nats://127.0.0.1:$nats REDIS_URL=redis://127.0.0.1:$redis \
    TGPIPE_LISTEN=127.0.0.1:$ops TGPIPE_BOT_TOKENS=$TOKEN TGPIPE_API_URL=$SINK RUST_LOG=warn \
    TGPIPE_RATE_LIMITS=off \
    "$B/tgpipe-example-bot" run >"$WORK/worker.log" 2>&1 & CURRENT+=($!)
  for _ in $(seq 300); do curl -fs "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done
  curl -fs "127.0.0.1:$ops/readyz" >/dev/null || { echo "error: worker not ready; see $WORK/worker.log" >&2; exit 1; }
  URL=http://127.0.0.1:$ing
}
# The webhook URL the bots announce with setWebhook must be HTTPS (Telegram and the
# stand-in refuse others); they listen on plain HTTP, as behind a TLS-terminating proxy.
start_aiogram() {
  local port; port=$(free_port)
  BOT_TOKEN=$TOKEN BOT_API_URL=$SINK WEBHOOK_HOST=127.0.0.1 WEBHOOK_PORT=$port \
    WEBHOOK_PATH=/webhook/$BOT_ID WEBHOOK_URL=https://127.0.0.1:$port/webhook/$BOT_ID \
    WEBHOOK_SECRET=$SECRET "$VENV/bin/python" loadtest/compare/aiogram/bot.py \
    >"$WORK/aiogram.log" 2>&1 & CURRENT+=($!)
  wait_http "http://127.0.0.1:$port/webhook/$BOT_ID" aiogram
  URL=http://127.0.0.1:$port
}
start_teloxide() {
  local port; port=$(free_port)
  BOT_TOKEN=$TOKEN BOT_API_URL=$SINK WEBHOOK_LISTEN=127.0.0.1:$port \
    WEBHOOK_URL=https://127.0.0.1:$port/webhook/$BOT_ID WEBHOOK_SECRET=$SECRET \
    "$TELOXIDE_BIN" >"$WORK/teloxide.log" 2>&1 & CURRENT+=($!)
  wait_http "http://127.0.0.1:$port/webhook/$BOT_ID" teloxide
  URL=http://127.0.0.1:$port
}
# Peak resident memory of the running contender, MiB, and per process.
peak_rss() {
  local total=0 kb p parts=()
  for p in "${CURRENT[@]}"; do
    kb=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
    parts+=("$(cat "/proc/$p/comm" 2>/dev/null || echo "?")=$((${kb:-0} / 1024))")
  done
  echo "$((total / 1024)) ${parts[*]}"
}
# Clock ticks (user + system) of each of the running contender's processes so far, one
# "<name> <ticks>" line each; the difference across a pass is its CPU for that pass.
cpu_ticks() {
  local p
  for p in "${CURRENT[@]}"; do
    # Fields after the parenthesised name; utime and stime are the 12th and 13th of them.
    printf '%s ' "$(cat "/proc/$p/comm" 2>/dev/null || echo "?")"
    sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}'
  done
}
# CPU seconds the running contender's processes used since they started: the total,
# then <name>=<seconds> per process.
cpu_seconds() {
  cpu_ticks | awk -v hz="$(getconf CLK_TCK)" '{t += $2; parts = parts sprintf(" %s=%.1f", $1, $2 / hz)}
    END {printf "%.1f%s\n", t / hz, parts}'
}
stop_contender() {
  local p
  for p in "${CURRENT[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CURRENT[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  CURRENT=()
  rm -rf "$WORK/nats"
}
# One pass against $URL: the report's JSON, then the stand-in's own count of what it
# recorded, checked against the report.
pass() { # name, updates, [rate]
  local name=$1 n=$2 rate=${3:-} out
  curl -fsS -X POST "$SINK/_sink/reset" >/dev/null
  out=$WORK/$name.json
  "$B/tgpipe-loadtest" run --url "$URL" --secret "$SECRET" --bot-id "$BOT_ID" \
    --updates "$n" --chats "$CHATS" --connections "$CONNECTIONS" --mix "$MIX" \
    --first-id "$NEXT_ID" --reply-timeout 180 ${rate:+--rate "$rate"} --sink "$SINK" --json \
    >"$out" 2>"$WORK/$name.err" || { cat "$WORK/$name.err" >&2; exit 1; }
  tail -n 1 "$WORK/$name.err" >&2
  curl -fsS "$SINK/_sink/calls" >"$WORK/$name.calls.json"
  python3 - "$out" "$WORK/$name.calls.json" "$NEXT_ID" "$n" <<'PY' >"$WORK/$name.sink.json"
import json, re, sys
report = json.load(open(sys.argv[1]))
calls = json.load(open(sys.argv[2]))
first, n = int(sys.argv[3]), int(sys.argv[4])
tokens, failed = set(), 0
for c in calls:
    if not 200 <= c["status"] < 300:
        failed += 1
        continue
    for t in re.findall(r"(?<![A-Za-z0-9])lt(\d+)", json.dumps(c["params"])):
        if first <= int(t) < first + n:
            tokens.add(t)
agree = len(tokens) == report["replied"] and report["replied"] + report["lost"] == report["accepted"]
json.dump({"calls": len(calls), "failed_calls": failed, "updates_replied": len(tokens), "agree": agree}, sys.stdout)
PY
  NEXT_ID=$((NEXT_ID + n))
}

sink_cpu() { sed 's/^.*) //' "/proc/${PIDS[0]}/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}'; }

# The machine's other load moves every figure between passes (see docs/benchmarks.md), so
# the contenders take turns, ROUNDS times, and the round with each one's median reply
# rate is the one reported.
log "contenders: $CONTENDERS; $ROUNDS rounds of $UPDATES updates, $CHATS chats, $CONNECTIONS connections, mix $MIX"
for r in $(seq "$ROUNDS"); do
  for c in $CONTENDERS; do
    log "$c (round $r/$ROUNDS): start"
    "start_$c"
    log "$c (round $r/$ROUNDS): $UPDATES updates as fast as it takes them"
    if [ "${PERF:-0}" = 1 ] && [ "$c" = tgpipe ] && [ "$r" = 1 ]; then
      # A profile of the worker during the pass: $CACHE/perf-worker.txt.
      perf record -q -F 499 --call-graph dwarf,16384 -p "${CURRENT[3]}" -o "$CACHE/perf-worker.data" 2>/dev/null & PERF_PID=$!
    fi
    before=$(sink_cpu)
    cpu_ticks >"$WORK/$c.r$r.ticks0"
    pass "$c.r$r" "$UPDATES"
    cpu_ticks >"$WORK/$c.r$r.ticks1"
    python3 -c 'import sys; print("%.1f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$before" "$(sink_cpu)" >"$WORK/$c.r$r.sinkcpu"
    if [ -n "${PERF_PID:-}" ]; then
      kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=
      perf report -i "$CACHE/perf-worker.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null \
        | grep -v "^#" | grep -v "^$" | cut -c1-200 | head -n 60 >"$CACHE/perf-worker.txt" || true
      log "worker profile: $CACHE/perf-worker.txt"
    fi
    peak_rss >"$WORK/$c.r$r.rss"
    cpu_seconds >"$WORK/$c.r$r.cpu"
    stop_contender
  done
done
# The median round of each contender becomes $c.*.
for c in $CONTENDERS; do
  m=$(python3 - "$WORK" "$c" "$ROUNDS" <<'PY'
import json, sys
work, c, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = sorted((json.load(open(f"{work}/{c}.r{r}.json"))["reply_per_s"], r) for r in range(1, rounds + 1))
print(rates[(len(rates) - 1) // 2][1])
PY
)
  for f in json sink.json rss cpu sinkcpu ticks0 ticks1; do cp "$WORK/$c.r$m.$f" "$WORK/$c.$f"; done
done

# Second pass: latency at a steady rate, half of tgpipe's peak reply rate (or half of a
# contender's own peak where that is lower, so that no contender is run past saturation).
if [ "$LATENCY_UPDATES" -gt 0 ] && [ -f "$WORK/tgpipe.json" ]; then
  HALF=$(python3 -c 'import json,sys; print("%.0f" % (json.load(open(sys.argv[1]))["reply_per_s"] / 2))' "$WORK/tgpipe.json")
  for c in $CONTENDERS; do
    rate=$(python3 -c 'import json,sys; print("%.0f" % min(float(sys.argv[2]), json.load(open(sys.argv[1]))["reply_per_s"] / 2))' "$WORK/$c.json" "$HALF")
    log "$c: $LATENCY_UPDATES updates at $rate/s"
    "start_$c"
    pass "$c.steady" "$LATENCY_UPDATES" "$rate"
    echo "$rate" >"$WORK/$c.steady.rate"
    stop_contender
  done
fi

python3 - "$WORK" "$CONTENDERS" "$ROUNDS" <<'PY'
import json, os, sys
work, names, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
def load(path):
    return json.load(open(path)) if os.path.exists(path) else None
print()
print("| contender | replies/s | lost | duplicates | out of order | p50 / p90 / p99 latency ms | peak RSS MB | CPU s |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
rows, notes = {}, []
for n in names:
    r, s = load(f"{work}/{n}.json"), load(f"{work}/{n}.sink.json")
    rss, *parts = open(f"{work}/{n}.rss").read().split()
    cpu, *cpu_parts = open(f"{work}/{n}.cpu").read().split()
    sink_cpu = open(f"{work}/{n}.sinkcpu").read().strip()
    rows[n] = r
    l = r["latency_ms"]
    print(f"| {n} | {r['reply_per_s']:.0f} | {r['lost']} | {r['duplicates']} | {r['out_of_order']} "
          f"| {l['p50']:.1f} / {l['p90']:.1f} / {l['p99']:.1f} | {rss} | {cpu} |")
    all_rates = [load(f"{work}/{n}.r{k}.json")["reply_per_s"] for k in range(1, rounds + 1)]
    notes.append(f"- {n}: replies/s of the rounds {', '.join('%.0f' % x for x in all_rates)}; "
                 f"the median round: sent {r['sent']}, accepted {r['accepted']}, rejected {r['rejected']}, "
                 f"retried {r['retried']}, replied {r['replied']}; the stand-in recorded {s['calls']} calls "
                 f"({s['failed_calls']} not 2xx) replying to {s['updates_replied']} updates: "
                 f"{'agrees' if s['agree'] else 'DOES NOT AGREE'} with the report; RSS MB: {' '.join(parts)}; "
                 f"CPU s: {' '.join(cpu_parts)} (the stand-in: {sink_cpu})")
    for k in range(1, rounds + 1):
        if not load(f"{work}/{n}.r{k}.sink.json")["agree"]:
            notes.append(f"- {n} round {k}: the stand-in's record DOES NOT AGREE with the report")
notes.append("- CPU s: user + system time of the contender's processes over their whole life "
             "(start-up, the pass, idle)")

# CPU per update during the median pass, per process: the ticks the pass took divided by
# the updates accepted in it.
hz = os.sysconf("SC_CLK_TCK")
def ticks(path):
    out = []
    for line in open(path):
        name, t = line.rsplit(None, 1)
        out.append((name, int(t)))
    return out
per_update = {}
for n in names:
    r = rows[n]
    before, after = ticks(f"{work}/{n}.ticks0"), ticks(f"{work}/{n}.ticks1")
    parts = [(name, 1e6 * (t1 - t0) / hz / max(r["accepted"], 1))
             for (name, t0), (_, t1) in zip(before, after)]
    per_update[n] = parts
cpu_table = ["| contender | CPU µs per update (all its processes) | per process |", "| --- | ---: | --- |"]
for n in names:
    parts = per_update[n]
    cpu_table.append(f"| {n} | {sum(v for _, v in parts):.0f} | "
                     + ", ".join(f"{name} {v:.0f}" for name, v in parts) + " |")
steady = [n for n in names if load(f"{work}/{n}.steady.json")]
if steady:
    print()
    print("| contender (steady rate) | rate/s | replies/s | lost | duplicates | out of order | p50 / p90 / p99 latency ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in steady:
        r, s = load(f"{work}/{n}.steady.json"), load(f"{work}/{n}.steady.sink.json")
        rate = open(f"{work}/{n}.steady.rate").read().strip()
        l = r["latency_ms"]
        print(f"| {n} | {rate} | {r['reply_per_s']:.0f} | {r['lost']} | {r['duplicates']} | {r['out_of_order']} "
              f"| {l['p50']:.1f} / {l['p90']:.1f} / {l['p99']:.1f} |")
        if not s["agree"]:
            notes.append(f"- {n} (steady): the stand-in's record DOES NOT AGREE with the report")
print()
print("\n".join(cpu_table))
print()
print("\n".join(notes))
print("- CPU µs per update: user + system time during the median round's pass (clock ticks of "
      f"1/{hz} s, read from /proc before and after it) over the updates accepted in it")
t = rows.get("tgpipe")
for other, target in (("aiogram", 15.0), ("teloxide", 1.0)):
    o = rows.get(other)
    if t and o and o["reply_per_s"] > 0:
        ratio = t["reply_per_s"] / o["reply_per_s"]
        verdict = "met" if ratio >= target else "NOT met"
        print(f"ratio tgpipe / {other}: {ratio:.2f}x (target >= {target:g}x: {verdict})")
if "tgpipe" in per_update:
    mine = sum(v for _, v in per_update["tgpipe"])
    worker = sum(v for name, v in per_update["tgpipe"] if name.startswith("tgpipe-example"))
    print(f"worker CPU per update: {worker:.0f} µs (target <= 60 µs: {'met' if worker <= 60 else 'NOT met'})")
    if "teloxide" in per_update:
        theirs = sum(v for _, v in per_update["teloxide"])
        verdict = "met" if mine <= theirs else "NOT met"
        print(f"CPU per update: tgpipe {mine:.0f} µs, teloxide {theirs:.0f} µs (target: tgpipe <= teloxide: {verdict})")
PY
