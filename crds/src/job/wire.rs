//! Format 2 of a published shard: the jobs of one endpoint (one origin and address with the
//! same settings: a pod's port pulled for several profile types) share one entry, which holds
//! the settings and the labels common to all of them once; each profile carries only its id,
//! its profile and the labels that are its own (`__name__`, `__delta__`). At 100 pods a node
//! with five profile types each, that is a third of format 1's bytes, before gzip.
//!
//! The in-memory [`JobShard`] is unchanged: this is only how it travels. Entries are ordered by
//! their first job id, so that a shard is the concatenation of its pods' [`Fragment`]s in that
//! order: the operator splices a node's shard from the fragments of its unchanged pods and of
//! those recomputed ([`fragments`], [`assemble`]) instead of serializing every pod again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EbpfShard, JobOrigin, JobShard, ScrapeAuth, ScrapeJob, ScrapeTls, SinkSpec};
use crate::{Duration, ResolvedProfile, Scheme, relabel::Labels, relabel::RelabelConfig};

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

/// The serialized endpoint entries of one (origin, address) pair: the unit a shard's
/// `endpoints` list is made of. The operator keeps these per pod and splices a node's shard
/// from them when few of its pods changed; [`to_json`] is the same splice of every pair, so
/// both give the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The smallest job id of its entries: fragments are ordered by it.
    pub first_id: String,
    /// A hash of its origin and address: two fragments with the same key would have been one.
    pub key: u64,
    /// The entries, comma-separated JSON objects.
    pub text: String,
}

/// The fragments of `jobs` (in id order), each pair's endpoints in the order of their first
/// job; unordered.
pub fn fragments<'a>(jobs: impl IntoIterator<Item = &'a ScrapeJob>) -> Vec<Fragment> {
    let mut by_target: BTreeMap<(&JobOrigin, &str), Vec<Vec<&ScrapeJob>>> = BTreeMap::new();
    for job in jobs {
        let groups = by_target
            .entry((&job.origin, job.address.as_str()))
            .or_default();
        match groups.iter_mut().find(|g| same_endpoint(g[0], job)) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    by_target
        .into_iter()
        .filter_map(|((origin, address), groups)| {
            let first_id = groups.first()?.first()?.id.clone();
            let mut text = String::new();
            for g in &groups {
                if !text.is_empty() {
                    text.push(',');
                }
                text.push_str(&json(&endpoint_out(g)?));
            }
            Some(Fragment {
                first_id,
                key: fragment_key(origin, address),
                text,
            })
        })
        .collect()
}

fn fragment_key(origin: &JobOrigin, address: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (origin, address).hash(&mut h);
    h.finish()
}

/// A format 2 shard from its parts: `endpoints` are fragments' texts in the order of their
/// first ids. Also where each of them landed in it.
pub fn assemble<'a>(
    node: Option<&str>,
    endpoints: impl IntoIterator<Item = &'a str>,
    sinks: &[SinkSpec],
    ebpf: Option<&EbpfShard>,
) -> (String, Vec<std::ops::Range<usize>>) {
    let mut out = String::with_capacity(1024);
    let mut ranges = Vec::new();
    out.push_str("{\"formatVersion\":");
    out.push_str(&super::JOB_SHARD_FORMAT_VERSION.to_string());
    if let Some(node) = node {
        out.push_str(",\"node\":");
        out.push_str(&json(&node));
    }
    out.push_str(",\"endpoints\":[");
    for (i, e) in endpoints.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ranges.push(out.len()..out.len() + e.len());
        out.push_str(e);
    }
    out.push_str("],\"sinks\":");
    out.push_str(&json(&sinks));
    if let Some(ebpf) = ebpf {
        out.push_str(",\"ebpf\":");
        out.push_str(&json(&ebpf));
    }
    out.push('}');
    (out, ranges)
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serialization of plain data with string keys cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// `shard` in format 2: endpoints ordered by their first job id, each endpoint's profiles in
/// the order of their ids; the same shard always gives the same bytes.
pub(super) fn to_json(shard: &JobShard) -> String {
    let mut parts = fragments(&shard.jobs);
    parts.sort_by(|a, b| a.first_id.cmp(&b.first_id));
    assemble(
        shard.node.as_deref(),
        parts.iter().map(|f| f.text.as_str()),
        &shard.sinks,
        shard.ebpf.as_ref(),
    )
    .0
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
