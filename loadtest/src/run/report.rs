//! Matching the stand-in's recorded calls to the delivered updates, and the report.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::generate::UpdateSpec;
use super::send::DeliveryOutcome;

/// A call as the stand-in's `GET /_sink/calls` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkCall {
    /// Position in the record.
    pub seq: u64,
    /// Method name.
    pub method: String,
    /// Parameters.
    pub params: serde_json::Value,
    /// Arrival, unix milliseconds.
    pub at: u64,
    /// HTTP status it was answered with.
    pub status: u16,
}

/// Latency percentiles, milliseconds from an update's first send to its first reply.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Updates sent at least once.
    pub sent: usize,
    /// Updates answered 2xx.
    pub accepted: usize,
    /// Updates never answered 2xx within the attempts allowed.
    pub rejected: usize,
    /// Extra attempts (retries) over all updates.
    pub retried: usize,
    /// Accepted updates with at least one reply.
    pub replied: usize,
    /// Accepted updates without any reply.
    pub lost: usize,
    /// Replies beyond the first of the same method for the same update.
    pub duplicates: usize,
    /// First replies that came after a later update's reply in the same chat.
    pub out_of_order: usize,
    /// Accepted updates per second of delivery.
    pub accept_per_s: f64,
    /// Replies per second, from the first send to the last reply.
    pub reply_per_s: f64,
    /// Send-to-reply latency.
    pub latency_ms: Latency,
}

fn ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Every `lt<digits>` token in `text`.
fn tokens_in(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i + 2 < bytes.len() {
            if &bytes[i..i + 2] == b"lt" && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
                let start = i;
                let mut end = i + 2;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                i = end.max(i + 1);
                if end > start + 2 {
                    return Some(&text[start..end]);
                }
            } else {
                i += 1;
            }
        }
        None
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Builds the report from what was delivered and what the stand-in recorded.
pub fn match_replies(
    updates: &[UpdateSpec],
    outcomes: &[DeliveryOutcome],
    calls: &[SinkCall],
) -> Report {
    let by_token: HashMap<&str, usize> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| (u.token.as_str(), i))
        .collect();
    let mut first_reply: Vec<Option<u64>> = vec![None; updates.len()];
    let mut seen: HashSet<(usize, &str)> = HashSet::new();
    let mut duplicates = 0;
    let mut order: Vec<usize> = Vec::new();
    let mut ordered_calls: Vec<&SinkCall> = calls
        .iter()
        .filter(|c| (200..300).contains(&c.status))
        .collect();
    ordered_calls.sort_by_key(|c| c.seq);
    for call in ordered_calls {
        let text = call.params.to_string();
        // One call may quote a token several times (text and markup); count it once.
        let mut in_call: HashSet<usize> = HashSet::new();
        for token in tokens_in(&text) {
            if let Some(&i) = by_token.get(token) {
                in_call.insert(i);
            }
        }
        for i in in_call {
            if !seen.insert((i, call.method.as_str())) {
                duplicates += 1;
                continue;
            }
            if first_reply[i].is_none() {
                first_reply[i] = Some(call.at);
                order.push(i);
            }
        }
    }
    // Out of order: a chat's first replies should follow its updates' order.
    let mut highest: HashMap<i64, usize> = HashMap::new();
    let mut out_of_order = 0;
    for i in order {
        let u = &updates[i];
        let h = highest.entry(u.chat_id).or_insert(u.index_in_chat);
        if u.index_in_chat < *h {
            out_of_order += 1;
        } else {
            *h = u.index_in_chat;
        }
    }
    let accepted: Vec<usize> = (0..updates.len())
        .filter(|i| outcomes[*i].accepted_at.is_some())
        .collect();
    let replied = accepted
        .iter()
        .filter(|i| first_reply[**i].is_some())
        .count();
    let mut latencies: Vec<f64> = accepted
        .iter()
        .filter_map(|i| {
            first_reply[*i].map(|at| (at as f64 - ms(outcomes[*i].first_sent)).max(0.0))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let start = outcomes
        .iter()
        .map(|o| ms(o.first_sent))
        .fold(f64::INFINITY, f64::min);
    let last_accept = outcomes
        .iter()
        .filter_map(|o| o.accepted_at.map(ms))
        .fold(0.0, f64::max);
    let last_reply = first_reply
        .iter()
        .flatten()
        .map(|at| *at as f64)
        .fold(0.0, f64::max);
    let per_s = |n: usize, end: f64| {
        if n == 0 || end <= start {
            0.0
        } else {
            n as f64 / ((end - start) / 1000.0)
        }
    };
    Report {
        sent: outcomes.iter().filter(|o| o.attempts > 0).count(),
        accepted: accepted.len(),
        rejected: outcomes
            .iter()
            .filter(|o| o.attempts > 0 && o.accepted_at.is_none())
            .count(),
        retried: outcomes
            .iter()
            .map(|o| o.attempts.saturating_sub(1) as usize)
            .sum(),
        replied,
        lost: accepted.len() - replied,
        duplicates,
        out_of_order,
        accept_per_s: per_s(accepted.len(), last_accept),
        reply_per_s: per_s(replied, last_reply),
        latency_ms: Latency {
            p50: percentile(&latencies, 50.0),
            p90: percentile(&latencies, 90.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or(0.0),
        },
    }
}

/// Reads the stand-in's record from `since`, until every accepted update has a reply or
/// `timeout` passes; then a short quiet period catches late duplicates.
pub async fn collect_replies(
    sink_url: &str,
    updates: &[UpdateSpec],
    outcomes: &[DeliveryOutcome],
    since: u64,
    timeout: Duration,
) -> Result<Vec<SinkCall>, reqwest::Error> {
    let client = reqwest::Client::new();
    let wanted: HashSet<&str> = updates
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.accepted_at.is_some())
        .map(|(u, _)| u.token.as_str())
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut calls: Vec<SinkCall> = Vec::new();
    let mut found: HashSet<String> = HashSet::new();
    let mut next = since;
    let mut complete_since: Option<tokio::time::Instant> = None;
    loop {
        let batch: Vec<SinkCall> = client
            .get(format!(
                "{}/_sink/calls?since={next}",
                sink_url.trim_end_matches('/')
            ))
            .send()
            .await?
            .json()
            .await?;
        for c in &batch {
            for t in tokens_in(&c.params.to_string()) {
                if wanted.contains(t) {
                    found.insert(t.to_owned());
                }
            }
        }
        if let Some(last) = batch.last() {
            next = last.seq + 1;
        }
        calls.extend(batch);
        let now = tokio::time::Instant::now();
        if found.len() >= wanted.len() {
            let since_complete = *complete_since.get_or_insert(now);
            if now - since_complete >= Duration::from_millis(500) {
                return Ok(calls);
            }
        }
        if now >= deadline {
            return Ok(calls);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_whole() {
        let found: Vec<&str> =
            tokens_in(r#"{"text":"hello lt123, and lt45 and salt99 lt"}"#).collect();
        assert_eq!(found, vec!["lt123", "lt45"]);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0)), (50.0, 99.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
