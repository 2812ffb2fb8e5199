//! The operator's core: one pure function from what the cluster holds (policies, targets, pods,
//! namespaces) to the scrape jobs of every node and the facts the status of each object reports.
//! No I/O: the controllers read their caches, call [`compile`], and write the result.
//!
//! Rules, in order:
//! - The governing policy of a namespace is the matching policy with the highest `priority`;
//!   ties go to the name that sorts first. Without one, built-in defaults apply (15s, 10s, all
//!   five types, annotations honoured, no sinks).
//! - An object a CEL-enforcing API server would refuse (a CEL rule, a bound of the schema) is not
//!   applied at all and is reported `InvalidSpec`: servers before 1.25 do not check CEL rules.
//! - Only Running pods with an IP produce jobs.
//! - A ProfilingTarget selects pods by label selector in the namespaces its `namespaceSelector`
//!   names (its own by default); each endpoint's port is resolved by name or number against the
//!   pod's declared container ports (an undeclared number is used as is, on the first container).
//! - Annotated pods (Grafana `profiles.grafana.com/<type>.*`, legacy `pyroscope.io/*`) produce jobs
//!   as the governing policy allows. A pod and type already scraped by a target is skipped.
//! - Target values beat policy defaults; policy limits cap both (`minInterval` raises the interval,
//!   disallowed types are removed; both are reported as `LimitExceeded`).
//! - Relabelings (the target's, then the policy's) run here, so a dropped target yields no job.
//! - Credentials stay references: the scraper reads referenced Secrets itself, so no credential
//!   is ever written into a published shard.
//! - Output is sorted, so unchanged inputs give byte-identical shards.

mod annotations;
mod selector;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    Duration, ResolvedProfile, Scheme, conditions,
    constants::labels,
    job::{
        CredentialRef, JobOrigin, JobShard, OriginKind, ScrapeAuth, ScrapeJob, ScrapeTls, sink_key,
    },
    labels as pipeline,
    policy::{PolicyDefaults, ProfilingPolicySpec},
    relabel::{Labels, compile_all},
    target::{Endpoint, ProfilingTargetSpec},
};

use kube::core::{Selector, SelectorExt};

/// A container port as the pod declares it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// Port name, if any.
    pub name: Option<String>,
    /// Port number.
    pub number: i32,
}

/// A container of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container name.
    pub name: String,
    /// Declared ports.
    pub ports: Vec<PortInfo>,
}

/// What the operator keeps of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Node the pod runs on.
    pub node: Option<String>,
    /// Pod IP.
    pub ip: Option<String>,
    /// `status.phase == Running`.
    pub running: bool,
    /// Containers.
    pub containers: Vec<ContainerInfo>,
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A ProfilingPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// Name.
    pub name: String,
    /// Spec.
    pub spec: ProfilingPolicySpec,
}

/// A ProfilingTarget.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetInput {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Spec.
    pub spec: ProfilingTargetSpec,
}

/// Everything [`compile`] reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// ProfilingPolicies.
    pub policies: Vec<PolicyInput>,
    /// ProfilingTargets.
    pub targets: Vec<TargetInput>,
    /// Pods.
    pub pods: Vec<PodInfo>,
    /// Namespaces.
    pub namespaces: Vec<NamespaceInfo>,
}

/// A problem to report as a `Degraded` condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// One of [`conditions`]'s reasons.
    pub reason: &'static str,
    /// What is wrong, for the user.
    pub message: String,
}

/// What the status of a ProfilingTarget reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFacts {
    /// Running pods selected.
    pub matched_pods: i32,
    /// Jobs published.
    pub active_jobs: i32,
    /// Problems found (deduplicated).
    pub problems: BTreeSet<Problem>,
    /// Ids of its jobs (to join scrape health).
    pub job_ids: Vec<String>,
}

/// What the status of a ProfilingPolicy reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFacts {
    /// Namespaces it governs.
    pub matched_namespaces: i32,
    /// Targets (ProfilingTargets and annotated pods) in those namespaces.
    pub targets: i32,
    /// Problems found.
    pub problems: BTreeSet<Problem>,
}

/// The result of [`compile`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// Jobs per node (`None`: jobs of pods without a node).
    pub shards: BTreeMap<Option<String>, JobShard>,
    /// Per ProfilingTarget, by (namespace, name).
    pub targets: BTreeMap<(String, String), TargetFacts>,
    /// Per ProfilingPolicy, by name.
    pub policies: BTreeMap<String, PolicyFacts>,
}

