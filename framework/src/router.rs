//! Routers: observers of update kinds, with handlers, filters and middleware, nested.
//!
//! As in aiogram 3: each observer (one per update kind, plus `raw` and `errors`) has
//! outer middleware (every update of its kind that reaches the router), observer-level
//! filters (a router-wide condition: when one rejects, neither this router's handlers
//! nor its nested routers see the update), handlers with their filters, and inner
//! middleware (around a handler whose filters matched). Inner middleware is collected
//! along the router chain: a parent's inner middleware of a kind wraps the handlers of
//! that kind in its nested routers too, outermost first.

use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use tgpipe_shared::UpdateKind;

use crate::context::Context;
use crate::error::{BuildError, HandlerError};
use crate::filter::Filter;
use crate::handler::{ErasedHandler, Handler};
use crate::middleware::{DynMiddleware, Middleware, MiddlewareResult, Next, chain};

/// One handler with its filters.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) handler: ErasedHandler,
    pub(crate) filters: Vec<Arc<dyn Filter>>,
    /// The handler's flags, for the inner middleware around it.
    pub(crate) flags: crate::flags::Flags,
}

/// The handlers, filters and middleware of one kind of update in one router.
#[derive(Clone, Default)]
pub(crate) struct Observer {
    pub(crate) outer: Vec<Arc<DynMiddleware>>,
    pub(crate) inner: Vec<Arc<DynMiddleware>>,
    /// Observer-level filters: all must pass for this router (and its nested routers)
    /// to be tried for the update.
    pub(crate) filters: Vec<Arc<dyn Filter>>,
    pub(crate) handlers: Vec<Registration>,
    /// Values this router's providers insert for this observer (see [`Router::provide`]).
    pub(crate) provides: Vec<TypeId>,
}

/// An observer of a router: an update kind, `raw`, or `errors`. Methods that attach
/// middleware or filters take one (an [`UpdateKind`] converts into it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObserverKey {
    /// Updates of this kind.
    Kind(UpdateKind),
    /// Albums: the parts of one media group, together (see [`Router::media_group`]).
    MediaGroup,
    /// Durable timers that fired (see [`crate::timer`]).
    Timer,
    /// Updates of any kind past their kind's deadline (see [`crate::expired`]).
    Expired,
    /// Unknown kinds and payloads the typed model could not read.
    Raw,
    /// Errors of handlers below the dispatcher.
    Errors,
}

impl From<UpdateKind> for ObserverKey {
    fn from(kind: UpdateKind) -> ObserverKey {
        ObserverKey::Kind(kind)
    }
}

impl std::fmt::Display for ObserverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObserverKey::Kind(k) => f.write_str(k.as_str()),
            ObserverKey::MediaGroup => f.write_str("media_group"),
            ObserverKey::Timer => f.write_str(tgpipe_shared::timer::TIMER_KIND),
            ObserverKey::Expired => f.write_str("expired"),
            ObserverKey::Raw => f.write_str("raw"),
            ObserverKey::Errors => f.write_str("errors"),
        }
    }
}

/// A router: handlers per update kind, tried in registration order, then nested routers
/// depth-first.
///
/// ```
/// use std::sync::Arc;
/// use frankenstein::types::Message;
/// use tgpipe::{filter::Command, Router};
///
/// async fn start(message: Arc<Message>) {}
/// async fn echo(message: Arc<Message>) {}
///
/// let mut router = Router::new("main");
/// router.message(start).filter(Command::new(["start"]));
/// router.message(echo);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    pub(crate) name: String,
    pub(crate) observers: BTreeMap<ObserverKey, Observer>,
    pub(crate) children: Vec<Router>,
    pub(crate) provides: Vec<TypeId>,
}

/// A registered handler, to add filters to.
pub struct RegistrationRef<'r>(&'r mut Registration);

impl RegistrationRef<'_> {
    /// Adds a filter; all of a registration's filters must pass (AND).
    pub fn filter<F: Filter>(self, f: F) -> Self {
        self.0.filters.push(Arc::new(f));
        self
    }

    /// Sets a flag the middleware around this handler can read (aiogram's `flags=`):
    /// `.flag("chat_action", "typing")`, `.flag("long", "")`. See [`crate::flags`].
    pub fn flag(self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.flags.set(name, value.into());
        self
    }
}

macro_rules! kind_methods {
    ($($method:ident => $kind:ident,)+) => {
        $(
            #[doc = concat!("Registers a handler for `", stringify!($method), "` updates.")]
            pub fn $method<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
                self.on(UpdateKind::$kind, handler)
            }
        )+
    };
}

impl Router {
    /// An empty router; the name appears in errors and logs.
    pub fn new(name: impl Into<String>) -> Router {
        Router {
            name: name.into(),
            ..Router::default()
        }
    }

