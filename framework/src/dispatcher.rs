//! The dispatcher: the root of the router tree, built once and shared.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tgpipe_shared::{Envelope, UpdateKind};

use crate::album::Album;
use crate::bot::Bot;
use crate::context::{Context, Extensions};
use crate::error::ErrorEvent;
use crate::error::{BuildError, Classifier, HandlerError, Transient, classifier_of};
use crate::filter::Filter;
#[cfg(doc)]
use crate::fsm::Prefetched;
use crate::fsm::{Fsm, FsmInstalled};
use crate::handler::{BoxFuture, ErasedHandler};
use crate::middleware::{
    DynMiddleware, Endpoint, Middleware, MiddlewareResult, Next, Outcome, chain,
};
use crate::router::{ObserverKey, Router};
use crate::update::{Event, RawReason, UnreadableUpdate, Update};

/// The way through one router for one observer key, composed once when the dispatcher
/// is built: the router's outer middleware around "its handlers, then its children's
/// routes". Routing an update clones `Arc`s and boxes futures; it builds no closures.
type Route = Endpoint;

/// One handler registration, composed: its filters, then the observer's inner chain
/// around the handler.
struct Step {
    filters: Arc<[Arc<dyn Filter>]>,
    inner: Arc<[Arc<DynMiddleware>]>,
    handler: Endpoint,
}

/// An observer of one router, frozen: its own filters and handlers, and the routes of
/// the child routers for the same key.
struct Here {
    filters: Arc<[Arc<dyn Filter>]>,
    steps: Vec<Step>,
    children: Vec<Route>,
}

/// A router, frozen for dispatch: its route per observer key (of itself or of any router
/// below it).
struct Node {
    routes: BTreeMap<ObserverKey, Route>,
}

type InnerChains = BTreeMap<ObserverKey, Vec<Arc<DynMiddleware>>>;

impl Node {
    /// Freezes `router`, whose ancestors' inner middleware per observer is `inherited`.
    fn freeze(router: Router, inherited: &InnerChains) -> Node {
        let mut chains = inherited.clone();
        for (k, o) in &router.observers {
            chains
                .entry(k.clone())
                .or_default()
                .extend(o.inner.iter().cloned());
        }
        let children: Vec<Node> = router
            .children
            .into_iter()
            .map(|c| Node::freeze(c, &chains))
            .collect();
        let mut keys: Vec<ObserverKey> = router.observers.keys().cloned().collect();
        keys.extend(children.iter().flat_map(|c| c.routes.keys().cloned()));
        keys.sort();
        keys.dedup();
        let mut observers = router.observers;
        let routes = keys
            .into_iter()
            .map(|key| {
                let observer = observers.remove(&key).unwrap_or_default();
                let inner: Arc<[Arc<DynMiddleware>]> =
                    chains.get(&key).cloned().unwrap_or_default().into();
                let here = Arc::new(Here {
                    filters: observer.filters.into(),
                    steps: observer
                        .handlers
                        .into_iter()
                        .map(|reg| Step {
                            filters: reg.flags.after(reg.filters).into(),
                            inner: Arc::clone(&inner),
                            handler: handler_endpoint(reg.handler),
                        })
                        .collect(),
                    children: children
                        .iter()
                        .filter_map(|c| c.routes.get(&key).cloned())
                        .collect(),
                });
                let run_here: Endpoint = Arc::new(move |cx: Context| {
                    let here = Arc::clone(&here);
                    Box::pin(async move { here.run(cx).await })
                });
                let outer: Arc<[Arc<DynMiddleware>]> = observer.outer.into();
                let route: Route = if outer.is_empty() {
                    run_here
                } else {
                    Arc::new(move |cx: Context| {
                        Next::new(Arc::clone(&outer), Arc::clone(&run_here)).run(cx)
                    })
                };
                (key, route)
            })
            .collect();
        Node { routes }
    }
}

