//! The loop against a mock API server: what it writes, and what it does when a write fails.

use std::{sync::Arc, time::Duration};

use http::Method;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kubeprof_crds::{ProfilingPolicy, ProfilingTarget, ProfilingTargetStatus, conditions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Settings, Triggers, control, reconcile::Reconciler, stores::Stores};
use crate::{
    compile::PolicyFacts,
    metrics::{Failure, Metrics, Retried},
    mock::{self, ApiServer},
    owner::Owner,
    status,
};

const SHARD_A: &str = "/api/v1/namespaces/kubeprof/configmaps/kubeprof-jobs.node-a";
const WEB_STATUS: &str = "/apis/kubeprof.io/v1alpha1/namespaces/shop/profilingtargets/web/status";
const SHOP_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn settings() -> Settings {
    Settings {
        namespace: "kubeprof".into(),
        identity: "op-1".into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
        debounce: Duration::from_millis(1),
        // Far away: a retry that waited for the resync would never come within a test.
        resync: Duration::from_secs(3600),
        retry_first: Duration::from_millis(10),
        retry_cap: Duration::from_millis(100),
        scraper_service_account: "kp-scraper".into(),
        ebpf_service_account: None,
        scraper_secrets: true,
        owner_cluster_role: None,
        owner: Owner::none(),
    }
}

const CONFIG_MAPS: &str = "/api/v1/namespaces/kubeprof/configmaps";
const OWN_ROLE: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kubeprof/roles/kp-scraper-named";
const OWN_BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kubeprof/rolebindings/kp-scraper-named";

/// Answers what a pass writes before it publishes, with `reports` health reports to create
/// (the stores of these tests never see them, so every pass writes them again); the Role's
/// rules.
async fn grants(server: &mut ApiServer, reports: usize) -> serde_json::Value {
    for _ in 0..reports {
        server.expect(Method::POST, CONFIG_MAPS).await.echo();
    }
    let role = server.expect(Method::PATCH, OWN_ROLE).await;
    let rules = role.body["rules"].clone();
    role.echo();
    server.expect(Method::PATCH, OWN_BINDING).await.echo();
    rules
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap_or_default()
}

/// A running pod on node-a asking by annotation for CPU profiles from its `pprof` port.
fn annotated_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
            "annotations": {
                "profiles.grafana.com/cpu.scrape": "true",
                "profiles.grafana.com/cpu.port_name": "pprof",
            },
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{ "name": "app", "ports": [{ "name": "pprof", "containerPort": 6060 }] }],
        },
        "status": { "phase": "Running", "podIP": "10.0.0.7" },
    }))
    .unwrap_or_default()
}

/// A ProfilingPolicy governing every namespace, whose status already says what the loop
/// computes for one namespace and one target, `annotated` (or a ProfilingTarget), so that the
/// tests see no write of it.
fn policy(annotated: bool) -> DeserializeGuard<ProfilingPolicy> {
    let mut p: ProfilingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeprof.io/v1alpha1",
        "kind": "ProfilingPolicy",
        "metadata": { "name": "default", "uid": "uid-default", "generation": 1 },
        "spec": { "sinks": [{ "name": "files", "file": { "directory": "/p" } }] },
    }))
    .unwrap_or_else(|e| panic!("a valid policy: {e}"));
    let facts = PolicyFacts {
        matched_namespaces: 1,
        targets: 1,
        annotated_pods: i32::from(annotated),
        sampled_pods: i32::from(annotated),
        ..Default::default()
    };
    p.status = Some(status::policy_status(
        &facts,
        &status::HealthIndex::default(),
        Some(1),
        None,
        Timestamp::UNIX_EPOCH,
    ));
    DeserializeGuard(Ok(p))
}

/// A ProfilingTarget in `shop` selecting `app: web`.
fn target() -> ProfilingTarget {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeprof.io/v1alpha1",
        "kind": "ProfilingTarget",
        "metadata": { "name": "web", "namespace": "shop", "uid": "uid-web", "generation": 1 },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "endpoints": [{ "port": "pprof" }],
        },
    }))
    .unwrap_or_else(|e| panic!("a valid target: {e}"))
}

/// The loop, leading, over `stores`, until stopped.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    _leading: watch::Sender<bool>,
}

