//! What the real-node test owns on the node (a release namespace, an application namespace, a
//! hostPath folder for the file sink), and the probes it looks through: kubectl, as a user would,
//! and the files the scraper wrote on the node.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, ensure};
use kubeprof_e2e::{
    procs::eventually,
    real_node::{HelmRelease, RealNode, StoredProfile, stored_profiles},
    say,
};
use serde_json::json;

/// The Go pprof service's image (scripts/build-image.sh pprofdemo).
pub const DEMO_IMAGE: &str = "docker.io/kubeprof-e2e/pprofdemo:latest";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The CRDs as the README installs them on servers before 1.25.
pub fn crds() -> String {
    repo().join("crds/yaml").to_string_lossy().into_owned()
}

/// The chart's default image, `kubeprof:<appVersion>`, as containerd names it.
pub fn kubeprof_image() -> anyhow::Result<String> {
    let chart: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo().join("charts/kubeprof/Chart.yaml"),
    )?)?;
    let version = chart["appVersion"]
        .as_str()
        .context("Chart.yaml has no appVersion")?;
    Ok(format!("docker.io/library/kubeprof:{version}"))
}

/// A pprofdemo Deployment: one container named `name`, port `pprof`.
pub fn demo_deployment(name: &str, annotations: serde_json::Value) -> serde_json::Value {
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

/// The release, its namespaces and where its profiles land.
pub struct Stage<'a> {
    /// The node.
    pub node: &'a RealNode,
    /// The Helm release of the chart.
    pub helm: HelmRelease,
    /// Where the demo services run.
    pub app_ns: String,
    /// Where the Pyroscope push receiver runs.
    pub sink_ns: String,
    /// The file sink's hostPath on the node (the scraper's `/var/lib/kubeprof`).
    pub host_dir: PathBuf,
    /// The values of `helm install`.
    pub values: serde_json::Value,
}

