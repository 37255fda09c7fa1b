//! Deadlines per update kind: an update Telegram can no longer take an answer to is
//! settled as expired, never run late.
//!
//! Telegram stops accepting `answerCallbackQuery` about 150 s after the press (the
//! button's spinner gives up), `answerInlineQuery` 30 s after the query, and a
//! pre-checkout query must be answered within 10 s or the payment fails. After a
//! backlog (a rollout, an outage) these updates would still run, each answer would
//! fail, and they would hold the chat's next updates behind them. The ingress stamps
//! every update with the time Telegram delivered it (`Tg-Received-At`); the worker
//! compares that with the kind's deadline before each attempt.
//!
//! `TGPIPE_DEADLINES` sets them: `callback_query=150s,inline_query=30s` (these
//! replace the defaults for the kinds named; the others keep theirs), `kind=0` turns
//! one off, `none` turns them all off.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tgpipe_shared::UpdateKind;
use tgpipe_shared::stream::parse_duration;

/// Telegram's own limits, the default deadlines.
pub(crate) const TELEGRAM_DEADLINES: &[(&str, Duration)] = &[
    ("callback_query", Duration::from_secs(150)),
    ("inline_query", Duration::from_secs(30)),
    ("pre_checkout_query", Duration::from_secs(10)),
];

/// The deadline of each kind that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines(BTreeMap<UpdateKind, Duration>);

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines(
            TELEGRAM_DEADLINES
                .iter()
                .map(|(kind, d)| (UpdateKind::from_field(kind), *d))
                .collect(),
        )
    }
}

impl Deadlines {
    /// Parses `TGPIPE_DEADLINES`: `none`, or `kind=duration` pairs separated by commas
    /// over Telegram's defaults (`0` turns a kind's deadline off). A kind that is not a
    /// Bot API update kind is refused, so that a typo does not silently keep a default.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tgpipe_worker::runtime::Deadlines;
    /// let d = Deadlines::parse("callback_query=60s,inline_query=0").unwrap();
    /// assert_eq!(d.of("callback_query"), Some(Duration::from_secs(60)));
    /// assert_eq!(d.of("inline_query"), None);
    /// assert_eq!(d.of("pre_checkout_query"), Some(Duration::from_secs(10)));
    /// assert!(Deadlines::parse("callback_qery=60s").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Deadlines, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Deadlines(BTreeMap::new()));
        }
        let mut deadlines = Deadlines::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, after) = pair.split_once('=').ok_or_else(|| {
                format!("`{pair}` is not `kind=duration` (e.g. callback_query=150s)")
            })?;
            let kind = UpdateKind::known(kind.trim())
                .ok_or_else(|| format!("`{}` is not a Bot API update kind", kind.trim()))?;
            let after = parse_duration(after)?;
            if after.is_zero() {
                deadlines.0.remove(&kind);
            } else {
                deadlines.0.insert(kind, after);
            }
        }
        Ok(deadlines)
    }

    /// The deadline of the kind named `kind`, if it has one.
    pub fn of(&self, kind: &str) -> Option<Duration> {
        self.0.get(&UpdateKind::from_field(kind)).copied()
    }

    /// Whether updates of `kind` have a deadline (they are interactive: someone waits
    /// for the answer).
    pub(crate) fn has(&self, kind: &UpdateKind) -> bool {
        self.0.contains_key(kind)
    }

    /// How long past its deadline an update of `kind` that Telegram delivered at
    /// `received_at_ms` (Unix milliseconds; 0 when unknown) is at `now`, if it is.
    pub(crate) fn overdue(
        &self,
        kind: &UpdateKind,
        received_at_ms: u64,
        now: SystemTime,
    ) -> Option<Duration> {
        if self.0.is_empty() || received_at_ms == 0 {
            return None;
        }
        let deadline = *self.0.get(kind)?;
        let now_ms = now.duration_since(UNIX_EPOCH).ok()?.as_millis();
        // A clock behind the ingress's gives a negative age: not overdue.
        let age = Duration::from_millis(
            u64::try_from(now_ms.checked_sub(u128::from(received_at_ms))?).ok()?,
        );
        age.checked_sub(deadline).filter(|late| !late.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn telegrams_deadlines_are_the_default() {
        let d = Deadlines::default();
        assert_eq!(d.of("callback_query"), Some(Duration::from_secs(150)));
        assert_eq!(d.of("inline_query"), Some(Duration::from_secs(30)));
        assert_eq!(d.of("pre_checkout_query"), Some(Duration::from_secs(10)));
        assert_eq!(d.of("message"), None);
        assert_eq!(Deadlines::parse("").unwrap(), d);
    }

    #[test]
    fn an_update_is_overdue_only_past_its_kinds_deadline() {
        let d = Deadlines::default();
        let cq = UpdateKind::CallbackQuery;
        let t0 = 1_700_000_000_000;
        assert_eq!(d.overdue(&cq, t0, at(t0 + 150_000)), None);
        assert_eq!(
            d.overdue(&cq, t0, at(t0 + 200_000)),
            Some(Duration::from_secs(50))
        );
        // No deadline for messages, however old.
        assert_eq!(
            d.overdue(&UpdateKind::Message, t0, at(t0 + 86_400_000)),
            None
        );
        // Unknown delivery time (an older ingress, a hand-published update): never.
        assert_eq!(d.overdue(&cq, 0, at(t0)), None);
        // A worker clock behind the ingress's: not overdue.
        assert_eq!(d.overdue(&cq, t0, at(t0 - 5_000)), None);
        assert_eq!(
            Deadlines::parse("none")
                .unwrap()
                .overdue(&cq, t0, at(t0 + 10_000_000)),
            None
        );
    }

    #[test]
    fn bad_deadlines_are_refused_with_the_reason() {
        for (bad, says) in [
            ("callback_query", "is not `kind=duration`"),
            ("callback_qery=10s", "is not a Bot API update kind"),
            ("callback_query=soon", "is not a duration"),
            ("callback_query=10y", "unknown unit"),
            ("hologram=10s", "is not a Bot API update kind"),
        ] {
            let e = Deadlines::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_kind_set_to_zero_has_no_deadline_and_others_keep_theirs() {
        let d = Deadlines::parse(" inline_query = 0 , shipping_query=20s ").unwrap();
        assert_eq!(d.of("inline_query"), None);
        assert_eq!(d.of("shipping_query"), Some(Duration::from_secs(20)));
        assert_eq!(d.of("callback_query"), Some(Duration::from_secs(150)));
    }
}
