//! A [`Stage`]: what one operator end-to-end test owns on the shared API server, so that it
//! passes or fails alone and can run alone or beside the others.
//!
//! The operator watches the whole cluster, so tests are kept apart by construction. Each stage
//! has its own application namespace; a ProfilingPolicy selecting only that namespace, with a
//! file sink in the stage's own directory; its own operator namespace (job shards, health
//! reports, the leader Lease); its own node names, so that only its own scrapers read its shards;
//! and its own loopback addresses for the Go services.
//!
//! What stays shared is status: every running operator writes the status of every
//! ProfilingTarget it sees, and takes scrape health only from the reports in its own namespace,
//! so another test's operator reports a target's jobs as not failing. Tests that run beside
//! others assert only what every operator computes alike (matched pods, active jobs,
//! PortNotFound, InvalidSpec), whichever operator wrote it; a test asserting scrape health in
//! status takes the API server for itself ([`Needs::exclusive`]). Running the others side by
//! side keeps the file's wall time near what one sequential test took.
//!
//! A stage deletes what it created when it drops (after success, an error or a panic), by label;
//! on failure it first prints the tail of every process log and keeps its directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use kubeprof_crds::{ProfilingPolicy, ProfilingTarget};
use kubeprof_e2e::{
    TestEnv,
    procs::{Proc, pprof_demo_binary},
    say, tail,
};
use serde_json::json;
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Label on a stage's namespaces and policy; its value is the stage's id. Cleanup selects it.
pub const STAGE_LABEL: &str = "kubeprof.io/e2e-stage";

/// What a test needs besides an API server.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Go pprof services (the test is SKIPPED without `go`).
    pub go: bool,
    /// No other stage at the same time: the test asserts what only its own operator knows.
    pub exclusive: bool,
}

/// Our processes' log filter. Not `kube=warn`: a target filter is a prefix, and that one also
/// silences `kubeprof_*`, leaving the logs shown on failure empty.
const LOG_FILTER: &str = "info,kube_client=warn,kube_runtime=warn";

/// Held by every stage: shared, or exclusive for [`Needs::exclusive`].
static CLUSTER: RwLock<()> = RwLock::const_new(());
/// The CRDs, installed once per test binary (concurrent replaces would conflict).
static CRDS: OnceCell<()> = OnceCell::const_new();
static NEXT_STAGE: AtomicU32 = AtomicU32::new(0);
static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A guard of [`CLUSTER`], held until the stage drops.
#[derive(Debug)]
#[expect(dead_code, reason = "held, never read")]
enum Hold {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// A profile the file sink stored: its labels and the path of the profile.
pub type Stored = (BTreeMap<String, String>, PathBuf);

/// A Go pprof service standing in for a pod's container.
#[derive(Debug)]
pub struct Demo {
    /// The process.
    pub proc: Proc,
    /// Its loopback IP, the pod's IP.
    pub ip: String,
    /// Its port, the pod's container port.
    pub port: u16,
}

/// An operator replica and the address of its `/metrics`.
#[derive(Debug)]
pub struct Operator {
    /// The process.
    pub proc: Proc,
    /// `ip:port` of its telemetry endpoints.
    pub listen: String,
}

/// One test's namespaces, policy, directory and processes (see the module documentation).
pub struct Stage {
    name: String,
    env: Arc<TestEnv>,
    client: Client,
    id: String,
    app: String,
    ops: String,
    work: Option<tempfile::TempDir>,
    go_demo: Option<PathBuf>,
    failed: bool,
    /// When the test asked for the API server, and how long it waited for other tests.
    started: Instant,
    waited: Duration,
    // Released after `drop` cleaned up, so the next exclusive test starts on a quiet cluster.
    _hold: Hold,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("app", &self.app)
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

impl Stage {
    /// Sets up a stage for the test `name` (as in its SKIPPED line), runs `body` on it and
    /// tears it down. Without an API server, or without `go` when the test needs it, prints one
    /// SKIPPED line and returns `Ok`.
    pub async fn run(
        name: &str,
        needs: Needs,
        body: impl AsyncFnOnce(&Stage) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let Some(mut stage) = Self::new(name, needs).await? else {
            return Ok(());
        };
        let result = body(&stage).await;
        stage.failed = result.is_err();
        result
    }

