//! Why a request was refused: a reason that maps to the wire and to a metric label.

use turnpike_proto::ErrorCode;

/// The reason a request handler refused a request (failed authentication aside: that is
/// counted as an auth failure).
///
/// Several reasons share a wire code (a permission quota and a channel quota are both 486), so
/// operators can tell them apart in metrics ([`Refusal::as_str`]) while clients see exactly
/// the code RFC 8656 prescribes ([`Refusal::error_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// An attribute the request depends on does not decode (400).
    MalformedAttribute,
    /// Allocate without REQUESTED-TRANSPORT (400).
    MissingTransport,
    /// Attributes that exclude each other: RESERVATION-TOKEN with EVEN-PORT or an address
    /// family, both address family attributes, ADDITIONAL-ADDRESS-FAMILY for IPv4, or EVEN-PORT
    /// asking to reserve the next port of a dual allocation (400).
    ConflictingAttributes,
    /// CreatePermission or ChannelBind without XOR-PEER-ADDRESS, or ChannelBind without
    /// CHANNEL-NUMBER (400).
    MissingAttribute,
    /// A channel number outside 0x4000-0x4FFF, or 0x4000-0x7FFF with
    /// `Config::rfc5766_channel_numbers` (400).
    BadChannelNumber,
    /// The channel number is bound to another peer, or the peer to another number, through the
    /// binding and its cool-down (400).
    ChannelInUse,
    /// A request method this server does not serve (400).
    UnknownMethod,
    /// The operator's peer policy does not allow the peer (403).
    PeerForbidden,
    /// An unknown comprehension-required attribute (420).
    UnknownAttribute,
    /// The 5-tuple has no allocation (437).
    NoAllocation,
    /// The 5-tuple already has an allocation, made by another request (437).
    AllocationExists,
    /// The relay offers no relayed address of the requested family (440).
    AddressFamilyNotSupported,
    /// The allocation was made by another user (441).
    WrongCredentials,
    /// A transport other than UDP (442).
    UnsupportedTransport,
    /// The allocation has no relayed address of the peer's family, or of the family a Refresh
    /// names (443).
    PeerAddressFamilyMismatch,
    /// The relay's allocation quota, or the total shared by its threads, is reached (486).
    AllocationQuota,
    /// The user's allocation quota is reached (486).
    UserAllocationQuota,
    /// The allocation's permission quota is reached (486).
    PermissionQuota,
    /// The allocation's channel quota is reached (486).
    ChannelQuota,
    /// A RESERVATION-TOKEN that reserves nothing: never issued here, used already, or expired
    /// (508, RFC 8656 §7.2).
    BadReservationToken,
    /// The relay is draining and takes no new allocations (508).
    Draining,
    /// Every relayed port is taken, or, for EVEN-PORT with its reserve bit, every even port
    /// whose successor is free (508).
    NoRelayPort,
    /// Draining or full, and the operator named other relays: the response carries
    /// ALTERNATE-SERVER (300, RFC 8489 §10).
    TryAlternate,
}

impl Refusal {
    /// The error code the response carries.
    #[must_use]
    pub const fn error_code(self) -> ErrorCode {
        match self {
            Self::MalformedAttribute
            | Self::MissingTransport
            | Self::ConflictingAttributes
            | Self::MissingAttribute
            | Self::BadChannelNumber
            | Self::ChannelInUse
            | Self::UnknownMethod => ErrorCode::BAD_REQUEST,
            Self::PeerForbidden => ErrorCode::FORBIDDEN,
            Self::UnknownAttribute => ErrorCode::UNKNOWN_ATTRIBUTE,
            Self::NoAllocation | Self::AllocationExists => ErrorCode::ALLOCATION_MISMATCH,
            Self::AddressFamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
            Self::WrongCredentials => ErrorCode::WRONG_CREDENTIALS,
            Self::UnsupportedTransport => ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
            Self::PeerAddressFamilyMismatch => ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
            Self::AllocationQuota
            | Self::UserAllocationQuota
            | Self::PermissionQuota
            | Self::ChannelQuota => ErrorCode::ALLOCATION_QUOTA_REACHED,
            Self::BadReservationToken | Self::Draining | Self::NoRelayPort => {
                ErrorCode::INSUFFICIENT_CAPACITY
            }
            Self::TryAlternate => ErrorCode::TRY_ALTERNATE,
        }
    }

    /// The reason phrase RFC 8489 and RFC 8656 suggest for the code, which every error response
    /// carries (clients log it; some print nothing useful without it).
    #[must_use]
    pub const fn reason_phrase(self) -> &'static str {
        self.error_code().default_reason()
    }

    /// A label for metrics: fixed, lower-case, one per variant.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedAttribute => "malformed_attribute",
            Self::MissingTransport => "missing_transport",
            Self::ConflictingAttributes => "conflicting_attributes",
            Self::MissingAttribute => "missing_attribute",
            Self::BadChannelNumber => "bad_channel_number",
            Self::ChannelInUse => "channel_in_use",
            Self::UnknownMethod => "unknown_method",
            Self::PeerForbidden => "peer_forbidden",
            Self::UnknownAttribute => "unknown_attribute",
            Self::NoAllocation => "no_allocation",
            Self::AllocationExists => "allocation_exists",
            Self::AddressFamilyNotSupported => "address_family_not_supported",
            Self::WrongCredentials => "wrong_credentials",
            Self::UnsupportedTransport => "unsupported_transport",
            Self::PeerAddressFamilyMismatch => "peer_address_family_mismatch",
            Self::AllocationQuota => "allocation_quota",
            Self::UserAllocationQuota => "user_allocation_quota",
            Self::PermissionQuota => "permission_quota",
            Self::ChannelQuota => "channel_quota",
            Self::BadReservationToken => "bad_reservation_token",
            Self::Draining => "draining",
            Self::NoRelayPort => "no_relay_port",
            Self::TryAlternate => "try_alternate",
        }
    }
}

impl From<Refusal> for ErrorCode {
    fn from(refusal: Refusal) -> Self {
        refusal.error_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Refusal; 22] = [
        Refusal::MalformedAttribute,
        Refusal::MissingTransport,
        Refusal::ConflictingAttributes,
        Refusal::MissingAttribute,
        Refusal::BadChannelNumber,
        Refusal::ChannelInUse,
        Refusal::UnknownMethod,
        Refusal::PeerForbidden,
        Refusal::UnknownAttribute,
        Refusal::NoAllocation,
        Refusal::AllocationExists,
        Refusal::AddressFamilyNotSupported,
        Refusal::WrongCredentials,
        Refusal::UnsupportedTransport,
        Refusal::PeerAddressFamilyMismatch,
        Refusal::AllocationQuota,
        Refusal::UserAllocationQuota,
        Refusal::PermissionQuota,
        Refusal::ChannelQuota,
        Refusal::BadReservationToken,
        Refusal::Draining,
        Refusal::NoRelayPort,
    ];

    #[test]
    fn every_refusal_has_a_valid_code_a_phrase_and_its_own_label() {
        let mut labels: Vec<&str> = ALL.iter().map(|refusal| refusal.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ALL.len());
        for refusal in ALL {
            assert!(refusal.error_code().is_valid(), "{refusal:?}");
            assert!(!refusal.reason_phrase().is_empty(), "{refusal:?}");
            assert_eq!(ErrorCode::from(refusal), refusal.error_code());
            assert!(
                refusal
                    .as_str()
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte == b'_')
            );
        }
    }
}
