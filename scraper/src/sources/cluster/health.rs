//! Scrape health, reported back in a ConfigMap beside the shard. The operator creates that
//! ConfigMap for every node it publishes jobs for; the scraper may only patch it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};
use kubeprof_crds::{
    constants::{
        COMPONENT_HEALTH, COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SHARD_NODE_LABEL,
    },
    health::{
        EBPF_HEALTH_DATA_KEY, EbpfHealth, EbpfReport, FailingJob, HEALTH_DATA_KEY,
        HEALTH_FORMAT_VERSION, HealthReport, health_object_name, node_label_value, origin_key,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    pull::Pipeline,
    sources::{EbpfStatus, JobSet},
};

/// Field manager of the scraper's health reports.
pub const HEALTH_FIELD_MANAGER: &str = "kubeprof.io/scraper";
/// Field manager of an eBPF-only scraper's key of the same reports: server-side apply gives
/// each key of `data` to the manager that applied it, so neither writer removes the other's.
pub const EBPF_HEALTH_FIELD_MANAGER: &str = "kubeprof.io/scraper-ebpf";

/// The reason a pull-only scraper reports for a shard that asks for eBPF.
pub const NOT_DEPLOYED: &str = "not_deployed: this node's scraper runs pull jobs only \
     (--sources pull) and no eBPF profiler runs here; install the chart with ebpf.enabled=true";

/// What a health report is made of.
#[derive(Debug)]
pub struct Observed {
    /// The pull loop, with each job's health.
    pub pipeline: Arc<Pipeline>,
    /// The current jobs.
    pub jobs: watch::Receiver<Arc<JobSet>>,
    /// The eBPF source's state, when this process runs it (`None`: `--sources pull`).
    pub ebpf: Option<EbpfStatus>,
}

/// Reports scrape health for this node every `every`, writing only when something changed
/// (a job starts or stops failing) or, for last-success times, at most once a minute.
pub fn spawn_health_reporter(
    client: Client,
    namespace: &str,
    node: Option<String>,
    observed: Observed,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let Observed {
        pipeline,
        jobs,
        ebpf,
    } = observed;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let name = health_object_name(node.as_deref());
    tokio::spawn(async move {
        let mut last_written: Option<(HealthReport, Instant)> = None;
        let mut waiting = false;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (mut report, plan) = {
                let set = jobs.borrow();
                (
                    health_report(node.clone(), &set, &pipeline, every),
                    set.ebpf.is_some(),
                )
            };
            report.ebpf = match &ebpf {
                Some(status) => status.get(),
                None => plan.then(|| EbpfHealth {
                    running: false,
                    reason: Some(NOT_DEPLOYED.into()),
                }),
            };
            let due = match &last_written {
                None => true,
                Some((prev, at)) => {
                    prev.failing != report.failing
                        || prev.refused != report.refused
                        || prev.jobs != report.jobs
                        || prev.ebpf != report.ebpf
                        || (prev.last_success != report.last_success
                            && at.elapsed() >= Duration::from_secs(60))
                }
            };
            if !due {
                continue;
            }
            if apply_report(
                &api,
                &name,
                node.as_deref(),
                (HEALTH_DATA_KEY, report.to_json()),
                HEALTH_FIELD_MANAGER,
                &mut waiting,
            )
            .await
            {
                last_written = Some((report, Instant::now()));
            }
        }
    })
}

/// Reports the eBPF profiler's state for this node (an eBPF-only scraper: `--sources ebpf`)
/// in the key [`EBPF_HEALTH_DATA_KEY`] of the node's health report, checked every `every` and
/// written when it changes. Nothing while no plan asks for eBPF.
pub fn spawn_ebpf_reporter(
    client: Client,
    namespace: &str,
    node: Option<String>,
    ebpf: EbpfStatus,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let name = health_object_name(node.as_deref());
    tokio::spawn(async move {
        let mut last_written: Option<EbpfHealth> = None;
        let mut waiting = false;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(state) = ebpf.get() else { continue };
            if last_written.as_ref() == Some(&state) {
                continue;
            }
            let report = EbpfReport {
                format_version: HEALTH_FORMAT_VERSION,
                node: node.clone(),
                ebpf: state.clone(),
            };
            if apply_report(
                &api,
                &name,
                node.as_deref(),
                (EBPF_HEALTH_DATA_KEY, report.to_json()),
                EBPF_HEALTH_FIELD_MANAGER,
                &mut waiting,
            )
            .await
            {
                last_written = Some(state);
            }
        }
    })
}

/// Writes `key` of the report `name` by server-side apply as `manager`; whether it was written.
/// `waiting` remembers that the report is not there (or not ours) yet, to say so once.
async fn apply_report(
    api: &Api<ConfigMap>,
    name: &str,
    node: Option<&str>,
    (key, json): (&str, String),
    manager: &str,
    waiting: &mut bool,
) -> bool {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (COMPONENT_LABEL.to_string(), COMPONENT_HEALTH.to_string()),
    ]);
    if let Some(n) = node.and_then(node_label_value) {
        labels.insert(SHARD_NODE_LABEL.into(), n.into());
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), json)])),
        ..Default::default()
    };
    match api
        .patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&cm),
        )
        .await
    {
        Ok(_) => {
            *waiting = false;
            true
        }
        // The scraper may only patch a report the operator created (RBAC names each one; a
        // create cannot be limited by name). The operator creates it, and grants the patch,
        // before it publishes this node's jobs: until then, try again at the next tick, and
        // say so once.
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
            if !*waiting {
                tracing::info!(object = %name, reason = %e.message, "the scrape-health report is not created yet (or not ours to write); trying again");
                *waiting = true;
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, key, "cannot write the scrape-health report");
            false
        }
    }
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
    let ids: std::collections::HashSet<&str> = set.jobs.iter().map(|j| j.id.as_str()).collect();
    report.refused = pipeline.refused(|id| ids.contains(id));
    report
}
