//! The example bot's command line, as an operator meets it: every command is listed,
//! and a start without its settings fails at once with the setting's name.
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
fn run_without_a_token_names_the_missing_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgpipe-example-bot"))
        .arg("run")
        .env_clear()
        .output()
        .expect("run the example bot");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TELEGRAM_BOT_TOKEN"), "{err}");
}
