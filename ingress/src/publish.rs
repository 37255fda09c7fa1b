//! Publishing one update to JetStream and waiting for its acknowledgement: the
//! [`Publisher`] lives in `tgpipe-shared` because `getUpdates` polling in the worker
//! publishes exactly as the ingress does.

pub use tgpipe_shared::publish::{PublishError, Publisher};
