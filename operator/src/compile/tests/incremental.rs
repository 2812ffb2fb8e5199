//! The incremental compile against the full one: for random sequences of changes (pods added,
//! removed, relabelled, moved between nodes, started and stopped, their containers restarted;
//! targets and policies created, edited and deleted, with and without eBPF; namespaces
//! relabelled; nodes added, removed and relabelled), the shards an [`Incremental`] reports, applied
//! one update after another, and its status facts always equal [`compile`] of the same objects.
//!
//! The sequences come from a seeded generator (printed on failure, so a failure replays).

use std::sync::Arc;

use kubeprof_crds::common::NamespaceSelector;
use pretty_assertions::assert_eq;

use super::*;

/// splitmix64: small, seedable, and good enough to pick changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len())]
    }
}

/// `ns4` starts with a team no policy selects: ungoverned until relabelled.
const NAMESPACES: [&str; 5] = ["ns0", "ns1", "ns2", "ns3", "ns4"];
const APPS: [&str; 3] = ["web", "api", "db"];
const NODES: [&str; 3] = ["n0", "n1", "n2"];

fn random_pod(rng: &mut Rng, i: usize) -> PodInfo {
    let ns = rng.pick(&NAMESPACES);
    let mut pod = mk_pod(
        ns,
        &format!("pod{i}"),
        &[("app", rng.pick(&APPS))],
        rng.pick(&NODES),
        &format!("10.0.0.{i}"),
    );
    pod.running = rng.chance(85);
    if rng.chance(70) {
        pod.owner = Some(Owner {
            kind: "StatefulSet".into(),
            name: rng.pick(&["a", "b"]).into(),
        });
    }
    if rng.chance(10) {
        pod.node = None;
    }
    if rng.chance(30) {
        // Host network: pods share their node's address, so two pods' jobs may share an
        // origin and address, which the wire format merges into one entry.
        pod.ip = Some("10.9.9.9".into());
    }
    if rng.chance(20) {
        // Two containers naming port `pprof`: a target each.
        pod = with_sidecar(pod);
    }
    if rng.chance(15) {
        // Not started yet.
        pod.containers[0].id = None;
    }
    if rng.chance(40) {
        pod.annotations = map(&[
            ("profiles.grafana.com/cpu.scrape", "true"),
            ("profiles.grafana.com/cpu.port_name", "pprof"),
            ("profiles.grafana.com/memory.scrape", "true"),
            (
                "profiles.grafana.com/memory.port_name",
                rng.pick(&["pprof", "missing"]),
            ),
        ]);
    } else if rng.chance(20) {
        pod.annotations = map(&[
            ("pyroscope.io/scrape", "true"),
            ("pyroscope.io/port", "6060"),
        ]);
    }
    pod
}

fn random_target(rng: &mut Rng) -> TargetInput {
    let ns = rng.pick(&NAMESPACES);
    let mut t = mk_target(
        ns,
        rng.pick(&["t0", "t1"]),
        rng.pick(&APPS),
        port(rng.pick(&["pprof", "http", "nope"])),
    );
    if rng.chance(30) {
        t.spec.endpoints.push(port("http"));
    }
    t.spec.suspend = rng.chance(10);
    t.spec.namespace_selector = match rng.below(5) {
        0 => Some(NamespaceSelector {
            any: Some(true),
            ..Default::default()
        }),
        1 => Some(NamespaceSelector {
            match_labels: Some(map(&[("team", "a")])),
            ..Default::default()
        }),
        2 => Some(NamespaceSelector {
            match_names: Some(vec![rng.pick(&NAMESPACES).to_string()]),
            ..Default::default()
        }),
        _ => None,
    };
    if rng.chance(25) {
        t.spec.sampling = Some(random_sampling(rng));
    }
    if rng.chance(20) {
        t.spec.selector.match_labels = Some(map(&[("app", "web")]));
        t.spec.selector.match_expressions = None;
    }
    if rng.chance(40) {
        t.spec.ebpf = Some(kubeprof_crds::target::TargetEbpf {
            enabled: rng.chance(80),
            relabelings: Vec::new(),
        });
        t.spec.labels = map(&[("tier", rng.pick(&["a", "b"]))]);
    }
    t
}

/// Node labels: `ebpf=on|off` and a zone.
fn random_node(rng: &mut Rng, name: &str) -> NodeInfo {
    mk_node(
        name,
        &[
            ("ebpf", rng.pick(&["on", "off"])),
            ("zone", rng.pick(&["a", "b"])),
        ],
    )
}