/// The policy governing each namespace (by namespace name).
fn governing<'a>(
    policies: &[&'a PolicyInput],
    namespaces: &[NamespaceInfo],
    facts: &mut BTreeMap<String, PolicyFacts>,
) -> BTreeMap<String, &'a PolicyInput> {
    let mut sorted: Vec<&PolicyInput> = policies.to_vec();
    sorted.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    // A policy whose selector is invalid governs nothing.
    let mut candidates: Vec<(&PolicyInput, Selector)> = Vec::new();
    for p in sorted {
        match p.spec.namespace_selector.as_ref().map(selector::parse) {
            None => candidates.push((p, Selector::default())),
            Some(Ok(s)) => candidates.push((p, s)),
            Some(Err(e)) => {
                facts
                    .entry(p.name.clone())
                    .or_default()
                    .problems
                    .insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("namespaceSelector: {e}"),
                    });
            }
        }
    }
    let mut out = BTreeMap::new();
    for ns in namespaces {
        if let Some((p, _)) = candidates.iter().find(|(_, s)| s.matches(&ns.labels)) {
            out.insert(ns.name.clone(), *p);
            facts.entry(p.name.clone()).or_default().matched_namespaces += 1;
        }
    }
    out
}

/// Defaults and limits in force in one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Rules<'a> {
    pub(crate) policy: Option<&'a PolicyInput>,
    pub(crate) defaults: PolicyDefaults,
}

impl<'a> Rules<'a> {
    fn of(policy: Option<&'a PolicyInput>) -> Self {
        Self {
            policy,
            defaults: policy.map(|p| p.spec.defaults.clone()).unwrap_or_default(),
        }
    }

    /// The interval after the policy's minimum; a problem when it was raised.
    fn interval(&self, wanted: Option<Duration>, problems: &mut BTreeSet<Problem>) -> Duration {
        let interval = wanted.unwrap_or(self.defaults.interval);
        match self.policy.and_then(|p| p.spec.limits.min_interval) {
            Some(min) if interval < min => {
                problems.insert(Problem {
                    reason: conditions::REASON_LIMIT_EXCEEDED,
                    message: format!(
                        "interval {interval} raised to the policy's minInterval {min}"
                    ),
                });
                min
            }
            _ => interval,
        }
    }

    /// Profiles the policy allows; a problem for each removed one.
    fn allowed(
        &self,
        profiles: Vec<ResolvedProfile>,
        problems: &mut BTreeSet<Problem>,
    ) -> Vec<ResolvedProfile> {
        let Some(allowed) = self
            .policy
            .map(|p| &p.spec.limits.allowed_profile_types)
            .filter(|a| !a.is_empty())
        else {
            return profiles;
        };
        profiles
            .into_iter()
            .filter(|p| {
                let name: &str = match p.kind {
                    Some(k) => k.api_name(),
                    None => &p.name,
                };
                let ok = allowed.iter().any(|a| a == name || *a == p.name);
                if !ok {
                    problems.insert(Problem {
                        reason: conditions::REASON_LIMIT_EXCEEDED,
                        message: format!(
                            "profile type {name} is not allowed by policy {}",
                            self.policy.map_or("", |p| p.name.as_str())
                        ),
                    });
                }
                ok
            })
            .collect()
    }

    /// Keys ([`sink_key`]) of the governing policy's sinks a target wants (all of them when it
    /// names none); a problem for each name the policy does not define.
    pub(crate) fn sinks(&self, wanted: &[String], problems: &mut BTreeSet<Problem>) -> Vec<String> {
        let Some(policy) = self.policy else {
            return Vec::new();
        };
        let defined = || policy.spec.sinks.iter().map(|s| s.name.as_str());
        if wanted.is_empty() {
            return defined().map(|n| sink_key(&policy.name, n)).collect();
        }
        wanted
            .iter()
            .filter(|w| {
                let ok = defined().any(|d| d == w.as_str());
                if !ok {
                    problems.insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("sink {w:?} is not defined by the governing policy"),
                    });
                }
                ok
            })
            .map(|w| sink_key(&policy.name, w))
            .collect()
    }
}