/// The endpoint of an inner chain: the handler, its outcome the chain's result.
fn handler_endpoint(handler: ErasedHandler) -> Endpoint {
    Arc::new(move |cx: Context| -> BoxFuture<'static, MiddlewareResult> { handler.call(cx) })
}

impl Here {
    /// This router's handlers (the first whose filters pass, under the inner chain),
    /// then its children's routes, until one handles the update.
    async fn run(&self, mut cx: Context) -> MiddlewareResult {
        // Observer-level filters gate this router and its nested routers alike.
        if !self.filters.is_empty() {
            match run_filters(&self.filters, &cx).await {
                Some(fcx) => cx = fcx,
                None => return Ok(Outcome::Skipped),
            }
        }
        for step in &self.steps {
            let Some(hcx) = run_filters(&step.filters, &cx).await else {
                continue;
            };
            let handled = if step.inner.is_empty() {
                (step.handler)(hcx).await?
            } else {
                Next::new(Arc::clone(&step.inner), Arc::clone(&step.handler))
                    .run(hcx)
                    .await?
            };
            if handled == Outcome::Handled {
                return Ok(Outcome::Handled);
            }
        }
        for child in &self.children {
            if child(cx.clone()).await? == Outcome::Handled {
                return Ok(Outcome::Handled);
            }
        }
        Ok(Outcome::Skipped)
    }
}

/// Builds a [`Dispatcher`].
pub struct DispatcherBuilder {
    router: Router,
    state: Extensions,
    update_outer: Vec<Arc<DynMiddleware>>,
    fsm: Option<Fsm>,
    classifiers: Vec<Classifier>,
    /// Values update-wide providers insert.
    provided: Vec<std::any::TypeId>,
}

impl DispatcherBuilder {
    /// Registers an application error type that knows whether it is transient: a
    /// handler error that is an `E`, or wraps one in its `source()` chain, is classified
    /// by `E`'s [`Transient::is_transient`] (the first error of the chain that knows
    /// decides; the framework's own errors know without registering).
    pub fn transient_errors<E: Transient>(mut self) -> Self {
        self.classifiers.push(classifier_of::<E>());
        self
    }

    /// Application state, given once: handlers take it as `Dep<T>`.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Update-wide outer middleware: runs for every update, before routing.
    pub fn update_middleware<M: Middleware>(mut self, mw: M) -> Self {
        self.update_outer.push(Arc::new(mw));
        self
    }

    /// Provides a `T` to every handler: `f` makes it for each update, as update-wide
    /// outer middleware (after the ones added before). Declared and inserted in one
    /// step, like [`Router::provide`].
    pub fn provide<T, F, Fut>(mut self, f: F) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, HandlerError>> + Send + 'static,
    {
        let mw: Arc<DynMiddleware> = Arc::new(crate::router::Provider(f));
        self.update_outer.push(mw);
        self.provided.push(std::any::TypeId::of::<T>());
        self
    }

    /// The FSM: each update with a key gets an [`crate::FsmContext`] for its filters
    /// and handlers, and (with isolation) holds its key's lock for the whole dispatch.
    pub fn fsm(mut self, fsm: Fsm) -> Self {
        self.fsm = Some(fsm);
        self
    }

    /// The update kinds the handlers can receive (for `allowed_updates`), as
    /// [`Dispatcher::used_update_kinds`] will report them.
    pub fn used_update_kinds(&self) -> Vec<UpdateKind> {
        self.router.used_update_kinds()
    }

    /// Whether some router has a `media_group` handler (see
    /// [`Dispatcher::wants_albums`]).
    pub fn wants_albums(&self) -> bool {
        self.router.wants_albums()
    }

    /// Whether an FSM was given with [`DispatcherBuilder::fsm`].
    pub fn has_fsm(&self) -> bool {
        self.fsm.is_some()
    }

    /// Whether a handler or filter needs the FSM (takes `FsmContext` or `SceneContext`,
    /// or routes with `StateFilter`). The runtime uses it to give such a dispatcher a
    /// Redis FSM from its settings, and no FSM (no Redis round trips) to one that does
    /// not need it.
    pub fn needs_fsm(&self) -> bool {
        self.router.needs(std::any::TypeId::of::<FsmInstalled>())
    }

    /// The observers whose handlers or filters use FSM state, as `(router name, kind)`
    /// (see [`Dispatcher::fsm_observers`]), known before the dispatcher is built.
    pub fn fsm_observers(&self) -> Vec<(String, UpdateKind)> {
        let mut out = Vec::new();
        self.router
            .observers_needing(std::any::TypeId::of::<FsmInstalled>(), &mut out);
        out
    }

    /// Checks the tree (every handler's dependencies are provided; router names are
    /// unique) and builds the dispatcher.
    pub fn build(mut self) -> Result<Dispatcher, BuildError> {
        if self.fsm.is_some() {
            self.state.insert(FsmInstalled);
        }

        self.router.check(
            &self.state,
            &self.provided,
            &BTreeMap::new(),
            &mut HashSet::new(),
        )?;
        let kinds = Arc::new(self.router.used_update_kinds());
        let wants_albums = self.router.wants_albums();
        let mut fsm_observers = Vec::new();
        self.router
            .observers_needing(std::any::TypeId::of::<FsmInstalled>(), &mut fsm_observers);
        let root = Node::freeze(self.router, &BTreeMap::new());
        // Each key's way in, composed once: the FSM (wherever it was given: everything
        // after it sees the update's FSM context, and a key it cannot lock fails the
        // update before anything else runs), then the `errors` stage, then the
        // update-wide outer middleware, around the root's route.
        let mut chain: Vec<Arc<DynMiddleware>> = Vec::new();
        if let Some(fsm) = &self.fsm {
            chain.push(Arc::new(fsm.clone()));
        }
        chain.push(Arc::new(ErrorsStage {
            route: root.routes.get(&ObserverKey::Errors).cloned(),
            classifiers: self.classifiers.into(),
        }));
        chain.extend(self.update_outer);
        let chain: Arc<[Arc<DynMiddleware>]> = chain.into();
        let entries = root
            .routes
            .iter()
            .filter(|(key, _)| **key != ObserverKey::Errors)
            .map(|(key, route)| {
                let (chain, route) = (Arc::clone(&chain), Arc::clone(route));
                let entry: Route = Arc::new(move |cx: Context| {
                    Next::new(Arc::clone(&chain), Arc::clone(&route)).run(cx)
                });
                (key.clone(), entry)
            })
            .collect();
        Ok(Dispatcher {
            kinds,
            wants_albums,
            fsm_observers: fsm_observers.into(),
            entries: Arc::new(entries),
            state: Arc::new(self.state),
            fsm: self.fsm,
        })
    }
}

/// The root of the router tree: feeds updates through it.
///
/// ```
/// use std::sync::Arc;
/// use frankenstein::types::Message;
/// use tgpipe::{Bot, Dispatcher, Outcome, Router};
///
/// # tokio_test();
/// # fn tokio_test() { tokio::runtime::Runtime::new().unwrap().block_on(async {
/// async fn echo(message: Arc<Message>) {}
///
/// let mut router = Router::new("main");
/// router.message(echo);
/// let dispatcher = Dispatcher::builder(router).build().unwrap();
/// let bot = Bot::new("123:TEST").unwrap();
/// let update = br#"{"update_id":1,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"text":"hi"}}"#;
/// let outcome = dispatcher.feed_raw(&bot, bytes::Bytes::from_static(update)).await;
/// assert_eq!(outcome.unwrap(), Outcome::Handled);
/// # }) }
/// ```
#[derive(Clone)]
pub struct Dispatcher {
    /// Per observer key, the update-wide chain around the root's route.
    entries: Arc<BTreeMap<ObserverKey, Route>>,
    state: Arc<Extensions>,
    kinds: Arc<Vec<UpdateKind>>,
    wants_albums: bool,
    fsm_observers: Arc<[(String, UpdateKind)]>,
    fsm: Option<Fsm>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Starts building a dispatcher whose root router is `router`.
    pub fn builder(router: Router) -> DispatcherBuilder {
        DispatcherBuilder {
            router,
            state: Extensions::new(),
            update_outer: Vec::new(),
            fsm: None,
            classifiers: Vec::new(),
            provided: Vec::new(),
        }
    }

    /// The kinds the registered handlers can receive (for `allowed_updates`).
    pub fn used_update_kinds(&self) -> Vec<UpdateKind> {
        self.kinds.as_ref().clone()
    }

    /// Whether some router has a `media_group` handler: the runtime collects albums only
    /// for a dispatcher that wants them.
    pub fn wants_albums(&self) -> bool {
        self.wants_albums
    }

    /// The observers whose handlers or filters use FSM state (take `FsmContext` or
    /// `SceneContext`, or route with `StateFilter`), as `(router name, kind)`. Updates
    /// of these kinds share a conversation's state, so the runtime keeps them in one
    /// lane (FSM state is fenced per lane).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use frankenstein::types::{CallbackQuery, Message};
    /// use tgpipe::fsm::{Fsm, FsmContext, MemoryStorage};
    /// use tgpipe::{Dispatcher, Router, UpdateKind};
    ///
    /// async fn ask(message: Arc<Message>, fsm: FsmContext) {}
    /// async fn press(query: Arc<CallbackQuery>) {}
    ///
    /// let mut router = Router::new("form");
    /// router.message(ask);
    /// router.callback_query(press);
    /// let dp = Dispatcher::builder(router)
    ///     .fsm(Fsm::new(MemoryStorage::new()))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(dp.fsm_observers(), [("form".to_owned(), UpdateKind::Message)]);
    /// ```
    pub fn fsm_observers(&self) -> &[(String, UpdateKind)] {
        &self.fsm_observers
    }

    /// Dispatches an update read from the stream: its keys from the envelope, its body
    /// parsed once into the typed event.
    pub async fn feed_envelope(&self, bot: &Bot, env: &Envelope) -> Result<Outcome, HandlerError> {
        self.feed_update(bot, Update::from_envelope(env)).await
    }

    /// Dispatches an update given as raw bytes (what the stream stores). A body that is
    /// not an update fails permanently.
    pub async fn feed_raw(&self, bot: &Bot, raw: Bytes) -> Result<Outcome, HandlerError> {
        match Update::parse(bot.id(), raw) {
            Ok(update) => self.feed_update(bot, update).await,
            Err(e) => Err(HandlerError::permanent(e)),
        }
    }

    /// Dispatches a parsed update.
    ///
    /// With an FSM, the update's key is locked (isolation) and its state read before
    /// anything else runs, and unlocked once the dispatch is over. If that fails (the
    /// storage is unreachable, the key stays locked), nothing runs and the update fails
    /// with a transient error, without passing through `errors` handlers: only a retry
    /// can handle it.
    pub async fn feed_update(&self, bot: &Bot, update: Update) -> Result<Outcome, HandlerError> {
        let cx = Context::new(Arc::new(update), bot.clone(), Arc::clone(&self.state));
        self.dispatch(cx).await
    }

    /// The FSM, if the dispatcher has one (the runtime reads its state ahead).
    pub fn fsm(&self) -> Option<&Fsm> {
        self.fsm.as_ref()
    }

    /// [`Dispatcher::feed_update`] with values for the update's context, given by the
    /// caller: the runtime gives the FSM state it read ahead, in the same round trip as
    /// its duplicate check ([`Prefetched`]), which the FSM middleware then uses instead
    /// of reading again.
    pub async fn feed_with(
        &self,
        bot: &Bot,
        update: Update,
        values: Extensions,
    ) -> Result<Outcome, HandlerError> {
        let cx = Context::with_values(
            Arc::new(update),
            bot.clone(),
            Arc::clone(&self.state),
            values,
        );
        self.dispatch(cx).await
    }

    /// Dispatches the parts of one album (updates with the same `media_group_id`, in any
    /// order): through the `media_group` observers, with an [`Album`] of every part
    /// sorted by `message_id` and the first part as the context's update. An album no
    /// album handler takes (or parts that are not one album) reaches the message
    /// handlers part by part, in album order. `values` go to the first dispatch. A part
    /// given twice (the same `update_id`) counts once. The outcome is `Handled` if
    /// anything handled; the first error ends the dispatch.
    ///
    /// ```
    /// use tgpipe::prelude::*;
    /// use tgpipe::{Album, Extensions};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// async fn album(album: Album) {
    ///     assert_eq!(album.len(), 2);
    ///     assert_eq!(album.messages()[0].message_id, 11);
    /// }
    ///
    /// let mut router = Router::new("main");
    /// router.media_group(album);
    /// let dispatcher = Dispatcher::builder(router).build().unwrap();
    /// let bot = Bot::new("123:TEST").unwrap();
    /// let part = |id: i64| {
    ///     let raw = format!(r#"{{"update_id":{id},"message":{{"message_id":{id},"date":0,"chat":{{"id":5,"type":"private"}},"media_group_id":"g1","photo":[]}}}}"#);
    ///     Update::parse(bot.id(), raw.into()).unwrap()
    /// };
    /// let parts = vec![part(12), part(11)];
    /// let outcome = dispatcher.feed_album(&bot, parts, Extensions::new()).await;
    /// assert_eq!(outcome.unwrap(), Outcome::Handled);
    /// # })
    /// ```
    pub async fn feed_album(
        &self,
        bot: &Bot,
        parts: Vec<Update>,
        values: Extensions,
    ) -> Result<Outcome, HandlerError> {
        // A part delivered twice counts once.
        let mut parts = parts;
        let mut ids = std::collections::HashSet::with_capacity(parts.len());
        parts.retain(|u| ids.insert(u.update_id));
        let mut values = Some(values);
        let (album, mut parts) = match self.entries.get(&ObserverKey::MediaGroup) {
            Some(entry) => match Album::new(parts.clone()) {
                Some(album) => {
                    let mut cx = Context::with_values(
                        album.first(),
                        bot.clone(),
                        Arc::clone(&self.state),
                        values.take().unwrap_or_default(),
                    );
                    cx.insert(album.clone());
                    let bot = cx.bot().clone();
                    if crate::calls::with_bot(bot, entry(cx)).await? == Outcome::Handled {
                        return Ok(Outcome::Handled);
                    }
                    (Some(album), Vec::new())
                }
                None => (None, parts),
            },
            None => (None, parts),
        };
        // Part by part, in album order.
        if let Some(album) = album {
            parts = album.updates().iter().map(|u| Update::clone(u)).collect();
        } else {
            parts.sort_by_key(|u| u.event.message().map(|m| m.message_id));
        }
        let mut outcome = Outcome::Skipped;
        for update in parts {
            let cx = Context::with_values(
                Arc::new(update),
                bot.clone(),
                Arc::clone(&self.state),
                values.take().unwrap_or_default(),
            );
            if self.dispatch(cx).await? == Outcome::Handled {
                outcome = Outcome::Handled;
            }
        }
        Ok(outcome)
    }

    /// Whether some router has an `expired` handler (see [`Router::expired`]).
    pub fn handles_expired(&self) -> bool {
        self.entries.contains_key(&ObserverKey::Expired)
    }

    /// Offers an update that expired before its turn to the `expired` handlers, with
    /// `expired` in its context: what the runtime does instead of dispatching it. An
    /// update no `expired` handler takes is [`Outcome::Skipped`].
    pub async fn feed_expired(
        &self,
        bot: &Bot,
        update: Update,
        expired: crate::expired::Expired,
        mut values: Extensions,
    ) -> Result<Outcome, HandlerError> {
        values.insert(expired);
        let cx = Context::with_values(
            Arc::new(update),
            bot.clone(),
            Arc::clone(&self.state),
            values,
        );
        let Some(entry) = self.entries.get(&ObserverKey::Expired) else {
            return Ok(Outcome::Skipped);
        };
        crate::calls::with_bot(bot.clone(), entry(cx)).await
    }

    async fn dispatch(&self, cx: Context) -> Result<Outcome, HandlerError> {
        let key = match cx.event() {
            Event::Raw(_) => ObserverKey::Raw,
            Event::Timer(_) => ObserverKey::Timer,
            _ => ObserverKey::Kind(cx.update().kind.clone()),
        };
        let Some(entry) = self.entries.get(&key) else {
            return unhandled(&cx);
        };
        let update = cx.update_arc();
        // The update's bot is current for the whole chain: calls bound to the event
        // (`message.answer(..)`) take it from there.
        let bot = cx.bot().clone();
        match crate::calls::with_bot(bot, entry(cx)).await? {
            Outcome::Handled => Ok(Outcome::Handled),
            Outcome::Skipped => unhandled_update(&update),
        }
    }
}

/// An update nothing handled.
fn unhandled(cx: &Context) -> Result<Outcome, HandlerError> {
    unhandled_update(cx.update())
}

/// An update nothing handled: acknowledged unseen, unless Telegram sent something the
/// types cannot read, which fails for good (and is dead-lettered, kept).
fn unhandled_update(update: &Update) -> Result<Outcome, HandlerError> {
    match &update.event {
        Event::Raw(RawReason::Unparsed(why)) => Err(HandlerError::permanent(UnreadableUpdate {
            kind: update.kind.clone(),
            why: why.clone(),
        })),
        _ => Ok(Outcome::Skipped),
    }
}

/// The `errors` stage of every update's chain, inside the FSM (its handlers see the
/// update's FSM context and run under its lock) and outside the update-wide
/// middleware (which see the error as the handler returned it): an error is classified
/// with the application's [`Transient`] types, offered to the `errors` handlers, and, if
/// none takes it, to [`default_error_policy`].
struct ErrorsStage {
    route: Option<Route>,
    classifiers: Arc<[Classifier]>,
}

impl chain::Middleware<Context, MiddlewareResult> for ErrorsStage {
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        let route = self.route.clone();
        let classifiers = Arc::clone(&self.classifiers);
        Box::pin(async move {
            let mut ecx = cx.clone();
            let mut e = match next.run(cx).await {
                Err(e) => e,
                handled => return handled,
            };
            e.reclassify(&classifiers);
            let e = Arc::new(e);
            ecx.insert(ErrorEvent(Arc::clone(&e)));
            let handled = match route {
                Some(route) => route(ecx.clone()).await,
                None => Ok(Outcome::Skipped),
            };
            // An error handler that fails leaves the original error standing.
            if let Ok(Outcome::Handled) = handled {
                return Ok(Outcome::Handled);
            }
            let update = ecx.update_arc();
            drop(ecx);
            default_error_policy(&update, e)
        })
    }
}

