//! Stateless nonces: the server remembers nothing about a client it has only challenged.
//!
//! A nonce is a cookie that carries its own expiry and a MAC, so checking it needs only the
//! server's secret. Unauthenticated requests, which anyone can send in floods, therefore create
//! no state, and a nonce needs no use counter: it is valid until its expiry, for as many
//! requests as the client sends. (Firezone's relay counted uses, and had to raise its limit
//! from 100 to 10,000 because busy clients were churned through needless 438s.)
//!
//! # Format
//!
//! ```text
//! [ "obMatJos2" features ]  body
//!   9 chars     4 chars      32 chars
//! ```
//!
//! - The optional prefix is the RFC 8489 §9.2 nonce cookie: present exactly when the server
//!   announces at least one security feature, and then followed by the 24-bit feature set in
//!   standard base64 (see [`SecurityFeatures`] for the bit order).
//! - The body is 24 bytes in unpadded base64url: the expiry as a big-endian `u64` of unix
//!   seconds, then the first 16 bytes of
//!   `HMAC-SHA256(secret, domain ‖ cookie flag ‖ features ‖ expiry ‖ client IP ‖ client port)`.
//!
//! A nonce is 32 or 45 printable ASCII characters, well under RFC 8489's limit of 128, and
//! contains neither `"` nor `\`. The MAC covers the features, so a man in the middle cannot
//! remove an announced feature (a bid-down attack) without invalidating the nonce.
//!
//! The nonce is bound to the client's transport address, with IPv4-mapped IPv6 addresses taken
//! as the IPv4 address. It is not bound to the realm: the long-term key already is.
//!
//! # What the server answers
//!
//! Every [`NonceError`] is answered with 438 (Stale Nonce) and a fresh nonce. For
//! [`NonceError::Expired`] that is what RFC 8489 §9.2.5 prescribes. For
//! [`NonceError::Invalid`] and [`NonceError::Malformed`] it is the useful answer too: such a
//! nonce most often comes from this relay before a restart or a secret rotation, or from
//! another relay behind the same name, and 438 makes the client retry at once with the new
//! nonce, where 401 would make it give up or ask its user for credentials. An attacker gains
//! nothing from the retry: a valid nonce only lets it try credentials.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::BitOr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// The RFC 8489 §9.2 nonce cookie that starts a nonce announcing security features.
pub const NONCE_COOKIE: &str = "obMatJos2";

/// How long an issued nonce stays valid unless [`StatelessNonces::with_lifetime`] says
/// otherwise: 10 minutes.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// The length of the longest nonce this module issues, in bytes (all ASCII).
pub const MAX_NONCE_LEN: usize = COOKIE_LEN + ENCODED_BODY_LEN;

// RFC 8489 §14.10: a NONCE is fewer than 128 characters.
const _: () = assert!(MAX_NONCE_LEN < 128);

const ENCODED_FEATURES_LEN: usize = 4;
const COOKIE_LEN: usize = NONCE_COOKIE.len() + ENCODED_FEATURES_LEN;
const EXPIRY_LEN: usize = 8;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = EXPIRY_LEN + MAC_LEN;
const ENCODED_BODY_LEN: usize = 32;

/// Separates these MACs from anything else a caller might compute with the same secret.
const MAC_DOMAIN: &[u8] = b"turnpike stateless nonce v1";

/// Why a NONCE was not accepted. The server answers each with 438 (Stale Nonce); see the
/// [module documentation](self) for why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NonceError {
    /// The nonce is genuine but its lifetime is over.
    #[error("nonce expired")]
    Expired,
    /// The nonce has the right shape but its MAC does not verify under any current secret
    /// for this client: forged, altered, issued to another transport address, or issued under
    /// a secret that is no longer kept. A MAC cannot tell these apart.
    #[error("nonce invalid")]
    Invalid,
    /// The nonce is not of this module's format: wrong length, bad base64, wrong cookie.
    #[error("nonce malformed")]
    Malformed,
}

