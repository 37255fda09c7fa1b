//! `POST /webhook/{bot_id}`: check, extract, publish, then answer.
//!
//! Checks run cheapest and least revealing first: the source address (403), the bot
//! (404, also for a bot removed from the registry), the secret (401), a paused bot (503,
//! so that Telegram keeps the update and retries it), the body's size and arrival time
//! (413, 408), its shape (400), and only then the broker (503 on failure, 200 once
//! stored). A request that fails a check costs no JSON parsing and no broker round trip.
//!
//! The bot table is taken once per request: a request is answered under the state and
//! secrets the bot had when it arrived, whatever the registry does meanwhile.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tgpipe_shared::telemetry;
use tgpipe_shared::{BotId, Envelope, KeysError, headers as h};
use tracing::Instrument;
use tracing::field::Empty;

use crate::AppState;
use crate::bots::{ServedBot, Verdict};
use crate::client_ip::SourceError;
use crate::metrics as m;
use crate::publish::PublishError;
use tgpipe_shared::registry::{BotState, SecretDigest};

/// The header Telegram puts the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Why a webhook request was not stored. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The client address is outside the allowed ranges.
    #[error("source address {0} is not allowed")]
    SourceNotAllowed(std::net::IpAddr),
    /// A trusted proxy sent an unreadable X-Forwarded-For.
    #[error("X-Forwarded-For from a trusted proxy does not parse")]
    BadForwardedFor,
    /// Not a bot this ingress serves.
    #[error("unknown bot")]
    UnknownBot,
    /// Missing or wrong secret token.
    #[error("missing or wrong secret token")]
    BadSecret,
    /// The bot is paused in the registry.
    #[error("bot paused")]
    Paused,
    /// The body is over the limit.
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive in time.
    #[error("body not received in time")]
    BodyTimeout,
    /// The connection failed while reading the body.
    #[error("body could not be read: {0}")]
    BodyRead(#[source] tgpipe_shared::BoxError),
    /// The body is not an update.
    #[error("{0}")]
    Malformed(#[from] KeysError),
    /// The broker did not store it.
    #[error("{0}")]
    Unavailable(#[from] PublishError),
}

impl WebhookError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::SourceNotAllowed(_) => StatusCode::FORBIDDEN,
            WebhookError::BadForwardedFor => StatusCode::BAD_REQUEST,
            WebhookError::UnknownBot => StatusCode::NOT_FOUND,
            WebhookError::BadSecret => StatusCode::UNAUTHORIZED,
            // Telegram keeps the update and retries it (with growing delays) until resumed.
            WebhookError::Paused => StatusCode::SERVICE_UNAVAILABLE,
            WebhookError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            WebhookError::BodyRead(_) | WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            // The broker can never store it: a 503 would have Telegram retry it forever.
            WebhookError::Unavailable(PublishError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            WebhookError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Logged once, here at the edge. Rejections of hostile traffic stay at debug so
        // that a scan cannot flood the logs; a broker failure is an operator's problem.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "update not stored; answering 503 so Telegram retries");
        } else if matches!(self, WebhookError::Unavailable(_)) {
            tracing::warn!(error = %self, "update too large for the NATS server; answering 413");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "webhook request rejected");
        }
        let mut response = (status, self.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The webhook handler.
pub(crate) async fn webhook(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(bot): Path<String>,
    request: Request,
) -> Response {
    // The request's own headers, not a copy (the `HeaderMap` extractor clones them).
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let _in_flight = m::InFlight::enter(&state.inner.in_flight);
    let table = state.inner.bots.snapshot();
    let served = BotId::parse(&bot).and_then(|id| Some((id, table.get(id)?)));
    let span = request_span(&headers);
    let result = receive(&state, peer, served, &headers, body)
        .instrument(span.clone())
        .await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    m::request(served.map(|(_, b)| b.metrics()), status);
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn receive(
    state: &AppState,
    peer: SocketAddr,
    bot: Option<(BotId, &ServedBot)>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), WebhookError> {
    let inner = &state.inner;
    inner
        .ip_policy
        .check(peer.ip(), headers)
        .map_err(|e| match e {
            SourceError::NotAllowed(ip) => WebhookError::SourceNotAllowed(ip),
            SourceError::BadForwardedFor => WebhookError::BadForwardedFor,
        })?;
    let (bot, served) = bot.ok_or(WebhookError::UnknownBot)?;
    let presented = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    match served.verify(presented) {
        Verdict::Refused => return Err(WebhookError::BadSecret),
        Verdict::Previous => {}
        Verdict::Current => {
            // Telegram signs with the new secret: the rotation is done.
            if let Some(digest) = served.take_confirmation() {
                confirm_rotation(state, bot, digest);
            }
        }
    }
    if served.state() == BotState::Paused {
        return Err(WebhookError::Paused);
    }
    let body = read_body(state, headers, body).await?;
    let received_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let env = Envelope::from_body(bot, body, inner.shards, received_at)?;
    if telemetry::exporting() {
        let request = tracing::Span::current();
        request.record("tg.bot", bot.0);
        request.record("tg.update_id", env.update_id);
        request.record("tg.kind", env.kind.as_str());
    }
    let (subject, mut nats_headers, body) = env.into_message();
    let publish = if telemetry::exporting() {
        let publish = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            otel.name = format!("{subject} publish"),
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %subject,
            messaging.message.body.size = body.len(),
        );
        // The worker's span for this update becomes the publish span's child.
        telemetry::inject(&publish, &mut nats_headers);
        publish
    } else {
        pass_trace_context(headers, &mut nats_headers);
        tracing::Span::none()
    };

    let bytes = body.len();
    let started = Instant::now();
    let duplicate = inner
        .publisher
        .publish(subject, nats_headers, body)
        .instrument(publish)
        .await?;
    m::published(served.metrics(), started.elapsed(), bytes, duplicate);
    Ok(())
}

/// Drops the previous secret of `bot` in the webhooks bucket (compare-and-set: a rotation
/// started meanwhile is not confirmed by this). In the background: the request does not
/// wait on a registry write. Every ingress pod may do it once; all but the first find
/// nothing to do.
fn confirm_rotation(state: &AppState, bot: BotId, digest: SecretDigest) {
    let Some(store) = state.inner.registry.get().cloned() else {
        return;
    };
    tokio::spawn(async move {
        // Retried for about a minute (a registry outage); until it succeeds both secrets
        // stay accepted, which is the safe side.
        for attempt in 1..=30u32 {
            match tgpipe_shared::registry::confirm_rotation(&store, bot, &digest).await {
                Ok(true) => {
                    tracing::info!(bot = %bot, "new webhook secret confirmed; the previous one is refused from now on");
                    return;
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(bot = %bot, error = %e, attempt, "cannot confirm the new webhook secret yet");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    });
}

/// Reads the whole body within the size limit and the read timeout. A declared
/// `Content-Length` over the limit is refused before reading a byte.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, WebhookError> {
    // TGPIPE_MAX_BODY, lowered to what the broker can store with the headers (its
    // max_payload, as announced on the current connection).
    let limit = state.inner.max_body.min(state.inner.publisher.max_body());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(WebhookError::TooLarge(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(state.inner.body_read_timeout, limited.collect()).await {
        Err(_) => Err(WebhookError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(WebhookError::TooLarge(limit))
        }
        Ok(Err(e)) => Err(WebhookError::BodyRead(e)),
    }
}

/// The request's span when traces are exported (a server span, the child of the
/// caller's W3C context if it sent one), else a span that records nothing and costs
/// nothing.
fn request_span(headers: &HeaderMap) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        otel.name = "POST /webhook/{bot_id}",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = "/webhook/{bot_id}",
        http.response.status_code = Empty,
        tg.bot = Empty,
        tg.update_id = Empty,
        tg.kind = Empty,
    );
    if let Some((tp, ts)) = caller_context(headers) {
        telemetry::continue_from_w3c(tp, ts, &span);
    }
    span
}

/// The caller's W3C context (a tracing proxy's), when well formed.
fn caller_context(incoming: &HeaderMap) -> Option<(&str, Option<&str>)> {
    let tp = incoming.get(h::TRACEPARENT).and_then(|v| v.to_str().ok())?;
    if !is_traceparent(tp) {
        return None;
    }
    let ts = incoming
        .get(h::TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .filter(|ts| ts.len() <= 512);
    Some((tp, ts))
}

/// Without trace export the caller's W3C context is passed on as it came, so that a
/// trace begun before the ingress still reaches the worker.
fn pass_trace_context(incoming: &HeaderMap, out: &mut async_nats::HeaderMap) {
    if let Some((tp, ts)) = caller_context(incoming) {
        out.insert(h::TRACEPARENT, tp);
        if let Some(ts) = ts {
            out.insert(h::TRACESTATE, ts);
        }
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: anything else is not passed on.
fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    matches!(parts.as_slice(), [v, t, p, f]
        if v.len() == 2 && t.len() == 32 && p.len() == 16 && f.len() == 2
            && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_shape() {
        assert!(is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_traceparent("00-zz-b7ad6b7169203331-01"));
        assert!(!is_traceparent("garbage"));
    }
}
