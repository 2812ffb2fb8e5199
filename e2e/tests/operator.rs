//! The operator and a scraper as real processes against a real API server, with real Go pprof
//! services standing in for pods (no kubelet: the test creates Pods, then sets them Running with
//! a 127.0.0.0/8 IP through the status subresource, as a kubelet would).
//!
//! The scenarios run in order in one test, because the operator is a cluster-wide singleton:
//! 1. a ProfilingTarget's CPU and memory profiles arrive with their labels; status MATCHED 1,
//!    ACTIVE 2, Ready;
//! 2. annotated pods (Grafana keys, Pyroscope keys) are scraped with no ProfilingTarget;
//! 3. editing the target's profile types takes effect without restarting the scraper;
//! 4. deleting a pod removes its jobs, and its node's object disappears;
//! 5. a missing port -> Degraded/PortNotFound; the service stopped -> FAILING within 60 s,
//!    started again -> recovers;
//! 6. the operator killed: the scraper keeps scraping; restarted: it carries on;
//! 7. two replicas: one leads and writes; killing it hands over.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget, conditions,
    health::{health_object_name, jobs_object_name},
};
use kubeprof_e2e::{
    TestEnv,
    procs::{Proc, eventually, pprof_demo_binary},
    say,
};
use serde_json::json;

const PORT: u16 = 16060;

/// The processes' log filter. Not `kube=warn`: a target filter is a prefix, and that one also
/// silences `kubeprof_*`, leaving the logs shown on failure empty.
const LOG_FILTER: &str = "info,kube_client=warn,kube_runtime=warn";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every profile the file sink holds: (labels, path of the profile).
fn stored_profiles(dir: &Path) -> Vec<(BTreeMap<String, String>, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<(BTreeMap<String, String>, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().ends_with(".labels.json")
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(labels) = serde_json::from_str(&text)
            {
                let profile = PathBuf::from(p.to_string_lossy().replace(".labels.json", ".pb.gz"));
                out.push((labels, profile));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

fn count(dir: &Path, pod: &str, kind: &str) -> usize {
    stored_profiles(dir)
        .iter()
        .filter(|(l, _)| {
            l.get("pod").map(String::as_str) == Some(pod)
                && l.get("__name__").map(String::as_str) == Some(kind)
        })
        .count()
}

async fn create_running_pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    ip: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app",
                "image": "example.invalid/pprofdemo:1",
                "ports": [{"name": "pprof", "containerPort": PORT}],
            }],
        },
    }))?;
    api.create(&PostParams::default(), &pod).await?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }})),
    )
    .await?;
    Ok(())
}

fn condition(t: &ProfilingTarget, type_: &str) -> Option<(String, String)> {
    t.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
    })
}

struct Cluster {
    kubeconfig: String,
    ops_ns: String,
    logs: PathBuf,
}

impl Cluster {
    fn operator(&self, identity: &str, listen: &str) -> anyhow::Result<Proc> {
        Proc::start(
            identity,
            Path::new(env!("CARGO_BIN_EXE_e2e-operator")),
            &[
                "--namespace",
                &self.ops_ns,
                "--listen",
                listen,
                "--identity",
                identity,
                "--lease-duration",
                "6s",
                "--renew-every",
                "1s",
            ],
            &[("KUBECONFIG", &self.kubeconfig), ("RUST_LOG", LOG_FILTER)],
            &self.logs,
        )
    }

    fn scraper(&self, node: &str, listen: &str) -> anyhow::Result<Proc> {
        Proc::start(
            &format!("scraper-{node}"),
            Path::new(env!("CARGO_BIN_EXE_e2e-scraper")),
            &[
                "run",
                "--cluster",
                "--namespace",
                &self.ops_ns,
                "--node",
                node,
                "--listen",
                listen,
                "--health-interval",
                "2s",
            ],
            &[("KUBECONFIG", &self.kubeconfig), ("RUST_LOG", LOG_FILTER)],
            &self.logs,
        )
    }
}

async fn metric(listen: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no metric {name} at {listen}"))
}