fn random_sampling(rng: &mut Rng) -> kubeprof_crds::Sampling {
    kubeprof_crds::Sampling {
        max_pods: Some(rng.below(3) as i32 + 1),
        rotation_period: rng
            .chance(50)
            .then(|| kubeprof_crds::Duration::from_secs(60)),
        ..Default::default()
    }
}

fn random_policy(rng: &mut Rng) -> PolicyInput {
    let name = rng.pick(&["p0", "p1"]);
    let priority = rng.below(3) as i32;
    let limit = rng.chance(25).then(|| rng.below(4) as i32 + 1);
    let team = rng.chance(60).then(|| rng.pick(&["a", "b"]).to_string());
    let annotations = rng.chance(80);
    let min = rng.chance(20);
    let sampling = rng.chance(25).then(|| random_sampling(rng));
    let ebpf = rng.chance(50).then(|| {
        let selector = match rng.below(3) {
            0 => None,
            1 => Some(("ebpf", "on")),
            _ => Some(("zone", rng.pick(&["a", "b"]))),
        };
        kubeprof_crds::policy::EbpfSettings {
            enabled: rng.chance(85),
            node_selector: selector.map(|(k, v)| LabelSelector {
                match_labels: Some(map(&[(k, v)])),
                match_expressions: None,
            }),
            sample_rate: [49, 97, 199][rng.below(3)],
            namespaces: kubeprof_crds::policy::EbpfNamespaces {
                include: if rng.chance(30) {
                    vec![rng.pick(&NAMESPACES).to_string()]
                } else {
                    vec![]
                },
                exclude: if rng.chance(30) {
                    vec![rng.pick(&NAMESPACES).to_string()]
                } else {
                    vec![]
                },
            },
            host_processes: rng.chance(40),
        }
    });
    mk_policy(name, priority, |s| {
        if let Some(ebpf) = ebpf {
            s.ebpf = ebpf;
        }
        s.limits.max_targets_per_namespace = limit;
        s.namespace_selector = team.map(|t| LabelSelector {
            match_labels: Some(map(&[("team", &t)])),
            match_expressions: None,
        });
        s.annotations.enabled = annotations;
        s.sampling = sampling;
        if min {
            s.limits.min_interval = Some(kubeprof_crds::Duration::from_secs(60));
        }
    })
}

/// The cluster as the test holds it, keyed as the stores would.
#[derive(Default)]
struct World {
    policies: BTreeMap<String, PolicyInput>,
    targets: BTreeMap<(String, String), TargetInput>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<PodKey, Arc<PodInfo>>,
    nodes: BTreeMap<String, NodeInfo>,
    now: std::time::Duration,
}

impl World {
    fn inputs(&self) -> Inputs {
        Inputs {
            policies: self.policies.values().cloned().collect(),
            targets: self.targets.values().cloned().collect(),
            pods: self.pods.values().map(|p| (**p).clone()).collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            now: self.now,
        }
    }

