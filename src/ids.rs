//! Identifiers and display names, and their validation rules.
//!
//! `uid`, `rid` and `tid` may arrive as a positive JSON integer, a numeric
//! string, or a string of 1–64 characters from `[A-Za-z0-9_.:-]`. They are
//! normalised to one string form here, so `5` and `"5"` name the same user and
//! every reply writes them as JSON strings.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Longest identifier or name, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// A validated, normalised identifier (user or room).
///
/// Cheap to clone (a shared string): rosters, sessions and cross-shard
/// messages all hold the same allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

impl Id {
    /// Validates a string identifier.
    pub fn parse_str(s: &str) -> Option<Id> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return None;
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
            return None;
        }
        Some(Id(Arc::from(s)))
    }

    /// Accepts a positive integer identifier; zero is not an identifier.
    pub fn from_u64(n: u64) -> Option<Id> {
        (n > 0).then(|| Id(Arc::from(n.to_string())))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated display name: 1–64 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates a display name.
    pub fn parse(s: &str) -> Option<Name> {
        if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
            return None;
        }
        Some(Name(Arc::from(s)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The two users of a direct conversation's room id, `dm:<uidA>:<uidB>`
/// (the two in byte order, distinct): None for any other room, Err for a
/// `dm:` id that is not one (uids with a `:` cannot have one).
pub fn dm_parties(rid: &str) -> Option<Result<(&str, &str), &'static str>> {
    let rest = rid.strip_prefix("dm:")?;
    let bad = "a direct conversation is dm:<uid>:<uid>, the two uids in byte order";
    Some(match rest.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(':') && a < b => Ok((a, b)),
        _ => Err(bad),
    })
}

/// Test shorthands: an identifier or a name known to be valid.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Id, Name};

    /// `s` as an identifier (it must be one).
    pub(crate) fn id(s: &str) -> Id {
        Id::parse_str(s).expect("a valid identifier")
    }

    /// `s` as a display name (it must be one).
    pub(crate) fn name(s: &str) -> Name {
        Name::parse(s).expect("a valid name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn id_rules() {
        assert_eq!(Id::parse_str("room-1").unwrap().as_str(), "room-1");
        assert_eq!(Id::parse_str("a.b:c_d-9").unwrap().as_str(), "a.b:c_d-9");
        assert!(Id::parse_str("").is_none());
        assert!(Id::parse_str("has space").is_none());
        assert!(Id::parse_str("é").is_none());
        assert!(Id::parse_str(&"x".repeat(64)).is_some());
        assert!(Id::parse_str(&"x".repeat(65)).is_none());
        assert_eq!(Id::from_u64(42).unwrap().as_str(), "42");
        assert!(Id::from_u64(0).is_none());
        assert_eq!(Id::from_u64(7), Id::parse_str("7"));
    }

    #[test]
    fn name_rules() {
        assert!(Name::parse("Zoë 🙂").is_some());
        assert!(Name::parse("").is_none());
        assert!(Name::parse("a\nb").is_none());
        assert!(Name::parse("a\u{7f}").is_none());
        assert!(Name::parse(&"é".repeat(32)).is_some()); // 64 bytes
        assert!(Name::parse(&"é".repeat(33)).is_none()); // 66 bytes
    }

    proptest! {
        #[test]
        fn any_accepted_id_is_in_charset(s in "\\PC{0,80}") {
            if let Some(id) = Id::parse_str(&s) {
                prop_assert!(id.len() <= MAX_ID_LEN && !id.is_empty());
                prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
            }
        }
    }
}
