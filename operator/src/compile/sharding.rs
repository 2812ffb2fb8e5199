//! Sharding: the jobs of each node, with the sinks they name, as one [`JobShard`] per node.

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    job::{EbpfShard, JobShard, ScrapeJob, sink_key},
    policy::SinkSpec,
};

use super::{PolicyInput, ebpf};

/// Every sink of `policies`, renamed to its key (policy, name) so that two policies' sinks of
/// the same name stay apart.
pub(super) fn all_sinks(policies: &[PolicyInput]) -> BTreeMap<String, SinkSpec> {
    policies
        .iter()
        .flat_map(|p| {
            p.spec.sinks.iter().map(|s| {
                let key = sink_key(&p.name, &s.name);
                let mut spec = s.clone();
                spec.name.clone_from(&key);
                (key, spec)
            })
        })
        .collect()
}

/// The shard of one node (`None`: pods without a node), carrying the sinks its jobs and its
/// eBPF section name; `None` when it has neither jobs nor an eBPF section.
pub(super) fn shard(
    all_sinks: &BTreeMap<String, SinkSpec>,
    node: Option<String>,
    jobs: Vec<ScrapeJob>,
    ebpf: Option<EbpfShard>,
) -> Option<JobShard> {
    if jobs.is_empty() && ebpf.is_none() {
        return None;
    }
    let sinks = named(
        all_sinks,
        jobs.iter().flat_map(|j| j.sinks.iter().map(String::as_str)),
        ebpf.as_ref(),
    );
    let mut shard = JobShard::new(node, jobs, sinks);
    shard.ebpf = ebpf;
    Some(shard)
}

/// The sinks a shard carries: those its jobs name (`names`, with repeats) and those its eBPF
/// section names, in name order.
pub(super) fn named<'a>(
    all_sinks: &BTreeMap<String, SinkSpec>,
    names: impl Iterator<Item = &'a str>,
    ebpf: Option<&'a EbpfShard>,
) -> Vec<SinkSpec> {
    let names: BTreeSet<&str> = names
        .chain(ebpf.into_iter().flat_map(ebpf::sink_keys))
        .collect();
    names
        .iter()
        .filter_map(|n| all_sinks.get(*n).cloned())
        .collect()
}
