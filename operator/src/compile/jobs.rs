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
    relabel::{CompiledRelabel, Labels, RelabelConfig, compile_all},
};

use super::{PodInfo, PolicyInput, PortInfo, Problem, policies::Rules};

/// An endpoint with every default and limit applied.
#[derive(Clone, Debug)]
pub(super) struct EndpointSettings {
    pub(super) scheme: Scheme,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) params: BTreeMap<String, Vec<String>>,
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

/// Relabel rules compiled once per endpoint and policy (not once per pod): the endpoint's,
/// then the policy's; an invalid rule is the problem to report on every pod it would run on.
pub(super) type CompiledRules = Result<Vec<CompiledRelabel>, Problem>;

/// The endpoint's `relabelings` and then the governing policy's, compiled.
pub(super) fn compile_rules(
    endpoint: &[RelabelConfig],
    policy: Option<&PolicyInput>,
) -> CompiledRules {
    let mut all = endpoint.to_vec();
    if let Some(p) = policy {
        all.extend(p.spec.relabelings.iter().cloned());
    }
    compile_all(&all).map_err(|e| Problem {
        reason: conditions::REASON_INVALID_SPEC,
        message: e.to_string(),
    })
}

/// One job per profile, with relabelling (`compiled`: the endpoint's rules, then the policy's)
/// applied here: none when the rules drop the target.
pub(super) fn build_jobs(
    origin: &JobOrigin,
    mut labels: Labels,
    profiles: &[ResolvedProfile],
    endpoint: &EndpointSettings,
    rules: &Rules<'_>,
    compiled: &CompiledRules,
    problems: &mut BTreeSet<Problem>,
) -> Vec<ScrapeJob> {
    let compiled = match compiled {
        Ok(c) => c,
        Err(problem) => {
            problems.insert(problem.clone());
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
    let max_profile_bytes = rules
        .policy
        .and_then(|p| p.spec.limits.max_profile_size_bytes)
        .and_then(|b| u64::try_from(b).ok());
    let job = |labels: Labels, address: String, profile: &ResolvedProfile| ScrapeJob {
        id: ScrapeJob::identity(origin, &address, &profile.name, &profile.path),
        origin: origin.clone(),
        address,
        scheme: endpoint.scheme,
        profile: profile.clone(),
        params: endpoint.params.clone(),
        interval: endpoint.interval,
        timeout: endpoint.timeout,
        labels,
        relabelings: Vec::new(),
        external_labels: external.clone(),
        auth: endpoint.auth.clone(),
        tls: endpoint.tls.clone(),
        sinks: endpoint.sinks.clone(),
        max_profile_bytes,
    };
    if compiled.is_empty() {
        // No rule can read `__name__` or `__profile_path__`: the pipeline runs once, not per
        // profile.
        let Some((common, address)) = finish_common(labels) else {
            return Vec::new();
        };
        return profiles
            .iter()
            .map(|profile| job(for_profile(&common, profile), address.clone(), profile))
            .collect();
    }
    profiles
        .iter()
        .filter_map(|profile| {
            let l = finish_each(labels.clone(), profile, compiled)?;
            let address = l.1;
            Some(job(l.0, address, profile))
        })
        .collect()
}

/// Without relabel rules, the pipeline's result is the same for every profile but for
/// `__name__` and `__delta__`: the labels all profiles share (`__name__` empty unless a static
/// label set it) and the address, as [`finish_each`] would give them.
fn finish_common(l: Labels) -> Option<(Labels, String)> {
    let address = l.get(labels::ADDRESS).cloned()?;
    Some((pipeline::finish(l, "", &Labels::new()), address))
}

/// One profile's labels from [`finish_common`]'s.
fn for_profile(common: &Labels, profile: &ResolvedProfile) -> Labels {
    let mut l = common.clone();
    if l.get(labels::NAME).is_none_or(String::is_empty) {
        l.insert(labels::NAME.into(), profile.name.clone());
    }
    pipeline::mark_delta(&mut l, profile);
    l
}

/// The labels of one profile through the whole pipeline, and the address they scrape: `None`
/// when a rule drops the target.
fn finish_each(
    mut l: Labels,
    profile: &ResolvedProfile,
    compiled: &[CompiledRelabel],
) -> Option<(Labels, String)> {
    l.insert(labels::PROFILE_PATH.into(), profile.path.clone());
    let mut l = pipeline::apply_rules(l, &profile.name, compiled)?;
    let address = l.get(labels::ADDRESS).cloned()?;
    // Relabelling is done here, once: publishing only the final labels keeps shards small
    // (a pod's annotations alone can be kilobytes). External labels travel separately and
    // are added by the scraper, which runs the same pipeline again without rules.
    // After the rules, as Alloy's delta appender does: a rule cannot lose the mark that
    // keeps Pyroscope from computing deltas of deltas.
    pipeline::mark_delta(&mut l, profile);
    Some((pipeline::finish(l, &profile.name, &Labels::new()), address))
}

#[cfg(test)]
mod tests {
    use kubeprof_crds::ProfileKind;
    use pretty_assertions::assert_eq;

    use super::*;

    /// The shortcut taken without relabel rules gives what the whole pipeline gives, profile
    /// by profile, whatever labels and static labels the endpoint has.
    #[test]
    fn without_rules_the_shared_labels_equal_the_per_profile_pipeline() {
        let pod = PodInfo {
            namespace: "team-a".into(),
            name: "checkout-1".into(),
            uid: "u1".into(),
            labels: [("app".to_string(), "checkout".to_string())].into(),
            annotations: [(
                "profiles.grafana.com/service_name".to_string(),
                "shop".to_string(),
            )]
            .into(),
            node: Some("n1".into()),
            ip: Some("10.0.0.7".into()),
            running: true,
            ..Default::default()
        };
        let port = PortInfo {
            name: Some("pprof".into()),
            number: 6060,
        };
        let base = discovery_labels(&pod, "app", &port, "10.0.0.7:6060", Scheme::Http);
        let variants: Vec<(&str, Labels)> = vec![
            ("discovery labels", base.clone()),
            ("no address", {
                let mut l = base.clone();
                l.remove(labels::ADDRESS);
                l
            }),
            ("static __name__", {
                let mut l = base.clone();
                l.insert(labels::NAME.into(), "renamed".into());
                l
            }),
            ("empty __name__", {
                let mut l = base.clone();
                l.insert(labels::NAME.into(), String::new());
                l
            }),
            ("static __delta__ and instance", {
                let mut l = base.clone();
                l.insert(labels::DELTA.into(), "true".into());
                l.insert(labels::INSTANCE.into(), "mine".into());
                l
            }),
            ("empty service_name", {
                let mut l = base.clone();
                l.retain(|k, _| !k.starts_with(labels::META_POD_ANNOTATION_PREFIX));
                l.insert(labels::SERVICE_NAME.into(), String::new());
                l
            }),
        ];
        let mut profiles: Vec<ResolvedProfile> = ProfileKind::ALL
            .into_iter()
            .map(|k| ResolvedProfile {
                name: k.metric_name().into(),
                kind: Some(k),
                path: k.default_path().into(),
                delta: k.cumulative(),
                seconds: None,
                pre_delta: false,
            })
            .collect();
        profiles.push(ResolvedProfile::custom("fgprof", None, false, None, 15));
        for (what, l) in variants {
            let common = finish_common(l.clone());
            for profile in &profiles {
                let shortcut = common
                    .as_ref()
                    .map(|(c, a)| (for_profile(c, profile), a.clone()));
                assert_eq!(
                    shortcut,
                    finish_each(l.clone(), profile, &[]),
                    "{what}, {}",
                    profile.name
                );
            }
        }
    }
}
