//! What the stand-in remembers: every call, in arrival order, and counters.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// One Bot API call as the stand-in received it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedCall {
    /// Position in the record (0-based), for `GET /_sink/calls?since=N`.
    pub seq: u64,
    /// The bot id from the token (`<id>:<secret>`); the secret part is never kept.
    pub bot_id: Option<u64>,
    /// The method name as called (`sendMessage`).
    pub method: String,
    /// Parameters from the query string and the body, merged (body wins).
    pub params: serde_json::Value,
    /// Files uploaded in a multipart body.
    pub files: Vec<RecordedFile>,
    /// When it was answered (after the latency and any slow fault), as it is recorded.
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    /// When its request had been read (before the latency and any slow fault): a call
    /// is in flight from `received` to `at`.
    #[serde(with = "unix_ms")]
    pub received: SystemTime,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// A file part of a multipart call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordedFile {
    /// The form field (`certificate`, `photo`, ...).
    pub field: String,
    /// The file name the client gave.
    pub file_name: Option<String>,
    /// The part's content type.
    pub content_type: Option<String>,
    /// Its size in bytes.
    pub size: usize,
}

/// Counters over the whole record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStats {
    /// Calls received.
    pub calls: u64,
    /// Calls by method.
    pub by_method: BTreeMap<String, u64>,
    /// Calls by answered HTTP status.
    pub by_status: BTreeMap<u16, u64>,
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }
}
