//! Publishing job shards: one ConfigMap per node (plus one for jobs without a node), written by
//! server-side apply only when its content changes, and deleted by label when no longer wanted.
//!
//! ConfigMaps, not Secrets: shards never hold credentials (jobs carry Secret *references*, which
//! each scraper resolves under its own RBAC), so anyone allowed to read the operator's namespace
//! may see them, and `kubectl get cm kubeprof-jobs.<node> -o yaml` is a useful debugging aid.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    constants::{
        COMPONENT_JOBS, COMPONENT_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
        SHARD_NODE_LABEL,
    },
    health::{ShardPayload, health_object_name, jobs_object_name, node_label_value},
    job::JobShard,
};

use crate::{
    metrics::{Failure, Metrics},
    owner::Owner,
};

/// Writes in flight at once: enough to keep the API server and etcd busy while each request
/// waits on the other (a thousand shards are written per full publish at 1,000 nodes); far
/// below the API server's default limit of 200 mutating requests in flight.
const CONCURRENT_WRITES: usize = 32;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A shard could not be written.
    #[error("cannot write job shard {name}: {source}")]
    Write {
        /// ConfigMap name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A health report could not be given the operator's Deployment as owner.
    #[error("cannot set the owner of {name}: {source}")]
    Own {
        /// ConfigMap name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// An orphan shard or a stale health report could not be deleted.
    #[error("cannot delete {name}: {source}")]
    Delete {
        /// ConfigMap name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The ConfigMap holding `shard`, without an owner.
pub fn shard_config_map(namespace: &str, shard: &JobShard) -> ConfigMap {
    owned_shard_config_map(namespace, shard, &Owner::none())
}

/// The ConfigMap holding `shard`, owned by `owner`.
pub(crate) fn owned_shard_config_map(
    namespace: &str,
    shard: &JobShard,
    owner: &Owner,
) -> ConfigMap {
    payload_config_map(
        namespace,
        shard.node.as_deref(),
        &ShardPayload::new(shard.to_json()),
        owner,
    )
}

/// The ConfigMap holding the shard of `node` serialized to `payload`, owned by `owner`.
pub(crate) fn payload_config_map(
    namespace: &str,
    node: Option<&str>,
    payload: &ShardPayload,
    owner: &Owner,
) -> ConfigMap {
    let name = jobs_object_name(node);
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (COMPONENT_LABEL.to_string(), COMPONENT_JOBS.to_string()),
    ]);
    if let Some(node) = node.and_then(node_label_value) {
        labels.insert(SHARD_NODE_LABEL.into(), node.into());
    }
    let (data, binary_data) = payload.to_data();
    let mut cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data,
        binary_data,
        ..Default::default()
    };
    owner.set_on(&mut cm.metadata);
    let hash = format!("{:016x}", fingerprint(&cm, owner));
    cm.metadata.annotations = Some(BTreeMap::from([(
        CONTENT_HASH_ANNOTATION.to_string(),
        hash,
    )]));
    cm
}

/// The content fingerprint an object's metadata records.
fn recorded_hash(meta: &ObjectMeta) -> Option<u64> {
    meta.annotations
        .as_ref()?
        .get(CONTENT_HASH_ANNOTATION)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// Annotation carrying the fingerprint of a shard's content, so that the operator can watch
/// shard objects by metadata only (their data is megabytes at scale) and still skip writes
/// that would change nothing.
pub const CONTENT_HASH_ANNOTATION: &str = "kubeprof.io/content-hash";

/// A fingerprint of what a shard ConfigMap carries (data, labels and owner: a shard published
/// before the operator had an owner is rewritten once to get one).
fn fingerprint(cm: &ConfigMap, owner: &Owner) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    if let Some(uid) = owner.uid() {
        h.update(b"owner");
        h.update(uid.as_bytes());
    }
    for (k, v) in cm.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        h.update(k.as_bytes());
        h.update(&v.0);
    }
    for (k, v) in cm.labels() {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    h.digest()
}

/// The content fingerprints the watched shard objects `existing` record, by object name.
fn fingerprints_on_server(
    existing: &[std::sync::Arc<PartialObjectMeta<ConfigMap>>],
) -> HashMap<String, u64> {
    existing
        .iter()
        .map(|m| (m.name_any(), recorded_hash(&m.metadata).unwrap_or(0)))
        .collect()
}

