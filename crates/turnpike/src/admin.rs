//! The admin endpoint: health, readiness, metrics and the run-time log level. It listens on
//! loopback unless told otherwise: none of it is for the public.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use turnpike_xdp_user::XdpRelay;

use crate::logging::LogControl;
use crate::metrics::{Shared, render};

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    log: LogControl,
    kernel: Option<Arc<XdpRelay>>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    log: LogControl,
    kernel: Option<Arc<XdpRelay>>,
) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/log-level", post(log_level))
        .with_state(AppState {
            shared,
            log,
            kernel,
        });
    axum::serve(listener, app)
        .await
        .context("admin endpoint failed")
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

async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let kernel = state.kernel.as_ref().and_then(|kernel| {
                kernel
                    .counters()
                    .inspect_err(|error| tracing::warn!(%error, "cannot read the XDP counters"))
                    .ok()
            });
            render(&state.shared.total(), kernel.as_ref())
        },
    )
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
