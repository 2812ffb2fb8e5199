//! The HTTP endpoints every kubeprof binary serves: `/metrics` (Prometheus text), `/healthz`,
//! `/readyz`, and `/debug/pprof/profile` — kubeprof profiles itself, in the format it collects.
#![forbid(unsafe_code)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

mod self_profile;
mod threads;

/// Shared state of the endpoints.
#[derive(Clone, Debug)]
pub struct Telemetry {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// One CPU profile at a time; later requests wait their turn (see [`cpu_profile`]).
    cpu_profile_turn: Arc<tokio::sync::Semaphore>,
    /// More routes served on the same port (the scraper's `/targets` and `/ui`).
    extra: Option<Router>,
}

impl Telemetry {
    /// Endpoints serving `registry`; not ready until [`Telemetry::set_ready`].
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
            ready: Arc::default(),
            cpu_profile_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            extra: None,
        }
    }

    /// Also serves `routes` (merged into [`Telemetry::router`]).
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = Some(routes);
        self
    }

    /// Marks the process ready (jobs loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The router, for tests or embedding.
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/debug/pprof/profile", get(cpu_profile))
            .route("/debug/pprof/heap", get(heap_profile))
            .route("/debug/pprof/threads", get(threads_profile))
            .with_state(self.clone());
        match &self.extra {
            Some(extra) => router.merge(extra.clone()),
            None => router,
        }
    }

    /// Binds `addr` and serves until `shutdown`; returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "telemetry server stopped");
            }
        });
        Ok(bound)
    }
}

impl Telemetry {
    /// [`Telemetry::serve`] for a binary's start-up: logs where it listens, or prints why it
    /// cannot (prefixed with `program`) and returns `false`.
    pub async fn serve_or_report(
        &self,
        addr: SocketAddr,
        shutdown: CancellationToken,
        program: &str,
    ) -> bool {
        match self.serve(addr, shutdown).await {
            Ok(bound) => {
                tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz, /debug/pprof/profile");
                true
            }
            Err(e) => {
                eprintln!("{program}: cannot listen on {addr}: {e}");
                false
            }
        }
    }
}

async fn metrics(State(t): State<Telemetry>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &t.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(t): State<Telemetry>) -> Response {
    if t.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[derive(Deserialize)]
struct ProfileParams {
    seconds: Option<u64>,
}

/// Longest self-profile served.
const MAX_PROFILE_SECONDS: u64 = 60;

async fn cpu_profile(State(t): State<Telemetry>, Query(params): Query<ProfileParams>) -> Response {
    let seconds = params.seconds.unwrap_or(30);
    if seconds == 0 || seconds > MAX_PROFILE_SECONDS {
        return (
            StatusCode::BAD_REQUEST,
            format!("seconds must be 1..={MAX_PROFILE_SECONDS}\n"),
        )
            .into_response();
    }
    // One CPU profile at a time. Go answers a second concurrent request with an error, but a
    // scraper that profiles this process continuously (CPU over the whole interval) keeps one
    // running nearly always, so a person's request would be refused for as long as that lasts:
    // it waits for its turn instead, at most as long as the longest profile. The permit is
    // released however the request ends, also when the client hangs up mid-profile.
    let turn = match tokio::time::timeout(
        Duration::from_secs(MAX_PROFILE_SECONDS + 5),
        t.cpu_profile_turn.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "another CPU profile of this process is running; try again\n",
            )
                .into_response();
        }
    };
    let result = self_profile::collect(Duration::from_secs(seconds)).await;
    drop(turn);
    match result {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve a CPU profile of this process");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

async fn threads_profile() -> Response {
    match tokio::task::spawn_blocking(threads::threads_profile).await {
        Ok(Ok(body)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::NOT_IMPLEMENTED,
            format!("cannot read this process's threads from /proc/self/task: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn heap_profile() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        "heap profiles of kubeprof itself are not available: both binaries use jemalloc without allocation sampling\n",
    )
        .into_response()
}

/// Sets up `tracing`: `json` or `text`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,pprof=warn"));
    use std::io::IsTerminal as _;
    // Colours only for a person at a terminal: log files and collectors get plain text.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