    /// One random change; the pods it changed.
    fn change(&mut self, rng: &mut Rng, changed: &mut BTreeMap<PodKey, Option<Arc<PodInfo>>>) {
        let set_pod = |world: &mut Self,
                       changed: &mut BTreeMap<PodKey, Option<Arc<PodInfo>>>,
                       pod: PodInfo| {
            let key = (pod.namespace.clone(), pod.name.clone());
            let pod = Arc::new(pod);
            world.pods.insert(key.clone(), pod.clone());
            changed.insert(key, Some(pod));
        };
        let existing: Vec<PodKey> = self.pods.keys().cloned().collect();
        let some_pod = |rng: &mut Rng| existing.get(rng.below(existing.len().max(1))).cloned();
        match rng.below(15) {
            0..=2 => {
                let i = rng.below(16);
                let pod = random_pod(rng, i);
                // A pod keeps its name in one namespace: drop it from any other first.
                let old: Vec<PodKey> = existing
                    .iter()
                    .filter(|k| k.1 == pod.name && k.0 != pod.namespace)
                    .cloned()
                    .collect();
                for k in old {
                    self.pods.remove(&k);
                    changed.insert(k, None);
                }
                set_pod(self, changed, pod);
            }
            3 => {
                if let Some(k) = some_pod(rng) {
                    self.pods.remove(&k);
                    changed.insert(k, None);
                }
            }
            4 => {
                if let Some(k) = some_pod(rng) {
                    let mut pod = (*self.pods[&k]).clone();
                    pod.labels.insert("app".into(), rng.pick(&APPS).into());
                    set_pod(self, changed, pod);
                }
            }
            5 => {
                if let Some(k) = some_pod(rng) {
                    let mut pod = (*self.pods[&k]).clone();
                    pod.node = Some(rng.pick(&NODES).into());
                    pod.running = !pod.running || rng.chance(70);
                    set_pod(self, changed, pod);
                }
            }
            6 | 7 => {
                let t = random_target(rng);
                self.targets
                    .insert((t.namespace.clone(), t.name.clone()), t);
            }
            8 => {
                let keys: Vec<_> = self.targets.keys().cloned().collect();
                if !keys.is_empty() {
                    let k = keys[rng.below(keys.len())].clone();
                    self.targets.remove(&k);
                }
            }
            9 => {
                let p = random_policy(rng);
                self.policies.insert(p.name.clone(), p);
            }
            10 => {
                if rng.chance(50) {
                    let name = rng.pick(&["p0", "p1"]);
                    self.policies.remove(name);
                } else {
                    let name = rng.pick(&NAMESPACES);
                    self.namespaces.remove(name);
                }
            }
            11 | 12 => {
                let name = rng.pick(&NODES);
                if rng.chance(25) {
                    self.nodes.remove(name);
                } else {
                    self.nodes.insert(name.into(), random_node(rng, name));
                }
            }
            13 => {
                // A container restarts (a new ID), or is not running for now.
                if let Some(k) = some_pod(rng) {
                    let mut pod = (*self.pods[&k]).clone();
                    pod.containers[0].id = rng
                        .chance(70)
                        .then(|| format!("restarted-{}", rng.below(1000)));
                    set_pod(self, changed, pod);
                }
            }
            _ => {
                let name = rng.pick(&NAMESPACES);
                let team = rng.pick(&["a", "b"]);
                self.namespaces
                    .insert(name.into(), mk_ns(name, &[("team", team)]));
            }
        }
    }
}

/// Checks `steps` random changes; how many steps had annotated pods no policy governs, and how
/// many had pods profiled by eBPF.
fn check(rng_seed: u64, steps: usize) -> (usize, usize) {
    let mut rng = Rng(rng_seed);
    let mut world = World::default();
    for ns in NAMESPACES {
        let team = if ns == "ns4" { "z" } else { "a" };
        world
            .namespaces
            .insert(ns.into(), mk_ns(ns, &[("team", team)]));
    }
    // n2 is not known at first: its pods wait for it.
    for node in ["n0", "n1"] {
        let info = random_node(&mut rng, node);
        world.nodes.insert(node.into(), info);
    }
    let mut engine = Incremental::default();
    let mut published: BTreeMap<Option<String>, ShardText> = BTreeMap::new();
    let mut first = true;
    let mut ungoverned_steps = 0;
    let mut ebpf_steps = 0;
    for step in 0..steps {
        let mut changed = BTreeMap::new();
        for _ in 0..=rng.below(3) {
            world.change(&mut rng, &mut changed);
        }
        // Time passes: sometimes past a sampling rotation.
        world.now += std::time::Duration::from_secs(rng.below(40) as u64);
        if first {
            // The first update sees every pod.
            changed = world
                .pods
                .iter()
                .map(|(k, p)| (k.clone(), Some(p.clone())))
                .collect();
            first = false;
        }
        let inputs = world.inputs();
        engine.update(Objects::from(&inputs), changed, world.now, |node, shard| {
            match shard {
                Some(s) => published.insert(node.clone(), s.clone()),
                None => published.remove(node),
            };
        });
        let full = compile(&inputs);
        let context = format!("seed {rng_seed}, step {step}");
        // The same bytes as the full compile's shards, spliced or not.
        let expected: BTreeMap<_, _> = full
            .shards
            .iter()
            .map(|(n, s)| (n.clone(), ShardText::from(s)))
            .collect();
        if published != expected {
            let json = |m: &BTreeMap<Option<String>, ShardText>| -> BTreeMap<_, _> {
                m.iter()
                    .map(|(n, s)| (n.clone(), s.payload.json().map(|j| j.into_owned()).ok()))
                    .collect()
            };
            assert_eq!(json(&published), json(&expected), "shards, {context}");
            assert_eq!(published, expected, "shards, {context}");
        }
        let facts: BTreeMap<_, _> = engine
            .target_facts()
            .iter()
            .map(|(k, f)| (k.clone(), (**f).clone()))
            .collect();
        assert_eq!(facts, full.targets, "target facts, {context}");
        assert_eq!(
            engine.policy_facts(),
            &full.policies,
            "policy facts, {context}"
        );
        let sizes: BTreeMap<_, _> = full.shards.iter().map(|(n, s)| (n, s.jobs.len())).collect();
        assert_eq!(engine.shard_sizes(), sizes, "shard sizes, {context}");
        assert_eq!(
            engine.ungoverned_pods(),
            full.ungoverned_pods,
            "ungoverned pods, {context}"
        );
        ungoverned_steps += usize::from(!full.ungoverned_pods.is_empty());
        ebpf_steps += usize::from(
            full.shards
                .values()
                .any(|s| s.ebpf.as_ref().is_some_and(|e| !e.pods.is_empty())),
        );
        assert_eq!(
            engine.next_rotation(),
            full.next_rotation,
            "next rotation, {context}"
        );
    }
    assert_eq!(
        engine.compiled(),
        compile(&world.inputs()),
        "seed {rng_seed}"
    );
    (ungoverned_steps, ebpf_steps)
}

