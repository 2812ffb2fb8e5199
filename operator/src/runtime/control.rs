//! The loop: waits for a change, a resync or a leadership change; while leading, runs one
//! [`Reconciler::pass`] per burst of changes.

use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    Settings, Triggers,
    reconcile::{Reconciler, Work},
    stores::Stores,
};
use crate::metrics::Metrics;

/// Runs until `shutdown` (or until the election stops).
pub(crate) async fn run(
    stores: &Stores,
    mut leading: watch::Receiver<bool>,
    triggers: &Triggers,
    mut reconciler: Reconciler,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut work = Work {
        inputs: true,
        status: true,
    };
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = triggers.inputs.notified() => work.inputs = true,
            () = triggers.health.notified() => work.status = true,
            changed = leading.changed() => {
                if changed.is_err() { break; }
                let now_leading = *leading.borrow_and_update();
                metrics.leader.set(i64::from(now_leading));
                if now_leading {
                    tracing::info!(identity = %settings.identity, "leading: reconciling");
                    reconciler.reset();
                    work.inputs = true;
                } else {
                    tracing::info!(identity = %settings.identity, "standing by");
                }
            }
            () = tokio::time::sleep(settings.resync) => work.inputs = true,
        }
        if !*leading.borrow() {
            continue;
        }
        // Coalesce a burst (a rollout, the initial list) into one pass.
        tokio::time::sleep(settings.debounce).await;
        if last_full.elapsed() >= settings.resync {
            work.inputs = true;
        }
        if work.inputs {
            last_full = Instant::now();
        }
        // A failed write waits for the next change or resync.
        let _failed = reconciler.pass(stores, work).await;
        work = Work::default();
    }
}