/// Writes the shard object `name` whole: an unconditional update, or a create where there is
/// none. Not a server-side apply: the operator is the only writer of these objects and sends
/// all of each, and an update costs the API server a quarter less CPU than an apply (1,000
/// 8 KiB shards, kube-apiserver 1.20: 1.0 s against 1.3-1.5 s), which is most of a target
/// change's cost at 1,000 nodes.
async fn put(api: &Api<ConfigMap>, name: &str, cm: &ConfigMap) -> Result<(), kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let is = |e: &kube::Error, code: u16| matches!(e, kube::Error::Api(s) if s.code == code);
    match api.replace(name, &params, cm).await {
        Err(e) if is(&e, 404) => match api.create(&params, cm).await {
            // Created by someone else meanwhile: update that one.
            Err(e) if is(&e, 409) => api.replace(name, &params, cm).await.map(|_| ()),
            r => r.map(|_| ()),
        },
        r => r.map(|_| ()),
    }
}

/// One shard write: object name, fingerprint written, bytes of shard data, outcome.
type WriteResult = (String, Option<u64>, usize, Result<(), kube::Error>);

/// Bytes of shard data a ConfigMap carries (`data` and `binaryData`).
pub fn payload_bytes(cm: &ConfigMap) -> usize {
    cm.data
        .iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        + cm.binary_data
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>()
}

/// What one publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Shards created or changed.
    pub written: usize,
    /// Shards deleted.
    pub deleted: usize,
    /// Shards already up to date.
    pub unchanged: usize,
}

/// Shard writes started while the compile that builds them goes on: a shard whose scraper
/// already has every grant it needs (its health report exists, the Roles already grant its
/// Secrets) is written as soon as it is built, so that writing a thousand shards overlaps
/// compiling them; the others wait for [`Publisher::publish_changes`], after the grants.
pub(crate) struct EarlyWrites<'a> {
    publisher: &'a mut Publisher,
    on_server: HashMap<String, u64>,
    in_flight: futures::stream::FuturesUnordered<
        std::pin::Pin<Box<dyn std::future::Future<Output = WriteResult> + Send>>,
    >,
    /// Shards that must wait, kept (within [`Built::KEEP_BYTES`]) to write them without
    /// building them again.
    deferred: Vec<ConfigMap>,
    deferred_bytes: usize,
    stats: PublishStats,
    first_error: Option<PublishError>,
}

impl<'a> EarlyWrites<'a> {
    /// Early writes through `publisher`, against the watched shard objects `existing`.
    pub(crate) fn new(
        publisher: &'a mut Publisher,
        existing: &[std::sync::Arc<PartialObjectMeta<ConfigMap>>],
    ) -> Self {
        let on_server = fingerprints_on_server(existing);
        Self {
            publisher,
            on_server,
            in_flight: futures::stream::FuturesUnordered::new(),
            deferred: Vec::new(),
            deferred_bytes: 0,
            stats: PublishStats::default(),
            first_error: None,
        }
    }

    /// Takes one built shard object: starts its write when `ready` (its scraper has its
    /// grants) and the server may not hold it yet, keeps it for later when not ready. Waits
    /// for a write to finish first when [`CONCURRENT_WRITES`] are under way.
    pub(crate) async fn offer(&mut self, cm: ConfigMap, ready: bool) {
        if !self.publisher.differs(&cm, &self.on_server) {
            return;
        }
        if !ready {
            let bytes = payload_bytes(&cm);
            if self.deferred_bytes + bytes <= Built::KEEP_BYTES {
                self.deferred_bytes += bytes;
                self.deferred.push(cm);
            }
            return;
        }
        while self.in_flight.len() >= CONCURRENT_WRITES {
            self.finish_one().await;
        }
        let name = cm.name_any();
        self.in_flight
            .push(Box::pin(self.publisher.write(name, cm)));
    }

    async fn finish_one(&mut self) {
        if let Some(result) = self.in_flight.next().await
            && let Err(e) = self.publisher.record_write(result, &mut self.stats)
        {
            self.first_error.get_or_insert(e);
        }
    }