#[test]
fn incremental_updates_equal_a_full_compile_for_random_change_sequences() {
    let (mut ungoverned_steps, mut ebpf_steps) = (0, 0);
    for seed in 0..150 {
        let (u, e) = check(seed, 40);
        ungoverned_steps += u;
        ebpf_steps += e;
    }
    // The generator does reach namespaces without a policy, and nodes profiling pods by eBPF.
    assert!(ungoverned_steps > 0);
    assert!(ebpf_steps > 0);
}

#[test]
fn an_unchanged_world_recomputes_nothing() {
    let mut engine = Incremental::default();
    let pod = Arc::new(mk_pod("shop", "a", &[("app", "web")], "n", "10.0.0.1"));
    let key = ("shop".to_string(), "a".to_string());
    let targets = [mk_target("shop", "web", "web", port("pprof"))];
    let namespaces = [mk_ns("shop", &[])];
    let first = engine.update(
        Objects {
            targets: &targets,
            namespaces: &namespaces,
            ..Default::default()
        },
        [(key.clone(), Some(pod.clone()))],
        std::time::Duration::ZERO,
        |_, _| {},
    );
    assert_eq!(first.shards, 1);
    let again = engine.update(
        Objects {
            targets: &targets,
            namespaces: &namespaces,
            ..Default::default()
        },
        [(key, Some(pod))],
        std::time::Duration::ZERO,
        |_, _| panic!("nothing changed"),
    );
    assert!(again.shards == 0 && !again.facts_changed);
}

#[test]
fn a_relisted_pod_equal_to_the_held_one_replaces_it_without_recomputing() {
    // After a re-list the pod index holds a new copy of every pod; the engine must let go of
    // its old copy (else every pod is held twice) and still recompute nothing.
    let mut engine = Incremental::default();
    let pod = mk_pod("shop", "a", &[("app", "web")], "n", "10.0.0.1");
    let key = ("shop".to_string(), "a".to_string());
    let namespaces = [mk_ns("shop", &[])];
    let objects = Objects {
        namespaces: &namespaces,
        ..Default::default()
    };
    let old = Arc::new(pod.clone());
    engine.update(
        objects,
        [(key.clone(), Some(old.clone()))],
        std::time::Duration::ZERO,
        |_, _| {},
    );
    let relisted = Arc::new(pod);
    let again = engine.update(
        objects,
        [(key, Some(relisted.clone()))],
        std::time::Duration::ZERO,
        |_, _| panic!("nothing changed"),
    );
    assert!(again.shards == 0 && !again.facts_changed);
    assert_eq!(Arc::strong_count(&old), 1, "the old copy is let go");
    assert_eq!(Arc::strong_count(&relisted), 2, "the new copy is held");
}

#[test]
fn a_node_relabelled_recomputes_that_node_only() {
    let mut engine = Incremental::default();
    let policies = [mk_policy("p", 0, |s| {
        s.ebpf.enabled = true;
        s.ebpf.node_selector = Some(LabelSelector {
            match_labels: Some(map(&[("ebpf", "on")])),
            match_expressions: None,
        });
    })];
    let namespaces = [mk_ns("shop", &[])];
    let pods: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let pod = mk_pod("shop", n, &[("app", "web")], n, "10.0.0.1");
            (
                (pod.namespace.clone(), pod.name.clone()),
                Some(Arc::new(pod)),
            )
        })
        .collect();
    let mut nodes = vec![mk_node("a", &[("ebpf", "on")]), mk_node("b", &[])];
    let mut seen = Vec::new();
    engine.update(
        Objects {
            policies: &policies,
            namespaces: &namespaces,
            nodes: &nodes,
            ..Default::default()
        },
        pods,
        std::time::Duration::ZERO,
        |node, shard| seen.push((node.clone(), shard.is_some())),
    );
    assert_eq!(
        seen,
        [
            (Some("a".to_string()), true),
            (Some("b".to_string()), false)
        ]
    );
    nodes[1].labels = map(&[("ebpf", "on")]);
    seen.clear();
    let update = engine.update(
        Objects {
            policies: &policies,
            namespaces: &namespaces,
            nodes: &nodes,
            ..Default::default()
        },
        [],
        std::time::Duration::ZERO,
        |node, shard| seen.push((node.clone(), shard.is_some())),
    );
    assert_eq!(seen, [(Some("b".to_string()), true)]);
    assert!(update.facts_changed, "p now runs on two nodes");
    assert_eq!(engine.policy_facts()["p"].ebpf_nodes.len(), 2);
}

