//! What the scraper's ServiceAccount may do, as the API server decides it (RBAC): read exactly
//! the Secrets that jobs refer to, patch its node's health report, and never write a shard.

use std::time::Duration;

use anyhow::{bail, ensure};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret},
    rbac::v1::Role,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    ProfilingTarget,
    health::{health_object_name, jobs_object_name},
};
use kubeprof_e2e::{procs::eventually, say};
use serde_json::json;

use crate::stage::{Needs, Stage};

/// The operator's default `--scraper-service-account`.
const SCRAPER_SA: &str = "kubeprof-scraper";
/// The Roles it keeps for that ServiceAccount.
const ROLE: &str = "kubeprof-scraper-named";

/// The HTTP status of a refused request, or 200.
fn status<T>(r: &kube::Result<T>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scraper_may_read_only_referenced_secrets_and_write_only_health_reports()
-> anyhow::Result<()> {
    let name =
        "operator::the_scraper_may_read_only_referenced_secrets_and_write_only_health_reports";
    // Exclusive: every running operator compiles every target, and would keep a Role for its own
    // scrapers in this test's namespace too.
    let needs = Needs {
        go: false,
        exclusive: true,
    };
    Stage::run(name, needs, async |s| {
        let secrets: Api<Secret> = Api::namespaced(s.client().clone(), s.app());
        for secret in ["token", "unreferenced"] {
            let object: Secret = serde_json::from_value(json!({
                "metadata": {"name": secret}, "stringData": {"token": "s3cret"},
            }))?;
            secrets.create(&PostParams::default(), &object).await?;
        }
        let _op = s.operator("op-1")?;
        let node = s.node("node-a");
        s.create_running_pod(
            "web-1",
            &node,
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        let target = |auth: serde_json::Value| -> anyhow::Result<ProfilingTarget> {
            let mut endpoint = json!({"port": "pprof"});
            if !auth.is_null() {
                endpoint["bearerTokenSecret"] = auth;
            }
            Ok(serde_json::from_value(json!({
                "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "endpoints": [endpoint]},
            }))?)
        };
        s.targets()
            .create(
                &PostParams::default(),
                &target(json!({"name": "token", "key": "token"}))?,
            )
            .await?;

        let scraper = s
            .client_as(&format!("system:serviceaccount:{}:{SCRAPER_SA}", s.ops()))
            .await?;
        let scraper_secrets: Api<Secret> = Api::namespaced(scraper.clone(), s.app());
        eventually(
            "the scraper may read the referenced Secret",
            Duration::from_secs(30),
            || async {
                let r = scraper_secrets.get("token").await;
                ensure!(status(&r) == 200, "get secret token: {}", status(&r));
                Ok(())
            },
        )
        .await?;
        let r = scraper_secrets.get("unreferenced").await;
        ensure!(
            status(&r) == 403,
            "an unreferenced Secret must be refused, got {}",
            status(&r)
        );
        let other_namespace: Api<Secret> = Api::namespaced(scraper.clone(), "kube-system");
        let r = other_namespace.get("token").await;
        ensure!(status(&r) == 403, "kube-system: {}", status(&r));

        // Its node's health report: created by the operator, patched by the scraper.
        let scraper_cms: Api<ConfigMap> = Api::namespaced(scraper.clone(), s.ops());
        let report = health_object_name(Some(&node));
        let apply = PatchParams::apply("kubeprof.io/scraper").force();
        eventually(
            "the scraper may patch its health report",
            Duration::from_secs(30),
            || async {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": report}, "data": {"health.json": "{}"}});
                let r = scraper_cms.patch(&report, &apply, &Patch::Apply(&cm)).await;
                ensure!(status(&r) == 200, "patch {report}: {}", status(&r));
                Ok(())
            },
        )
        .await?;
        // Never a shard, nor any other ConfigMap, nor a new one.
        let shard = jobs_object_name(Some(&node));
        ensure!(
            s.config_maps().get_opt(&shard).await?.is_some(),
            "{shard} published"
        );
        let rewrite = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": shard}, "data": {"jobs.json": "{}"}});
        let r = scraper_cms
            .patch(&shard, &apply, &Patch::Apply(&rewrite))
            .await;
        ensure!(status(&r) == 403, "patching {shard}: {}", status(&r));
        let other_report = health_object_name(Some(&s.node("node-z")));
        let r = scraper_cms
            .patch(
                &other_report,
                &apply,
                &Patch::Apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": other_report}})),
            )
            .await;
        ensure!(
            status(&r) == 403,
            "creating a report of a node without jobs: {}",
            status(&r)
        );
        let r = scraper_cms.get(&shard).await;
        ensure!(
            status(&r) == 403,
            "get is not needed (it watches): {}",
            status(&r)
        );

        // The reference goes: so does the grant, and the namespace's Role.
        s.targets()
            .replace("web", &PostParams::default(), &{
                let mut t = target(serde_json::Value::Null)?;
                t.metadata.resource_version =
                    s.targets().get("web").await?.metadata.resource_version;
                t
            })
            .await?;
        eventually(
            "the Secret is no longer readable",
            Duration::from_secs(30),
            || async {
                let r = scraper_secrets.get("token").await;
                ensure!(status(&r) == 403, "get secret token: {}", status(&r));
                Ok(())
            },
        )
        .await?;
        let roles: Api<Role> = Api::namespaced(s.client().clone(), s.app());
        if roles.get_opt(ROLE).await?.is_some() {
            bail!("{ROLE} left in {} without a reference", s.app());
        }
        say("e2e: 9. the scraper reads only referenced Secrets and writes only health reports");
        Ok(())
    })
    .await
}
