//! Test data: the corpus of real updates (vendored in `testkit/fixtures/`), a text update
//! as Telegram sends it, and the path of another workspace package's binary.

use std::path::PathBuf;

/// The fixture corpus of real updates, one JSON object per line
/// (`testkit/fixtures/updates/corpus.jsonl`; override with `TGPIPE_FIXTURES`).
pub fn corpus() -> Vec<String> {
    let path = std::env::var_os("TGPIPE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/updates/corpus.jsonl")
        });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture corpus {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A text message update as Telegram sends it, as JSON (`.to_string()` is a webhook
/// body): update `update_id` carries message `update_id`, `text` from the user Ann, in
/// her private chat `chat` (a private chat's id is its user's), or in the group `chat`
/// when `chat` is negative, as groups' ids are (Ann is then user 7). A leading
/// `/command` carries its `bot_command` entity, as Telegram's do.
///
/// ```
/// let update = tgpipe_testkit::text_update(10, 5, "/start ref-42");
/// assert_eq!(update["message"]["chat"]["type"], "private");
/// assert_eq!(update["message"]["from"]["id"], 5);
/// assert_eq!(update["message"]["entities"][0]["length"], 6);
/// let group = tgpipe_testkit::text_update(11, -55, "hi");
/// assert_eq!(group["message"]["chat"]["type"], "group");
/// ```
pub fn text_update(update_id: i64, chat: i64, text: &str) -> serde_json::Value {
    use serde_json::json;
    let entities = if text.starts_with('/') {
        let len = text.find(' ').unwrap_or(text.len());
        json!([{"type": "bot_command", "offset": 0, "length": len}])
    } else {
        json!([])
    };
    let (chat, user) = if chat < 0 {
        (
            json!({"id": chat, "type": "group", "title": "Rustaceans"}),
            7,
        )
    } else {
        (
            json!({"id": chat, "type": "private", "first_name": "Ann"}),
            chat,
        )
    };
    json!({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1_732_400_000, "chat": chat,
        "from": {"id": user, "is_bot": false, "first_name": "Ann"}, "text": text,
        "entities": entities}})
}

/// The path of a binary built from another package of the workspace (cargo gives a test
/// only its own package's binaries, `CARGO_BIN_EXE_<name>`), beside the test's own
/// executable in the target directory. `cargo test --workspace` and `cargo nextest run
/// --workspace` build it; alone, the package must be built first, and the panic says
/// how.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p {package}` (or test the whole workspace)",
        bin.display()
    );
    bin
}
