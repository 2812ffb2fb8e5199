//! The whole operator against a real API server at cluster scale: 10,000 pods in 200 namespaces
//! on 100 nodes, half opted in by Grafana annotations, half selected by 200 ProfilingTargets.
//! Prints the time from the last pod becoming Running to every node's shard being published,
//! the operator's RSS (before any pod, at steady state, peak) and bytes per pod, the time for one
//! pod change to reach its node's shard, and the time for a target change affecting 1,000 pods
//! to reach every shard it changes. Each figure is printed with the load average, since the
//! machine may be shared.
//!
//! Run: `cargo run --release -p kubeprof-e2e --bin kubeprof-operator-bench -- --pods N --nodes M`
//! (needs an API server, as the e2e tests: `$KUBEBUILDER_ASSETS`, `$KUBECONFIG`, or the cache);
//! `--targets N` sets the number of ProfilingTargets. A shard is compared by the content hash
//! its ConfigMap records, so plain (`data`) and gzip-compressed (`binaryData`) shards both count.
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
    Api, Client, ResourceExt,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget,
    constants::{COMPONENT_JOBS, COMPONENT_LABEL},
    health::jobs_object_name,
};
use kubeprof_e2e::{TestEnv, procs::Proc, say};
use kubeprof_operator::{
    CONTENT_HASH_ANNOTATION, compile, payload_bytes, pod_info, shard_config_map,
};
use serde_json::json;

const NAMESPACES: usize = 200;
const CONCURRENCY: usize = 48;
/// Pods a target change affects (a target selecting one `batch` label: pods `0..BATCH`).
const BATCH: usize = 1_000;

/// The cluster's shape.
#[derive(Clone, Copy, Debug)]
struct Shape {
    pods: usize,
    nodes: usize,
    targets: usize,
}

