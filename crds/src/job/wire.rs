//! Format 2 of a published shard: the jobs of one endpoint (one origin and address with the
//! same settings: a pod's port pulled for several profile types) share one entry, which holds
//! the settings and the labels common to all of them once; each profile carries only its id,
//! its profile and the labels that are its own (`__name__`, `__delta__`). At 100 pods a node
//! with five profile types each, that is a third of format 1's bytes, before gzip.
//!
//! The in-memory [`JobShard`] is unchanged: this is only how it travels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EbpfShard, JobOrigin, JobShard, ScrapeAuth, ScrapeJob, ScrapeTls, SinkSpec};
use crate::{Duration, ResolvedProfile, Scheme, relabel::Labels, relabel::RelabelConfig};

/// The shard as written (borrowing the jobs: nothing is copied but the common labels).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardOut<'a> {
    format_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    endpoints: Vec<EndpointOut<'a>>,
    sinks: &'a [SinkSpec],
    #[serde(skip_serializing_if = "Option::is_none")]
    ebpf: Option<&'a EbpfShard>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointOut<'a> {
    origin: &'a JobOrigin,
    address: &'a str,
    scheme: Scheme,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    params: &'a BTreeMap<String, Vec<String>>,
    interval: Duration,
    timeout: Duration,
    labels: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    relabelings: &'a [RelabelConfig],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    external_labels: &'a Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<&'a ScrapeAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a ScrapeTls>,
    sinks: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_profile_bytes: Option<u64>,
    profiles: Vec<ProfileOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileOut<'a> {
    id: &'a str,
    profile: &'a ResolvedProfile,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'a str, &'a str>,
}

/// The shard as read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShardIn {
    format_version: u32,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointIn>,
    #[serde(default)]
    sinks: Vec<SinkSpec>,
    #[serde(default)]
    ebpf: Option<EbpfShard>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointIn {
    origin: JobOrigin,
    address: String,
    #[serde(default)]
    scheme: Scheme,
    #[serde(default)]
    params: BTreeMap<String, Vec<String>>,
    interval: Duration,
    timeout: Duration,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    relabelings: Vec<RelabelConfig>,
    #[serde(default)]
    external_labels: Labels,
    #[serde(default)]
    auth: Option<ScrapeAuth>,
    #[serde(default)]
    tls: Option<ScrapeTls>,
    #[serde(default)]
    sinks: Vec<String>,
    #[serde(default)]
    max_profile_bytes: Option<u64>,
    #[serde(default)]
    profiles: Vec<ProfileIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileIn {
    id: String,
    profile: ResolvedProfile,
    #[serde(default)]
    labels: Labels,
}

/// Whether `a` and `b` may share an endpoint entry: everything but id, profile and labels.
fn same_endpoint(a: &ScrapeJob, b: &ScrapeJob) -> bool {
    a.origin == b.origin
        && a.address == b.address
        && a.scheme == b.scheme
        && a.params == b.params
        && a.interval == b.interval
        && a.timeout == b.timeout
        && a.relabelings == b.relabelings
        && a.external_labels == b.external_labels
        && a.auth == b.auth
        && a.tls == b.tls
        && a.sinks == b.sinks
        && a.max_profile_bytes == b.max_profile_bytes
}

fn endpoint_out<'a>(jobs: &[&'a ScrapeJob]) -> Option<EndpointOut<'a>> {
    let first = *jobs.first()?;
    // The labels every job of the endpoint has, with the same value.
    let common: BTreeMap<&str, &str> = first
        .labels
        .iter()
        .filter(|(k, v)| jobs[1..].iter().all(|j| j.labels.get(*k) == Some(*v)))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let profiles = jobs
        .iter()
        .map(|j| ProfileOut {
            id: &j.id,
            profile: &j.profile,
            labels: j
                .labels
                .iter()
                .filter(|(k, _)| !common.contains_key(k.as_str()))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        })
        .collect();
    Some(EndpointOut {
        origin: &first.origin,
        address: &first.address,
        scheme: first.scheme,
        params: &first.params,
        interval: first.interval,
        timeout: first.timeout,
        labels: common,
        relabelings: &first.relabelings,
        external_labels: &first.external_labels,
        auth: first.auth.as_ref(),
        tls: first.tls.as_ref(),
        sinks: &first.sinks,
        max_profile_bytes: first.max_profile_bytes,
        profiles,
    })
}

/// `shard` in format 2: endpoints ordered by origin and address, each endpoint's profiles in
/// the order of their ids; the same shard always gives the same bytes.
pub(super) fn to_json(shard: &JobShard) -> String {
    let mut by_target: BTreeMap<(&JobOrigin, &str), Vec<Vec<&ScrapeJob>>> = BTreeMap::new();
    for job in &shard.jobs {
        let groups = by_target
            .entry((&job.origin, job.address.as_str()))
            .or_default();
        match groups.iter_mut().find(|g| same_endpoint(g[0], job)) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    let out = ShardOut {
        format_version: super::JOB_SHARD_FORMAT_VERSION,
        node: shard.node.as_deref(),
        endpoints: by_target
            .values()
            .flatten()
            .filter_map(|g| endpoint_out(g))
            .collect(),
        sinks: &shard.sinks,
        ebpf: shard.ebpf.as_ref(),
    };
    // Serialization of plain data with string keys cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

/// A format 2 shard, its jobs sorted by id again.
pub(super) fn from_json(json: &str) -> Result<JobShard, serde_json::Error> {
    let shard: ShardIn = serde_json::from_str(json)?;
    let mut jobs = Vec::new();
    for e in shard.endpoints {
        for p in e.profiles {
            let mut labels = e.labels.clone();
            labels.extend(p.labels);
            jobs.push(ScrapeJob {
                id: p.id,
                origin: e.origin.clone(),
                address: e.address.clone(),
                scheme: e.scheme,
                profile: p.profile,
                params: e.params.clone(),
                interval: e.interval,
                timeout: e.timeout,
                labels,
                relabelings: e.relabelings.clone(),
                external_labels: e.external_labels.clone(),
                auth: e.auth.clone(),
                tls: e.tls.clone(),
                sinks: e.sinks.clone(),
                max_profile_bytes: e.max_profile_bytes,
            });
        }
    }
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(JobShard {
        format_version: shard.format_version,
        node: shard.node,
        jobs,
        sinks: shard.sinks,
        ebpf: shard.ebpf,
    })
}
