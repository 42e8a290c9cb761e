//! The TLS server configuration of `--listen-tls`: certificate chain and key read from PEM files,
//! checked at start, and read again on every reload (SIGHUP, `POST /reload`) without touching
//! a connection: `read` checks the new pair, `install` serves it once the whole reload is known
//! to be good.
//!
//! Connections take the configuration that is current when they are accepted, so a reload
//! reaches new connections only; established ones keep the session they negotiated. A new
//! certificate that cannot be used (unreadable, no key, a key that does not match, expired)
//! is refused as a whole and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The current TLS configuration and where it came from.
#[derive(Debug)]
pub(crate) struct TlsCertificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    /// When the served certificate expires, in seconds since the Unix epoch (a metric, so an
    /// alert fires before clients start refusing it).
    not_after_unix: AtomicI64,
}

/// A certificate and key read and checked, ready to serve.
#[derive(Debug)]
pub(crate) struct Certificate {
    config: Arc<ServerConfig>,
    not_after_unix: i64,
}

impl TlsCertificates {
    /// Reads and checks the certificate and key; errors name the setting at fault.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let certificate = server_config(cert_path, key_path, SystemTime::now())?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(certificate.config),
            not_after_unix: AtomicI64::new(certificate.not_after_unix),
        })
    }

    /// When the certificate served to new connections expires, in seconds since the Unix
    /// epoch.
    pub(crate) fn not_after_unix(&self) -> i64 {
        self.not_after_unix.load(Ordering::Relaxed)
    }

    /// The configuration for a connection accepted now.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reads and checks the files without using them (the first step of a reload).
    pub(crate) fn read(&self) -> Result<Certificate> {
        server_config(&self.cert_path, &self.key_path, SystemTime::now())
    }

    /// Serves `certificate` to connections accepted from now on.
    pub(crate) fn install(&self, certificate: Certificate) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = certificate.config;
        self.not_after_unix
            .store(certificate.not_after_unix, Ordering::Relaxed);
    }
}

/// A rustls server configuration for TURN: TLS 1.2 and 1.3, no client certificates, no ALPN
/// required (browsers send none for TURN).
fn server_config(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Certificate> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("tls-cert: cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls-cert: {} is not PEM", cert_path.display()))?;
    ensure!(
        !chain.is_empty(),
        "tls-cert: {} holds no certificate",
        cert_path.display()
    );
    let not_after_unix = check_validity(&chain[0], now)
        .with_context(|| format!("tls-cert: {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "tls-key: cannot read a private key from {}",
            key_path.display()
        )
    })?;
    #[expect(
        deprecated,
        reason = "ring lacks the post-quantum key exchange, which TURN clients do not need yet; \
                  aws-lc-rs would add a C build of several minutes to every CI run"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("tls: the protocol versions are not supported")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "tls-key: {} does not go with the certificate in {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    Ok(Certificate {
        config: Arc::new(config),
        not_after_unix,
    })
}

/// Refuses an end-entity certificate outside its validity period: clients would refuse it
/// anyway, and an operator learns it at start or reload instead of from failed calls. Returns
/// its expiry in seconds since the Unix epoch.
fn check_validity(certificate: &CertificateDer<'_>, now: SystemTime) -> Result<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| anyhow::anyhow!("the certificate cannot be parsed: {error}"))?;
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let unix = i64::try_from(unix).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if unix > validity.not_after.timestamp() {
        bail!("the certificate expired at {}", validity.not_after);
    }
    if unix < validity.not_before.timestamp() {
        bail!(
            "the certificate is not valid before {}",
            validity.not_before
        );
    }
    Ok(validity.not_after.timestamp())
}
