//! `tgpipe-loadtest`: tools that measure tgpipe against its peers.
//!
//! - [`baseline`]: a bare axum webhook handler, the ceiling the ingress is compared to;
//! - [`run`]: the load generator, delivering updates like Telegram and matching replies;
//!
//! The binary's `sink` command serves the Bot API stand-in of `tgpipe-testkit`
//! (`tgpipe_testkit::sink`), answering every method like Telegram and recording every
//! call, with fault injection.
//!
//! The benchmark scripts live in `loadtest/bench/`; their results are written down in
//! `docs/benchmarks.md`.

pub mod baseline;
pub mod run;
