//! `tgpipe-loadtest`: tools that measure tgpipe against its peers.
//!
//! - [`baseline`]: a bare axum webhook handler, the ceiling the ingress is compared to;
//! - [`sink`]: the Bot API stand-in, answering every method like Telegram and recording
//!   every call, with fault injection.
//!
//! The benchmark scripts live in `loadtest/bench/`; their results are written down in
//! `docs/benchmarks.md`.

pub mod baseline;
pub mod sink;
