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
//! - Sampling (the target's, else the governing policy's) keeps a bounded number of each
//!   workload's pods, chosen by a stable hash of their UID and of the rotation epoch at
//!   `Inputs::now`; the other pods yield no job. The next epoch boundary that would change a
//!   choice is reported ([`Compiled::next_rotation`]) for the runtime to compile again then.
//! - Credentials stay references: the scraper reads referenced Secrets itself, so no credential
//!   is ever written into a published shard.
//! - An invalid label selector selects nothing and is reported (`InvalidSpec`), whatever the
//!   cluster holds.
//! - Output is sorted, so unchanged inputs give byte-identical shards.
//!
//! One module per step, composed by [`compile`]: `policies` (governing policy, defaults and
//! limits) -> `targets` (ProfilingTargets -> jobs) -> `annotations` (annotated pods -> jobs)
//! -> `sharding` (jobs -> one shard per node, with their sinks). Both job sources end in `jobs`
//! (port resolution and the shared label pipeline) and choose their pods through `sampling`;
//! `selector` checks label selectors and `validate` what the API server would have refused.

pub mod access;
mod annotations;
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
}

/// A job with the node of its pod (`None`: a pod without a node).
type Placed = (Option<String>, ScrapeJob);

/// (pod uid, profile name) pairs a ProfilingTarget scrapes: annotations add no second job.
type Covered = BTreeSet<(String, String)>;

/// Compiles the desired state. Pure: same inputs, same output.
pub fn compile(inputs: &Inputs) -> Compiled {
    let mut out = Compiled::default();
    // A refused policy is not applied at all: it governs no namespace and sends to no sink.
    let mut policies = Vec::new();
    for p in &inputs.policies {
        let refused = validate::policy(&p.spec);
        if refused.is_empty() {
            policies.push(p);
        }
        out.policies.entry(p.name.clone()).or_default().problems = refused;
    }
    let governing = policies::Governing::of(&policies, &inputs.namespaces, &mut out.policies);
    let mut clock = sampling::Clock::at(inputs.now);
    let targets = targets::jobs(
        inputs,
        &governing,
        &mut clock,
        &mut out.targets,
        &mut out.policies,
    );
    let mut jobs = targets.jobs;
    jobs.extend(annotations::jobs(
        &inputs.pods,
        &governing,
        &targets.covered,
        &mut clock,
        &mut out.policies,
    ));
    out.shards = sharding::shards(&policies, jobs);
    out.next_rotation = clock.next_rotation();
    out
}
