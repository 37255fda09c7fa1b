//! Filters: which handler takes an update.
//!
//! A filter looks at the context and either rejects the update or passes it, possibly
//! with values for the handler (a [`Command`] filter hands over the parsed
//! [`CommandObject`]). Several filters on one registration must all pass (AND); the same
//! handler registered twice with different filters runs if either set passes (OR);
//! [`FilterExt::and`], [`FilterExt::or`] and [`not`] combine filters explicitly. Plain
//! closures `Fn(&Context) -> bool` are filters, and [`from_async`] makes one from an
//! async closure.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;

use crate::context::{Context, Extensions};
use crate::error::ErrorEvent;
use crate::handler::BoxFuture;

/// What a filter decided.
pub type FilterOutcome = Option<Extensions>;

/// A filter. Return `None` to reject, `Some(values)` to pass (with values the handler
/// can extract).
pub trait Filter: Send + Sync + 'static {
    /// Checks the update.
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome>;

    /// The types of values this filter inserts when it passes (for the start-up check).
    fn provides(&self) -> Vec<TypeId> {
        Vec::new()
    }

    /// What the filter needs someone to provide (checked at start-up like a handler's
    /// arguments; the `State` filter needs the FSM).
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        Vec::new()
    }
}

fn pass() -> FilterOutcome {
    Some(Extensions::new())
}

impl<F> Filter for F
where
    F: Fn(&Context) -> bool + Send + Sync + 'static,
{
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let ok = self(cx);
        Box::pin(std::future::ready(if ok { pass() } else { None }))
    }
}

/// A filter from an async closure taking the context (cloned, so it may be held across
/// awaits).
pub fn from_async<F, Fut>(f: F) -> impl Filter
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    AsyncFilter(f)
}

struct AsyncFilter<F>(F);

impl<F, Fut> Filter for AsyncFilter<F>
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let fut = (self.0)(cx.clone());
        Box::pin(async move { if fut.await { pass() } else { None } })
    }
}

/// A filter that hands the handler a value: passes when `f` gives one. The value's type
/// is declared by the same step that inserts it, so the build-time dependency check
/// cannot drift from what runs.
///
/// ```
/// use tgpipe::filter::{message_text, provide};
/// use tgpipe::{Dep, Router};
///
/// #[derive(Clone)]
/// struct Amount(u64);
///
/// async fn pay(Dep(amount): Dep<Amount>) {}
///
/// let mut router = Router::new("main");
/// router
///     .message(pay)
///     .filter(provide(|cx| message_text(cx)?.strip_prefix("pay ")?.parse().ok().map(Amount)));
/// ```
pub fn provide<T, F>(f: F) -> Provide<F>
where
    T: Send + Sync + 'static,
    F: Fn(&Context) -> Option<T> + Send + Sync + 'static,
{
    Provide(f)
}

/// See [`provide`].
#[derive(Debug, Clone)]
pub struct Provide<F>(F);

impl<T, F> Filter for Provide<F>
where
    T: Send + Sync + 'static,
    F: Fn(&Context) -> Option<T> + Send + Sync + 'static,
{
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let value = (self.0)(cx);
        Box::pin(std::future::ready(value.map(|v| {
            let mut values = Extensions::new();
            values.insert(v);
            values
        })))
    }
    fn provides(&self) -> Vec<TypeId> {
        vec![TypeId::of::<T>()]
    }
}

/// Combinators on every filter.
pub trait FilterExt: Filter + Sized {
    /// Both must pass; values of both are handed on, and the second sees the first's.
    fn and<G: Filter>(self, other: G) -> And<Self, G> {
        And(self, other)
    }
    /// Either must pass (the first that does hands on its values).
    fn or<G: Filter>(self, other: G) -> Or<Self, G> {
        Or(self, other)
    }
}

impl<F: Filter> FilterExt for F {}

/// See [`FilterExt::and`].
#[derive(Debug, Clone)]
pub struct And<A, B>(A, B);

impl<A: Filter, B: Filter> Filter for And<A, B> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        both(&self.0, &self.1, cx)
    }
    fn provides(&self) -> Vec<TypeId> {
        [self.0.provides(), self.1.provides()].concat()
    }
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        [self.0.requires(), self.1.requires()].concat()
    }
}

