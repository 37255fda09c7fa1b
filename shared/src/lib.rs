//! `tgpipe-shared`: what the ingress and the workers must agree on.
//!
//! - the wire contract: an update on the wire ([`Envelope`]: computed once where it
//!   enters, read back once where it is consumed), [`UpdateKind`], [`extract_keys`],
//!   subjects and shards ([`subject`]), NATS header names ([`headers`]), the stream
//!   configuration ([`stream`]), publishing with acknowledgement ([`publish`]), and the
//!   bot registry the ingress and the workers watch ([`registry`]);
//! - process plumbing every binary needs: configuration helpers ([`config`]),
//!   telemetry ([`telemetry`]) and the shutdown signal ([`shutdown`]);
//! - with the `testkit` feature, a harness that starts private `nats-server` and
//!   `redis-server` processes for tests ([`testkit`]).
//!
//! Changing anything in the wire contract changes what is stored in JetStream and
//! what older pods expect: do it on purpose, in `DESIGN.md` as well.

pub mod config;
pub mod envelope;
pub mod extract;
pub mod headers;
pub mod kind;
pub mod publish;
pub mod registry;
pub mod shutdown;
pub mod stream;
pub mod subject;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use envelope::{Envelope, EnvelopeError, MsgId};
pub use extract::{ExtractError, OrderingKey, UpdateKeys, extract_keys};
pub use kind::UpdateKind;
pub use subject::{BotId, Shard};
