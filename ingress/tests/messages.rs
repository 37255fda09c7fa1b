//! What the binary says when something is wrong: the setting at fault by its
//! environment variable and flag, and an unreachable NATS at WARN with its URL.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ingress() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tgpipe-ingress"));
    c.env_clear().env("TGPIPE_BOTS", "123:secret-value");
    c
}

#[test]
fn a_max_body_in_exponent_form_names_tgpipe_max_body_and_exits_64() {
    // What the chart rendered (`quote` of 1048576): the message named only the flag.
    let out = ingress()
        .env("TGPIPE_MAX_BODY", "1.048576e+06")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'1.048576e+06' for TGPIPE_MAX_BODY (--max-body)"),
        "{err}"
    );
}

#[test]
fn a_bad_cidr_says_which_setting_held_it() {
    for (var, flag) in [
        ("TGPIPE_ALLOWED_CIDRS", "--allowed-cidrs"),
        ("TGPIPE_TRUSTED_PROXIES", "--trusted-proxies"),
    ] {
        let out = ingress()
            .env(var, "10.0.0.0/8,10.1.2.3/40")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{var} ({flag}): `10.1.2.3/40`")),
            "{err}"
        );
    }
}

#[test]
fn nats_unreachable_is_a_warning_with_the_url_redacted_and_what_happens_next() {
    // It was `INFO event: client error: IO error`, with no server named.
    let port = tgpipe_testkit::free_port();
    let ops = tgpipe_testkit::free_port();
    let web = tgpipe_testkit::free_port();
    let mut child = ingress()
        .env("NATS_URL", format!("nats://app:hunter2@127.0.0.1:{port}"))
        .env("TGPIPE_LISTEN", format!("127.0.0.1:{web}"))
        .env("TGPIPE_OPS_LISTEN", format!("127.0.0.1:{ops}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    // Five seconds of its log, retries included: none may show the password.
    std::thread::sleep(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    let log = reader.join().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("cannot reach NATS"))
        .unwrap_or_else(|| panic!("no warning about NATS in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&format!("nats://app:***@127.0.0.1:{port}")),
        "{line}"
    );
    assert!(line.contains("retrying in the background"), "{line}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[test]
fn an_unreadable_certificate_names_tgpipe_tls_cert() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = ingress()
        .env("TGPIPE_TLS_CERT", &missing)
        .env("TGPIPE_TLS_KEY", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TGPIPE_TLS_CERT / TGPIPE_TLS_KEY (--tls-cert / --tls-key)"),
        "{err}"
    );
    assert!(err.contains("missing.pem"), "{err}");
}
