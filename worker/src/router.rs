//! Routers: observers of update kinds, with handlers, filters and middleware, nested.

use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tgpipe_shared::UpdateKind;

use crate::error::BuildError;
use crate::filter::Filter;
use crate::handler::{ErasedHandler, Handler};
use crate::middleware::Middleware;

/// One handler with its filters.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) handler: ErasedHandler,
    pub(crate) filters: Vec<Arc<dyn Filter>>,
}

/// The handlers, filters and middleware of one kind of update in one router.
#[derive(Clone, Default)]
pub(crate) struct Observer {
    pub(crate) outer: Vec<Arc<dyn Middleware>>,
    pub(crate) inner: Vec<Arc<dyn Middleware>>,
    pub(crate) handlers: Vec<Registration>,
}

/// Where an observer lives in a router.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ObserverKey {
    Kind(UpdateKind),
    /// Unknown kinds and payloads the typed model could not read.
    Raw,
    /// Errors of handlers below the dispatcher.
    Errors,
}

impl std::fmt::Display for ObserverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObserverKey::Kind(k) => f.write_str(k.as_str()),
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
/// use tgpipe_worker::{filter::Command, Router};
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

    /// Registers a handler for updates whose kind is unknown or whose payload the typed
    /// model could not read (take `Arc<Update>` to get the raw JSON).
    pub fn raw<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Raw, handler)
    }

    /// Registers an `errors` handler (take [`crate::filter::ErrorEvent`]; filter with
    /// [`crate::filter::ErrorIs`]).
    pub fn errors<H: Handler<A>, A: 'static>(&mut self, handler: H) -> RegistrationRef<'_> {
        self.register(ObserverKey::Errors, handler)
    }

    /// Adds outer middleware to the observer of `kind`: it runs for every update of that
    /// kind that reaches this router, before filters.
    pub fn outer_middleware<M: Middleware>(&mut self, kind: UpdateKind, mw: M) -> &mut Self {
        self.observer(ObserverKey::Kind(kind))
            .outer
            .push(Arc::new(mw));
        self
    }

    /// Adds inner middleware to the observer of `kind`: it runs around a handler whose
    /// filters matched.
    pub fn inner_middleware<M: Middleware>(&mut self, kind: UpdateKind, mw: M) -> &mut Self {
        self.observer(ObserverKey::Kind(kind))
            .inner
            .push(Arc::new(mw));
        self
    }

    /// Declares that this router's middleware inserts a `T` into the context, so handlers
    /// taking `Dep<T>` pass the start-up check.
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
        for c in &self.children {
            c.collect_kinds(kinds);
        }
    }

    /// Whether any handler or filter of the tree needs a value of type `id`.
    pub(crate) fn needs(&self, id: TypeId) -> bool {
        self.observers.values().any(|obs| {
            obs.handlers.iter().any(|reg| {
                reg.handler.requirements.iter().any(|r| r.type_id == id)
                    || reg
                        .filters
                        .iter()
                        .any(|f| f.requires().iter().any(|r| r.type_id == id))
            })
        }) || self.children.iter().any(|c| c.needs(id))
    }

    /// Checks the tree: unique names, and every handler's requirements provided by the
    /// state, by declared middleware values along its path, or by its own filters.
    pub(crate) fn check(
        &self,
        state: &crate::context::Extensions,
        inherited: &[TypeId],
        names: &mut HashSet<String>,
    ) -> Result<(), BuildError> {
        if !names.insert(self.name.clone()) {
            return Err(BuildError::DuplicateRouter(self.name.clone()));
        }
        let provided: Vec<TypeId> = inherited.iter().chain(&self.provides).copied().collect();
        for (key, obs) in &self.observers {
            for (index, reg) in obs.handlers.iter().enumerate() {
                let from_filters: Vec<TypeId> =
                    reg.filters.iter().flat_map(|f| f.provides()).collect();
                let filter_needs: Vec<crate::extract::Requirement> =
                    reg.filters.iter().flat_map(|f| f.requires()).collect();
                for req in reg.handler.requirements.iter().chain(&filter_needs) {
                    let ok = state.contains(req.type_id)
                        || provided.contains(&req.type_id)
                        || from_filters.contains(&req.type_id)
                        // The error observer always provides the error.
                        || (*key == ObserverKey::Errors && req.type_id == TypeId::of::<crate::filter::ErrorEvent>());
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
            .try_for_each(|c| c.check(state, &provided, names))
    }
}
