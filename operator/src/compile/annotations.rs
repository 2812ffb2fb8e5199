//! Pods that opt in through annotations, as Grafana Alloy and the Pyroscope agent users write
//! them.
//!
//! Grafana: `profiles.grafana.com/<type>.scrape: "true"` turns `<type>` on (cpu, memory,
//! goroutine, mutex, block, or any other name, scraped at `/debug/pprof/<name>` unless `.path`
//! says otherwise); `.port` (number) or `.port_name` picks the port — without either, a pod that
//! declares exactly one port uses it; `.path` and `.scheme` override.
//!
//! Pyroscope (legacy): `pyroscope.io/scrape: "true"` with `pyroscope.io/port`; the policy's
//! default types, switched by `pyroscope.io/profile-{cpu,mem,goroutines,mutex,block}-enabled`;
//! `pyroscope.io/application-name` names the service (see the label pipeline for every
//! service-name annotation). When both conventions are present, the Grafana keys win for the
//! types they name.
//!
//! `fgprof` (at `/debug/fgprof`, sampled over `seconds` like CPU) and `godeltaprof_memory`,
//! `godeltaprof_mutex`, `godeltaprof_block` (at `/debug/pprof/delta_{heap,mutex,block}`, sent
//! as `memory`, `mutex`, `block` with no client-side delta) follow Alloy's `pyroscope.scrape`.

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    ProfileKind, ResolvedProfile, Scheme, conditions,
    constants::{GRAFANA_PREFIX, pyroscope},
    job::{JobOrigin, OriginKind, ScrapeJob},
    policy::AnnotationSettings,
};

use super::{
    Decision, PodInfo, PodPart, PolicyShare, Problem,
    jobs::{EndpointSettings, build_jobs, discovery_labels, resolve_ports},
    policies::{Governing, Rules},
};

/// The jobs `pod`'s annotations ask for, as the policy governing its namespace allows, leaving
/// out the profiles its targets already scrape (`part.covered`), unless the policy's sampling
/// leaves the pod out. A pod with such jobs counts towards that policy's targets; its problems
/// are the policy's, prefixed with the pod. A pod that opts in where no policy governs gets no
/// job (there is no sink to send to) and is marked ungoverned.
pub(super) fn pod_jobs(
    pod: &PodInfo,
    governing: &Governing,
    decision: &Decision,
    part: &mut PodPart,
) {
    if !(pod.running && pod.ip.is_some()) {
        return;
    }
    let rules = governing.rules(&pod.namespace);
    // No policy, no sink: the pod is only counted.
    let Some(policy) = rules.policy else {
        part.shares.ungoverned = opts_in(pod);
        return;
    };
    let settings = policy.spec.annotations.clone();
    if !settings.enabled {
        return;
    }
    let mut problems = BTreeSet::new();
    let jobs = jobs_of(pod, &settings, &rules, &part.covered, &mut problems);
    part.annotation_jobs = jobs.len();
    let kept = !jobs.is_empty() && !decision.annotations_unsampled;
    let share = PolicyShare {
        policy: policy.name.clone(),
        annotated: !jobs.is_empty(),
        counts: kept,
        problems: problems
            .into_iter()
            .map(|problem| Problem {
                reason: problem.reason,
                message: format!("pod {}/{}: {}", pod.namespace, pod.name, problem.message),
            })
            .collect(),
    };
    if share.annotated || !share.problems.is_empty() {
        part.shares.policy = Some(share);
    }
    if kept {
        part.jobs.extend(jobs);
    }
}

/// Whether a pod asks to be scraped in either convention.
fn opts_in(pod: &PodInfo) -> bool {
    truthy(pod.annotations.get(pyroscope::SCRAPE)) == Some(true)
        || pod.annotations.iter().any(|(k, v)| {
            k.strip_prefix(GRAFANA_PREFIX)
                .is_some_and(|rest| rest.ends_with(".scrape"))
                && truthy(Some(v)) == Some(true)
        })
}

/// One profile type requested by annotations.
#[derive(Debug, Default, Clone)]
struct Request {
    port: Option<i32>,
    port_name: Option<String>,
    path: Option<String>,
    scheme: Option<Scheme>,
}

fn truthy(v: Option<&str>) -> Option<bool> {
    v.map(|v| matches!(v.trim(), "true" | "True" | "TRUE" | "1" | "yes"))
}

fn kind_of(name: &str) -> Option<ProfileKind> {
    ProfileKind::ALL
        .into_iter()
        .find(|k| k.api_name() == name || k.metric_name() == name)
}

fn grafana(pod: &PodInfo, problems: &mut BTreeSet<Problem>) -> BTreeMap<String, Request> {
    let mut types: BTreeMap<String, (bool, Request)> = BTreeMap::new();
    for (key, value) in pod.annotations.iter() {
        let Some(rest) = key.strip_prefix(GRAFANA_PREFIX) else {
            continue;
        };
        let Some((kind, field)) = rest.rsplit_once('.') else {
            continue;
        };
        let entry = types.entry(kind.to_owned()).or_default();
        match field {
            "scrape" => entry.0 = truthy(Some(value)).unwrap_or(false),
            "port" => match value.trim().parse::<i32>() {
                Ok(n) if (1..=65535).contains(&n) => entry.1.port = Some(n),
                _ => {
                    problems.insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("{key}: {value:?} is not a port number"),
                    });
                }
            },
            "port_name" => entry.1.port_name = Some(value.into()),
            "path" if value.starts_with('/') => entry.1.path = Some(value.into()),
            "scheme" => match value.parse() {
                Ok(s) => entry.1.scheme = Some(s),
                Err(e) => {
                    problems.insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("{key}: {e}"),
                    });
                }
            },
            _ => {}
        }
    }
    types
        .into_iter()
        .filter(|(_, (on, _))| *on)
        .map(|(k, (_, r))| (k, r))
        .collect()
}

