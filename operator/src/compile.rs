//! The operator's core: one pure function from what the cluster holds (policies, targets, pods,
//! namespaces) to the scrape jobs of every node and the facts the status of each object reports.
//! No I/O: the controllers read their caches, call [`compile`], and write the result.
//!
//! Rules, in order:
//! - The governing policy of a namespace is the matching policy with the highest `priority`;
//!   ties go to the name that sorts first. Pods in a namespace no policy governs get no jobs:
//!   the policy defines the sinks, so without one a profile would go nowhere. A target that
//!   selects them is reported `NoPolicy`; annotated ones are counted in
//!   [`Compiled::ungoverned_pods`].
//! - An object a CEL-enforcing API server would refuse (a CEL rule, a bound of the schema) is not
//!   applied at all and is reported `InvalidSpec`: servers before 1.25 do not check CEL rules.
//! - Only Running pods with an IP produce jobs.
//! - A ProfilingTarget selects pods by label selector in the namespaces its `namespaceSelector`
//!   names (its own by default); each endpoint's port is resolved by name or number against the
//!   pod's declared container ports (an undeclared number is used as is, on the first container).
//!   A port name several containers declare gives one target per container, each with its own
//!   `container` label, as Prometheus' PodMonitor does.
//! - Annotated pods (Grafana `profiles.grafana.com/<type>.*`, legacy `pyroscope.io/*`) produce jobs
//!   as the governing policy allows. A pod and type already scraped by a target is skipped.
//! - Target values beat policy defaults; policy limits cap both (`minInterval` raises the interval,
//!   disallowed types are removed; both are reported as `LimitExceeded`).
//! - Relabelings (the target's, then the policy's) run here, so a dropped target yields no job.
//! - Sampling (the target's, else the governing policy's) keeps a bounded number of each
//!   workload's pods, chosen by a stable hash of their UID and of the rotation epoch at
//!   `Inputs::now`; the other pods yield no job. The next epoch boundary that would change a
//!   choice is reported ([`Compiled::next_rotation`]) for the runtime to compile again then.
//! - Credentials stay references: the scraper reads referenced Secrets itself, so no credential
//!   is ever written into a published shard.
//! - An invalid label selector selects nothing and is reported (`InvalidSpec`), whatever the
//!   cluster holds.
//! - On the nodes an eBPF policy's `ebpf.nodeSelector` selects, the node's shard carries an
//!   `ebpf` section: the running pods the governing policy's `ebpf.namespaces` admits or an
//!   opted-in ProfilingTarget selects, with their container IDs and labelling (`ebpf`). Such a
//!   node has a shard even without pull jobs; the policies' facts name the nodes they select.
//! - Output is sorted, so unchanged inputs give byte-identical shards.
//!
//! - Pods are taken in (namespace, name) order; `maxTargetsPerNamespace` admits endpoints in
//!   (target, pod, endpoint) order within a namespace.
//!
//! One module per step, composed by [`compile`]: `context` (everything but the pods: `policies`
//! for the governing policy, defaults and limits, ProfilingTargets prepared) -> per pod,
//! `targets` (ProfilingTargets -> jobs) then `annotations` (annotated pods -> jobs); per node,
//! `ebpf` (the node's eBPF section from its labels and pods) -> `sharding` (jobs and eBPF
//! section -> one shard per node, with their sinks). Both job sources end in `jobs` (port
//! resolution and the shared label pipeline); `selector` checks label selectors and `validate`
//! what the API server would have refused.
//!
//! A pod's jobs depend only on the pod, the context and (where a policy sets
//! `maxTargetsPerNamespace`, or sampling applies) the other pods of its namespace, through the
//! namespace's [`Decision`]s; a node's shard only on its pods and (for eBPF) its labels.
//! [`Incremental`] keeps the same result up to date by recomputing the shards of the nodes a
//! change touches, from the same per-pod steps.

pub mod access;
mod annotations;
mod context;
mod ebpf;
mod incremental;
mod jobs;
mod policies;
pub mod sampling;
mod selector;
mod sharding;
mod targets;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    job::{JobShard, ScrapeJob},
    packed::PackedMap,
    policy::ProfilingPolicySpec,
    target::ProfilingTargetSpec,
};

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
    /// The container runtime's ID of the container once it has started
    /// (`status.containerStatuses[].containerID` without its `<runtime>://` prefix): what the
    /// eBPF profiler finds in `/proc/<pid>/cgroup`.
    pub id: Option<String>,
}

