//! Extractors: what a handler's arguments are, taken from the update's context.
//!
//! A handler is a plain `async fn` whose arguments implement [`FromContext`], as axum's
//! handlers take `FromRequestParts` arguments. An argument that needs a value someone
//! must provide (application state, or a value a middleware or filter inserts) declares
//! it through [`FromContext::requirement`], and the dispatcher refuses to build when
//! nothing provides it: a startup error, not a failure in the middle of traffic.

use std::any::{TypeId, type_name};
use std::sync::Arc;

use frankenstein::inline_mode::{ChosenInlineResult, InlineQuery};
use frankenstein::payments::{PreCheckoutQuery, ShippingQuery};
use frankenstein::types::{
    CallbackQuery, ChatJoinRequest, ChatMemberUpdated, Message, Poll, PollAnswer,
};

use crate::bot::Bot;
use crate::context::Context;
use crate::update::{Event, Update};

/// Why an argument could not be extracted for this update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The event is not of the kind the argument wants (a `Message` argument on a
    /// callback query observer, for example).
    #[error("the handler wants a `{wanted}`, but this update is a `{kind}`")]
    WrongEvent {
        /// The argument's type.
        wanted: &'static str,
        /// The update's kind.
        kind: String,
    },
    /// A value the argument needs was not in the context (a middleware that declared it
    /// did not insert it).
    #[error("no `{0}` in the context for this update")]
    Missing(&'static str),
    /// The handler takes the FSM, but the update has no FSM key: it has neither a chat
    /// nor a user (a poll), or no user under a per-user strategy.
    #[error(
        "the handler takes `FsmContext`, but this `{kind}` update has no FSM key (no chat or user for the key strategy)"
    )]
    NoFsmKey {
        /// The update's kind.
        kind: String,
    },
}

/// Extraction failures are permanent: the same update fails the same way.
impl crate::error::Transient for ExtractError {
    fn is_transient(&self) -> bool {
        false
    }
}

/// A value an extractor needs someone to provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The provided type.
    pub type_id: TypeId,
    /// Its name, for the error message.
    pub type_name: &'static str,
}

impl Requirement {
    /// The requirement of a value of type `T`.
    pub fn of<T: 'static>() -> Requirement {
        Requirement {
            type_id: TypeId::of::<T>(),
            type_name: type_name::<T>(),
        }
    }
}

