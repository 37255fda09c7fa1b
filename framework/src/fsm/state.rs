//! States: readable names stored as strings (`Form:Name`), declared in groups.

use std::borrow::Cow;
use std::fmt;

/// The stored name of a state, such as `"Form:Name"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateName(Cow<'static, str>);

impl StateName {
    /// A state name from a static string (no allocation).
    pub const fn from_static(name: &'static str) -> StateName {
        StateName(Cow::Borrowed(name))
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&'static str> for StateName {
    fn from(s: &'static str) -> StateName {
        StateName::from_static(s)
    }
}

impl From<String> for StateName {
    fn from(s: String) -> StateName {
        StateName(Cow::Owned(s))
    }
}

impl PartialEq<str> for StateName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// A group of states (aiogram's `StatesGroup`): an enum whose variants are states named
/// `<Group>:<Variant>`. Declare one with [`states!`](crate::states).
pub trait StatesGroup: Copy + Send + Sync + 'static {
    /// The group's name, the prefix of its states' names.
    const GROUP: &'static str;

    /// The states of the group, in declaration order.
    fn all() -> &'static [Self];

    /// This state's stored name.
    fn name(self) -> &'static str;

    /// The state whose stored name is `name`, if it is one of this group's.
    fn from_name(name: &str) -> Option<Self> {
        Self::all().iter().copied().find(|s| s.name() == name)
    }
}

/// Declares a [`StatesGroup`](crate::fsm::StatesGroup): an enum of states named
/// `<Enum>:<Variant>`, convertible into [`StateName`](crate::fsm::StateName); each state
/// is a filter passing in that state (`.filter(Form::Name)`).
///
/// ```
/// use tgpipe::fsm::{StateName, StatesGroup};
///
/// tgpipe::states! {
///     /// The sign-up form.
///     pub enum Form { Name, Age }
/// }
///
/// assert_eq!(Form::Name.name(), "Form:Name");
/// assert_eq!(StateName::from(Form::Age).as_str(), "Form:Age");
/// assert_eq!(Form::from_name("Form:Age"), Some(Form::Age));
/// assert_eq!(Form::all().len(), 2);
/// ```
#[macro_export]
macro_rules! states {
    ($(#[$meta:meta])* $vis:vis enum $group:ident { $($(#[$vmeta:meta])* $state:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $group {
            $($(#[$vmeta])* $state,)+
        }

        impl $crate::fsm::StatesGroup for $group {
            const GROUP: &'static str = stringify!($group);

            fn all() -> &'static [Self] {
                &[$($group::$state),+]
            }

            fn name(self) -> &'static str {
                match self {
                    $($group::$state => concat!(stringify!($group), ":", stringify!($state)),)+
                }
            }
        }

        impl $crate::filter::Filter for $group {
            fn check<'a>(
                &'a self,
                cx: &'a $crate::Context,
            ) -> $crate::handler::BoxFuture<'a, $crate::filter::FilterOutcome> {
                $crate::fsm::state_is(*self, cx)
            }
            fn requires(&self) -> ::std::vec::Vec<$crate::extract::Requirement> {
                $crate::fsm::state_requires()
            }
        }

        impl ::std::convert::From<$group> for $crate::fsm::StateName {
            fn from(s: $group) -> $crate::fsm::StateName {
                $crate::fsm::StateName::from_static($crate::fsm::StatesGroup::name(s))
            }
        }
    };
}
