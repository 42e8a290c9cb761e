//! Long-term credential authentication of requests (RFC 8489 §9.2), with stateless nonces.

pub mod credentials;
pub mod nonce;

use core::net::SocketAddr;

use turnpike_proto::{Attribute, AttributeType, ErrorCode, Message};

use self::credentials::{
    CredentialError, CredentialStore, Expiry, LongTermKey, PasswordAlgorithm, Userhash,
};
use self::nonce::{NonceSecret, SecurityFeatures, StatelessNonces};
use crate::config::Config;
use crate::occurrence::first_occurrences;

/// The PASSWORD-ALGORITHMS value this server offers: SHA-256 first (preferred), then MD5.
pub(crate) const OFFERED_PASSWORD_ALGORITHMS: [u8; 8] =
    [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// Which integrity attribute a request carried; its response carries the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntegrityKind {
    Sha1,
    Sha256,
}

/// Proof that a request passed authentication; only [`Authenticator::authenticate`] builds it.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub(crate) username: Box<str>,
    pub(crate) key: LongTermKey,
    pub(crate) integrity: IntegrityKind,
    /// The ephemeral credentials are past their expiry, and the request is signed with the key
    /// they derive. Good for nothing but deleting the allocation they created (the server
    /// checks that); every other request is refused as [`AuthFailure::ExpiredCredentials`].
    pub(crate) expired: bool,
}

/// Why a request failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the client has to learn realm and nonce first (401).
    NoCredentials,
    /// Integrity without USERNAME/USERHASH, REALM or NONCE (400, RFC 8489 §9.2.4).
    IncompleteCredentials,
    /// The nonce is not ours, is bound to another client, or has expired (438).
    StaleNonce,
    /// PASSWORD-ALGORITHMS differs from what the nonce promised: a bid-down attempt (400).
    AlgorithmDowngrade,
    WrongRealm,
    UnknownUser,
    ExpiredCredentials,
    /// An ephemeral username whose expiry lies beyond `Lifetimes::credential_max`.
    CredentialLifetimeTooLong,
    MalformedUsername,
    BadIntegrity,
}

impl AuthFailure {
    pub(crate) const fn error_code(self) -> ErrorCode {
        match self {
            Self::IncompleteCredentials | Self::AlgorithmDowngrade => ErrorCode::BAD_REQUEST,
            Self::StaleNonce => ErrorCode::STALE_NONCE,
            _ => ErrorCode::UNAUTHORIZED,
        }
    }

    /// Whether the error response carries REALM and NONCE so the client can retry.
    pub(crate) const fn challenges(self) -> bool {
        !matches!(self, Self::IncompleteCredentials | Self::AlgorithmDowngrade)
    }

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::IncompleteCredentials => "incomplete_credentials",
            Self::StaleNonce => "stale_nonce",
            Self::AlgorithmDowngrade => "algorithm_downgrade",
            Self::WrongRealm => "wrong_realm",
            Self::UnknownUser => "unknown_user",
            Self::ExpiredCredentials => "expired_credentials",
            Self::CredentialLifetimeTooLong => "credential_lifetime_too_long",
            Self::MalformedUsername => "malformed_username",
            Self::BadIntegrity => "bad_integrity",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Authenticator {
    credentials: CredentialStore,
    nonces: StatelessNonces,
    features: SecurityFeatures,
}

impl Authenticator {
    pub(crate) fn new(config: &Config, nonce_secret: [u8; 32]) -> Self {
        let mut features = SecurityFeatures::NONE;
        if config.offer_sha256 {
            features = features.union(SecurityFeatures::PASSWORD_ALGORITHMS);
        }
        if config.credentials.supports_userhash() {
            features = features.union(SecurityFeatures::USERNAME_ANONYMITY);
        }
        let nonces = Self::nonces(config, nonce_secret);
        Self {
            credentials: config
                .credentials
                .clone()
                .with_max_lifetime(config.lifetimes.credential_max),
            nonces,
            features,
        }
    }

    /// Takes the credentials, offered algorithms and nonce lifetime of `config`, keeping the
    /// nonce secret: nonces already handed out stay valid, so no client is sent round a 438 by
    /// a reload.
    pub(crate) fn reconfigure(&mut self, config: &Config) {
        // Shared keys are the configuration's; a server's own random key stays.
        let nonces = if config.nonce_keys.is_empty() {
            self.nonces.clone().with_lifetime(config.lifetimes.nonce)
        } else {
            Self::nonces(config, [0; 32])
        };
        let mut replacement = Self::new(config, [0; 32]);
        replacement.nonces = nonces;
        *self = replacement;
    }

    /// The nonce issuer: the configured shared keys (the first issues, all verify), else
    /// `own_secret`.
    fn nonces(config: &Config, own_secret: [u8; 32]) -> StatelessNonces {
        let mut keys = config.nonce_keys.iter().copied();
        let mut nonces =
            StatelessNonces::new(NonceSecret::from_bytes(keys.next().unwrap_or(own_secret)));
        for previous in keys {
            nonces = nonces.with_previous_secret(NonceSecret::from_bytes(previous));
        }
        nonces.with_lifetime(config.lifetimes.nonce)
    }