    fn observer(&mut self, key: ObserverKey) -> &mut Observer {
        self.observers.entry(key).or_default()
    }

    fn register<H: Handler<A>, A: 'static>(
        &mut self,
        key: ObserverKey,
        handler: H,
    ) -> RegistrationRef<'_> {
        let handlers = &mut self.observer(key).handlers;
        handlers.push(Registration {
            flags: Default::default(),
            handler: ErasedHandler::new(handler),
            filters: Vec::new(),
        });
        RegistrationRef(handlers.last_mut().expect("just pushed"))
    }

    /// Registers a handler for updates of `kind`.
    pub fn on<H: Handler<A>, A: 'static>(
        &mut self,
        kind: UpdateKind,
        handler: H,
    ) -> RegistrationRef<'_> {
        self.register(ObserverKey::Kind(kind), handler)
    }

    kind_methods! {
        message => Message,
        edited_message => EditedMessage,
        channel_post => ChannelPost,
        edited_channel_post => EditedChannelPost,
        business_connection => BusinessConnection,
        business_message => BusinessMessage,
        edited_business_message => EditedBusinessMessage,
        deleted_business_messages => DeletedBusinessMessages,
        message_reaction => MessageReaction,
        message_reaction_count => MessageReactionCount,
        inline_query => InlineQuery,
        chosen_inline_result => ChosenInlineResult,
        callback_query => CallbackQuery,
        shipping_query => ShippingQuery,
        pre_checkout_query => PreCheckoutQuery,
        purchased_paid_media => PurchasedPaidMedia,
        poll => Poll,
        poll_answer => PollAnswer,
        my_chat_member => MyChatMember,
        chat_member => ChatMember,
        chat_join_request => ChatJoinRequest,
        chat_boost => ChatBoost,
        removed_chat_boost => RemovedChatBoost,
        managed_bot => ManagedBot,
        guest_message => GuestMessage,
        stopped_message_generation => StoppedMessageGeneration,
        subscription => Subscription,
    }

    /// Registers an album handler: it takes an [`crate::Album`], every part of one media
    /// group (up to 10 photos, videos, documents or audio files sent together) in
    /// album order, in one call. Its context's update is the album's first part, so
    /// `Arc<Message>`, filters on the chat and the FSM work as for a message. An album
    /// no album handler takes reaches the message handlers part by part.
    ///
    /// ```
    /// use tgpipe::prelude::*;
    ///
    /// async fn album(album: Album, message: Arc<Message>) -> Result {
    ///     message.answer(format!("album of {} parts", album.len())).await
    /// }
    ///
    /// let mut router = Router::new("main");
    /// router.media_group(album);
    /// let dispatcher = Dispatcher::builder(router).build().unwrap();
    /// assert!(dispatcher.wants_albums());
    /// ```
    pub fn media_group<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::MediaGroup, handler)
    }

    /// Registers a handler for updates whose kind is unknown or whose payload the typed
    /// model could not read (take `Arc<Update>` to get the raw JSON).
    pub fn raw<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Raw, handler)
    }

    /// Registers a handler for durable timers that fired (take `Arc<Timer>`; filter by
    /// name with [`crate::timer::named`]). See [`crate::timer`].
    pub fn timer<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Timer, handler)
    }

    /// Registers a handler for updates that expired before their turn (a callback query
    /// past its deadline after a backlog): it runs instead of the kind's handlers. Take
    /// the event as usual and [`crate::expired::Expired`]. See [`crate::expired`].
    pub fn expired<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Expired, handler)
    }

    /// Registers an `errors` handler (take [`crate::error::ErrorEvent`]; filter with
    /// [`crate::filter::ErrorIs`]).
    pub fn errors<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Errors, handler)
    }

    /// Adds outer middleware to an observer (an update kind, [`ObserverKey::Raw`] or
    /// [`ObserverKey::Errors`]): it runs for every update of that kind that reaches this
    /// router, before filters.
    pub fn outer_middleware<M: Middleware>(
        &mut self,
        on: impl Into<ObserverKey>,
        mw: M,
    ) -> &mut Self {
        self.observer(on.into()).outer.push(Arc::new(mw));
        self
    }

    /// Adds inner middleware to an observer: it runs around a handler whose filters
    /// matched, in this router and in the routers nested in it.
    pub fn inner_middleware<M: Middleware>(
        &mut self,
        on: impl Into<ObserverKey>,
        mw: M,
    ) -> &mut Self {
        self.observer(on.into()).inner.push(Arc::new(mw));
        self
    }

    /// Adds an observer-level filter (aiogram's `router.message.filter(...)`): a
    /// condition for the whole router on that observer. It is checked after the
    /// observer's outer middleware, before any handler; when it rejects, neither this
    /// router's handlers nor its nested routers are tried. Values it provides reach the
    /// handlers and the nested routers.
    ///
    /// ```
    /// use frankenstein::types::ChatType;
    /// use tgpipe_shared::UpdateKind;
    /// use tgpipe::{filter::chat_type, Router};
    ///
    /// let mut admin = Router::new("private only");
    /// admin.observer_filter(UpdateKind::Message, chat_type(&[ChatType::Private]));
    /// admin.message(|| async {});
    /// ```
    pub fn observer_filter<F: Filter>(&mut self, on: impl Into<ObserverKey>, f: F) -> &mut Self {
        self.observer(on.into()).filters.push(Arc::new(f));
        self
    }

    /// An observer-level filter on `message` (see [`Router::observer_filter`]).
    pub fn message_filter<F: Filter>(&mut self, f: F) -> &mut Self {
        self.observer_filter(UpdateKind::Message, f)
    }

    /// An observer-level filter on `callback_query` (see [`Router::observer_filter`]).
    pub fn callback_query_filter<F: Filter>(&mut self, f: F) -> &mut Self {
        self.observer_filter(UpdateKind::CallbackQuery, f)
    }

    /// Provides a `T` to the handlers of an observer, in this router and the routers
    /// nested in it: `f` makes it, as outer middleware of the observer, for each update
    /// that reaches the router. The value is declared and inserted in one step, so the
    /// build-time dependency check knows exactly what runs (an error from `f` fails the
    /// update like a handler's).
    ///
    /// ```
    /// use tgpipe_shared::UpdateKind;
    /// use tgpipe::{Context, Dep, Dispatcher, HandlerError, Router};
    ///
    /// #[derive(Clone)]
    /// struct Locale(&'static str);
    ///
    /// async fn locale(cx: Context) -> Result<Locale, HandlerError> {
    ///     Ok(Locale(if cx.update().chat_id.is_some_and(|c| c < 0) { "group" } else { "en" }))
    /// }
    ///
    /// async fn greet(Dep(locale): Dep<Locale>) {}
    ///
    /// let mut router = Router::new("main");
    /// router.provide(UpdateKind::Message, locale);
    /// router.message(greet);
    /// assert!(Dispatcher::builder(router).build().is_ok());
    /// ```
    pub fn provide<T, F, Fut>(&mut self, on: impl Into<ObserverKey>, f: F) -> &mut Self
    where
        T: Send + Sync + 'static,
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, HandlerError>> + Send + 'static,
    {
        let obs = self.observer(on.into());
        obs.provides.push(TypeId::of::<T>());
        obs.outer.push(Arc::new(Provider(f)));
        self
    }

    /// Declares that this router's middleware inserts a `T` into the context, so handlers
    /// taking `Dep<T>` pass the start-up check. Prefer [`Router::provide`], which
    /// declares and inserts in one step: a declaration here can drift from what the
    /// middleware does.
    pub fn provides<T: 'static>(&mut self) -> &mut Self {
        self.provides.push(TypeId::of::<T>());
        self
    }

    /// Nests `child`: its handlers are tried when none of this router's matched. A router
    /// is moved in, so a router cannot contain itself.
    pub fn include_router(&mut self, child: Router) -> &mut Self {
        self.children.push(child);
        self
    }

    /// The kinds some handler in this tree can receive (for `allowed_updates`).
    pub fn used_update_kinds(&self) -> Vec<UpdateKind> {
        let mut kinds = std::collections::BTreeSet::new();
        self.collect_kinds(&mut kinds);
        kinds.into_iter().collect()
    }

    fn collect_kinds(&self, kinds: &mut std::collections::BTreeSet<UpdateKind>) {
        for (key, obs) in &self.observers {
            if let ObserverKey::Kind(k) = key
                && !obs.handlers.is_empty()
            {
                kinds.insert(k.clone());
            }
        }
        // Albums come as messages (and as the channel posts and business messages the
        // tree asks for anyway).
        if self.has_media_group_handler() {
            kinds.insert(UpdateKind::Message);
        }
        for c in &self.children {
            c.collect_kinds(kinds);
        }
    }

    fn has_media_group_handler(&self) -> bool {
        self.observers
            .get(&ObserverKey::MediaGroup)
            .is_some_and(|obs| !obs.handlers.is_empty())
    }

    /// Whether some router of the tree has a `media_group` handler.
    pub(crate) fn wants_albums(&self) -> bool {
        self.has_media_group_handler() || self.children.iter().any(Router::wants_albums)
    }

    /// The `(router, kind)` observers of the tree where a handler or filter needs a value
    /// of type `id`, depth-first.
    pub(crate) fn observers_needing(&self, id: TypeId, out: &mut Vec<(String, UpdateKind)>) {
        for (key, obs) in &self.observers {
            let needs = |f: &Arc<dyn Filter>| f.requires().iter().any(|r| r.type_id == id);
            // Fired timers are updates of kind `timer` to the runtime's lanes; albums are
            // messages.
            let kind = match key {
                ObserverKey::Kind(kind) => kind.clone(),
                ObserverKey::Timer => UpdateKind::from_field(tgpipe_shared::timer::TIMER_KIND),
                ObserverKey::MediaGroup => UpdateKind::Message,
                ObserverKey::Raw | ObserverKey::Errors | ObserverKey::Expired => continue,
            };
            if obs.filters.iter().any(needs)
                || obs.handlers.iter().any(|reg| {
                    reg.handler.requirements.iter().any(|r| r.type_id == id)
                        || reg.filters.iter().any(needs)
                })
            {
                out.push((self.name.clone(), kind));
            }
        }
        for c in &self.children {
            c.observers_needing(id, out);
        }
    }

    /// Whether any handler or filter of the tree needs a value of type `id`.
    pub(crate) fn needs(&self, id: TypeId) -> bool {
        self.observers.values().any(|obs| {
            obs.filters
                .iter()
                .any(|f| f.requires().iter().any(|r| r.type_id == id))
                || obs.handlers.iter().any(|reg| {
                    reg.handler.requirements.iter().any(|r| r.type_id == id)
                        || reg
                            .filters
                            .iter()
                            .any(|f| f.requires().iter().any(|r| r.type_id == id))
                })
        }) || self.children.iter().any(|c| c.needs(id))
    }

    /// Checks the tree: unique names, and every handler's requirements provided by the
    /// state, by declared middleware values along its path (router-wide, or for its
    /// observer: providers and observer filters), or by its own filters.
    pub(crate) fn check(
        &self,
        state: &crate::context::Extensions,
        inherited: &[TypeId],
        inherited_on: &BTreeMap<ObserverKey, Vec<TypeId>>,
        names: &mut HashSet<String>,
    ) -> Result<(), BuildError> {
        if !names.insert(self.name.clone()) {
            return Err(BuildError::DuplicateRouter(self.name.clone()));
        }
        let provided: Vec<TypeId> = inherited.iter().chain(&self.provides).copied().collect();
        let mut provided_on = inherited_on.clone();
        for (key, obs) in &self.observers {
            let on = provided_on.entry(key.clone()).or_default();
            on.extend(obs.provides.iter().copied());
            on.extend(obs.filters.iter().flat_map(|f| f.provides()));
        }
        for (key, obs) in &self.observers {
            let on: &[TypeId] = provided_on.get(key).map_or(&[], Vec::as_slice);
            for (index, reg) in obs.handlers.iter().enumerate() {
                let from_filters: Vec<TypeId> =
                    reg.filters.iter().flat_map(|f| f.provides()).collect();
                let filter_needs: Vec<crate::extract::Requirement> = obs
                    .filters
                    .iter()
                    .chain(&reg.filters)
                    .flat_map(|f| f.requires())
                    .collect();
                for req in reg.handler.requirements.iter().chain(&filter_needs) {
                    let ok = state.contains(req.type_id)
                        || provided.contains(&req.type_id)
                        || on.contains(&req.type_id)
                        || from_filters.contains(&req.type_id)
                        // The error observer always provides the error.
                        || (*key == ObserverKey::Errors && req.type_id == TypeId::of::<crate::error::ErrorEvent>())
                        // The album observer always provides the album.
                        || (*key == ObserverKey::MediaGroup && req.type_id == TypeId::of::<crate::album::Album>());
                    if !ok && req.type_id == TypeId::of::<crate::fsm::FsmInstalled>() {
                        return Err(BuildError::FsmNotConfigured {
                            router: self.name.clone(),
                            observer: key.to_string(),
                            index,
                        });
                    }
                    if !ok {
                        return Err(BuildError::MissingDependency {
                            router: self.name.clone(),
                            observer: key.to_string(),
                            index,
                            type_name: req.type_name,
                        });
                    }
                }
            }
        }
        self.children
            .iter()
            .try_for_each(|c| c.check(state, &provided, &provided_on, names))
    }
}

/// The middleware [`Router::provide`] installs.
pub(crate) struct Provider<F>(pub(crate) F);

impl<T, F, Fut> chain::Middleware<Context, MiddlewareResult> for Provider<F>
where
    T: Send + Sync + 'static,
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send + 'static,
{
    fn call(
        &self,
        mut cx: Context,
        next: Next,
    ) -> crate::handler::BoxFuture<'static, MiddlewareResult> {
        let made = (self.0)(cx.clone());
        Box::pin(async move {
            cx.insert(made.await?);
            next.run(cx).await
        })
    }
}