/// The RFC 8489 STUN Security Features a server announces in its nonce cookie (§9.2, §18.1).
///
/// The set is 24 bits. Bit *n* is the value `1 << n`: bit 0, password algorithms, is the least
/// significant bit, and is carried by the last base64 character of the cookie. This follows
/// verified erratum 6290 to RFC 8489, which reverses §18.1's text ("Bit 0 is the leftmost
/// bit"); the erratum's reading is what implementations such as libjuice use. So a server
/// announcing both features sends `obMatJos2AAAD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SecurityFeatures(u32);

impl SecurityFeatures {
    /// No features: the nonce carries no cookie.
    pub const NONE: Self = Self(0);
    /// Bit 0: password algorithms (PASSWORD-ALGORITHMS negotiation, SHA-256 keys).
    pub const PASSWORD_ALGORITHMS: Self = Self(1 << 0);
    /// Bit 1: username anonymity (USERHASH).
    pub const USERNAME_ANONYMITY: Self = Self(1 << 1);

    const ALL_BITS: u32 = 0x00ff_ffff;

    /// The set with these bits, or `None` if a bit above bit 23 is set.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// The 24 bits.
    #[must_use]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every feature in `other` is in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no feature is set.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The features in either set.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn to_be_bytes(self) -> [u8; 3] {
        let [_, high, middle, low] = self.0.to_be_bytes();
        [high, middle, low]
    }

    fn from_be_bytes([high, middle, low]: [u8; 3]) -> Self {
        Self(u32::from_be_bytes([0, high, middle, low]))
    }
}

impl BitOr for SecurityFeatures {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

/// A 32-byte secret that nonce MACs are keyed with. The caller draws it from a CSPRNG; this
/// module never creates randomness. `Debug` does not print it.
#[derive(Clone)]
pub struct NonceSecret([u8; 32]);

impl NonceSecret {
    /// Wraps 32 random bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceSecret(..)")
    }
}

/// An issued nonce: printable ASCII, at most [`MAX_NONCE_LEN`] bytes, held without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce {
    buffer: [u8; MAX_NONCE_LEN],
    len: usize,
}

impl Nonce {
    /// The nonce as text, for the NONCE attribute.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer, so this never falls back.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The nonce's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.get(..self.len).unwrap_or_default()
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Nonce").field(&self.as_str()).finish()
    }
}

/// Issues and verifies stateless nonces.
///
/// One secret issues; it and any previous secrets verify, so rotating the secret does not turn
/// every outstanding nonce stale at once.
#[derive(Clone)]
pub struct StatelessNonces {
    current: Hmac<Sha256>,
    previous: Vec<Hmac<Sha256>>,
    lifetime_secs: u64,
}

impl StatelessNonces {
    /// Issues and verifies with `current`, with [`DEFAULT_NONCE_LIFETIME`].
    #[must_use]
    pub fn new(current: NonceSecret) -> Self {
        Self {
            current: keyed_mac(&current),
            previous: Vec::new(),
            lifetime_secs: DEFAULT_NONCE_LIFETIME.as_secs(),
        }
    }

    /// Also accepts nonces issued under `previous`.
    #[must_use]
    pub fn with_previous_secret(mut self, previous: NonceSecret) -> Self {
        self.previous.push(keyed_mac(&previous));
        self
    }

