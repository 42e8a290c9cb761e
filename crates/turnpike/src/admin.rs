//! The admin endpoint: health, readiness, metrics, the status page and its JSON, and the run-time
//! log level. It listens on loopback unless told otherwise: none of it is for the public. With
//! `--admin-token-file`, everything but `/healthz` and `/readyz` asks for that token.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use turnpike_xdp_user::XdpRelay;

use crate::logging::LogControl;
use crate::metrics::{RelayInfo, Shared, render, render_relay};
use crate::status::{History, Snapshot, Status, since};
use crate::tls::TlsCertificates;

/// The status page: one file, no assets from elsewhere.
const STATUS_PAGE: &str = include_str!("status.html");

/// The bearer token of the admin endpoint, kept as its SHA-256 digest so that comparing a
/// presented token takes the same time whatever its length and content.
#[derive(Clone)]
pub(crate) struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Shortest token accepted.
    pub(crate) const MIN_LEN: usize = 16;

    pub(crate) fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }

    /// `Authorization: Bearer TOKEN`, or Basic with any username and the token as password (what
    /// a browser sends after asking).
    fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, credentials)) = value.trim().split_once(' ') else {
            return false;
        };
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.matches(credentials.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                return false;
            };
            return decoded
                .iter()
                .position(|byte| *byte == b':')
                .is_some_and(|colon| self.matches(&decoded[colon + 1..]));
        }
        false
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    log: LogControl,
    kernel: Option<Arc<XdpRelay>>,
    tls: Option<Arc<TlsCertificates>>,
    info: Arc<RelayInfo>,
    history: Arc<History>,
    reload: ReloadSender,
}

/// What the admin endpoint serves, besides its listener.
pub(crate) struct Admin {
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: LogControl,
    pub(crate) kernel: Option<Arc<XdpRelay>>,
    /// The certificates of `--listen-tls`, for their expiry.
    pub(crate) tls: Option<Arc<TlsCertificates>>,
    pub(crate) info: RelayInfo,
    pub(crate) token: Option<AdminToken>,
    /// Where `POST /reload` asks for a reload, with a channel for the outcome.
    pub(crate) reload: ReloadSender,
}

/// A reload request: the outcome comes back through the enclosed channel, as the text for the
/// response body.
pub(crate) type ReloadSender =
    tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<String, String>>>;

pub(crate) async fn serve(listener: tokio::net::TcpListener, admin: Admin) -> Result<()> {
    let history = Arc::new(History::default());
    tokio::spawn(crate::status::sample(
        Arc::clone(&history),
        Arc::clone(&admin.shared),
        admin.kernel.clone(),
    ));
    let mut app = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/log-level", post(log_level))
        .route("/reload", post(reload));
    if let Some(token) = admin.token {
        app = app.layer(axum::middleware::from_fn(move |request, next| {
            authorize(token.clone(), request, next)
        }));
    }
    // Added after the token layer, so the probes stay open.
    let app = app
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            shared: admin.shared,
            log: admin.log,
            kernel: admin.kernel,
            tls: admin.tls,
            info: Arc::new(admin.info),
            history,
            reload: admin.reload,
        });
    axum::serve(listener, app)
        .await
        .context("admin endpoint failed")
}

async fn authorize(token: AdminToken, request: Request, next: Next) -> Response {
    if token.accepts(request.headers()) {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    let headers = response.headers_mut();
    for challenge in [
        "Bearer realm=\"turnpike admin\"",
        "Basic realm=\"turnpike admin\"",
    ] {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

pub(crate) async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("admin-listen: cannot bind {address}"))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shared.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is inline; it may talk to this endpoint only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data:; connect-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
}

async fn status(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let snapshot = Snapshot::take(&state.shared, state.kernel.as_deref());
    let status = Status::new(
        &state.info,
        &snapshot,
        &state.history,
        since(query.as_deref()),
    )
    .with_tls_certificate_expiry(state.tls.as_ref().map(|tls| tls.not_after_unix()));
    match serde_json::to_string(&status) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let snapshot = Snapshot::take(&state.shared, state.kernel.as_deref());
    let mut body = render(&snapshot.total, snapshot.kernel.as_ref());
    body.push_str(&render_relay(
        &state.info,
        &snapshot.shards,
        snapshot.draining,
    ));
    body.push_str(&crate::metrics::render_reloads(state.shared.reloads()));
    body.push_str(&crate::metrics::render_tls(
        state.tls.as_ref().map(|tls| tls.not_after_unix()),
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Reloads the configuration (as SIGHUP does) and says what happened: 200 with what changed,
/// 422 with why nothing did.
async fn reload(State(state): State<AppState>) -> (StatusCode, String) {
    let (reply, outcome) = tokio::sync::oneshot::channel();
    if state.reload.send(reply).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is stopping\n".to_owned(),
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), outcome).await {
        Ok(Ok(Ok(message))) => (StatusCode::OK, message),
        Ok(Ok(Err(error))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, the running configuration is unchanged: {error}\n"),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer to the reload\n".to_owned(),
        ),
    }
}

/// Replaces the log filter with the directives in the body, e.g. `turnpike=debug,info`.
async fn log_level(State(state): State<AppState>, body: String) -> (StatusCode, String) {
    match state.log.set(body.trim()) {
        Ok(()) => (
            StatusCode::OK,
            format!("log level set to {}\n", body.trim()),
        ),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn the_token_is_accepted_as_bearer_or_basic_password_and_nothing_else() {
        let token = AdminToken::new("0123456789abcdef");
        assert!(token.accepts(&headers("Bearer 0123456789abcdef")));
        assert!(token.accepts(&headers("bearer  0123456789abcdef ")));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:0123456789abcdef");
        assert!(token.accepts(&headers(&format!("Basic {basic}"))));
        assert!(!token.accepts(&HeaderMap::new()));
        assert!(!token.accepts(&headers("Bearer 0123456789abcdeF")));
        assert!(!token.accepts(&headers("Bearer 0123456789abcde")));
        assert!(!token.accepts(&headers("Bearer")));
        assert!(!token.accepts(&headers("Token 0123456789abcdef")));
        let wrong = base64::engine::general_purpose::STANDARD.encode("0123456789abcdef");
        assert!(!token.accepts(&headers(&format!("Basic {wrong}"))));
        assert!(!token.accepts(&headers("Basic !!!")));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }
}
