//! The stand-in's HTTP server, its configuration and its handle.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{
    DefaultBodyLimit, FromRequest, Multipart, Path, Query, RawQuery, Request, State,
};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::fault::{Fault, QueuedFault};
use super::methods::{self, ApiError};
use super::record::{RecordedCall, RecordedFile, SinkStats};

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Delay before every answer.
    pub latency: Duration,
    /// Fraction of calls (0.0 to 1.0) answered `500 Internal Server Error`.
    pub error_rate: f64,
    /// Every Nth call is answered `429 Too Many Requests` with `retry_after`.
    pub every_429: Option<u64>,
    /// The `retry_after` of those answers, in seconds.
    pub retry_after: u64,
    /// Calls addressed to this chat are answered 400 with `migrate_to_chat_id`, as for a
    /// group that became a supergroup.
    pub migrate_chat: Option<i64>,
    /// The bot's username in `getMe` and in sent messages' `from`.
    pub bot_username: String,
    /// Largest accepted body (Telegram accepts uploads up to 50 MB).
    pub max_body: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            latency: Duration::ZERO,
            error_rate: 0.0,
            every_429: None,
            retry_after: 1,
            migrate_chat: None,
            bot_username: "tgpipe_sink_bot".to_owned(),
            max_body: 50 << 20,
        }
    }
}

/// What `setWebhook` set for one bot, for `getWebhookInfo`, with the delivery trouble a
/// test gives it.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebhookState {
    pub(crate) url: String,
    pub(crate) has_custom_certificate: bool,
    pub(crate) max_connections: i64,
    pub(crate) ip_address: Option<String>,
    pub(crate) allowed_updates: Option<Value>,
    /// `last_error_date` and `last_error_message` ([`SinkHandle::webhook_error`]).
    pub(crate) last_error: Option<(i64, String)>,
    /// `pending_update_count` when set ([`SinkHandle::webhook_pending`]); else the
    /// queued `getUpdates` updates.
    pub(crate) pending: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: SinkConfig,
    calls: Vec<RecordedCall>,
    stats: SinkStats,
    fault_counter: u64,
    message_ids: HashMap<i64, i64>,
    global_id: i64,
    /// Each bot's webhook, by bot id.
    pub(crate) webhooks: HashMap<u64, WebhookState>,
    pub(crate) updates: VecDeque<Value>,
    /// Queued faults by lower-case method (`*`: any).
    faults: HashMap<String, VecDeque<Fault>>,
    /// Queued faults for the calls addressed to one chat, by lower-case method (`*`:
    /// any) and chat id.
    chat_faults: HashMap<(String, i64), VecDeque<Fault>>,
}

impl Inner {
    fn new(config: SinkConfig) -> Inner {
        Inner {
            config,
            calls: Vec::new(),
            stats: SinkStats::default(),
            fault_counter: 0,
            message_ids: HashMap::new(),
            global_id: 0,
            webhooks: HashMap::new(),
            updates: VecDeque::new(),
            faults: HashMap::new(),
            chat_faults: HashMap::new(),
        }
    }

    /// The next queued fault for `method`: its own queue first, then `*`.
    fn take_fault(&mut self, method: &str) -> Option<Fault> {
        let lower = method.to_ascii_lowercase();
        for key in [lower.as_str(), "*"] {
            if let Some(q) = self.faults.get_mut(key)
                && let Some(f) = q.pop_front()
            {
                return Some(f);
            }
        }
        None
    }

    fn push_fault(&mut self, method: &str, fault: Fault) {
        self.faults
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(fault);
    }

    /// The next queued fault for `method` addressed to `chat`: its own queue first,
    /// then `*`'s of that chat.
    fn take_chat_fault(&mut self, method: &str, chat: i64) -> Option<Fault> {
        let lower = method.to_ascii_lowercase();
        for key in [lower, "*".to_owned()] {
            if let Some(q) = self.chat_faults.get_mut(&(key, chat))
                && let Some(f) = q.pop_front()
            {
                return Some(f);
            }
        }
        None
    }

