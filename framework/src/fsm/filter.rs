//! [`StateFilter`]: route by the FSM state (aiogram's `StateFilter`).

use super::{FsmContext, StateName, StatesGroup};
use crate::context::Context;
use crate::filter::{Filter, FilterOutcome};
use crate::handler::BoxFuture;

#[derive(Debug, Clone)]
enum Wanted {
    OneOf(Vec<StateName>),
    Any,
    None,
}

/// Passes when the update's FSM state is one of the given states, in a group, any
/// state, or no state. Updates without an FSM key (no chat or user for the strategy)
/// never pass. A dispatcher whose handlers use it without an FSM is refused at build
/// time (`BuildError::FsmNotConfigured`).
///
/// ```
/// use tgpipe::fsm::StateFilter;
///
/// tgpipe::states! { enum Form { Name, Age } }
///
/// let name = StateFilter::is(Form::Name);
/// let either = StateFilter::any_of([Form::Name, Form::Age]);
/// let in_form = StateFilter::in_group::<Form>();
/// let idle = StateFilter::none();
/// let busy = StateFilter::any();
/// ```
#[derive(Debug, Clone)]
pub struct StateFilter(Wanted);

impl StateFilter {
    /// The state is `state`.
    pub fn is(state: impl Into<StateName>) -> StateFilter {
        StateFilter(Wanted::OneOf(vec![state.into()]))
    }

    /// The state is one of `states`.
    pub fn any_of<S: Into<StateName>>(states: impl IntoIterator<Item = S>) -> StateFilter {
        StateFilter(Wanted::OneOf(states.into_iter().map(Into::into).collect()))
    }

    /// The state is one of group `G`'s declared states (aiogram's `StateFilter(Form)`): a
    /// stored name with the group's prefix that no variant declares does not pass.
    pub fn in_group<G: StatesGroup>() -> StateFilter {
        StateFilter(Wanted::OneOf(
            G::all()
                .iter()
                .map(|s| StateName::from_static(s.name()))
                .collect(),
        ))
    }

    /// There is a state (aiogram's `StateFilter("*")` with a state set).
    pub fn any() -> StateFilter {
        StateFilter(Wanted::Any)
    }

    /// There is no state (aiogram's `StateFilter(None)`).
    pub fn none() -> StateFilter {
        StateFilter(Wanted::None)
    }

    fn matches(&self, state: Option<&str>) -> bool {
        match (&self.0, state) {
            (Wanted::OneOf(states), Some(s)) => states.iter().any(|w| w.as_str() == s),
            (Wanted::Any, Some(_)) | (Wanted::None, None) => true,
            _ => false,
        }
    }
}

impl Filter for StateFilter {
    fn requires(&self) -> Vec<crate::extract::Requirement> {
        needs_fsm()
    }

    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        check(cx, move |state| self.matches(state))
    }
}

/// What a state filter requires: the FSM.
fn needs_fsm() -> Vec<crate::extract::Requirement> {
    vec![crate::extract::Requirement::of::<super::FsmInstalled>()]
}

/// A state of a group is a filter passing in that state (aiogram's `@router.message(Form.name)`),
/// the same as `StateFilter::is(state)`: [`states!`](crate::states) implements
/// [`Filter`] with this.
///
/// ```
/// use tgpipe::prelude::*;
///
/// tgpipe::states! { enum Form { Name, Age } }
///
/// let mut router = Router::new("form");
/// router.message(|| async {}).filter((Form::Name, text::plain()));
/// ```
#[doc(hidden)]
pub fn state_is<'a>(state: impl StatesGroup, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
    let name = state.name();
    check(cx, move |state| state == Some(name))
}

/// What a state filter requires: the FSM (for [`states!`](crate::states)).
#[doc(hidden)]
pub fn state_requires() -> Vec<crate::extract::Requirement> {
    needs_fsm()
}

/// Reads the update's state and asks `matches`.
fn check<'a>(
    cx: &'a Context,
    matches: impl FnOnce(Option<&str>) -> bool + Send + 'a,
) -> BoxFuture<'a, FilterOutcome> {
    Box::pin(async move {
        let fsm = cx.get::<FsmContext>()?;
        match fsm.state().await {
            Ok(state) => matches(state.as_deref()).then(Default::default),
            // The dispatcher reads the state before routing, so this only happens
            // with a context built by hand; a filter cannot fail, so it rejects.
            Err(e) => {
                tracing::warn!(key = %fsm.key(), error = &e as &dyn std::error::Error, "state filter could not read the FSM state");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::states! { enum Form { Name, Age } }
    crate::states! { enum FormExtra { Name } }

    #[test]
    fn groups_match_by_whole_prefix() {
        let f = StateFilter::in_group::<Form>();
        assert!(f.matches(Some("Form:Name")));
        assert!(
            !f.matches(Some("FormExtra:Name")),
            "a longer group name is another group"
        );
        assert!(!f.matches(Some("Form")));
        assert!(!f.matches(None));
        assert!(!f.matches(Some("Form:Undeclared")));
        assert!(StateFilter::in_group::<FormExtra>().matches(Some("FormExtra:Name")));
    }

    /// aiogram's `StateFilter(Form)` passes only the group's declared states.
    #[test]
    fn state_filter_for_a_group_passes_only_declared_states() {
        let f = StateFilter::in_group::<Form>();
        assert!(f.matches(Some("Form:Name")) && f.matches(Some("Form:Age")));
        assert!(
            !f.matches(Some("Form:Email")),
            "a name the group does not declare"
        );
    }

    #[test]
    fn any_and_none_split_on_presence() {
        assert!(StateFilter::any().matches(Some("X:Y")));
        assert!(!StateFilter::any().matches(None));
        assert!(StateFilter::none().matches(None));
        assert!(!StateFilter::none().matches(Some("X:Y")));
        let f = StateFilter::any_of([Form::Name, Form::Age]);
        assert!(f.matches(Some("Form:Age")));
        assert!(!f.matches(Some("Form:Other")));
    }
}
