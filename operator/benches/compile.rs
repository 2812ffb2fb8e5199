//! The compile step at cluster scale: 10,000 pods in 200 namespaces on 100 nodes, half opted in
//! by Grafana annotations, half selected by 100 ProfilingTargets. Prints the time of one full
//! compile, then of the incremental compile's steps the operator takes: every pod at start, one
//! pod change, and a new target selecting 1,000 pods (one batch label across all namespaces),
//! each with the time to build its recomputed shards as their ConfigMaps carry them (spliced
//! from the unchanged pods' entries and the recomputed ones, serialized and gzip-compressed).
//! Run: `cargo bench -p kubeprof-operator --bench compile -- --pods N --nodes M`.
use std::{collections::BTreeMap, hint::black_box, sync::Arc, time::Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kubeprof_crds::{
    common::NamespaceSelector,
    policy::{FileSink, ProfilingPolicySpec, SinkSpec},
    target::{Endpoint, ProfilingTargetSpec},
};
use kubeprof_operator::compile::{
    ContainerInfo, Incremental, Inputs, NamespaceInfo, Objects, Owner, PodInfo, PodKey,
    PolicyInput, PortInfo, TargetInput, compile,
};

// The operator's allocator: the figures depend on it.
#[global_allocator]
static ALLOCATOR: kubeprof_operator::Jemalloc = kubeprof_operator::Jemalloc;

/// Pods a target change affects (a target selecting one `batch` label: pods `0..BATCH`).
const BATCH: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(default)
    };
    let (pods, namespaces, nodes, targets) = (
        arg("--pods", 10_000),
        200usize,
        arg("--nodes", 100).max(1),
        100usize,
    );
    let mut inputs = Inputs {
        policies: vec![PolicyInput {
            name: "default".into(),
            spec: ProfilingPolicySpec {
                sinks: vec![SinkSpec {
                    name: "files".into(),
                    file: Some(FileSink {
                        directory: "/p".into(),
                        retention_bytes: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        }],
        namespaces: (0..namespaces)
            .map(|i| NamespaceInfo {
                name: format!("ns-{i}"),
                labels: BTreeMap::new(),
            })
            .collect(),
        ..Default::default()
    };
    for t in 0..targets {
        // Targets 0..99 live in namespaces 0..99 and select app=svc-<t>.
        inputs.targets.push(TargetInput {
            namespace: format!("ns-{t}"),
            name: format!("svc-{t}"),
            spec: ProfilingTargetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), format!("svc-{t}"))].into()),
                    match_expressions: None,
                },
                endpoints: vec![Endpoint {
                    port: Some("pprof".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        });
    }
    for i in 0..pods {
        let annotated = i % 2 == 1;
        let ns = if annotated { 100 + i % 100 } else { i % 100 };
        let mut annotations = BTreeMap::new();
        if annotated {
            for (k, v) in [
                ("profiles.grafana.com/cpu.scrape", "true"),
                ("profiles.grafana.com/cpu.port_name", "pprof"),
                ("profiles.grafana.com/memory.scrape", "true"),
                ("profiles.grafana.com/memory.port_name", "pprof"),
            ] {
                annotations.insert(k.to_string(), v.to_string());
            }
        }
        inputs.pods.push(PodInfo {
            namespace: format!("ns-{ns}"),
            name: format!("pod-{i}"),
            uid: format!("uid-{i}"),
            labels: [
                ("app".to_string(), format!("svc-{}", i % 100)),
                ("team".to_string(), "core".to_string()),
                ("batch".to_string(), format!("b-{}", i / BATCH)),
            ]
            .into(),
            annotations: annotations.into(),
            node: Some(format!("node-{}", i % nodes)),
            ip: Some(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)),
            running: true,
            containers: vec![ContainerInfo {
                name: "app".into(),
                ports: vec![PortInfo {
                    name: Some("pprof".into()),
                    number: 6060,
                }],
                id: None,
            }],
            owner: Some(Owner {
                kind: "Deployment".into(),
                name: format!("svc-{}", i % 100),
            }),
        });
    }
    let first = compile(&inputs);
    let jobs: usize = first.shards.values().map(|s| s.jobs.len()).sum();
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(compile(black_box(&inputs)));
    }
    let per = start.elapsed() / rounds;
    let json_start = Instant::now();
    let bytes: usize = first.shards.values().map(|s| s.to_json().len()).sum();
    println!(
        "compile: {pods} pods, {namespaces} namespaces, {nodes} nodes, {targets} targets -> {jobs} jobs in {} shards",
        first.shards.len()
    );
    println!(
        "compile: {per:?} per full compile; shards serialize to {} KiB in {:?}",
        bytes / 1024,
        json_start.elapsed()
    );
    incremental(&inputs);
}

/// The incremental compile as the operator drives it: every pod at start, then changes.
fn incremental(inputs: &Inputs) {
    let mut engine = Incremental::default();
    let pods: Vec<(PodKey, Option<Arc<PodInfo>>)> = inputs
        .pods
        .iter()
        .map(|p| {
            (
                (p.namespace.clone(), p.name.clone()),
                Some(Arc::new(p.clone())),
            )
        })
        .collect();
    let mut targets = inputs.targets.clone();
    let step = |engine: &mut Incremental,
                targets: &[TargetInput],
                pods: Vec<(PodKey, Option<Arc<PodInfo>>)>,
                what: &str| {
        let objects = Objects {
            policies: &inputs.policies,
            targets,
            namespaces: &inputs.namespaces,
            nodes: &inputs.nodes,
        };
        let mut bytes = 0;
        let start = Instant::now();
        let update = engine.update(objects, pods, inputs.now, |_, s| {
            bytes += s.map_or(0, |s| s.payload.len());
        });
        println!(
            "incremental: {what}: {} shards recomputed, serialized and compressed ({} KiB) in {:?}",
            update.shards,
            bytes / 1024,
            start.elapsed()
        );
    };
    let before = allocated();
    step(&mut engine, &targets, pods, "every pod at start");
    let held = allocated().saturating_sub(before);
    println!(
        "incremental: the engine holds {} MiB ({} bytes per pod, pods included)",
        held >> 20,
        held / inputs.pods.len().max(1)
    );
    let mut changed = inputs.pods[0].clone();
    changed.labels.insert("version".into(), "2".into());
    let key = (changed.namespace.clone(), changed.name.clone());
    step(
        &mut engine,
        &targets,
        vec![(key, Some(Arc::new(changed)))],
        "one pod's labels",
    );
    targets.push(TargetInput {
        namespace: "ns-0".into(),
        name: "batch-0".into(),
        spec: ProfilingTargetSpec {
            selector: LabelSelector {
                match_labels: Some([("batch".to_string(), "b-0".to_string())].into()),
                match_expressions: None,
            },
            namespace_selector: Some(NamespaceSelector {
                any: Some(true),
                ..Default::default()
            }),
            endpoints: vec![Endpoint {
                port: Some("pprof".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
    });
    step(
        &mut engine,
        &targets,
        Vec::new(),
        "a new target selecting 1,000 pods",
    );
    if let Some(t) = targets.last_mut() {
        t.spec.endpoints[0].interval = Some(kubeprof_crds::Duration::from_secs(45));
    }
    step(&mut engine, &targets, Vec::new(), "that target's interval");
}

/// Bytes the allocator has handed out and not got back.
fn allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}
