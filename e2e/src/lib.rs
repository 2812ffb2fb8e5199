//! The end-to-end harness: a real API server for tests.
//!
//! [`TestEnv::get`] finds one, in this order:
//! 1. `$KUBECONFIG`: an existing cluster (nothing is started or stopped);
//! 2. `$KUBEBUILDER_ASSETS`: a folder with `etcd` and `kube-apiserver` (the envtest convention),
//!    started on free loopback ports with generated certificates and an admin kubeconfig;
//! 3. the cache `scripts/build-kube-apiserver.sh` fills (`~/.cache/kubeprof/k8s-1.20.2/bin`).
//!
//! With none of them, it prints one `SKIPPED` line and returns `None`: the test returns early and
//! says so, it never passes silently. A `KUBEBUILDER_ASSETS` that is set but unusable is an error.
//!
//! One server serves every test of a test binary (start-up costs seconds). Each test makes its
//! own [`kube::Client`] (a client belongs to the tokio runtime of its test) and its own namespace.
//! The processes die with the test binary: a watchdog shell kills them once the test process is
//! gone, because Rust never runs destructors of statics.
#![forbid(unsafe_code)]

pub mod procs;
pub mod real_node;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Label on every namespace the harness creates.
pub const E2E_LABEL: &str = "kubeprof.io/e2e";

/// Where the API server came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `$KUBECONFIG`.
    Kubeconfig,
    /// etcd and kube-apiserver started from this folder.
    Assets(PathBuf),
}

/// A started (or borrowed) API server, shared by the tests of one test binary.
#[derive(Debug)]
pub struct TestEnv {
    kubeconfig: PathBuf,
    source: Source,
    version: (u32, u32, String),
    // Kept for the lifetime of the process: the certificates, kubeconfig and etcd data.
    _dir: Option<tempfile::TempDir>,
    processes: Mutex<Vec<Child>>,
}

/// Prints a line that cargo's test harness does not capture (it captures only the print
/// macros), so skips and the server version always reach the log.
pub fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

static ENV: OnceLock<Option<Arc<TestEnv>>> = OnceLock::new();

fn default_assets() -> Option<PathBuf> {
    let cache = std::env::var_os("KUBEPROF_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kubeprof")))?;
    let dir = cache.join("k8s-1.20.2/bin");
    (dir.join("kube-apiserver").is_file() && dir.join("etcd").exists()).then_some(dir)
}

impl TestEnv {
    /// The shared API server, started on first use; `None` (after printing why) when there is
    /// none to be had. Panics when one was asked for but cannot start: that is a broken set-up,
    /// not a reason to skip.
    pub fn get(test: &str) -> Option<Arc<TestEnv>> {
        let env = ENV.get_or_init(|| match Self::discover() {
            Ok(env) => env.map(Arc::new),
            Err(e) => panic!("e2e: cannot start the API server: {e:#}"),
        });
        if env.is_none() {
            say(&format!(
                "SKIPPED e2e test {test}: no API server: set KUBECONFIG, or KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver (scripts/build-kube-apiserver.sh builds one)"
            ));
        }
        env.clone()
    }

