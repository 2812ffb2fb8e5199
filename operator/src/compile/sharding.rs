//! Sharding: the jobs of each node, with the sinks they name, as one [`JobShard`] per node.

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    job::{JobShard, ScrapeJob, sink_key},
    policy::SinkSpec,
};

use super::{Placed, PolicyInput};

/// One shard per node that has jobs (`None`: pods without a node). A shard carries the sinks
/// its jobs name, renamed to their key (policy, name) so that two policies' sinks of the same
/// name stay apart.
pub(super) fn shards(
    policies: &[&PolicyInput],
    jobs: Vec<Placed>,
) -> BTreeMap<Option<String>, JobShard> {
    let all_sinks: BTreeMap<String, SinkSpec> = policies
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
    let mut shards = BTreeMap::new();
    for (node, jobs) in by_node {
        let names: BTreeSet<&str> = jobs
            .iter()
            .flat_map(|j| j.sinks.iter().map(String::as_str))
            .collect();
        let sinks = names
            .iter()
            .filter_map(|n| all_sinks.get(*n).cloned())
            .collect();
        shards.insert(node.clone(), JobShard::new(node, jobs, sinks));
    }
    shards
}
