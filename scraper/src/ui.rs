//! The scraper's web pages, served on its telemetry port: `/targets` (every job, its labels
//! before and after relabelling, its health; HTML, or JSON with `Accept: application/json`)
//! and `/ui`, a browser of the file sinks' profiles with flame graphs of one profile, of a
//! time range merged, and of the difference between two ranges.
//!
//! Read-only by construction: every route is a GET, and the browser reads only files below a
//! file sink's directory, found from path components that must look like the ones the file
//! sink writes (`[A-Za-z0-9._-]`, never `.` or `..`) and whose canonical path must stay below
//! the canonical directory (a symbolic link cannot lead out). Every value from a profile or a
//! label is HTML-escaped: labels are user input.
//!
//! The pages depend on the scrape loop only through [`TargetsSource`], which the binary's
//! assembly implements ([`live::LiveTargets`]).

mod browser;
mod html;
pub mod live;
mod store;
pub mod targets;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Redirect},
    routing::get,
};
use kubeprof_crds::health::ScrapeFailure;

use kubeprof_pprof::DecodeLimits;

use crate::sources::JobSet;

/// What the scrape loop knows of one job, as the pages show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetHealth {
    /// When the last scrape started.
    pub last_scrape: Option<SystemTime>,
    /// How long it took.
    pub last_duration: Option<Duration>,
    /// When a scrape last succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// Its fixed reason.
    pub last_reason: Option<ScrapeFailure>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The last success sent nothing: the first scrape of a delta type.
    pub baseline: bool,
    /// When the next scrape is due.
    pub next_scrape: Option<SystemTime>,
}

/// A sink's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkQueue {
    /// Profiles waiting.
    pub profiles: i64,
    /// Bytes waiting.
    pub bytes: i64,
}

/// Everything the pages show of the scrape loop, read at once.
#[derive(Clone, Debug, Default)]
pub struct TargetsSnapshot {
    /// `standalone` or `cluster`, with details (the configuration file, the node).
    pub mode: String,
    /// The jobs and sinks in force; the same `Arc` until they change (derived data is cached
    /// per `Arc`).
    pub jobs: Arc<JobSet>,
    /// Health by job id; jobs without an entry have not been scheduled yet.
    pub health: HashMap<String, TargetHealth>,
    /// Queue of each sink, by name.
    pub queues: BTreeMap<String, SinkQueue>,
}

/// The read-only view of the scrape loop the pages need.
pub trait TargetsSource: Send + Sync + std::fmt::Debug {
    /// The current jobs, sinks and health.
    fn snapshot(&self) -> TargetsSnapshot;
}

/// Flame graphs rendered at once; more wait (each can decode hundreds of profiles).
const RENDERS_AT_ONCE: usize = 2;

/// Shared state of the pages.
#[derive(Clone, Debug)]
pub struct UiState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: OnceLock<Arc<dyn TargetsSource>>,
    renders: tokio::sync::Semaphore,
    derived: Mutex<Option<targets::Derived>>,
    folds: Mutex<Vec<(String, Arc<browser::Loaded>)>>,
    limits: DecodeLimits,
}

impl Default for UiState {
    fn default() -> Self {
        Self::new(DecodeLimits::default())
    }
}

impl UiState {
    /// Pages with no scrape loop yet (`/targets` says it is starting); profiles are decoded
    /// within `limits`.
    pub fn new(limits: DecodeLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: OnceLock::new(),
                renders: tokio::sync::Semaphore::new(RENDERS_AT_ONCE),
                derived: Mutex::new(None),
                folds: Mutex::new(Vec::new()),
                limits,
            }),
        }
    }

    /// Pages showing `source` (the first one set stays).
    pub fn with_source(source: Arc<dyn TargetsSource>) -> Self {
        let state = Self::default();
        state.set_source(source);
        state
    }

    /// Connects the scrape loop once it exists (the port serves before it does).
    pub fn set_source(&self, source: Arc<dyn TargetsSource>) {
        let _ = self.inner.source.set(source);
    }

    fn snapshot(&self) -> Option<TargetsSnapshot> {
        self.inner.source.get().map(|s| s.snapshot())
    }
}

const STYLE: &str = include_str!("ui/assets/style.css");

/// The routes: `/targets`, `/ui`, `/ui/...`; all GET.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/targets", get(targets::handler))
        .route("/ui", get(browser::index))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/profiles", get(browser::timeline))
        .route("/ui/flame", get(browser::flame_page))
        .route("/ui/flame.svg", get(browser::flame_svg))
        .route("/ui/diff", get(browser::diff_page))
        .route("/ui/diff.svg", get(browser::diff_svg))
        .route("/ui/download", get(browser::download))
        .route(
            "/ui/assets/style.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, "max-age=300"),
                    ],
                    STYLE,
                )
                    .into_response()
            }),
        )
        .with_state(state)
}
