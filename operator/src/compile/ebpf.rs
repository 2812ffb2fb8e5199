//! eBPF: on which nodes the per-node profiler runs, which containers of each node it samples,
//! and how their profiles are labelled and where they go (a shard's [`EbpfShard`]).
//!
//! - A policy asks for the profiler with `ebpf.enabled` on the nodes its `ebpf.nodeSelector`
//!   selects (every node without one). An invalid selector selects no node and is reported
//!   (`InvalidSpec`). A refused policy asks for nothing.
//! - On such a node, a running pod is profiled when the policy governing its namespace is one of
//!   the node's eBPF policies and either that policy's `ebpf.namespaces` admits the namespace
//!   (exclude wins; an empty include admits all) or an active ProfilingTarget with
//!   `ebpf.enabled` selects the pod (the first such target, in (namespace, name) order, is the
//!   profile's origin). Only its started containers (those with an ID) are listed; a pod with
//!   none is left out.
//! - Its labels are the pod's discovery labels from the shared pipeline, without the per-port
//!   and per-container ones (the scraper adds `container` per container), plus the target's
//!   `serviceName` and `labels`, and the pod's labels with the policy's `podLabels`. Relabelings
//!   are the policy's, then the target's `ebpf.relabelings`; external labels and sinks are the
//!   governing policy's (the target's `sinks` choose among them). Sampling does not apply.
//! - The node samples at the highest `sampleRate` of its eBPF policies, with [`PERIOD`].
//!   Host processes are profiled when one of them sets `hostProcesses`; the first of those by
//!   priority (then name) labels them and names their sinks.
//! - A node with an eBPF policy gets a section even with no pod to profile (host processes and
//!   the profiler's health report still work); a node without one gets none.
//!
//! A node's section depends only on its labels, the [`Context`] and its own pods.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};
use kubeprof_crds::{
    Duration, conditions,
    constants::labels as names,
    job::{EbpfContainer, EbpfLabelling, EbpfPod, EbpfShard, JobOrigin, OriginKind},
    labels as pipeline,
    relabel::Labels,
};

use super::{
    PodInfo, PolicyFacts, PolicyInput, Problem, context::Context, jobs, selector, targets,
};

/// How often a node's samples become profiles.
pub(super) const PERIOD: Duration = Duration::from_secs(15);

/// An accepted policy with `ebpf.enabled`, its node selector parsed.
#[derive(Debug)]
pub(super) struct EbpfPolicy {
    pub(super) input: PolicyInput,
    selector: Selector,
}

/// The accepted policies that ask for eBPF, by priority (highest first), then name; an invalid
/// `ebpf.nodeSelector` is reported into `facts` and its policy left out.
pub(super) fn prepare(
    accepted: &[PolicyInput],
    facts: &mut BTreeMap<String, PolicyFacts>,
) -> Vec<EbpfPolicy> {
    let mut out = Vec::new();
    for p in accepted.iter().filter(|p| p.spec.ebpf.enabled) {
        let selector = match p.spec.ebpf.node_selector.as_ref().map(selector::parse) {
            None => Selector::default(),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                facts
                    .entry(p.name.clone())
                    .or_default()
                    .problems
                    .insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("ebpf.nodeSelector: {e}"),
                    });
                continue;
            }
        };
        out.push(EbpfPolicy {
            input: p.clone(),
            selector,
        });
    }
    out.sort_by(|a, b| {
        b.input
            .spec
            .priority
            .cmp(&a.input.spec.priority)
            .then_with(|| a.input.name.cmp(&b.input.name))
    });
    out
}

/// The eBPF policies selecting a node labelled `labels`, in [`prepare`]'s order.
pub(super) fn selecting<'a>(
    policies: &'a [EbpfPolicy],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a EbpfPolicy> {
    policies
        .iter()
        .filter(|p| p.selector.matches(labels))
        .collect()
}

/// For each eBPF policy, the nodes (by name, with their labels) it selects.
pub(super) fn nodes_of<'a>(
    policies: &[EbpfPolicy],
    nodes: impl IntoIterator<Item = (&'a String, &'a BTreeMap<String, String>)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, labels) in nodes {
        for p in selecting(policies, labels) {
            out.entry(p.input.name.clone())
                .or_default()
                .insert(node.clone());
        }
    }
    out
}

/// The eBPF section of a node labelled `labels` (`None`: unknown node, or no policy selects
/// it), from the pods on it.
pub(super) fn section<'a>(
    ctx: &Context,
    labels: Option<&BTreeMap<String, String>>,
    pods: impl IntoIterator<Item = &'a PodInfo>,
) -> Option<EbpfShard> {
    let policies = selecting(&ctx.ebpf, labels?);
    if policies.is_empty() {
        return None;
    }
    let sample_rate = policies
        .iter()
        .map(|p| {
            u32::try_from(p.input.spec.ebpf.sample_rate)
                .unwrap_or(1)
                .max(1)
        })
        .max()
        .unwrap_or(1);
    let host = policies
        .iter()
        .find(|p| p.input.spec.ebpf.host_processes)
        .map(|p| host_labelling(&p.input));
    let mut pods: Vec<EbpfPod> = pods
        .into_iter()
        .filter_map(|pod| pod_section(ctx, &policies, pod))
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Some(EbpfShard {
        sample_rate,
        period: PERIOD,
        host_processes: host.is_some(),
        host,
        pods,
    })
}

