//! The real node: a Kubernetes 1.20 cluster whose kubelet runs real containers on this machine
//! (`scripts/real-node.sh start`), for tests that install kubeprof as a user does.
//!
//! [`RealNode::get`] finds its admin kubeconfig in `$KUBEPROF_NODE_KUBECONFIG`, else where the
//! start script writes it (`$KUBEPROF_NODE_DIR`, default `~/.cache/kubeprof/node`, `/kubeconfig`).
//! With neither it prints one `SKIPPED` line and returns `None`. A kubeconfig whose node is not
//! Ready is an error, not a skip: the node was asked for.
//!
//! It is deliberately not [`crate::TestEnv`]: the fast e2e tests keep their kubelet-less API
//! server, so `$KUBECONFIG` is never pointed at this node by the scripts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, bail};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::say;

/// The node's name in the cluster the start script makes.
pub const NODE_NAME: &str = "kubeprof-node";

/// A running real node.
#[derive(Debug, Clone)]
pub struct RealNode {
    kubeconfig: PathBuf,
}

fn default_kubeconfig() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEPROF_NODE_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("kubeconfig"));
    }
    let cache = std::env::var_os("KUBEPROF_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kubeprof")))?;
    Some(cache.join("node/kubeconfig"))
}

impl RealNode {
    /// The running node, or `None` (after printing why) when none was started.
    pub fn get(test: &str) -> anyhow::Result<Option<RealNode>> {
        let explicit = std::env::var_os("KUBEPROF_NODE_KUBECONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let Some(kubeconfig) = explicit.or_else(default_kubeconfig).filter(|p| p.is_file()) else {
            say(&format!(
                "SKIPPED e2e test {test}: no real node: start one with scripts/real-node.sh start (root; builds kubelet & co. once), or set KUBEPROF_NODE_KUBECONFIG"
            ));
            return Ok(None);
        };
        let node = RealNode { kubeconfig };
        let ready = node
            .kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .with_context(|| {
                format!(
                    "{} exists but its node does not answer: scripts/real-node.sh stop, then start",
                    node.kubeconfig.display()
                )
            })?;
        if ready.trim() != "True" {
            bail!("node {NODE_NAME} is not Ready (Ready={ready:?})");
        }
        Ok(Some(node))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client for the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// `kubectl ARGS` against the node; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_kubectl(&self.kubeconfig, args, None)
    }

    /// `kubectl ARGS` with `stdin` as its input (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        run_kubectl(&self.kubeconfig, args, Some(stdin))
    }

    /// `kubectl auth can-i VERB RESOURCE [--subresource SUB] [-n NAMESPACE] --as=USER`: whether
    /// the server's authorizer allows it. `RESOURCE` is `TYPE` or `TYPE/NAME`; no namespace
    /// asks about all namespaces.
    pub fn can_i(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
    ) -> anyhow::Result<bool> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["auth", "can-i", verb, resource, "--as", user]);
        if let Some(sub) = subresource {
            cmd.args(["--subresource", sub]);
        }
        match namespace {
            Some(ns) => cmd.args(["-n", ns]),
            None => cmd.arg("--all-namespaces"),
        };
        let out = cmd.output().context("running kubectl")?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => bail!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// The images the node's container runtime holds (`status.images` of the Node).
    pub fn images(&self) -> anyhow::Result<Vec<String>> {
        let out = self.kubectl(&[
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={range .status.images[*]}{range .names[*]}{@}{\"\\n\"}{end}{end}",
        ])?;
        Ok(out.lines().map(str::to_owned).collect())
    }
}

fn run_kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running kubectl (is it on PATH?)")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Helm release of the repository's chart, driven through Helm's own engine
/// (helm-python-sdk, `e2e/helm/release.py`).
#[derive(Debug, Clone)]
pub struct HelmRelease {
    /// Release name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    kubeconfig: PathBuf,
}

impl HelmRelease {
    /// A release `name` in `namespace` of the node's cluster (nothing happens yet).
    pub fn new(node: &RealNode, name: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            kubeconfig: node.kubeconfig.clone(),
        }
    }

    fn run(&self, action: &str, values: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/release.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(action)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace, "--release", &self.name])
            .args(["--values", &values.to_string()])
            .output()
            .context("running python3 (the Helm engine is helm-python-sdk)")?;
        if !out.status.success() {
            bail!(
                "helm {action} {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("helm {action} printed {stdout:?}"))
    }

    /// `helm install --skip-crds --create-namespace --wait` with these values.
    pub fn install(&self, values: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.run("install", values)
    }

    /// `helm upgrade --wait` with these values.
    pub fn upgrade(&self, values: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.run("upgrade", values)
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(&self) -> anyhow::Result<serde_json::Value> {
        self.run("uninstall", &serde_json::Value::Null)
    }
}

/// A profile the file sink stored: its labels, its path and when it was written.
#[derive(Debug, Clone)]
pub struct StoredProfile {
    /// The labels from `<unix ms>.labels.json`.
    pub labels: BTreeMap<String, String>,
    /// `<unix ms>.pb.gz`.
    pub path: PathBuf,
    /// When the labels file was written.
    pub written: SystemTime,
}

impl StoredProfile {
    /// When its scrape started: the file sink names each profile `<unix ms of the start>.pb.gz`.
    pub fn started(&self) -> Option<SystemTime> {
        let ms: u64 = self
            .path
            .file_name()?
            .to_str()?
            .strip_suffix(".pb.gz")?
            .parse()
            .ok()?;
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    /// A label's value, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Every profile below `dir` (the file sink's layout: `<service_name>/<type>/<ms>.pb.gz` with
/// `<ms>.labels.json` beside it). Files being written (no labels yet) are left out.
pub fn stored_profiles(dir: &Path) -> Vec<StoredProfile> {
    fn walk(dir: &Path, out: &mut Vec<StoredProfile>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".labels.json"))
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(labels) = serde_json::from_str(&text)
                && let Ok(written) = e.metadata().and_then(|m| m.modified())
            {
                out.push(StoredProfile {
                    labels,
                    path: p.with_file_name(format!("{stem}.pb.gz")),
                    written,
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort_by_key(|p| p.written);
    out
}