#[global_allocator]
static ALLOCATOR: kubeprof_operator::Jemalloc = kubeprof_operator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("operator") {
        let mut rest = vec![args[0].clone()];
        rest.extend(args[2..].iter().cloned());
        return kubeprof_operator::main_from(rest);
    }
    let arg = |name: &str, default: usize| {
        args.windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(default)
    };
    let shape = Shape {
        pods: arg("--pods", 10_000),
        nodes: arg("--nodes", 100).max(1),
        targets: arg("--targets", 200).max(1),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(bench(shape)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubeprof-operator-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Even pods are selected by a target (`svc-<t>` in namespace `ns-<t % 100>`), odd ones opt in
/// by annotations (in `ns-100`..`ns-199`); pod `i` runs on node `i % nodes`.
fn pod(shape: Shape, i: usize) -> Pod {
    let annotated = i % 2 == 1;
    let j = i / 2;
    let t = j % shape.targets;
    let ns = if annotated { 100 + j % 100 } else { t % 100 };
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
            "labels": {"app": format!("svc-{t}"), "team": "core", "batch": format!("b-{}", i / BATCH)},
            "annotations": annotations,
        },
        "spec": {
            "nodeName": format!("node-{}", i % shape.nodes),
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

/// The content hash of every published shard, by object name, as a metadata watch sees it
/// (the shards themselves are megabytes at scale; a watch, rather than listing them every few
/// milliseconds, keeps the bench's own load off the API server and etcd: a list is a quorum
/// read of every shard from etcd).
#[derive(Clone, Default)]
struct Published(std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>);

impl Published {
    fn watch(api: Api<PartialObjectMeta<ConfigMap>>) -> Self {
        let published = Self::default();
        let map = published.clone();
        let config =
            watcher::Config::default().labels(&format!("{COMPONENT_LABEL}={COMPONENT_JOBS}"));
        tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let hash = |m: &PartialObjectMeta<ConfigMap>| {
                    m.annotations()
                        .get(CONTENT_HASH_ANNOTATION)
                        .cloned()
                        .unwrap_or_default()
                };
                let mut now = map.0.lock().unwrap();
                match event {
                    Ok(watcher::Event::Init) => now.clear(),
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                        now.insert(m.name_any(), hash(&m));
                    }
                    Ok(watcher::Event::Delete(m)) => {
                        now.remove(&m.name_any());
                    }
                    Ok(watcher::Event::InitDone) | Err(_) => {}
                }
            }
        });
        published
    }

    fn now(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap().clone()
    }

    /// The content hash of one shard object (empty if it has none or does not exist).
    fn hash_of(&self, name: &str) -> String {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat` (in clock
/// ticks of 1/100 s, as on every Linux this runs on).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| {
        rest.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    (field(11) + field(12)) / 100.0
}

/// Where the CPU time of a phase went: the operator, the API server, etcd and the bench.
struct CpuSpan {
    procs: Vec<(&'static str, String, f64)>,
    started: Instant,
}

impl CpuSpan {
    fn start(procs: &[(&'static str, String)]) -> Self {
        Self {
            procs: procs
                .iter()
                .map(|(name, pid)| (*name, pid.clone(), cpu_secs(pid)))
                .collect(),
            started: Instant::now(),
        }
    }

    /// `cpu: operator 1.2 s, kube-apiserver 3.4 s, ... in 5.6 s`.
    fn report(&self) -> String {
        let used: Vec<String> = self
            .procs
            .iter()
            .map(|(name, pid, at)| format!("{name} {:.1} s", cpu_secs(pid) - at))
            .collect();
        format!(
            "cpu: {} in {:.1} s",
            used.join(", "),
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// The value of a sample on the operator's `/metrics` at `listen` (0 if absent).
fn metric(listen: &str, name: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(listen) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {listen}\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Shard writes and bytes the operator reports so far.
fn writes(listen: &str) -> (f64, f64) {
    (
        metric(listen, "kubeprof_operator_shard_writes_total"),
        metric(listen, "kubeprof_operator_shard_write_bytes_total"),
    )
}

/// `N shard writes, M MiB` since `before`.
fn writes_since(listen: &str, before: (f64, f64)) -> String {
    let now = writes(listen);
    format!(
        "{:.0} shard writes, {:.1} MiB",
        now.0 - before.0,
        (now.1 - before.1) / 1024.0 / 1024.0
    )
}

/// What the operator's jemalloc holds (live objects against its resident pages).
fn heap(listen: &str) -> String {
    let mib = |kind: &str| {
        metric(
            listen,
            &format!("kubeprof_operator_heap_bytes{{kind=\"{kind}\"}}"),
        ) / 1024.0
            / 1024.0
    };
    format!(
        "{:.0} MiB allocated, {:.0} MiB resident",
        mib("allocated"),
        mib("resident")
    )
}

/// The load averages, to print beside each figure.
fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load {}", parts.join(" "))
}

/// Waits until each named shard's hash differs from `before`; the time it took.
async fn until_changed(
    shards: &Published,
    before: &BTreeMap<String, String>,
    started: Instant,
    what: &str,
) -> anyhow::Result<Duration> {
    loop {
        let now = shards.now();
        if before
            .iter()
            .all(|(name, hash)| now.get(name).is_some_and(|h| h != hash))
        {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{what} not published within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bench(shape: Shape) -> anyhow::Result<()> {
    let Shape {
        pods,
        nodes,
        targets,
    } = shape;
    let Some(env) = TestEnv::get("kubeprof-operator-bench") else {
        return Ok(());
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    env.install_crds(&repo.join("crds/yaml")).await?;
    let client: Client = env.client().await?;
    let ops = env.namespace("kubeprof").await?;
    let work = tempfile::tempdir()?;

    // The cluster: namespaces, one policy, the targets.
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
    for t in 0..targets {
        let target: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": format!("svc-{t}")},
            "spec": {"selector": {"matchLabels": {"app": format!("svc-{t}")}},
                     "endpoints": [{"port": "pprof"}]},
        }))?;
        Api::<ProfilingTarget>::namespaced(client.clone(), &format!("ns-{}", t % 100))
            .create(&PostParams::default(), &target)
            .await?;
    }

    // The operator, as a process of its own.
    let exe = std::env::current_exe()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let kubeconfig = env.kubeconfig_path().to_string_lossy().into_owned();
    // `KUBEPROF_BENCH_LOG=info` shows each pass of the operator (compile and publish times,
    // shards written) in `<KUBEPROF_BENCH_LOG_DIR or a temporary folder>/operator.log`.
    let operator_log = std::env::var("KUBEPROF_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let log_dir = std::env::var_os("KUBEPROF_BENCH_LOG_DIR")
        .map_or_else(|| work.path().to_owned(), std::path::PathBuf::from);
    let operator = Proc::start(
        "operator",
        &exe,
        &["operator", "--namespace", &ops.name, "--listen", &listen],
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", &operator_log)],
        &log_dir,
    )?;
    let pid = operator.pid().context("operator pid")?;
    let mut procs = vec![("operator", pid.to_string())];
    procs.extend(
        env.control_plane_pids()
            .into_iter()
            .map(|(name, pid)| (name, pid.to_string())),
    );
    procs.push(("bench", "self".to_string()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = rss_mib(pid);
    say(&format!(
        "bench: operator RSS before any pod {baseline:.0} MiB ({})",
        load()
    ));

    // Pods: created, then set Running with an IP, as kubelets would.
    say(&format!(
        "bench: creating {pods} pods in {NAMESPACES} namespaces on {nodes} nodes, {targets} targets"
    ));
    let created = Instant::now();
    let all: Vec<Pod> = (0..pods).map(|i| pod(shape, i)).collect();
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

    // What must be published: the same compile, run here (before the pods become Running, so
    // as not to compete with the operator) on the objects the server holds, as Running.
    let mut listed = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let index: BTreeMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name_any(), i))
        .collect();
    for p in &mut listed {
        let i = index.get(&p.name_any()).copied().unwrap_or(0);
        let status = p.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        status.pod_ip = Some(ip(i));
    }
    let server_policy = Api::<ProfilingPolicy>::all(client.clone())
        .get("default")
        .await?;
    let server_targets = Api::<ProfilingTarget>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut expected_inputs = compile::Inputs {
        policies: vec![compile::PolicyInput {
            name: "default".into(),
            spec: server_policy.spec.clone(),
        }],
        targets: server_targets
            .iter()
            .map(|t| compile::TargetInput {
                namespace: t.namespace().unwrap_or_default(),
                name: t.name_any(),
                spec: t.spec.clone(),
            })
            .collect(),
        pods: listed.iter().map(pod_info).collect(),
        namespaces: (0..NAMESPACES)
            .map(|i| compile::NamespaceInfo {
                name: format!("ns-{i}"),
                labels: [("kubernetes.io/metadata.name".to_string(), format!("ns-{i}"))].into(),
            })
            .collect(),
        ..Default::default()
    };
    drop(listed);
    let compiled = compile::compile(&expected_inputs);
    expected_inputs.pods = Vec::new();
    let expected: BTreeMap<String, String> = compiled
        .shards
        .values()
        .map(|s| {
            let cm = shard_config_map(&ops.name, s);
            let hash = cm
                .annotations()
                .get(CONTENT_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            (cm.name_any(), hash)
        })
        .collect();
    let expected_jobs: usize = compiled.shards.values().map(|s| s.jobs.len()).sum();
    let mut sizes: Vec<usize> = compiled
        .shards
        .values()
        .map(|s| payload_bytes(&shard_config_map(&ops.name, s)))
        .collect();
    sizes.sort_unstable();
    say(&format!(
        "bench: shard payloads {:.1} MiB in all, {} KiB median, {} KiB largest (as stored: gzip above {} KiB)",
        sizes.iter().sum::<usize>() as f64 / 1024.0 / 1024.0,
        sizes.get(sizes.len() / 2).copied().unwrap_or(0) / 1024,
        sizes.last().copied().unwrap_or(0) / 1024,
        kubeprof_crds::health::GZIP_ABOVE_BYTES / 1024,
    ));
    drop(compiled);

    let running_cpu = CpuSpan::start(&procs);
    let running_writes = writes(&listen);
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
        "bench: pods created and Running in {:.1} s; while setting them Running: {}; {}",
        created.elapsed().as_secs_f64(),
        running_cpu.report(),
        writes_since(&listen, running_writes),
    ));
    let publish_cpu = CpuSpan::start(&procs);
    let publish_writes = writes(&listen);

    let shards = Published::watch(Api::namespaced(client.clone(), &ops.name));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = shards.now();
        if now == expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shards not published within 600 s: {} of {} objects as expected",
            expected
                .iter()
                .filter(|(n, h)| now.get(*n) == Some(*h))
                .count(),
            expected.len(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let publish_all = last_running.elapsed();
    say(&format!(
        "bench: all {} shards ({expected_jobs} jobs) published {:.2} s after the last pod became Running ({})",
        expected.len(),
        publish_all.as_secs_f64(),
        load()
    ));
    say(&format!(
        "bench: from the last Running to all published: {}; {}",
        publish_cpu.report(),
        writes_since(&listen, publish_writes),
    ));

    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady = rss_mib(pid);
    say(&format!(
        "bench: operator heap after the last compile: {}",
        heap(&listen)
    ));
    say(&format!(
        "bench: operator RSS at steady state {steady:.0} MiB, {:.0} bytes per pod over the {baseline:.0} MiB before any pod ({})",
        (steady - baseline).max(0.0) * 1024.0 * 1024.0 / pods.max(1) as f64,
        load()
    ));

    // One pod change: a pod leaves its target (label change); time until its shard changes.
    let mut latencies = Vec::new();
    for round in 0..7 {
        let i = ((round * 2 * 37) % pods.max(1)) & !1; // even: target-selected pods
        let p = &all[i];
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let node_obj = jobs_object_name(Some(&format!("node-{}", i % nodes)));
        let before = shards.hash_of(&node_obj);
        let started = Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "moved"}}})),
            )
            .await?;
        loop {
            if shards.hash_of(&node_obj) != before {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "change not published"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    latencies.sort();
    say(&format!(
        "bench: one pod change reached its node's shard in {:.0} ms median ({:.0}..{:.0} ms over {} changes; {})",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[0].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        latencies.len(),
        load()
    ));

    // A target change affecting BATCH pods: a new target selecting one batch in every
    // namespace, then an edit of its interval; time until every shard it changes changed.
    let batch: Vec<usize> = (0..pods.min(BATCH)).collect();
    let affected: std::collections::BTreeSet<String> = batch
        .iter()
        .map(|i| jobs_object_name(Some(&format!("node-{}", i % nodes))))
        .collect();
    let snapshot = |now: BTreeMap<String, String>| -> BTreeMap<String, String> {
        now.into_iter()
            .filter(|(n, _)| affected.contains(n))
            .collect()
    };
    let wide = |interval: &str| -> anyhow::Result<ProfilingTarget> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": "batch-0", "namespace": "ns-0"},
            "spec": {"selector": {"matchLabels": {"batch": "b-0"}},
                     "namespaceSelector": {"any": true},
                     "endpoints": [{"port": "pprof", "interval": interval}]},
        }))?)
    };
    let targets_api = Api::<ProfilingTarget>::namespaced(client.clone(), "ns-0");
    let before = snapshot(shards.now());
    let (cpu, before_writes) = (CpuSpan::start(&procs), writes(&listen));
    let started = Instant::now();
    targets_api
        .create(&PostParams::default(), &wide("30s")?)
        .await?;
    let created_in = until_changed(&shards, &before, started, "the new target").await?;
    say(&format!(
        "bench: a new target selecting {} running pods on {} nodes published in {:.0} ms ({}; {}; {})",
        batch.len(),
        affected.len(),
        created_in.as_secs_f64() * 1000.0,
        cpu.report(),
        writes_since(&listen, before_writes),
        load()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(shards.now());
    let (cpu, before_writes) = (CpuSpan::start(&procs), writes(&listen));
    let started = Instant::now();
    targets_api
        .patch(
            "batch-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoints": [{"port": "pprof", "interval": "45s"}]}})),
        )
        .await?;
    let edited_in = until_changed(&shards, &before, started, "the target edit").await?;
    say(&format!(
        "bench: editing that target's interval published in {:.0} ms ({}; {}; {})",
        edited_in.as_secs_f64() * 1000.0,
        cpu.report(),
        writes_since(&listen, before_writes),
        load()
    ));

    say(&format!(
        "bench: operator RSS right after the changes {:.0} MiB",
        rss_mib(pid)
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;
    say(&format!(
        "bench: operator heap after the last compile: {}",
        heap(&listen)
    ));
    say(&format!(
        "bench: operator RSS 15 s later {:.0} MiB; peak (VmHWM) {:.0} MiB ({})",
        rss_mib(pid),
        status_mib(pid, "VmHWM:"),
        load()
    ));
    drop(operator);
    Ok(())
}
