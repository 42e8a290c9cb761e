//! Long-term credentials (RFC 8489 §9.2): where passwords come from and the keys made from them.
//!
//! A [`CredentialStore`] holds one realm and any mix of three password sources:
//!
//! - **Static users**: a username → password map.
//! - **TURN REST API** ephemeral credentials (the scheme of coturn's `static-auth-secret`,
//!   used by most WebRTC deployments): the username is `<expiry>` or `<expiry>:<user>`, with
//!   `<expiry>` in unix seconds, and the password is
//!   `base64(HMAC-SHA1(secret, username))`, standard alphabet, padded.
//! - **Firezone** ephemeral credentials: the username is `<expiry>:<salt>` and the password is
//!   `base64(SHA-256("<expiry>:<secret>:<salt>"))`, standard alphabet, unpadded, with `<expiry>`
//!   written as a decimal number without leading zeros.
//!
//! The two ephemeral username shapes overlap, and several secrets of each scheme may be live at
//! once while they are rotated, so one username can have several candidate passwords. The server
//! cannot tell which one the client used except by trying each derived key against
//! MESSAGE-INTEGRITY(-SHA256): [`CredentialStore::candidate_keys`] yields them lazily, one hash
//! per candidate and no allocation, and the server stops at the first key that verifies.
//!
//! Passwords are never compared here. The client proves it knows a key through an HMAC over the
//! message, and that comparison, in the codec, must be constant-time; [`LongTermKey`] implements
//! [`subtle::ConstantTimeEq`] (and a constant-time `PartialEq`) for it. Secrets, passwords and
//! keys print as `Type(..)` under `Debug`, so they cannot end up in logs.
//!
//! Usernames, realms and passwords must already be prepared with the OpaqueString profile
//! (RFC 8265) where RFC 8489 asks for it; this module hashes the bytes it is given. Ephemeral
//! usernames and passwords are ASCII, for which the profile changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac as _};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The longest possible derived password: a Firezone password, 43 characters of unpadded
/// base64 for a 32-byte digest (a REST password is 28).
const MAX_DERIVED_PASSWORD_LEN: usize = 44;

/// The most digits a `u64` has; a longer expiry cannot be valid and is not parsed.
const MAX_EXPIRY_DIGITS: usize = 20;

/// Why no candidate password exists for a username.
///
/// The server answers all three with 401 (Unauthenticated), as it would a wrong password, so a
/// client cannot probe which usernames exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CredentialError {
    /// The ephemeral username's expiry time has passed (`expiry <= now`).
    #[error("credentials expired")]
    Expired,
    /// The ephemeral username's expiry is further away than the store's maximum credential
    /// lifetime ([`CredentialStore::with_max_lifetime`]): a username valid until the year 2100
    /// is as good as a static password, and whoever minted it did not mean that.
    #[error("credential lifetime too long")]
    LifetimeTooLong,
    /// Only ephemeral credentials could apply, and the username does not have their shape:
    /// no decimal expiry before the first `:`, or no salt where only Firezone secrets exist.
    #[error("malformed username")]
    MalformedUsername,
    /// No static user has this name and no ephemeral scheme is configured; or, for
    /// [`CredentialStore::username_for_userhash`], no static user has this USERHASH.
    #[error("unknown user")]
    UnknownUser,
}

/// The algorithm a long-term key is derived with (RFC 8489 §18.5, PASSWORD-ALGORITHM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5, the RFC 5389 key: 16 bytes. Also the key when no PASSWORD-ALGORITHM is present.
    Md5,
    /// SHA-256: 32 bytes.
    Sha256,
}

impl PasswordAlgorithm {
    /// The algorithm's number in the STUN Password Algorithms registry.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Self::Md5 => 0x0001,
            Self::Sha256 => 0x0002,
        }
    }

    /// The algorithm with registry number `code`, if it is one this module implements.
    #[must_use]
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(Self::Md5),
            0x0002 => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// Which password source a candidate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialScheme {
    /// A Firezone ephemeral credential.
    Firezone,
    /// A TURN REST API ephemeral credential.
    RestApi,
    /// A configured static user.
    Static,
}

