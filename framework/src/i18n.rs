//! Translations with Fluent (feature `i18n`): one catalog per locale, checked when it is
//! built, and a translator per update in the user's language (aiogram's `I18n`, grammY's
//! fluent plugin).
//!
//! The locale of an update is the chat's choice kept in the FSM (with
//! [`I18nBuilder::locale_in_fsm`]), else the user's `language_code`, else the fallback.
//!
//! ```
//! use tgpipe::i18n::{I18n, Tr};
//! use tgpipe::prelude::*;
//!
//! let i18n = I18n::builder("en")
//!     .add("en", "hello = Hello, { $name }!")
//!     .add("de", "hello = Hallo, { $name }!")
//!     .build()
//!     .unwrap();
//! assert_eq!(i18n.get("de", "hello", &[("name", "Ada")]), "Hallo, Ada!");
//!
//! async fn start(message: Arc<Message>, tr: Tr) -> Result {
//!     message.answer(tgpipe::t!(tr, "hello", name = message.first_name())).await
//! }
//!
//! let mut router = Router::new("main");
//! router.message(start);
//! let dispatcher = Dispatcher::builder(router).provide(i18n.provider()).build().unwrap();
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub use fluent_bundle::FluentArgs;
use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentError, FluentResource, FluentValue};
use frankenstein::types::User;

use crate::context::Context;
use crate::extract::{ExtractError, FromContext, Requirement};
use crate::fsm::FsmContext;
use crate::handler::BoxFuture;
use crate::update::Event;

/// The FSM data field that keeps a chat's chosen locale.
pub const LOCALE_FIELD: &str = "locale";

/// Why catalogs cannot be used: found when they are built, not while serving.
#[derive(Debug, thiserror::Error)]
pub enum I18nError {
    /// A locale is not a language tag (`en`, `pt-BR`).
    #[error("`{locale}` is not a language tag")]
    Locale {
        /// The locale.
        locale: String,
        /// The parser's error.
        #[source]
        source: unic_langid::LanguageIdentifierError,
    },
    /// A catalog does not parse, or defines a message twice.
    #[error("the `{locale}` catalog is not valid Fluent ({} errors; the first: {first})", errors.len())]
    Catalog {
        /// The locale.
        locale: String,
        /// The first error, as text.
        first: String,
        /// Every error.
        errors: Vec<FluentError>,
    },
    /// A locale lacks messages the fallback has.
    #[error("the `{locale}` catalog lacks {missing:?}, which the fallback `{fallback}` has")]
    Missing {
        /// The locale.
        locale: String,
        /// The fallback locale.
        fallback: String,
        /// The missing message ids.
        missing: Vec<String>,
    },
    /// No catalog was added for the fallback locale.
    #[error("no catalog for the fallback locale `{0}`")]
    NoFallback(String),
}

struct Catalog {
    bundle: FluentBundle<FluentResource>,
    ids: BTreeSet<String>,
}

/// Catalogs per locale, with a fallback. Build one with [`I18n::builder`]; give it to
/// the dispatcher with [`I18n::provider`]; handlers take a [`Tr`].
pub struct I18n {
    catalogs: HashMap<String, Catalog>,
    fallback: String,
    locale_in_fsm: bool,
}

impl std::fmt::Debug for I18n {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut locales: Vec<_> = self.catalogs.keys().collect();
        locales.sort();
        f.debug_struct("I18n")
            .field("locales", &locales)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// See [`I18n::builder`].
#[derive(Debug, Clone)]
pub struct I18nBuilder {
    fallback: String,
    sources: Vec<(String, String)>,
    locale_in_fsm: bool,
}

impl I18nBuilder {
    /// Adds the catalog of `locale`, Fluent source text (`include_str!("en.ftl")`).
    pub fn add(mut self, locale: &str, source: impl Into<String>) -> I18nBuilder {
        self.sources.push((locale.to_owned(), source.into()));
        self
    }

    /// Reads a chat's chosen locale from its FSM data ([`Tr::set_locale`]) before the
    /// user's language: one more Redis read per update.
    pub fn locale_in_fsm(mut self) -> I18nBuilder {
        self.locale_in_fsm = true;
        self
    }