/// The controller of a pod, resolved to the workload that scales it ([`sampling::owner`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    /// Kind: `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`, ...
    pub kind: String,
    /// Name.
    pub name: String,
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
    /// Labels (packed: the operator holds every pod's).
    pub labels: PackedMap,
    /// Annotations.
    pub annotations: PackedMap,
    /// Node the pod runs on.
    pub node: Option<String>,
    /// Pod IP.
    pub ip: Option<String>,
    /// `status.phase == Running`.
    pub running: bool,
    /// Containers.
    pub containers: Vec<ContainerInfo>,
    /// The workload it belongs to (none for a pod without a controller).
    pub owner: Option<Owner>,
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A node and its labels (all the operator reads of a node: which policies run eBPF there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
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
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// The time of the compile, since the Unix epoch: only sampling's rotation reads it.
    pub now: std::time::Duration,
}

/// A problem to report as a `Degraded` condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// One of [`kubeprof_crds::conditions`]'s reasons.
    pub reason: &'static str,
    /// What is wrong, for the user.
    pub message: String,
}

/// What the status of a ProfilingTarget reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFacts {
    /// Running pods selected.
    pub matched_pods: i32,
    /// Of those, the pods sampling kept.
    pub sampled_pods: i32,
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
    /// Running pods in those namespaces whose annotations ask for jobs.
    pub annotated_pods: i32,
    /// Of those, the pods sampling kept.
    pub sampled_pods: i32,
    /// Problems found.
    pub problems: BTreeSet<Problem>,
    /// The nodes where it asks for the eBPF profiler (its `ebpf.nodeSelector` selects them).
    pub ebpf_nodes: BTreeSet<String>,
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
    /// When a rotating sampling next chooses other pods (since the Unix epoch): compile again
    /// then. `None`: no choice depends on the time.
    pub next_rotation: Option<std::time::Duration>,
    /// Pods that opt in by annotations where no policy governs (so get no jobs), per namespace.
    pub ungoverned_pods: BTreeMap<String, usize>,
}

pub use incremental::{Incremental, Objects, PodKey, ShardText, Update};

/// One pod's contribution to the status of the targets selecting it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TargetShare {
    /// The target, by (namespace, name).
    target: (String, String),
    /// The pod is running with an IP and selected.
    matched: bool,
    /// Sampling kept it.
    sampled: bool,
    /// Ids of the pod's jobs from this target.
    job_ids: Vec<String>,
    /// Problems found on this pod.
    problems: BTreeSet<Problem>,
}

/// One annotated pod's contribution to the status of its governing policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PolicyShare {
    /// The policy's name.
    policy: String,
    /// Its annotations ask for jobs.
    annotated: bool,
    /// It has jobs from its annotations (sampling kept it): it counts as one of the policy's
    /// targets.
    counts: bool,
    /// Problems of its annotations, prefixed with the pod.
    problems: BTreeSet<Problem>,
}

/// What a pod contributes to the status of the objects that select it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shares {
    targets: Vec<TargetShare>,
    policy: Option<PolicyShare>,
    /// Its annotations opt in, but no policy governs its namespace (so it has no jobs).
    ungoverned: bool,
}

/// What a pod's namespace decides for it: sampling and `maxTargetsPerNamespace` choose among
/// the pods of a namespace ([`targets::decide`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Decision {
    /// Targets (indices into the context's) whose sampling leaves the pod out.
    unsampled: BTreeSet<usize>,
    /// Endpoints (target, endpoint, container serving its port) refused by
    /// `maxTargetsPerNamespace`.
    denied: BTreeSet<(usize, usize, usize)>,
    /// The policy's sampling leaves its annotations' jobs out.
    annotations_unsampled: bool,
}

/// Everything one pod yields.
#[derive(Debug, Default)]
struct PodPart {
    jobs: Vec<ScrapeJob>,
    shares: Shares,
    /// Profiles a ProfilingTarget scrapes: its annotations add no second job.
    covered: BTreeSet<String>,
    /// Jobs its annotations asked for (before sampling).
    annotation_jobs: usize,
}

/// One pod's jobs and shares, as its namespace decided ([`targets::decide`]).
fn pod_part(ctx: &context::Context, pod: &PodInfo, decision: &Decision) -> PodPart {
    let mut part = PodPart::default();
    targets::pod_jobs(ctx, pod, decision, &mut part);
    annotations::pod_jobs(pod, &ctx.governing, decision, &mut part);
    part
}