/// A static user's password. `Debug` does not print it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password, already prepared with OpaqueString.
    #[must_use]
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl PartialEq for Password {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl Eq for Password {}

/// A secret shared with the service that issues ephemeral credentials. `Debug` does not print
/// it.
#[derive(Clone)]
pub struct SharedSecret(Vec<u8>);

impl SharedSecret {
    /// Wraps a secret. A REST API secret is usually the bytes of a text string.
    #[must_use]
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// A long-term key (RFC 8489 §9.2.2): the HMAC key of MESSAGE-INTEGRITY and
/// MESSAGE-INTEGRITY-SHA256. `Debug` does not print it; equality is constant-time.
#[derive(Clone)]
pub struct LongTermKey(KeyBytes);

#[derive(Clone)]
enum KeyBytes {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl LongTermKey {
    /// `MD5(username ":" realm ":" password)` or `SHA-256(username ":" realm ":" password)`.
    #[must_use]
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: impl AsRef<[u8]>,
    ) -> Self {
        let parts = [
            username.as_bytes(),
            b":",
            realm.as_bytes(),
            b":",
            password.as_ref(),
        ];
        match algorithm {
            PasswordAlgorithm::Md5 => {
                let mut hasher = Md5::new();
                parts.iter().for_each(|part| hasher.update(part));
                Self(KeyBytes::Md5(hasher.finalize().into()))
            }
            PasswordAlgorithm::Sha256 => {
                let mut hasher = Sha256::new();
                parts.iter().for_each(|part| hasher.update(part));
                Self(KeyBytes::Sha256(hasher.finalize().into()))
            }
        }
    }

    /// The algorithm the key was derived with.
    #[must_use]
    pub fn algorithm(&self) -> PasswordAlgorithm {
        match self.0 {
            KeyBytes::Md5(_) => PasswordAlgorithm::Md5,
            KeyBytes::Sha256(_) => PasswordAlgorithm::Sha256,
        }
    }

    /// The key: 16 bytes for MD5, 32 for SHA-256.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Md5(bytes) => bytes,
            KeyBytes::Sha256(bytes) => bytes,
        }
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKey(..)")
    }
}

impl ConstantTimeEq for LongTermKey {
    /// Constant-time in the key bytes; keys of different algorithms differ in length, which is
    /// no secret.
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.as_bytes().ct_eq(other.as_bytes())
    }
}

impl PartialEq for LongTermKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for LongTermKey {}

/// A USERHASH value (RFC 8489 §14.4): `SHA-256(username ":" realm)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Userhash([u8; 32]);

impl Userhash {
    /// The USERHASH of `username` in `realm`.
    #[must_use]
    pub fn compute(username: &str, realm: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(username.as_bytes());
        hasher.update(b":");
        hasher.update(realm.as_bytes());
        Self(hasher.finalize().into())
    }

    /// A USERHASH as received in the attribute.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The credentials of one realm: static users and ephemeral-credential secrets.
///
/// A relay serving several realms keeps one store per realm.
#[derive(Clone)]
pub struct CredentialStore {
    realm: String,
    static_users: BTreeMap<String, Password>,
    // A BTreeMap rather than a HashMap: no per-process random state, and no worst case an
    // attacker choosing the looked-up hash can provoke.
    static_userhashes: BTreeMap<Userhash, String>,
    rest_secrets: Vec<SharedSecret>,
    firezone_secrets: Vec<SharedSecret>,
    /// The furthest an ephemeral username's expiry may lie ahead, in seconds; `None` for no cap.
    max_lifetime: Option<u64>,
}

/// Whether [`CredentialStore::candidate_passwords`] holds an ephemeral username to its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Enforce,
    /// Only for recognising the credentials an allocation was created with after they expired
    /// (see `Server`'s handling of a Refresh to lifetime 0).
    Ignore,
}

impl CredentialStore {
    /// An empty store for `realm` (already prepared with OpaqueString).
    #[must_use]
    pub fn new(realm: impl Into<String>) -> Self {
        Self {
            realm: realm.into(),
            static_users: BTreeMap::new(),
            static_userhashes: BTreeMap::new(),
            rest_secrets: Vec::new(),
            firezone_secrets: Vec::new(),
            max_lifetime: None,
        }
    }

    /// Refuses ephemeral usernames whose expiry lies more than `max` ahead of the time they are
    /// checked at ([`CredentialError::LifetimeTooLong`]). Static users are not affected. A store
    /// made with [`CredentialStore::new`] has no cap; the server applies
    /// `Lifetimes::credential_max` to its copy.
    #[must_use]
    pub fn with_max_lifetime(mut self, max: core::time::Duration) -> Self {
        self.max_lifetime = Some(max.as_secs());
        self
    }

    /// Whether every user could authenticate with USERHASH instead of USERNAME: only when all
    /// users are static. Advertising username anonymity (RFC 8489 §9.2) while ephemeral
    /// credentials are accepted would invite clients to send hashes nobody can resolve.
    #[must_use]
    pub fn supports_userhash(&self) -> bool {
        !self.static_users.is_empty()
            && self.rest_secrets.is_empty()
            && self.firezone_secrets.is_empty()
    }

    /// Adds a static user, replacing any earlier password for the same name.
    #[must_use]
    pub fn with_static_user(mut self, username: impl Into<String>, password: Password) -> Self {
        let username = username.into();
        self.static_userhashes
            .insert(Userhash::compute(&username, &self.realm), username.clone());
        self.static_users.insert(username, password);
        self
    }

    /// Adds a TURN REST API secret. Secrets are tried in the order they were added: add the
    /// current secret first and the retiring ones after it.
    #[must_use]
    pub fn with_rest_secret(mut self, secret: SharedSecret) -> Self {
        self.rest_secrets.push(secret);
        self
    }

