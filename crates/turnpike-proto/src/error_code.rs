//! STUN and TURN error codes (RFC 8489 §14.8, RFC 8656 §19, RFC 6156 §10).

/// An error code in 300–699.
///
/// A newtype rather than an enum because clients send codes this relay never emits, and those
/// must still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const TRY_ALTERNATE: Self = Self(300);
    pub const BAD_REQUEST: Self = Self(400);
    pub const UNAUTHORIZED: Self = Self(401);
    pub const FORBIDDEN: Self = Self(403);
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    pub const STALE_NONCE: Self = Self(438);
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    pub const WRONG_CREDENTIALS: Self = Self(441);
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: Self = Self(442);
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    pub const SERVER_ERROR: Self = Self(500);
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// The reason phrase RFC 8489 and RFC 8656 suggest, or "" for codes they do not define.
    ///
    /// Responses carry no reason phrase by default (a shorter error response is a weaker
    /// amplifier); this is for logs and for operators who opt in.
    #[must_use]
    pub const fn default_reason(self) -> &'static str {
        match self.0 {
            300 => "Try Alternate",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "",
        }
    }

    /// Whether the code can be encoded: class 3 to 6, number 0 to 99.
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 >= 300 && self.0 <= 699
    }
}
