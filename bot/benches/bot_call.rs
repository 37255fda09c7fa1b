//! The cost of the Bot API call path (span, middleware, limiter, envelope decoding)
//! over a bare reqwest POST, both against the stand-in on loopback.
//!
//! `cargo bench -p tgpipe-worker --bench bot_call`

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use tgpipe_bot::Bot;
use tgpipe_bot::RateLimits;
use tgpipe_testkit::sink::{Sink, SinkConfig};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sink = rt
        .block_on(Sink::start(SinkConfig::default()))
        .expect("stand-in");
    let url = sink.url();
    let bot = Bot::builder("123:TEST")
        .api_url(&url)
        .limits(RateLimits::unlimited())
        .build()
        .expect("bot");
    let client = reqwest::Client::new();
    let raw_url = format!("{url}/bot123:TEST/sendMessage");
    let body = serde_json::json!({"chat_id": 5, "text": "hi"});
    let mut g = c.benchmark_group("send_message");
    g.bench_function("reqwest", |b| {
        b.to_async(&rt).iter(|| async {
            let r = client
                .post(&raw_url)
                .json(&body)
                .send()
                .await
                .expect("sent");
            r.bytes().await.expect("body")
        })
    });
    g.bench_function("bot_call_path", |b| {
        b.to_async(&rt)
            .iter(|| async { bot.send_text(5, "hi").await.expect("sent") })
    });
    g.finish();
    // The stand-in records every call; keep its memory flat between groups.
    sink.clear();
}

criterion_group!(benches, bench);
criterion_main!(benches);