    /// Adds a Firezone secret, tried after all REST API secrets, in the order added.
    #[must_use]
    pub fn with_firezone_secret(mut self, secret: SharedSecret) -> Self {
        self.firezone_secrets.push(secret);
        self
    }

    /// The realm, for the REALM attribute.
    #[must_use]
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The long-term keys `username` may be using, derived with `algorithm`, to be tried in
    /// turn against MESSAGE-INTEGRITY(-SHA256).
    ///
    /// `now_unix` is the wall-clock time in unix seconds, for the expiry of ephemeral
    /// credentials. Each key is derived when the iterator reaches it.
    ///
    /// # Errors
    ///
    /// As [`CredentialStore::candidate_passwords`].
    pub fn candidate_keys<'a>(
        &'a self,
        username: &'a str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
    ) -> Result<CandidateKeys<'a>, CredentialError> {
        Ok(CandidateKeys {
            passwords: self.candidate_passwords(username, now_unix)?,
            realm: &self.realm,
            algorithm,
        })
    }

    /// The passwords `username` may be using: the static user's, then one per REST API secret,
    /// then one per Firezone secret, each computed when the iterator reaches it.
    ///
    /// A static user whose name also has an ephemeral shape gets its static password even when
    /// the expiry in its name has passed: the name is just a name.
    ///
    /// # Errors
    ///
    /// - [`CredentialError::UnknownUser`] if there is no static user of that name and no
    ///   ephemeral scheme is configured.
    /// - [`CredentialError::MalformedUsername`] if there is no static user of that name and the
    ///   username does not have the shape of any configured ephemeral scheme.
    /// - [`CredentialError::Expired`] if there is no static user of that name and the
    ///   ephemeral username's expiry is at or before `now_unix`.
    /// - [`CredentialError::LifetimeTooLong`] if there is no static user of that name and the
    ///   ephemeral username's expiry lies further ahead than the maximum lifetime.
    pub fn candidate_passwords<'a>(
        &'a self,
        username: &'a str,
        now_unix: u64,
    ) -> Result<CandidatePasswords<'a>, CredentialError> {
        self.candidate_passwords_with(username, now_unix, Expiry::Enforce)
    }

    /// As [`CredentialStore::candidate_keys`], with the ephemeral expiry enforced or not.
    pub(crate) fn candidate_keys_with<'a>(
        &'a self,
        username: &'a str,
        algorithm: PasswordAlgorithm,
        now_unix: u64,
        expiry: Expiry,
    ) -> Result<CandidateKeys<'a>, CredentialError> {
        Ok(CandidateKeys {
            passwords: self.candidate_passwords_with(username, now_unix, expiry)?,
            realm: &self.realm,
            algorithm,
        })
    }

    fn candidate_passwords_with<'a>(
        &'a self,
        username: &'a str,
        now_unix: u64,
        expiry: Expiry,
    ) -> Result<CandidatePasswords<'a>, CredentialError> {
        let static_password = self.static_users.get(username);
        let mut candidates = CandidatePasswords {
            username,
            static_password,
            rest_secrets: Default::default(),
            firezone: None,
            firezone_secrets: Default::default(),
        };
        if self.rest_secrets.is_empty() && self.firezone_secrets.is_empty() {
            return match static_password {
                Some(_) => Ok(candidates),
                None => Err(CredentialError::UnknownUser),
            };
        }

        let ephemeral = EphemeralUsername::parse(username).and_then(|ephemeral| {
            if expiry == Expiry::Ignore {
                Ok(ephemeral)
            } else if ephemeral.expiry <= now_unix {
                Err(CredentialError::Expired)
            } else if self
                .max_lifetime
                .is_some_and(|max| ephemeral.expiry - now_unix > max)
            {
                Err(CredentialError::LifetimeTooLong)
            } else {
                Ok(ephemeral)
            }
        });
        let ephemeral = match (ephemeral, static_password) {
            (Ok(ephemeral), _) => ephemeral,
            (Err(_), Some(_)) => return Ok(candidates),
            (Err(error), None) => return Err(error),
        };

        candidates.rest_secrets = self.rest_secrets.iter();
        // Firezone salts never contain ':' (Firezone splits the username into exactly two
        // parts), so a username with more parts can only be a REST API one.
        if let Some(salt) = ephemeral.after_expiry.filter(|salt| !salt.contains(':')) {
            candidates.firezone = Some(FirezoneInput {
                expiry_digits: ephemeral.canonical_expiry_digits,
                salt,
            });
            candidates.firezone_secrets = self.firezone_secrets.iter();
        }
        if candidates.rest_secrets.len() + candidates.firezone_secrets.len() == 0
            && static_password.is_none()
        {
            return Err(CredentialError::MalformedUsername);
        }
        Ok(candidates)
    }

    /// The static username whose USERHASH in this realm is `userhash`.
    ///
    /// # Errors
    ///
    /// [`CredentialError::UnknownUser`] if no static user matches. Clients with ephemeral
    /// credentials cannot use USERHASH: their usernames are not known in advance, so there is
    /// nothing to hash and compare against.
    pub fn username_for_userhash(&self, userhash: &Userhash) -> Result<&str, CredentialError> {
        self.static_userhashes
            .get(userhash)
            .map(String::as_str)
            .ok_or(CredentialError::UnknownUser)
    }
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("realm", &self.realm)
            .field("static_users", &self.static_users.len())
            .field("rest_secrets", &self.rest_secrets.len())
            .field("firezone_secrets", &self.firezone_secrets.len())
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// The candidate passwords of one username; see [`CredentialStore::candidate_passwords`].
#[derive(Clone)]
pub struct CandidatePasswords<'a> {
    username: &'a str,
    static_password: Option<&'a Password>,
    rest_secrets: std::slice::Iter<'a, SharedSecret>,
    firezone: Option<FirezoneInput<'a>>,
    firezone_secrets: std::slice::Iter<'a, SharedSecret>,
}

