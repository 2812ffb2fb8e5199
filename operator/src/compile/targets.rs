//! ProfilingTargets: the pods each one selects (by label, in the namespaces its
//! `namespaceSelector` names), those of them sampling keeps, each endpoint's port on them, and
//! one job per pod, endpoint and profile type, with target values over policy defaults and
//! policy limits over both.

use std::collections::BTreeSet;

use kube::core::SelectorExt;
use kubeprof_crds::{
    Duration, ResolvedProfile, conditions,
    job::{CredentialRef, JobOrigin, OriginKind, ScrapeAuth, ScrapeTls},
    target::Endpoint,
};

use super::{
    Decision, NamespaceInfo, PodInfo, PodPart, Problem, TargetFacts, TargetInput, TargetShare,
    context::Context,
    jobs::{
        CompiledRules, EndpointSettings, build_jobs, compile_rules, discovery_labels, resolve_ports,
    },
    policies::Rules,
    sampling::{self, Clock},
    selector, validate,
};

/// A ProfilingTarget as every pod sees it: validated, its selectors parsed, the namespaces it
/// selects pods in resolved.
#[derive(Debug)]
pub(super) struct PreparedTarget {
    pub(super) input: TargetInput,
    /// Neither suspended nor refused: it counts towards its policy and may select pods.
    pub(super) active: bool,
    /// Problems of the target itself (refusal, invalid selectors).
    pub(super) problems: BTreeSet<Problem>,
    /// The pod selector (`None`: inactive or invalid, it selects no pod).
    pub(super) selector: Option<selector::PodSelector>,
    /// The namespaces it selects pods in.
    pub(super) namespaces: BTreeSet<String>,
    /// Its endpoints under each policy governing one of those namespaces (by policy name;
    /// `None`: no policy), prepared once rather than for every pod.
    pub(super) plans: Vec<(Option<String>, Vec<EndpointPlan>)>,
}

/// An endpoint under one policy: its settings and profiles with every default and limit
/// applied, its relabel rules compiled, and the problems doing so found.
#[derive(Clone, Debug)]
pub(super) struct EndpointPlan {
    settings: EndpointSettings,
    profiles: Vec<ResolvedProfile>,
    rules: CompiledRules,
    problems: BTreeSet<Problem>,
}

impl PreparedTarget {
    /// Prepares its endpoints under the policy `rules` come from (once per policy).
    pub(super) fn add_plan(&mut self, rules: &Rules<'_>) {
        let policy = rules.policy.map(|p| p.name.clone());
        if self.plans.iter().any(|(p, _)| *p == policy) {
            return;
        }
        let plans = plan(&self.input, rules);
        self.plans.push((policy, plans));
    }

