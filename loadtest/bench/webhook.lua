-- wrk script: POSTs realistic text-message updates as Telegram would, with an update_id
-- unique across all wrk threads and chats spread over 1000 ids, so that every request
-- is a new update (no JetStream de-duplication shortcut) and shards are all exercised.
--
-- Environment: BOT_ID, SECRET (the webhook secret), CHATS (default 1000).

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  -- RUN separates the update_ids of successive wrk runs (warm-up, measurement), which
  -- would otherwise collide and be answered as JetStream duplicates.
  run_base = tonumber(os.getenv("RUN") or "0") * 10000000000
  bot = os.getenv("BOT_ID") or "123456"
  chats = tonumber(os.getenv("CHATS") or "1000")
  wrk.method = "POST"
  wrk.path = "/webhook/" .. bot
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Telegram-Bot-Api-Secret-Token"] = os.getenv("SECRET") or "bench-secret"
end

function request()
  counter = counter + 1
  local update_id = run_base + tid * 100000000 + counter
  local chat = 1000000 + (update_id % chats)
  local body = string.format(
    '{"update_id":%d,"message":{"message_id":%d,"date":1732400000,' ..
    '"chat":{"id":%d,"first_name":"Load","username":"load_test","type":"private"},' ..
    '"from":{"id":%d,"is_bot":false,"first_name":"Load","username":"load_test","language_code":"en"},' ..
    '"text":"hello from the load generator %d"}}',
    update_id, counter, chat, chat, update_id)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT requests=%d non2xx=%d socket_errors=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
