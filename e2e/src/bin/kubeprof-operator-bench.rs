//! The whole operator against a real API server at cluster scale: 10,000 pods in 200 namespaces
//! on 100 nodes, half opted in by Grafana annotations, half selected by 100 ProfilingTargets.
//! Prints the time from the last pod becoming Running to every node's shard being published,
//! the operator's RSS at steady state, and the time for one pod change to reach its node's shard.
//!
//! Run: `cargo run --release -p kubeprof-e2e --bin kubeprof-operator-bench` (needs an API server,
//! as the e2e tests: `$KUBEBUILDER_ASSETS`, `$KUBECONFIG`, or the cache). `--pods N` scales down.
//! The binary also is the operator (`kubeprof-operator-bench operator ...`), so the measured
//! operator is a separate process built with the same profile.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness may panic

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget,
    constants::{COMPONENT_JOBS, COMPONENT_LABEL},
    health::{jobs_object_name, shard_from_config_map},
};
use kubeprof_e2e::{TestEnv, procs::Proc, say};
use kubeprof_operator::{compile, pod_info};
use serde_json::json;

const NAMESPACES: usize = 200;
const NODES: usize = 100;
const TARGETS: usize = 100;
const CONCURRENCY: usize = 48;

#[global_allocator]
static ALLOCATOR: kubeprof_operator::Jemalloc = kubeprof_operator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("operator") {
        let mut rest = vec![args[0].clone()];
        rest.extend(args[2..].iter().cloned());
        return kubeprof_operator::main_from(rest);
    }
    let pods = args
        .windows(2)
        .find(|w| w[0] == "--pods")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(10_000usize);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(bench(pods)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubeprof-operator-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pod(i: usize) -> Pod {
    let annotated = i % 2 == 1;
    let ns = if annotated { 100 + i % 100 } else { i % 100 };
    let annotations = if annotated {
        json!({
            "profiles.grafana.com/cpu.scrape": "true",
            "profiles.grafana.com/cpu.port_name": "pprof",
            "profiles.grafana.com/memory.scrape": "true",
            "profiles.grafana.com/memory.port_name": "pprof",
        })
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pod-{i}"),
            "namespace": format!("ns-{ns}"),
            "labels": {"app": format!("svc-{}", i % 100), "team": "core"},
            "annotations": annotations,
        },
        "spec": {
            "nodeName": format!("node-{}", i % NODES),
            "containers": [{"name": "app", "image": "example.invalid/app:1",
                            "ports": [{"name": "pprof", "containerPort": 6060}]}],
        },
    }))
    .expect("pod")
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Job count per shard object name, as published.
async fn published(api: &Api<ConfigMap>) -> anyhow::Result<BTreeMap<String, usize>> {
    let list = api
        .list(&ListParams::default().labels(&format!("{COMPONENT_LABEL}={COMPONENT_JOBS}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|cm| {
            let shard = shard_from_config_map(cm)?.ok()?;
            Some((jobs_object_name(shard.node.as_deref()), shard.jobs.len()))
        })
        .collect())
}