    async fn new(name: &str, needs: Needs) -> anyhow::Result<Option<Stage>> {
        let Some(env) = TestEnv::get(name) else {
            return Ok(None);
        };
        let go_demo = if needs.go {
            let Some(go) = pprof_demo_binary()? else {
                say(&format!(
                    "SKIPPED e2e test {name}: no `go` on the PATH (install golang-go)"
                ));
                return Ok(None);
            };
            Some(go)
        } else {
            None
        };
        let started = Instant::now();
        let hold = if needs.exclusive {
            Hold::Exclusive(CLUSTER.write().await)
        } else {
            Hold::Shared(CLUSTER.read().await)
        };
        CRDS.get_or_try_init(|| async {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
            env.install_crds(&dir).await.map(drop)
        })
        .await?;
        let mut stage = Stage {
            name: name.to_owned(),
            client: env.client().await?,
            env,
            id: format!(
                "{}-{}",
                std::process::id(),
                NEXT_STAGE.fetch_add(1, Ordering::Relaxed)
            ),
            app: String::new(),
            ops: String::new(),
            work: Some(
                tempfile::Builder::new()
                    .prefix("kubeprof-e2e-stage-")
                    .tempdir()?,
            ),
            go_demo,
            failed: false,
            started,
            waited: started.elapsed(),
            _hold: hold,
        };
        // From here on, a failure drops the stage, which deletes what was made so far.
        let labels = [(STAGE_LABEL, stage.id.as_str())];
        stage.app = stage.env.namespace_labelled("shop", &labels).await?.name;
        stage.ops = stage
            .env
            .namespace_labelled("kubeprof", &labels)
            .await?
            .name;
        stage.create_policy().await?;
        Ok(Some(stage))
    }