    /// Parses every catalog and checks that each has every message of the fallback.
    pub fn build(self) -> Result<I18n, I18nError> {
        let mut catalogs = HashMap::new();
        for (locale, source) in self.sources {
            let langid = locale
                .parse::<unic_langid::LanguageIdentifier>()
                .map_err(|source| I18nError::Locale {
                    locale: locale.clone(),
                    source,
                })?;
            let ids = message_ids(&source);
            let resource = FluentResource::try_new(source).map_err(|(_, errors)| {
                catalog_error(&locale, errors.into_iter().map(FluentError::from).collect())
            })?;
            let mut bundle = FluentBundle::new_concurrent(vec![langid]);
            // Telegram shows the Unicode isolation marks Fluent puts around arguments as
            // nothing useful, and they break equality in tests.
            bundle.set_use_isolating(false);
            bundle
                .add_resource(resource)
                .map_err(|errors| catalog_error(&locale, errors))?;
            catalogs.insert(locale, Catalog { bundle, ids });
        }
        let fallback = catalogs
            .get(&self.fallback)
            .ok_or_else(|| I18nError::NoFallback(self.fallback.clone()))?;
        for (locale, catalog) in &catalogs {
            let missing: Vec<String> = fallback.ids.difference(&catalog.ids).cloned().collect();
            if !missing.is_empty() {
                return Err(I18nError::Missing {
                    locale: locale.clone(),
                    fallback: self.fallback,
                    missing,
                });
            }
        }
        Ok(I18n {
            catalogs,
            fallback: self.fallback,
            locale_in_fsm: self.locale_in_fsm,
        })
    }
}

fn catalog_error(locale: &str, errors: Vec<FluentError>) -> I18nError {
    I18nError::Catalog {
        locale: locale.to_owned(),
        first: errors.first().map(ToString::to_string).unwrap_or_default(),
        errors,
    }
}

/// The ids of the messages a Fluent source defines: an identifier at the start of a line
/// followed by `=` (terms start with `-`, comments with `#`, continuations are indented).
fn message_ids(source: &str) -> BTreeSet<String> {
    source
        .lines()
        .filter_map(|line| {
            let (id, _) = line.split_once('=')?;
            let id = id.trim_end();
            let mut chars = id.chars();
            let first = chars.next()?;
            (first.is_ascii_alphabetic()
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .then(|| id.to_owned())
        })
        .collect()
}

impl I18n {
    /// Catalogs with `fallback` as the locale of last resort.
    pub fn builder(fallback: &str) -> I18nBuilder {
        I18nBuilder {
            fallback: fallback.to_owned(),
            sources: Vec::new(),
            locale_in_fsm: false,
        }
    }

    /// The locale of last resort.
    pub fn fallback(&self) -> &str {
        &self.fallback
    }

    /// The catalog's locale for a language code: itself (`pt-BR`), else its language
    /// (`pt`), else the fallback.
    pub fn resolve<'a>(&'a self, language: Option<&str>) -> &'a str {
        let found = language.and_then(|code| {
            let language = code.split(['-', '_']).next().unwrap_or(code);
            [code, language]
                .into_iter()
                .find_map(|l| self.catalogs.get_key_value(l).map(|(k, _)| k.as_str()))
        });
        found.unwrap_or(&self.fallback)
    }

    /// The message `id` in `locale` (or the fallback) with `args`; the id itself when
    /// no catalog has it, so a missing text shows rather than fails.
    pub fn get(&self, locale: &str, id: &str, args: &[(&str, &str)]) -> String {
        let mut fluent = FluentArgs::new();
        for (name, value) in args {
            fluent.set(*name, FluentValue::from(*value));
        }
        self.format(locale, id, Some(&fluent))
    }

