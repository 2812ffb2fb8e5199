//! ProfilingTargets: the pods each one selects (by label, in the namespaces its
//! `namespaceSelector` names), those of them sampling keeps, each endpoint's port on them, and
//! one job per pod, endpoint and profile type, with target values over policy defaults and
//! policy limits over both.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::SelectorExt;
use kubeprof_crds::{
    Duration, ResolvedProfile, conditions,
    job::{CredentialRef, JobOrigin, OriginKind, ScrapeAuth, ScrapeTls},
    target::Endpoint,
};

use super::{
    Covered, Inputs, NamespaceInfo, Placed, PolicyFacts, Problem, TargetFacts, TargetInput,
    jobs::{EndpointSettings, build_jobs, discovery_labels, resolve_port},
    policies::{Governing, Rules},
    sampling::{self, Clock},
    selector, validate,
};

/// What the targets hand on to the rest of the compile.
#[derive(Default)]
pub(super) struct TargetJobs {
    /// Jobs with the node of their pod.
    pub(super) jobs: Vec<Placed>,
    /// The (pod, profile) pairs a target scrapes.
    pub(super) covered: Covered,
    /// Endpoints scraped per namespace, against the policy's `maxTargetsPerNamespace`.
    per_namespace: BTreeMap<String, i32>,
}

/// The jobs of every ProfilingTarget, in (namespace, name) order. Each target's facts go into
/// `facts`; a target the API server would have refused yields no job. Each target that is
/// neither suspended nor refused counts towards the policy governing its namespace.
pub(super) fn jobs(
    inputs: &Inputs,
    governing: &Governing<'_>,
    clock: &mut Clock,
    facts: &mut BTreeMap<(String, String), TargetFacts>,
    policy_facts: &mut BTreeMap<String, PolicyFacts>,
) -> TargetJobs {
    let mut out = TargetJobs::default();
    let mut targets: Vec<&TargetInput> = inputs.targets.iter().collect();
    targets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for t in targets {
        let refused = validate::target(&t.spec);
        let target_facts = if t.spec.suspend || !refused.is_empty() {
            TargetFacts {
                problems: refused,
                ..Default::default()
            }
        } else {
            if let Some(p) = governing.policy(&t.namespace) {
                policy_facts.entry(p.name.clone()).or_default().targets += 1;
            }
            target(t, inputs, governing, clock, &mut out)
        };
        facts.insert((t.namespace.clone(), t.name.clone()), target_facts);
    }
    out
}

/// One target's jobs (into `out`) and facts.
fn target(
    t: &TargetInput,
    inputs: &Inputs,
    governing: &Governing<'_>,
    clock: &mut Clock,
    out: &mut TargetJobs,
) -> TargetFacts {
    let mut facts = TargetFacts::default();
    let namespaces = target_namespaces(t, &inputs.namespaces, &mut facts.problems);
    // An invalid selector selects no pod.
    let selector = match selector::parse(&t.spec.selector) {
        Ok(s) => Some(s),
        Err(e) => {
            facts.problems.insert(Problem {
                reason: conditions::REASON_INVALID_SPEC,
                message: format!("selector: {e}"),
            });
            None
        }
    };
    let matched: Vec<_> = inputs
        .pods
        .iter()
        .filter(|p| {
            p.running
                && p.ip.is_some()
                && namespaces.contains(&p.namespace)
                && selector.as_ref().is_some_and(|s| s.matches(&p.labels))
        })
        .collect();
    // The target's sampling replaces the policy's.
    let keep = sampling::sample(
        &matched,
        |ns| {
            t.spec
                .sampling
                .as_ref()
                .or_else(|| governing.policy(ns).and_then(|p| p.spec.sampling.as_ref()))
        },
        clock,
    );
    facts.matched_pods = i32::try_from(matched.len()).unwrap_or(i32::MAX);
    for (pod, _) in matched.into_iter().zip(keep).filter(|(_, keep)| *keep) {
        let Some(ip) = &pod.ip else { continue };
        facts.sampled_pods += 1;
        let rules = governing.rules(&pod.namespace);
        let limit = rules
            .policy
            .and_then(|p| p.spec.limits.max_targets_per_namespace);
        for (i, e) in t.spec.endpoints.iter().enumerate() {
            let Some((container, port)) = resolve_port(pod, e.port.as_deref(), e.port_number)
            else {
                facts.problems.insert(Problem {
                    reason: conditions::REASON_PORT_NOT_FOUND,
                    message: format!(
                        "endpoints[{i}]: pod {} declares no port {}",
                        pod.name,
                        e.port
                            .clone()
                            .unwrap_or_else(|| e.port_number.unwrap_or(0).to_string())
                    ),
                });
                continue;
            };
            let count = out.per_namespace.entry(pod.namespace.clone()).or_default();
            if limit.is_some_and(|l| *count >= l) {
                facts.problems.insert(Problem {
                    reason: conditions::REASON_LIMIT_EXCEEDED,
                    message: format!(
                        "namespace {} is at the policy's maxTargetsPerNamespace ({})",
                        pod.namespace,
                        limit.unwrap_or(0)
                    ),
                });
                continue;
            }
            *count += 1;
            let (settings, profiles) = endpoint_settings(t, e, &rules, &mut facts.problems);
            let address = format!("{ip}:{}", port.number);
            let l = discovery_labels(pod, &container, &port, &address, settings.scheme);
            let origin = JobOrigin {
                kind: OriginKind::ProfilingTarget,
                namespace: t.namespace.clone(),
                name: t.name.clone(),
            };
            for job in build_jobs(
                &origin,
                l,
                &profiles,
                &settings,
                &rules,
                &mut facts.problems,
            ) {
                out.covered
                    .insert((pod.uid.clone(), job.profile.name.clone()));
                facts.job_ids.push(job.id.clone());
                out.jobs.push((pod.node.clone(), job));
            }
        }
    }
    if facts.matched_pods == 0 {
        facts.problems.insert(Problem {
            reason: conditions::REASON_NO_MATCHING_PODS,
            message: "no running pod with an IP matches the selector".into(),
        });
    }
    facts.active_jobs = facts.job_ids.len() as i32;
    facts
}