/// Discovery labels of a pod's container port (the shared label pipeline's first step).
pub(crate) fn discovery_labels(
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

/// The container and port a pod serves `port`/`port_number` on.
pub(crate) fn resolve_port(
    pod: &PodInfo,
    name: Option<&str>,
    number: Option<i32>,
) -> Option<(String, PortInfo)> {
    for c in &pod.containers {
        for p in &c.ports {
            let hit = match (name, number) {
                (Some(n), _) => p.name.as_deref() == Some(n),
                (None, Some(n)) => p.number == n,
                (None, None) => false,
            };
            if hit {
                return Some((c.name.clone(), p.clone()));
            }
        }
    }
    // A number no container declares is still reachable: use it on the first container.
    match (name, number, pod.containers.first()) {
        (None, Some(n), Some(c)) if (1..=65535).contains(&n) => Some((
            c.name.clone(),
            PortInfo {
                name: None,
                number: n,
            },
        )),
        _ => None,
    }
}

/// One job per profile, with relabelling applied here: `None` when the rules drop the target.
pub(crate) fn build_jobs(
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
    if let Some(service) = &endpoint.service_name {
        labels.insert(labels::SERVICE_NAME.into(), service.clone());
    }
    for (k, v) in &endpoint.static_labels {
        labels.insert(k.clone(), v.clone());
    }
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

/// An endpoint with every default and limit applied.
#[derive(Clone, Debug)]
pub(crate) struct EndpointSettings {
    pub(crate) scheme: Scheme,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) params: BTreeMap<String, Vec<String>>,
    pub(crate) relabelings: Vec<kubeprof_crds::RelabelConfig>,
    pub(crate) auth: Option<ScrapeAuth>,
    pub(crate) tls: Option<ScrapeTls>,
    pub(crate) sinks: Vec<String>,
    pub(crate) service_name: Option<String>,
    pub(crate) static_labels: Labels,
}

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

/// Compiles the desired state. Pure: same inputs, same output.
pub fn compile(inputs: &Inputs) -> Compiled {
    let mut out = Compiled::default();
    let mut policies = Vec::new();
    for p in &inputs.policies {
        let refused = validate::policy(&p.spec);
        if refused.is_empty() {
            policies.push(p);
        }
        out.policies.entry(p.name.clone()).or_default().problems = refused;
    }
    let governing = governing(&policies, &inputs.namespaces, &mut out.policies);
    let rules_for = |ns: &str| Rules::of(governing.get(ns).copied());
    // Jobs with the node of their pod.
    let mut jobs: Vec<(Option<String>, ScrapeJob)> = Vec::new();
    // (pod uid, profile name) already scraped by a target.
    let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut per_namespace_targets: BTreeMap<String, i32> = BTreeMap::new();

    let mut targets: Vec<&TargetInput> = inputs.targets.iter().collect();
    targets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for t in targets {
        let mut facts = TargetFacts {
            problems: validate::target(&t.spec),
            ..Default::default()
        };
        if t.spec.suspend || !facts.problems.is_empty() {
            out.targets
                .insert((t.namespace.clone(), t.name.clone()), facts);
            continue;
        }
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
        for pod in inputs.pods.iter().filter(|p| {
            namespaces.contains(&p.namespace)
                && selector.as_ref().is_some_and(|s| s.matches(&p.labels))
        }) {
            let Some(ip) = pod.ip.as_ref().filter(|_| pod.running) else {
                continue;
            };
            facts.matched_pods += 1;
            let rules = rules_for(&pod.namespace);
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
                let count = per_namespace_targets
                    .entry(pod.namespace.clone())
                    .or_default();
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
                    covered.insert((pod.uid.clone(), job.profile.name.clone()));
                    facts.job_ids.push(job.id.clone());
                    jobs.push((pod.node.clone(), job));
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
        if let Some(p) = governing.get(&t.namespace) {
            out.policies.entry(p.name.clone()).or_default().targets += 1;
        }
        out.targets
            .insert((t.namespace.clone(), t.name.clone()), facts);
    }

    for pod in &inputs.pods {
        if !(pod.running && pod.ip.is_some()) {
            continue;
        }
        let rules = rules_for(&pod.namespace);
        let settings = rules
            .policy
            .map(|p| p.spec.annotations.clone())
            .unwrap_or_default();
        if !settings.enabled {
            continue;
        }
        let mut problems = BTreeSet::new();
        let pod_jobs = annotations::jobs(pod, &settings, &rules, &covered, &mut problems);
        if !pod_jobs.is_empty()
            && let Some(p) = rules.policy
        {
            out.policies.entry(p.name.clone()).or_default().targets += 1;
        }
        for problem in problems {
            if let Some(p) = rules.policy {
                out.policies
                    .entry(p.name.clone())
                    .or_default()
                    .problems
                    .insert(Problem {
                        reason: problem.reason,
                        message: format!("pod {}/{}: {}", pod.namespace, pod.name, problem.message),
                    });
            }
        }
        jobs.extend(pod_jobs.into_iter().map(|j| (pod.node.clone(), j)));
    }

    // Shards: jobs per node, with the sinks their jobs name, keyed by (policy, name).
    let all_sinks: BTreeMap<String, kubeprof_crds::policy::SinkSpec> = policies
        .iter()
        .flat_map(|p| {
            p.spec.sinks.iter().map(|s| {
                let key = sink_key(&p.name, &s.name);
                let mut spec = s.clone();
                spec.name.clone_from(&key);
                (key, spec)
            })
        })
        .collect();
    let mut by_node: BTreeMap<Option<String>, Vec<ScrapeJob>> = BTreeMap::new();
    for (node, job) in jobs {
        by_node.entry(node).or_default().push(job);
    }
    for (node, jobs) in by_node {
        let names: BTreeSet<&str> = jobs
            .iter()
            .flat_map(|j| j.sinks.iter().map(String::as_str))
            .collect();
        let sinks = names
            .iter()
            .filter_map(|n| all_sinks.get(*n).cloned())
            .collect();
        out.shards
            .insert(node.clone(), JobShard::new(node, jobs, sinks));
    }
    out
}