    pub(crate) fn realm(&self) -> &str {
        self.credentials.realm()
    }

    /// A fresh nonce for `client`, for a 401 or 438 response.
    pub(crate) fn issue_nonce(&self, client: SocketAddr, now_unix: u64) -> nonce::Nonce {
        self.nonces.issue(client, now_unix, self.features)
    }

    pub(crate) const fn offers_sha256(&self) -> bool {
        self.features
            .contains(SecurityFeatures::PASSWORD_ALGORITHMS)
    }

    /// Checks a request's long-term credentials in the order RFC 8489 §9.2.4 prescribes.
    pub(crate) fn authenticate(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        now_unix: u64,
    ) -> Result<Authenticated, AuthFailure> {
        let integrity = if message.has_message_integrity_sha256() {
            IntegrityKind::Sha256
        } else if message.has_message_integrity() {
            IntegrityKind::Sha1
        } else {
            return Err(AuthFailure::NoCredentials);
        };
        let transaction_id = message.transaction_id();
        let mut username = None;
        let mut userhash = None;
        let mut realm = None;
        let mut nonce = None;
        let mut offered_algorithms = None;
        let mut chosen_algorithm = None;
        // Only the first occurrence of each credential attribute counts (RFC 8489 §14).
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::Username(value)) => username = Some(value),
                Ok(Attribute::Userhash(value)) => userhash = Some(*value),
                Ok(Attribute::Realm(value)) => realm = Some(value),
                Ok(Attribute::Nonce(value)) => nonce = Some(value),
                Ok(Attribute::PasswordAlgorithms(list)) => offered_algorithms = Some(list),
                Ok(Attribute::PasswordAlgorithm(algorithm)) => chosen_algorithm = Some(algorithm),
                Ok(_) => {}
                Err(_) if is_credential_attribute(raw.kind()) => {
                    return Err(AuthFailure::IncompleteCredentials);
                }
                Err(_) => {}
            }
        }
        let (Some(realm), Some(nonce)) = (realm, nonce) else {
            return Err(AuthFailure::IncompleteCredentials);
        };
        if username.is_none() && userhash.is_none() {
            return Err(AuthFailure::IncompleteCredentials);
        }
        let features = self
            .nonces
            .verify(nonce, client, now_unix)
            .map_err(|_| AuthFailure::StaleNonce)?;

        let algorithm = if features.contains(SecurityFeatures::PASSWORD_ALGORITHMS) {
            match (offered_algorithms, chosen_algorithm) {
                (None, None) => PasswordAlgorithm::Md5,
                (Some(offered), Some(chosen))
                    if offered.as_bytes() == OFFERED_PASSWORD_ALGORITHMS
                        && offered.iter().any(|a| a.algorithm == chosen.algorithm) =>
                {
                    PasswordAlgorithm::from_code(chosen.algorithm)
                        .ok_or(AuthFailure::AlgorithmDowngrade)?
                }
                _ => return Err(AuthFailure::AlgorithmDowngrade),
            }
        } else {
            PasswordAlgorithm::Md5
        };
        if realm != self.credentials.realm() {
            return Err(AuthFailure::WrongRealm);
        }
        let username = match (username, userhash) {
            (Some(username), _) => username,
            (None, Some(hash)) => self
                .credentials
                .username_for_userhash(&Userhash::from_bytes(hash))
                .map_err(|_| AuthFailure::UnknownUser)?,
            (None, None) => return Err(AuthFailure::IncompleteCredentials),
        };
        let (keys, expired) = match self.credentials.candidate_keys_with(
            username,
            algorithm,
            now_unix,
            Expiry::Enforce,
        ) {
            Ok(keys) => (keys, false),
            // Still derive the keys: a request signed with the key of expired credentials
            // may delete the allocation those credentials created (the server decides).
            Err(CredentialError::Expired) => (
                self.credentials
                    .candidate_keys_with(username, algorithm, now_unix, Expiry::Ignore)
                    .map_err(|_| AuthFailure::ExpiredCredentials)?,
                true,
            ),
            Err(CredentialError::LifetimeTooLong) => {
                return Err(AuthFailure::CredentialLifetimeTooLong);
            }
            Err(CredentialError::MalformedUsername) => {
                return Err(AuthFailure::MalformedUsername);
            }
            Err(CredentialError::UnknownUser) => return Err(AuthFailure::UnknownUser),
        };
        for key in keys {
            let verified = match integrity {
                IntegrityKind::Sha256 => message.verify_message_integrity_sha256(key.as_bytes()),
                IntegrityKind::Sha1 => message.verify_message_integrity(key.as_bytes()),
            };
            if verified.is_ok() {
                return Ok(Authenticated {
                    username: username.into(),
                    key,
                    integrity,
                    expired,
                });
            }
        }
        Err(if expired {
            AuthFailure::ExpiredCredentials
        } else {
            AuthFailure::BadIntegrity
        })
    }
}

fn is_credential_attribute(kind: AttributeType) -> bool {
    [
        AttributeType::USERNAME,
        AttributeType::USERHASH,
        AttributeType::REALM,
        AttributeType::NONCE,
        AttributeType::PASSWORD_ALGORITHM,
        AttributeType::PASSWORD_ALGORITHMS,
    ]
    .contains(&kind)
}
