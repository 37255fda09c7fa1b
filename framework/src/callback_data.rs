//! Typed callback data: a prefix and typed fields packed into an inline button's
//! `callback_data` (at most 64 bytes), and a filter that matches and unpacks it.
//!
//! ```
//! use tgpipe::callback_data;
//! use tgpipe::callback_data::CallbackData;
//!
//! callback_data! {
//!     /// A menu button.
//!     pub struct MenuButton("menu") { action: String, item: u32 }
//! }
//!
//! let data = MenuButton { action: "buy".into(), item: 7 }.pack().unwrap();
//! assert_eq!(data, "menu:buy:7");
//! assert_eq!(MenuButton::unpack(&data).unwrap(), MenuButton { action: "buy".into(), item: 7 });
//! assert!(MenuButton::unpack("other:buy:7").is_err());
//! ```
//!
//! A handler takes the value itself: `router.callback_query(|b: MenuButton| async {})
//! .filter(MenuButton::filter())`.

use std::any::TypeId;
use std::marker::PhantomData;

use crate::context::{Context, Extensions};
use crate::filter::{Filter, FilterOutcome};
use crate::handler::BoxFuture;

/// Telegram's limit on `callback_data`, in bytes.
pub const MAX_LEN: usize = 64;
/// Separates the prefix and the fields.
pub const SEPARATOR: char = ':';

/// Why callback data cannot be packed or unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackDataError {
    /// The packed data is over 64 bytes.
    #[error("callback data `{data}` is {len} bytes; Telegram allows {MAX_LEN}")]
    TooLong {
        /// The packed data.
        data: String,
        /// Its length.
        len: usize,
    },
    /// A field's text contains the separator.
    #[error("field `{field}` contains `{SEPARATOR}`, which separates fields")]
    Separator {
        /// The field.
        field: &'static str,
    },
    /// The prefix is not this type's.
    #[error("callback data does not start with `{0}{SEPARATOR}`")]
    Prefix(&'static str),
    /// Too few or too many fields.
    #[error("callback data has {got} fields, `{prefix}` has {want}")]
    FieldCount {
        /// The type's prefix.
        prefix: &'static str,
        /// Fields present.
        got: usize,
        /// Fields expected.
        want: usize,
    },
    /// A field does not parse into its type.
    #[error("field `{field}` cannot be `{value}`")]
    Field {
        /// The field.
        field: &'static str,
        /// Its text.
        value: String,
    },
}

/// A callback data type (made by [`callback_data!`](crate::callback_data!)).
pub trait CallbackData: Sized + Clone + Send + Sync + 'static {
    /// The prefix that identifies the type.
    const PREFIX: &'static str;
    /// Field names, in order.
    const FIELDS: &'static [&'static str];

    /// The fields as text, in order.
    fn field_values(&self) -> Vec<String>;
    /// The value from its fields' texts.
    fn from_field_values(values: &[&str]) -> Result<Self, CallbackDataError>;

    /// `prefix:field:field...`, checked against the separator and the 64-byte limit.
    fn pack(&self) -> Result<String, CallbackDataError> {
        let mut data = String::from(Self::PREFIX);
        for (name, value) in Self::FIELDS.iter().zip(self.field_values()) {
            if value.contains(SEPARATOR) {
                return Err(CallbackDataError::Separator { field: name });
            }
            data.push(SEPARATOR);
            data.push_str(&value);
        }
        if data.len() > MAX_LEN {
            return Err(CallbackDataError::TooLong {
                len: data.len(),
                data,
            });
        }
        Ok(data)
    }

    /// Parses data made by [`CallbackData::pack`].
    fn unpack(data: &str) -> Result<Self, CallbackDataError> {
        let mut parts = data.split(SEPARATOR);
        if parts.next() != Some(Self::PREFIX) {
            return Err(CallbackDataError::Prefix(Self::PREFIX));
        }
        let values: Vec<&str> = parts.collect();
        if values.len() != Self::FIELDS.len() {
            return Err(CallbackDataError::FieldCount {
                prefix: Self::PREFIX,
                got: values.len(),
                want: Self::FIELDS.len(),
            });
        }
        Self::from_field_values(&values)
    }

    /// A filter passing callback queries whose data unpacks into this type, handing the
    /// value to the handler.
    fn filter() -> CallbackDataFilter<Self> {
        CallbackDataFilter(PhantomData)
    }
}

/// See [`CallbackData::filter`].
pub struct CallbackDataFilter<T>(PhantomData<fn() -> T>);

