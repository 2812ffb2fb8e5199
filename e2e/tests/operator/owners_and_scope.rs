//! What the operator owns, and what it scrapes:
//! 10. `what_the_operator_and_scrapers_create_is_owned_by_the_operator_deployment`: job shards,
//!    health reports and the Lease carry an owner reference to the operator's Deployment (this
//!    tier has no garbage collector: the real-node test checks that `helm uninstall` leaves
//!    only the CRDs);
//! 11. `a_port_name_two_containers_declare_is_scraped_in_both`: one target per container, each
//!    with its own `container` label;
//! 12. `a_namespace_leaving_its_policy_gets_no_jobs_and_recovers`: the target turns Degraded
//!    with reason NoPolicy and its node's shard goes; the label back, both come back.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget, conditions,
    constants::LEADER_LEASE,
    health::{health_object_name, jobs_object_name, shard_from_config_map},
};
use kubeprof_e2e::{procs::eventually, say};
use serde_json::json;

use crate::{
    GO, NO_GO,
    probes::{condition, config_map_deleted},
    stage::{Stage, free_addr},
    web_target,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_operator_and_scrapers_create_is_owned_by_the_operator_deployment()
-> anyhow::Result<()> {
    let name = "operator::owners_and_scope::what_the_operator_and_scrapers_create_is_owned_by_the_operator_deployment";
    Stage::run(name, NO_GO, async |s| {
        // The Deployment the chart would have made (nothing runs it here).
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "kubeprof-operator"},
            "spec": {
                "selector": {"matchLabels": {"app": "op"}},
                "template": {
                    "metadata": {"labels": {"app": "op"}},
                    "spec": {"containers": [{"name": "op", "image": "example.invalid/op:1"}]},
                },
            },
        }))?;
        let uid = Api::<Deployment>::namespaced(s.client().clone(), s.ops())
            .create(&PostParams::default(), &deployment)
            .await?
            .metadata
            .uid
            .context("the server gave the Deployment no UID")?;
        let node = s.node("node-a");
        // Nothing listens: the scraper reports the failing job, which makes its health report.
        s.create_running_pod(
            "anno-1",
            &node,
            (&s.ip(), 6060),
            json!({}),
            json!({"profiles.grafana.com/cpu.scrape": "true",
                   "profiles.grafana.com/cpu.port_name": "pprof"}),
        )
        .await?;
        let _operator = s.operator_with_env(
            "op-1",
            &[
                ("DEPLOYMENT_NAME", "kubeprof-operator"),
                ("POD_NAMESPACE", s.ops()),
            ],
        )?;
        let _scraper = s.scraper(&node)?;
        let owned = |refs: &Option<Vec<OwnerReference>>| {
            refs.iter().flatten().any(|r| {
                r.uid == uid
                    && r.kind == "Deployment"
                    && r.api_version == "apps/v1"
                    && r.name == "kubeprof-operator"
            })
        };
        let (config_maps, leases) = (s.config_maps(), s.leases());
        eventually(
            "the shard, the health report and the Lease owned by the Deployment",
            Duration::from_secs(30),
            || async {
                for name in [
                    jobs_object_name(Some(&node)),
                    health_object_name(Some(&node)),
                ] {
                    let cm = config_maps
                        .get_opt(&name)
                        .await?
                        .with_context(|| format!("no {name} yet"))?;
                    ensure!(
                        owned(&cm.metadata.owner_references),
                        "{name} is owned by {:?}",
                        cm.metadata.owner_references
                    );
                }
                let lease = leases.get(LEADER_LEASE).await?;
                ensure!(
                    owned(&lease.metadata.owner_references),
                    "the Lease is owned by {:?}",
                    lease.metadata.owner_references
                );
                Ok(())
            },
        )
        .await?;
        say(
            "e2e: 10. job shard, health report and Lease are owned by the operator's Deployment \
             (no garbage collector in this tier: the real-node test checks helm uninstall)",
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_name_two_containers_declare_is_scraped_in_both() -> anyhow::Result<()> {
    let name = "operator::owners_and_scope::a_port_name_two_containers_declare_is_scraped_in_both";
    Stage::run(name, GO, async |s| {
        // Two Go services on the pod's one IP, one per container, both ports named "pprof".
        let app = s.demo("two-app")?;
        let sidecar_port = free_addr(&app.ip)?
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("a free port")?;
        let sidecar = s.demo_at("two-sidecar", &app.ip, sidecar_port)?;
        let node = s.node("node-a");
        s.create_running_pod_of(
            "two-1",
            &node,
            &app.ip,
            json!({"app": "web"}),
            json!({}),
            &[("app", app.port), ("sidecar", sidecar.port)],
        )
        .await?;
        let _operator = s.operator("op-1")?;
        let _scraper = s.scraper(&node)?;
        s.targets()
            .create(&PostParams::default(), &web_target()?)
            .await?;
        eventually(
            "CPU profiles of both containers of two-1",
            Duration::from_secs(60),
            || async {
                let mut containers: Vec<String> = s
                    .stored_profiles()
                    .into_iter()
                    .filter(|(l, _)| {
                        l.get("pod").map(String::as_str) == Some("two-1")
                            && l.get("__name__").map(String::as_str) == Some("process_cpu")
                    })
                    .filter_map(|(l, _)| l.get("container").cloned())
                    .collect();
                containers.sort();
                containers.dedup();
                ensure!(containers == ["app", "sidecar"], "from {containers:?}");
                Ok(())
            },
        )
        .await?;
        let targets = s.targets();
        eventually(
            "status MATCHED 1, ACTIVE 4",
            Duration::from_secs(30),
            || async {
                let st = targets.get("web").await?.status.unwrap_or_default();
                ensure!(st.matched_pods == 1 && st.active_jobs == 4, "status {st:?}");
                Ok(())
            },
        )
        .await?;
        say("e2e: 11. a port name two containers declare: both scraped, each with its container label");
        Ok(())
    })
    .await
}

/// A label of the application namespace that its policy requires (see scenario 12).
const GOVERNED: &str = "kubeprof.io/e2e-governed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_leaving_its_policy_gets_no_jobs_and_recovers() -> anyhow::Result<()> {
    let name =
        "operator::owners_and_scope::a_namespace_leaving_its_policy_gets_no_jobs_and_recovers";
    Stage::run(name, NO_GO, async |s| {
        let namespaces: Api<Namespace> = Api::all(s.client().clone());
        let label = |value: serde_json::Value| {
            let namespaces = namespaces.clone();
            async move {
                namespaces
                    .patch(
                        s.app(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {GOVERNED: value}}})),
                    )
                    .await
            }
        };
        label(json!("yes")).await?;
        // The stage's policy governs its namespace only while it carries the label.
        Api::<ProfilingPolicy>::all(s.client().clone())
            .patch(
                &s.policy_name(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"namespaceSelector": {"matchLabels": {GOVERNED: "yes"}}}}),
                ),
            )
            .await?;
        let node = s.node("node-a");
        s.create_running_pod(
            "web-1",
            &node,
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        s.targets()
            .create(&PostParams::default(), &web_target()?)
            .await?;
        let _operator = s.operator("op-1")?;
        let (config_maps, targets) = (s.config_maps(), s.targets());
        let shard = jobs_object_name(Some(&node));
        let governed = || async {
            let cm = config_maps
                .get_opt(&shard)
                .await?
                .with_context(|| format!("no {shard}"))?;
            let jobs = match shard_from_config_map(&cm) {
                Some(Ok(shard)) => shard.jobs,
                other => bail!("{shard} unreadable: {other:?}"),
            };
            ensure!(
                jobs.iter().filter(|j| j.origin.name == "web").count() == 2,
                "jobs {:?}",
                jobs.iter().map(|j| &j.origin.name).collect::<Vec<_>>()
            );
            let t = targets.get("web").await?;
            ensure!(
                condition(&t, conditions::DEGRADED)
                    == Some(("False".into(), conditions::REASON_RECONCILED.into())),
                "status {:?}",
                t.status
            );
            Ok(())
        };
        eventually("web's jobs, governed", Duration::from_secs(30), governed).await?;

        label(serde_json::Value::Null).await?;
        config_map_deleted(&config_maps, &shard, ": no policy, no jobs").await?;
        eventually(
            "web Degraded/NoPolicy",
            Duration::from_secs(30),
            || async {
                let t: ProfilingTarget = targets.get("web").await?;
                ensure!(
                    condition(&t, conditions::DEGRADED)
                        == Some(("True".into(), conditions::REASON_NO_POLICY.into())),
                    "status {:?}",
                    t.status
                );
                let st = t.status.unwrap_or_default();
                ensure!(st.active_jobs == 0, "status {st:?}");
                Ok(())
            },
        )
        .await?;

        label(json!("yes")).await?;
        eventually(
            "web's jobs, governed again",
            Duration::from_secs(30),
            governed,
        )
        .await?;
        say(
            "e2e: 12. a namespace that leaves its policy: NoPolicy, no jobs; back under it: jobs again",
        );
        Ok(())
    })
    .await
}