impl Running {
    fn start(stores: Stores) -> (Self, ApiServer) {
        let (client, server) = mock::client();
        let metrics = Metrics::unregistered();
        let settings = settings();
        let names = crate::compile::access::AccessNames {
            namespace: settings.namespace.clone(),
            service_account: settings.scraper_service_account.clone(),
            ebpf_service_account: settings.ebpf_service_account.clone(),
            owner: None,
        };
        let grants = crate::grants::Grants::new(client.clone(), names, None, metrics.clone());
        let reconciler = Reconciler::new(
            client,
            &settings.namespace,
            &settings.identity,
            grants,
            settings.scraper_secrets,
            metrics.clone(),
        );
        let (leading_tx, leading) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            async move {
                let triggers = Arc::new(Triggers::default());
                control::run(
                    &stores, leading, &triggers, reconciler, &settings, &metrics, &shutdown,
                )
                .await;
            }
        });
        leading_tx.send_replace(true);
        (
            Self {
                shutdown,
                task,
                metrics,
                _leading: leading_tx,
            },
            server,
        )
    }

    async fn stop(self, server: ApiServer) -> Metrics {
        self.shutdown.cancel();
        drop(server);
        self.task.await.unwrap_or_default();
        self.metrics
    }
}

#[tokio::test]
async fn a_failed_publish_is_retried_with_backoff_not_at_the_next_resync() {
    let stores = Stores::of(
        vec![policy(true)],
        vec![],
        vec![annotated_pod("web-1")],
        vec![namespace("shop")],
    );
    let (running, mut server) = Running::start(stores);
    grants(&mut server, 1).await;
    let first = server.expect(Method::PUT, SHARD_A).await;
    assert!(first.body["data"].is_object(), "the shard's jobs");
    first.fail(503, "ServiceUnavailable");
    grants(&mut server, 1).await;
    server
        .expect(Method::PUT, SHARD_A)
        .await
        .fail(500, "InternalError");
    grants(&mut server, 1).await;
    server.expect(Method::PUT, SHARD_A).await.echo();
    let metrics = running.stop(server).await;
    assert_eq!(metrics.errors_of(Failure::Publish), 2);
    assert_eq!(metrics.retries_of(Retried::Publish), 2);
    assert_eq!(metrics.shard_writes.get(), 1);
}

#[tokio::test]
async fn a_failed_status_write_is_retried_and_the_event_follows_the_write() {
    let stores = Stores::of(
        vec![policy(false)],
        vec![DeserializeGuard(Ok(target()))],
        vec![],
        vec![namespace("shop")],
    );
    let (running, mut server) = Running::start(stores);
    // No pod matches: the target is degraded, nothing is published, and the scraper may
    // write no health report.
    assert_eq!(grants(&mut server, 0).await, serde_json::json!([]));
    let patch = server.expect(Method::PATCH, WEB_STATUS).await;
    let status: ProfilingTargetStatus =
        serde_json::from_value(patch.body["status"].clone()).unwrap_or_default();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::DEGRADED);
    assert_eq!(
        degraded.map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", conditions::REASON_NO_MATCHING_PODS))
    );
    patch.fail(500, "InternalError");
    let patch = server.expect(Method::PATCH, WEB_STATUS).await;
    let mut answer = target();
    answer.status = serde_json::from_value(patch.body["status"].clone()).ok();
    patch.ok(&answer);
    let event = server.expect(Method::POST, SHOP_EVENTS).await;
    assert_eq!(event.body["reason"], conditions::REASON_NO_MATCHING_PODS);
    event.echo();
    let metrics = running.stop(server).await;
    assert_eq!(metrics.errors_of(Failure::TargetStatus), 1);
    assert_eq!(metrics.retries_of(Retried::Status), 1);
    assert_eq!(metrics.retries_of(Retried::Publish), 0);
    assert_eq!(metrics.status_writes.get(), 1);
}