impl<T: CallbackData> Filter for CallbackDataFilter<T> {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let value = match cx.event() {
            crate::Event::CallbackQuery(q) => q.data.as_deref().and_then(|d| T::unpack(d).ok()),
            _ => None,
        };
        Box::pin(std::future::ready(value.map(|v| {
            let mut e = Extensions::new();
            e.insert(v);
            e
        })))
    }
    fn provides(&self) -> Vec<TypeId> {
        vec![TypeId::of::<T>()]
    }
}

/// How fields are written: as aiogram writes them, so that buttons made by an aiogram bot
/// read after a migration. A `bool` is `1` or `0` (`true` and `false` are read too);
/// any other field is its `Display` text, read back with `FromStr`.
///
/// (Chosen per field type when the macro expands, by method resolution: the `bool`
/// implementations are on `Field<bool>` itself, the general ones one reference away.)
#[doc(hidden)]
pub mod field {
    use std::fmt::Display;
    use std::marker::PhantomData;
    use std::str::FromStr;

    /// A field being packed.
    pub struct Field<'a, T>(pub &'a T);

    /// Packs a `bool` as aiogram does.
    pub trait PackBool {
        /// `1` or `0`.
        fn pack(&self) -> String;
    }

    impl PackBool for Field<'_, bool> {
        fn pack(&self) -> String {
            if *self.0 { "1" } else { "0" }.to_owned()
        }
    }

    /// Packs any other field as its text.
    pub trait PackText {
        /// Its `Display` text.
        fn pack(&self) -> String;
    }

    impl<T: Display> PackText for &Field<'_, T> {
        fn pack(&self) -> String {
            self.0.to_string()
        }
    }

    /// A field being unpacked into a `T`.
    pub struct Parse<T>(pub PhantomData<fn() -> T>);

    /// Unpacks a `bool` as aiogram does.
    pub trait UnpackBool {
        /// `1`/`true` or `0`/`false`.
        fn unpack(&self, text: &str) -> Option<bool>;
    }

    impl UnpackBool for Parse<bool> {
        fn unpack(&self, text: &str) -> Option<bool> {
            match text {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                _ => None,
            }
        }
    }

    /// Unpacks any other field from its text.
    pub trait UnpackText<T> {
        /// `FromStr`.
        fn unpack(&self, text: &str) -> Option<T>;
    }

    impl<T: FromStr> UnpackText<T> for &Parse<T> {
        fn unpack(&self, text: &str) -> Option<T> {
            text.parse().ok()
        }
    }
}

/// Declares a callback data type: a struct with `Display + FromStr` fields (a `bool` is
/// packed `1`/`0`, as aiogram packs it), its [`CallbackData`] implementation, and its
/// extractor.
#[macro_export]
macro_rules! callback_data {
    ($(#[$meta:meta])* $vis:vis struct $name:ident($prefix:literal) { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name { $($(#[$fmeta])* pub $field: $ty),* }

        impl $crate::callback_data::CallbackData for $name {
            const PREFIX: &'static str = $prefix;
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn field_values(&self) -> ::std::vec::Vec<::std::string::String> {
                #[allow(unused_imports)]
                use $crate::callback_data::field::{PackBool as _, PackText as _};
                ::std::vec![$((&$crate::callback_data::field::Field(&self.$field)).pack()),*]
            }

            #[allow(unused_variables, unused_mut)]
            fn from_field_values(values: &[&str]) -> ::std::result::Result<Self, $crate::callback_data::CallbackDataError> {
                let mut it = values.iter();
                #[allow(unused_imports)]
                use $crate::callback_data::field::{UnpackBool as _, UnpackText as _};
                Ok($name { $($field: {
                    let text: &str = it.next().copied().unwrap_or_default();
                    (&$crate::callback_data::field::Parse::<$ty>(::std::marker::PhantomData)).unpack(text).ok_or_else(|| $crate::callback_data::CallbackDataError::Field {
                        field: stringify!($field),
                        value: text.to_owned(),
                    })?
                }),* })
            }
        }

        impl $crate::extract::FromContext for $name {
            fn from_context(cx: &$crate::Context) -> ::std::result::Result<Self, $crate::extract::ExtractError> {
                cx.get::<$name>().cloned().ok_or($crate::extract::ExtractError::Missing(stringify!($name)))
            }
            fn requirement() -> ::std::option::Option<$crate::extract::Requirement> {
                Some($crate::extract::Requirement::of::<$name>())
            }
        }
    };
}
