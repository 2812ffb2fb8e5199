//! What the pull loop knows of each job's recent scrapes, read by health reporting.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use kubeprof_crds::{health::ScrapeFailure, job::ScrapeJob};

/// A job's recent scrapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobHealth {
    /// When the last scrape succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// The fixed reason of the last error (the metric's `outcome`).
    pub last_reason: Option<ScrapeFailure>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the last scrape started (success or failure).
    pub last_scrape: Option<SystemTime>,
    /// How long the last scrape took, fetch to hand-off.
    pub last_duration: Option<Duration>,
    /// The last scrape succeeded but sent nothing: the first scrape of a delta type (a
    /// baseline).
    pub baseline: bool,
    /// When the next scrape is due.
    pub next_scrape: Option<SystemTime>,
}

/// The health of every running job, by id.
#[derive(Debug, Default)]
pub(super) struct HealthBook(Mutex<HashMap<String, JobHealth>>);

impl HealthBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobHealth>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of every job's health.
    pub fn snapshot(&self) -> HashMap<String, JobHealth> {
        self.lock().clone()
    }

    /// Records a scrape of `job` that started at `start` and took `took`; `Ok(sent)` tells
    /// whether a profile was sent (a delta baseline sends none). Logs when the job starts
    /// failing or recovers, not at every interval.
    pub fn record(
        &self,
        job: &ScrapeJob,
        (start, took): (SystemTime, Duration),
        result: Result<bool, (ScrapeFailure, String)>,
    ) {
        let mut health = self.lock();
        let h = health.entry(job.id.clone()).or_default();
        h.last_scrape = Some(start);
        h.last_duration = Some(took);
        match result {
            Ok(sent) => {
                h.baseline = !sent;
                if h.consecutive_failures > 0 {
                    tracing::info!(job = %job.origin.name, address = %job.address, profile = %job.profile.name, "scrapes recovered");
                }
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
                h.last_reason = None;
                h.consecutive_failures = 0;
            }
            Err((reason, message)) => {
                if h.consecutive_failures == 0 {
                    tracing::warn!(job = %job.origin.name, address = %job.address, profile = %job.profile.name, reason = reason.as_str(), error = %message, "scrape failing");
                } else {
                    tracing::debug!(job = %job.origin.name, address = %job.address, reason = reason.as_str(), error = %message, "scrape failed");
                }
                h.last_error = Some(message);
                h.last_reason = Some(reason);
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            }
        }
    }

    /// Notes when the next scrape of `id` is due.
    pub fn schedule(&self, id: &str, next: tokio::time::Instant) {
        let at = SystemTime::now() + next.saturating_duration_since(tokio::time::Instant::now());
        self.lock().entry(id.to_owned()).or_default().next_scrape = Some(at);
    }

    /// Forgets a job that stopped.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}
