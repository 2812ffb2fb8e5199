//! [`compile`](super::compile), kept up to date change by change, so that one pod's change costs
//! the shard of its node rather than the whole cluster.
//!
//! A pod's jobs depend on the pod, the [`Context`] (policies, targets, namespaces) and, where a
//! policy sets `maxTargetsPerNamespace` or sampling applies, on the other pods of its namespace;
//! a shard depends on the jobs of its node's pods. So each update marks nodes dirty:
//! - a pod added, changed or removed: its old and new node;
//! - the context changed: for each namespace, if its governing policy changed (or its pods are
//!   coupled), the nodes of all its pods; else, if some of the targets that
//!   may select its pods changed, the nodes of the pods the old or new target selects;
//! - a node added, removed or relabelled: that node (its eBPF section depends on its labels);
//! - the policies asking for eBPF changed: every known node;
//! - in a namespace whose pods are coupled (`maxTargetsPerNamespace`, sampling), the nodes of
//!   pods whose namespace's decision changed, also when a rotating sampling's period ends;
//!
//! and re-emits the shard of each dirty node. Jobs are not kept between updates (at 100,000 pods
//! they would be hundreds of megabytes); each node's shard is kept as published (gzip-compressed
//! JSON) with where each pod's endpoint entries ([`wire::Fragment`]) lie in it. A dirty node's
//! shard is spliced: the entries of its unchanged pods are copied from the old text, only the
//! pods that changed (or whose targets, policy or sampling decision did) are recomputed with
//! the same per-pod steps as the full compile, and the wire format's own assembly puts them
//! together, so the bytes equal a full compile's. A target selecting one pod on each of 1,000
//! nodes thus costs 1,000 pods and 1,000 re-compressions, not 100,000 pods. What status needs
//! (each pod's share of its targets' and policy's facts) is kept per pod and summed per object
//! when one of its shares changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use kubeprof_crds::{
    health::ShardPayload,
    job::{EbpfShard, JobShard, ScrapeJob, wire},
    references::jobs_secret_refs,
};

use super::{
    Compiled, Decision, NamespaceInfo, NodeInfo, PodInfo, PolicyFacts, PolicyInput, Shares,
    TargetFacts, TargetInput, context::Context, ebpf, pod_part, policy_facts, sampling::Clock,
    sharding, targets,
};

/// A pod by (namespace, name).
pub type PodKey = (String, String);

/// A shard by node (`None`: pods without a node).
type NodeKey = Option<String>;

/// What an update changed besides the shards (which it hands to its caller one by one).
#[derive(Debug, Default)]
pub struct Update {
    /// Shards recomputed (some may be equal to what they were: their pods changed in a way
    /// their jobs do not show).
    pub shards: usize,
    /// Whether any status fact changed.
    pub facts_changed: bool,
}

#[derive(Debug)]
struct PodEntry {
    info: Arc<PodInfo>,
    /// As of the last rebuild of its node's shard.
    shares: Shares,
    /// Marks its fragments in its node's shard (unique: a changed pod gets a new one).
    slot: u64,
    /// What its jobs put into its node's shard (`None`: not built yet).
    built: Option<PodBuilt>,
}

/// What one pod's jobs put into its node's shard, besides its fragments.
#[derive(Debug)]
struct PodBuilt {
    jobs: usize,
    /// The sinks its jobs name (interned: nearly every pod names the same).
    sinks: Arc<[String]>,
    /// The Secrets its jobs' auth and TLS refer to.
    secrets: Box<[(String, String)]>,
}

/// A node's shard as published, with what the publisher needs besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardText {
    /// What its ConfigMap carries.
    pub payload: ShardPayload,
    /// Its jobs.
    pub jobs: usize,
    /// The Secrets its jobs and sinks refer to, by (namespace, name).
    pub secrets: BTreeSet<(String, String)>,
}

impl From<&JobShard> for ShardText {
    /// `shard` serialized whole.
    fn from(shard: &JobShard) -> Self {
        Self {
            payload: ShardPayload::new(shard.to_json()),
            jobs: shard.jobs.len(),
            secrets: shard
                .secret_refs()
                .into_iter()
                .map(|r| (r.namespace, r.name))
                .collect(),
        }
    }
}

