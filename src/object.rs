//! JSON objects only: serde's derived struct deserializers also take a
//! sequence (`["name", 5]`), which an object in the spec forbids.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{MapAccess, Visitor};

/// A type whose derived (`remote = "Self"`) deserializer reads a map.
pub(crate) trait FromObject<'de>: Sized {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// The visitor that accepts a map and nothing else.
pub(crate) struct ObjectOnly<T>(pub(crate) PhantomData<T>);

impl<'de, T: FromObject<'de>> Visitor<'de> for ObjectOnly<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
}

/// Implements an object-only `Deserialize` from the inherent function that
/// `#[serde(remote = "Self")]` derives.
macro_rules! object_deserialize {
    ($($ty:ident),*) => {$(
        impl<'de> $crate::object::FromObject<'de> for $ty {
            fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
                $ty::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_map($crate::object::ObjectOnly(core::marker::PhantomData))
            }
        }
    )*};
}

/// [`object_deserialize!`] and `Serialize` from the inherent function that
/// `#[serde(remote = "Self")]` derives.
macro_rules! object_serde {
    ($($ty:ident),*) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }
        $crate::object::object_deserialize!($ty);
    )*};
}

pub(crate) use object_deserialize;
pub(crate) use object_serde;
