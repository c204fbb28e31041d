//! The HTTP side of `serve`: `/metrics` and the read-only web view, from the last
//! snapshot. Bound to loopback unless configured; anywhere else a token is required
//! (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for a browser).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;

use super::Shared;
use super::metrics;
use crate::config::ServeConfig;

/// The address to listen on and the token, checked: off loopback a token is required.
pub fn endpoint(config: &ServeConfig) -> Result<(SocketAddr, Option<String>)> {
    let addr: SocketAddr = config.listen.parse().with_context(|| {
        format!(
            "serve.listen '{}' is not an address; give IP:PORT, such as 127.0.0.1:9860",
            config.listen
        )
    })?;
    let token = config.token()?;
    if token.as_deref().is_some_and(str::is_empty) {
        bail!("serve's token is empty; set a long random one");
    }
    if !addr.ip().is_loopback() && token.is_none() {
        bail!(
            "serve.listen {addr} is not a loopback address, so the metrics and web view need a token; set serve.token or serve.token_file (or listen on 127.0.0.1)"
        );
    }
    Ok((addr, token))
}

#[derive(Clone)]
pub(super) struct App {
    shared: Arc<Mutex<Shared>>,
    token: Option<Arc<String>>,
}

/// Serves until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shared: Arc<Mutex<Shared>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App {
        shared,
        token: token.map(Arc::new),
    };
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/", get(super::web::overview))
        .route("/cluster/{name}", get(super::web::cluster))
        .route("/cluster/{name}/log/{file}", get(super::web::log))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

#[derive(serde::Deserialize)]
pub(super) struct TokenQuery {
    pub token: Option<String>,
}

async fn authorize(
    State(app): State<App>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if app.token.is_none() && !loopback_host(&headers) {
        // Without a token only loopback may ask, and a browser's page on another site
        // that renamed itself to 127.0.0.1 (DNS rebinding) still sends its own name.
        return (
            StatusCode::FORBIDDEN,
            "this address serves loopback only; open it as 127.0.0.1 or localhost, or set serve.token\n",
        )
            .into_response();
    }
    if let Some(token) = &app.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or(query.token.as_deref()).unwrap_or_default();
        if !same(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                "a token is required: send Authorization: Bearer TOKEN, or add ?token=TOKEN\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Whether the request's `Host` is a loopback address or `localhost`.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares in time independent of where the bytes differ, so that the token cannot be
/// guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics_page(State(app): State<App>) -> Response {
    let text = {
        let shared = app.shared();
        metrics::render(&shared.snapshot, &shared.jobs, Utc::now())
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

impl App {
    pub(super) fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        super::lock(&self.shared)
    }
}