    fn push_chat_fault(&mut self, method: &str, chat: i64, fault: Fault) {
        self.chat_faults
            .entry((method.to_ascii_lowercase(), chat))
            .or_default()
            .push_back(fault);
    }

    pub(crate) fn next_id(&mut self) -> i64 {
        self.global_id += 1;
        self.global_id
    }

    /// A sent Message: ids increase per chat, as in Telegram.
    pub(crate) fn message(
        &mut self,
        bot_id: u64,
        chat_id: i64,
        chat: Value,
        params: &Value,
    ) -> Value {
        let id = self.message_ids.entry(chat_id).or_insert(0);
        *id += 1;
        let date = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut m = json!({
            "message_id": *id,
            "from": {"id": bot_id, "is_bot": true, "first_name": "tgpipe sink", "username": self.config.bot_username},
            "chat": chat,
            "date": date,
        });
        for field in ["text", "caption"] {
            if let Some(v) = params.get(field) {
                m[field] = v.clone();
            }
        }
        if let Some(v) = params.get("message_thread_id") {
            m["message_thread_id"] = v.clone();
        }
        if let Some(v) = params.get("reply_markup") {
            // Form bodies carry it as a JSON string; answer it as an object.
            m["reply_markup"] = match v {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                other => other.clone(),
            };
        }
        m
    }
}

struct Shared {
    inner: Mutex<Inner>,
    recorded: Notify,
    /// Wakes long-polling `getUpdates` calls.
    queued: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the record inconsistent enough to
        // matter to a test double; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts stand-ins.
#[derive(Debug)]
pub struct Sink;

impl Sink {
    /// Starts a stand-in on a free port of 127.0.0.1.
    pub async fn start(config: SinkConfig) -> std::io::Result<SinkHandle> {
        Sink::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a stand-in on `addr`.
    pub async fn bind(addr: SocketAddr, config: SinkConfig) -> std::io::Result<SinkHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new(config.clone())),
            recorded: Notify::new(),
            queued: Notify::new(),
        });
        let app = router(Arc::clone(&shared), config.max_body);
        let task = tokio::spawn(async move {
            // Serving ends only when the handle is dropped (the task is aborted).
            let _ = axum::serve(listener, app).await;
        });
        Ok(SinkHandle { addr, shared, task })
    }
}

