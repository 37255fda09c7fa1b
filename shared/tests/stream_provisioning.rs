//! Stream provisioning against a real nats-server.

use std::time::Duration;

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use tgpipe_shared::stream::{Changes, StreamSettings, provision_streams, provision_streams_with};
use tgpipe_testkit::NatsServer;

#[tokio::test]
async fn provisioning_creates_both_streams_and_changes_them_only_when_told() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);

    let mut settings = StreamSettings::default();
    provision_streams(&js, &settings).await.unwrap();
    let mut updates = js.get_stream("TG_UPDATES").await.unwrap();
    let info = updates.info().await.unwrap();
    // Updates, and the durable timers waiting to fire into them.
    assert_eq!(
        info.config.subjects,
        vec!["tg.>".to_owned(), "tgtimer.>".to_owned()]
    );
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.config.storage, StorageType::File);
    // No size limit: nothing is discarded either way, and schedules refuse `new`.
    assert_eq!(info.config.discard, DiscardPolicy::Old);
    assert!(info.config.allow_message_schedules);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let dlq = js
        .get_stream("TG_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(dlq.subjects, vec!["tgdlq.>".to_owned()]);
    assert_eq!(dlq.retention, RetentionPolicy::Limits);

    // A process started with other settings leaves the existing stream as it is ...
    settings.dedupe_window = Duration::from_secs(30);
    provision_streams(&js, &settings).await.unwrap();
    let info = updates.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    // ... and `provision --apply` changes it in place.
    provision_streams_with(&js, &settings, Changes::Apply)
        .await
        .unwrap();
    let info = updates.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
}

#[tokio::test]
async fn a_change_jetstream_refuses_names_the_stream() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut settings = StreamSettings::default();
    provision_streams(&js, &settings).await.unwrap();
    settings.retention = tgpipe_shared::stream::Retention::Limits;
    // Without --apply the difference is only logged.
    provision_streams(&js, &settings).await.unwrap();
    let err = provision_streams_with(&js, &settings, Changes::Apply)
        .await
        .unwrap_err();
    assert_eq!(err.stream, "TG_UPDATES");
}

/// A stream with a size limit refuses writes when full (the ingress answers 503):
/// message schedules cannot, so it keeps no timers.
#[tokio::test]
async fn a_size_limited_stream_refuses_writes_when_full_and_keeps_no_timers() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let settings = StreamSettings {
        max_bytes: 1 << 20,
        ..StreamSettings::default()
    };
    assert!(!settings.timers_in_stream());
    provision_streams(&js, &settings).await.unwrap();
    let mut updates = js.get_stream("TG_UPDATES").await.unwrap();
    let info = updates.info().await.unwrap();
    assert_eq!(info.config.discard, DiscardPolicy::New);
    assert!(!info.config.allow_message_schedules);
    assert_eq!(info.config.subjects, vec!["tg.>".to_owned()]);
}