impl<'a> Iterator for CandidatePasswords<'a> {
    type Item = CandidatePassword<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(password) = self.static_password.take() {
            return Some(CandidatePassword {
                scheme: CredentialScheme::Static,
                bytes: PasswordBytes::Stored(password.as_bytes()),
            });
        }
        for secret in self.rest_secrets.by_ref() {
            if let Some(password) = rest_api_password(secret, self.username) {
                return Some(password);
            }
        }
        let firezone = self.firezone?;
        for secret in self.firezone_secrets.by_ref() {
            if let Some(password) = firezone_password(secret, firezone) {
                return Some(password);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let upper = usize::from(self.static_password.is_some())
            + self.rest_secrets.len()
            + self.firezone.map_or(0, |_| self.firezone_secrets.len());
        (0, Some(upper))
    }
}

impl fmt::Debug for CandidatePasswords<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandidatePasswords")
            .field("remaining", &self.size_hint().1)
            .finish_non_exhaustive()
    }
}

/// One candidate password. `Debug` does not print it.
#[derive(Clone)]
pub struct CandidatePassword<'a> {
    scheme: CredentialScheme,
    bytes: PasswordBytes<'a>,
}

#[derive(Clone)]
enum PasswordBytes<'a> {
    Stored(&'a [u8]),
    Derived {
        buffer: [u8; MAX_DERIVED_PASSWORD_LEN],
        len: usize,
    },
}

impl CandidatePassword<'_> {
    /// Where the password comes from.
    #[must_use]
    pub fn scheme(&self) -> CredentialScheme {
        self.scheme
    }

    /// The password's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            PasswordBytes::Stored(bytes) => bytes,
            PasswordBytes::Derived { buffer, len } => buffer.get(..*len).unwrap_or_default(),
        }
    }
}

impl fmt::Debug for CandidatePassword<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandidatePassword")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// The candidate long-term keys of one username; see [`CredentialStore::candidate_keys`].
#[derive(Clone)]
pub struct CandidateKeys<'a> {
    passwords: CandidatePasswords<'a>,
    realm: &'a str,
    algorithm: PasswordAlgorithm,
}

impl Iterator for CandidateKeys<'_> {
    type Item = LongTermKey;

    fn next(&mut self) -> Option<Self::Item> {
        let password = self.passwords.next()?;
        Some(LongTermKey::derive(
            self.algorithm,
            self.passwords.username,
            self.realm,
            password.as_bytes(),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.passwords.size_hint()
    }
}

impl fmt::Debug for CandidateKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandidateKeys")
            .field("algorithm", &self.algorithm)
            .field("remaining", &self.size_hint().1)
            .finish_non_exhaustive()
    }
}

/// A username of the shape `<expiry>` or `<expiry>:<rest>`.
#[derive(Clone, Copy, Debug)]
struct EphemeralUsername<'a> {
    expiry: u64,
    /// The expiry without leading zeros, as Firezone hashes it.
    canonical_expiry_digits: &'a str,
    after_expiry: Option<&'a str>,
}

