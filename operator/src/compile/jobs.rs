//! From a pod's endpoint, with every default and limit applied, to scrape jobs: the port it
//! resolves to, and its labels through the shared label pipeline ([`kubeprof_crds::labels`]):
//! discovery labels, relabelling, `service_name` and `__*` stripping. Targets and annotated pods
//! both end here.

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    Duration, ResolvedProfile, Scheme, conditions,
    constants::labels,
    job::{JobOrigin, OriginKind, ScrapeAuth, ScrapeJob, ScrapeTls},
    labels as pipeline,
    relabel::{Labels, compile_all},
};

use super::{PodInfo, PortInfo, Problem, policies::Rules};

/// An endpoint with every default and limit applied.
#[derive(Clone, Debug)]
pub(super) struct EndpointSettings {
    pub(super) scheme: Scheme,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) params: BTreeMap<String, Vec<String>>,
    pub(super) relabelings: Vec<kubeprof_crds::RelabelConfig>,
    pub(super) auth: Option<ScrapeAuth>,
    pub(super) tls: Option<ScrapeTls>,
    pub(super) sinks: Vec<String>,
    pub(super) service_name: Option<String>,
    pub(super) static_labels: Labels,
}

/// Discovery labels of a pod's container port (the shared label pipeline's first step).
pub(super) fn discovery_labels(
    pod: &PodInfo,
    container: &str,
    port: &PortInfo,
    address: &str,
    scheme: Scheme,
) -> Labels {
    pipeline::pod_discovery_labels(
        &pipeline::PodContainer {
            namespace: &pod.namespace,
            pod: &pod.name,
            uid: &pod.uid,
            ip: pod.ip.as_deref(),
            node: pod.node.as_deref(),
            labels: &pod.labels,
            annotations: &pod.annotations,
            container,
        },
        Some(&pipeline::TargetPort {
            name: port.name.as_deref(),
            number: port.number,
            address,
            scheme: scheme.as_str(),
        }),
    )
}

/// The containers and ports a pod serves `port`/`port_number` on. A name may be declared by
/// several containers: each is a target of its own, as in Prometheus' PodMonitor. A number is
/// one socket (the containers of a pod share its network), so it is served once, by the first
/// container declaring it.
pub(super) fn resolve_ports(
    pod: &PodInfo,
    name: Option<&str>,
    number: Option<i32>,
) -> Vec<(String, PortInfo)> {
    let mut out: Vec<(String, PortInfo)> = Vec::new();
    for c in &pod.containers {
        for p in &c.ports {
            let hit = match (name, number) {
                (Some(n), _) => p.name.as_deref() == Some(n),
                (None, Some(n)) => p.number == n,
                (None, None) => false,
            };
            if hit && !out.iter().any(|(_, seen)| seen.number == p.number) {
                out.push((c.name.clone(), p.clone()));
            }
        }
    }
    if !out.is_empty() {
        return out;
    }
    // A number no container declares is still reachable: use it on the first container.
    match (name, number, pod.containers.first()) {
        (None, Some(n), Some(c)) if (1..=65535).contains(&n) => vec![(
            c.name.clone(),
            PortInfo {
                name: None,
                number: n,
            },
        )],
        _ => Vec::new(),
    }
}

/// The `job` label of jobs from `origin`: `<namespace>/<target>` for a ProfilingTarget,
/// `kubeprof/annotations` for annotated pods (Alloy names it after its scrape component).
pub(super) fn job_label(origin: &JobOrigin) -> String {
    match origin.kind {
        OriginKind::Annotations => "kubeprof/annotations".to_owned(),
        _ => format!("{}/{}", origin.namespace, origin.name),
    }
}

/// The policy's `podLabels` switch: `__meta_kubernetes_pod_label_<name>` becomes `<name>`,
/// never over a label already set.
pub(super) fn copy_pod_labels(l: &mut Labels) {
    let copies: Vec<(String, String)> = l
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(labels::META_POD_LABEL_PREFIX)
                .filter(|name| !name.is_empty())
                .map(|name| (name.to_owned(), v.clone()))
        })
        .collect();
    for (k, v) in copies {
        l.entry(k).or_insert(v);
    }
}

/// One job per profile, with relabelling applied here: `None` when the rules drop the target.
pub(super) fn build_jobs(
    origin: &JobOrigin,
    mut labels: Labels,
    profiles: &[ResolvedProfile],
    endpoint: &EndpointSettings,
    rules: &Rules<'_>,
    problems: &mut BTreeSet<Problem>,
) -> Vec<ScrapeJob> {
    let mut rules_list = endpoint.relabelings.clone();
    if let Some(p) = rules.policy {
        rules_list.extend(p.spec.relabelings.iter().cloned());
    }
    let compiled = match compile_all(&rules_list) {
        Ok(c) => c,
        Err(e) => {
            problems.insert(Problem {
                reason: conditions::REASON_INVALID_SPEC,
                message: e.to_string(),
            });
            return Vec::new();
        }
    };
    // The pod's service-name annotations (already in the discovery labels) beat the target's
    // `serviceName`, as in Grafana's annotation conventions.
    if let Some(service) = &endpoint.service_name {
        labels
            .entry(labels::SERVICE_NAME.into())
            .or_insert_with(|| service.clone());
    }
    for (k, v) in &endpoint.static_labels {
        labels.insert(k.clone(), v.clone());
    }
    if rules.policy.is_some_and(|p| p.spec.pod_labels) {
        copy_pod_labels(&mut labels);
    }
    // Prometheus and Alloy set `job` before relabelling; a static label may override it.
    labels
        .entry(labels::JOB.into())
        .or_insert_with(|| job_label(origin));
    let external = rules
        .policy
        .map(|p| p.spec.external_labels.clone())
        .unwrap_or_default();
    let mut jobs = Vec::new();
    for profile in profiles {
        let mut l = labels.clone();
        l.insert(labels::PROFILE_PATH.into(), profile.path.clone());
        let Some(l) = pipeline::apply_rules(l, &profile.name, &compiled) else {
            continue;
        };
        let Some(address) = l.get(labels::ADDRESS).cloned() else {
            continue;
        };
        // Relabelling is done here, once: publishing only the final labels keeps shards small
        // (a pod's annotations alone can be kilobytes). External labels travel separately and
        // are added by the scraper, which runs the same pipeline again without rules.
        // After the rules, as Alloy's delta appender does: a rule cannot lose the mark that
        // keeps Pyroscope from computing deltas of deltas.
        let mut l = l;
        pipeline::mark_delta(&mut l, profile);
        let l = pipeline::finish(l, &profile.name, &Labels::new());
        jobs.push(ScrapeJob {
            id: ScrapeJob::identity(origin, &address, &profile.name, &profile.path),
            origin: origin.clone(),
            address,
            scheme: endpoint.scheme,
            profile: profile.clone(),
            params: endpoint.params.clone(),
            interval: endpoint.interval,
            timeout: endpoint.timeout,
            labels: l,
            relabelings: Vec::new(),
            external_labels: external.clone(),
            auth: endpoint.auth.clone(),
            tls: endpoint.tls.clone(),
            sinks: endpoint.sinks.clone(),
            max_profile_bytes: rules
                .policy
                .and_then(|p| p.spec.limits.max_profile_size_bytes)
                .and_then(|b| u64::try_from(b).ok()),
        });
    }
    jobs
}