/// Waits up to 30 s for the ConfigMap `name` to be gone.
async fn config_map_deleted(api: &Api<ConfigMap>, name: &str, by: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{name} deleted{by}"),
        Duration::from_secs(30),
        || async {
            ensure!(api.get_opt(name).await?.is_none(), "{name} still exists");
            Ok(())
        },
    )
    .await
}

fn free_addr(ip: &str) -> String {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_scraper_end_to_end() -> anyhow::Result<()> {
    let Some(env) = TestEnv::get("operator::operator_and_scraper_end_to_end") else {
        return Ok(());
    };
    let Some(go_demo) = pprof_demo_binary()? else {
        say(
            "SKIPPED e2e test operator::operator_and_scraper_end_to_end: no `go` on the PATH (install golang-go)",
        );
        return Ok(());
    };
    env.install_crds(&repo().join("crds/yaml")).await?;
    let client = env.client().await?;
    let ops = env.namespace("kubeprof").await?;
    let app = env.namespace("shop").await?;
    let work = tempfile::tempdir()?;
    let profiles = work.path().join("profiles");
    let cluster = Cluster {
        kubeconfig: env.kubeconfig_path().to_string_lossy().into_owned(),
        ops_ns: ops.name.clone(),
        logs: work.path().to_path_buf(),
    };
    let mut procs: Vec<Proc> = Vec::new();
    let result = scenarios(
        &client, &cluster, &app.name, &profiles, &go_demo, &mut procs,
    )
    .await;
    if result.is_err() {
        for p in &procs {
            say(&p.log_tail(40));
        }
        for name in ["op-1", "op-2", "op-1b", "scraper-node-a", "scraper-node-b"] {
            let log = work.path().join(format!("{name}.log"));
            if log.exists() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                say(&format!("--- {name} ---"));
                for l in tail.into_iter().rev() {
                    say(l);
                }
            }
        }
    }
    drop(procs);
    // Cluster-scoped leftovers would govern other tests' namespaces.
    let policies: Api<ProfilingPolicy> = Api::all(client.clone());
    let _ = policies
        .delete(&format!("e2e-{}", app.name), &DeleteParams::default())
        .await;
    app.cleanup().await?;
    ops.cleanup().await?;
    result
}

