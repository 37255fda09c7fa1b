//! An OTLP/HTTP trace receiver: what a collector would get from the ingress and the
//! workers, decoded with the `opentelemetry-proto` types, for tests that check a trace's
//! shape (which span is whose child, and with which attributes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One span as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name (`otel.name` when the code set one).
    pub name: String,
    /// Lower-case hex, 32 digits.
    pub trace_id: String,
    /// Lower-case hex, 16 digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind` (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// OTLP's status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// Attributes, each value rendered as a string (integers in decimal).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// The attribute's value, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver on a local port; stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 (a port the kernel picks) and accepts `POST /v1/traces` in
    /// protobuf, as `opentelemetry-otlp`'s `http-proto` exporter sends it.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let receiver = OtlpReceiver {
            addr: listener.local_addr().expect("local address"),
            spans: Arc::default(),
            requests: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    /// The base URL to give an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// Requests that could not be decoded (their error), if any.
    pub fn rejected(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }

    /// Waits until `done` holds for the spans received, or panics after `limit` with
    /// what arrived.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the expected spans did not arrive within {limit:?}; received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn export(
    axum::extract::State(receiver): axum::extract::State<OtlpReceiver>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let decoded = if protobuf {
        ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "content type {:?}",
            headers.get(header::CONTENT_TYPE)
        ))
    };
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            receiver.requests.lock().expect("requests").push(e.clone());
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    let mut received = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(render)
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                kind: span.kind,
                status: span.status.map_or(0, |s| s.code),
                attributes: attributes(&span.attributes),
            });
        }
    }
    receiver.spans.lock().expect("spans").extend(received);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
