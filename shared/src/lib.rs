//! `tgpipe-shared`: what the ingress and the workers must agree on.
//!
//! - the wire contract, on serde alone: an update on the wire ([`Envelope`]: computed
//!   once where it enters, read back once where it is consumed), [`UpdateKind`],
//!   [`extract_keys`], subjects and shards ([`subject`]) and NATS header names
//!   ([`headers`]);
//! - with `nats`: the envelope to and from a NATS message, the stream configuration
//!   (`stream`), publishing with acknowledgement (`publish`), and the bot registry the
//!   ingress and the workers watch (`registry`);
//! - process plumbing every binary needs: configuration helpers (`config`, feature
//!   `config`), telemetry (`telemetry`, feature `telemetry`) and the shutdown signal
//!   (`shutdown`, feature `config`);
//! - the operations endpoints both tiers serve, `/healthz`, `/readyz` and `/metrics`
//!   (`ops`, feature `ops`).
//!
//! The test harness is the `tgpipe-testkit` crate.
//!
//! | feature     | adds                                                        | implies  |
//! |-------------|-------------------------------------------------------------|----------|
//! | (none)      | the wire contract: kinds, keys, subjects, headers, `Envelope::from_body` | |
//! | `config`    | clap argument groups and helpers, the shutdown signal       |          |
//! | `nats`      | async-nats: envelope messages, publish, streams, registry   | `config` |
//! | `telemetry` | logs, OTLP traces, trace context in headers, Prometheus     | `nats`   |
//! | `ops`       | `/healthz`, `/readyz`, `/metrics`: readiness and the ops server | `telemetry` |
//!
//! Changing anything in the wire contract changes what is stored in JetStream and
//! what older pods expect: do it on purpose, in `DESIGN.md` as well.

#[cfg(feature = "config")]
pub mod config;
pub mod envelope;
pub mod extract;
pub mod headers;
pub mod kind;
#[cfg(feature = "ops")]
pub mod ops;
#[cfg(feature = "nats")]
pub mod publish;
#[cfg(feature = "nats")]
pub mod registry;
#[cfg(feature = "config")]
pub mod shutdown;
#[cfg(feature = "nats")]
pub mod stream;
pub mod subject;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod timer;

/// A boxed error: the `source` of the errors that wrap a client's error (NATS, OTLP,
/// hyper), kept whole instead of flattened into a string.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub use envelope::{Envelope, EnvelopeError, MsgId};
pub use extract::{KeysError, OrderingKey, UpdateKeys, extract_keys};
pub use kind::UpdateKind;
pub use subject::{BotId, Shard};
