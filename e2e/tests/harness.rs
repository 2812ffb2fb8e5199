//! The harness itself: a server answers, namespaces are per test, objects round-trip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use kubeprof_e2e::{E2E_LABEL, TestEnv, say};

#[tokio::test]
async fn api_server_answers_and_namespaces_are_per_test() -> anyhow::Result<()> {
    let Some(env) = TestEnv::get("harness::api_server_answers_and_namespaces_are_per_test") else {
        return Ok(());
    };
    let (major, minor, git) = env.server_version();
    say(&format!(
        "e2e: API server {git} ({major}.{minor}), CEL: {}",
        env.supports_cel()
    ));
    assert!(major >= 1 && minor >= 20, "{git}");

    let ns = env.namespace("harness").await?;
    let other = env.namespace("harness").await?;
    assert_ne!(ns.name, other.name);

    let client = env.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = namespaces
        .get(&ns.name)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(labels.get(E2E_LABEL).map(String::as_str), Some("true"));

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("round-trip".into()),
            ..Default::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    let back = cms.get("round-trip").await?;
    assert_eq!(
        back.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v")
    );

    let (ok, stdout, stderr) = env.kubectl(&[
        "get",
        "configmap",
        "round-trip",
        "-n",
        &ns.name,
        "-o",
        "name",
    ])?;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "configmap/round-trip");

    let name = ns.name.clone();
    ns.cleanup().await?;
    other.cleanup().await?;
    // Deletion is accepted: the namespace is gone or Terminating (no namespace controller runs
    // beside a bare API server).
    match namespaces.get_opt(&name).await? {
        None => {}
        Some(n) => assert!(
            n.metadata.deletion_timestamp.is_some(),
            "{name} not being deleted"
        ),
    }
    Ok(())
}