    /// Issues nonces valid for `lifetime`, counted in whole seconds and at least one.
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime_secs = lifetime.as_secs().max(1);
        self
    }

    /// Issues with `new_current` from now on and keeps the secret it replaces, and only that
    /// one, for verification. Rotating no more often than once per lifetime never turns a
    /// nonce stale early.
    pub fn rotate(&mut self, new_current: NonceSecret) {
        let retired = std::mem::replace(&mut self.current, keyed_mac(&new_current));
        self.previous.clear();
        self.previous.push(retired);
    }

    /// How long an issued nonce stays valid.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_secs)
    }

    /// A nonce for `client`, valid from `now_unix` (wall-clock unix seconds) for the lifetime,
    /// announcing `features` in the nonce cookie (no cookie if `features` is empty).
    #[must_use]
    pub fn issue(&self, client: SocketAddr, now_unix: u64, features: SecurityFeatures) -> Nonce {
        let expiry = now_unix.saturating_add(self.lifetime_secs);
        let has_cookie = !features.is_empty();
        let mac = compute_mac(&self.current, has_cookie, features, expiry, client);

        let mut body = [0; BODY_LEN];
        body[..EXPIRY_LEN].copy_from_slice(&expiry.to_be_bytes());
        body[EXPIRY_LEN..].copy_from_slice(&mac);

        let mut buffer = [0; MAX_NONCE_LEN];
        let mut len = 0;
        if has_cookie {
            buffer[..NONCE_COOKIE.len()].copy_from_slice(NONCE_COOKIE.as_bytes());
            len = NONCE_COOKIE.len();
            // The buffer has room for exactly these encodings, so neither call fails; were one
            // to, the nonce would fail verification and cost the client a retry, nothing more.
            len += STANDARD
                .encode_slice(features.to_be_bytes(), &mut buffer[len..COOKIE_LEN])
                .unwrap_or_default();
        }
        len += URL_SAFE_NO_PAD
            .encode_slice(body, &mut buffer[len..])
            .unwrap_or_default();
        Nonce { buffer, len }
    }

    /// Checks a NONCE from `client` at `now_unix` and returns the features it announced.
    ///
    /// A nonce is valid up to and including `expiry - 1` and stale from `expiry` on, where
    /// `expiry` is the issuing time plus the lifetime. Its MAC is checked before its expiry, so
    /// a forged nonce is [`NonceError::Invalid`] whatever expiry it claims.
    ///
    /// # Errors
    ///
    /// See [`NonceError`]; the server answers each with 438 (Stale Nonce).
    pub fn verify(
        &self,
        nonce: &str,
        client: SocketAddr,
        now_unix: u64,
    ) -> Result<SecurityFeatures, NonceError> {
        // Work on bytes so no input, however odd its UTF-8, can split a character.
        let bytes = nonce.as_bytes();
        let (has_cookie, features, encoded_body) = match bytes.len() {
            ENCODED_BODY_LEN => (false, SecurityFeatures::NONE, bytes),
            MAX_NONCE_LEN => {
                let (cookie, encoded_body) = bytes.split_at(COOKIE_LEN);
                let (magic, encoded_features) = cookie.split_at(NONCE_COOKIE.len());
                if magic != NONCE_COOKIE.as_bytes() {
                    return Err(NonceError::Malformed);
                }
                let mut features = [0; 3];
                decode_exactly(&STANDARD, encoded_features, &mut features)?;
                (
                    true,
                    SecurityFeatures::from_be_bytes(features),
                    encoded_body,
                )
            }
            _ => return Err(NonceError::Malformed),
        };
        let mut body = [0; BODY_LEN];
        decode_exactly(&URL_SAFE_NO_PAD, encoded_body, &mut body)?;
        let (expiry, mac) = body.split_at(EXPIRY_LEN);
        let expiry = u64::from_be_bytes(expiry.try_into().map_err(|_| NonceError::Malformed)?);

        // Every secret is tried, so the time taken does not tell which one matched.
        let mut genuine = Choice::from(0);
        for key in std::iter::once(&self.current).chain(&self.previous) {
            let expected = compute_mac(key, has_cookie, features, expiry, client);
            genuine |= expected.ct_eq(mac);
        }
        if !bool::from(genuine) {
            return Err(NonceError::Invalid);
        }
        if now_unix >= expiry {
            return Err(NonceError::Expired);
        }
        Ok(features)
    }
}

