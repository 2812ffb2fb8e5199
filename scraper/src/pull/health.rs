//! What the pull loop knows of each job's recent scrapes, read by health reporting.

use std::{collections::HashMap, sync::Mutex, time::SystemTime};

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

    /// Records a scrape of `job`; logs when the job starts failing or recovers, not at every
    /// interval.
    pub fn record(&self, job: &ScrapeJob, result: Result<(), (ScrapeFailure, String)>) {
        let mut health = self.lock();
        let h = health.entry(job.id.clone()).or_default();
        match result {
            Ok(()) => {
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

    /// Forgets a job that stopped.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}
