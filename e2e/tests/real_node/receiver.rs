//! A Pyroscope-protocol receiver running as a pod on the node (`e2e/go/pushreceiver.go`, image
//! `scripts/build-image.sh pushreceiver`), behind a Service that a policy's Pyroscope sink
//! points at. It decodes every pushed profile as pprof on its own (Go, no kubeprof code) and
//! serves what arrived at `GET /received`, which the test reads from the node through the
//! Service's ClusterIP (kube-proxy routes it; the node has no cluster DNS).

use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use kubeprof_e2e::procs::eventually;
use serde::Deserialize;
use serde_json::json;

use crate::stage::Stage;

/// The receiver's image (scripts/build-image.sh pushreceiver).
pub const RECEIVER_IMAGE: &str = "docker.io/kubeprof-e2e/pushreceiver:latest";

const NAME: &str = "pyroscope";
const PORT: u16 = 4040;

/// The tenant the sink sends (`X-Scope-OrgID`).
pub const TENANT: &str = "e2e";

/// The Secret holding the sink's bearer token, in the receiver's namespace: the scraper reads
/// it because the policy references it.
pub const TOKEN_SECRET: &str = "pyroscope-token";

/// One profile as the receiver decoded it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    pub labels: std::collections::BTreeMap<String, String>,
    pub tenant: String,
    pub authorization: String,
    /// kubeprof's `<job id>-<scrape start, ns since the epoch>`.
    pub id: String,
    pub sample_types: Vec<String>,
    pub samples: usize,
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    pub at_unix_ms: u64,
}

impl Pushed {
    /// A label's value, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn has_function(&self, name: &str) -> bool {
        self.functions.iter().flatten().any(|f| f == name)
    }

    /// When its scrape started (from the sample's ID).
    pub fn started(&self) -> Option<SystemTime> {
        let nanos: u64 = self.id.rsplit_once('-')?.1.parse().ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    /// When it arrived (the pod shares the node's clock).
    fn arrived(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.at_unix_ms)
    }
}

/// What `GET /received` answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    pub accepted: Option<Vec<Pushed>>,
    pub rejected: u64,
    pub last_error: String,
}

/// The receiver deployed in its namespace.
pub struct Receiver {
    /// `http://<ClusterIP>:4040`, for the sink and for the test.
    pub url: String,
    /// Its namespace.
    pub ns: String,
    /// The bearer token the sink sends.
    pub token: String,
    http: reqwest::Client,
}

impl Receiver {
    /// Deploys the receiver and its Service in `ns` (which it creates) and waits until it runs.
    pub fn deploy(s: &Stage<'_>, ns: &str) -> anyhow::Result<Self> {
        s.node.kubectl(&["create", "namespace", ns])?;
        let token = format!("e2e-token-{ns}");
        s.node.kubectl(&[
            "create",
            "secret",
            "generic",
            TOKEN_SECRET,
            "-n",
            ns,
            &format!("--from-literal=token={token}"),
        ])?;
        let labels = json!({"app.kubernetes.io/name": NAME});
        s.apply(
            ns,
            &json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": NAME},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [{
                                "name": NAME,
                                "image": RECEIVER_IMAGE,
                                "imagePullPolicy": "Never",
                                "ports": [{"name": "push", "containerPort": PORT}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "push"}, "periodSeconds": 1},
                                "resources": {
                                    "requests": {"cpu": "10m", "memory": "32Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                            }],
                        },
                    },
                },
            }),
        )?;
        s.apply(
            ns,
            &json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME},
                "spec": {"selector": labels, "ports": [{"name": "push", "port": PORT, "targetPort": "push"}]},
            }),
        )?;
        s.rollout(ns, &format!("deployment/{NAME}"))?;
        let ip = s.node.kubectl(&[
            "get",
            "service",
            "-n",
            ns,
            NAME,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        ensure!(!ip.trim().is_empty(), "service {NAME} has no ClusterIP");
        Ok(Self {
            url: format!("http://{}:{PORT}", ip.trim()),
            ns: ns.to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// The policy sink that sends to it.
    pub fn sink(&self) -> serde_json::Value {
        json!({"name": "receiver", "pyroscope": {
            "url": self.url,
            "tenantID": TENANT,
            "bearerTokenSecret": {"namespace": self.ns, "name": TOKEN_SECRET, "key": "token"},
        }})
    }

    /// What arrived so far.
    pub async fn received(&self) -> anyhow::Result<Received> {
        let response = self
            .http
            .get(format!("{}/received", self.url))
            .send()
            .await
            .context("GET /received of the push receiver")?
            .error_for_status()?;
        let body = response.bytes().await?;
        serde_json::from_slice(&body).context("GET /received: not the receiver's JSON")
    }

    /// Waits for a pushed profile of type `name` with `labels`, arrived after `after`, that
    /// decoded with samples and, when given, holds the function `frame`. Fails at once when
    /// the receiver refused a push (a wire-format error).
    pub async fn profile(
        &self,
        labels: &[(&str, &str)],
        name: &str,
        after: SystemTime,
        frame: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Pushed> {
        eventually(
            &format!("a pushed {name} profile of {labels:?} with {frame:?}"),
            timeout,
            || async {
                let got = self.received().await?;
                if got.rejected > 0 {
                    // Not retried: `eventually` would wait; report it as the answer instead.
                    return Ok(Err(anyhow::anyhow!(
                        "the receiver refused {} pushes, the last: {}",
                        got.rejected,
                        got.last_error
                    )));
                }
                got.accepted
                    .into_iter()
                    .flatten()
                    .rev()
                    .find(|p| {
                        labels.iter().all(|(k, v)| p.label(k) == *v)
                            && p.label("__name__") == name
                            && p.samples > 0
                            && p.arrived() > after
                            && frame.is_none_or(|f| p.has_function(f))
                    })
                    .map(Ok)
                    .context("none yet")
            },
        )
        .await?
    }

    /// Every profile whose scrape started after `after`.
    pub async fn started_after(&self, after: SystemTime) -> anyhow::Result<Vec<Pushed>> {
        Ok(self
            .received()
            .await?
            .accepted
            .into_iter()
            .flatten()
            .filter(|p| p.started().is_some_and(|t| t > after))
            .collect())
    }
}