    /// Its endpoints under `rules`' policy (prepared now if [`Self::add_plan`] was not called
    /// for it).
    fn plans(&self, rules: &Rules<'_>) -> std::borrow::Cow<'_, [EndpointPlan]> {
        let policy = rules.policy.map(|p| &p.name);
        match self.plans.iter().find(|(p, _)| p.as_ref() == policy) {
            Some((_, plans)) => std::borrow::Cow::Borrowed(plans),
            None => std::borrow::Cow::Owned(plan(&self.input, rules)),
        }
    }
}

/// Every endpoint of `t` under `rules`.
fn plan(t: &TargetInput, rules: &Rules<'_>) -> Vec<EndpointPlan> {
    t.spec
        .endpoints
        .iter()
        .map(|e| {
            let mut problems = BTreeSet::new();
            let (settings, profiles) = endpoint_settings(t, e, rules, &mut problems);
            EndpointPlan {
                settings,
                profiles,
                rules: compile_rules(&e.relabelings, rules.policy),
                problems,
            }
        })
        .collect()
}

/// Validates `t` and resolves its selectors against `namespaces`. A target the API server would
/// have refused, or a suspended one, selects nothing and keeps only its refusal as problems.
pub(super) fn prepare(t: &TargetInput, namespaces: &[NamespaceInfo]) -> PreparedTarget {
    let refused = validate::target(&t.spec);
    let mut prepared = PreparedTarget {
        input: t.clone(),
        active: !t.spec.suspend && refused.is_empty(),
        problems: refused,
        selector: None,
        namespaces: BTreeSet::new(),
        plans: Vec::new(),
    };
    if !prepared.active {
        return prepared;
    }
    prepared.namespaces = target_namespaces(t, namespaces, &mut prepared.problems);
    // An invalid selector selects no pod.
    match selector::parse(&t.spec.selector) {
        Ok(s) => prepared.selector = Some(s.into()),
        Err(e) => {
            prepared.problems.insert(Problem {
                reason: conditions::REASON_INVALID_SPEC,
                message: format!("selector: {e}"),
            });
        }
    }
    prepared
}

/// What a target sees of a pod: whether it selects it. Only running pods with an IP count.
pub(super) fn selects(t: &PreparedTarget, pod: &PodInfo) -> bool {
    t.selector.as_ref().is_some_and(|s| s.matches(&pod.labels))
}

/// What the namespace decides for each of `pods` (all the pods of `namespace`, sorted by
/// name): per target, sampling (the target's, else the governing policy's) keeps a bounded set
/// of each workload's selected pods; `maxTargetsPerNamespace` admits the kept pods' endpoints in
/// (target, pod, endpoint) order until the namespace reaches the limit; the policy's sampling
/// keeps a bounded set of the pods whose annotations ask for jobs. Rotations go to `clock`.
pub(super) fn decide(
    ctx: &Context,
    namespace: &str,
    pods: &[&PodInfo],
    clock: &mut Clock,
) -> Vec<Decision> {
    let mut decisions = vec![Decision::default(); pods.len()];
    // Without a policy no pod gets a job: nothing to choose among.
    if !ctx.coupled(namespace) || ctx.governing.policy(namespace).is_none() {
        return decisions;
    }
    let limit = ctx.limit(namespace);
    let policy_sampling = ctx
        .governing
        .policy(namespace)
        .and_then(|p| p.spec.sampling.as_ref());
    let mut count = 0;
    for (ti, t) in ctx.targets_of(namespace) {
        let matched: Vec<usize> = (0..pods.len())
            .filter(|i| pods[*i].running && pods[*i].ip.is_some() && selects(t, pods[*i]))
            .collect();
        let refs: Vec<&PodInfo> = matched.iter().map(|i| pods[*i]).collect();
        // The target's sampling replaces the policy's.
        let keep = sampling::sample(
            &refs,
            |_| t.input.spec.sampling.as_ref().or(policy_sampling),
            clock,
        );
        for (pi, kept) in matched.into_iter().zip(keep) {
            if !kept {
                decisions[pi].unsampled.insert(ti);
                continue;
            }
            let Some(limit) = limit else { continue };
            for (ei, e) in t.input.spec.endpoints.iter().enumerate() {
                // Each container serving the endpoint's port is a target of its own.
                let ports = resolve_ports(pods[pi], e.port.as_deref(), e.port_number).len();
                for port in 0..ports {
                    if count >= limit {
                        decisions[pi].denied.insert((ti, ei, port));
                    } else {
                        count += 1;
                    }
                }
            }
        }
    }
    if let Some(s) = policy_sampling {
        let wanted: Vec<usize> = (0..pods.len())
            .filter(|i| super::pod_part(ctx, pods[*i], &decisions[*i]).annotation_jobs > 0)
            .collect();
        let refs: Vec<&PodInfo> = wanted.iter().map(|i| pods[*i]).collect();
        let keep = sampling::sample(&refs, |_| Some(s), clock);
        for (pi, kept) in wanted.into_iter().zip(keep) {
            decisions[pi].annotations_unsampled = !kept;
        }
    }
    decisions
}

/// The jobs of the targets selecting `pod` (into `part`, with each target's share of facts).
/// `decision`: what its namespace decided for it ([`decide`]).
pub(super) fn pod_jobs(ctx: &Context, pod: &PodInfo, decision: &Decision, part: &mut PodPart) {
    let Some(ip) = pod.ip.as_ref().filter(|_| pod.running) else {
        return;
    };
    let rules = ctx.governing.rules(&pod.namespace);
    for (ti, t) in ctx.targets_of(&pod.namespace) {
        if !selects(t, pod) {
            continue;
        }
        let mut share = TargetShare {
            target: (t.input.namespace.clone(), t.input.name.clone()),
            matched: true,
            sampled: !decision.unsampled.contains(&ti),
            ..Default::default()
        };
        // No policy, no sink: a job would scrape for nothing (or, to an older scraper that read
        // no sinks as all of them, for every team's sinks on the node).
        if rules.policy.is_none() {
            share.sampled = false;
            share.problems.insert(no_policy(&pod.namespace));
        }
        if !share.sampled {
            part.shares.targets.push(share);
            continue;
        }
        let plans = t.plans(&rules);
        for (i, (e, plan)) in t.input.spec.endpoints.iter().zip(plans.iter()).enumerate() {
            let ports = resolve_ports(pod, e.port.as_deref(), e.port_number);
            if ports.is_empty() {
                share.problems.insert(Problem {
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
            }
            for (pi, (container, port)) in ports.into_iter().enumerate() {
                if decision.denied.contains(&(ti, i, pi)) {
                    share.problems.insert(Problem {
                        reason: conditions::REASON_LIMIT_EXCEEDED,
                        message: format!(
                            "namespace {} is at the policy's maxTargetsPerNamespace ({})",
                            pod.namespace,
                            ctx.limit(&pod.namespace).unwrap_or(0)
                        ),
                    });
                    continue;
                }
                share.problems.extend(plan.problems.iter().cloned());
                let settings = &plan.settings;
                let address = format!("{ip}:{}", port.number);
                let l = discovery_labels(pod, &container, &port, &address, settings.scheme);
                let origin = JobOrigin {
                    kind: OriginKind::ProfilingTarget,
                    namespace: t.input.namespace.clone(),
                    name: t.input.name.clone(),
                };
                for job in build_jobs(
                    &origin,
                    l,
                    &plan.profiles,
                    settings,
                    &rules,
                    &plan.rules,
                    &mut share.problems,
                ) {
                    part.covered.insert(job.profile.name.clone());
                    share.job_ids.push(job.id.clone());
                    part.jobs.push(job);
                }
            }
        }
        part.shares.targets.push(share);
    }
}

/// A target's facts from its own problems and each selected pod's share, in pod order.
pub(super) fn facts<'a>(
    t: &PreparedTarget,
    shares: impl IntoIterator<Item = &'a TargetShare>,
) -> TargetFacts {
    let mut facts = TargetFacts {
        problems: t.problems.clone(),
        ..Default::default()
    };
    if !t.active {
        return facts;
    }
    for share in shares {
        facts.matched_pods += i32::from(share.matched);
        facts.sampled_pods += i32::from(share.sampled);
        facts.job_ids.extend(share.job_ids.iter().cloned());
        facts.problems.extend(share.problems.iter().cloned());
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

/// The problem of pods in `namespace`, which no policy governs.
pub(super) fn no_policy(namespace: &str) -> Problem {
    Problem {
        reason: conditions::REASON_NO_POLICY,
        message: format!(
            "namespace {namespace} is selected by no ProfilingPolicy; profiles would go nowhere"
        ),
    }
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
