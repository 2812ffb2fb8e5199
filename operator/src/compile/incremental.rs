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
//! and recomputes the shard of each dirty node from its pods with the same per-pod steps as the
//! full compile. Jobs are not kept between updates (at 100,000 pods they would be hundreds of
//! megabytes): a node's shard is rebuilt from its pods when needed. What status needs (each
//! pod's share of its targets' and policy's facts) is kept per pod and summed per object when
//! one of its shares changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use kubeprof_crds::job::{EbpfShard, JobShard, ScrapeJob};

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
    /// Job count of each node that has a shard.
    shards: BTreeMap<NodeKey, usize>,
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

impl Incremental {
    /// Brings the result up to date with these `objects` and these pod changes (`None`: the
    /// pod is gone), at `now` (since the Unix epoch: for sampling's rotation). On the first
    /// update, `pods` must hold every pod. Each recomputed shard goes to `shard` (`None`: the
    /// node no longer has jobs nor an eBPF section) as soon as it is built, so that only one is
    /// held at a time.
    pub fn update(
        &mut self,
        objects: Objects<'_>,
        pods: impl IntoIterator<Item = (PodKey, Option<Arc<PodInfo>>)>,
        now: Duration,
        mut shard: impl FnMut(&NodeKey, Option<JobShard>),
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
            shard(&node, self.rebuild(&node, &mut dirty));
            update.shards += 1;
        }
        update.facts_changed = self.refresh_facts(&dirty);
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
                self.pods.entry(key.0).or_default().insert(
                    key.1,
                    PodEntry {
                        info,
                        shares: Shares::default(),
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
            for entry in pods.values() {
                if whole || selectors.iter().any(|t| targets::selects(t, &entry.info)) {
                    dirty.nodes.insert(entry.info.node.clone());
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

    /// Rebuilds `node`'s shard and its pods' shares.
    fn rebuild(&mut self, node: &NodeKey, dirty: &mut Dirty) -> Option<JobShard> {
        let (jobs, shares) = self.build(node);
        let shares: Vec<(PodKey, Shares)> =
            shares.into_iter().map(|(k, s)| (k.clone(), s)).collect();
        for (key, new) in shares {
            let Some(entry) = self.pods.get_mut(&key.0).and_then(|p| p.get_mut(&key.1)) else {
                continue;
            };
            if entry.shares == new {
                continue;
            }
            let old = std::mem::replace(&mut entry.shares, new.clone());
            self.forget_shares(&key, &old, dirty);
            if new.ungoverned {
                self.ungoverned.insert(key.clone());
            }
            for s in &new.targets {
                self.target_pods
                    .entry(s.target.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.targets.insert(s.target.clone());
            }
            if let Some(s) = &new.policy {
                self.policy_pods
                    .entry(s.policy.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.policies.insert(s.policy.clone());
            }
        }
        let section = self.ebpf_section(node);
        let count = jobs.len();
        let built = self
            .ctx
            .as_ref()
            .and_then(|ctx| sharding::shard(&ctx.sinks, node.clone(), jobs, section));
        match &built {
            Some(_) => self.shards.insert(node.clone(), count),
            None => self.shards.remove(node),
        };
        built
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

    /// The shard of `node` as it stands (`None`: no jobs and no eBPF section). Rebuilt from its pods:
    /// for a shard that must be written again.
    pub fn shard(&self, node: &NodeKey) -> Option<JobShard> {
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
    pub fn shard_sizes(&self) -> &BTreeMap<NodeKey, usize> {
        &self.shards
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
                .shards
                .keys()
                .filter_map(|n| self.shard(n).map(|s| (n.clone(), s)))
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
