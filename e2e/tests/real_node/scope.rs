//! What a policy governs, seen in the sinks: two containers that name a port alike are two
//! targets, and a namespace that leaves its policy sends nothing anywhere (issue 16).

use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use kubeprof_crds::{constants, job::JobShard};
use kubeprof_e2e::{
    procs::eventually,
    real_node::{NODE_NAME, stored_profiles},
};
use serde_json::json;

use crate::{receiver::Receiver, stage::Stage};

/// The namespace label the e2e policy selects (`namespaceSelector`).
pub const PROFILED_LABEL: &str = "e2e.kubeprof.io/profiled";

/// A pod of two pprofdemo containers, `twin-a` on 6060 and `twin-b` on 6061, whose ports are
/// both named `pprof`, and a ProfilingTarget of that port (memory only).
pub fn apply_twins(s: &Stage<'_>) -> anyhow::Result<()> {
    let container = |name: &str, port: u16| {
        json!({
            "name": name,
            "image": crate::stage::DEMO_IMAGE,
            "imagePullPolicy": "Never",
            "args": [format!("-listen=:{port}")],
            "ports": [{"name": "pprof", "containerPort": port}],
            "resources": {
                "requests": {"cpu": "10m", "memory": "32Mi"},
                "limits": {"cpu": "100m", "memory": "128Mi"},
            },
        })
    };
    let labels = json!({"app.kubernetes.io/name": "twins"});
    s.apply(
        &s.app_ns,
        &json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "twins"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container("twin-a", 6060), container("twin-b", 6061)]},
                },
            },
        }),
    )?;
    s.rollout(&s.app_ns, "deployment/twins")?;
    s.apply(
        &s.app_ns,
        &json!({
            "apiVersion": "kubeprof.io/v1alpha1",
            "kind": "ProfilingTarget",
            "metadata": {"name": "twins"},
            "spec": {
                "selector": {"matchLabels": labels},
                "endpoints": [{
                    "port": "pprof",
                    "interval": "10s",
                    "scrapeTimeout": "5s",
                    "profiles": {
                        "cpu": {"enabled": false},
                        "memory": {"enabled": true},
                        "goroutine": {"enabled": false},
                        "mutex": {"enabled": false},
                        "block": {"enabled": false},
                    },
                }],
            },
        }),
    )
}

/// The scraper's `kubeprof_scrape_jobs` (the jobs it schedules), from its pod's `/metrics`.
async fn scraper_jobs(s: &Stage<'_>, http: &reqwest::Client) -> anyhow::Result<usize> {
    let ip = s.node.kubectl(&[
        "get",
        "pods",
        "-n",
        s.ns(),
        "-l",
        "app.kubernetes.io/component=scraper",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])?;
    let port = s.node.kubectl(&[
        "get",
        "pods",
        "-n",
        s.ns(),
        "-l",
        "app.kubernetes.io/component=scraper",
        "-o",
        "jsonpath={.items[0].spec.containers[0].ports[?(@.name==\"metrics\")].containerPort}",
    ])?;
    let text = http
        .get(format!("http://{}:{}/metrics", ip.trim(), port.trim()))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("kubeprof_scrape_jobs "))
        .context("no kubeprof_scrape_jobs in the scraper's /metrics")?;
    Ok(value.trim().parse::<f64>()? as usize)
}

/// The node's job shard as the operator published it.
fn shard(s: &Stage<'_>) -> anyhow::Result<(String, JobShard)> {
    let json = s.node.kubectl(&[
        "get",
        "configmap",
        "-n",
        s.ns(),
        &format!("{}.{NODE_NAME}", constants::JOBS_OBJECT_PREFIX),
        "-o",
        "jsonpath={.data.jobs\\.json}",
    ])?;
    let shard = JobShard::from_json(&json).context("the node's job shard")?;
    Ok((json, shard))
}

/// The application namespace leaves the policy (its label removed): its ProfilingTargets turn
/// Degraded, its jobs leave the node's shard and the scraper, and while profiles of the
/// operator (still governed) keep arriving in both sinks, no scrape of the namespace that
/// started after the scraper dropped its jobs reaches either sink. Returns a summary.
pub async fn namespace_leaves(s: &Stage<'_>, receiver: &Receiver) -> anyhow::Result<String> {
    let app = s.app_ns.as_str();
    s.node
        .kubectl(&["label", "namespace", app, &format!("{PROFILED_LABEL}-")])?;
    let degraded = eventually(
        "ProfilingTarget checkout Degraded once its namespace has no policy",
        Duration::from_secs(60),
        || async {
            let conditions = s.node.kubectl(&[
                "get",
                "pt",
                "-n",
                app,
                "checkout",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}",
            ])?;
            ensure!(
                conditions
                    .lines()
                    .any(|l| l.starts_with("Degraded=True") || l.starts_with("Ready=False")),
                "{conditions}"
            );
            Ok(conditions)
        },
    )
    .await?;
    let jobs = eventually(
        "the node's shard without the namespace's jobs",
        Duration::from_secs(60),
        || async {
            let (json, shard) = shard(s)?;
            ensure!(!json.contains(app), "{app} still in the shard");
            Ok(shard.jobs.len())
        },
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    eventually(
        "the scraper schedules the shard's jobs only",
        Duration::from_secs(60),
        || async {
            let scheduled = scraper_jobs(s, &http).await?;
            ensure!(
                scheduled == jobs,
                "{scheduled} jobs scheduled, {jobs} published"
            );
            Ok(())
        },
    )
    .await?;
    let dropped = SystemTime::now();
    // Profiles keep flowing for what is still governed: a scrape of the operator that started
    // after the jobs were dropped reaches both sinks.
    let operator = |ns: &str, container: &str| ns == s.ns() && container == "operator";
    eventually(
        "a profile of the operator, scraped after the namespace left, in both sinks",
        Duration::from_secs(90),
        || async {
            ensure!(
                stored_profiles(&s.profiles()).iter().any(|p| {
                    operator(p.label("namespace"), p.label("container"))
                        && p.started().is_some_and(|t| t > dropped)
                }),
                "none in the file sink yet"
            );
            ensure!(
                receiver
                    .started_after(dropped)
                    .await?
                    .iter()
                    .any(|p| operator(p.label("namespace"), p.label("container"))),
                "none at the receiver yet"
            );
            Ok(())
        },
    )
    .await?;
    let stored: Vec<_> = stored_profiles(&s.profiles())
        .into_iter()
        .filter(|p| p.label("namespace") == app && p.started().is_none_or(|t| t > dropped))
        .map(|p| p.path.display().to_string())
        .collect();
    ensure!(
        stored.is_empty(),
        "the file sink got profiles of {app} after it left its policy: {stored:?}"
    );
    let pushed: Vec<_> = receiver
        .started_after(dropped)
        .await?
        .into_iter()
        .filter(|p| p.label("namespace") == app)
        .map(|p| p.id)
        .collect();
    ensure!(
        pushed.is_empty(),
        "the receiver got profiles of {app} after it left its policy: {pushed:?}"
    );
    Ok(format!(
        "{} jobs left on the node; checkout: {}",
        jobs,
        degraded.trim().replace('\n', "; ")
    ))
}