    fn format(&self, locale: &str, id: &str, args: Option<&FluentArgs<'_>>) -> String {
        let catalogs = [self.catalogs.get(locale), self.catalogs.get(&self.fallback)];
        for catalog in catalogs.into_iter().flatten() {
            let pattern = catalog.bundle.get_message(id).and_then(|m| m.value());
            if let Some(pattern) = pattern {
                let mut errors = Vec::new();
                let text = catalog.bundle.format_pattern(pattern, args, &mut errors);
                if !errors.is_empty() {
                    tracing::warn!(locale, id, ?errors, "translation formatted with errors");
                }
                return text.into_owned();
            }
        }
        tracing::warn!(locale, id, "no translation");
        id.to_owned()
    }

    /// What gives each update its [`Tr`], for the dispatcher's
    /// [`provide`](crate::DispatcherBuilder::provide): handlers taking `Tr` pass the
    /// start-up check.
    pub fn provider(
        self,
    ) -> impl Fn(Context) -> BoxFuture<'static, Result<Tr, crate::HandlerError>> + Send + Sync + 'static
    {
        let i18n = Arc::new(self);
        move |cx| Box::pin(translator(Arc::clone(&i18n), cx))
    }
}

/// The translator of one update: the catalogs and the update's locale. A handler
/// argument once [`I18n::provider`] is given to the dispatcher; [`t!`](crate::t) formats.
#[derive(Debug, Clone)]
pub struct Tr {
    i18n: Arc<I18n>,
    locale: String,
}

impl Tr {
    /// The update's locale.
    pub fn locale(&self) -> &str {
        &self.locale
    }

    /// The message `id` without arguments.
    pub fn get(&self, id: &str) -> String {
        self.i18n.format(&self.locale, id, None)
    }

    /// The message `id` with arguments (what [`t!`](crate::t) builds).
    pub fn get_with(&self, id: &str, args: &FluentArgs<'_>) -> String {
        self.i18n.format(&self.locale, id, Some(args))
    }

    /// Keeps `locale` as the chat's choice in its FSM data (read back for its next
    /// updates with [`I18nBuilder::locale_in_fsm`]), and uses it from now on.
    pub async fn set_locale(
        &mut self,
        fsm: &FsmContext,
        locale: &str,
    ) -> Result<(), crate::FsmError> {
        fsm.set_value(LOCALE_FIELD, locale).await?;
        self.locale = self.i18n.resolve(Some(locale)).to_owned();
        Ok(())
    }
}

impl FromContext for Tr {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        cx.get::<Tr>().cloned().ok_or(ExtractError::Missing("Tr"))
    }
    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<Tr>())
    }
}

/// Formats a message of a [`Tr`]: `t!(tr, "id")` or `t!(tr, "id", name = value, ..)`,
/// each value anything Fluent takes (text, numbers).
#[macro_export]
macro_rules! t {
    ($tr:expr, $id:expr $(,)?) => {
        $tr.get($id)
    };
    ($tr:expr, $id:expr, $($name:ident = $value:expr),+ $(,)?) => {{
        let mut args = $crate::i18n::FluentArgs::new();
        $(args.set(stringify!($name), $value);)+
        $tr.get_with($id, &args)
    }};
}

/// The user an update is from, for the language code.
fn sender(event: &Event) -> Option<&User> {
    match event {
        Event::CallbackQuery(q) => Some(&q.from),
        Event::InlineQuery(q) => Some(&q.from),
        Event::ChosenInlineResult(r) => Some(&r.from),
        Event::ShippingQuery(q) => Some(&q.from),
        Event::PreCheckoutQuery(q) => Some(&q.from),
        Event::MyChatMember(m) | Event::ChatMember(m) => Some(&m.from),
        Event::ChatJoinRequest(r) => Some(&r.from),
        event => event.message()?.from.as_deref(),
    }
}

/// The update's [`Tr`]: the chat's chosen locale, else the sender's language.
async fn translator(i18n: Arc<I18n>, cx: Context) -> Result<Tr, crate::HandlerError> {
    let chosen = match cx.get::<FsmContext>().filter(|_| i18n.locale_in_fsm) {
        Some(fsm) => fsm.get_value::<String>(LOCALE_FIELD).await?,
        None => None,
    };
    let language = chosen.or_else(|| sender(cx.event()).and_then(|u| u.language_code.clone()));
    let locale = i18n.resolve(language.as_deref()).to_owned();
    Ok(Tr { i18n, locale })
}
