//! Which occurrence of a repeated attribute counts.
//!
//! RFC 8489 §14: when an attribute appears more than once, only the first occurrence is
//! processed. Every handler that reads single-valued attributes reads them through
//! [`first_occurrences`], so a Refresh with LIFETIME 600 then LIFETIME 0 refreshes rather than
//! deletes, whichever attribute a middlebox or a careless client appended last.

use turnpike_proto::{AttributeType, Message, RawAttribute};

/// The attribute types seen so far in one message.
///
/// Only types this server knows are remembered: the others are never read, so the list is at
/// most as long as the set of known types, however many attributes a message holds.
#[derive(Debug, Default)]
struct Seen {
    kinds: Vec<AttributeType>,
}

impl Seen {
    /// Whether `kind` appears for the first time; remembers it.
    fn first(&mut self, kind: AttributeType) -> bool {
        if !kind.is_known() {
            return true;
        }
        if self.kinds.contains(&kind) {
            return false;
        }
        self.kinds.push(kind);
        true
    }
}

/// The attributes of `message` that count, without the second and later occurrences of a type.
pub(crate) fn first_occurrences<'a>(
    message: &Message<'a>,
) -> impl Iterator<Item = RawAttribute<'a>> + use<'a> {
    let mut seen = Seen::default();
    message
        .attributes()
        .filter(move |raw| seen.first(raw.kind()))
}

/// As [`first_occurrences`], but every occurrence of `repeatable` is kept: the one attribute a
/// request may legitimately list several times (XOR-PEER-ADDRESS in CreatePermission, RFC 8656
/// §10.1).
pub(crate) fn first_occurrences_and_every<'a>(
    message: &Message<'a>,
    repeatable: AttributeType,
) -> impl Iterator<Item = RawAttribute<'a>> + use<'a> {
    let mut seen = Seen::default();
    message
        .attributes()
        .filter(move |raw| raw.kind() == repeatable || seen.first(raw.kind()))
}
