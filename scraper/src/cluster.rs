//! Cluster mode: jobs come from the ConfigMap the operator publishes for this node, Secrets are
//! read from the API under the scraper's own RBAC, and scrape health goes back in a ConfigMap
//! beside the shard.
//!
//! The scraper keeps its last jobs whenever the API server or the operator is away: a watch error
//! changes nothing, only a new shard (or its deletion, meaning "no jobs on this node") does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use kubeprof_crds::{
    NamespacedSecretKeyRef,
    constants::{
        COMPONENT_HEALTH, COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SHARD_NODE_LABEL,
    },
    health::{
        FailingJob, HEALTH_DATA_KEY, HEALTH_FORMAT_VERSION, HealthReport, health_object_name,
        jobs_object_name, node_label_value, origin_key, shard_from_config_map,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::JobSet,
    credentials::{CredentialError, SecretSource},
    discovery::JobSource,
    metrics::{Metrics, OutcomeLabels},
    scrape::Pipeline,
};

/// Field manager of the scraper's health reports.
pub const HEALTH_FIELD_MANAGER: &str = "kubeprof.io/scraper";

/// Secrets read from the API, cached: a scrape never waits on the API server, and a Secret
/// that cannot be read now keeps its last value.
pub struct KubeSecrets {
    client: Client,
    cache: Mutex<HashMap<(String, String), SecretEntry>>,
}

/// A Secret's keys, or why it cannot be read.
type SecretEntry = Result<BTreeMap<String, String>, String>;

impl std::fmt::Debug for KubeSecrets {
    // Never prints secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets").finish_non_exhaustive()
    }
}

impl KubeSecrets {
    /// A cache reading through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    /// Loads every Secret the set refers to (jobs and sinks), and refreshes those already known.
    pub async fn load(&self, set: &JobSet) {
        let mut wanted: HashSet<(String, String)> = secret_refs(set)
            .into_iter()
            .map(|r| (r.namespace, r.name))
            .collect();
        wanted.extend(
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        for (namespace, name) in wanted {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
            let value = match api.get_opt(&name).await {
                Ok(Some(secret)) => {
                    let mut data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
                    for (k, v) in secret.data.unwrap_or_default() {
                        data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                    Ok(data)
                }
                Ok(None) => Err("secret not found".to_string()),
                Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
                    "the scraper may not read it ({}); enable scraper.readSecrets in the chart",
                    e.message
                )),
                Err(e) => {
                    // Unreachable API: keep whatever was known.
                    tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read secret; keeping the cached value");
                    continue;
                }
            };
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((namespace, name), value);
        }
    }
}

impl SecretSource for KubeSecrets {
    fn read(&self, r: &NamespacedSecretKeyRef) -> Result<String, CredentialError> {
        let err = |message: String| CredentialError::Secret {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key: r.key.clone(),
            message,
        };
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(r.namespace.clone(), r.name.clone())) {
            None => Err(err("not loaded yet".into())),
            Some(Err(e)) => Err(err(e.clone())),
            Some(Ok(data)) => data
                .get(&r.key)
                .cloned()
                .ok_or_else(|| err("no such key".into())),
        }
    }
}