impl<'a> Stage<'a> {
    /// Names unique to this run; nothing is created yet.
    pub fn new(node: &'a RealNode) -> anyhow::Result<Self> {
        let id = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis()
                % 0xff_ffff
        );
        let host_dir = PathBuf::from(format!("/var/lib/kubeprof-e2e/{id}"));
        let values = json!({
            // The chart's image as it is; the node has no registry to pull from.
            "image": {"pullPolicy": "Never"},
            "scraper": {"fileSink": {"hostPath": host_dir}},
            // The eBPF DaemonSet, with the chart's privileges.
            "ebpf": {"enabled": true},
            // Each of the operator's own 10 s CPU profiles peaks at 220-280 MiB (pprof-rs
            // preallocates its sample table): the chart's 256Mi limit has it OOMKilled.
            "operator": {"resources": {"limits": {"memory": "512Mi"}}},
            "defaultPolicy": {
                "create": true,
                "name": format!("e2e-{id}"),
                "spec": {
                    // The namespaces the test labels, so that one can leave the policy.
                    "namespaceSelector": {"matchLabels": {crate::scope::PROFILED_LABEL: "true"}},
                    "defaults": {"interval": "10s", "scrapeTimeout": "5s"},
                    "sinks": [{"name": "local", "file": {"directory": "/var/lib/kubeprof/profiles"}}],
                    // eBPF for the application's pods only: kubeprof's own pods (in a
                    // namespace the policy governs too) are the unselected ones.
                    "ebpf": {"enabled": true, "namespaces": {"include": [format!("shop-{id}")]}},
                },
            },
        });
        Ok(Self {
            node,
            helm: HelmRelease::new(node, "kubeprof", &format!("kubeprof-{id}")),
            app_ns: format!("shop-{id}"),
            sink_ns: format!("sink-{id}"),
            host_dir,
            values,
        })
    }

    /// The release namespace.
    pub fn ns(&self) -> &str {
        &self.helm.namespace
    }

    /// The file sink's folder, seen from the node.
    pub fn profiles(&self) -> PathBuf {
        self.host_dir.join("profiles")
    }

    /// `kubectl apply -n NS -f -` of one object.
    pub fn apply(&self, ns: &str, object: &serde_json::Value) -> anyhow::Result<()> {
        self.node
            .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string())?;
        Ok(())
    }

    /// Names of the Ready pods that `selector` matches and that are not being deleted.
    pub fn pods(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<String>> {
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

    /// Containers of the release that restarted: `pod: count (last reason)`.
    pub fn restarts(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .node
            .kubectl(&["get", "pods", "-n", self.ns(), "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        let mut restarted = Vec::new();
        for pod in list["items"].as_array().into_iter().flatten() {
            for c in pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let count = c["restartCount"].as_u64().unwrap_or(0);
                if count > 0 {
                    restarted.push(format!(
                        "{}: {count} ({})",
                        pod["metadata"]["name"].as_str().unwrap_or_default(),
                        c["lastState"]["terminated"]["reason"]
                            .as_str()
                            .unwrap_or("?")
                    ));
                }
            }
        }
        Ok(restarted)
    }

    /// `kubectl rollout status`, up to 2 minutes.
    pub fn rollout(&self, ns: &str, what: &str) -> anyhow::Result<()> {
        self.node
            .kubectl(&["rollout", "status", "-n", ns, what, "--timeout=120s"])?;
        Ok(())
    }

    /// `kubectl get pt NAME`: the table, and its MATCHED, ACTIVE, FAILING, READY columns.
    /// `kubectl get pt NAME`'s table, and its MATCHED, ACTIVE, FAILING and READY cells, found
    /// by their headers (the printer columns grow: SAMPLED came with replica sampling).
    fn pt_row(&self, name: &str) -> anyhow::Result<(String, Vec<String>)> {
        let out = self
            .node
            .kubectl(&["get", "pt", "-n", &self.app_ns, name])?;
        let mut lines = out.lines();
        let header = lines
            .next()
            .context("kubectl get pt printed nothing")?
            .split_whitespace()
            .collect::<Vec<_>>();
        let row = lines
            .next()
            .context("kubectl get pt printed no row")?
            .split_whitespace()
            .collect::<Vec<_>>();
        let cells = ["MATCHED", "ACTIVE", "FAILING", "READY"]
            .iter()
            .map(|column| {
                let at = header
                    .iter()
                    .position(|h| h == column)
                    .with_context(|| format!("no {column} column in {out:?}"))?;
                row.get(at)
                    .map(|cell| (*cell).to_owned())
                    .with_context(|| format!("no {column} cell in {out:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((out, cells))
    }

    /// Waits until `kubectl get pt NAME` shows `matched` pods, their jobs, none failing, Ready.
    pub async fn pt_shows(
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

    /// Waits for a profile of type `name` with labels `labels`, written after `after`, whose
    /// decompressed bytes contain `frame` (a function of the profiled program), when given.
    pub async fn profile(
        &self,
        labels: &[(&str, &str)],
        name: &str,
        after: SystemTime,
        frame: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<StoredProfile> {
        eventually(
            &format!("a {name} profile of {labels:?} with {frame:?}"),
            timeout,
            || async {
                stored_profiles(&self.profiles())
                    .into_iter()
                    .find(|p| {
                        labels.iter().all(|(k, v)| p.label(k) == *v)
                            && p.label("__name__") == name
                            && p.written > after
                            && frame.is_none_or(|frame| {
                                std::fs::read(&p.path)
                                    .map(|raw| contains(&decompress(&raw), frame))
                                    .unwrap_or(false)
                            })
                    })
                    .context("none yet")
            },
        )
        .await
    }

    /// Prints what helps to see why a step failed.
    pub fn diagnostics(&self) {
        let show = |args: &[&str]| match self.node.kubectl(args) {
            Ok(out) => say(&format!("$ kubectl {}\n{out}", args.join(" "))),
            Err(e) => say(&format!("$ kubectl {}: {e:#}", args.join(" "))),
        };
        show(&["get", "pods", "-A", "-o", "wide"]);
        show(&["get", "events", "-n", self.ns(), "--sort-by=.lastTimestamp"]);
        show(&[
            "get",
            "events",
            "-n",
            &self.app_ns,
            "--sort-by=.lastTimestamp",
        ]);
        show(&["get", "pt", "-n", &self.app_ns, "-o", "yaml"]);
        // The push receiver logs every push it refused.
        show(&[
            "logs",
            "-n",
            &self.sink_ns,
            "deployment/pyroscope",
            "--tail=20",
        ]);
        // Why a container restarted: its last state, and the log of its previous run.
        show(&[
            "get",
            "pods",
            "-n",
            self.ns(),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.status.containerStatuses[*].lastState}{\"\\n\"}{end}",
        ]);
        if let Ok(names) = self
            .node
            .kubectl(&["get", "pods", "-n", self.ns(), "-o", "name"])
        {
            for pod in names.lines() {
                let _ = self
                    .node
                    .kubectl(&[
                        "logs",
                        "-n",
                        self.ns(),
                        pod,
                        "--all-containers",
                        "--previous",
                        "--tail=20",
                    ])
                    .map(|log| say(&format!("$ kubectl logs --previous {pod}\n{log}")));
            }
        }
        for component in ["operator", "scraper"] {
            show(&[
                "logs",
                "-n",
                self.ns(),
                "-l",
                &format!("app.kubernetes.io/component={component}"),
                "--all-containers",
                "--tail=40",
                "--prefix",
            ]);
        }
        let files = stored_profiles(&self.profiles());
        say(&format!(
            "{} stored profiles under {}",
            files.len(),
            self.profiles().display()
        ));
        for p in files.iter().rev().take(5) {
            say(&format!("  {} {:?}", p.path.display(), p.labels));
        }
    }

    /// Deletes what the run created, whatever state it stopped in.
    pub fn cleanup(&self) {
        // The release may be gone already (the last step) or never have been installed.
        let _ = self.helm.uninstall();
        for ns in [self.app_ns.as_str(), self.sink_ns.as_str(), self.ns()] {
            let _ = self.node.kubectl(&[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        let _ = self.node.kubectl(&[
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            &crds(),
        ]);
        let _ = std::fs::remove_dir_all(&self.host_dir);
        if let Some(parent) = self.host_dir.parent() {
            // Only when no other run uses it.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Whether a stored profile (gzip or raw) names `frame`.
pub fn profile_contains(raw: &[u8], frame: &str) -> bool {
    contains(&decompress(raw), frame)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn decompress(raw: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match flate2::read::GzDecoder::new(raw).read_to_end(&mut out) {
        Ok(_) => out,
        Err(_) => raw.to_vec(),
    }
}