/// `a`, then `b` seeing what `a` provided; both must pass.
fn both<'a, A: Filter, B: Filter>(
    a: &'a A,
    b: &'a B,
    cx: &'a Context,
) -> BoxFuture<'a, FilterOutcome> {
    Box::pin(async move {
        let mut values = a.check(cx).await?;
        let mut seen = cx.clone();
        seen.extend(values.clone());
        values.extend(b.check(&seen).await?);
        Some(values)
    })
}

/// Filters given together all pass, as aiogram's filters given to one registration:
/// `.filter((Form::Name, text::plain()))` is `.filter(Form::Name).filter(text::plain())`.
impl<A: Filter, B: Filter> Filter for (A, B) {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        both(&self.0, &self.1, cx)
    }
    fn provides(&self) -> Vec<TypeId> {
        [self.0.provides(), self.1.provides()].concat()
    }
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        [self.0.requires(), self.1.requires()].concat()
    }
}

/// See [`FilterExt::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B>(A, B);

impl<A: Filter, B: Filter> Filter for Or<A, B> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            match self.0.check(cx).await {
                Some(v) => Some(v),
                None => self.1.check(cx).await,
            }
        })
    }
    // Only values both sides provide are certain to be there.
    fn provides(&self) -> Vec<TypeId> {
        let b = self.1.provides();
        self.0
            .provides()
            .into_iter()
            .filter(|t| b.contains(t))
            .collect()
    }
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        [self.0.requires(), self.1.requires()].concat()
    }
}

/// Passes when `f` rejects (and hands on nothing).
pub fn not<F: Filter>(f: F) -> Not<F> {
    Not(f)
}

/// See [`not`].
#[derive(Debug, Clone)]
pub struct Not<F>(F);

impl<F: Filter> Filter for Not<F> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            if self.0.check(cx).await.is_some() {
                None
            } else {
                pass()
            }
        })
    }
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        self.0.requires()
    }
}

/// A shared filter is a filter.
impl Filter for Arc<dyn Filter> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        (**self).check(cx)
    }
    fn provides(&self) -> Vec<TypeId> {
        (**self).provides()
    }
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        (**self).requires()
    }
}

/// The text of a message-like event, or the caption of a media message.
pub fn message_text(cx: &Context) -> Option<&str> {
    let m = cx.event().message()?;
    m.text.as_deref().or(m.caption.as_deref())
}

/// Text filters on the message's text (or caption).
pub mod text {
    use super::*;

    /// The text is exactly `s`.
    pub fn equals(s: impl Into<String>) -> impl Filter {
        let s = s.into();
        move |cx: &Context| message_text(cx) == Some(s.as_str())
    }

    /// The text starts with `s`.
    pub fn starts_with(s: impl Into<String>) -> impl Filter {
        let s = s.into();
        move |cx: &Context| message_text(cx).is_some_and(|t| t.starts_with(s.as_str()))
    }

    /// The text contains `s`.
    pub fn contains(s: impl Into<String>) -> impl Filter {
        let s = s.into();
        move |cx: &Context| message_text(cx).is_some_and(|t| t.contains(s.as_str()))
    }

    /// The text matches the regular expression.
    pub fn regex(re: regex::Regex) -> impl Filter {
        move |cx: &Context| message_text(cx).is_some_and(|t| re.is_match(t))
    }

    /// There is a text (or caption) at all.
    pub fn any() -> impl Filter {
        |cx: &Context| message_text(cx).is_some()
    }

    /// A message text that is not a command (aiogram's `F.text & ~F.text.startswith("/")`):
    /// what a form's steps and an echo want.
    ///
    /// ```
    /// use tgpipe::filter::text;
    /// use tgpipe::Router;
    ///
    /// let mut router = Router::new("echo");
    /// router.message(|| async {}).filter(text::plain());
    /// ```
    pub fn plain() -> impl Filter {
        |cx: &Context| {
            let text = cx.event().message().and_then(|m| m.text.as_deref());
            text.is_some_and(|t| !t.starts_with('/'))
        }
    }
}

/// A parsed command: `/start@my_bot payload` is prefix `/`, command `start`, mention
/// `my_bot`, args `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandObject {
    /// The prefix character used.
    pub prefix: char,
    /// The command name as written (without prefix and mention).
    pub command: String,
    /// The bot username after `@`, if any.
    pub mention: Option<String>,
    /// Everything after the command and its whitespace, if anything.
    pub args: Option<String>,
}

