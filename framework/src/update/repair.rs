//! The drift repairs: a known kind's payload that the typed model does not read is
//! fitted to it (a field left out, an unknown enum value replaced), and each repair
//! is recorded (see the module docs of `update`).

use serde_json::value::RawValue;
use tgpipe_shared::UpdateKind;

use super::{Event, RawReason, Repair, from_content};

/// The typed model did not read the payload: try again with the payload's values that
/// do not fit repaired (see [`lenient`]).
pub(super) fn repaired(
    kind: &UpdateKind,
    raw: &[u8],
    first: serde_json::Error,
) -> (Event, Vec<Repair>) {
    let fields: std::collections::HashMap<&str, &RawValue> = match serde_json::from_slice(raw) {
        Ok(f) => f,
        Err(e) => return (Event::Raw(RawReason::Unparsed(e.to_string())), Vec::new()),
    };
    let Some(payload) = fields.get(kind.as_str()) else {
        return (
            Event::Raw(RawReason::Unparsed(first.to_string())),
            Vec::new(),
        );
    };
    // frankenstein's `UpdateContent` is externally tagged by field name.
    let tagged = format!("{{\"{}\":{}}}", kind.as_str(), payload.get());
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&tagged) else {
        return (
            Event::Raw(RawReason::Unparsed(first.to_string())),
            Vec::new(),
        );
    };
    repair_upstream_enums(&mut v);
    match lenient::parse(v) {
        Ok((content, repairs)) => (from_content(content), repairs),
        Err(e) => (Event::Raw(RawReason::Unparsed(e)), Vec::new()),
    }
}

/// The repairs of a payload that does not fit the typed model (see the module docs).
mod lenient {
    use frankenstein::updates::UpdateContent;
    use serde_json::Value;

    use super::Repair;

    /// At most this many repairs per update, and this many parse attempts: a payload
    /// that needs more is not one the model can be said to read.
    const MAX_REPAIRS: usize = 16;
    const MAX_ATTEMPTS: usize = 128;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seg {
        Key(String),
        Index(usize),
    }

    fn len(v: &Value) -> usize {
        serde_json::to_string(v).map_or(0, |s| s.len())
    }

    fn key_len(k: &str) -> usize {
        serde_json::to_string(k).map_or(0, |s| s.len())
    }

    /// The children of a container with the byte offset each starts at, in the compact
    /// serialisation, when the container starts at `start`.
    fn children(v: &Value, start: usize) -> Vec<(Seg, &Value, usize)> {
        let mut out = Vec::new();
        let mut pos = start + 1;
        match v {
            Value::Object(map) => {
                for (i, (k, child)) in map.iter().enumerate() {
                    pos += usize::from(i > 0) + key_len(k) + 1;
                    out.push((Seg::Key(k.clone()), child, pos));
                    pos += len(child);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    pos += usize::from(i > 0);
                    out.push((Seg::Index(i), child, pos));
                    pos += len(child);
                }
            }
            _ => {}
        }
        out
    }

    /// The innermost value whose serialisation spans byte `at` (from its first byte to
    /// just after its last): where the parser was when it failed (serde_json reports the
    /// column just after the last byte it read, or of a value it peeked at and refused,
    /// and the text is one line).
    fn locate(v: &Value, at: usize) -> Vec<Seg> {
        let mut path = Vec::new();
        let (mut cur, mut start) = (v, 0);
        loop {
            let next = children(cur, start)
                .into_iter()
                .find(|(_, child, pos)| at >= *pos && at <= pos + len(child));
            match next {
                Some((seg, child, pos)) => {
                    path.push(seg);
                    cur = child;
                    start = pos;
                }
                None => return path,
            }
        }
    }

    fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
        path.iter().try_fold(v, |cur, seg| match seg {
            Seg::Key(k) => cur.get_mut(k.as_str()),
            Seg::Index(i) => cur.get_mut(*i),
        })
    }

    fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
        path.iter().try_fold(v, |cur, seg| match seg {
            Seg::Key(k) => cur.get(k.as_str()),
            Seg::Index(i) => cur.get(*i),
        })
    }

    /// Takes the value at `path` out of its object or array.
    fn remove(v: &mut Value, path: &[Seg]) -> Option<Value> {
        let (last, parent) = path.split_last()?;
        match (get_mut(v, parent)?, last) {
            (Value::Object(map), Seg::Key(k)) => map.remove(k),
            (Value::Array(items), Seg::Index(i)) if *i < items.len() => Some(items.remove(*i)),
            _ => None,
        }
    }

    fn path_string(path: &[Seg]) -> String {
        let mut out = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn short(v: &Value) -> String {
        let mut s = v.to_string();
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }

    /// The value serde named in "unknown variant `x`, expected one of `a`, `b`", and
    /// the ones it expected.
    fn unknown_variant(msg: &str) -> Option<(String, Vec<String>)> {
        let rest = msg.strip_prefix("unknown variant `")?;
        let (value, rest) = rest.split_once('`')?;
        let expected = rest.split_once("expected")?.1;
        let expected = expected.split(" at line ").next().unwrap_or(expected);
        let candidates = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        Some((value.to_owned(), candidates))
    }

    struct Attempts(usize);

    impl Attempts {
        fn parse(&mut self, v: &Value) -> Option<Result<UpdateContent, serde_json::Error>> {
            if self.0 >= MAX_ATTEMPTS {
                return None;
            }
            self.0 += 1;
            let text = serde_json::to_string(v).ok()?;
            Some(serde_json::from_str::<UpdateContent>(&text))
        }
    }

    /// Whether leaving out the field at `path` got the parser past it (it did not
    /// just complain that the field is required).
    fn removal_helps(r: &Result<UpdateContent, serde_json::Error>, path: &[Seg]) -> bool {
        match (r, path.last()) {
            (Ok(_), _) => true,
            (Err(e), Some(Seg::Key(k))) => {
                !e.to_string().starts_with(&format!("missing field `{k}`"))
            }
            (Err(_), _) => true,
        }
    }

    /// Objects below the payload that look like messages (`message_id`, `date`, `chat`).
    fn message_like(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        match v {
            Value::Object(map) => {
                if at.len() > 1
                    && ["message_id", "date", "chat"]
                        .iter()
                        .all(|k| map.contains_key(*k))
                {
                    out.push(at.clone());
                }
                for (k, child) in map {
                    at.push(Seg::Key(k.clone()));
                    message_like(child, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    at.push(Seg::Index(i));
                    message_like(child, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    /// Parses `v`, repairing it until it fits (or giving up with the first error).
    pub(super) fn parse(v: Value) -> Result<(UpdateContent, Vec<Repair>), String> {
        parse_value(v, &mut Attempts(0)).map(|(content, repairs, _)| (content, repairs))
    }

    /// [`parse`], also giving back the repaired value.
    fn parse_value(
        mut v: Value,
        attempts: &mut Attempts,
    ) -> Result<(UpdateContent, Vec<Repair>, Value), String> {
        let mut repairs = Vec::new();
        let mut first_error = None;
        loop {
            let err = match attempts.parse(&v) {
                Some(Ok(content)) => return Ok((content, repairs, v)),
                Some(Err(e)) => e,
                None => return Err(first_error.unwrap_or_else(|| "too many repairs".into())),
            };
            let msg = err.to_string();
            let first = first_error.get_or_insert(msg.clone()).clone();
            if repairs.len() >= MAX_REPAIRS {
                return Err(first);
            }
            match repair_once(&mut v, &err, attempts) {
                Some(r) => repairs.push(r),
                None => return Err(first),
            }
        }
    }

    fn repair_once(
        v: &mut Value,
        err: &serde_json::Error,
        attempts: &mut Attempts,
    ) -> Option<Repair> {
        let at = locate(v, err.column());
        let msg = err.to_string();
        if let Some((unknown, candidates)) = unknown_variant(&msg) {
            // The value itself, or (an internally tagged enum, reported at the end of
            // its object) the object's field holding it.
            let target: Vec<Seg> = match get(v, &at)? {
                Value::String(s) if *s == unknown => at.clone(),
                Value::Object(map) => {
                    let key = map
                        .iter()
                        .find(|(_, x)| x.as_str() == Some(unknown.as_str()))?
                        .0;
                    let mut t = at.clone();
                    t.push(Seg::Key(key.clone()));
                    t
                }
                _ => return None,
            };
            let original = short(get(v, &target)?);
            let repaired = |v: &mut Value, path: &[Seg], with: Value, replacement| {
                *v = with;
                Some(Repair {
                    path: path_string(path),
                    original: original.clone(),
                    replacement,
                })
            };
            // Left out, where the model can do without it: `None` says less than a
            // made-up value.
            let mut without = v.clone();
            remove(&mut without, &target)?;
            if removal_helps(&attempts.parse(&without)?, &target) {
                return repaired(v, &target, without, None);
            }
            // A list element of an unknown kind (a reaction, say) is left out of its
            // list (lists have no required elements).
            let holder = &target[..target.len() - 1];
            if let Some(Seg::Index(_)) = holder.last() {
                let mut without = v.clone();
                let original = short(get(v, holder)?);
                remove(&mut without, holder)?;
                *v = without;
                return Some(Repair {
                    path: path_string(holder),
                    original,
                    replacement: None,
                });
            }
            // Else the first value the model accepts there. serde_json places errors of a
            // tagged variant's fields, and of list elements, where the enclosing value
            // ends, so a value is judged by what the next error says, not where: not a
            // field the variant lacks, not this value again.
            let mut errors = Vec::new();
            for c in &candidates {
                let mut tried = v.clone();
                *get_mut(&mut tried, &target)? = Value::String(c.clone());
                // Without the position, which moves with the value's length.
                let error = attempts.parse(&tried)?.err().map(|e| {
                    let m = e.to_string();
                    m.split(" at line ").next().unwrap_or_default().to_owned()
                });
                let passed = error.as_deref().is_none_or(|m| {
                    !m.starts_with("missing field")
                        && !m.contains("did not match any variant")
                        && !m.starts_with(&format!("unknown variant `{c}`"))
                });
                if passed {
                    let replacement = Some(Value::String(c.clone()).to_string());
                    return repaired(v, &target, tried, replacement);
                }
                errors.push(error);
            }
            // Every value gives the same error: it does not come from this value (another
            // field fails further on), so the first value will do, and that one is next.
            if candidates.len() > 1 && errors.windows(2).all(|w| w[0] == w[1]) {
                let c = candidates.first()?;
                let mut tried = v.clone();
                *get_mut(&mut tried, &target)? = Value::String(c.clone());
                let replacement = Some(Value::String(c.clone()).to_string());
                return repaired(v, &target, tried, replacement);
            }
        }
        // An untagged enum (a message that may be inaccessible) says only that nothing
        // matched: repair the messages inside as messages of their own.
        if msg.contains("did not match any variant of untagged enum") {
            let mut messages = Vec::new();
            message_like(v, &mut Vec::new(), &mut messages);
            // Deepest first: a message inside another is repaired before its holder.
            messages.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for path in messages {
                let inner = get(v, &path)?.clone();
                let wrapped = serde_json::json!({ "message": inner });
                let Ok((_, repairs, repaired)) = parse_value(wrapped, attempts) else {
                    continue;
                };
                if repairs.is_empty() {
                    continue;
                }
                *get_mut(v, &path)? = repaired.get("message")?.clone();
                let prefix = path_string(&path);
                let mut repairs = repairs.into_iter().map(|r| Repair {
                    path: r.path.replacen("message", &prefix, 1),
                    ..r
                });
                // One at a time (the caller counts them); the rest are found again.
                return repairs.next();
            }
        }
        // Anything else (a value of another type, a required field missing from an
        // object the model could do without): leave out the innermost value that
        // failed, or the one holding it, up to the payload itself.
        let mut path = at;
        while path.len() > 1 {
            let mut without = v.clone();
            let original = short(get(v, &path)?);
            remove(&mut without, &path)?;
            if removal_helps(&attempts.parse(&without)?, &path) {
                *v = without;
                return Some(Repair {
                    path: path_string(&path),
                    original,
                    replacement: None,
                });
            }
            path.pop();
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn locate_finds_the_value_the_parser_stopped_after() {
            let v: Value = serde_json::from_str(r#"{"a":{"b":"xy","c":[1,{"d":true}]}}"#).unwrap();
            let text = v.to_string();
            let end_of_xy = text.find(r#""xy""#).unwrap() + 4;
            assert_eq!(
                locate(&v, end_of_xy),
                [Seg::Key("a".into()), Seg::Key("b".into())]
            );
            let end_of_d = text.find("true").unwrap() + 4;
            assert_eq!(
                locate(&v, end_of_d),
                [
                    Seg::Key("a".into()),
                    Seg::Key("c".into()),
                    Seg::Index(1),
                    Seg::Key("d".into())
                ]
            );
            // The closing brace of `c[1]`.
            assert_eq!(
                locate(&v, end_of_d + 1),
                [Seg::Key("a".into()), Seg::Key("c".into()), Seg::Index(1)]
            );
        }

        #[test]
        fn serdes_unknown_variant_message_is_read() {
            let (v, c) = unknown_variant(
                "unknown variant `guest`, expected one of `private`, `group` at line 1 column 9",
            )
            .unwrap();
            assert_eq!(v, "guest");
            assert_eq!(c, ["private", "group"]);
            let (_, c) = unknown_variant("unknown variant `x`, expected `a` or `b`").unwrap();
            assert_eq!(c, ["a", "b"]);
        }
    }
}

/// frankenstein models `SuggestedPostInfo.state` and `SuggestedPostRefunded.reason` as
/// enums tagged by `type`, while Telegram sends plain strings (`"pending"`,
/// `"post_deleted"`). Rewrites those strings, wherever they are nested, into the tagged
/// form; returns whether anything changed.
fn repair_upstream_enums(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    let mut changed = false;
    match v {
        Value::Object(map) => {
            for (parent, field) in [
                ("suggested_post_info", "state"),
                ("suggested_post_refunded", "reason"),
            ] {
                if let Some(Value::Object(inner)) = map.get_mut(parent)
                    && let Some(Value::String(s)) = inner.get(field)
                {
                    let tagged = serde_json::json!({ "type": s });
                    inner.insert(field.to_owned(), tagged);
                    changed = true;
                }
            }
            for child in map.values_mut() {
                changed |= repair_upstream_enums(child);
            }
        }
        Value::Array(items) => {
            for child in items {
                changed |= repair_upstream_enums(child);
            }
        }
        _ => {}
    }
    changed
}