/// Drives `engine` one update; returns the shards it reported.
fn step(
    engine: &mut Incremental,
    inputs: &Inputs,
    pods: Vec<(PodKey, Option<Arc<PodInfo>>)>,
) -> BTreeMap<Option<String>, Option<ShardText>> {
    let mut seen = BTreeMap::new();
    engine.update(Objects::from(inputs), pods, inputs.now, |node, shard| {
        seen.insert(node.clone(), shard.cloned());
    });
    seen
}

/// Every pod of `inputs`, as the first update sees them.
fn every_pod(inputs: &Inputs) -> Vec<(PodKey, Option<Arc<PodInfo>>)> {
    inputs
        .pods
        .iter()
        .map(|p| {
            (
                (p.namespace.clone(), p.name.clone()),
                Some(Arc::new(p.clone())),
            )
        })
        .collect()
}

/// Namespace `shop` under policy `p`, target `web` selecting `app=web`; no pods.
fn shop_with_target_web() -> Inputs {
    Inputs {
        policies: vec![mk_policy("p", 0, |_| {})],
        namespaces: vec![mk_ns("shop", &[])],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        ..Default::default()
    }
}

fn json_of(shard: Option<&ShardText>) -> String {
    shard
        .and_then(|s| s.payload.json().ok())
        .map(|j| j.into_owned())
        .unwrap_or_default()
}

#[test]
fn a_target_change_splices_the_pods_it_selects_into_shards_equal_to_a_full_compile() {
    // 40 pods on one node; a new target selects two of them.
    let mut inputs = shop_with_target_web();
    for i in 0..40 {
        let app = if i % 20 == 0 { "batch" } else { "web" };
        let pod = mk_pod(
            "shop",
            &format!("p{i:02}"),
            &[("app", app)],
            "n",
            &format!("10.0.0.{i}"),
        );
        inputs.pods.push(pod);
    }
    let all = every_pod(&inputs);
    let mut engine = Incremental::default();
    step(&mut engine, &inputs, all);
    let before = engine.shard(&Some("n".into())).cloned();
    inputs
        .targets
        .push(mk_target("shop", "batch", "batch", port("pprof")));
    let seen = step(&mut engine, &inputs, Vec::new());
    let node = Some("n".to_string());
    let full = compile(&inputs).shards[&node].to_json();
    assert_eq!(json_of(seen[&node].as_ref()), full);
    assert_ne!(json_of(before.as_ref()), full, "the shard changed");
    assert!(
        full.contains("\"name\":\"batch\""),
        "the new target's jobs are in it"
    );
    assert_eq!(engine.shard(&node), seen[&node].as_ref());
}

#[test]
fn host_network_pods_sharing_an_address_give_the_shard_a_full_compile_gives() {
    // Two host-network pods of one target on one node: same origin and address, so the wire
    // format merges their jobs into one entry, which no per-pod splice can give.
    let mut inputs = shop_with_target_web();
    for name in ["a", "b", "c"] {
        inputs
            .pods
            .push(mk_pod("shop", name, &[("app", "web")], "n", "10.9.9.9"));
    }
    let all = every_pod(&inputs);
    let mut engine = Incremental::default();
    let node = Some("n".to_string());
    let seen = step(&mut engine, &inputs, all);
    assert_eq!(
        json_of(seen[&node].as_ref()),
        compile(&inputs).shards[&node].to_json()
    );
    // One of them relabelled: still the full compile's bytes.
    let mut b = inputs.pods[1].clone();
    b.labels.insert("version".into(), "2".into());
    inputs.pods[1] = b.clone();
    let seen = step(
        &mut engine,
        &inputs,
        vec![(("shop".into(), "b".into()), Some(Arc::new(b)))],
    );
    assert_eq!(
        json_of(seen[&node].as_ref()),
        compile(&inputs).shards[&node].to_json()
    );
}