impl crate::extract::FromContext for CommandObject {
    fn from_context(cx: &Context) -> Result<Self, crate::extract::ExtractError> {
        cx.get::<CommandObject>()
            .cloned()
            .ok_or(crate::extract::ExtractError::Missing("CommandObject"))
    }
    fn requirement() -> Option<crate::extract::Requirement> {
        Some(crate::extract::Requirement::of::<CommandObject>())
    }
}

/// Matches commands: `Command::new(["start", "help"])`, with prefixes (`/` by default),
/// case-insensitivity and the bot mention checked against the bot's username (a command
/// addressed to another bot, `/start@other_bot`, does not match).
///
/// ```
/// use tgpipe::filter::Command;
///
/// let cmd = Command::new(["start"]).prefixes("/!").ignore_case();
/// let parsed = cmd.parse("!START@my_bot hello", Some("my_bot")).unwrap();
/// assert_eq!(parsed.args.as_deref(), Some("hello"));
/// assert!(cmd.parse("/start@other_bot", Some("my_bot")).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Command {
    names: Vec<String>,
    prefixes: String,
    ignore_case: bool,
    ignore_mention: bool,
}

/// The names a [`Command`] matches: one name (`"start"`) or a list of aliases
/// (`["start", "begin"]`, a `Vec`, a slice).
pub trait CommandNames {
    /// The names.
    fn into_names(self) -> Vec<String>;
}

impl CommandNames for &str {
    fn into_names(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl CommandNames for String {
    fn into_names(self) -> Vec<String> {
        vec![self]
    }
}

impl<S: Into<String>, const N: usize> CommandNames for [S; N] {
    fn into_names(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: Into<String>> CommandNames for Vec<S> {
    fn into_names(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: Into<String> + Clone> CommandNames for &[S] {
    fn into_names(self) -> Vec<String> {
        self.iter().cloned().map(Into::into).collect()
    }
}

impl Command {
    /// Matches `names`: one name or a list of aliases.
    ///
    /// ```
    /// use tgpipe::filter::Command;
    ///
    /// assert!(Command::new("form").parse("/form", None).is_some());
    /// assert!(Command::new(["help", "h"]).parse("/h", None).is_some());
    /// ```
    pub fn new(names: impl CommandNames) -> Command {
        let names = names.into_names();
        Command {
            names,
            prefixes: "/".into(),
            ignore_case: false,
            ignore_mention: false,
        }
    }

    /// The accepted prefix characters (default `/`).
    pub fn prefixes(mut self, prefixes: &str) -> Command {
        self.prefixes = prefixes.to_owned();
        self
    }

    /// Match the name whatever its case, in any script (`/СТАРТ` is `старт`), as
    /// aiogram's casefolding does.
    pub fn ignore_case(mut self) -> Command {
        self.ignore_case = true;
        self
    }

    /// Match even when the command mentions another bot.
    pub fn ignore_mention(mut self) -> Command {
        self.ignore_mention = true;
        self
    }

    /// Parses `text` as one of these commands, for a bot called `username`.
    pub fn parse(&self, text: &str, username: Option<&str>) -> Option<CommandObject> {
        let prefix = text.chars().next().filter(|c| self.prefixes.contains(*c))?;
        let rest = &text[prefix.len_utf8()..];
        let (head, args) = match rest.split_once(char::is_whitespace) {
            Some((h, a)) => (
                h,
                Some(a.trim_start())
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned),
            ),
            None => (rest, None),
        };
        // `/start@` (an empty mention) is `/start`, as aiogram reads it.
        let (command, mention) = match head.split_once('@') {
            Some((c, m)) => (c, Some(m.to_owned()).filter(|m| !m.is_empty())),
            None => (head, None),
        };
        if command.is_empty() {
            return None;
        }
        if let (Some(m), false) = (&mention, self.ignore_mention)
            && username.is_none_or(|u| !u.eq_ignore_ascii_case(m))
        {
            return None;
        }
        // aiogram casefolds both sides; full lowercasing is Rust's nearest (it differs
        // only for a few letters, such as `ß`, that casefolding expands).
        let folded = self.ignore_case.then(|| command.to_lowercase());
        let matches = self.names.iter().any(|n| match &folded {
            Some(folded) => n.to_lowercase() == *folded,
            None => n == command,
        });
        matches.then(|| CommandObject {
            prefix,
            command: command.to_owned(),
            mention,
            args,
        })
    }
}

impl Command {
    /// Parses the update's text, asking the bot for its username (`getMe`, once per
    /// bot) only when the command mentions one and it is not known yet.
    pub(crate) async fn parse_update(&self, cx: &Context) -> Option<CommandObject> {
        let text = message_text(cx)?;
        let head = text.split(char::is_whitespace).next().unwrap_or_default();
        let username = if head.contains('@') && !self.ignore_mention {
            cx.bot().fetch_username().await
        } else {
            cx.bot().username()
        };
        self.parse(text, username)
    }
}

impl Filter for Command {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            self.parse_update(cx).await.map(|c| {
                let mut v = Extensions::new();
                v.insert(c);
                v
            })
        })
    }
    fn provides(&self) -> Vec<TypeId> {
        vec![TypeId::of::<CommandObject>()]
    }
}

/// For `errors` handlers: passes when the error is a `T` (aiogram's `ExceptionTypeFilter`).
pub struct ErrorIs<T>(std::marker::PhantomData<fn() -> T>);

impl<T> ErrorIs<T> {
    /// The filter.
    pub fn new() -> ErrorIs<T> {
        ErrorIs(std::marker::PhantomData)
    }
}

impl<T> Default for ErrorIs<T> {
    fn default() -> Self {
        ErrorIs::new()
    }
}

impl<T: std::error::Error + 'static> Filter for ErrorIs<T> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let ok = cx.get::<ErrorEvent>().is_some_and(|e| e.0.is::<T>());
        Box::pin(std::future::ready(if ok { pass() } else { None }))
    }
}