/// A handler argument.
///
/// A handler that takes something else does not compile, and the error names the
/// argument and says what to take instead:
///
/// ```compile_fail,E0277
/// use std::sync::Arc;
/// use frankenstein::types::Message;
/// use tgpipe::Router;
///
/// struct Settings;
///
/// async fn greet(message: Arc<Message>, settings: Settings) {}
///
/// let mut router = Router::new("main");
/// router.message(greet);
/// ```
///
/// ```text
/// error[E0277]: `Settings` cannot be a handler argument: it does not implement `FromContext`
///    --> src/main.rs:12:16
///     |
///  12 | router.message(greet);
///     |        ------- ^^^^^ this handler takes a `Settings`, which is not an extractor
///     |        |
///     |        required by a bound introduced by this call
///     |
/// help: the trait `FromContext` is not implemented for `Settings`
///    --> src/main.rs:5:1
///     |
///   5 | struct Settings;
///     | ^^^^^^^^^^^^^^^
///     = note: for application state, or a value a middleware or filter provides, take `Dep<Settings>` and give the value to the dispatcher (`.state(..)`, `.provide(..)`)
///     = note: the extractors: the event (`Arc<Message>`, `Arc<CallbackQuery>`, ...), `Bot`, `Context`, `Arc<Update>`, `Event`, `Dep<T>`, `CommandObject` behind a `Command` filter, `FsmContext`, a `callback_data!` type behind its filter, and `Option<T>` of any of them
///     = help: the following other types implement trait `FromContext`:
///               Arc<frankenstein::inline_mode::ChosenInlineResult>
///               ...
///     = note: required for `(Arc<frankenstein::types::Message>, Settings)` to implement `HandlerArgs`
///     = note: required for `fn(Arc<frankenstein::types::Message>, Settings) -> impl Future<Output = ()> {greet}` to implement `Handler<(Arc<frankenstein::types::Message>, Settings)>`
/// ```
///
/// (rustc 1.95.) Taking `Dep<Settings>`, with the value given to the dispatcher, is the
/// fix:
///
/// ```
/// use std::sync::Arc;
/// use frankenstein::types::Message;
/// use tgpipe::{Dep, Dispatcher, Router};
///
/// #[derive(Clone)]
/// struct Settings;
///
/// async fn greet(message: Arc<Message>, Dep(settings): Dep<Settings>) {}
///
/// let mut router = Router::new("main");
/// router.message(greet);
/// let dispatcher = Dispatcher::builder(router).state(Settings).build().unwrap();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument: it does not implement `FromContext`",
    label = "this handler takes a `{Self}`, which is not an extractor",
    note = "for application state, or a value a middleware or filter provides, take `Dep<{Self}>` and give the value to the dispatcher (`.state(..)`, `.provide(..)`)",
    note = "the extractors: the event (`Arc<Message>`, `Arc<CallbackQuery>`, ...), `Bot`, `Context`, `Arc<Update>`, `Event`, `Dep<T>`, `CommandObject` behind a `Command` filter, `FsmContext`, a `callback_data!` type behind its filter, and `Option<T>` of any of them"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Takes the argument from the context.
    fn from_context(cx: &Context) -> Result<Self, ExtractError>;

    /// A value someone must provide for this argument to exist, checked when the
    /// dispatcher is built.
    fn requirement() -> Option<Requirement> {
        None
    }
}

impl FromContext for Bot {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(cx.bot().clone())
    }
}

impl FromContext for Arc<Update> {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(cx.update_arc())
    }
}

impl FromContext for Event {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(cx.event().clone())
    }
}

impl FromContext for Context {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(cx.clone())
    }
}

/// A value of type `T` from the context: application state given to the dispatcher
/// builder, or a value a middleware or filter inserted for this update.
///
/// ```
/// use tgpipe::extract::Dep;
///
/// #[derive(Clone)]
/// struct Greeting(&'static str);
///
/// async fn hello(Dep(greeting): Dep<Greeting>) {
///     assert_eq!(greeting.0, "hi");
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Dep<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromContext for Dep<T> {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        cx.get::<T>()
            .cloned()
            .map(Dep)
            .ok_or(ExtractError::Missing(type_name::<T>()))
    }

    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<T>())
    }
}

/// `Option<T>`: the argument if it can be extracted, else `None` (never an error).
impl<T: FromContext> FromContext for Option<T> {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(T::from_context(cx).ok())
    }
}

macro_rules! event_extractor {
    ($ty:ty: $($variant:ident),+) => {
        impl FromContext for Arc<$ty> {
            fn from_context(cx: &Context) -> Result<Self, ExtractError> {
                match cx.event() {
                    $(Event::$variant(v) => Ok(Arc::clone(v)),)+
                    _ => Err(ExtractError::WrongEvent {
                        wanted: type_name::<$ty>(),
                        kind: cx.update().kind.to_string(),
                    }),
                }
            }
        }
    };
}

event_extractor!(Message: Message, EditedMessage, ChannelPost, EditedChannelPost, BusinessMessage, EditedBusinessMessage, GuestMessage);
event_extractor!(CallbackQuery: CallbackQuery);
event_extractor!(InlineQuery: InlineQuery);
event_extractor!(ChosenInlineResult: ChosenInlineResult);
event_extractor!(ShippingQuery: ShippingQuery);
event_extractor!(PreCheckoutQuery: PreCheckoutQuery);
event_extractor!(Poll: Poll);
event_extractor!(PollAnswer: PollAnswer);
event_extractor!(ChatMemberUpdated: MyChatMember, ChatMember);
event_extractor!(ChatJoinRequest: ChatJoinRequest);
