//! kubeprof installed as a user installs it, on a real node (`scripts/real-node.sh start`):
//! Helm's own engine installs the chart, the operator and the scraper run as pods of the image
//! `scripts/build-image.sh` builds, and real pods of the Go pprof service are profiled.
//!
//! One scenario, in order (each step depends on the cluster the previous one left):
//! 1. the CRDs with `kubectl create --validate=false` (a 1.20 server refuses Helm 4's server-side
//!    apply of them), then `helm install --skip-crds`; the time from the install to the first
//!    stored profile is printed; `kubectl auth can-i` for both ServiceAccounts matches what the
//!    binaries do;
//! 2. a ProfilingTarget's Deployment and an annotated Deployment: their CPU profiles (with the
//!    Go service's frames) and memory profiles land in the file sink on the node's hostPath;
//!    `kubectl get pt` shows MATCHED 1, FAILING 0, READY True;
//! 3. scale up to 2: MATCHED 2 and profiles of the new pod;
//! 4. the scraper pod deleted: the DaemonSet recreates it and profiles keep arriving;
//! 5. the operator leader deleted: the other replica takes the lease, and a scale down to 1
//!    shows in status (only the leader writes status);
//! 6. `helm upgrade` with changed values (external labels, log format): the new label arrives;
//! 7. `helm uninstall`: the workloads are gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail, ensure};
use kubeprof_e2e::{
    procs::eventually,
    real_node::{HelmRelease, NODE_NAME, RealNode, StoredProfile, stored_profiles},
    say,
};
use serde_json::json;

const KUBEPROF_IMAGE: &str = "ghcr.io/kubeprof/kubeprof:dev";
const DEMO_IMAGE: &str = "docker.io/kubeprof/pprofdemo:dev";
/// The image's non-root user: the scraper writes the hostPath as this user.
const IMAGE_UID: u32 = 65532;

fn chart_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kubeprof/crds")
}

/// A pprofdemo Deployment: one container named `name`, port `pprof`.
fn demo_deployment(name: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}, "annotations": annotations},
                "spec": {
                    "containers": [{
                        "name": name,
                        "image": DEMO_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["-listen=:6060"],
                        "ports": [{"name": "pprof", "containerPort": 6060}],
                        // Two cores are shared with the cluster and the build: the demo's hot
                        // loops get a fifth of one.
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "32Mi"},
                            "limits": {"cpu": "200m", "memory": "128Mi"},
                        },
                    }],
                },
            },
        },
    })
}

struct Scenario<'a> {
    node: &'a RealNode,
    helm: HelmRelease,
    app_ns: String,
    profiles: PathBuf,
    values: serde_json::Value,
}

