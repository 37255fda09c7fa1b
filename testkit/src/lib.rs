//! `tgpipe-testkit`: the harness every tgpipe test uses.
//!
//! - a private `nats-server` (JetStream; [`NatsServer`], or a 3-node [`NatsCluster`] on
//!   loopback) or `redis-server` ([`RedisServer`]) per test, on a free port, with its
//!   own temporary storage, stopped and removed on `Drop`;
//! - [`sink`]: the Bot API stand-in, an HTTP server that answers every method like
//!   Telegram, records every call and injects faults;
//! - [`otlp`]: an OTLP/HTTP trace receiver that decodes what the exporters send;
//! - [`TcpProxy`]: a proxy in front of a server that can turn into a black hole (Redis
//!   gone without an RST);
//! - [`eventually`], [`eventually_some`], [`eventually_ok`] (and the blocking
//!   [`eventually_blocking`], [`eventually_some_blocking`]): wait for a condition with a
//!   deadline, and panic naming it;
//! - [`text_update`]: a text message update as Telegram sends it;
//! - [`corpus`]: the fixture corpus of real updates; [`workspace_bin`]: a binary of
//!   another workspace package (the example bot the end-to-end tests run).
//!
//! Tests run against the real servers, never mocks. Each test gets its own process
//! because JetStream streams cannot share subjects and some tests stop and restart the
//! broker. Binaries are found through `TGPIPE_NATS_SERVER` / `TGPIPE_REDIS_SERVER`
//! (set by the project's test command) or on `PATH`. The NATS server must be 2.10 or
//! newer (multi-subject consumer filters).

mod fixtures;
pub mod otlp;
mod proxy;
mod servers;
pub mod sink;
mod wait;

pub use fixtures::{corpus, text_update, workspace_bin};
pub use proxy::TcpProxy;
pub use servers::{NatsCluster, NatsServer, RedisServer, free_port};
pub use wait::{
    eventually, eventually_blocking, eventually_ok, eventually_some, eventually_some_blocking,
};