    /// Waits for every write; what they did, and the first error.
    pub(crate) async fn finish(mut self) -> (PublishStats, Option<PublishError>, Vec<ConfigMap>) {
        while !self.in_flight.is_empty() {
            self.finish_one().await;
        }
        (self.stats, self.first_error, self.deferred)
    }
}

/// Writes shards into one namespace, remembering what it wrote so that an unchanged shard is
/// never rewritten, even before the watch has delivered the previous write.
#[derive(Debug)]
pub struct Publisher {
    api: Api<ConfigMap>,
    namespace: String,
    written: HashMap<String, u64>,
    /// The fingerprint of every shard that should exist, by object name, with its node.
    desired: HashMap<String, (Option<String>, u64)>,
    /// Written by this pass before [`Publisher::publish_changes`] (the watch may not show them
    /// yet).
    fresh: HashSet<String>,
    metrics: Metrics,
    owner: Owner,
}

/// Shards built by a compile, as the publisher needs them.
#[derive(Debug, Default)]
pub struct Built {
    /// Fingerprint of each recomputed shard by node (`None`: the node has no shard any more).
    pub fingerprints: Vec<(Option<String>, Option<u64>)>,
    /// Some of the recomputed ConfigMaps, kept to save building them again (bounded: the rest
    /// are rebuilt one by one while writing).
    pub kept: HashMap<String, ConfigMap>,
    /// Bytes of shard data in `kept`.
    kept_bytes: usize,
}

impl Built {
    /// Shard bytes kept at most: a full compile at 100,000 pods builds a thousand shards of a
    /// few hundred kilobytes each; a change touching fewer is published without building any
    /// of them twice.
    const KEEP_BYTES: usize = 48 << 20;

    /// Records the fingerprint of `node`'s recomputed shard object (`None`: no shard any more).
    pub(crate) fn record(&mut self, node: &Option<String>, cm: Option<&ConfigMap>) {
        let fp = cm.and_then(|cm| recorded_hash(&cm.metadata));
        self.fingerprints.push((node.clone(), fp));
    }

    /// Keeps `cm` to write it without building it again, within the byte budget.
    pub(crate) fn keep(&mut self, cm: ConfigMap) {
        let bytes = payload_bytes(&cm);
        if self.kept_bytes + bytes <= Self::KEEP_BYTES {
            self.kept_bytes += bytes;
            self.kept.insert(cm.name_any(), cm);
        }
    }

    /// Records one recomputed shard of `node`, as `owner` owns it.
    #[cfg(test)]
    pub(crate) fn add(
        &mut self,
        namespace: &str,
        owner: &Owner,
        node: &Option<String>,
        shard: Option<&JobShard>,
    ) {
        let Some(shard) = shard else {
            self.fingerprints.push((node.clone(), None));
            return;
        };
        let cm = owned_shard_config_map(namespace, shard, owner);
        self.record(node, Some(&cm));
        self.keep(cm);
    }
}