/// A running stand-in; stops when dropped.
pub struct SinkHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SinkHandle {
    /// The base URL to use as the Bot API URL (`TGPIPE_API_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().calls.clone()
    }

    /// Waits until at least `n` calls were recorded or `timeout` passed, and returns
    /// the calls recorded by then.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> Vec<RecordedCall> {
        self.wait_for_matching(|_| true, n, timeout).await
    }

    /// The calls of `method`, once there are `n` of them or `timeout` passed (then the
    /// ones there are: the caller asserts on what it got).
    pub async fn wait_for_method(
        &self,
        method: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedCall> {
        self.wait_for_matching(|c| c.method == method, n, timeout)
            .await
    }

    /// The calls `keep` accepts, once there are `n` of them or `timeout` passed; woken
    /// by each recorded call.
    async fn wait_for_matching(
        &self,
        keep: impl Fn(&RecordedCall) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.recorded.notified();
            let calls: Vec<RecordedCall> = {
                let inner = self.shared.lock();
                inner.calls.iter().filter(|c| keep(c)).cloned().collect()
            };
            if calls.len() >= n || Instant::now() >= deadline {
                return calls;
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// Forgets every call and counter (the webhook state and queued updates stay).
    pub fn clear(&self) {
        let mut inner = self.shared.lock();
        inner.calls.clear();
        inner.stats = SinkStats::default();
    }

    /// Counters.
    pub fn stats(&self) -> SinkStats {
        self.shared.lock().stats.clone()
    }

    /// Queues an update for `getUpdates`.
    pub fn push_update(&self, update: Value) {
        self.shared.lock().updates.push_back(update);
        self.shared.queued.notify_waiters();
    }

    /// Queues a fault: the next call of `method` (case-insensitive; `"*"`: of any
    /// method) is answered with it instead of its result.
    pub fn push_fault(&self, method: &str, fault: Fault) {
        self.shared.lock().push_fault(method, fault);
    }

    /// Queues a fault for one chat: the next call of `method` (case-insensitive; `"*"`:
    /// of any method) whose `chat_id` is `chat` is answered with it. A chat's own queue
    /// goes before the queues of [`SinkHandle::push_fault`]; calls to other chats do
    /// not see it. Such a call is answered and recorded even if its client hangs up
    /// meanwhile (a pod killed while its call waits out a [`Fault::Slow`]): Telegram
    /// acts on a request it has received whether or not the answer is read.
    pub fn push_chat_fault(&self, method: &str, chat: i64, fault: Fault) {
        self.shared.lock().push_chat_fault(method, chat, fault);
    }

    /// How many queued faults (of any chat) are still to be answered.
    pub fn pending_faults(&self) -> usize {
        let inner = self.shared.lock();
        inner.faults.values().map(VecDeque::len).sum::<usize>()
            + inner.chat_faults.values().map(VecDeque::len).sum::<usize>()
    }

    /// The webhook's URL as set by `setWebhook` for the bot with the lowest id that
    /// has one (empty when none): the one bot of most tests.
    pub fn webhook_url(&self) -> String {
        let inner = self.shared.lock();
        let mut set: Vec<_> = inner
            .webhooks
            .iter()
            .filter(|(_, w)| !w.url.is_empty())
            .collect();
        set.sort_by_key(|(id, _)| **id);
        set.first().map(|(_, w)| w.url.clone()).unwrap_or_default()
    }

    /// The webhook URL of bot `bot_id` (empty when none).
    pub fn webhook_url_of(&self, bot_id: u64) -> String {
        let inner = self.shared.lock();
        inner
            .webhooks
            .get(&bot_id)
            .map(|w| w.url.clone())
            .unwrap_or_default()
    }

    /// Points bot `bot_id`'s webhook elsewhere, as someone calling `setWebhook` with its
    /// token behind the bot's back would (the secret and allowed updates go too).
    pub fn change_webhook_behind_the_bots_back(&self, bot_id: u64, url: &str) {
        let mut inner = self.shared.lock();
        inner.webhooks.insert(
            bot_id,
            WebhookState {
                url: url.to_owned(),
                max_connections: 40,
                ..WebhookState::default()
            },
        );
    }

    /// Makes `getWebhookInfo` of bot `bot_id` report a failed delivery at `date` (Unix
    /// seconds), as Telegram does when the ingress cannot be reached.
    pub fn webhook_error(&self, bot_id: u64, date: i64, message: &str) {
        let mut inner = self.shared.lock();
        inner.webhooks.entry(bot_id).or_default().last_error = Some((date, message.to_owned()));
    }

    /// Makes `getWebhookInfo` of bot `bot_id` report `n` updates waiting at Telegram.
    pub fn webhook_pending(&self, bot_id: u64, n: u64) {
        let mut inner = self.shared.lock();
        inner.webhooks.entry(bot_id).or_default().pending = Some(n);
    }
}

fn router(shared: Arc<Shared>, max_body: usize) -> Router {
    Router::new()
        .route("/_sink/calls", get(control_calls))
        .route("/_sink/stats", get(control_stats))
        .route("/_sink/reset", post(control_reset))
        .route("/_sink/updates", post(control_updates))
        .route("/_sink/faults", post(control_faults))
        .route("/{bot_token}/{method}", any(call))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared)
}

fn envelope(status: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `<id>:<secret>`: the bot id, if the token is well formed.
fn token_bot_id(token: &str) -> Option<u64> {
    let (id, secret) = token.split_once(':')?;
    if secret.is_empty()
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    id.parse().ok().filter(|id| *id > 0)
}

async fn call(
    State(shared): State<Arc<Shared>>,
    Path((bot_token, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let Some(token) = bot_token.strip_prefix("bot") else {
        return envelope(404, ApiError::not_found().body());
    };
    let bot_id = token_bot_id(token);
    let max_body = shared.lock().config.max_body;
    let parsed = parse_params(query.as_deref(), request, max_body).await;
    let received = SystemTime::now();
    // The request is read: a fault queued for its chat, else one for its method.
    let (latency, fault, for_chat) = {
        let mut inner = shared.lock();
        let chat = parsed
            .as_ref()
            .ok()
            .and_then(|(params, _)| addressed_chat(params));
        let chat_fault = chat.and_then(|chat| inner.take_chat_fault(&method, chat));
        let for_chat = chat_fault.is_some();
        let fault = chat_fault.or_else(|| inner.take_fault(&method));
        (inner.config.latency, fault, for_chat)
    };
    let respond = respond(
        Arc::clone(&shared),
        Call {
            bot_id,
            method,
            received,
        },
        parsed,
        latency,
        fault,
    );
    if for_chat {
        // Finished even when the client goes away while it waits.
        tokio::spawn(respond)
            .await
            .unwrap_or_else(|_| envelope(500, ApiError::server().body()))
    } else {
        respond.await
    }
}

/// The chat a call addresses, when its `chat_id` is a number.
fn addressed_chat(params: &Value) -> Option<i64> {
    match params.get("chat_id") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A read call: who, what, when.
struct Call {
    bot_id: Option<u64>,
    method: String,
    received: SystemTime,
}

/// Waits out the latency (and a slow fault), answers and records a read call.
async fn respond(
    shared: Arc<Shared>,
    call: Call,
    parsed: Result<(Value, Vec<RecordedFile>), ApiError>,
    latency: Duration,
    fault: Option<Fault>,
) -> Response {
    let delay = match &fault {
        Some(Fault::Slow { ms }) => latency + Duration::from_millis(*ms),
        _ => latency,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bot_id = call.bot_id;
    if let Some(Fault::Malformed { status, body }) = fault {
        let params = parsed.map(|(p, _)| p).unwrap_or(Value::Null);
        record(&shared, call, params, Vec::new(), status);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, [(header::CONTENT_TYPE, "text/html")], body).into_response();
    }
    let (status, body, params, files) = match parsed {
        Err(e) => (e.code, e.body(), Value::Null, Vec::new()),
        Ok((params, files)) => {
            let outcome = answer(&shared, bot_id, &call.method, &params, &files, fault).await;
            match outcome {
                Ok(result) => (200, json!({"ok": true, "result": result}), params, files),
                Err(e) => (e.code, e.body(), params, files),
            }
        }
    };
    record(&shared, call, params, files, status);
    envelope(status, body)
}

/// The answer to a parsed call: a queued error, an injected fault, or the method's
/// result. An empty `getUpdates` with a `timeout` waits (long polling) until an update
/// is queued or the timeout passes, as Telegram does.
async fn answer(
    shared: &Shared,
    bot_id: Option<u64>,
    method: &str,
    params: &Value,
    files: &[RecordedFile],
    fault: Option<Fault>,
) -> Result<Value, ApiError> {
    let Some(bot_id) = bot_id else {
        return Err(ApiError {
            code: 401,
            description: "Unauthorized".to_owned(),
            parameters: None,
        });
    };
    if let Some(Fault::Error {
        code,
        description,
        parameters,
    }) = fault
    {
        return Err(ApiError {
            code,
            description,
            parameters,
        });
    }
    let long_poll = method.eq_ignore_ascii_case("getUpdates");
    let timeout = match params.get("timeout") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(0)
    .min(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let notified = shared.queued.notified();
        {
            let mut inner = shared.lock();
            let outcome = inject_fault(&mut inner, params).map_or_else(
                || methods::answer(&mut inner, bot_id, method, params, files),
                Err,
            );
            let empty = matches!(&outcome, Ok(Value::Array(a)) if a.is_empty());
            if !long_poll || !empty || tokio::time::Instant::now() >= deadline {
                return outcome;
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

fn record(
    shared: &Shared,
    Call {
        bot_id,
        method,
        received,
    }: Call,
    params: Value,
    files: Vec<RecordedFile>,
    status: u16,
) {
    {
        let mut inner = shared.lock();
        let seq = inner.calls.len() as u64;
        inner.stats.calls += 1;
        *inner.stats.by_method.entry(method.clone()).or_default() += 1;
        *inner.stats.by_status.entry(status).or_default() += 1;
        inner.calls.push(RecordedCall {
            seq,
            bot_id,
            method,
            params,
            files,
            at: SystemTime::now(),
            received,
            status,
        });
    }
    shared.recorded.notify_waiters();
}

/// The injected fault for this call, if any: 429 every Nth call, 5xx at the error rate,
/// migration for the configured chat.
fn inject_fault(inner: &mut Inner, params: &Value) -> Option<ApiError> {
    inner.fault_counter += 1;
    let config = &inner.config;
    if let Some(n) = config.every_429
        && n > 0
        && inner.fault_counter.is_multiple_of(n)
    {
        return Some(ApiError {
            code: 429,
            description: format!("Too Many Requests: retry after {}", config.retry_after),
            parameters: Some(json!({"retry_after": config.retry_after})),
        });
    }
    if config.error_rate > 0.0 && rand::random::<f64>() < config.error_rate {
        return Some(ApiError {
            code: 500,
            description: "Internal Server Error".to_owned(),
            parameters: None,
        });
    }
    if let Some(chat) = config.migrate_chat {
        let addressed = match params.get("chat_id") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        if addressed == Some(chat) {
            return Some(ApiError {
                code: 400,
                description: "Bad Request: group chat was upgraded to a supergroup chat".to_owned(),
                parameters: Some(json!({"migrate_to_chat_id": -1_000_000_000_000 - chat.abs()})),
            });
        }
    }
    None
}

/// Parameters from the query string and the body (JSON object, urlencoded form or
/// multipart form), merged with the body's taking precedence, as Telegram does.
async fn parse_params(
    query: Option<&str>,
    request: Request,
    max_body: usize,
) -> Result<(Value, Vec<RecordedFile>), ApiError> {
    let mut params = Map::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut files = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
            ApiError::bad_request(&format!("can't parse multipart: {}", e.body_text()))
        })?;
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let data = field.bytes().await.map_err(multipart_error)?;
            if file_name.is_some() {
                files.push(RecordedFile {
                    field: name,
                    file_name,
                    content_type,
                    size: data.len(),
                });
            } else {
                params.insert(
                    name,
                    Value::String(String::from_utf8_lossy(&data).into_owned()),
                );
            }
        }
        return Ok((Value::Object(params), files));
    }
    let body = axum::body::to_bytes(request.into_body(), max_body)
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError {
                    code: 413,
                    description: "Request Entity Too Large".to_owned(),
                    parameters: None,
                }
            } else {
                ApiError::bad_request("can't read the request body")
            }
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Object(params), files));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(&body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    } else {
        // Telegram parses any other body as JSON.
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => params.extend(m),
            Ok(_) | Err(_) => return Err(ApiError::bad_request("can't parse JSON object")),
        }
    }
    Ok((Value::Object(params), files))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError {
            code: 413,
            description: "Request Entity Too Large".to_owned(),
            parameters: None,
        }
    } else {
        ApiError::bad_request(&format!("can't parse multipart: {}", e.body_text()))
    }
}