/// An endpoint's settings and profiles after the governing rules; a problem for each value
/// they changed.
fn endpoint_settings(
    t: &TargetInput,
    e: &Endpoint,
    rules: &Rules<'_>,
    problems: &mut BTreeSet<Problem>,
) -> (EndpointSettings, Vec<ResolvedProfile>) {
    let interval = rules.interval(e.interval, problems);
    let mut timeout = e.scrape_timeout.unwrap_or(rules.defaults.scrape_timeout);
    if timeout >= interval {
        problems.insert(Problem {
            reason: conditions::REASON_INVALID_SPEC,
            message: format!("scrapeTimeout {timeout} is not below the interval {interval}; using 80% of the interval"),
        });
        timeout = Duration::from(interval.std().mul_f64(0.8));
    }
    let cpu_seconds = rules.defaults.cpu_seconds.unwrap_or_else(|| {
        u32::try_from(interval.std().as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    });
    let profiles = rules.allowed(
        e.profiles
            .resolve(&rules.defaults.profile_types, cpu_seconds),
        problems,
    );
    let secret = |r: &kubeprof_crds::SecretKeyRef| CredentialRef {
        secret: Some(r.in_namespace(&t.namespace)),
        ..Default::default()
    };
    let auth = match (&e.bearer_token_secret, &e.basic_auth) {
        (Some(token), _) => Some(ScrapeAuth::Bearer {
            token: secret(token),
        }),
        (None, Some(b)) => Some(ScrapeAuth::Basic {
            username: secret(&b.username),
            password: secret(&b.password),
        }),
        (None, None) => None,
    };
    let tls = e.tls_config.as_ref().map(|c| ScrapeTls {
        ca: c.ca.as_ref().map(secret),
        cert: c.cert.as_ref().map(secret),
        key: c.key_secret.as_ref().map(secret),
        server_name: c.server_name.clone(),
        insecure_skip_verify: c.insecure_skip_verify,
    });
    (
        EndpointSettings {
            scheme: e.scheme.unwrap_or_default(),
            interval,
            timeout,
            params: e.params.clone(),
            relabelings: e.relabelings.clone(),
            auth,
            tls,
            sinks: rules.sinks(&t.spec.sinks, problems),
            service_name: t.spec.service_name.clone(),
            static_labels: t.spec.labels.clone(),
        },
        profiles,
    )
}

/// The namespaces a target selects pods in.
fn target_namespaces(
    t: &TargetInput,
    namespaces: &[NamespaceInfo],
    problems: &mut BTreeSet<Problem>,
) -> BTreeSet<String> {
    let Some(sel) = &t.spec.namespace_selector else {
        return [t.namespace.clone()].into();
    };
    if sel.any == Some(true) {
        return namespaces.iter().map(|n| n.name.clone()).collect();
    }
    let mut out: BTreeSet<String> = sel.match_names.iter().flatten().cloned().collect();
    if let Some(labels) = sel.label_selector() {
        match selector::parse(&labels) {
            Ok(s) => out.extend(
                namespaces
                    .iter()
                    .filter(|ns| s.matches(&ns.labels))
                    .map(|ns| ns.name.clone()),
            ),
            Err(e) => {
                problems.insert(Problem {
                    reason: conditions::REASON_INVALID_SPEC,
                    message: format!("namespaceSelector: {e}"),
                });
            }
        }
    }
    if out.is_empty() && sel.match_names.is_none() && sel.label_selector().is_none() {
        out.insert(t.namespace.clone());
    }
    out
}