impl fmt::Debug for StatelessNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatelessNonces")
            .field("previous_secrets", &self.previous.len())
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

fn keyed_mac(secret: &NonceSecret) -> Hmac<Sha256> {
    // HMAC pads a key shorter than the hash's 64-byte block with zeros, so keying with the
    // padded block is keying with the secret, through a constructor that cannot fail.
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    block[..secret.0.len()].copy_from_slice(&secret.0);
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block)
}

fn compute_mac(
    key: &Hmac<Sha256>,
    has_cookie: bool,
    features: SecurityFeatures,
    expiry: u64,
    client: SocketAddr,
) -> [u8; MAC_LEN] {
    let mut mac = key.clone();
    mac.update(MAC_DOMAIN);
    mac.update(&[u8::from(has_cookie)]);
    mac.update(&features.to_be_bytes());
    mac.update(&expiry.to_be_bytes());
    // A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d; it is the same client.
    match client.ip().to_canonical() {
        IpAddr::V4(ip) => {
            mac.update(&[4]);
            mac.update(&ip.octets());
        }
        IpAddr::V6(ip) => {
            mac.update(&[6]);
            mac.update(&ip.octets());
        }
    }
    mac.update(&client.port().to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let mut truncated = [0; MAC_LEN];
    truncated.copy_from_slice(&digest[..MAC_LEN]);
    truncated
}

/// Decodes `input` into all of `output`, or fails as malformed.
fn decode_exactly(
    engine: &impl base64::Engine,
    input: &[u8],
    output: &mut [u8],
) -> Result<(), NonceError> {
    match engine.decode_slice(input, output) {
        Ok(written) if written == output.len() => Ok(()),
        _ => Err(NonceError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const BOTH: SecurityFeatures =
        SecurityFeatures::PASSWORD_ALGORITHMS.union(SecurityFeatures::USERNAME_ANONYMITY);

    fn secret(fill: u8) -> NonceSecret {
        NonceSecret::from_bytes([fill; 32])
    }

    fn nonces() -> StatelessNonces {
        StatelessNonces::new(secret(1))
    }

    fn client() -> SocketAddr {
        "198.51.100.7:49152".parse().unwrap()
    }

    #[test]
    fn an_issued_nonce_verifies_for_the_same_client() {
        let nonces = nonces();
        for features in [
            SecurityFeatures::NONE,
            SecurityFeatures::PASSWORD_ALGORITHMS,
            BOTH,
        ] {
            let nonce = nonces.issue(client(), NOW, features);
            assert_eq!(nonces.verify(nonce.as_str(), client(), NOW), Ok(features));
        }
    }

    #[test]
    fn nonce_cookie_announces_features_with_bit_zero_least_significant() {
        let nonces = nonces();
        let cookie_of = |features| nonces.issue(client(), NOW, features).as_str()[..13].to_owned();
        assert_eq!(
            cookie_of(SecurityFeatures::PASSWORD_ALGORITHMS),
            "obMatJos2AAAB"
        );
        assert_eq!(
            cookie_of(SecurityFeatures::USERNAME_ANONYMITY),
            "obMatJos2AAAC"
        );
        assert_eq!(cookie_of(BOTH), "obMatJos2AAAD");
        assert_eq!(
            cookie_of(SecurityFeatures::from_bits(1 << 23).unwrap()),
            "obMatJos2gAAA"
        );
    }

    #[test]
    fn nonce_without_features_has_no_cookie() {
        let nonce = nonces().issue(client(), NOW, SecurityFeatures::NONE);
        assert_eq!(nonce.as_str().len(), 32);
        assert!(!nonce.as_str().starts_with(NONCE_COOKIE));
    }

    #[test]
    fn nonce_is_short_printable_ascii_without_quotes_or_backslashes() {
        for features in [SecurityFeatures::NONE, BOTH] {
            let nonce = nonces().issue(client(), NOW, features);
            assert!(nonce.as_str().len() <= MAX_NONCE_LEN);
            assert!(
                nonce
                    .as_bytes()
                    .iter()
                    .all(|&byte| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\'),
                "{nonce}"
            );
            assert_eq!(nonce.to_string(), nonce.as_str());
            assert_eq!(format!("{nonce:?}"), format!("Nonce({:?})", nonce.as_str()));
        }
    }

    #[test]
    fn every_security_feature_bit_roundtrips() {
        let nonces = nonces();
        for bit in 0..24 {
            let features = SecurityFeatures::from_bits(1 << bit).unwrap();
            let nonce = nonces.issue(client(), NOW, features);
            assert_eq!(
                nonces.verify(nonce.as_str(), client(), NOW),
                Ok(features),
                "bit {bit}"
            );
        }
        let all = SecurityFeatures::from_bits(0x00ff_ffff).unwrap();
        let nonce = nonces.issue(client(), NOW, all);
        assert_eq!(nonces.verify(nonce.as_str(), client(), NOW), Ok(all));
    }

    #[test]
    fn security_features_are_24_bits() {
        assert_eq!(SecurityFeatures::from_bits(1 << 24), None);
        assert!(BOTH.contains(SecurityFeatures::USERNAME_ANONYMITY));
        assert!(!SecurityFeatures::PASSWORD_ALGORITHMS.contains(BOTH));
        assert_eq!(
            SecurityFeatures::PASSWORD_ALGORITHMS | SecurityFeatures::USERNAME_ANONYMITY,
            BOTH
        );
        assert_eq!(BOTH.bits(), 0b11);
        assert!(SecurityFeatures::default().is_empty());
    }

    #[test]
    fn a_cookie_claiming_other_feature_bits_is_invalid() {
        let nonces = nonces();
        let nonce = nonces.issue(client(), NOW, BOTH);
        for cookie in [
            "obMatJos2AAAH",
            "obMatJos2gAAD",
            "obMatJos2AAAB",
            "obMatJos2AAAA",
        ] {
            let altered = format!("{cookie}{}", &nonce.as_str()[13..]);
            assert_eq!(
                nonces.verify(&altered, client(), NOW),
                Err(NonceError::Invalid),
                "{altered}"
            );
        }
    }

    #[test]
    fn nonce_is_valid_until_one_second_before_expiry_and_stale_from_expiry() {
        let nonces = nonces().with_lifetime(Duration::from_secs(60));
        let nonce = nonces.issue(client(), NOW, BOTH);
        let expiry = NOW + 60;
        assert_eq!(
            nonces.verify(nonce.as_str(), client(), expiry - 1),
            Ok(BOTH)
        );
        assert_eq!(
            nonces.verify(nonce.as_str(), client(), expiry),
            Err(NonceError::Expired)
        );
        assert_eq!(
            nonces.verify(nonce.as_str(), client(), expiry + 3600),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn default_lifetime_is_ten_minutes() {
        let nonces = nonces();
        assert_eq!(nonces.lifetime(), Duration::from_secs(600));
        let nonce = nonces.issue(client(), NOW, BOTH);
        assert!(nonces.verify(nonce.as_str(), client(), NOW + 599).is_ok());
        assert_eq!(
            nonces.verify(nonce.as_str(), client(), NOW + 600),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn zero_lifetime_becomes_one_second() {
        let nonces = nonces().with_lifetime(Duration::ZERO);
        assert_eq!(nonces.lifetime(), Duration::from_secs(1));
        let nonce = nonces.issue(client(), NOW, BOTH);
        assert!(nonces.verify(nonce.as_str(), client(), NOW).is_ok());
    }

    #[test]
    fn issuing_at_the_end_of_time_saturates_instead_of_overflowing() {
        let nonces = nonces();
        let nonce = nonces.issue(client(), u64::MAX - 1, BOTH);
        assert!(
            nonces
                .verify(nonce.as_str(), client(), u64::MAX - 1)
                .is_ok()
        );
        assert_eq!(
            nonces.verify(nonce.as_str(), client(), u64::MAX),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn nonce_is_bound_to_the_client_transport_address() {
        let nonces = nonces();
        let nonce = nonces.issue(client(), NOW, BOTH);
        let other_port = SocketAddr::new(client().ip(), client().port() + 1);
        let other_ip: SocketAddr = "198.51.100.8:49152".parse().unwrap();
        let ipv6: SocketAddr = "[2001:db8::7]:49152".parse().unwrap();
        for other in [other_port, other_ip, ipv6] {
            assert_eq!(
                nonces.verify(nonce.as_str(), other, NOW),
                Err(NonceError::Invalid),
                "{other}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_client_address_is_the_same_client() {
        let nonces = nonces();
        let nonce = nonces.issue(client(), NOW, BOTH);
        let IpAddr::V4(ipv4) = client().ip() else {
            unreachable!()
        };
        let mapped = SocketAddr::new(IpAddr::V6(ipv4.to_ipv6_mapped()), client().port());
        assert_eq!(nonces.verify(nonce.as_str(), mapped, NOW), Ok(BOTH));
    }

    #[test]
    fn changing_any_character_makes_the_nonce_invalid_or_malformed() {
        let nonces = nonces();
        for features in [SecurityFeatures::NONE, BOTH] {
            let nonce = nonces.issue(client(), NOW, features);
            for position in 0..nonce.as_str().len() {
                let mut tampered = nonce.as_bytes().to_vec();
                tampered[position] = if tampered[position] == b'A' {
                    b'B'
                } else {
                    b'A'
                };
                let tampered = String::from_utf8(tampered).unwrap();
                let expected = if features.is_empty() || position >= NONCE_COOKIE.len() {
                    NonceError::Invalid
                } else {
                    NonceError::Malformed
                };
                assert_eq!(
                    nonces.verify(&tampered, client(), NOW),
                    Err(expected),
                    "{tampered} (position {position})"
                );
            }
        }
    }

    #[test]
    fn a_forged_later_expiry_is_invalid_not_accepted() {
        let nonces = nonces().with_lifetime(Duration::from_secs(60));
        let nonce = nonces.issue(client(), NOW, SecurityFeatures::NONE);
        let mut body = [0; BODY_LEN];
        decode_exactly(&URL_SAFE_NO_PAD, nonce.as_bytes(), &mut body).unwrap();
        body[..EXPIRY_LEN].copy_from_slice(&u64::MAX.to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(body);
        assert_eq!(
            nonces.verify(&forged, client(), NOW + 120),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn adding_or_removing_the_cookie_makes_the_nonce_invalid() {
        let nonces = nonces();
        let plain = nonces.issue(client(), NOW, SecurityFeatures::NONE);
        let with_zero_cookie = format!("{NONCE_COOKIE}AAAA{plain}");
        assert_eq!(
            nonces.verify(&with_zero_cookie, client(), NOW),
            Err(NonceError::Invalid)
        );

        let announced = nonces.issue(client(), NOW, BOTH);
        let stripped = &announced.as_str()[13..];
        assert_eq!(
            nonces.verify(stripped, client(), NOW),
            Err(NonceError::Invalid),
            "a bid-down attacker cannot drop the announced features"
        );
        let downgraded = format!("{NONCE_COOKIE}AAAB{stripped}");
        assert_eq!(
            nonces.verify(&downgraded, client(), NOW),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let huge = "A".repeat(1 << 20);
        let cases = [
            String::new(),
            "x".to_owned(),
            "A".repeat(31),
            "A".repeat(33),
            "A".repeat(44),
            "A".repeat(46),
            "=".repeat(32),
            format!("{}=", "A".repeat(31)),
            "+".repeat(32),
            "é".repeat(16),
            format!("{}é", "A".repeat(30)),
            format!("obMatJos3AAAD{}", "A".repeat(32)),
            format!("obMatJos2AA=D{}", "A".repeat(32)),
            format!("obMatJos2AAAD{}", "!".repeat(32)),
            format!("obMatJos2\u{e9}AD{}", "A".repeat(31)),
            huge,
        ];
        for case in cases {
            assert_eq!(
                nonces().verify(&case, client(), NOW),
                Err(NonceError::Malformed),
                "{:?}",
                case.get(..50).unwrap_or(&case)
            );
        }
    }

    #[test]
    fn a_nonce_from_another_secret_is_invalid() {
        let nonce = StatelessNonces::new(secret(9)).issue(client(), NOW, BOTH);
        assert_eq!(
            nonces().verify(nonce.as_str(), client(), NOW),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn a_previous_secret_still_verifies_after_rotation() {
        let old = StatelessNonces::new(secret(1));
        let nonce = old.issue(client(), NOW, BOTH);

        let configured = StatelessNonces::new(secret(2)).with_previous_secret(secret(1));
        assert_eq!(configured.verify(nonce.as_str(), client(), NOW), Ok(BOTH));

        let mut rotated = old.clone();
        rotated.rotate(secret(2));
        assert_eq!(rotated.verify(nonce.as_str(), client(), NOW), Ok(BOTH));
        let fresh = rotated.issue(client(), NOW, BOTH);
        assert_eq!(
            old.verify(fresh.as_str(), client(), NOW),
            Err(NonceError::Invalid),
            "new nonces are issued under the new secret"
        );

        rotated.rotate(secret(3));
        assert_eq!(
            rotated.verify(nonce.as_str(), client(), NOW),
            Err(NonceError::Invalid),
            "only the secret just retired is kept"
        );
        assert_eq!(rotated.verify(fresh.as_str(), client(), NOW), Ok(BOTH));
    }

    #[test]
    fn keying_with_the_padded_block_equals_keying_with_the_secret() {
        let secret =
            NonceSecret::from_bytes(core::array::from_fn(|index| u8::try_from(index).unwrap()));
        let mut padded = keyed_mac(&secret);
        let mut direct = Hmac::<Sha256>::new_from_slice(&secret.0).unwrap();
        padded.update(b"message");
        direct.update(b"message");
        assert_eq!(
            padded.finalize().into_bytes(),
            direct.finalize().into_bytes()
        );
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let nonces = nonces().with_previous_secret(secret(2));
        assert_eq!(format!("{:?}", secret(0xab)), "NonceSecret(..)");
        let printed = format!("{nonces:?}");
        assert!(!printed.contains("1, 1, 1"), "{printed}");
        assert!(printed.contains("previous_secrets: 1"), "{printed}");
    }

    fn any_client() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from_bits(ip)), port)),
            (any::<u128>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from_bits(ip)), port)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic_and_never_verify(text in "\\PC{0,64}|[A-Za-z0-9_-]{32}|obMatJos2[A-Za-z0-9+/]{4}[A-Za-z0-9_-]{32}") {
            prop_assert!(nonces().verify(&text, client(), NOW).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(nonces().verify(&text, client(), NOW).is_err());
        }

        #[test]
        fn any_issued_nonce_roundtrips(
            client in any_client(),
            now in 0..u64::MAX - 600,
            bits in 0u32..=0x00ff_ffff,
        ) {
            let nonces = nonces();
            let features = SecurityFeatures::from_bits(bits).unwrap();
            let nonce = nonces.issue(client, now, features);
            prop_assert!(nonce.as_str().len() <= MAX_NONCE_LEN);
            prop_assert_eq!(nonces.verify(nonce.as_str(), client, now), Ok(features));
            prop_assert_eq!(nonces.verify(nonce.as_str(), client, now + 600), Err(NonceError::Expired));
        }
    }
}