/// A node's shard and where its fragments lie in its JSON.
#[derive(Debug)]
struct NodeShard {
    text: ShardText,
    /// In the order of the JSON (`None`: two pods' jobs share a fragment, so the shard is
    /// rebuilt whole each time).
    fragments: Option<Vec<Placed>>,
}

/// A fragment of a shard's JSON: whose, and where.
#[derive(Debug)]
struct Placed {
    first_id: Box<str>,
    key: u64,
    slot: u64,
    range: std::ops::Range<usize>,
}

/// The compile result, kept up to date by [`Incremental::update`].
#[derive(Debug, Default)]
pub struct Incremental {
    ctx: Option<Context>,
    /// Pods by namespace, then name.
    pods: BTreeMap<String, BTreeMap<String, PodEntry>>,
    /// The pods of each node.
    nodes: BTreeMap<NodeKey, BTreeSet<PodKey>>,
    /// What its namespace decided for each pod (only pods with a decision).
    decisions: HashMap<PodKey, Decision>,
    /// When the choices of each namespace with a rotating sampling change next.
    rotations: BTreeMap<String, Duration>,
    /// The shard of each node that has one.
    texts: BTreeMap<NodeKey, NodeShard>,
    /// The next pod's slot.
    next_slot: u64,
    /// Every sink list a pod's jobs name, shared.
    sink_lists: BTreeSet<Arc<[String]>>,
    /// The pods sharing into each target's and each policy's facts.
    target_pods: HashMap<(String, String), BTreeSet<PodKey>>,
    policy_pods: HashMap<String, BTreeSet<PodKey>>,
    target_facts: BTreeMap<(String, String), Arc<TargetFacts>>,
    policy_facts: BTreeMap<String, PolicyFacts>,
    /// Pods whose annotations opt in where no policy governs.
    ungoverned: BTreeSet<PodKey>,
    /// The labels of every known node.
    node_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Per policy asking for eBPF, the nodes it selects.
    ebpf_nodes: BTreeMap<String, BTreeSet<String>>,
}

/// What an update must redo.
#[derive(Default)]
struct Dirty {
    nodes: BTreeSet<NodeKey>,
    /// Pods whose jobs may have changed though they did not (their targets, policy or
    /// decision did); a changed pod is new to its node's shard anyway.
    pods: BTreeSet<PodKey>,
    /// Namespaces whose pods changed.
    namespaces: BTreeSet<String>,
    targets: BTreeSet<(String, String)>,
    policies: BTreeSet<String>,
    /// Every fact (the context changed).
    all_facts: bool,
}

static NO_DECISION: Decision = Decision {
    unsampled: BTreeSet::new(),
    denied: BTreeSet::new(),
    annotations_unsampled: false,
};

/// Everything [`Incremental::update`] reads but the pods: all the objects of each kind, as
/// the caches hold them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Objects<'a> {
    /// ProfilingPolicies.
    pub policies: &'a [PolicyInput],
    /// ProfilingTargets.
    pub targets: &'a [TargetInput],
    /// Namespaces.
    pub namespaces: &'a [NamespaceInfo],
    /// Nodes.
    pub nodes: &'a [NodeInfo],
}

impl<'a> From<&'a super::Inputs> for Objects<'a> {
    /// The objects of `inputs` (its pods aside).
    fn from(inputs: &'a super::Inputs) -> Self {
        Self {
            policies: &inputs.policies,
            targets: &inputs.targets,
            namespaces: &inputs.namespaces,
            nodes: &inputs.nodes,
        }
    }
}

