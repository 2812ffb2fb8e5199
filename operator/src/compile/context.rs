//! What the jobs of every pod depend on besides the pod itself: the accepted policies and the
//! namespaces each governs, the ProfilingTargets prepared (validated, selectors parsed, the
//! namespaces they select resolved), and the sinks a shard may name. It is small next to the
//! pods (one entry per policy, target and namespace), so it is rebuilt whole whenever one of
//! those objects changes; what a change means for the pods is found by comparing [`View`]s.

use std::collections::BTreeMap;

use kubeprof_crds::policy::SinkSpec;

use super::{
    NamespaceInfo, PolicyFacts, PolicyInput, TargetInput,
    ebpf::{self, EbpfPolicy},
    policies::Governing,
    sharding,
    targets::{self, PreparedTarget},
    validate,
};

/// The compile's view of everything but the pods.
#[derive(Debug)]
pub(super) struct Context {
    /// The inputs it was built from, sorted (policies by name, targets by namespace and name,
    /// namespaces by name), to tell whether anything changed.
    policies: Vec<PolicyInput>,
    namespaces: Vec<NamespaceInfo>,
    pub(super) governing: Governing,
    /// Sorted by (namespace, name).
    pub(super) targets: Vec<PreparedTarget>,
    /// Per namespace, the targets (indices into `targets`) that may select its pods, in order.
    by_namespace: BTreeMap<String, Vec<usize>>,
    /// Every accepted policy's sinks by key.
    pub(super) sinks: BTreeMap<String, SinkSpec>,
    /// The policies' facts that do not depend on pods: refusals, invalid selectors, namespaces
    /// governed, ProfilingTargets counted.
    pub(super) policy_facts: BTreeMap<String, PolicyFacts>,
    /// The accepted policies asking for eBPF, by priority then name.
    pub(super) ebpf: Vec<EbpfPolicy>,
}

/// What the pods of one namespace see of the [`Context`].
#[derive(Debug, PartialEq)]
pub(super) struct View<'a> {
    /// The governing policy.
    pub(super) policy: Option<&'a PolicyInput>,
    /// The targets that may select its pods.
    pub(super) targets: Vec<&'a TargetInput>,
}

impl Context {
    /// Validates and prepares everything but the pods. A refused policy is not applied at all:
    /// it governs no namespace and sends to no sink.
    pub(super) fn new(
        policies: &[PolicyInput],
        targets: &[TargetInput],
        namespaces: &[NamespaceInfo],
    ) -> Self {
        let mut policies = policies.to_vec();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut namespaces = namespaces.to_vec();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sorted: Vec<&TargetInput> = targets.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut policy_facts: BTreeMap<String, PolicyFacts> = BTreeMap::new();
        let mut accepted = Vec::new();
        for p in &policies {
            let refused = validate::policy(&p.spec);
            if refused.is_empty() {
                accepted.push(p.clone());
            }
            policy_facts.entry(p.name.clone()).or_default().problems = refused;
        }
        let governing = Governing::of(accepted, &namespaces, &mut policy_facts);
        let sinks = sharding::all_sinks(governing.policies());
        let ebpf = ebpf::prepare(governing.policies(), &mut policy_facts);
        let mut prepared = Vec::with_capacity(sorted.len());
        let mut by_namespace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for t in sorted {
            let mut p = targets::prepare(t, &namespaces);
            // Said even before a pod runs: the target's own namespace is where users look first.
            if p.active
                && t.spec.namespace_selector.is_none()
                && governing.policy(&t.namespace).is_none()
            {
                p.problems.insert(targets::no_policy(&t.namespace));
            }
            if p.active
                && let Some(policy) = governing.policy(&t.namespace)
            {
                policy_facts.entry(policy.name.clone()).or_default().targets += 1;
            }
            if p.selector.is_some() {
                let rules: Vec<_> = p.namespaces.iter().map(|ns| governing.rules(ns)).collect();
                for r in &rules {
                    p.add_plan(r);
                }
                for ns in &p.namespaces {
                    by_namespace
                        .entry(ns.clone())
                        .or_default()
                        .push(prepared.len());
                }
            }
            prepared.push(p);
        }
        Self {
            policies,
            namespaces,
            governing,
            targets: prepared,
            by_namespace,
            sinks,
            policy_facts,
            ebpf,
        }
    }

    /// Whether `other` asks for eBPF with the same policies: then which nodes run it, at which
    /// rate, and how host processes are labelled is the same.
    pub(super) fn same_ebpf(&self, other: &Self) -> bool {
        self.ebpf.len() == other.ebpf.len()
            && self
                .ebpf
                .iter()
                .zip(&other.ebpf)
                .all(|(a, b)| a.input == b.input)
    }

    /// Whether it was built from these objects (in any order): then building it again would
    /// give the same context, and the policy and target validation is not redone.
    pub(super) fn built_from(
        &self,
        policies: &[PolicyInput],
        targets: &[TargetInput],
        namespaces: &[NamespaceInfo],
    ) -> bool {
        if policies.len() != self.policies.len()
            || targets.len() != self.targets.len()
            || namespaces.len() != self.namespaces.len()
        {
            return false;
        }
        let mut p: Vec<&PolicyInput> = policies.iter().collect();
        p.sort_by(|a, b| a.name.cmp(&b.name));
        let mut t: Vec<&TargetInput> = targets.iter().collect();
        t.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut n: Vec<&NamespaceInfo> = namespaces.iter().collect();
        n.sort_by(|a, b| a.name.cmp(&b.name));
        p.into_iter().eq(self.policies.iter())
            && t.into_iter().eq(self.targets.iter().map(|t| &t.input))
            && n.into_iter().eq(self.namespaces.iter())
    }

    /// Whether `other` was built from the same objects.
    pub(super) fn same_inputs(&self, other: &Self) -> bool {
        self.policies == other.policies
            && self.namespaces == other.namespaces
            && self.targets.len() == other.targets.len()
            && self
                .targets
                .iter()
                .zip(&other.targets)
                .all(|(a, b)| a.input == b.input)
    }

    /// The targets that may select pods of `namespace`, with their indices, in order.
    pub(super) fn targets_of(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = (usize, &PreparedTarget)> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|i| self.targets.get(*i).map(|t| (*i, t)))
    }

    /// The target named `key`.
    pub(super) fn target(&self, key: &(String, String)) -> Option<&PreparedTarget> {
        self.targets
            .binary_search_by(|t| (&t.input.namespace, &t.input.name).cmp(&(&key.0, &key.1)))
            .ok()
            .and_then(|i| self.targets.get(i))
    }

    /// The governing policy's `maxTargetsPerNamespace` in `namespace`.
    pub(super) fn limit(&self, namespace: &str) -> Option<i32> {
        self.governing
            .policy(namespace)
            .and_then(|p| p.spec.limits.max_targets_per_namespace)
    }

    /// Whether the pods of `namespace` depend on each other: a `maxTargetsPerNamespace`, or
    /// sampling (the policy's or a selecting target's), chooses among them.
    pub(super) fn coupled(&self, namespace: &str) -> bool {
        self.governing.policy(namespace).is_some_and(|p| {
            p.spec.limits.max_targets_per_namespace.is_some() || p.spec.sampling.is_some()
        }) || self
            .targets_of(namespace)
            .any(|(_, t)| t.input.spec.sampling.is_some())
    }

    /// What the pods of `namespace` see.
    pub(super) fn view(&self, namespace: &str) -> View<'_> {
        View {
            policy: self.governing.policy(namespace),
            targets: self.targets_of(namespace).map(|(_, t)| &t.input).collect(),
        }
    }
}
