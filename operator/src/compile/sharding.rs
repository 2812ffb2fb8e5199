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
    let names: BTreeSet<&str> = jobs
        .iter()
        .flat_map(|j| j.sinks.iter().map(String::as_str))
        .chain(ebpf.iter().flat_map(ebpf::sink_keys))
        .collect();
    let sinks = names
        .iter()
        .filter_map(|n| all_sinks.get(*n).cloned())
        .collect();
    let mut shard = JobShard::new(node, jobs, sinks);
    shard.ebpf = ebpf;
    Some(shard)
}
