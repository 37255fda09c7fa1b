//! Deserialisation of an update's payload: only the field of its kind, in one pass,
//! straight into frankenstein's typed variant.

use std::fmt;

use frankenstein::updates::UpdateContent;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
    VariantAccess, Visitor,
};
use tgpipe_shared::UpdateKind;

use super::{Event, RawReason, Repair, from_content};

/// Parses the payload of `kind` only (the field is found without building the rest).
pub(super) fn parse_event(kind: &UpdateKind, raw: &[u8]) -> (Event, Vec<Repair>) {
    if !kind.is_known() {
        return (Event::Raw(RawReason::UnknownKind), Vec::new());
    }
    // One pass over the body: the kind's field straight into its typed variant, the
    // other fields skipped unread.
    let mut de = serde_json::Deserializer::from_slice(raw);
    let first = content(kind.as_str(), &mut de).and_then(|c| de.end().map(|()| c));
    match first {
        Ok(Some(content)) => (from_content(content), Vec::new()),
        Ok(None) => {
            let why = format!("no `{kind}` field");
            (Event::Raw(RawReason::Unparsed(why)), Vec::new())
        }
        // Only on failure, so well-formed updates pay nothing for the repairs.
        Err(e) => super::repair::repaired(kind, raw, e),
    }
}

/// Reads one field of an update object as frankenstein's externally tagged
/// `UpdateContent`, in the pass that walks the object: the field's value is handed to
/// the variant's deserializer as if it were `{"<kind>": value}`.
/// The `kind` field of the object `de` holds, typed; `None` when it has none.
fn content<'de, D: Deserializer<'de>>(
    kind: &str,
    de: D,
) -> Result<Option<UpdateContent>, D::Error> {
    de.deserialize_map(Fields { kind })
}

struct Fields<'k> {
    kind: &'k str,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Option<UpdateContent>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an update object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && key == self.kind {
                found = Some(map.next_value_seed(Tag { kind: self.kind })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Deserializes a value as the `kind` variant of `UpdateContent`.
struct Tag<'k> {
    kind: &'k str,
}

impl<'de> DeserializeSeed<'de> for Tag<'_> {
    type Value = UpdateContent;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<UpdateContent, D::Error> {
        serde::Deserialize::deserialize(Tagged {
            kind: self.kind,
            value: de,
        })
    }
}

/// `{"<kind>": value}` without building it.
struct Tagged<'k, D> {
    kind: &'k str,
    value: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        struct identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for Tagged<'_, D> {
    type Error = D::Error;
    type Variant = Value<D>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Value<D>), D::Error> {
        let tag: de::value::StrDeserializer<'_, D::Error> = self.kind.into_deserializer();
        Ok((seed.deserialize(tag)?, Value(self.value)))
    }
}

struct Value<D>(D);

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for Value<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        serde::Deserialize::deserialize(self.0)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}
