//! Cluster mode: jobs come from the ConfigMap the operator publishes for this node, Secrets are
//! read from the API under the scraper's own RBAC ([`KubeSecrets`]), and scrape health goes
//! back in a ConfigMap beside the shard ([`spawn_health_reporter`]).
//!
//! The scraper keeps its last jobs whenever the API server or the operator is away: a watch error
//! changes nothing, only a new shard (or its deletion, meaning "no jobs on this node") does.

mod health;
mod secrets;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kubeprof_crds::health::{jobs_object_name, shard_from_config_map};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use health::{Observed, spawn_ebpf_reporter, spawn_health_reporter};
pub use secrets::KubeSecrets;

use super::{EbpfPlan, EbpfTargets, JobSet, JobSource};
use crate::metrics::{Metrics, OutcomeLabels};

/// Jobs from this node's shard ConfigMap.
#[derive(Debug)]
pub struct ClusterSource {
    rx: watch::Receiver<Arc<JobSet>>,
}

impl JobSource for ClusterSource {
    fn subscribe(&self) -> watch::Receiver<Arc<JobSet>> {
        self.rx.clone()
    }
}

impl ClusterSource {
    /// Watches `kubeprof-jobs.<node>` in `namespace` (or `kubeprof-jobs` without a node). A job
    /// set is published once its Secrets are loaded; an unreadable shard keeps the last jobs.
    /// Without `pull` (an eBPF-only scraper) the shard's pull jobs are left out, and with them
    /// the Secrets only they refer to.
    pub fn start(
        client: Client,
        namespace: &str,
        node: Option<&str>,
        pull: bool,
        secrets: Arc<KubeSecrets>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(JobSet::default()));
        let name = jobs_object_name(node);
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        // Rotated credentials are picked up within a minute; a Secret that could not be read
        // (access not granted yet, not created yet) is tried again sooner: after 5 s, doubling
        // up to the minute (a Secret missing for good costs one read a minute per scraper).
        let refresh_every = Duration::from_secs(60);
        let first_retry = Duration::from_secs(5);
        tokio::spawn(async move {
            let stream = watcher::watcher(api, config).default_backoff();
            futures::pin_mut!(stream);
            let mut seen_in_list = false;
            let mut refresh_at = tokio::time::Instant::now() + refresh_every;
            let mut retry = first_retry;
            let mut next_refresh = move |all_read: bool| {
                let delay = if all_read {
                    retry = first_retry;
                    refresh_every
                } else {
                    let d = retry;
                    retry = (retry * 2).min(refresh_every);
                    d
                };
                tokio::time::Instant::now() + delay
            };
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(refresh_at) => {
                        let current = tx.borrow().clone();
                        let all_read = secrets.load(&current).await;
                        refresh_at = next_refresh(all_read);
                        continue;
                    }
                    e = stream.next() => e,
                };
                let Some(event) = event else { break };
                let outcome = |ok: bool| OutcomeLabels {
                    outcome: if ok { "success" } else { "failure" }.into(),
                };
                let cm = match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                        seen_in_list = true;
                        Some(cm)
                    }
                    Ok(watcher::Event::Delete(_)) => None,
                    Ok(watcher::Event::Init) => {
                        seen_in_list = false;
                        continue;
                    }
                    // After a (re)list without the object: this node has no jobs.
                    Ok(watcher::Event::InitDone) if !seen_in_list => None,
                    Ok(watcher::Event::InitDone) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch of the job shard failed; keeping the current jobs");
                        continue;
                    }
                };
                let set = match cm.as_ref().map(shard_from_config_map) {
                    None | Some(None) => JobSet::default(),
                    Some(Some(Ok(shard))) => JobSet {
                        ebpf: shard.ebpf.map(|e| EbpfPlan {
                            sample_rate: e.sample_rate,
                            period: e.period.std(),
                            node: shard.node.clone(),
                            targets: EbpfTargets::Shard(e),
                        }),
                        jobs: if pull { shard.jobs } else { Vec::new() },
                        sinks: shard.sinks,
                    },
                    Some(Some(Err(e))) => {
                        tracing::error!(object = %name, error = %e, "unreadable job shard; keeping the current jobs");
                        metrics.reloads.get_or_create(&outcome(false)).inc();
                        continue;
                    }
                };
                let all_read = secrets.load(&set).await;
                refresh_at = next_refresh(all_read);
                metrics.reloads.get_or_create(&outcome(true)).inc();
                tracing::info!(object = %name, jobs = set.jobs.len(), sinks = set.sinks.len(), ebpf = set.ebpf.is_some(), "job shard loaded");
                tx.send_replace(Arc::new(set));
            }
        });
        Self { rx }
    }
}
