//! Dispatch cost per update: a router tree of 50 handlers (the update matches the last
//! one, the worst case) under 3 middleware layers, no I/O. Run with
//! `cargo bench -p tgpipe-worker --bench dispatch`.

#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use tgpipe::filter::text;
use tgpipe::{Bot, Context, Dispatcher, Next, Router, Update};

fn dispatcher() -> Dispatcher {
    let mut root = Router::new("root");
    // 50 handlers over a root and 4 nested routers, each with a text filter.
    let mut children: Vec<Router> = (0..4).map(|i| Router::new(format!("child{i}"))).collect();
    for i in 0..50 {
        let r = if i < 10 {
            &mut root
        } else {
            &mut children[(i - 10) / 10]
        };
        r.message(|| async {}).filter(text::equals(format!("h{i}")));
    }
    for c in children {
        root.include_router(c);
    }
    let layer = |cx: Context, next: Next| next.run(cx);
    root.outer_middleware(tgpipe_shared::UpdateKind::Message, layer);
    root.inner_middleware(tgpipe_shared::UpdateKind::Message, layer);
    Dispatcher::builder(root)
        .update_middleware(layer)
        .build()
        .expect("builds")
}

fn update() -> Bytes {
    Bytes::from_static(br#"{"update_id":1,"message":{"message_id":1,"date":1732400000,"chat":{"id":5,"type":"private","first_name":"A"},"from":{"id":5,"is_bot":false,"first_name":"A"},"text":"h49"}}"#)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dp = dispatcher();
    let bot = Bot::new("123:TEST").expect("token");
    let raw = update();
    let parsed = Update::parse(bot.id(), raw.clone()).expect("update");
    assert!(matches!(
        rt.block_on(dp.feed_raw(&bot, raw.clone())),
        Ok(tgpipe::Outcome::Handled)
    ));
    c.bench_function("dispatch 50 handlers, 3 middleware (parsed update)", |b| {
        b.to_async(&rt)
            .iter(|| dp.feed_update(&bot, parsed.clone()))
    });
    c.bench_function(
        "parse + dispatch 50 handlers, 3 middleware (raw bytes)",
        |b| b.to_async(&rt).iter(|| dp.feed_raw(&bot, raw.clone())),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