async fn bench(pods: usize) -> anyhow::Result<()> {
    let Some(env) = TestEnv::get("kubeprof-operator-bench") else {
        return Ok(());
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    env.install_crds(&repo.join("crds/yaml")).await?;
    let client: Client = env.client().await?;
    let ops = env.namespace("kubeprof").await?;
    let work = tempfile::tempdir()?;

    // The cluster: namespaces, one policy, 100 targets.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(0..NAMESPACES)
        .map(|i| {
            let api = ns_api.clone();
            async move {
                let ns: Namespace =
                    serde_json::from_value(json!({"metadata": {"name": format!("ns-{i}")}}))?;
                api.create(&PostParams::default(), &ns).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy: ProfilingPolicy = serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingPolicy",
        "metadata": {"name": "default"},
        "spec": {"sinks": [{"name": "files", "file": {"directory": "/profiles"}}]},
    }))?;
    Api::<ProfilingPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    for t in 0..TARGETS {
        let target: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": format!("svc-{t}")},
            "spec": {"selector": {"matchLabels": {"app": format!("svc-{t}")}},
                     "endpoints": [{"port": "pprof"}]},
        }))?;
        Api::<ProfilingTarget>::namespaced(client.clone(), &format!("ns-{t}"))
            .create(&PostParams::default(), &target)
            .await?;
    }

    // The operator, as a process of its own.
    let exe = std::env::current_exe()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let kubeconfig = env.kubeconfig_path().to_string_lossy().into_owned();
    let operator = Proc::start(
        "operator",
        &exe,
        &["operator", "--namespace", &ops.name, "--listen", &listen],
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "warn")],
        work.path(),
    )?;
    let pid = operator.pid().context("operator pid")?;

    // Pods: created, then set Running with an IP, as kubelets would.
    say(&format!(
        "bench: creating {pods} pods in {NAMESPACES} namespaces on {NODES} nodes"
    ));
    let created = Instant::now();
    let all: Vec<Pod> = (0..pods).map(pod).collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(all.iter().cloned())
        .map(|p| {
            let api: Api<Pod> = Api::namespaced(
                client.clone(),
                p.metadata.namespace.as_deref().unwrap_or(""),
            );
            async move {
                api.create(&PostParams::default(), &p).await?;
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..pods)
        .map(|i| {
            let p = &all[i];
            let api: Api<Pod> = Api::namespaced(
                client.clone(),
                p.metadata.namespace.as_deref().unwrap_or(""),
            );
            let name = p.metadata.name.clone().unwrap_or_default();
            async move {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip(i)}})),
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let last_running = Instant::now();
    say(&format!(
        "bench: pods created and Running in {:.1} s",
        created.elapsed().as_secs_f64()
    ));

    // What must be published: the same compile, run here on the objects the server holds.
    let running = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let expected_inputs = compile::Inputs {
        policies: vec![compile::PolicyInput {
            name: "default".into(),
            spec: policy.spec.clone(),
        }],
        targets: (0..TARGETS)
            .map(|t| {
                Ok(compile::TargetInput {
                    namespace: format!("ns-{t}"),
                    name: format!("svc-{t}"),
                    spec: serde_json::from_value(json!({
                        "selector": {"matchLabels": {"app": format!("svc-{t}")}},
                        "endpoints": [{"port": "pprof"}],
                    }))?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        pods: running.iter().map(pod_info).collect(),
        namespaces: (0..NAMESPACES)
            .map(|i| compile::NamespaceInfo {
                name: format!("ns-{i}"),
                labels: [("kubernetes.io/metadata.name".to_string(), format!("ns-{i}"))].into(),
            })
            .collect(),
        ..Default::default()
    };
    let compiled = compile::compile(&expected_inputs);
    let expected: BTreeMap<String, usize> = compiled
        .shards
        .values()
        .map(|s| (jobs_object_name(s.node.as_deref()), s.jobs.len()))
        .collect();
    let expected_jobs: usize = expected.values().sum();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ops.name);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = published(&cms).await?;
        if now == expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shards not published within 300 s: {} of {} objects, {} of {expected_jobs} jobs",
            now.len(),
            expected.len(),
            now.values().sum::<usize>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let publish_all = last_running.elapsed();
    say(&format!(
        "bench: all {} shards ({expected_jobs} jobs) published {:.2} s after the last pod became Running",
        expected.len(),
        publish_all.as_secs_f64()
    ));

    tokio::time::sleep(Duration::from_secs(10)).await;
    say(&format!(
        "bench: operator RSS at steady state {:.0} MiB",
        rss_mib(pid)
    ));

    // One pod change: a pod leaves its target (label change); time until its shard changes.
    let mut latencies = Vec::new();
    for round in 0..5 {
        let i = round * 2 * 37; // even: target-selected pods
        let p = &all[i];
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let node_obj = jobs_object_name(Some(&format!("node-{}", i % NODES)));
        let before = cms.get(&node_obj).await?.data;
        let started = Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "moved"}}})),
            )
            .await?;
        loop {
            if cms.get(&node_obj).await?.data != before {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "change not published"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    say(&format!(
        "bench: one pod change reached its node's shard in {:.0} ms median ({:.0}..{:.0} ms over {} changes)",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[0].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        latencies.len()
    ));
    say(&format!(
        "bench: operator RSS right after the changes {:.0} MiB",
        rss_mib(pid)
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;
    say(&format!(
        "bench: operator RSS 15 s later {:.0} MiB; peak (VmHWM) {:.0} MiB",
        rss_mib(pid),
        status_mib(pid, "VmHWM:")
    ));
    drop(operator);
    Ok(())
}