/// For `errors` handlers: passes when the error is, or wraps, a Bot API 403
/// ([`crate::BotError::Forbidden`]), and hands the handler its
/// [`ForbiddenReason`](crate::bot::ForbiddenReason) (`Dep<ForbiddenReason>`).
///
/// Without such a handler, the dispatcher's default policy treats a 403 whose recipient
/// is gone (blocked, deactivated, kicked, never started) as handled; a handler here
/// runs first, to forget the user, say.
///
/// ```
/// use tgpipe::bot::ForbiddenReason;
/// use tgpipe::filter::forbidden;
/// use tgpipe::{Dep, Router};
///
/// async fn forget_user(Dep(reason): Dep<ForbiddenReason>) {
///     // mark the user inactive in the database ...
/// }
///
/// let mut router = Router::new("main");
/// router
///     .errors(forget_user)
///     .filter(forbidden().reasons([ForbiddenReason::BlockedByUser, ForbiddenReason::UserDeactivated]));
/// ```
pub fn forbidden() -> Forbidden {
    Forbidden { reasons: None }
}

/// See [`forbidden`].
#[derive(Debug, Clone)]
pub struct Forbidden {
    reasons: Option<Vec<crate::bot::ForbiddenReason>>,
}

impl Forbidden {
    /// Only these reasons pass.
    pub fn reasons(
        mut self,
        reasons: impl IntoIterator<Item = crate::bot::ForbiddenReason>,
    ) -> Forbidden {
        self.reasons = Some(reasons.into_iter().collect());
        self
    }
}

impl Filter for Forbidden {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let reason = cx
            .get::<ErrorEvent>()
            .and_then(|e| e.0.forbidden_reason())
            .filter(|r| self.reasons.as_ref().is_none_or(|rs| rs.contains(r)));
        Box::pin(std::future::ready(reason.map(|r| {
            let mut v = Extensions::new();
            v.insert(r);
            v
        })))
    }
    fn provides(&self) -> Vec<TypeId> {
        vec![TypeId::of::<crate::bot::ForbiddenReason>()]
    }
}

mod chat_member;
mod content;
mod deep_link;

pub use chat_member::{ChatMemberUpdated, MemberGroup, MemberStatus, Transition};
pub use content::{ContentType, chat_type, content_type};
pub use deep_link::{CommandStart, create_start_link, decode_payload, encode_payload};
