//! Scenario 8, replica sampling: a ReplicaSet scaled from 5 to 50 pods under `maxPods: 3` keeps
//! three pods profiled, the ones the UID hash predicts, and unrelated changes leave them be.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, ensure};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kubeprof_crds::{
    ProfilingTarget, health::jobs_object_name, health::shard_from_config_map, job::OriginKind,
};
use kubeprof_e2e::{procs::eventually, say};
use kubeprof_operator::compile::sampling;
use serde_json::json;

use crate::{NO_GO, stage::Stage};

const REPLICA_SET: &str = "web-5d8f7";
const MAX_PODS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_replica_set_keeps_the_profiled_pods_bounded_and_stable() -> anyhow::Result<()> {
    let name = "operator::scaling_a_replica_set_keeps_the_profiled_pods_bounded_and_stable";
    Stage::run(name, NO_GO, async |s| {
        let _op = s.operator("op-1")?;
        // No controller manager runs: the test creates the ReplicaSet's pods as its controller
        // would, owned by it and labelled with its pod-template-hash.
        let sets: Api<ReplicaSet> = Api::namespaced(s.client().clone(), s.app());
        let set: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": REPLICA_SET},
            "spec": {
                "replicas": 5,
                "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f7"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "pod-template-hash": "5d8f7"}},
                    "spec": {"containers": [{"name": "app", "image": "example.invalid/web:1"}]},
                },
            },
        }))?;
        let set = sets.create(&PostParams::default(), &set).await?;
        let uid = set.uid().context("the ReplicaSet's uid")?;
        let target: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "endpoints": [{"port": "pprof"}],
                "sampling": {"maxPods": MAX_PODS},
            },
        }))?;
        s.targets().create(&PostParams::default(), &target).await?;
        let node = s.node("node-a");
        let replica = async |i: usize| {
            let metadata = json!({
                "name": format!("{REPLICA_SET}-{i}"),
                "labels": {"app": "web", "pod-template-hash": "5d8f7"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": REPLICA_SET,
                    "uid": uid, "controller": true, "blockOwnerDeletion": true,
                }],
            });
            s.create_running_pod_with(metadata, &node, (&s.ip(), 6060))
                .await
        };
        for i in 0..5 {
            replica(i).await?;
        }
        let five = sampled(s, &node, 5).await?;

        sets.patch(
            REPLICA_SET,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 50}})),
        )
        .await?;
        for i in 5..50 {
            replica(i).await?;
        }
        let fifty = sampled(s, &node, 50).await?;
        ensure!(fifty.len() == MAX_PODS, "profiled {fifty:?}");
        // Rendezvous hashing: a pod of the first five stops being profiled only for a newcomer.
        let kept = five.intersection(&fifty).count();
        say(&format!(
            "e2e: 8. 5 -> 50 replicas: {kept} of the first {MAX_PODS} profiled pods kept, {} newcomers outweighed the rest",
            MAX_PODS - kept
        ));

        // Unrelated changes: another workload's pods come, unchosen replicas go.
        for i in 0..5 {
            let metadata = json!({"name": format!("db-{i}"), "labels": {"app": "web"}});
            s.create_running_pod_with(metadata, &node, (&s.ip(), 6060))
                .await?;
        }
        let pods = s.pods();
        let mut gone = 0;
        for i in 0..50 {
            let pod = format!("{REPLICA_SET}-{i}");
            if gone < 10 && !fifty.contains(&pod) {
                pods.delete(&pod, &DeleteParams::default().grace_period(0))
                    .await?;
                gone += 1;
            }
        }
        let after = sampled(s, &node, 45).await?;
        let after_set: BTreeSet<_> = after
            .iter()
            .filter(|p| p.starts_with(REPLICA_SET))
            .cloned()
            .collect();
        ensure!(
            after_set == fifty,
            "the ReplicaSet's profiled pods changed from {fifty:?} to {after_set:?}"
        );
        say(&format!(
            "e2e: 8. status MATCHED 50 SAMPLED {MAX_PODS}; the same {MAX_PODS} pods after another workload came and 10 unchosen replicas went"
        ));
        Ok(())
    })
    .await
}

/// The names of the [`MAX_PODS`] pods of one workload that sampling chooses.
fn heaviest(workload: &[&Pod]) -> BTreeSet<String> {
    let uids: Vec<String> = workload.iter().filter_map(|p| p.uid()).collect();
    let chosen = sampling::choose(uids.iter().map(String::as_str), MAX_PODS, 0);
    workload
        .iter()
        .filter(|p| p.uid().is_some_and(|u| chosen.contains(u.as_str())))
        .map(|p| p.name_any())
        .collect()
}

/// Waits until the target `web` reports `matched` pods, the shard of `node` holds the jobs of
/// exactly the pods sampling predicts for each workload (`maxPods` each, by UID hash), and its
/// status agrees; returns the profiled pods' names.
async fn sampled(s: &Stage, node: &str, matched: i32) -> anyhow::Result<BTreeSet<String>> {
    let shard_name = jobs_object_name(Some(node));
    eventually(
        &format!("{matched} pods matched, the predicted ones profiled"),
        Duration::from_secs(30),
        || async {
            let pods = s
                .pods()
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items;
            // What sampling must choose: the ReplicaSet's pods are one workload, each pod
            // without an owner is one of its own.
            let (owned, bare): (Vec<&Pod>, Vec<&Pod>) =
                pods.iter().partition(|p| !p.owner_references().is_empty());
            let mut predicted = heaviest(&owned);
            for p in bare {
                predicted.extend(heaviest(&[p]));
            }
            let cm = s
                .config_maps()
                .get_opt(&shard_name)
                .await?
                .context("no shard yet")?;
            let shard = shard_from_config_map(&cm).context("no jobs in the shard")??;
            let web: Vec<_> = shard
                .jobs
                .iter()
                .filter(|j| j.origin.kind == OriginKind::ProfilingTarget && j.origin.name == "web")
                .collect();
            let profiled: BTreeSet<String> = web
                .iter()
                .filter_map(|j| j.labels.get("pod").cloned())
                .collect();
            ensure!(
                profiled == predicted,
                "profiled {profiled:?}, predicted {predicted:?}"
            );
            ensure!(web.len() == 5 * profiled.len(), "{} jobs", web.len());
            let st = s.targets().get("web").await?.status.unwrap_or_default();
            ensure!(
                st.matched_pods == matched
                    && st.sampled_pods == i32::try_from(profiled.len())?
                    && st.active_jobs == i32::try_from(web.len())?,
                "status {st:?}"
            );
            Ok(profiled)
        },
    )
    .await
}