#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn control_calls(State(shared): State<Arc<Shared>>, Query(q): Query<Since>) -> Response {
    let since = q.since.unwrap_or(0);
    let calls: Vec<RecordedCall> = shared
        .lock()
        .calls
        .iter()
        .filter(|c| c.seq >= since)
        .cloned()
        .collect();
    axum::Json(calls).into_response()
}

async fn control_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.lock().stats.clone()).into_response()
}

async fn control_reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    let mut inner = shared.lock();
    let config = inner.config.clone();
    *inner = Inner::new(config);
    StatusCode::NO_CONTENT
}

async fn control_updates(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let updates = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(v @ Value::Object(_)) => vec![v],
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "expected an update object or an array of them",
            )
                .into_response();
        }
    };
    let n = updates.len();
    shared.lock().updates.extend(updates);
    shared.queued.notify_waiters();
    (StatusCode::OK, axum::Json(json!({"queued": n}))).into_response()
}

/// `POST /_sink/faults`: one `{"method": .., "fault": {"kind": ..}}` (with `"chat": <id>`:
/// for that chat's calls only) or an array of them.
async fn control_faults(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let faults = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(v @ Value::Object(_)) => vec![v],
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "expected a fault or an array of them",
            )
                .into_response();
        }
    };
    let parsed: Result<Vec<QueuedFault>, _> =
        faults.into_iter().map(serde_json::from_value).collect();
    match parsed {
        Ok(faults) => {
            let n = faults.len();
            let mut inner = shared.lock();
            for f in faults {
                match f.chat {
                    Some(chat) => inner.push_chat_fault(&f.method, chat, f.fault),
                    None => inner.push_fault(&f.method, f.fault),
                }
            }
            (StatusCode::OK, axum::Json(json!({"queued": n}))).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(sink: &SinkHandle, chat: i64, timeout: Duration) -> Option<u16> {
        let response = reqwest::Client::new()
            .post(format!("{}/bot1:T/sendMessage", sink.url()))
            .json(&json!({"chat_id": chat, "text": "hi"}))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    #[tokio::test]
    async fn a_chat_fault_answers_only_that_chats_next_call() {
        let sink = Sink::start(SinkConfig::default()).await.unwrap();
        let long = Duration::from_secs(10);
        sink.push_chat_fault("sendMessage", 7, Fault::retry_after(60));
        sink.push_fault("sendMessage", Fault::server(502));
        // Chat 8 gets the method's fault, chat 7 its own first, then the normal answer.
        assert_eq!(send(&sink, 8, long).await, Some(502));
        assert_eq!(sink.pending_faults(), 1);
        assert_eq!(send(&sink, 8, long).await, Some(200));
        assert_eq!(send(&sink, 7, long).await, Some(429));
        assert_eq!(send(&sink, 7, long).await, Some(200));
        assert_eq!(sink.pending_faults(), 0);
        // The same through the control API, for `*` and a chat id given as a string.
        let queued = reqwest::Client::new()
            .post(format!("{}/_sink/faults", sink.url()))
            .json(&json!([{"method": "*", "chat": 9, "fault": {"kind": "error", "code": 403, "description": "Forbidden"}}]))
            .send()
            .await
            .unwrap();
        assert_eq!(queued.status(), 200);
        let form = reqwest::Client::new()
            .post(format!("{}/bot1:T/sendMessage", sink.url()))
            .form(&[("chat_id", "9"), ("text", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), 403);
        let statuses: Vec<u16> = sink.calls().iter().map(|c| c.status).collect();
        assert_eq!(statuses, [502, 200, 429, 200, 403]);
    }

    #[tokio::test]
    async fn a_chat_delay_is_answered_and_recorded_after_its_client_hung_up() {
        let sink = Sink::start(SinkConfig::default()).await.unwrap();
        sink.push_chat_fault("sendMessage", 7, Fault::slow(Duration::from_millis(600)));
        let started = Instant::now();
        // The client gives up after 100 ms (a pod killed mid-call).
        assert_eq!(send(&sink, 7, Duration::from_millis(100)).await, None);
        // Another chat is not delayed.
        assert_eq!(send(&sink, 8, Duration::from_secs(10)).await, Some(200));
        assert!(started.elapsed() < Duration::from_millis(500));
        let calls = sink
            .wait_for_method("sendMessage", 2, Duration::from_secs(5))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(600));
        let chats: Vec<&Value> = calls.iter().map(|c| &c.params["chat_id"]).collect();
        assert_eq!(chats, [&json!(8), &json!(7)]);
        assert!(calls.iter().all(|c| c.status == 200));
        // In flight for the delay: read at once, answered 600 ms later.
        let slow = calls[1].at.duration_since(calls[1].received).unwrap();
        assert!(slow >= Duration::from_millis(600), "{slow:?}");
    }
}