/// Every Secret reference in a job set. Found by shape (`namespace`, `name`, `key`) in the
/// serialized set, so a credential field added to jobs or sinks later is never missed.
pub fn secret_refs(set: &JobSet) -> Vec<NamespacedSecretKeyRef> {
    fn walk(v: &serde_json::Value, out: &mut Vec<NamespacedSecretKeyRef>) {
        match v {
            serde_json::Value::Object(map) => {
                if map.len() == 3
                    && ["namespace", "name", "key"]
                        .iter()
                        .all(|k| map.get(*k).is_some_and(serde_json::Value::is_string))
                    && let Ok(r) = serde_json::from_value(v.clone())
                {
                    out.push(r);
                    return;
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(&set.jobs) {
        walk(&v, &mut out);
    }
    if let Ok(v) = serde_json::to_value(&set.sinks) {
        walk(&v, &mut out);
    }
    out
}

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
    pub fn start(
        client: Client,
        namespace: &str,
        node: Option<&str>,
        secrets: Arc<KubeSecrets>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(JobSet::default()));
        let name = jobs_object_name(node);
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let refresh_every = Duration::from_secs(60);
        tokio::spawn(async move {
            let stream = watcher::watcher(api, config).default_backoff();
            futures::pin_mut!(stream);
            let mut seen_in_list = false;
            let mut refresh = tokio::time::interval(refresh_every);
            refresh.tick().await;
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = refresh.tick() => {
                        // Rotated credentials: re-read the Secrets of the current jobs.
                        let current = tx.borrow().clone();
                        secrets.load(&current).await;
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
                        jobs: shard.jobs,
                        sinks: shard.sinks,
                    },
                    Some(Some(Err(e))) => {
                        tracing::error!(object = %name, error = %e, "unreadable job shard; keeping the current jobs");
                        metrics.reloads.get_or_create(&outcome(false)).inc();
                        continue;
                    }
                };
                secrets.load(&set).await;
                metrics.reloads.get_or_create(&outcome(true)).inc();
                tracing::info!(object = %name, jobs = set.jobs.len(), sinks = set.sinks.len(), "job shard loaded");
                tx.send_replace(Arc::new(set));
            }
        });
        Self { rx }
    }
}

/// Reports scrape health for this node every `every`, writing only when something changed
/// (a job starts or stops failing) or, for last-success times, at most once a minute.
pub fn spawn_health_reporter(
    client: Client,
    namespace: &str,
    node: Option<String>,
    pipeline: Arc<Pipeline>,
    jobs: watch::Receiver<Arc<JobSet>>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let name = health_object_name(node.as_deref());
    tokio::spawn(async move {
        let mut last_written: Option<(HealthReport, Instant)> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let report = health_report(node.clone(), &jobs.borrow(), &pipeline, every);
            let due = match &last_written {
                None => true,
                Some((prev, at)) => {
                    prev.failing != report.failing
                        || prev.jobs != report.jobs
                        || (prev.last_success != report.last_success
                            && at.elapsed() >= Duration::from_secs(60))
                }
            };
            if !due {
                continue;
            }
            let mut labels = BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (COMPONENT_LABEL.to_string(), COMPONENT_HEALTH.to_string()),
            ]);
            if let Some(n) = node.as_deref().and_then(node_label_value) {
                labels.insert(SHARD_NODE_LABEL.into(), n.into());
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    HEALTH_DATA_KEY.to_string(),
                    report.to_json(),
                )])),
                ..Default::default()
            };
            match api
                .patch(
                    &name,
                    &PatchParams::apply(HEALTH_FIELD_MANAGER).force(),
                    &Patch::Apply(&cm),
                )
                .await
            {
                Ok(_) => last_written = Some((report, Instant::now())),
                Err(e) => tracing::warn!(error = %e, "cannot write the scrape-health report"),
            }
        }
    })
}

/// The report for the current jobs.
pub fn health_report(
    node: Option<String>,
    set: &JobSet,
    pipeline: &Pipeline,
    resolution: Duration,
) -> HealthReport {
    let health = pipeline.health();
    let step = resolution.as_secs().max(1);
    let mut report = HealthReport {
        format_version: HEALTH_FORMAT_VERSION,
        node,
        jobs: u32::try_from(set.jobs.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    for job in &set.jobs {
        let Some(h) = health.get(&job.id) else {
            continue;
        };
        if h.consecutive_failures > 0 {
            report.failing.insert(
                job.id.clone(),
                FailingJob {
                    reason: h.last_reason.unwrap_or_default(),
                    message: h.last_error.clone().unwrap_or_default(),
                    // Capped so that a long outage does not rewrite the report at every scrape.
                    consecutive_failures: h.consecutive_failures.min(3),
                },
            );
        }
        if let Some(t) = h.last_success
            && let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH)
        {
            let secs = since.as_secs() / step * step;
            let e = report
                .last_success
                .entry(origin_key(&job.origin))
                .or_default();
            *e = (*e).max(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }
    report
}