impl Publisher {
    /// A publisher into `namespace`.
    pub fn new(client: kube::Client, namespace: &str, metrics: Metrics) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            written: HashMap::new(),
            desired: HashMap::new(),
            fresh: HashSet::new(),
            metrics,
            owner: Owner::none(),
        }
    }

    /// The same publisher, making `owner` the owner of every shard it writes.
    pub(crate) fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// The namespace it writes into.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Forgets what was written (after losing and regaining leadership, another replica may
    /// have written in between).
    pub fn reset(&mut self) {
        self.written.clear();
    }

    /// Makes the published shards equal `shards` (all of them): writes the changed ones,
    /// deletes the objects of shards that no longer exist.
    #[cfg(test)]
    pub async fn publish(
        &mut self,
        shards: &BTreeMap<Option<String>, JobShard>,
        existing: &[std::sync::Arc<PartialObjectMeta<ConfigMap>>],
    ) -> Result<PublishStats, PublishError> {
        let mut built = Built::default();
        for (node, shard) in shards {
            built.add(&self.namespace, &self.owner, node, Some(shard));
        }
        let gone: Vec<Option<String>> = self
            .desired
            .values()
            .map(|(node, _)| node.clone())
            .filter(|node| !shards.contains_key(node))
            .collect();
        built
            .fingerprints
            .extend(gone.into_iter().map(|n| (n, None)));
        let (namespace, owner) = (self.namespace.clone(), self.owner.clone());
        self.publish_changes(built, existing, |node| {
            shards
                .get(node)
                .map(|s| owned_shard_config_map(&namespace, s, &owner))
        })
        .await
    }

    /// Records the shards a compile recomputed, then makes the published shards equal every
    /// shard that should exist: writes those whose object differs (rebuilding the ConfigMaps
    /// not kept with `rebuild`, a few at a time), deletes the objects of shards that no longer
    /// exist. `existing` is the watched metadata of the shard ConfigMaps (an object edited by
    /// hand without its hash annotation is rewritten). Every write is attempted; the first
    /// error is returned after all were tried.
    pub async fn publish_changes(
        &mut self,
        mut built: Built,
        existing: &[std::sync::Arc<PartialObjectMeta<ConfigMap>>],
        rebuild: impl Fn(&Option<String>) -> Option<ConfigMap>,
    ) -> Result<PublishStats, PublishError> {
        for (node, fp) in std::mem::take(&mut built.fingerprints) {
            let name = jobs_object_name(node.as_deref());
            match fp {
                Some(fp) => self.desired.insert(name, (node, fp)),
                None => self.desired.remove(&name),
            };
        }
        let mut stats = PublishStats::default();
        let on_server = fingerprints_on_server(existing);
        let mut stale = Vec::new();
        for (name, (node, fp)) in &self.desired {
            if on_server.get(name) == Some(fp) {
                self.written.insert(name.clone(), *fp);
            }
            if self.holds(name, *fp, &on_server) {
                stats.unchanged += 1;
                continue;
            }
            stale.push((name.clone(), node.clone()));
        }
        stale.sort();
        let orphans: Vec<String> = on_server
            .keys()
            .filter(|n| !self.desired.contains_key(*n))
            .cloned()
            .collect();

        let rebuild = &rebuild;
        let kept = std::sync::Mutex::new(built.kept);
        let kept = &kept;
        // Built lazily as writes complete: at most a few rebuilt ConfigMaps are held at once.
        let results: Vec<WriteResult> =
            futures::stream::iter(stale.into_iter().filter_map(|(name, node)| {
                let cm = kept
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name)
                    .or_else(|| rebuild(&node))?;
                Some((name, cm))
            }))
            .map(|(name, cm)| self.write(name, cm))
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut first_error = None;
        for result in results {
            if let Err(e) = self.record_write(result, &mut stats) {
                first_error.get_or_insert(e);
            }
        }
        let api = &self.api;
        for (name, r) in delete_all(api, orphans).await {
            match r {
                Ok(()) => {
                    self.written.remove(&name);
                    self.metrics.shard_deletes.inc();
                    stats.deleted += 1;
                }
                Err(source) => {
                    self.metrics.error(Failure::Delete);
                    first_error.get_or_insert(PublishError::Delete { name, source });
                }
            }
        }
        self.fresh.clear();
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Writes one shard object (server-side apply, forced: the operator owns shards).
    fn write(
        &self,
        name: String,
        cm: ConfigMap,
    ) -> impl std::future::Future<Output = WriteResult> + Send + 'static {
        let api = self.api.clone();
        async move {
            let fp = recorded_hash(&cm.metadata);
            let bytes = payload_bytes(&cm);
            let r = put(&api, &name, &cm).await;
            (name, fp, bytes, r)
        }
    }

    /// Remembers a write's outcome (a failed one is written again by the next publish).
    fn record_write(
        &mut self,
        (name, fp, bytes, r): WriteResult,
        stats: &mut PublishStats,
    ) -> Result<(), PublishError> {
        match r {
            Ok(()) => {
                if let Some(fp) = fp {
                    self.written.insert(name.clone(), fp);
                }
                self.fresh.insert(name);
                self.metrics.shard_writes.inc();
                self.metrics
                    .shard_write_bytes
                    .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
                stats.written += 1;
                Ok(())
            }
            Err(source) => {
                self.written.remove(&name);
                self.metrics.error(Failure::Publish);
                Err(PublishError::Write { name, source })
            }
        }
    }

    /// Whether the server holds the shard object `name` with fingerprint `fp`: the watch
    /// (`on_server`, fingerprints by name) shows it, or this publisher wrote it to an object
    /// that exists or that it wrote in this pass.
    fn holds(&self, name: &str, fp: u64, on_server: &HashMap<String, u64>) -> bool {
        on_server.get(name) == Some(&fp)
            || (self.written.get(name) == Some(&fp)
                && (on_server.contains_key(name) || self.fresh.contains(name)))
    }

    /// Whether the server may not hold `cm` yet.
    fn differs(&self, cm: &ConfigMap, on_server: &HashMap<String, u64>) -> bool {
        recorded_hash(&cm.metadata).is_none_or(|fp| !self.holds(&cm.name_any(), fp, on_server))
    }

    /// The owner of what this publisher writes.
    pub(crate) fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Makes the operator's Deployment an owner of the named health reports, so that
    /// uninstalling deletes them too: the scrapers write them and cannot know its UID. A
    /// strategic-merge patch of the owner references only; the scrapers' server-side applies
    /// do not list owners, so they keep it. Returns how many were patched.
    pub async fn own_health_reports(&self, names: Vec<String>) -> Result<usize, PublishError> {
        let Some(patch) = self.owner.patch() else {
            return Ok(0);
        };
        let api = &self.api;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let results: Vec<(String, Result<(), kube::Error>)> =
            futures::stream::iter(names.into_iter().map(|name| {
                let (patch, params) = (&patch, &params);
                async move {
                    let r = match api.patch(&name, params, &Patch::Strategic(patch)).await {
                        Ok(_) => Ok(()),
                        // Deleted meanwhile: nothing left to own.
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        Err(e) => Err(e),
                    };
                    (name, r)
                }
            }))
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut owned = 0;
        let mut first_error = None;
        for (name, r) in results {
            match r {
                Ok(()) => owned += 1,
                Err(source) => {
                    self.metrics.error(Failure::Owner);
                    first_error.get_or_insert(PublishError::Own { name, source });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(owned),
        }
    }

    /// Deletes the named health reports (see [`stale_health_reports`]); returns how many went.
    /// Every deletion is attempted and failures are counted; the first is returned.
    pub async fn delete_health_reports(&self, names: Vec<String>) -> Result<usize, PublishError> {
        let mut deleted = 0;
        let mut first_error = None;
        for (name, r) in delete_all(&self.api, names).await {
            match r {
                Ok(()) => deleted += 1,
                Err(source) => {
                    self.metrics.error(Failure::Delete);
                    first_error.get_or_insert(PublishError::Delete { name, source });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }
}

/// Scrape-health reports that describe no published jobs: their node has no shard (the node
/// is gone, or has nothing to scrape). Without this, every node an autoscaler ever removed
/// would leave its report in the operator's namespace. A scraper that still runs rewrites its
/// report as soon as it gets jobs again, so deleting one loses nothing the status needs.
pub fn stale_health_reports<'a>(
    shard_nodes: &BTreeSet<Option<String>>,
    reports: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let wanted: HashSet<String> = shard_nodes
        .iter()
        .map(|node| health_object_name(node.as_deref()))
        .collect();
    reports
        .into_iter()
        .filter(|name| !wanted.contains(*name))
        .map(str::to_string)
        .collect()
}

/// Deletes the named ConfigMaps, a few at a time; one already gone counts as deleted.
async fn delete_all(
    api: &Api<ConfigMap>,
    names: Vec<String>,
) -> Vec<(String, Result<(), kube::Error>)> {
    futures::stream::iter(names.into_iter().map(|name| async move {
        let r = match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
        (name, r)
    }))
    .buffer_unordered(CONCURRENT_WRITES)
    .collect()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::Failure,
        mock::{self, ApiServer},
        owner,
    };
    use http::Method;
    use kubeprof_crds::health::{
        GZIP_ABOVE_BYTES, JOB_SHARD_GZIP_KEY, shard_from_config_map as read_shard,
    };
    use std::sync::Arc;

    const CONFIG_MAPS: &str = "/api/v1/namespaces/kubeprof/configmaps";

    fn shard(node: &str) -> JobShard {
        JobShard::new(Some(node.into()), Vec::new(), Vec::new())
    }

    /// What the shard watch shows of an object named `name` recording `hash`.
    fn on_server(name: &str, hash: Option<&str>) -> Arc<PartialObjectMeta<ConfigMap>> {
        let mut meta = PartialObjectMeta::<ConfigMap>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.annotations =
            hash.map(|h| BTreeMap::from([(CONTENT_HASH_ANNOTATION.to_string(), h.to_string())]));
        Arc::new(meta)
    }

    fn publisher() -> (Publisher, ApiServer, Metrics) {
        let (client, server) = mock::client();
        let metrics = Metrics::unregistered();
        (
            Publisher::new(client, "kubeprof", metrics.clone()),
            server,
            metrics,
        )
    }

    #[tokio::test]
    async fn only_changed_shards_are_written_and_orphans_are_deleted() {
        let (mut publisher, mut server, metrics) = publisher();
        let shards = BTreeMap::from([
            (Some("node-a".to_string()), shard("node-a")),
            (Some("node-b".to_string()), shard("node-b")),
        ]);
        let unchanged = shard_config_map("kubeprof", &shards[&Some("node-a".to_string())]);
        let existing = vec![
            on_server(
                &unchanged.name_any(),
                unchanged
                    .annotations()
                    .get(CONTENT_HASH_ANNOTATION)
                    .map(String::as_str),
            ),
            on_server("kubeprof-jobs.node-b", Some("0000000000000001")),
            on_server("kubeprof-jobs.node-gone", None),
        ];
        let verify = async {
            let write = server
                .expect(Method::PUT, &format!("{CONFIG_MAPS}/kubeprof-jobs.node-b"))
                .await;
            assert!(
                write.uri.contains("fieldManager=kubeprof"),
                "written as the operator: {}",
                write.uri
            );
            let expected = shard_config_map("kubeprof", &shards[&Some("node-b".to_string())]);
            assert_eq!(
                write.body,
                serde_json::to_value(&expected).unwrap_or_default()
            );
            write.echo();
            server
                .expect(
                    Method::DELETE,
                    &format!("{CONFIG_MAPS}/kubeprof-jobs.node-gone"),
                )
                .await
                .ok(&*on_server("kubeprof-jobs.node-gone", None));
        };
        let (stats, ()) = tokio::join!(publisher.publish(&shards, &existing), verify);
        assert_eq!(
            stats.ok(),
            Some(PublishStats {
                written: 1,
                deleted: 1,
                unchanged: 1
            })
        );
        assert_eq!(
            (metrics.shard_writes.get(), metrics.shard_deletes.get()),
            (1, 1)
        );

        // The watch has not caught up yet: what was just written is not written again.
        let existing = &existing[..2];
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            publisher.publish(&shards, existing),
        )
        .await;
        assert!(matches!(
            again,
            Ok(Ok(PublishStats {
                written: 0,
                unchanged: 2,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn a_refused_write_is_counted_returned_and_attempted_again_next_time() {
        let (mut publisher, mut server, metrics) = publisher();
        let shards = BTreeMap::from([(Some("node-a".to_string()), shard("node-a"))]);
        let path = format!("{CONFIG_MAPS}/kubeprof-jobs.node-a");
        let verify = async {
            server
                .expect(Method::PUT, &path)
                .await
                .fail(500, "InternalError");
        };
        let (result, ()) = tokio::join!(publisher.publish(&shards, &[]), verify);
        match result {
            Err(PublishError::Write { name, source }) => {
                assert_eq!(name, "kubeprof-jobs.node-a");
                assert!(matches!(source, kube::Error::Api(s) if s.code == 500));
            }
            other => panic!("expected a write error, got {other:?}"),
        }
        assert_eq!(metrics.errors_of(Failure::Publish), 1);
        let verify = async {
            server.expect(Method::PUT, &path).await.echo();
        };
        let (result, ()) = tokio::join!(publisher.publish(&shards, &[]), verify);
        assert_eq!(result.ok().map(|s| s.written), Some(1));
    }

    #[tokio::test]
    async fn a_shard_object_that_is_not_there_is_created() {
        let (mut publisher, mut server, _) = publisher();
        let shards = BTreeMap::from([(Some("node-a".to_string()), shard("node-a"))]);
        let verify = async {
            server
                .expect(Method::PUT, &format!("{CONFIG_MAPS}/kubeprof-jobs.node-a"))
                .await
                .fail(404, "NotFound");
            let create = server.expect(Method::POST, CONFIG_MAPS).await;
            assert_eq!(create.body["metadata"]["name"], "kubeprof-jobs.node-a");
            create.echo();
        };
        let (result, ()) = tokio::join!(publisher.publish(&shards, &[]), verify);
        assert_eq!(result.ok().map(|s| s.written), Some(1));
    }

    #[tokio::test]
    async fn shards_are_owned_by_the_operator_deployment_and_unowned_ones_rewritten() {
        let (publisher, mut server, _) = publisher();
        let mut publisher = publisher.with_owner(owner::tests::owner());
        let shards = BTreeMap::from([(Some("node-a".to_string()), shard("node-a"))]);
        // What an operator without an owner published, with the same jobs.
        let unowned = shard_config_map("kubeprof", &shard("node-a"));
        let existing = vec![on_server(
            "kubeprof-jobs.node-a",
            unowned
                .annotations()
                .get(CONTENT_HASH_ANNOTATION)
                .map(String::as_str),
        )];
        let verify = async {
            let write = server
                .expect(Method::PUT, &format!("{CONFIG_MAPS}/kubeprof-jobs.node-a"))
                .await;
            assert_eq!(
                write.body["metadata"]["ownerReferences"],
                owner::tests::expected_reference()
            );
            write.echo();
        };
        let (stats, ()) = tokio::join!(publisher.publish(&shards, &existing), verify);
        assert_eq!(stats.ok().map(|s| s.written), Some(1));
    }

    #[tokio::test]
    async fn health_reports_are_given_the_operator_as_owner_by_a_merge_of_owners() {
        let (publisher, mut server, metrics) = publisher();
        let publisher = publisher.with_owner(owner::tests::owner());
        let verify = async {
            let patch = server
                .expect(
                    Method::PATCH,
                    &format!("{CONFIG_MAPS}/kubeprof-health.node-a"),
                )
                .await;
            assert_eq!(
                patch.body["metadata"]["ownerReferences"],
                owner::tests::expected_reference()
            );
            patch.echo();
            server
                .expect(
                    Method::PATCH,
                    &format!("{CONFIG_MAPS}/kubeprof-health.node-b"),
                )
                .await
                .fail(500, "InternalError");
        };
        let names = vec![
            "kubeprof-health.node-a".to_string(),
            "kubeprof-health.node-b".to_string(),
        ];
        let (result, ()) = tokio::join!(publisher.own_health_reports(names), verify);
        assert!(
            matches!(result, Err(PublishError::Own { name, .. }) if name == "kubeprof-health.node-b")
        );
        assert_eq!(metrics.errors_of(Failure::Owner), 1);
    }

    #[test]
    fn health_reports_of_nodes_without_jobs_are_stale() {
        let shards = BTreeSet::from([Some("node-a".to_string()), None]);
        let stale = stale_health_reports(
            &shards,
            [
                "kubeprof-health.node-a",
                "kubeprof-health",
                "kubeprof-health.node-gone",
            ],
        );
        assert_eq!(stale, vec!["kubeprof-health.node-gone".to_string()]);
        assert_eq!(
            stale_health_reports(&BTreeSet::new(), ["kubeprof-health"]),
            vec!["kubeprof-health".to_string()]
        );
    }

    #[test]
    fn large_shards_are_compressed_and_read_back() {
        let small = JobShard::new(Some("node-a".into()), Vec::new(), Vec::new());
        let cm = shard_config_map("kubeprof", &small);
        assert_eq!(cm.name_any(), "kubeprof-jobs.node-a");
        assert!(cm.data.is_some());
        assert_eq!(
            cm.labels().get(SHARD_NODE_LABEL).map(String::as_str),
            Some("node-a")
        );
        assert_eq!(read_shard(&cm).and_then(Result::ok), Some(small));

        let mut big = JobShard::new(Some("node-b".into()), Vec::new(), Vec::new());
        big.node = Some(format!("node-b{}", "x".repeat(GZIP_ABOVE_BYTES)));
        let cm = shard_config_map("kubeprof", &big);
        assert!(cm.data.is_none());
        let stored = cm
            .binary_data
            .as_ref()
            .map_or(0, |d| d[JOB_SHARD_GZIP_KEY].0.len());
        assert!(
            stored < GZIP_ABOVE_BYTES / 10,
            "compressed to {stored} bytes"
        );
        assert_eq!(read_shard(&cm).and_then(Result::ok), Some(big));
    }
}