    /// The policy of this stage's namespace only: 4 s intervals, a file sink in the stage's
    /// directory, annotations honoured.
    async fn create_policy(&self) -> anyhow::Result<()> {
        let policy: ProfilingPolicy = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingPolicy",
            "metadata": {"name": self.policy_name(), "labels": {STAGE_LABEL: self.id}},
            "spec": {
                "priority": 10,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.app}},
                "annotations": {"enabled": true, "grafana": true, "pyroscope": true},
                "defaults": {"interval": "4s", "scrapeTimeout": "3s"},
                "externalLabels": {"cluster": "e2e"},
                "sinks": [{"name": "local", "file": {"directory": self.profiles_dir().to_string_lossy()}}],
            },
        }))?;
        Api::<ProfilingPolicy>::all(self.client.clone())
            .create(&PostParams::default(), &policy)
            .await?;
        Ok(())
    }

    /// A client of the test's runtime.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The application namespace (the only one this stage's policy governs).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The operator namespace (job shards, health reports, the Lease, the scraper's
    /// ServiceAccount).
    pub fn ops(&self) -> &str {
        &self.ops
    }

    /// A client acting as `user` (impersonated by the admin), to see what RBAC lets it do.
    pub async fn client_as(&self, user: &str) -> anyhow::Result<Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.env.kubeconfig_path())?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        config.auth_info.impersonate = Some(user.to_owned());
        Ok(Client::try_from(config)?)
    }

    /// The name of this stage's ProfilingPolicy.
    pub fn policy_name(&self) -> String {
        format!("e2e-{}", self.app)
    }

    /// This stage's node called `short` (node names are per stage: see the module doc).
    pub fn node(&self, short: &str) -> String {
        format!("{}-{short}", self.app)
    }

    /// ProfilingTargets of the application namespace.
    pub fn targets(&self) -> Api<ProfilingTarget> {
        Api::namespaced(self.client.clone(), &self.app)
    }

    /// Pods of the application namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.app)
    }

    /// ConfigMaps of the operator namespace (job shards, health reports).
    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ops)
    }

    /// Leases of the operator namespace.
    pub fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.ops)
    }

    /// Creates the pod `name` on `node` with a container "app" whose port "pprof" is `addr`'s
    /// port, and sets it Running and Ready at `addr`'s IP, as a kubelet would.
    pub async fn create_running_pod(
        &self,
        name: &str,
        node: &str,
        addr: (&str, u16),
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> anyhow::Result<()> {
        let metadata = json!({"name": name, "labels": labels, "annotations": annotations});
        self.create_running_pod_with(metadata, node, addr).await
    }

    /// [`Stage::create_running_pod`] with the pod's whole `metadata` (to give it an owner).
    pub async fn create_running_pod_with(
        &self,
        metadata: serde_json::Value,
        node: &str,
        (ip, port): (&str, u16),
    ) -> anyhow::Result<()> {
        self.create_pod(metadata, node, ip, &[("app", port)]).await
    }

    /// Like [`Stage::create_running_pod`], with one container per `(name, port)`, each
    /// naming its port "pprof".
    pub async fn create_running_pod_of(
        &self,
        name: &str,
        node: &str,
        ip: &str,
        labels: serde_json::Value,
        annotations: serde_json::Value,
        containers: &[(&str, u16)],
    ) -> anyhow::Result<()> {
        let metadata = json!({"name": name, "labels": labels, "annotations": annotations});
        self.create_pod(metadata, node, ip, containers).await
    }

    async fn create_pod(
        &self,
        metadata: serde_json::Value,
        node: &str,
        ip: &str,
        containers: &[(&str, u16)],
    ) -> anyhow::Result<()> {
        let api = self.pods();
        let name = metadata["name"].as_str().context("a pod name")?.to_owned();
        let containers: Vec<serde_json::Value> = containers
            .iter()
            .map(|(c, port)| {
                json!({
                    "name": c,
                    "image": "example.invalid/pprofdemo:1",
                    "ports": [{"name": "pprof", "containerPort": port}],
                })
            })
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"nodeName": node, "containers": containers},
        }))?;
        api.create(&PostParams::default(), &pod).await?;
        api.patch_status(
            &name,
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

    fn work(&self) -> &Path {
        // Only `drop` takes it.
        self.work.as_ref().map_or(Path::new("."), |w| w.path())
    }

    fn profiles_dir(&self) -> PathBuf {
        self.work().join("profiles")
    }

    fn kubeconfig(&self) -> String {
        self.env.kubeconfig_path().to_string_lossy().into_owned()
    }

    /// A loopback IP no other stage of this process uses.
    pub fn ip(&self) -> String {
        let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
        format!("127.0.{}.{}", 1 + n / 250 % 250, 1 + n % 250)
    }

    /// Starts an operator replica with `identity` (also its log's name) in this stage's
    /// operator namespace: a 6 s lease renewed every second.
    pub fn operator(&self, identity: &str) -> anyhow::Result<Operator> {
        self.operator_with_env(identity, &[])
    }

    /// Like [`Stage::operator`], with more environment variables.
    pub fn operator_with_env(
        &self,
        identity: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Operator> {
        let kubeconfig = self.kubeconfig();
        let mut all = vec![
            ("KUBECONFIG", kubeconfig.as_str()),
            ("RUST_LOG", LOG_FILTER),
        ];
        all.extend_from_slice(env);
        let listen = free_addr("127.0.0.1")?;
        let proc = Proc::start(
            identity,
            Path::new(env!("CARGO_BIN_EXE_e2e-operator")),
            &[
                "--namespace",
                &self.ops,
                "--listen",
                &listen,
                "--identity",
                identity,
                "--lease-duration",
                "6s",
                "--renew-every",
                "1s",
            ],
            &all,
            self.work(),
        )?;
        Ok(Operator { proc, listen })
    }

    /// Starts the scraper of `node` (a name from [`Stage::node`]), reporting health every 2 s.
    pub fn scraper(&self, node: &str) -> anyhow::Result<Proc> {
        Proc::start(
            &format!("scraper-{node}"),
            Path::new(env!("CARGO_BIN_EXE_e2e-scraper")),
            &[
                "run",
                "--cluster",
                "--namespace",
                &self.ops,
                "--node",
                node,
                "--listen",
                &free_addr("127.0.0.1")?,
                "--health-interval",
                "2s",
            ],
            &[("KUBECONFIG", &self.kubeconfig()), ("RUST_LOG", LOG_FILTER)],
            self.work(),
        )
    }

    /// Starts a Go pprof service called `name` on a fresh address.
    pub fn demo(&self, name: &str) -> anyhow::Result<Demo> {
        let ip = self.ip();
        let port = free_addr(&ip)?
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("a free port")?;
        self.demo_at(name, &ip, port)
    }

    /// Starts a Go pprof service called `name` on `ip:port` (to start a stopped one again).
    pub fn demo_at(&self, name: &str, ip: &str, port: u16) -> anyhow::Result<Demo> {
        let Some(go_demo) = &self.go_demo else {
            bail!(
                "{}: a Go service, but the test did not say it needs go",
                self.name
            );
        };
        let proc = Proc::start(
            name,
            go_demo,
            &["-listen", &format!("{ip}:{port}")],
            &[],
            self.work(),
        )?;
        Ok(Demo {
            proc,
            ip: ip.to_owned(),
            port,
        })
    }

    /// Every profile the stage's file sink holds.
    pub fn stored_profiles(&self) -> Vec<Stored> {
        fn walk(dir: &Path, out: &mut Vec<Stored>) {
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
                    let profile =
                        PathBuf::from(p.to_string_lossy().replace(".labels.json", ".pb.gz"));
                    out.push((labels, profile));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.profiles_dir(), &mut out);
        out
    }

    /// The first stored profile of `pod` of type `kind` (`__name__`).
    pub fn find_profile(&self, pod: &str, kind: &str) -> Option<Stored> {
        self.stored_profiles()
            .into_iter()
            .find(|(l, _)| is(l, pod, kind))
    }

    /// How many profiles of `pod` of type `kind` (`__name__`) are stored.
    pub fn count(&self, pod: &str, kind: &str) -> usize {
        self.stored_profiles()
            .iter()
            .filter(|(l, _)| is(l, pod, kind))
            .count()
    }

    fn report_failure(&mut self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.work())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for log in logs {
            let tail = tail(&log, 40);
            if !tail.is_empty() {
                say(&format!("--- {} ---\n{tail}", log.display()));
            }
        }
        if let Some(work) = self.work.take() {
            say(&format!(
                "e2e: {} failed; its logs and profiles are kept in {}",
                self.name,
                work.keep().display()
            ));
        }
    }

    /// Deletes what the stage created, by label. Synchronous (kubectl), because it runs in `drop`,
    /// also while a panic unwinds. Namespaces stay Terminating without a controller manager, so
    /// their pods and targets are deleted first: later operators would still see them.
    fn cleanup(&self) {
        if !self.app.is_empty() {
            self.kubectl(&[
                "delete",
                "pods,replicasets.apps,profilingtargets.kubeprof.io",
                "--all",
                "--namespace",
                &self.app,
                "--force",
                "--grace-period=0",
                "--wait=false",
            ]);
        }
        self.kubectl(&[
            "delete",
            "profilingpolicies.kubeprof.io,namespaces",
            "--selector",
            &format!("{STAGE_LABEL}={}", self.id),
            "--wait=false",
        ]);
    }

    fn kubectl(&self, args: &[&str]) {
        match self.env.kubectl(args) {
            Ok((true, _, _)) => {}
            Ok((false, _, stderr)) => say(&format!(
                "e2e: {}: cleanup `kubectl {}` failed: {stderr}",
                self.name,
                args.join(" ")
            )),
            Err(e) => say(&format!("e2e: {}: cleanup: {e:#}", self.name)),
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // The test's processes dropped (and died) before the stage: they were made after it.
        if self.failed || std::thread::panicking() {
            self.report_failure();
        }
        self.cleanup();
        say(&format!(
            "e2e: {} took {:.1} s, {:.1} s of it waiting for other tests",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.waited.as_secs_f64()
        ));
    }
}

fn is(labels: &BTreeMap<String, String>, pod: &str, kind: &str) -> bool {
    labels.get("pod").map(String::as_str) == Some(pod)
        && labels.get("__name__").map(String::as_str) == Some(kind)
}

/// `ip:port` with a port free on `ip` just now.
pub fn free_addr(ip: &str) -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind(format!("{ip}:0"))
        .with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.to_string())
}