impl Incremental {
    /// Brings the result up to date with these `objects` and these pod changes (`None`: the
    /// pod is gone), at `now` (since the Unix epoch: for sampling's rotation). On the first
    /// update, `pods` must hold every pod. Each recomputed shard goes to `shard` (`None`: the
    /// node no longer has jobs nor an eBPF section) as soon as it is built.
    pub fn update(
        &mut self,
        objects: Objects<'_>,
        pods: impl IntoIterator<Item = (PodKey, Option<Arc<PodInfo>>)>,
        now: Duration,
        mut shard: impl FnMut(&NodeKey, Option<&ShardText>),
    ) -> Update {
        let Objects {
            policies,
            targets,
            namespaces,
            nodes,
        } = objects;
        let mut dirty = Dirty::default();
        for (key, info) in pods {
            self.apply_pod(key, info, &mut dirty);
        }
        let nodes_changed = self.apply_nodes(nodes, &mut dirty);
        let old = self.ctx.take();
        let first = old.is_none();
        let (ctx, replaced) = match old {
            Some(old) if old.built_from(policies, targets, namespaces) => (old, None),
            old => (Context::new(policies, targets, namespaces), old),
        };
        let mut ebpf_changed = first;
        if first {
            dirty.nodes.extend(self.nodes.keys().cloned());
            dirty
                .nodes
                .extend(self.node_labels.keys().cloned().map(Some));
            dirty.namespaces.extend(self.pods.keys().cloned());
            dirty.all_facts = true;
        } else if let Some(old) = replaced
            && !old.same_inputs(&ctx)
        {
            self.context_changed(&old, &ctx, &mut dirty);
            if !old.same_ebpf(&ctx) {
                // Which nodes run it, at which rate, for which pods: any node may change.
                dirty
                    .nodes
                    .extend(self.node_labels.keys().cloned().map(Some));
                ebpf_changed = true;
            }
            dirty.all_facts = true;
        }
        if ebpf_changed || nodes_changed {
            let now_selected = ebpf::nodes_of(&ctx.ebpf, self.node_labels.iter());
            let changed = self
                .ebpf_nodes
                .keys()
                .chain(now_selected.keys())
                .filter(|p| self.ebpf_nodes.get(*p) != now_selected.get(*p))
                .cloned()
                .collect::<Vec<_>>();
            dirty.policies.extend(changed);
            self.ebpf_nodes = now_selected;
        }
        let ctx = self.ctx.insert(ctx);
        // Namespaces whose sampling rotated.
        let rotated: Vec<String> = self
            .rotations
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(ns, _)| ns.clone())
            .collect();
        dirty.namespaces.extend(rotated);
        Self::decide(
            ctx,
            &self.pods,
            &mut self.decisions,
            &mut self.rotations,
            now,
            dirty.all_facts,
            &mut dirty,
        );
        let mut update = Update::default();
        for node in std::mem::take(&mut dirty.nodes) {
            self.rebuild(&node, &mut dirty);
            shard(&node, self.texts.get(&node).map(|n| &n.text));
            update.shards += 1;
        }
        update.facts_changed = self.refresh_facts(&dirty);
        // Sink lists no pod names any more (a policy's sinks were renamed).
        self.sink_lists.retain(|s| Arc::strong_count(s) > 1);
        update
    }

    /// Records the nodes (all of them); marks those added, removed or relabelled dirty.
    /// Whether any was.
    fn apply_nodes(&mut self, nodes: &[NodeInfo], dirty: &mut Dirty) -> bool {
        let mut changed = false;
        let now: BTreeMap<&String, &BTreeMap<String, String>> =
            nodes.iter().map(|n| (&n.name, &n.labels)).collect();
        let gone: Vec<String> = self
            .node_labels
            .keys()
            .filter(|n| !now.contains_key(n))
            .cloned()
            .collect();
        for name in gone {
            self.node_labels.remove(&name);
            dirty.nodes.insert(Some(name));
            changed = true;
        }
        for (name, labels) in now {
            if self.node_labels.get(name) != Some(labels) {
                self.node_labels.insert(name.clone(), labels.clone());
                dirty.nodes.insert(Some(name.clone()));
                changed = true;
            }
        }
        changed
    }

    /// The eBPF section of `node` from its pods as they stand.
    fn ebpf_section(&self, node: &NodeKey) -> Option<EbpfShard> {
        let ctx = self.ctx.as_ref()?;
        let name = node.as_ref()?;
        let pods = self
            .nodes
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(&k.0).and_then(|p| p.get(&k.1)))
            .map(|e| &*e.info);
        ebpf::section(ctx, self.node_labels.get(name), pods)
    }

    /// Records a pod's change; marks its old and new node dirty.
    fn apply_pod(&mut self, key: PodKey, info: Option<Arc<PodInfo>>, dirty: &mut Dirty) {
        let old = self.pods.get_mut(&key.0).and_then(|p| p.get_mut(&key.1));
        if let (Some(old), Some(new)) = (old, &info)
            && (Arc::ptr_eq(&old.info, new) || old.info == *new)
        {
            // The same pod in a new allocation (after a re-list): hold the copy the pod index
            // holds, so that the old one is freed rather than kept beside it.
            old.info = new.clone();
            return;
        }
        dirty.namespaces.insert(key.0.clone());
        let old = self.pods.get_mut(&key.0).and_then(|p| p.remove(&key.1));
        if let Some(old) = old {
            self.forget_shares(&key, &old.shares, dirty);
            if let Some(on_node) = self.nodes.get_mut(&old.info.node) {
                on_node.remove(&key);
                if on_node.is_empty() {
                    self.nodes.remove(&old.info.node);
                }
            }
            dirty.nodes.insert(old.info.node.clone());
        }
        match info {
            Some(info) => {
                self.nodes
                    .entry(info.node.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.nodes.insert(info.node.clone());
                self.next_slot += 1;
                self.pods.entry(key.0).or_default().insert(
                    key.1,
                    PodEntry {
                        info,
                        shares: Shares::default(),
                        slot: self.next_slot,
                        built: None,
                    },
                );
            }
            None => {
                if self.pods.get(&key.0).is_some_and(BTreeMap::is_empty) {
                    self.pods.remove(&key.0);
                }
                self.decisions.remove(&key);
            }
        }
    }

    fn forget_shares(&mut self, key: &PodKey, shares: &Shares, dirty: &mut Dirty) {
        if shares.ungoverned {
            self.ungoverned.remove(key);
        }
        for s in &shares.targets {
            if let Some(pods) = self.target_pods.get_mut(&s.target) {
                pods.remove(key);
            }
            dirty.targets.insert(s.target.clone());
        }
        if let Some(s) = &shares.policy {
            if let Some(pods) = self.policy_pods.get_mut(&s.policy) {
                pods.remove(key);
            }
            dirty.policies.insert(s.policy.clone());
        }
    }

    /// Marks the nodes of the pods whose jobs the change from `old` to `new` may change.
    fn context_changed(&self, old: &Context, new: &Context, dirty: &mut Dirty) {
        for (ns, pods) in &self.pods {
            let (before, after) = (old.view(ns), new.view(ns));
            if before == after {
                continue;
            }
            // A limit or sampling couples the pods of a namespace: redo them all.
            let whole = before.policy != after.policy || old.coupled(ns) || new.coupled(ns);
            let key = |t: &TargetInput| (t.namespace.clone(), t.name.clone());
            let b: BTreeMap<_, _> = before.targets.iter().map(|t| (key(t), *t)).collect();
            let a: BTreeMap<_, _> = after.targets.iter().map(|t| (key(t), *t)).collect();
            let changed: BTreeSet<&(String, String)> = b
                .keys()
                .chain(a.keys())
                .filter(|k| b.get(*k) != a.get(*k))
                .collect();
            let selectors: Vec<&targets::PreparedTarget> = changed
                .iter()
                .flat_map(|k| [old.target(k), new.target(k)])
                .flatten()
                .collect();
            for (name, entry) in pods {
                if whole || selectors.iter().any(|t| targets::selects(t, &entry.info)) {
                    dirty.nodes.insert(entry.info.node.clone());
                    dirty.pods.insert((ns.clone(), name.clone()));
                }
            }
        }
    }

    /// Recomputes the decisions of the namespaces whose pods changed (all of them when the
    /// context changed); marks the nodes of pods whose decisions changed.
    fn decide(
        ctx: &Context,
        pods: &BTreeMap<String, BTreeMap<String, PodEntry>>,
        decisions: &mut HashMap<PodKey, Decision>,
        rotations: &mut BTreeMap<String, Duration>,
        now: Duration,
        all: bool,
        dirty: &mut Dirty,
    ) {
        let namespaces: Vec<String> = if all {
            rotations.clear();
            pods.keys().cloned().collect()
        } else {
            dirty.namespaces.iter().cloned().collect()
        };
        for ns in namespaces {
            rotations.remove(&ns);
            let Some(in_ns) = pods.get(&ns) else {
                continue;
            };
            if !ctx.coupled(&ns) && !decisions.keys().any(|k| k.0 == ns) {
                continue;
            }
            let infos: Vec<&PodInfo> = in_ns.values().map(|e| &*e.info).collect();
            let mut clock = Clock::at(now);
            let now_decided = targets::decide(ctx, &ns, &infos, &mut clock);
            if let Some(at) = clock.next_rotation() {
                rotations.insert(ns.clone(), at);
            }
            for ((name, entry), decision) in in_ns.iter().zip(now_decided) {
                let key = (ns.clone(), name.clone());
                let before = decisions.remove(&key).unwrap_or_default();
                if before != decision {
                    dirty.nodes.insert(entry.info.node.clone());
                    dirty.pods.insert(key.clone());
                }
                if decision != Decision::default() {
                    decisions.insert(key, decision);
                }
            }
        }
    }

    /// The jobs of `node`'s pods and each pod's shares.
    fn build(&self, node: &NodeKey) -> (Vec<ScrapeJob>, Vec<(&PodKey, Shares)>) {
        let (mut jobs, mut shares) = (Vec::new(), Vec::new());
        let Some(ctx) = &self.ctx else {
            return (jobs, shares);
        };
        for key in self.nodes.get(node).into_iter().flatten() {
            let Some(entry) = self.pods.get(&key.0).and_then(|p| p.get(&key.1)) else {
                continue;
            };
            let decision = self.decisions.get(key).unwrap_or(&NO_DECISION);
            let part = pod_part(ctx, &entry.info, decision);
            jobs.extend(part.jobs);
            shares.push((key, part.shares));
        }
        (jobs, shares)
    }

    /// Rebuilds `node`'s shard and its pods' shares: splices the old shard's fragments of the
    /// pods that did not change with those of the pods recomputed.
    fn rebuild(&mut self, node: &NodeKey, dirty: &mut Dirty) {
        // The old shard, when it can be spliced.
        let old = self.texts.remove(node).filter(|o| o.fragments.is_some());
        let Some(ctx) = &self.ctx else {
            return;
        };
        let mut keep = std::collections::HashSet::new();
        let mut fresh: Vec<(u64, wire::Fragment)> = Vec::new();
        let mut rebuilt = Vec::new();
        for key in self.nodes.get(node).into_iter().flatten() {
            let Some(entry) = self.pods.get(&key.0).and_then(|p| p.get(&key.1)) else {
                continue;
            };
            if old.is_some() && entry.built.is_some() && !dirty.pods.contains(key) {
                keep.insert(entry.slot);
                continue;
            }
            let decision = self.decisions.get(key).unwrap_or(&NO_DECISION);
            let mut part = pod_part(ctx, &entry.info, decision);
            part.jobs.sort_by(|a, b| a.id.cmp(&b.id));
            let sinks: BTreeSet<&String> = part.jobs.iter().flat_map(|j| &j.sinks).collect();
            let sinks: Vec<String> = sinks.into_iter().cloned().collect();
            let secrets: BTreeSet<(String, String)> = jobs_secret_refs(&part.jobs, &[])
                .into_iter()
                .map(|r| (r.namespace, r.name))
                .collect();
            fresh.extend(
                wire::fragments(&part.jobs)
                    .into_iter()
                    .map(|f| (entry.slot, f)),
            );
            rebuilt.push((
                key.clone(),
                part.shares,
                part.jobs.len(),
                sinks,
                secrets.into_iter().collect::<Box<[_]>>(),
            ));
        }
        for (key, shares, jobs, sinks, secrets) in rebuilt {
            let sinks = match self.sink_lists.get(sinks.as_slice()) {
                Some(s) => s.clone(),
                None => {
                    let s: Arc<[String]> = sinks.into();
                    self.sink_lists.insert(s.clone());
                    s
                }
            };
            let Some(entry) = self.pods.get_mut(&key.0).and_then(|p| p.get_mut(&key.1)) else {
                continue;
            };
            entry.built = Some(PodBuilt {
                jobs,
                sinks,
                secrets,
            });
            if entry.shares == shares {
                continue;
            }
            let old = std::mem::replace(&mut entry.shares, shares.clone());
            self.forget_shares(&key, &old, dirty);
            if shares.ungoverned {
                self.ungoverned.insert(key.clone());
            }
            for s in &shares.targets {
                self.target_pods
                    .entry(s.target.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.targets.insert(s.target.clone());
            }
            if let Some(s) = &shares.policy {
                self.policy_pods
                    .entry(s.policy.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.policies.insert(s.policy.clone());
            }
        }
        if let Some(shard) = self.splice(node, old.as_ref(), &keep, &fresh) {
            self.texts.insert(node.clone(), shard);
        }
    }

    /// `node`'s shard from the `old` one's fragments of the pods in `keep` and the `fresh` ones
    /// (by pod slot); `None` when it has neither jobs nor an eBPF section.
    fn splice(
        &self,
        node: &NodeKey,
        old: Option<&NodeShard>,
        keep: &std::collections::HashSet<u64>,
        fresh: &[(u64, wire::Fragment)],
    ) -> Option<NodeShard> {
        let ctx = self.ctx.as_ref()?;
        let entries: Vec<&PodEntry> = self
            .nodes
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(&k.0).and_then(|p| p.get(&k.1)))
            .collect();
        let built = || entries.iter().filter_map(|e| e.built.as_ref());
        let section = self.ebpf_section(node);
        let jobs: usize = built().map(|b| b.jobs).sum();
        if jobs == 0 && section.is_none() {
            return None;
        }
        // The old JSON, inflated only when some of it is kept. Our own gzip always inflates;
        // if it did not, only a whole rebuild has the kept pods' entries.
        let old = match old {
            Some(o) if !keep.is_empty() => match o.text.payload.json() {
                Ok(json) => Some((json, o.fragments.as_deref().unwrap_or_default())),
                Err(_) => return self.whole(node),
            },
            _ => None,
        };
        // (first id, key, slot, text), in the order of the JSON.
        let mut parts: Vec<(&str, u64, u64, &str)> = Vec::new();
        if let Some((json, placed)) = &old {
            parts.extend(
                placed
                    .iter()
                    .filter(|p| keep.contains(&p.slot))
                    .filter_map(|p| {
                        Some((&*p.first_id, p.key, p.slot, json.get(p.range.clone())?))
                    }),
            );
        }
        parts.extend(
            fresh
                .iter()
                .map(|(slot, f)| (f.first_id.as_str(), f.key, *slot, f.text.as_str())),
        );
        parts.sort_by(|a, b| a.0.cmp(b.0));
        let mut keys = std::collections::HashSet::with_capacity(parts.len());
        if !parts.iter().all(|p| keys.insert(p.1)) {
            // Two pods' jobs share an origin and address (host-network pods on one port): the
            // wire format merges them into one entry, so only a whole rebuild gives its bytes.
            return self.whole(node);
        }
        let sinks = sharding::named(
            &ctx.sinks,
            built().flat_map(|b| b.sinks.iter().map(String::as_str)),
            section.as_ref(),
        );
        let mut secrets: BTreeSet<(String, String)> = jobs_secret_refs(&[], &sinks)
            .into_iter()
            .map(|r| (r.namespace, r.name))
            .collect();
        secrets.extend(built().flat_map(|b| b.secrets.iter().cloned()));
        let (json, ranges) = wire::assemble(
            node.as_deref(),
            parts.iter().map(|p| p.3),
            &sinks,
            section.as_ref(),
        );
        let fragments = parts
            .iter()
            .zip(ranges)
            .map(|(p, range)| Placed {
                first_id: p.0.into(),
                key: p.1,
                slot: p.2,
                range,
            })
            .collect();
        Some(NodeShard {
            text: ShardText {
                payload: ShardPayload::new(json),
                jobs,
                secrets,
            },
            fragments: Some(fragments),
        })
    }

    /// `node`'s shard built whole from its pods' jobs, as the full compile builds it.
    fn whole(&self, node: &NodeKey) -> Option<NodeShard> {
        Some(NodeShard {
            text: ShardText::from(&self.job_shard(node)?),
            fragments: None,
        })
    }

    /// Recomputes the facts of the targets and policies whose shares changed; whether any did.
    fn refresh_facts(&mut self, dirty: &Dirty) -> bool {
        let Some(ctx) = &self.ctx else {
            return false;
        };
        let pods = &self.pods;
        let share_of = |key: &PodKey| pods.get(&key.0).and_then(|p| p.get(&key.1));
        let target = |t: &targets::PreparedTarget, key: &(String, String)| {
            let shares = self
                .target_pods
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(&share_of)
                .filter_map(|e| e.shares.targets.iter().find(|s| &s.target == key));
            Arc::new(targets::facts(t, shares))
        };
        let policy = |name: &String, base: &PolicyFacts| {
            let shares = self
                .policy_pods
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(&share_of)
                .filter_map(|e| e.shares.policy.as_ref().filter(|s| &s.policy == name));
            let mut facts = policy_facts(base.clone(), shares);
            facts.ebpf_nodes = self.ebpf_nodes.get(name).cloned().unwrap_or_default();
            facts
        };
        let mut changed = false;
        if dirty.all_facts {
            let facts: BTreeMap<_, _> = ctx
                .targets
                .iter()
                .map(|t| {
                    let key = (t.input.namespace.clone(), t.input.name.clone());
                    let f = target(t, &key);
                    (key, f)
                })
                .collect();
            let policies: BTreeMap<_, _> = ctx
                .policy_facts
                .iter()
                .map(|(name, base)| (name.clone(), policy(name, base)))
                .collect();
            changed = facts != self.target_facts || policies != self.policy_facts;
            self.target_facts = facts;
            self.policy_facts = policies;
        } else {
            for key in &dirty.targets {
                if let Some(t) = ctx.target(key) {
                    let f = target(t, key);
                    if self.target_facts.get(key) != Some(&f) {
                        changed = true;
                        self.target_facts.insert(key.clone(), f);
                    }
                }
            }
            for name in &dirty.policies {
                if let Some(base) = ctx.policy_facts.get(name) {
                    let f = policy(name, base);
                    if self.policy_facts.get(name) != Some(&f) {
                        changed = true;
                        self.policy_facts.insert(name.clone(), f);
                    }
                }
            }
        }
        self.target_pods.retain(|_, p| !p.is_empty());
        self.policy_pods.retain(|_, p| !p.is_empty());
        changed
    }

    /// The shard of `node` as it stands (`None`: no jobs and no eBPF section): for a shard that
    /// must be written again.
    pub fn shard(&self, node: &NodeKey) -> Option<&ShardText> {
        self.texts.get(node).map(|n| &n.text)
    }

    /// The shard of `node` rebuilt from its pods' jobs.
    fn job_shard(&self, node: &NodeKey) -> Option<JobShard> {
        let (jobs, _) = self.build(node);
        let ctx = self.ctx.as_ref()?;
        sharding::shard(&ctx.sinks, node.clone(), jobs, self.ebpf_section(node))
    }

    /// When a rotating sampling next chooses other pods (since the Unix epoch).
    pub fn next_rotation(&self) -> Option<Duration> {
        self.rotations.values().min().copied()
    }

    /// Every pod it holds.
    pub fn pod_keys(&self) -> impl Iterator<Item = PodKey> + '_ {
        self.pods
            .iter()
            .flat_map(|(ns, pods)| pods.keys().map(|n| (ns.clone(), n.clone())))
    }

    /// The nodes that have a shard, with their job counts.
    pub fn shard_sizes(&self) -> BTreeMap<&NodeKey, usize> {
        self.texts.iter().map(|(n, s)| (n, s.text.jobs)).collect()
    }

    /// The facts of each ProfilingTarget, by (namespace, name).
    pub fn target_facts(&self) -> &BTreeMap<(String, String), Arc<TargetFacts>> {
        &self.target_facts
    }

    /// The facts of each ProfilingPolicy, by name.
    pub fn policy_facts(&self) -> &BTreeMap<String, PolicyFacts> {
        &self.policy_facts
    }

    /// Annotated pods no policy governs (so without jobs), per namespace.
    pub fn ungoverned_pods(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for (ns, _) in &self.ungoverned {
            *out.entry(ns.clone()).or_default() += 1;
        }
        out
    }

    /// Everything, as [`compile`](super::compile) returns it (every shard is rebuilt).
    pub fn compiled(&self) -> Compiled {
        Compiled {
            shards: self
                .texts
                .keys()
                .filter_map(|n| self.job_shard(n).map(|s| (n.clone(), s)))
                .collect(),
            targets: self
                .target_facts
                .iter()
                .map(|(k, f)| (k.clone(), (**f).clone()))
                .collect(),
            policies: self.policy_facts.clone(),
            next_rotation: self.next_rotation(),
            ungoverned_pods: self.ungoverned_pods(),
        }
    }
}
