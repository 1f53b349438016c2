//! The strings a pod view keeps: short ones in place ([`Text`]), and a seed that reads a string
//! onto the end of another ([`AppendTo`]).

use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};
use serde::Deserializer;

/// Reads a string onto the end of another, with no allocation of its own.
pub(super) struct AppendTo<'s>(pub(super) &'s mut String);

impl<'de> DeserializeSeed<'de> for AppendTo<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AppendTo<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push_str(value);
        Ok(())
    }
}

/// A string read from a pod: up to 22 bytes in place, a longer one in an allocation of its own
/// length. Names and paths are short; a `String` would add an allocation to each, and a pod
/// can list hundreds of thousands of them.
#[derive(Clone)]
pub enum Text {
    Inline(u8, [u8; INLINE_BYTES]),
    Heap(Box<str>),
}

/// The longest [`Text`] kept in place.
const INLINE_BYTES: usize = 22;

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("only whole strings are kept in place")
            }
            Text::Heap(text) => text,
        }
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_BYTES => {
                let mut bytes = [0; INLINE_BYTES];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline(len, bytes)
            }
            _ => Text::Heap(text.into()),
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::from("")
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