impl<'a> EphemeralUsername<'a> {
    fn parse(username: &'a str) -> Result<Self, CredentialError> {
        let (expiry_text, after_expiry) = match username.split_once(':') {
            Some((expiry, rest)) => (expiry, Some(rest)),
            None => (username, None),
        };
        // `u64::from_str` would also take a leading '+'; only plain digits are an expiry.
        if expiry_text.is_empty()
            || expiry_text.len() > MAX_EXPIRY_DIGITS
            || !expiry_text.bytes().all(|byte| byte.is_ascii_digit())
        {
            return Err(CredentialError::MalformedUsername);
        }
        let expiry = expiry_text
            .parse()
            .map_err(|_| CredentialError::MalformedUsername)?;
        let canonical_expiry_digits = match expiry_text.trim_start_matches('0') {
            "" => "0",
            digits => digits,
        };
        Ok(Self {
            expiry,
            canonical_expiry_digits,
            after_expiry,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct FirezoneInput<'a> {
    expiry_digits: &'a str,
    salt: &'a str,
}

/// `base64(HMAC-SHA1(secret, username))`, padded. `None` only if a library call fails, which
/// none of them can: HMAC takes keys of any length and the buffer fits the encoding.
fn rest_api_password<'a>(secret: &SharedSecret, username: &str) -> Option<CandidatePassword<'a>> {
    let mut mac = Hmac::<Sha1>::new_from_slice(&secret.0).ok()?;
    mac.update(username.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut buffer = [0; MAX_DERIVED_PASSWORD_LEN];
    let len = STANDARD.encode_slice(digest, &mut buffer).ok()?;
    Some(CandidatePassword {
        scheme: CredentialScheme::RestApi,
        bytes: PasswordBytes::Derived { buffer, len },
    })
}

/// `base64(SHA-256("<expiry>:<secret>:<salt>"))`, unpadded. `None` only if the buffer were too
/// small, which it is not.
fn firezone_password<'a>(
    secret: &SharedSecret,
    input: FirezoneInput<'_>,
) -> Option<CandidatePassword<'a>> {
    let mut hasher = Sha256::new();
    hasher.update(input.expiry_digits.as_bytes());
    hasher.update(b":");
    hasher.update(&secret.0);
    hasher.update(b":");
    hasher.update(input.salt.as_bytes());
    let digest = hasher.finalize();
    let mut buffer = [0; MAX_DERIVED_PASSWORD_LEN];
    let len = STANDARD_NO_PAD.encode_slice(digest, &mut buffer).ok()?;
    Some(CandidatePassword {
        scheme: CredentialScheme::Firezone,
        bytes: PasswordBytes::Derived { buffer, len },
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The time the tests run at: before every expiry used below.
    const NOW: u64 = 1_600_000_000;

    // Expected values computed outside this crate with OpenSSL:
    //   printf %s 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64
    const REST_NORTH_ALICE: &str = "Cd/49soE35ICqcJF/bCTn8Z4OyE=";
    //   printf %s 1700000000:alice | openssl dgst -sha1 -hmac south -binary | base64
    const REST_SOUTH_ALICE: &str = "FJeNoC0yJtNekwCa5JT/sW/1Ls4=";
    //   printf %s 1700000000 | openssl dgst -sha1 -hmac north -binary | base64
    const REST_NORTH_NO_USER: &str = "CWyHi3zCeWqXBir9thl4m+iZPRY=";
    //   printf %s '1700000000:secret:salt' | openssl dgst -sha256 -binary | base64 | tr -d =
    const FIREZONE_SECRET_SALT: &str = "78tdIg9r8stsdB2/aYOo7rUXDnI3ZaCNM74WJ+wpEnc";

    fn passwords(
        store: &CredentialStore,
        username: &str,
        now: u64,
    ) -> Vec<(CredentialScheme, String)> {
        store
            .candidate_passwords(username, now)
            .unwrap()
            .map(|password| {
                (
                    password.scheme(),
                    String::from_utf8(password.as_bytes().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn rest_store() -> CredentialStore {
        CredentialStore::new("example.org").with_rest_secret(SharedSecret::new("north"))
    }

    fn firezone_store() -> CredentialStore {
        CredentialStore::new("firezone").with_firezone_secret(SharedSecret::new("secret"))
    }

    #[test]
    fn rest_api_password_matches_openssl() {
        assert_eq!(
            passwords(&rest_store(), "1700000000:alice", NOW),
            [(CredentialScheme::RestApi, REST_NORTH_ALICE.to_owned())]
        );
    }

    #[test]
    fn rest_api_username_may_be_the_expiry_alone() {
        assert_eq!(
            passwords(&rest_store(), "1700000000", NOW),
            [(CredentialScheme::RestApi, REST_NORTH_NO_USER.to_owned())]
        );
    }

    #[test]
    fn rest_api_user_part_may_contain_colons() {
        let candidates = passwords(&rest_store(), "1700000000:alice:laptop", NOW);
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].0, CredentialScheme::RestApi);
    }

    #[test]
    fn firezone_password_matches_openssl() {
        assert_eq!(
            passwords(&firezone_store(), "1700000000:salt", NOW),
            [(CredentialScheme::Firezone, FIREZONE_SECRET_SALT.to_owned())]
        );
    }

    #[test]
    fn firezone_password_matches_firezones_own_vector_with_a_binary_secret() {
        // Firezone's relay test vector, confirmed with
        //   { printf '1892160000:'; printf 4c98…61ab | xxd -r -p; printf ':n23JJ2wKKtt30oXi'; }
        //     | openssl dgst -sha256 -binary | base64 | tr -d =
        let secret = [
            0x4c, 0x98, 0xbf, 0x59, 0xc9, 0x9b, 0x3e, 0x46, 0x7e, 0xcd, 0x7c, 0xf9, 0xd6, 0xb3,
            0xe5, 0x27, 0x96, 0x45, 0xfc, 0xa5, 0x9b, 0xe6, 0x7b, 0xc5, 0xbb, 0x4a, 0xf3, 0xcf,
            0x65, 0x37, 0x61, 0xab,
        ];
        let store =
            CredentialStore::new("firezone").with_firezone_secret(SharedSecret::new(secret));
        assert_eq!(
            passwords(&store, "1892160000:n23JJ2wKKtt30oXi", NOW),
            [(
                CredentialScheme::Firezone,
                "XnR4dOjSrxVx+3PR5/XIFKA80NckB04N7ndZMM6aoQg".to_owned()
            )]
        );
    }

    #[test]
    fn firezone_hashes_the_expiry_without_leading_zeros() {
        assert_eq!(
            passwords(&firezone_store(), "01700000000:salt", NOW),
            [(CredentialScheme::Firezone, FIREZONE_SECRET_SALT.to_owned())]
        );
    }

    #[test]
    fn firezone_needs_a_salt_without_colons() {
        for username in ["1700000000", "1700000000:salt:more"] {
            assert_eq!(
                firezone_store().candidate_passwords(username, NOW).err(),
                Some(CredentialError::MalformedUsername),
                "{username}"
            );
        }
    }

    #[test]
    fn both_ephemeral_schemes_yield_a_candidate_for_an_overlapping_username() {
        let store = rest_store().with_firezone_secret(SharedSecret::new("secret"));
        let rest_password = passwords(&store, "1700000000:salt", NOW);
        assert_eq!(rest_password.len(), 2);
        assert_eq!(rest_password[0].0, CredentialScheme::RestApi);
        assert_eq!(
            rest_password[1],
            (CredentialScheme::Firezone, FIREZONE_SECRET_SALT.to_owned())
        );
        assert_eq!(
            passwords(&store, "1700000000", NOW),
            [(CredentialScheme::RestApi, REST_NORTH_NO_USER.to_owned())],
            "no salt, so only the REST API scheme applies"
        );
    }

    #[test]
    fn rotation_accepts_a_client_that_used_the_older_secret() {
        let store = CredentialStore::new("example.org")
            .with_rest_secret(SharedSecret::new("south"))
            .with_rest_secret(SharedSecret::new("north"));
        let username = "1700000000:alice";
        assert_eq!(
            passwords(&store, username, NOW),
            [
                (CredentialScheme::RestApi, REST_SOUTH_ALICE.to_owned()),
                (CredentialScheme::RestApi, REST_NORTH_ALICE.to_owned()),
            ]
        );

        // The key the client derived from the password it was given with the older secret.
        let client_key = LongTermKey::derive(
            PasswordAlgorithm::Sha256,
            username,
            "example.org",
            REST_NORTH_ALICE,
        );
        let matching = store
            .candidate_keys(username, PasswordAlgorithm::Sha256, NOW)
            .unwrap()
            .position(|key| key == client_key);
        assert_eq!(matching, Some(1));
    }

    #[test]
    fn expiry_at_or_before_now_is_expired() {
        let store = rest_store().with_firezone_secret(SharedSecret::new("secret"));
        for (username, now) in [
            ("1700000000:alice", 1_700_000_000),
            ("1700000000:alice", 1_700_000_001),
            ("1700000000", u64::MAX),
            ("0:salt", 0),
        ] {
            assert_eq!(
                store.candidate_passwords(username, now).err(),
                Some(CredentialError::Expired),
                "{username} at {now}"
            );
        }
        assert!(
            store
                .candidate_passwords("1700000000:alice", 1_699_999_999)
                .is_ok()
        );
    }

    #[test]
    fn usernames_without_a_decimal_expiry_are_malformed_when_only_ephemeral_schemes_exist() {
        for username in [
            "",
            "alice",
            ":alice",
            "17e8:alice",
            "+1700000000:alice",
            "-1:alice",
            " 1700000000:alice",
            "18446744073709551616:alice",
            "000000000000000000001700000000:alice",
            "1700000000\u{ff11}:alice",
        ] {
            assert_eq!(
                rest_store().candidate_passwords(username, NOW).err(),
                Some(CredentialError::MalformedUsername),
                "{username:?}"
            );
        }
    }

    #[test]
    fn an_expiry_beyond_the_maximum_lifetime_is_refused_and_one_at_it_accepted() {
        let store = rest_store().with_max_lifetime(core::time::Duration::from_secs(48 * 3600));
        let at = format!("{}:alice", NOW + 48 * 3600);
        let beyond = format!("{}:alice", NOW + 48 * 3600 + 1);
        assert!(store.candidate_passwords(&at, NOW).is_ok());
        assert_eq!(
            store.candidate_passwords(&beyond, NOW).err(),
            Some(CredentialError::LifetimeTooLong)
        );
        assert_eq!(
            store
                .candidate_passwords("18446744073709551615:alice", NOW)
                .err(),
            Some(CredentialError::LifetimeTooLong)
        );
    }

    #[test]
    fn largest_expiry_is_accepted_without_a_maximum_lifetime() {
        assert!(
            rest_store()
                .candidate_passwords("18446744073709551615:alice", NOW)
                .is_ok()
        );
    }

    #[test]
    fn static_user_gets_its_password() {
        let store = CredentialStore::new("example.org")
            .with_static_user("alice", Password::new("wonderland"));
        assert_eq!(
            passwords(&store, "alice", NOW),
            [(CredentialScheme::Static, "wonderland".to_owned())]
        );
    }

    #[test]
    fn unknown_static_user_is_unknown() {
        let store = CredentialStore::new("example.org")
            .with_static_user("alice", Password::new("wonderland"));
        assert_eq!(
            store.candidate_passwords("bob", NOW).err(),
            Some(CredentialError::UnknownUser)
        );
        assert_eq!(
            CredentialStore::new("example.org")
                .candidate_passwords("alice", NOW)
                .err(),
            Some(CredentialError::UnknownUser),
            "an empty store knows nobody"
        );
    }

    #[test]
    fn static_user_with_an_ephemeral_looking_name_keeps_its_password_after_the_expiry() {
        let store = rest_store().with_static_user("1000:ops", Password::new("hunter2"));
        assert_eq!(
            passwords(&store, "1000:ops", NOW),
            [(CredentialScheme::Static, "hunter2".to_owned())]
        );
    }

    #[test]
    fn static_and_ephemeral_candidates_are_both_offered() {
        let store = rest_store().with_static_user("1700000000:alice", Password::new("hunter2"));
        assert_eq!(
            passwords(&store, "1700000000:alice", NOW),
            [
                (CredentialScheme::Static, "hunter2".to_owned()),
                (CredentialScheme::RestApi, REST_NORTH_ALICE.to_owned()),
            ]
        );
    }

    #[test]
    fn long_term_key_matches_rfc_5769_and_openssl() {
        // RFC 5769 §2.4: username "マトリックス", realm "example.org", password "TheMatrIX"
        // after SASLprep. Expected values from
        //   printf %s 'マトリックス:example.org:TheMatrIX' | openssl dgst -md5
        //   printf %s 'マトリックス:example.org:TheMatrIX' | openssl dgst -sha256
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let md5 = LongTermKey::derive(PasswordAlgorithm::Md5, username, "example.org", "TheMatrIX");
        assert_eq!(hex(md5.as_bytes()), "e8ca7ad59d5eb0518e312911d2dab2a9");
        assert_eq!(md5.algorithm(), PasswordAlgorithm::Md5);

        let sha256 = LongTermKey::derive(
            PasswordAlgorithm::Sha256,
            username,
            "example.org",
            "TheMatrIX",
        );
        assert_eq!(
            hex(sha256.as_bytes()),
            "dd295a613b9058c3c23d6dc7165bda072304d989c9d0af3a8c7e184b4f9bb4a1"
        );
        assert_eq!(sha256.algorithm(), PasswordAlgorithm::Sha256);
    }

    #[test]
    fn static_user_keys_are_derived_from_the_store_realm() {
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let store = CredentialStore::new("example.org")
            .with_static_user(username, Password::new("TheMatrIX"));
        let keys: Vec<LongTermKey> = store
            .candidate_keys(username, PasswordAlgorithm::Md5, NOW)
            .unwrap()
            .collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(hex(keys[0].as_bytes()), "e8ca7ad59d5eb0518e312911d2dab2a9");
    }

    #[test]
    fn userhash_matches_rfc_8489_appendix_b() {
        // RFC 8489 Appendix B.1 USERHASH, confirmed with
        //   printf %s 'マトリックス:example.org' | openssl dgst -sha256
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        assert_eq!(
            hex(Userhash::compute(username, "example.org").as_bytes()),
            "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
        );
    }

    #[test]
    fn userhash_finds_static_users_of_the_store_realm_only() {
        let store = rest_store()
            .with_static_user("alice", Password::new("wonderland"))
            .with_static_user("bob", Password::new("builder"));
        let alice = Userhash::compute("alice", "example.org");
        assert_eq!(store.username_for_userhash(&alice), Ok("alice"));
        assert_eq!(
            store.username_for_userhash(&Userhash::compute("alice", "other.org")),
            Err(CredentialError::UnknownUser)
        );
        assert_eq!(
            store.username_for_userhash(&Userhash::compute("1700000000:alice", "example.org")),
            Err(CredentialError::UnknownUser),
            "ephemeral usernames cannot be found from their hash"
        );
        assert_eq!(
            store.username_for_userhash(&Userhash::from_bytes(*alice.as_bytes())),
            Ok("alice")
        );
    }

    #[test]
    fn userhash_is_supported_only_when_every_user_is_static() {
        let static_only =
            CredentialStore::new("example.org").with_static_user("alice", Password::new("x"));
        assert!(static_only.supports_userhash());
        assert!(!CredentialStore::new("example.org").supports_userhash());
        assert!(!rest_store().supports_userhash());
        assert!(!firezone_store().supports_userhash());
        assert!(
            !rest_store()
                .with_static_user("alice", Password::new("x"))
                .supports_userhash(),
            "ephemeral users could not resolve their hashes"
        );
    }

    #[test]
    fn long_term_keys_compare_by_value() {
        let key = |password: &str, algorithm| {
            LongTermKey::derive(algorithm, "alice", "example.org", password)
        };
        assert_eq!(
            key("a", PasswordAlgorithm::Md5),
            key("a", PasswordAlgorithm::Md5)
        );
        assert_ne!(
            key("a", PasswordAlgorithm::Md5),
            key("b", PasswordAlgorithm::Md5)
        );
        assert_ne!(
            key("a", PasswordAlgorithm::Md5),
            key("a", PasswordAlgorithm::Sha256)
        );
        assert!(bool::from(
            key("a", PasswordAlgorithm::Sha256).ct_eq(&key("a", PasswordAlgorithm::Sha256))
        ));
        assert_eq!(Password::new("x"), Password::new("x"));
        assert_ne!(Password::new("x"), Password::new("y"));
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let store = rest_store()
            .with_firezone_secret(SharedSecret::new("firesecret"))
            .with_static_user("alice", Password::new("wonderland"));
        let key = LongTermKey::derive(PasswordAlgorithm::Md5, "alice", "example.org", "wonderland");
        let candidates = store.candidate_passwords("1700000000:salt", NOW).unwrap();
        let printed = [
            format!("{store:?}"),
            format!("{:?}", Password::new("wonderland")),
            format!("{:?}", SharedSecret::new("north")),
            format!("{key:?}"),
            format!("{candidates:?}"),
            format!("{:?}", candidates.clone().collect::<Vec<_>>()),
            format!(
                "{:?}",
                store
                    .candidate_keys("alice", PasswordAlgorithm::Md5, NOW)
                    .unwrap()
            ),
        ];
        let key_hex = hex(key.as_bytes());
        for text in &printed {
            for secret in [
                "wonderland",
                "north",
                "firesecret",
                REST_NORTH_ALICE,
                key_hex.as_str(),
            ] {
                assert!(!text.contains(secret), "{text} contains {secret}");
            }
        }
        assert_eq!(format!("{key:?}"), "LongTermKey(..)");
        assert_eq!(format!("{:?}", Password::new("x")), "Password(..)");
        assert_eq!(format!("{:?}", SharedSecret::new("x")), "SharedSecret(..)");
    }

    #[test]
    fn password_algorithm_codes_follow_the_registry() {
        assert_eq!(PasswordAlgorithm::Md5.code(), 0x0001);
        assert_eq!(PasswordAlgorithm::Sha256.code(), 0x0002);
        for algorithm in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            assert_eq!(
                PasswordAlgorithm::from_code(algorithm.code()),
                Some(algorithm)
            );
        }
        assert_eq!(PasswordAlgorithm::from_code(0x0000), None);
        assert_eq!(PasswordAlgorithm::from_code(0x0003), None);
    }

    #[test]
    fn size_hint_bounds_the_number_of_candidates() {
        let store = rest_store()
            .with_rest_secret(SharedSecret::new("south"))
            .with_firezone_secret(SharedSecret::new("secret"));
        let candidates = store.candidate_passwords("1700000000:salt", NOW).unwrap();
        assert_eq!(candidates.size_hint(), (0, Some(3)));
        assert_eq!(candidates.count(), 3);
    }

    proptest! {
        #[test]
        fn any_username_yields_candidates_or_an_error_without_panicking(
            username in "\\PC{0,40}|[0-9]{0,22}(:[a-z:]{0,8})?",
            now in any::<u64>(),
        ) {
            let store = rest_store()
                .with_firezone_secret(SharedSecret::new("secret"))
                .with_static_user("alice", Password::new("wonderland"));
            match store.candidate_keys(&username, PasswordAlgorithm::Sha256, now) {
                Ok(keys) => {
                    for key in keys {
                        prop_assert_eq!(key.as_bytes().len(), 32);
                    }
                }
                Err(_) => prop_assert!(username != "alice"),
            }
        }

        #[test]
        fn an_ephemeral_username_is_valid_exactly_until_its_expiry(
            expiry in any::<u64>(),
            now in any::<u64>(),
        ) {
            let username = format!("{expiry}:alice");
            let valid = rest_store().candidate_passwords(&username, now).is_ok();
            prop_assert_eq!(valid, expiry > now);
        }
    }
}
