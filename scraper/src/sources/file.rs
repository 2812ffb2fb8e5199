//! The standalone file as a job source, re-read when it changes or on SIGHUP.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{JobSet, JobSource};
use crate::{
    config::Config,
    metrics::{Metrics, OutcomeLabels},
};

/// The standalone file, re-read when it changes (checked every `poll`) or on SIGHUP. An invalid
/// new version is logged and counted, and the previous jobs keep running.
#[derive(Debug)]
pub struct FileSource {
    rx: watch::Receiver<Arc<JobSet>>,
    // Held for fixed sources, whose set never changes.
    _fixed: Option<watch::Sender<Arc<JobSet>>>,
}

impl JobSource for FileSource {
    fn subscribe(&self) -> watch::Receiver<Arc<JobSet>> {
        self.rx.clone()
    }
}

fn fingerprint(path: &PathBuf) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|b| xxhash_rust::xxh3::xxh3_64(&b))
}

impl FileSource {
    /// Watches `path`, whose current content is `initial`.
    pub fn start(
        path: PathBuf,
        initial: JobSet,
        poll: Duration,
        secrets: Arc<dyn crate::SecretSource>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(initial));
        // Taken now, not in the task: an edit made before the task first runs must count.
        let mut seen = fingerprint(&path);
        tokio::spawn(async move {
            let mut hangup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                    None
                }
            };
            loop {
                let forced = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(poll) => false,
                    _ = async { match hangup.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => true,
                };
                let now = fingerprint(&path);
                if !forced && now == seen {
                    continue;
                }
                seen = now;
                // All or nothing: a sink that cannot be built refuses the whole file, so jobs
                // never point at a sink that does not exist.
                let loaded = Config::load(&path.to_string_lossy())
                    .and_then(|c| c.check_resources(secrets.as_ref()).map(|()| c));
                let outcome = match loaded {
                    Ok(config) => {
                        let set = config.job_set();
                        tracing::info!(path = %path.display(), jobs = set.jobs.len(), "configuration reloaded");
                        let _ = tx.send(Arc::new(set));
                        "success"
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "invalid configuration; keeping the previous jobs");
                        "failure"
                    }
                };
                metrics
                    .reloads
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.into(),
                    })
                    .inc();
            }
        });
        Self { rx, _fixed: None }
    }

    /// A source that never changes (the embedded default).
    pub fn fixed(set: JobSet) -> Self {
        let (tx, rx) = watch::channel(Arc::new(set));
        Self {
            rx,
            _fixed: Some(tx),
        }
    }
}