    fn discover() -> anyhow::Result<Option<TestEnv>> {
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            let version = server_version(&path)?;
            return Ok(Some(TestEnv {
                kubeconfig: path,
                source: Source::Kubeconfig,
                version,
                _dir: None,
                processes: Mutex::new(Vec::new()),
            }));
        }
        let assets = match std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                for bin in ["etcd", "kube-apiserver"] {
                    if !dir.join(bin).exists() {
                        bail!("KUBEBUILDER_ASSETS={} has no {bin}", dir.display());
                    }
                }
                dir
            }
            None => match default_assets() {
                Some(dir) => dir,
                None => return Ok(None),
            },
        };
        Self::start_local(&assets).map(Some)
    }

    fn start_local(assets: &Path) -> anyhow::Result<TestEnv> {
        let dir = tempfile::Builder::new().prefix("kubeprof-e2e-").tempdir()?;
        let d = dir.path();
        make_certs(d)?;
        let mut processes = Vec::new();

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd = Command::new(assets.join("etcd"))
            .args([
                "--data-dir",
                &d.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log"))?)
            .spawn()
            .context("starting etcd")?;
        processes.push(etcd);

        let port = free_port()?;
        let p = |name: &str| d.join(name).to_string_lossy().into_owned();
        let apiserver = Command::new(assets.join("kube-apiserver"))
            .args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", p("server.crt")),
                format!("--tls-private-key-file={}", p("server.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                // No controller manager mints service-account tokens here.
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--cert-dir={}", p("certs")),
                "--allow-privileged=true".into(),
            ])
            .args(insecure_port_flag(assets))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("kube-apiserver.log"))?)
            .spawn()
            .context("starting kube-apiserver")?;
        processes.push(apiserver);
        watchdog(&processes)?;

        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\ncurrent-context: e2e\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n",
                ca = p("ca.crt"),
                crt = p("admin.crt"),
                key = p("admin.key"),
            ),
        )?;

        let deadline = Instant::now() + Duration::from_secs(60);
        let version = loop {
            for child in processes.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a control-plane process exited ({status}) during start-up\netcd.log:\n{}\nkube-apiserver.log:\n{}",
                        tail(&d.join("etcd.log"), 30),
                        tail(&d.join("kube-apiserver.log"), 30)
                    );
                }
            }
            if let Ok(version) = ready_version(&kubeconfig) {
                break version;
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after 60 s\nkube-apiserver.log:\n{}",
                    tail(&d.join("kube-apiserver.log"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        say(&format!(
            "e2e: API server {} from {} on 127.0.0.1:{port}",
            version.2,
            assets.display()
        ));
        Ok(TestEnv {
            kubeconfig,
            source: Source::Assets(assets.to_owned()),
            version,
            _dir: Some(dir),
            processes: Mutex::new(processes),
        })
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the server came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// `(major, minor, gitVersion)` of the server.
    pub fn server_version(&self) -> (u32, u32, &str) {
        (self.version.0, self.version.1, &self.version.2)
    }

    /// The process ids of the etcd and kube-apiserver this harness started (none when it
    /// borrowed a cluster from `$KUBECONFIG`), by name: for benchmarks that account CPU time.
    pub fn control_plane_pids(&self) -> Vec<(&'static str, u32)> {
        let processes = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ["etcd", "kube-apiserver"]
            .into_iter()
            .zip(processes.iter().map(Child::id))
            .collect()
    }

    /// CRD validation rules (CEL) are enforced from 1.25 on.
    pub fn supports_cel(&self) -> bool {
        (self.version.0, self.version.1) >= (1, 25)
    }

    /// A client for the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A fresh namespace, labelled [`E2E_LABEL`]. Delete it with [`TestNamespace::cleanup`].
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        self.namespace_labelled(prefix, &[]).await
    }

    /// A fresh namespace, labelled [`E2E_LABEL`] and `labels`.
    pub async fn namespace_labelled(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<TestNamespace> {
        let client = self.client().await?;
        let api: Api<Namespace> = Api::all(client.clone());
        let labels = std::iter::once((E2E_LABEL, "true"))
            .chain(labels.iter().copied())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api.create(&PostParams::default(), &ns).await?;
        let name = created
            .metadata
            .name
            .context("the server named no namespace")?;
        Ok(TestNamespace { name, client })
    }

    /// Creates (or replaces) every CRD in the YAML files of `dir` and waits until each is
    /// Established.
    pub async fn install_crds(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut names = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("{} is not a CRD", file.display()))?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            // Create or replace rather than server-side apply: servers before 1.25 refuse to
            // apply fields they do not know (x-kubernetes-validations), while create and
            // replace drop them, so the CRDs install everywhere, with CEL where it exists.
            let result = match api.get_opt(&name).await? {
                Some(existing) => {
                    let mut crd = crd;
                    crd.metadata.resource_version = existing.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &crd).await
                }
                None => api.create(&PostParams::default(), &crd).await,
            };
            result.with_context(|| format!("installing {}", file.display()))?;
            names.push(name);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in &names {
            loop {
                let crd = api.get(name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("CRD {name} not Established after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(names)
    }

    /// Runs `kubectl` against this server; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl (is it on PATH?)")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// A namespace owned by one test.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Deletes the namespace. Without a controller manager (the local server) the namespace
    /// then stays `Terminating` with its objects; it is gone with the server's etcd.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client);
        api.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// 1.20 still opens an unauthenticated port on 8080 unless told not to; newer servers removed the
/// flag and refuse it.
fn insecure_port_flag(assets: &Path) -> Vec<String> {
    let help = Command::new(assets.join("kube-apiserver"))
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--insecure-port") {
        vec!["--insecure-port=0".into()]
    } else {
        Vec::new()
    }
}

/// Kills the children once this process is gone (statics are never dropped).
fn watchdog(children: &[Child]) -> anyhow::Result<()> {
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {pids} 2>/dev/null; sleep 5; kill -9 {pids} 2>/dev/null",
        me = std::process::id(),
        pids = pids.join(" ")
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the watchdog")?;
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA, the server's certificate (127.0.0.1, localhost), an admin client certificate in
/// `system:masters`, and the service-account key pair.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let days = "2";
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            days,
            "-subj",
            "/CN=kubeprof-e2e-ca",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, subj, ext) in [
        ("server", "/CN=kube-apiserver", "server.ext"),
        (
            "admin",
            "/O=system:masters/CN=kubeprof-e2e-admin",
            "client.ext",
        ),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subj,
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                days,
                "-extfile",
                ext,
            ],
        )?;
    }
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// The last `lines` lines of the file at `path` (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `/readyz` answered ok and `/version` parsed, through kubectl (no async runtime needed here).
fn ready_version(kubeconfig: &Path) -> anyhow::Result<(u32, u32, String)> {
    let ready = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .output()?;
    if !ready.status.success() {
        bail!("not ready");
    }
    server_version(kubeconfig)
}

fn server_version(kubeconfig: &Path) -> anyhow::Result<(u32, u32, String)> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version"])
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!("GET /version: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let num = |k: &str| -> u32 {
        v[k].as_str()
            .unwrap_or_default()
            .trim_end_matches('+')
            .parse()
            .unwrap_or(0)
    };
    Ok((
        num("major"),
        num("minor"),
        v["gitVersion"].as_str().unwrap_or("unknown").to_owned(),
    ))
}
