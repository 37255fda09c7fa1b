//! The dispatcher: the root of the router tree, built once and shared.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tgpipe_shared::{Envelope, UpdateKind};

use crate::bot::Bot;
use crate::context::{Context, Extensions};
use crate::error::{
    BuildError, Classifier, DispatchOutcome, HandlerError, Transient, classifier_of,
};
use crate::filter::{ErrorEvent, Filter};
use crate::fsm::{Fsm, FsmInstalled, Prefetched};
use crate::handler::{BoxFuture, ErasedHandler, Flow};
use crate::middleware::{Endpoint, Handled, Middleware, MiddlewareResult, Next};
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
    inner: Arc<[Arc<dyn Middleware>]>,
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

type InnerChains = BTreeMap<ObserverKey, Vec<Arc<dyn Middleware>>>;

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
                let inner: Arc<[Arc<dyn Middleware>]> =
                    chains.get(&key).cloned().unwrap_or_default().into();
                let here = Arc::new(Here {
                    filters: observer.filters.into(),
                    steps: observer
                        .handlers
                        .into_iter()
                        .map(|reg| Step {
                            filters: reg.filters.into(),
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
                let outer: Arc<[Arc<dyn Middleware>]> = observer.outer.into();
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

/// The endpoint of an inner chain: the handler, its flow as the chain's result.
fn handler_endpoint(handler: ErasedHandler) -> Endpoint {
    Arc::new(move |cx: Context| -> BoxFuture<'static, MiddlewareResult> {
        let call = handler.call(cx);
        Box::pin(async move {
            match call.await? {
                Flow::Handled => Ok(Handled::Yes),
                Flow::Skip => Ok(Handled::No),
            }
        })
    })
}

impl Here {
    /// This router's handlers (the first whose filters pass, under the inner chain),
    /// then its children's routes, until one handles the update.
    async fn run(&self, mut cx: Context) -> MiddlewareResult {
        // Observer-level filters gate this router and its nested routers alike.
        if !self.filters.is_empty() {
            match run_filters(&self.filters, &cx).await {
                Some(fcx) => cx = fcx,
                None => return Ok(Handled::No),
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
            if handled == Handled::Yes {
                return Ok(Handled::Yes);
            }
        }
        for child in &self.children {
            if child(cx.clone()).await? == Handled::Yes {
                return Ok(Handled::Yes);
            }
        }
        Ok(Handled::No)
    }
}

/// Builds a [`Dispatcher`].
pub struct DispatcherBuilder {
    router: Router,
    state: Extensions,
    update_outer: Vec<Arc<dyn Middleware>>,
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
        let mw: Arc<dyn Middleware> = Arc::new(crate::router::Provider(f));
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

    /// Checks the tree (every handler's dependencies are provided; router names are
    /// unique) and builds the dispatcher.
    pub fn build(mut self) -> Result<Dispatcher, BuildError> {
        if self.fsm.is_some() {
            self.state.insert(FsmInstalled);
        }
        self.router
            .check(
                &self.state,
                &self.provided,
                &BTreeMap::new(),
                &mut HashSet::new(),
            )
            .map_err(|e| match e {
                BuildError::MissingDependency {
                    router,
                    observer,
                    index,
                    type_name,
                } if type_name == std::any::type_name::<FsmInstalled>() => {
                    BuildError::FsmNotConfigured {
                        router,
                        observer,
                        index,
                    }
                }
                e => e,
            })?;
        let kinds = Arc::new(self.router.used_update_kinds());
        let root = Node::freeze(self.router, &BTreeMap::new());
        // Each key's way in: the update-wide outer middleware around the root's route.
        let update_outer: Arc<[Arc<dyn Middleware>]> = self.update_outer.into();
        let entries = root
            .routes
            .iter()
            .filter(|(key, _)| **key != ObserverKey::Errors)
            .map(|(key, route)| {
                let entry: Route = if update_outer.is_empty() {
                    Arc::clone(route)
                } else {
                    let (outer, route) = (Arc::clone(&update_outer), Arc::clone(route));
                    Arc::new(move |cx: Context| {
                        Next::new(Arc::clone(&outer), Arc::clone(&route)).run(cx)
                    })
                };
                (key.clone(), entry)
            })
            .collect();
        Ok(Dispatcher {
            kinds,
            root: Arc::new(root),
            entries: Arc::new(entries),
            state: Arc::new(self.state),
            fsm: self.fsm,
            classifiers: self.classifiers.into(),
        })
    }
}

/// The root of the router tree: feeds updates through it.
///
/// ```
/// use std::sync::Arc;
/// use frankenstein::types::Message;
/// use tgpipe::{Bot, Dispatcher, DispatchOutcome, Router};
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
/// assert!(matches!(outcome, DispatchOutcome::Handled));
/// # }) }
/// ```
#[derive(Clone)]
pub struct Dispatcher {
    root: Arc<Node>,
    /// Per observer key, the update-wide outer middleware around the root's route.
    entries: Arc<BTreeMap<ObserverKey, Route>>,
    state: Arc<Extensions>,
    kinds: Arc<Vec<UpdateKind>>,
    fsm: Option<Fsm>,
    classifiers: Arc<[Classifier]>,
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

    /// Dispatches an update read from the stream: its keys from the envelope, its body
    /// parsed once into the typed event.
    pub async fn feed_envelope(&self, bot: &Bot, env: &Envelope) -> DispatchOutcome {
        self.feed_update(bot, Update::from_envelope(env)).await
    }

    /// Dispatches an update given as raw bytes (what the stream stores). A body that is
    /// not an update fails permanently.
    pub async fn feed_raw(&self, bot: &Bot, raw: Bytes) -> DispatchOutcome {
        match Update::parse(bot.id(), raw) {
            Ok(update) => self.feed_update(bot, update).await,
            Err(e) => DispatchOutcome::Failed(Arc::new(HandlerError::permanent(e))),
        }
    }

    /// Dispatches a parsed update.
    ///
    /// With an FSM, the update's key is locked (isolation) and its state read before
    /// anything else runs, and unlocked once the dispatch is over. If that fails (the
    /// storage is unreachable, the key stays locked), nothing runs and the update fails
    /// with a transient error, without passing through `errors` handlers: only a retry
    /// can handle it.
    pub async fn feed_update(&self, bot: &Bot, update: Update) -> DispatchOutcome {
        self.feed_prefetched(bot, update, None).await
    }

    /// The FSM, if the dispatcher has one (the runtime reads its state ahead).
    pub fn fsm(&self) -> Option<&Fsm> {
        self.fsm.as_ref()
    }

    /// [`Dispatcher::feed_update`] with the update's FSM state read ahead (by the
    /// runtime, in the same round trip as its duplicate check).
    pub async fn feed_prefetched(
        &self,
        bot: &Bot,
        update: Update,
        prefetched: Option<Prefetched>,
    ) -> DispatchOutcome {
        let mut cx = Context::new(Arc::new(update), bot.clone(), Arc::clone(&self.state));
        let session = match &self.fsm {
            Some(fsm) => match fsm.begin(cx.update(), prefetched).await {
                Ok(session) => session,
                Err(e) => return DispatchOutcome::Failed(Arc::new(e.into())),
            },
            None => None,
        };
        if let Some(session) = &session {
            cx.insert(session.cx.clone());
        }
        let outcome = self.dispatch(cx).await;
        if let Some(session) = session {
            session.end().await;
        }
        outcome
    }

    async fn dispatch(&self, cx: Context) -> DispatchOutcome {
        let key = match cx.event() {
            Event::Raw(_) => ObserverKey::Raw,
            _ => ObserverKey::Kind(cx.update().kind.clone()),
        };
        let result = match self.entries.get(&key) {
            Some(entry) => entry(cx.clone()).await,
            None => Ok(Handled::No),
        };
        match result {
            Ok(Handled::Yes) => DispatchOutcome::Handled,
            Ok(Handled::No) => match cx.event() {
                // Not acknowledged unseen: Telegram sent something the types cannot read.
                Event::Raw(RawReason::Unparsed(why)) => {
                    DispatchOutcome::Failed(Arc::new(HandlerError::permanent(UnreadableUpdate {
                        kind: cx.update().kind.clone(),
                        why: why.clone(),
                    })))
                }
                _ => DispatchOutcome::Unhandled,
            },
            Err(mut e) => {
                e.reclassify(&self.classifiers);
                let e = Arc::new(e);
                let mut ecx = cx;
                ecx.insert(ErrorEvent(Arc::clone(&e)));
                let handled = match self.root.routes.get(&ObserverKey::Errors) {
                    Some(route) => route(ecx.clone()).await,
                    None => Ok(Handled::No),
                };
                match handled {
                    Ok(Handled::Yes) => DispatchOutcome::Handled,
                    // An error handler that fails leaves the original error standing.
                    _ => default_error_policy(&ecx, e),
                }
            }
        }
    }
}

/// What becomes of an error no `errors` handler took. A Bot API 403 whose recipient is
/// gone (the user blocked the bot, deleted the account, removed it from the group, never
/// started it) is an everyday event, not a failure: counted, logged at INFO, handled.
/// Everything else fails.
fn default_error_policy(cx: &Context, e: Arc<HandlerError>) -> DispatchOutcome {
    // The reason is a link of the Bot API error's source chain, so it is found through
    // application errors that wrap the `BotError`, `transparent` ones included.
    let gone = e
        .find::<crate::bot::ForbiddenReason>()
        .copied()
        .filter(|r| r.recipient_gone());
    match gone {
        Some(reason) => {
            metrics::counter!("tgpipe_bot_api_forbidden_total", "reason" => reason.label())
                .increment(1);
            let update = cx.update();
            tracing::info!(
                bot = %update.bot,
                update_id = update.update_id,
                chat_id = update.chat_id,
                reason = reason.label(),
                error = %e,
                "the Bot API refused: the recipient is gone; the update counts as handled"
            );
            DispatchOutcome::Handled
        }
        None => DispatchOutcome::Failed(e),
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

/// An update and the bot it is for: what [`Dispatcher`] takes as a tower `Service`, so
/// tower layers (timeout, concurrency limit) can wrap the whole dispatch.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The bot.
    pub bot: Bot,
    /// The update's bytes.
    pub raw: Bytes,
}

impl tower::Service<Incoming> for Dispatcher {
    type Response = DispatchOutcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<DispatchOutcome, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Incoming) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.feed_raw(&req.bot, req.raw).await) })
    }
}