/// A policy's facts: those of the context plus each annotated pod's share.
fn policy_facts<'a>(
    base: PolicyFacts,
    shares: impl IntoIterator<Item = &'a PolicyShare>,
) -> PolicyFacts {
    let mut facts = base;
    for share in shares {
        facts.targets += i32::from(share.counts);
        facts.annotated_pods += i32::from(share.annotated);
        facts.sampled_pods += i32::from(share.counts);
        facts.problems.extend(share.problems.iter().cloned());
    }
    facts
}

/// Compiles the desired state. Pure: same inputs, same output.
pub fn compile(inputs: &Inputs) -> Compiled {
    let ctx = context::Context::new(&inputs.policies, &inputs.targets, &inputs.namespaces);
    let mut pods: Vec<&PodInfo> = inputs.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut by_node: BTreeMap<Option<String>, Vec<ScrapeJob>> = BTreeMap::new();
    let mut target_shares: BTreeMap<(String, String), Vec<TargetShare>> = BTreeMap::new();
    let mut policy_shares: BTreeMap<String, Vec<PolicyShare>> = BTreeMap::new();
    let mut ungoverned_pods: BTreeMap<String, usize> = BTreeMap::new();
    let mut clock = sampling::Clock::at(inputs.now);
    for namespace in pods.chunk_by(|a, b| a.namespace == b.namespace) {
        let Some(first) = namespace.first() else {
            continue;
        };
        let decisions = targets::decide(&ctx, &first.namespace, namespace, &mut clock);
        for (pod, decision) in namespace.iter().zip(&decisions) {
            let part = pod_part(&ctx, pod, decision);
            if !part.jobs.is_empty() {
                by_node
                    .entry(pod.node.clone())
                    .or_default()
                    .extend(part.jobs);
            }
            for share in part.shares.targets {
                target_shares
                    .entry(share.target.clone())
                    .or_default()
                    .push(share);
            }
            if part.shares.ungoverned {
                *ungoverned_pods.entry(pod.namespace.clone()).or_default() += 1;
            }
            if let Some(share) = part.shares.policy {
                policy_shares
                    .entry(share.policy.clone())
                    .or_default()
                    .push(share);
            }
        }
    }
    // eBPF: every known node an eBPF policy selects, from the pods on it.
    let node_labels: BTreeMap<&String, &BTreeMap<String, String>> =
        inputs.nodes.iter().map(|n| (&n.name, &n.labels)).collect();
    let mut on_node: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
    for pod in &pods {
        if let Some(node) = &pod.node {
            on_node.entry(node.as_str()).or_default().push(pod);
        }
    }
    let mut sections: BTreeMap<Option<String>, kubeprof_crds::job::EbpfShard> = BTreeMap::new();
    for (name, labels) in &node_labels {
        let pods = on_node.get(name.as_str()).into_iter().flatten().copied();
        if let Some(section) = ebpf::section(&ctx, Some(labels), pods) {
            sections.insert(Some((*name).clone()), section);
        }
    }
    let ebpf_nodes = ebpf::nodes_of(&ctx.ebpf, node_labels.iter().map(|(k, v)| (*k, *v)));
    let keys: BTreeSet<Option<String>> = by_node.keys().chain(sections.keys()).cloned().collect();
    let mut out = Compiled {
        shards: keys
            .into_iter()
            .filter_map(|node| {
                let jobs = by_node.remove(&node).unwrap_or_default();
                let section = sections.remove(&node);
                sharding::shard(&ctx.sinks, node.clone(), jobs, section).map(|s| (node, s))
            })
            .collect(),
        next_rotation: clock.next_rotation(),
        ungoverned_pods,
        ..Default::default()
    };
    for t in &ctx.targets {
        let key = (t.input.namespace.clone(), t.input.name.clone());
        let facts = targets::facts(t, target_shares.get(&key).into_iter().flatten());
        out.targets.insert(key, facts);
    }
    for (name, base) in &ctx.policy_facts {
        let mut facts = policy_facts(base.clone(), policy_shares.get(name).into_iter().flatten());
        facts.ebpf_nodes = ebpf_nodes.get(name).cloned().unwrap_or_default();
        out.policies.insert(name.clone(), facts);
    }
    out
}