/// What becomes of an error no `errors` handler took. A Bot API 403 whose recipient is
/// gone (the user blocked the bot, deleted the account, removed it from the group, never
/// started it) is an everyday event, not a failure: counted, logged at INFO, handled.
/// Everything else fails.
fn default_error_policy(update: &Update, e: Arc<HandlerError>) -> MiddlewareResult {
    // Found through application errors that wrap the `BotError` as their cause.
    let gone = e.forbidden_reason().filter(|r| r.recipient_gone());
    match gone {
        Some(reason) => {
            metrics::counter!("tgpipe_bot_api_forbidden_total", "reason" => reason.label())
                .increment(1);
            tracing::info!(
                bot = %update.bot,
                update_id = update.update_id,
                chat_id = update.chat_id,
                reason = reason.label(),
                error = %format_args!("{e:#}"),
                "the Bot API refused: the recipient is gone; the update counts as handled"
            );
            Ok(Outcome::Handled)
        }
        None => Err(HandlerError::shared(e)),
    }
}

/// Runs `filters` in order, each seeing the values of the ones before it (aiogram merges
/// each filter's data before calling the next): the context with all their values, or
/// `None` if one rejected.
async fn run_filters(filters: &[Arc<dyn Filter>], cx: &Context) -> Option<Context> {
    let Some((first, rest)) = filters.split_first() else {
        return Some(cx.clone());
    };
    // The context is cloned only once the first filter passed: most registrations are
    // rejected by their first filter.
    let values = first.check(cx).await?;
    let mut fcx = cx.clone();
    fcx.extend(values);
    for f in rest {
        let values = f.check(&fcx).await?;
        fcx.extend(values);
    }
    Some(fcx)
}
