//! The example bot's command line, as an operator meets it: every command is listed,
//! and a bad setting fails at once, before any connection, naming the setting.
//!
//! (This test also makes `cargo test --workspace` build the binary that the worker's
//! end-to-end tests run.)

use std::process::Command;

#[test]
fn help_lists_the_worker_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgpipe-example-bot"))
        .arg("--help")
        .output()
        .expect("run the example bot");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "poll", "webhook", "dlq"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[test]
fn run_with_a_bad_setting_names_it_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgpipe-example-bot"))
        .arg("run")
        .env_clear()
        .env("TGPIPE_SHARDS", "0")
        // Nothing listens here: a start that got past the settings would fail otherwise.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run the example bot");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TGPIPE_SHARDS"), "{err}");
    assert!(!err.contains("127.0.0.1:1"), "it connected first: {err}");
}

#[test]
fn a_bad_antiflood_setting_is_named_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgpipe-example-bot"))
        .arg("run")
        .env_clear()
        .env("EXAMPLE_ANTIFLOOD", "five per minute")
        // Nothing listens here: a start that got past the setting would fail otherwise.
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run the example bot");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXAMPLE_ANTIFLOOD"), "{err}");
    assert!(!err.contains("127.0.0.1:1"), "it connected first: {err}");
}