/// The sink keys of every section: what the shard must carry for them.
pub(super) fn sink_keys(section: &EbpfShard) -> impl Iterator<Item = &str> {
    section
        .host
        .iter()
        .chain(section.pods.iter().map(|p| &p.labelling))
        .flat_map(|l| l.sinks.iter().map(String::as_str))
}

fn policy_origin(p: &PolicyInput) -> JobOrigin {
    JobOrigin {
        kind: OriginKind::ProfilingPolicy,
        namespace: String::new(),
        name: p.name.clone(),
    }
}

/// Every sink of `p`, by key.
fn all_sinks(p: &PolicyInput) -> Vec<String> {
    p.spec
        .sinks
        .iter()
        .map(|s| kubeprof_crds::job::sink_key(&p.name, &s.name))
        .collect()
}

fn host_labelling(p: &PolicyInput) -> EbpfLabelling {
    EbpfLabelling {
        origin: policy_origin(p),
        labels: Labels::new(),
        relabelings: p.spec.relabelings.clone(),
        external_labels: p.spec.external_labels.clone(),
        sinks: all_sinks(p),
    }
}

/// Whether `filter` admits `namespace`: exclude wins; an empty include admits all.
fn admits(filter: &kubeprof_crds::policy::EbpfNamespaces, namespace: &str) -> bool {
    !filter.exclude.iter().any(|n| n == namespace)
        && (filter.include.is_empty() || filter.include.iter().any(|n| n == namespace))
}

/// `pod`'s entry in the section of its node, whose eBPF policies are `policies`.
fn pod_section(ctx: &Context, policies: &[&EbpfPolicy], pod: &PodInfo) -> Option<EbpfPod> {
    if !pod.running {
        return None;
    }
    let governing = ctx.governing.policy(&pod.namespace)?;
    if !policies.iter().any(|p| p.input.name == governing.name) {
        return None;
    }
    let containers: Vec<EbpfContainer> = pod
        .containers
        .iter()
        .filter_map(|c| {
            c.id.as_ref().map(|id| EbpfContainer {
                name: c.name.clone(),
                id: id.clone(),
            })
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    let target = ctx
        .targets_of(&pod.namespace)
        .map(|(_, t)| t)
        .find(|t| t.input.spec.ebpf.as_ref().is_some_and(|e| e.enabled) && targets::selects(t, pod))
        .map(|t| &t.input);
    if target.is_none() && !admits(&governing.spec.ebpf.namespaces, &pod.namespace) {
        return None;
    }
    let mut labels = pipeline::pod_discovery_labels(
        &pipeline::PodContainer {
            namespace: &pod.namespace,
            pod: &pod.name,
            uid: &pod.uid,
            ip: pod.ip.as_deref(),
            node: pod.node.as_deref(),
            labels: &pod.labels,
            annotations: &pod.annotations,
            container: "",
        },
        None,
    );
    // Per container: the scraper sets them for each of the pod's containers.
    labels.remove(names::META_CONTAINER_NAME);
    labels.remove("container");
    let mut relabelings = governing.spec.relabelings.clone();
    let (origin, sinks) = match target {
        Some(t) => {
            if let Some(service) = &t.spec.service_name {
                labels
                    .entry(names::SERVICE_NAME.into())
                    .or_insert_with(|| service.clone());
            }
            for (k, v) in &t.spec.labels {
                labels.insert(k.clone(), v.clone());
            }
            relabelings.extend(
                t.spec
                    .ebpf
                    .iter()
                    .flat_map(|e| e.relabelings.iter().cloned()),
            );
            // Unknown sink names are the target's problem already (its scrape jobs report it).
            let sinks = ctx
                .governing
                .rules(&pod.namespace)
                .sinks(&t.spec.sinks, &mut BTreeSet::new());
            let origin = JobOrigin {
                kind: OriginKind::ProfilingTarget,
                namespace: t.namespace.clone(),
                name: t.name.clone(),
            };
            (origin, sinks)
        }
        None => (policy_origin(governing), all_sinks(governing)),
    };
    if governing.spec.pod_labels {
        jobs::copy_pod_labels(&mut labels);
    }
    Some(EbpfPod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        containers,
        labelling: EbpfLabelling {
            origin,
            labels,
            relabelings,
            external_labels: governing.spec.external_labels.clone(),
            sinks,
        },
    })
}