impl Scenario<'_> {
    fn ns(&self) -> &str {
        &self.helm.namespace
    }

    fn apply(&self, ns: &str, object: &serde_json::Value) -> anyhow::Result<()> {
        self.node
            .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string())?;
        Ok(())
    }

    /// Names of the Ready pods that `selector` matches and that are not being deleted.
    fn pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<String>> {
        let out = self
            .node
            .kubectl(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        let mut names = Vec::new();
        for pod in list["items"].as_array().into_iter().flatten() {
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready && pod["metadata"]["deletionTimestamp"].is_null() {
                names.push(
                    pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        Ok(names)
    }

    fn rollout(&self, ns: &str, what: &str) -> anyhow::Result<()> {
        self.node
            .kubectl(&["rollout", "status", "-n", ns, what, "--timeout=120s"])?;
        Ok(())
    }

    /// `kubectl get pt NAME`: (MATCHED, ACTIVE, FAILING, READY), as printed.
    fn pt_row(&self, name: &str) -> anyhow::Result<(String, Vec<String>)> {
        let out = self
            .node
            .kubectl(&["get", "pt", "-n", &self.app_ns, name])?;
        let row = out
            .lines()
            .nth(1)
            .context("kubectl get pt printed no row")?
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        ensure!(row.len() >= 5, "unexpected kubectl get pt output {out:?}");
        Ok((out, row[1..5].to_vec()))
    }

    async fn pt_shows(
        &self,
        name: &str,
        matched: u32,
        jobs_per_pod: u32,
    ) -> anyhow::Result<String> {
        eventually(
            &format!("kubectl get pt {name}: MATCHED {matched}, FAILING 0, READY True"),
            Duration::from_secs(90),
            || async {
                let (table, row) = self.pt_row(name)?;
                let want = [
                    matched.to_string(),
                    (matched * jobs_per_pod).to_string(),
                    "0".to_string(),
                    "True".to_string(),
                ];
                ensure!(row == want, "{table}");
                Ok(table)
            },
        )
        .await
    }

    /// A profile of `pod` and type `name` written after `after`, whose decompressed bytes
    /// contain `frame` (a function of the Go service).
    async fn profile_of(
        &self,
        pod: &str,
        name: &str,
        after: SystemTime,
        frame: &str,
        timeout: Duration,
    ) -> anyhow::Result<StoredProfile> {
        eventually(
            &format!("a {name} profile of {pod} with {frame}"),
            timeout,
            || async {
                let found = stored_profiles(&self.profiles).into_iter().find(|p| {
                    p.label("pod") == pod
                        && p.label("__name__") == name
                        && p.written > after
                        && std::fs::read(&p.path)
                            .map(|raw| {
                                decompress(&raw)
                                    .windows(frame.len())
                                    .any(|w| w == frame.as_bytes())
                            })
                            .unwrap_or(false)
                });
                found.context("none yet")
            },
        )
        .await
    }
}

fn decompress(raw: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match flate2::read::GzDecoder::new(raw).read_to_end(&mut out) {
        Ok(_) => out,
        Err(_) => raw.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_on_a_real_node() -> anyhow::Result<()> {
    let Some(node) = RealNode::get("real_node::helm_install_on_a_real_node")? else {
        return Ok(());
    };
    let images = node.images()?;
    for image in [KUBEPROF_IMAGE, DEMO_IMAGE] {
        ensure!(
            images.iter().any(|i| i == image),
            "node {NODE_NAME} has no image {image}: run scripts/build-image.sh (it imports into the running node)"
        );
    }
    let id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_millis()
            % 0xff_ffff
    );
    // The scraper's hostPath, made ahead and owned by the image's user: kubelet would create
    // it root-owned (DirectoryOrCreate) and the non-root scraper could not write to it.
    let host_dir = PathBuf::from(format!("/var/lib/kubeprof-e2e-{id}"));
    std::fs::create_dir_all(&host_dir)?;
    std::os::unix::fs::chown(&host_dir, Some(IMAGE_UID), Some(IMAGE_UID)).with_context(|| {
        format!(
            "chown {} (the real-node test runs as root)",
            host_dir.display()
        )
    })?;
    let values = json!({
        "image": {"repository": "ghcr.io/kubeprof/kubeprof", "tag": "dev", "pullPolicy": "Never"},
        "scraper": {"fileSinkHostPath": host_dir},
        "defaultPolicy": {
            "create": true,
            "name": format!("e2e-{id}"),
            "spec": {
                "defaults": {"interval": "10s", "scrapeTimeout": "5s"},
                "sinks": [{"name": "local", "file": {"directory": "/var/lib/kubeprof/profiles"}}],
            },
        },
    });
    let s = Scenario {
        node: &node,
        helm: HelmRelease::new(&node, "kubeprof", &format!("kubeprof-{id}")),
        app_ns: format!("shop-{id}"),
        profiles: host_dir.join("profiles"),
        values,
    };
    let result = scenario(&s).await;
    if result.is_err() {
        diagnostics(&s);
    }
    // Best effort: the release may already be gone (step 7) or never have been installed.
    let _ = s.helm.uninstall();
    for ns in [s.app_ns.as_str(), s.ns()] {
        let _ = node.kubectl(&[
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
    let crds = chart_crds();
    let _ = node.kubectl(&[
        "delete",
        "--ignore-not-found",
        "--wait=false",
        "-f",
        &crds.to_string_lossy(),
    ]);
    let _ = std::fs::remove_dir_all(&host_dir);
    result
}

fn diagnostics(s: &Scenario<'_>) {
    let show = |args: &[&str]| match s.node.kubectl(args) {
        Ok(out) => say(&format!("$ kubectl {}\n{out}", args.join(" "))),
        Err(e) => say(&format!("$ kubectl {}: {e:#}", args.join(" "))),
    };
    show(&["get", "pods", "-A", "-o", "wide"]);
    show(&["get", "events", "-n", s.ns(), "--sort-by=.lastTimestamp"]);
    show(&["get", "events", "-n", &s.app_ns, "--sort-by=.lastTimestamp"]);
    show(&["get", "pt", "-n", &s.app_ns, "-o", "yaml"]);
    for component in ["operator", "scraper"] {
        show(&[
            "logs",
            "-n",
            s.ns(),
            "-l",
            &format!("app.kubernetes.io/component={component}"),
            "--tail=40",
            "--prefix",
        ]);
    }
    let files = stored_profiles(&s.profiles);
    say(&format!(
        "{} stored profiles under {}",
        files.len(),
        s.profiles.display()
    ));
    for p in files.iter().rev().take(5) {
        say(&format!("  {} {:?}", p.path.display(), p.labels));
    }
}

/// `kubectl auth can-i` for each ServiceAccount of the release against what its binary does:
/// the operator watches pods, namespaces and the CRs cluster-wide, writes CR status, events, its
/// job ConfigMaps and its Lease; the scraper reads its node's jobs, writes its health report and
/// reads the Secrets that targets reference (`scraper.readSecrets`, default on). Neither may
/// touch anything else listed here. Returns the differences.
fn rbac_differences(s: &Scenario<'_>) -> anyhow::Result<Vec<String>> {
    let ns = s.ns();
    let app = s.app_ns.as_str();
    let sa = |name: &str| format!("system:serviceaccount:{ns}:{}-{name}", s.helm.name);
    let (operator, scraper) = (sa("operator"), sa("scraper"));
    // (who, verb, resource, namespace (None: all), allowed)
    let table: &[(&str, &str, &str, Option<&str>, bool)] = &[
        (&operator, "watch", "pods", None, true),
        (&operator, "watch", "namespaces", None, true),
        (
            &operator,
            "watch",
            "profilingtargets.kubeprof.io",
            None,
            true,
        ),
        (
            &operator,
            "watch",
            "profilingpolicies.kubeprof.io",
            None,
            true,
        ),
        (
            &operator,
            "patch",
            "profilingtargets.kubeprof.io/status",
            Some(app),
            true,
        ),
        (&operator, "create", "events", Some(app), true),
        (&operator, "create", "configmaps", Some(ns), true),
        (&operator, "delete", "configmaps", Some(ns), true),
        (
            &operator,
            "update",
            "leases.coordination.k8s.io",
            Some(ns),
            true,
        ),
        (&operator, "get", "secrets", Some(app), false),
        (&operator, "create", "configmaps", Some(app), false),
        (&operator, "delete", "pods", Some(app), false),
        (
            &operator,
            "update",
            "profilingtargets.kubeprof.io",
            Some(app),
            false,
        ),
        (&scraper, "watch", "configmaps", Some(ns), true),
        (&scraper, "patch", "configmaps", Some(ns), true),
        (&scraper, "get", "secrets", Some(app), true),
        (&scraper, "list", "secrets", Some(app), false),
        (&scraper, "list", "pods", None, false),
        (&scraper, "create", "configmaps", Some(app), false),
        (
            &scraper,
            "update",
            "leases.coordination.k8s.io",
            Some(ns),
            false,
        ),
        (
            &scraper,
            "patch",
            "profilingtargets.kubeprof.io/status",
            Some(app),
            false,
        ),
    ];
    let mut differences = Vec::new();
    for &(who, verb, resource, namespace, allowed) in table {
        let can = s.node.can_i(who, verb, resource, namespace)?;
        if can != allowed {
            differences.push(format!(
                "{who} {verb} {resource} in {}: {} but should {}",
                namespace.unwrap_or("all namespaces"),
                if can { "allowed" } else { "denied" },
                if allowed { "be allowed" } else { "not be" },
            ));
        }
    }
    Ok(differences)
}

async fn scenario(s: &Scenario<'_>) -> anyhow::Result<()> {
    let node = s.node;
    let crds = chart_crds();
    let crds = crds.to_string_lossy();

    // The demo services first, so that the clock below measures kubeprof alone.
    node.kubectl(&["create", "namespace", &s.app_ns])?;
    s.apply(&s.app_ns, &demo_deployment("checkout", json!({})))?;
    s.apply(
        &s.app_ns,
        &demo_deployment(
            "annotated",
            json!({
                "profiles.grafana.com/cpu.scrape": "true",
                "profiles.grafana.com/cpu.port_name": "pprof",
                "profiles.grafana.com/memory.scrape": "true",
                "profiles.grafana.com/memory.port_name": "pprof",
            }),
        ),
    )?;
    s.rollout(&s.app_ns, "deployment/checkout")?;
    s.rollout(&s.app_ns, "deployment/annotated")?;

    // 1. Install as the README says.
    let t0 = Instant::now();
    let since = SystemTime::now();
    // A previous run that died half-way may have left them.
    node.kubectl(&["delete", "--ignore-not-found", "-f", &crds])?;
    node.kubectl(&["create", "--validate=false", "-f", &crds])?;
    node.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &crds,
    ])?;
    let release = s.helm.install(&s.values)?;
    let installed = t0.elapsed();
    ensure!(release["status"] == "deployed", "helm install: {release}");
    say(&format!(
        "e2e real node: 1. CRDs created, helm install --wait done in {:.1} s: {release}",
        installed.as_secs_f64()
    ));
    s.apply(
        &s.app_ns,
        &json!({
            "apiVersion": "kubeprof.io/v1alpha1",
            "kind": "ProfilingTarget",
            "metadata": {"name": "checkout"},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "checkout"}},
                "endpoints": [{
                    "port": "pprof",
                    "interval": "10s",
                    "scrapeTimeout": "5s",
                    "profiles": {
                        "cpu": {"enabled": true, "seconds": 5},
                        "memory": {"enabled": true},
                        "goroutine": {"enabled": true},
                        "mutex": {"enabled": false},
                        "block": {"enabled": false},
                    },
                }],
            },
        }),
    )?;

    // What the ServiceAccounts may do, against what each binary does (and must not do).
    let rbac = rbac_differences(s)?;
    ensure!(
        rbac.is_empty(),
        "RBAC differs from what the binaries need:\n{}",
        rbac.join("\n")
    );
    say(
        "e2e real node: 1. RBAC: kubectl auth can-i agrees with what the operator and the scraper do",
    );

    // 2. Profiles of real pods, on the node's disk.
    let checkout = s.pods(&s.app_ns, "app.kubernetes.io/name=checkout")?;
    let [first] = checkout.as_slice() else {
        bail!("expected one checkout pod, got {checkout:?}");
    };
    let memory = s
        .profile_of(
            first,
            "memory",
            since,
            "main.leakyAllocator",
            Duration::from_secs(120),
        )
        .await?;
    say(&format!(
        "e2e real node: helm install -> first stored profile: {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        memory.path.display()
    ));
    let cpu = s
        .profile_of(
            first,
            "process_cpu",
            since,
            "main.hotCPULeaf",
            Duration::from_secs(60),
        )
        .await?;
    for (k, v) in [
        ("namespace", s.app_ns.as_str()),
        ("container", "checkout"),
        ("node", NODE_NAME),
        ("service_name", &format!("{}/checkout", s.app_ns)),
    ] {
        ensure!(cpu.label(k) == v, "label {k} of {:?}", cpu.labels);
    }
    ensure!(
        !cpu.labels
            .keys()
            .any(|k| k.starts_with("__") && k != "__name__"),
        "internal labels reached the sink: {:?}",
        cpu.labels
    );
    let annotated = s.pods(&s.app_ns, "app.kubernetes.io/name=annotated")?;
    let annotated = annotated.first().context("no annotated pod")?;
    s.profile_of(
        annotated,
        "process_cpu",
        since,
        "main.hotCPULeaf",
        Duration::from_secs(60),
    )
    .await?;
    let table = s.pt_shows("checkout", 1, 3).await?;
    say(&format!(
        "e2e real node: 2. CPU and memory profiles of the target's pod and the annotated pod\n{table}"
    ));

    // 3. Scale up.
    node.kubectl(&[
        "scale",
        "-n",
        &s.app_ns,
        "deployment/checkout",
        "--replicas=2",
    ])?;
    s.rollout(&s.app_ns, "deployment/checkout")?;
    let pods = eventually("two checkout pods", Duration::from_secs(60), || async {
        let pods = s.pods(&s.app_ns, "app.kubernetes.io/name=checkout")?;
        ensure!(pods.len() == 2, "{pods:?}");
        Ok(pods)
    })
    .await?;
    let second = pods
        .iter()
        .find(|p| *p != first)
        .context("no new pod")?
        .clone();
    s.profile_of(
        &second,
        "memory",
        since,
        "main.leakyAllocator",
        Duration::from_secs(60),
    )
    .await?;
    let table = s.pt_shows("checkout", 2, 3).await?;
    say(&format!(
        "e2e real node: 3. scaled to 2: the new pod {second} is profiled\n{table}"
    ));

    // 4. The scraper pod deleted: the DaemonSet replaces it, profiles keep coming.
    let scraper_sel = "app.kubernetes.io/component=scraper";
    let old_scraper = s.pods(s.ns(), scraper_sel)?;
    node.kubectl(&[
        "delete",
        "pod",
        "-n",
        s.ns(),
        "-l",
        scraper_sel,
        "--wait=true",
    ])?;
    let new_scraper = eventually("a new scraper pod", Duration::from_secs(90), || async {
        let pods = s.pods(s.ns(), scraper_sel)?;
        ensure!(pods.len() == 1 && pods != old_scraper, "{pods:?}");
        Ok(pods)
    })
    .await?;
    s.rollout(s.ns(), "daemonset/kubeprof-scraper")?;
    let replaced = SystemTime::now();
    s.profile_of(
        first,
        "memory",
        replaced,
        "main.leakyAllocator",
        Duration::from_secs(60),
    )
    .await?;
    say(&format!(
        "e2e real node: 4. scraper {old_scraper:?} deleted, {new_scraper:?} took over and stores profiles"
    ));

    // 5. The operator leader deleted: the other replica leads.
    let lease = kubeprof_crds::constants::LEADER_LEASE;
    let holder = |s: &Scenario<'_>| {
        s.node
            .kubectl(&[
                "get",
                "lease",
                "-n",
                s.ns(),
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .map(|h| h.trim().to_owned())
    };
    let leader = eventually("a leader", Duration::from_secs(60), || async {
        let h = holder(s)?;
        ensure!(!h.is_empty(), "no holder");
        Ok(h)
    })
    .await?;
    let operators = s.pods(s.ns(), "app.kubernetes.io/component=operator")?;
    ensure!(
        operators.len() == 2 && operators.contains(&leader),
        "operators {operators:?}, leader {leader}"
    );
    node.kubectl(&["delete", "pod", "-n", s.ns(), &leader, "--wait=false"])?;
    let new_leader = eventually("another leader", Duration::from_secs(90), || async {
        let h = holder(s)?;
        ensure!(!h.is_empty() && h != leader, "holder {h:?}");
        Ok(h)
    })
    .await?;
    node.kubectl(&[
        "scale",
        "-n",
        &s.app_ns,
        "deployment/checkout",
        "--replicas=1",
    ])?;
    let table = s.pt_shows("checkout", 1, 3).await?;
    say(&format!(
        "e2e real node: 5. leader {leader} deleted, {new_leader} leads; scaled to 1, status follows\n{table}"
    ));

    // kubeprof profiles itself (the chart annotates the operator pods); not asserted here, as it
    // depends on the chart giving the profiler a writable /tmp.
    let own = stored_profiles(&s.profiles)
        .iter()
        .filter(|p| p.label("namespace") == s.ns())
        .count();
    let health = node
        .kubectl(&[
            "get",
            "configmap",
            "-n",
            s.ns(),
            &kubeprof_crds::health::health_object_name(Some(NODE_NAME)),
            "-o",
            "jsonpath={.data.health\\.json}",
        ])
        .unwrap_or_default();
    let failing: std::collections::BTreeSet<String> =
        serde_json::from_str::<serde_json::Value>(&health)
            .ok()
            .and_then(|h| h["failing"].as_object().cloned())
            .into_iter()
            .flatten()
            .filter_map(|(_, f)| f["message"].as_str().map(str::to_owned))
            .collect();
    say(&format!(
        "e2e real node: kubeprof's own profiles stored: {own}; failing scrapes: {failing:?}"
    ));

    // 6. helm upgrade with changed values.
    let mut values = s.values.clone();
    values["logFormat"] = json!("text");
    values["defaultPolicy"]["spec"]["externalLabels"] = json!({"cluster": "real-node"});
    let upgraded_at = SystemTime::now();
    let release = s.helm.upgrade(&values)?;
    ensure!(
        release["status"] == "deployed" && release["revision"] == 2,
        "helm upgrade: {release}"
    );
    s.rollout(s.ns(), "deployment/kubeprof-operator")?;
    s.rollout(s.ns(), "daemonset/kubeprof-scraper")?;
    let labelled = eventually(
        "a profile with the upgrade's external label",
        Duration::from_secs(90),
        || async {
            stored_profiles(&s.profiles)
                .into_iter()
                .find(|p| p.written > upgraded_at && p.label("cluster") == "real-node")
                .context("none yet")
        },
    )
    .await?;
    let args = node.kubectl(&[
        "get",
        "daemonset",
        "-n",
        s.ns(),
        "kubeprof-scraper",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ])?;
    ensure!(
        args.contains("--log-format=text"),
        "scraper args after upgrade: {args}"
    );
    say(&format!(
        "e2e real node: 6. helm upgrade (revision 2): {} carries cluster=real-node",
        labelled.path.display()
    ));

    // 7. helm uninstall.
    let release = s.helm.uninstall()?;
    say(&format!("e2e real node: 7. helm uninstall: {release}"));
    eventually("kubeprof's pods gone", Duration::from_secs(90), || async {
        let left = node.kubectl(&[
            "get",
            "pods",
            "-n",
            s.ns(),
            "-l",
            "app.kubernetes.io/name=kubeprof",
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "left: {left}");
        Ok(())
    })
    .await?;
    let left = node.kubectl(&["get", "all,configmaps,leases", "-n", s.ns(), "-o", "name"])?;
    say(&format!(
        "e2e real node: 7. after uninstall, namespace {} holds:\n{left}",
        s.ns()
    ));
    Ok(())
}
