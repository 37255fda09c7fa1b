//! What reading one update off the stream costs the worker, before any handler runs:
//! the envelope from the subject and headers, then the body parsed once into the typed
//! event. Measured beside the way it was read before (the keys scanned from the body
//! again, the body parsed into a map of raw fields, the kind's field re-wrapped in a
//! new JSON string and parsed a third time), which is reproduced here as the baseline.
//! Run with `cargo bench -p tgpipe-worker --bench envelope`.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::num::NonZeroU16;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use frankenstein::updates::UpdateContent;
use serde_json::value::RawValue;
use tgpipe::Update;
use tgpipe_shared::{BotId, Envelope, extract_keys};

const TEXT: &[u8] = br#"{"update_id":918273645,"message":{"message_id":4711,"from":{"id":123456789,"is_bot":false,"first_name":"Alice","last_name":"Example","username":"alice","language_code":"en"},"chat":{"id":123456789,"first_name":"Alice","last_name":"Example","username":"alice","type":"private"},"date":1732400000,"text":"hello there, how are you today?"}}"#;

const CALLBACK: &[u8] = br#"{"update_id":918273646,"callback_query":{"id":"4382bfdwdsb323b2d9","from":{"id":123456789,"is_bot":false,"first_name":"Alice","username":"alice","language_code":"en"},"message":{"message_id":4712,"from":{"id":987654321,"is_bot":true,"first_name":"Bot","username":"example_bot"},"chat":{"id":123456789,"first_name":"Alice","username":"alice","type":"private"},"date":1732400001,"text":"Pick one","reply_markup":{"inline_keyboard":[[{"text":"tea","callback_data":"menu:tea"},{"text":"coffee","callback_data":"menu:coffee"}]]}},"chat_instance":"-7283582374","data":"menu:tea"}}"#;

/// The read path as it was: keys from the body, then three parses of it.
fn before(raw: &Bytes) -> UpdateContent {
    let keys = extract_keys(raw).expect("keys");
    let fields: HashMap<&str, &RawValue> = serde_json::from_slice(raw).expect("fields");
    let payload = fields[keys.kind.as_str()];
    let tagged = format!("{{\"{}\":{}}}", keys.kind.as_str(), payload.get());
    let content: UpdateContent = serde_json::from_str(&tagged).expect("typed");
    content
}

fn bench(c: &mut Criterion) {
    let shards = NonZeroU16::new(64).expect("shards");
    for (name, body) in [("text message", TEXT), ("callback query", CALLBACK)] {
        let body = Bytes::from_static(body);
        let env = Envelope::from_body(BotId(42), body.clone(), shards, 0).expect("envelope");
        let (subject, headers, body) = env.into_message();
        c.bench_function(&format!("{name}: before (keys + 3 parses)"), |b| {
            b.iter(|| before(&body))
        });
        c.bench_function(&format!("{name}: envelope from headers + 1 parse"), |b| {
            b.iter(|| {
                let env = Envelope::from_message(&subject, Some(&headers), body.clone())
                    .expect("envelope");
                Update::from_envelope(&env)
            })
        });
        c.bench_function(&format!("{name}: Update::parse (keys + 1 parse)"), |b| {
            b.iter(|| Update::parse(BotId(42), body.clone()).expect("update"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