fn pyroscope_types(pod: &PodInfo, defaults: &[ProfileKind]) -> BTreeMap<String, Request> {
    if truthy(pod.annotations.get(pyroscope::SCRAPE)) != Some(true) {
        return BTreeMap::new();
    }
    let port = pod
        .annotations
        .get(pyroscope::PORT)
        .and_then(|p| p.trim().parse().ok());
    let scheme = pod
        .annotations
        .get(pyroscope::SCHEME)
        .and_then(|s| s.parse().ok());
    let switches = [
        (ProfileKind::Cpu, pyroscope::PROFILE_CPU_ENABLED),
        (ProfileKind::Memory, pyroscope::PROFILE_MEM_ENABLED),
        (
            ProfileKind::Goroutine,
            pyroscope::PROFILE_GOROUTINES_ENABLED,
        ),
        (ProfileKind::Mutex, pyroscope::PROFILE_MUTEX_ENABLED),
        (ProfileKind::Block, pyroscope::PROFILE_BLOCK_ENABLED),
    ];
    switches
        .into_iter()
        .filter(|(kind, key)| {
            truthy(pod.annotations.get(key)).unwrap_or_else(|| defaults.contains(kind))
        })
        .map(|(kind, _)| {
            (
                kind.api_name().to_owned(),
                Request {
                    port,
                    scheme,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// The jobs a pod's annotations ask for, skipping the profiles a target already covers.
fn jobs_of(
    pod: &PodInfo,
    settings: &AnnotationSettings,
    rules: &Rules<'_>,
    covered: &BTreeSet<String>,
    problems: &mut BTreeSet<Problem>,
) -> Vec<ScrapeJob> {
    let mut requests = BTreeMap::new();
    if settings.pyroscope {
        requests = pyroscope_types(pod, &rules.defaults.profile_types);
    }
    if settings.grafana {
        requests.extend(grafana(pod, problems));
    }
    let Some(ip) = &pod.ip else { return Vec::new() };
    let origin = JobOrigin {
        kind: OriginKind::Annotations,
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    };
    let interval = rules.interval(None, problems);
    let timeout = rules
        .defaults
        .scrape_timeout
        .min(kubeprof_crds::Duration::from(interval.std().mul_f64(0.8)));
    let cpu_seconds = rules.defaults.cpu_seconds.unwrap_or_else(|| {
        u32::try_from(interval.std().as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    });
    let mut out = Vec::new();
    for (name, req) in requests {
        let kind = kind_of(&name);
        let profile = match kind {
            Some(kind) => ResolvedProfile {
                name: kind.metric_name().to_owned(),
                kind: Some(kind),
                path: req
                    .path
                    .clone()
                    .unwrap_or_else(|| kind.default_path().to_owned()),
                delta: kind.cumulative(),
                seconds: (kind == ProfileKind::Cpu).then_some(cpu_seconds),
                pre_delta: false,
            },
            // fgprof and godeltaprof_* get Alloy's paths and names; others /debug/pprof/<name>.
            None => ResolvedProfile::custom(&name, req.path.as_deref(), false, None, cpu_seconds),
        };
        if covered.contains(&profile.name) {
            continue;
        }
        let profiles = rules.allowed(vec![profile], problems);
        if profiles.is_empty() {
            continue;
        }
        let single = pod.containers.iter().flat_map(|c| &c.ports).count() == 1;
        let ports = match (&req.port_name, req.port) {
            (Some(n), _) => resolve_ports(pod, Some(n), None),
            (None, Some(n)) => resolve_ports(pod, None, Some(n)),
            (None, None) if single => pod
                .containers
                .iter()
                .find_map(|c| c.ports.first().map(|p| (c.name.clone(), p.clone())))
                .into_iter()
                .collect(),
            (None, None) => Vec::new(),
        };
        if ports.is_empty() {
            problems.insert(Problem {
                reason: conditions::REASON_PORT_NOT_FOUND,
                message: format!("annotations for {name} name no port the pod declares"),
            });
            continue;
        }
        let scheme = req.scheme.unwrap_or_default();
        for (container, port) in ports {
            let address = format!("{ip}:{}", port.number);
            let labels = discovery_labels(pod, &container, &port, &address, scheme);
            let settings = EndpointSettings {
                scheme,
                interval,
                timeout,
                params: BTreeMap::new(),
                auth: None,
                tls: None,
                sinks: rules.sinks(&[], problems),
                // The service-name annotations are read by the label pipeline.
                service_name: None,
                static_labels: Default::default(),
            };
            out.extend(build_jobs(
                &origin,
                labels,
                &profiles,
                &settings,
                rules,
                rules.relabel,
                problems,
            ));
        }
    }
    out
}
