//! What the ingress pays per request to find a bot and check its secret, with 1 and with
//! 1000 registry bots (and during a rotation, when two digests are compared), and what
//! 1000 bots' table costs in memory. Run with
//! `cargo bench -p tgpipe-ingress --bench bot_lookup -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tgpipe_ingress::bots::{Bots, LiveBots, Verdict};
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{BotRecord, WebhookRecord, WebhookRecords};

/// A 64-character secret, as `bots add` makes them.
fn secret(i: u64) -> String {
    format!("{i:0>64}")
}

fn registry(n: u64, rotating: bool) -> WebhookRecords {
    (1..=n)
        .map(|i| {
            let mut r = BotRecord::new(BotId(1_000_000 + i), &secret(i));
            if rotating {
                r.rotate(&secret(i + 1));
            }
            (r.id, WebhookRecord::of(&r, None))
        })
        .collect()
}

/// The handler's steps: take the table, find the bot, check the secret.
fn lookup(live: &LiveBots, bot: BotId, presented: &[u8]) -> Verdict {
    let table = live.snapshot();
    table
        .get(bot)
        .map_or(Verdict::Refused, |b| b.verify(presented))
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("bot_lookup");
    for (n, rotating) in [(1, false), (1000, false), (1000, true)] {
        let live = LiveBots::new(Bots::default());
        live.update(&registry(n, rotating));
        // The bot in the middle of the table, with its (current) secret.
        let bot = BotId(1_000_000 + n.div_ceil(2));
        let presented = if rotating {
            secret(n.div_ceil(2) + 1)
        } else {
            secret(n.div_ceil(2))
        };
        assert_eq!(lookup(&live, bot, presented.as_bytes()), Verdict::Current);
        let name = format!("{n}_bots{}", if rotating { "_rotating" } else { "" });
        group.bench_function(name, |b| {
            b.iter(|| {
                lookup(
                    black_box(&live),
                    black_box(bot),
                    black_box(presented.as_bytes()),
                )
            })
        });
    }
    group.finish();

    // Memory: the table of 1000 bots (and the records it is built from), measured as the
    // growth of the resident set over ten tables kept alive at once.
    let before = resident_kib();
    let tables: Vec<LiveBots> = (0..10)
        .map(|_| {
            let live = LiveBots::new(Bots::default());
            live.update(&registry(1000, false));
            live
        })
        .collect();
    let after = resident_kib();
    eprintln!(
        "bot table of 1000 bots: ~{} KiB each (resident set growth over {} tables)",
        after.saturating_sub(before) / tables.len() as u64,
        tables.len()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