#[tokio::test]
async fn an_unreadable_target_is_marked_invalid_without_stopping_the_others() {
    let unreadable =
        DeserializeGuard::<ProfilingTarget>(Err(kube::core::error_boundary::InvalidObject {
            error: "spec.endpoints: invalid type: string \"x\", expected a sequence".into(),
            metadata: kube::api::ObjectMeta {
                name: Some("broken".into()),
                namespace: Some("shop".into()),
                generation: Some(4),
                ..Default::default()
            },
        }));
    let stores = Stores::of(
        vec![policy(true)],
        vec![unreadable],
        vec![annotated_pod("web-1")],
        vec![namespace("shop")],
    );
    let (running, mut server) = Running::start(stores);
    grants(&mut server, 1).await;
    server.expect(Method::PUT, SHARD_A).await.echo();
    let patch = server
        .expect(
            Method::PATCH,
            "/apis/kubeprof.io/v1alpha1/namespaces/shop/profilingtargets/broken/status",
        )
        .await;
    assert_eq!(patch.body["status"]["observedGeneration"], 4);
    let conditions = patch.body["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conditions
            .iter()
            .all(|c| c["reason"] == conditions::REASON_INVALID_SPEC
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("expected a sequence"))),
        "{conditions:?}"
    );
    patch.ok(&serde_json::json!({ "metadata": { "name": "broken", "namespace": "shop" } }));
    server.expect(Method::POST, SHOP_EVENTS).await.echo();
    running.stop(server).await;
}

#[tokio::test]
async fn a_node_gets_its_health_report_and_the_right_to_patch_it_before_its_jobs() {
    let stores = Stores::of(
        vec![policy(true)],
        vec![],
        vec![annotated_pod("web-1")],
        vec![namespace("shop")],
    );
    let (running, mut server) = Running::start(stores);
    let report = server.expect(Method::POST, CONFIG_MAPS).await;
    assert_eq!(report.body["metadata"]["name"], "kubeprof-health.node-a");
    assert!(report.body["data"].is_null(), "its scraper fills it in");
    report.echo();
    let role = server.expect(Method::PATCH, OWN_ROLE).await;
    assert_eq!(
        role.body["rules"],
        serde_json::json!([{
            "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["kubeprof-health.node-a"], "verbs": ["patch"],
        }])
    );
    role.echo();
    let binding = server.expect(Method::PATCH, OWN_BINDING).await;
    assert_eq!(
        binding.body["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "kp-scraper", "namespace": "kubeprof"}])
    );
    binding.echo();
    // Only then the jobs.
    server.expect(Method::PUT, SHARD_A).await.echo();
    running.stop(server).await;
}

/// A pod on node-b, otherwise as [`annotated_pod`].
fn annotated_pod_on_b(name: &str) -> Pod {
    let mut pod = annotated_pod(name);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some("node-b".into());
    }
    pod
}

#[tokio::test]
async fn a_shard_whose_scraper_has_its_grants_is_written_before_the_grants_of_the_others() {
    // node-a's scraper already has its health report and the right to patch it; node-b's has
    // neither. node-a's shard is written as soon as it is built, without waiting for node-b's
    // grants; node-b's only after them.
    let report_a: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "kubeprof-health.node-a", "namespace": "kubeprof" },
        }))
        .unwrap_or_default();
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "kp-scraper-named", "namespace": "kubeprof" },
        "rules": [{
            "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["kubeprof-health.node-a"], "verbs": ["patch"],
        }],
    }))
    .unwrap_or_else(|e| panic!("a valid Role: {e}"));
    let binding = kube::api::PartialObjectMeta::<k8s_openapi::api::rbac::v1::RoleBinding> {
        metadata: kube::api::ObjectMeta {
            name: Some("kp-scraper-named".into()),
            namespace: Some("kubeprof".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let stores = Stores::of(
        vec![policy(true)],
        vec![],
        vec![annotated_pod("web-1"), annotated_pod_on_b("web-2")],
        vec![namespace("shop")],
    )
    .with_access(vec![report_a], vec![role], vec![binding]);
    let (running, mut server) = Running::start(stores);
    let first = server.next().await;
    assert_eq!(
        (first.method.clone(), first.path()),
        (Method::PUT, SHARD_A),
        "node-a's shard first"
    );
    first.echo();
    let report = server.expect(Method::POST, CONFIG_MAPS).await;
    assert_eq!(report.body["metadata"]["name"], "kubeprof-health.node-b");
    report.echo();
    let role = server.expect(Method::PATCH, OWN_ROLE).await;
    assert_eq!(
        role.body["rules"][0]["resourceNames"],
        serde_json::json!(["kubeprof-health.node-a", "kubeprof-health.node-b"])
    );
    role.echo();
    server
        .expect(
            Method::PUT,
            "/api/v1/namespaces/kubeprof/configmaps/kubeprof-jobs.node-b",
        )
        .await
        .echo();
    let metrics = running.stop(server).await;
    assert_eq!(metrics.shard_writes.get(), 2);
}