async fn scenarios(
    client: &Client,
    cluster: &Cluster,
    app_ns: &str,
    profiles: &Path,
    go_demo: &Path,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let ops_ns = cluster.ops_ns.as_str();
    let logs = cluster.logs.as_path();
    let demo = |name: &str, ip: &str| {
        Proc::start(
            name,
            go_demo,
            &["-listen", &format!("{ip}:{PORT}")],
            &[],
            logs,
        )
    };
    let targets: Api<ProfilingTarget> = Api::namespaced(client.clone(), app_ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ops_ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), app_ns);

    // A policy for this test's namespace only: 4 s intervals, a file sink, annotations honoured.
    let policies: Api<ProfilingPolicy> = Api::all(client.clone());
    let policy: ProfilingPolicy = serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingPolicy",
        "metadata": {"name": format!("e2e-{app_ns}")},
        "spec": {
            "priority": 10,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app_ns}},
            "annotations": {"enabled": true, "grafana": true, "pyroscope": true},
            "defaults": {"interval": "4s", "scrapeTimeout": "3s"},
            "externalLabels": {"cluster": "e2e"},
            "sinks": [{"name": "local", "file": {"directory": profiles.to_string_lossy()}}],
        },
    }))?;
    policies.create(&PostParams::default(), &policy).await?;

    // Three Go services standing in for three pods' containers.
    let mut web = demo("web-1", "127.0.0.11")?;
    procs.push(demo("anno-1", "127.0.0.12")?);
    procs.push(demo("pyro-1", "127.0.0.13")?);
    create_running_pod(
        client,
        app_ns,
        "web-1",
        "node-a",
        "127.0.0.11",
        json!({"app": "web"}),
        json!({}),
    )
    .await?;

    let op_listen = free_addr("127.0.0.1");
    procs.push(cluster.operator("op-1", &op_listen)?);
    let scraper_a = free_addr("127.0.0.1");
    procs.push(cluster.scraper("node-a", &scraper_a)?);
    procs.push(cluster.scraper("node-b", &free_addr("127.0.0.1"))?);

    // 1. A ProfilingTarget selecting the pod.
    let target: ProfilingTarget = serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "endpoints": [{
                "port": "pprof",
                "profiles": {
                    "cpu": {"enabled": true},
                    "memory": {"enabled": true},
                    "goroutine": {"enabled": false},
                    "mutex": {"enabled": false},
                    "block": {"enabled": false},
                },
            }],
        },
    }))?;
    targets.create(&PostParams::default(), &target).await?;
    let labels = eventually(
        "CPU and memory profiles of web-1",
        Duration::from_secs(60),
        || async {
            let stored = stored_profiles(profiles);
            let cpu = stored.iter().find(|(l, _)| {
                l.get("pod").map(String::as_str) == Some("web-1")
                    && l.get("__name__").map(String::as_str) == Some("process_cpu")
            });
            let mem = stored.iter().find(|(l, _)| {
                l.get("pod").map(String::as_str) == Some("web-1")
                    && l.get("__name__").map(String::as_str) == Some("memory")
            });
            match (cpu, mem) {
                (Some(c), Some(_)) => Ok(c.clone()),
                _ => bail!("have {} profiles, none yet for both types", stored.len()),
            }
        },
    )
    .await?;
    let (l, path) = labels;
    for (k, v) in [
        ("service_name", format!("{app_ns}/app")),
        ("namespace", app_ns.to_string()),
        ("pod", "web-1".to_string()),
        ("container", "app".to_string()),
        ("node", "node-a".to_string()),
        ("cluster", "e2e".to_string()),
    ] {
        assert_eq!(l.get(k), Some(&v), "label {k} of {l:?}");
    }
    assert!(
        !l.keys().any(|k| k.starts_with("__") && k != "__name__"),
        "{l:?}"
    );
    // The stored CPU profile is a real pprof of the Go service.
    let raw = std::fs::read(&path)?;
    let text = String::from_utf8_lossy(&decompress(&raw)).into_owned();
    assert!(
        text.contains("main."),
        "the CPU profile has the Go service's frames"
    );
    eventually(
        "status MATCHED 1, ACTIVE 2, Ready",
        Duration::from_secs(30),
        || async {
            let t = targets.get("web").await?;
            let s = t.status.clone().unwrap_or_default();
            ensure!(s.matched_pods == 1 && s.active_jobs == 2, "status {s:?}");
            ensure!(
                condition(&t, conditions::READY) == Some(("True".into(), "Reconciled".into())),
                "status {s:?}"
            );
            ensure!(
                s.observed_generation == t.metadata.generation,
                "observedGeneration {s:?}"
            );
            Ok(())
        },
    )
    .await?;
    say("e2e: 1. target profiles arrive with their labels; status MATCHED 1, ACTIVE 2, Ready");

    // 2. Annotated pods, no ProfilingTarget: Grafana keys on node-a, Pyroscope keys on node-b.
    create_running_pod(
        client, app_ns, "anno-1", "node-a", "127.0.0.12", json!({"app": "anno"}),
        json!({"profiles.grafana.com/cpu.scrape": "true", "profiles.grafana.com/cpu.port_name": "pprof",
               "profiles.grafana.com/goroutine.scrape": "true", "profiles.grafana.com/goroutine.port": PORT.to_string()}),
    )
    .await?;
    create_running_pod(
        client,
        app_ns,
        "pyro-1",
        "node-b",
        "127.0.0.13",
        json!({"app": "pyro"}),
        json!({"pyroscope.io/scrape": "true", "pyroscope.io/port": PORT.to_string(),
               "pyroscope.io/application-name": "pyro-app"}),
    )
    .await?;
    eventually(
        "profiles of the annotated pods",
        Duration::from_secs(60),
        || async {
            ensure!(
                count(profiles, "anno-1", "process_cpu") > 0,
                "no CPU profile of anno-1"
            );
            ensure!(
                count(profiles, "anno-1", "goroutine") > 0,
                "no goroutine profile of anno-1"
            );
            ensure!(
                count(profiles, "pyro-1", "process_cpu") > 0,
                "no CPU profile of pyro-1"
            );
            Ok(())
        },
    )
    .await?;
    let pyro = stored_profiles(profiles)
        .into_iter()
        .find(|(l, _)| l.get("pod").map(String::as_str) == Some("pyro-1"))
        .map(|(l, _)| l)
        .unwrap_or_default();
    assert_eq!(
        pyro.get("service_name").map(String::as_str),
        Some("pyro-app")
    );
    assert_eq!(pyro.get("node").map(String::as_str), Some("node-b"));
    say("e2e: 2. annotated pods (grafana and pyroscope keys) are scraped without a target");

    // 3. Editing the target's profile types: goroutine profiles start, the scraper is untouched.
    let scraper_pid = procs
        .iter()
        .find(|p| p.name() == "scraper-node-a")
        .and_then(Proc::pid);
    targets
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoints": [{
                "port": "pprof", "interval": "5s",
                "profiles": {"cpu": {"enabled": true}, "memory": {"enabled": true},
                              "goroutine": {"enabled": true}, "mutex": {"enabled": false}, "block": {"enabled": false}},
            }]}})),
        )
        .await?;
    eventually(
        "goroutine profiles of web-1 after the edit",
        Duration::from_secs(45),
        || async {
            ensure!(count(profiles, "web-1", "goroutine") > 0, "none yet");
            Ok(())
        },
    )
    .await?;
    let still = procs
        .iter()
        .find(|p| p.name() == "scraper-node-a")
        .and_then(Proc::pid);
    assert_eq!(scraper_pid, still, "the scraper was not restarted");
    eventually(
        "ACTIVE 3 after the edit",
        Duration::from_secs(30),
        || async {
            let s = targets.get("web").await?.status.unwrap_or_default();
            ensure!(s.active_jobs == 3, "status {s:?}");
            Ok(())
        },
    )
    .await?;
    say("e2e: 3. editing the target's types took effect without restarting the scraper");

    // 4. Deleting the only pod of node-b removes its jobs and node-b's object.
    let node_b = jobs_object_name(Some("node-b"));
    ensure!(
        config_maps.get_opt(&node_b).await?.is_some(),
        "{node_b} was published"
    );
    pods.delete("pyro-1", &DeleteParams::default().grace_period(0))
        .await?;
    // Its scrape-health report goes too (the operator collects reports of nodes without jobs).
    for gone in [node_b.clone(), health_object_name(Some("node-b"))] {
        config_map_deleted(&config_maps, &gone, "").await?;
    }
    let before = count(profiles, "pyro-1", "process_cpu");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        count(profiles, "pyro-1", "process_cpu"),
        before,
        "pyro-1 no longer scraped"
    );
    say("e2e: 4. deleting the pod removed its jobs, its node's object and health report");

    // 5. A missing port -> PortNotFound; the service stopped -> FAILING; started -> recovers.
    let broken: ProfilingTarget = serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
        "metadata": {"name": "wrong-port"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "endpoints": [{"port": "nope"}]},
    }))?;
    targets.create(&PostParams::default(), &broken).await?;
    eventually(
        "wrong-port Degraded/PortNotFound",
        Duration::from_secs(30),
        || async {
            let t = targets.get("wrong-port").await?;
            ensure!(
                condition(&t, conditions::DEGRADED)
                    == Some(("True".into(), conditions::REASON_PORT_NOT_FOUND.into())),
                "status {:?}",
                t.status
            );
            Ok(())
        },
    )
    .await?;
    // The degradation is announced with an Event on the object.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), app_ns);
    eventually(
        "a PortNotFound event on wrong-port",
        Duration::from_secs(30),
        || async {
            let list = events.list(&Default::default()).await?;
            ensure!(
                list.items.iter().any(|e| e.reason.as_deref()
                    == Some(conditions::REASON_PORT_NOT_FOUND)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("wrong-port")),
                "events: {:?}",
                list.items
                    .iter()
                    .map(|e| (
                        e.reason.clone(),
                        e.regarding.as_ref().and_then(|r| r.name.clone())
                    ))
                    .collect::<Vec<_>>()
            );
            Ok(())
        },
    )
    .await?;
    web.kill();
    let stopped = std::time::Instant::now();
    eventually("web FAILING", Duration::from_secs(60), || async {
        let t = targets.get("web").await?;
        let s = t.status.clone().unwrap_or_default();
        ensure!(s.failing_jobs >= 1, "status {s:?}");
        ensure!(
            condition(&t, conditions::DEGRADED).map(|c| c.1)
                == Some(conditions::REASON_SCRAPE_FAILING.into()),
            "status {s:?}"
        );
        Ok(())
    })
    .await?;
    say(&format!(
        "e2e: 5. FAILING shown {:.1} s after the service stopped",
        stopped.elapsed().as_secs_f64()
    ));
    let mut web = demo("web-1b", "127.0.0.11")?;
    eventually("web recovers", Duration::from_secs(60), || async {
        let t = targets.get("web").await?;
        let s = t.status.clone().unwrap_or_default();
        ensure!(s.failing_jobs == 0, "status {s:?}");
        ensure!(
            condition(&t, conditions::READY).map(|c| c.0) == Some("True".into()),
            "status {s:?}"
        );
        Ok(())
    })
    .await?;
    say("e2e: 5. PortNotFound reported; the stopped service showed FAILING and recovered");

    // An object the schema lets through but the operator cannot read (an interval too large for
    // any clock) is reported in its status, and blocks nothing else.
    let unreadable: ProfilingTarget = serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
        "metadata": {"name": "unreadable"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "endpoints": [{"port": "pprof"}]},
    }))?;
    targets.create(&PostParams::default(), &unreadable).await?;
    let huge = Patch::Merge(
        json!({"spec": {"endpoints": [{"port": "pprof", "interval": "99999999999999999999999999h", "scrapeTimeout": "1s"}]}}),
    );
    // Untyped: this test's own typed client could not read the answer either.
    let raw: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        app_ns,
        &kube::discovery::ApiResource::erase::<ProfilingTarget>(&()),
    );
    match raw
        .patch("unreadable", &PatchParams::default(), &huge)
        .await
    {
        Ok(_) => {
            eventually(
                "unreadable reported InvalidSpec",
                Duration::from_secs(30),
                || async {
                    let o = raw.get("unreadable").await?;
                    let conds = o
                        .data
                        .pointer("/status/conditions")
                        .cloned()
                        .unwrap_or_default();
                    let degraded = conds
                        .as_array()
                        .and_then(|a| a.iter().find(|c| c["type"] == "Degraded"))
                        .cloned()
                        .unwrap_or_default();
                    ensure!(
                        degraded["reason"] == conditions::REASON_INVALID_SPEC,
                        "conditions {conds}"
                    );
                    ensure!(
                        degraded["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("too large"),
                        "conditions {conds}"
                    );
                    Ok(())
                },
            )
            .await?;
            let t = targets.get_opt("web").await.ok().flatten();
            ensure!(t.is_some(), "web still readable");
            say(
                "e2e: 5. an unreadable object is reported InvalidSpec in its status; the others carry on",
            );
        }
        // A server with CEL refuses the value at admission, which is just as good.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            say(&format!(
                "e2e: 5. the server refused the unreadable interval itself: {}",
                e.message
            ));
        }
        Err(e) => return Err(e.into()),
    }
    targets
        .delete("unreadable", &DeleteParams::default())
        .await?;

    // 6. The operator killed: scraping goes on; restarted: it resumes.
    let op = procs
        .iter()
        .position(|p| p.name() == "op-1")
        .context("op-1")?;
    procs.remove(op).kill();
    let before = count(profiles, "web-1", "process_cpu");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = count(profiles, "web-1", "process_cpu");
    ensure!(
        after >= before + 2,
        "scraping went on without the operator: {before} -> {after}"
    );
    let op1_listen = free_addr("127.0.0.1");
    procs.push(cluster.operator("op-1b", &op1_listen)?);
    say(&format!(
        "e2e: 6. with the operator down for 12 s the scraper stored {} more CPU profiles",
        after - before
    ));

    // 7. A second replica: one leader writes; killing it hands over.
    let op2_listen = free_addr("127.0.0.1");
    procs.push(cluster.operator("op-2", &op2_listen)?);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ops_ns);
    let leader = eventually("a leader", Duration::from_secs(30), || async {
        let lease = leases.get(kubeprof_crds::constants::LEADER_LEASE).await?;
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        ensure!(holder == "op-1b" || holder == "op-2", "holder {holder:?}");
        let (l1, l2) = (
            metric(&op1_listen, "kubeprof_operator_leader").await?,
            metric(&op2_listen, "kubeprof_operator_leader").await?,
        );
        ensure!(l1 + l2 == 1.0, "leader gauges {l1} and {l2}");
        Ok(holder)
    })
    .await?;
    let (leader_listen, standby, standby_listen) = if leader == "op-1b" {
        (&op1_listen, "op-2", &op2_listen)
    } else {
        (&op2_listen, "op-1b", &op1_listen)
    };
    // Make the leader write: a new pod on node-c.
    procs.push(demo("late-1", "127.0.0.14")?);
    create_running_pod(
        client,
        app_ns,
        "late-1",
        "node-c",
        "127.0.0.14",
        json!({"app": "web"}),
        json!({}),
    )
    .await?;
    let node_c = jobs_object_name(Some("node-c"));
    eventually("node-c's object", Duration::from_secs(30), || async {
        ensure!(config_maps.get_opt(&node_c).await?.is_some(), "no {node_c}");
        Ok(())
    })
    .await?;
    assert_eq!(
        metric(standby_listen, "kubeprof_operator_shard_writes_total").await?,
        0.0,
        "the standby wrote shards"
    );
    assert_eq!(
        metric(standby_listen, "kubeprof_operator_status_writes_total").await?,
        0.0,
        "the standby wrote status"
    );
    ensure!(metric(leader_listen, "kubeprof_operator_shard_writes_total").await? >= 1.0);
    let idx = procs
        .iter()
        .position(|p| p.name() == leader)
        .context("leader process")?;
    procs.remove(idx).kill();
    let killed = std::time::Instant::now();
    eventually(
        "the standby takes over",
        Duration::from_secs(30),
        || async {
            let lease = leases.get(kubeprof_crds::constants::LEADER_LEASE).await?;
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            ensure!(holder == standby, "holder {holder:?}");
            Ok(())
        },
    )
    .await?;
    let took = killed.elapsed();
    // The new leader acts: deleting late-1 removes node-c's object.
    pods.delete("late-1", &DeleteParams::default().grace_period(0))
        .await?;
    config_map_deleted(&config_maps, &node_c, " by the new leader").await?;
    say(&format!(
        "e2e: 7. {leader} led, {standby} wrote nothing; killed, {standby} took over in {:.1} s (lease 6 s)",
        took.as_secs_f64()
    ));
    // SIGTERM drains cleanly: the leader exits by itself and releases the lease at once.
    let idx = procs
        .iter()
        .position(|p| p.name() == standby)
        .context("new leader process")?;
    let clean = procs.remove(idx).terminate(Duration::from_secs(10));
    ensure!(clean, "{standby} did not exit within 10 s of SIGTERM");
    let lease = leases.get(kubeprof_crds::constants::LEADER_LEASE).await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder.is_empty(),
        "lease still held by {holder:?} after a clean exit"
    );
    say(&format!(
        "e2e: 7. SIGTERM: {standby} exited cleanly and released the lease"
    ));
    web.kill();
    Ok(())
}

fn decompress(raw: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    if flate2::read::GzDecoder::new(raw)
        .read_to_end(&mut out)
        .is_err()
    {
        return raw.to_vec();
    }
    out
}
