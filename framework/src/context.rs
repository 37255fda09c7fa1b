//! The per-update context: the update, the bot, application state, and the typed values
//! that middleware and filters add for the handler.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::sync::Arc;

use crate::bot::Bot;
use crate::update::{Event, Update};

/// A map from type to one value of that type. Values are shared (`Arc`), so cloning a
/// context for a middleware chain costs a few reference counts.
#[derive(Clone, Default)]
pub struct Extensions(HashMap<TypeId, (Arc<dyn Any + Send + Sync>, &'static str)>);

impl Extensions {
    /// An empty map.
    pub fn new() -> Extensions {
        Extensions::default()
    }

    /// Stores `value`, replacing any earlier value of its type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0
            .insert(TypeId::of::<T>(), (Arc::new(value), type_name::<T>()));
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|(v, _)| v.downcast_ref())
    }

    /// Whether a value of this type id is stored.
    pub fn contains(&self, id: TypeId) -> bool {
        self.0.contains_key(&id)
    }

    /// Moves every value of `other` in, replacing values of the same types.
    pub fn extend(&mut self, other: Extensions) {
        self.0.extend(other.0);
    }

    /// The names of the stored types (for error messages).
    pub fn type_names(&self) -> Vec<&'static str> {
        self.0.values().map(|(_, n)| *n).collect()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.type_names()).finish()
    }
}

/// Everything a middleware, filter or handler sees of one update.
#[derive(Clone, Debug)]
pub struct Context {
    update: Arc<Update>,
    bot: Bot,
    state: Arc<Extensions>,
    values: Extensions,
}

impl Context {
    /// A context for `update` handled by `bot`, with the dispatcher's application state.
    pub fn new(update: Arc<Update>, bot: Bot, state: Arc<Extensions>) -> Context {
        Context {
            update,
            bot,
            state,
            values: Extensions::new(),
        }
    }

    /// [`Context::new`] with values already given (the caller's, for the chain).
    pub(crate) fn with_values(
        update: Arc<Update>,
        bot: Bot,
        state: Arc<Extensions>,
        values: Extensions,
    ) -> Context {
        Context {
            update,
            bot,
            state,
            values,
        }
    }

    /// The update.
    pub fn update(&self) -> &Update {
        &self.update
    }

    /// The shared update.
    pub fn update_arc(&self) -> Arc<Update> {
        Arc::clone(&self.update)
    }

    /// Its typed event.
    pub fn event(&self) -> &Event {
        &self.update.event
    }

    /// The bot the update is for.
    pub fn bot(&self) -> &Bot {
        &self.bot
    }

    /// Adds a value for later middleware, filters and the handler (`Dep<T>`).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(value);
    }

    /// A value added to this update's context, else one from the application state.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>().or_else(|| self.state.get::<T>())
    }

    /// Merges values a filter produced.
    pub(crate) fn extend(&mut self, values: Extensions) {
        self.values.extend(values);
    }
}
