//! The operator and scrapers as real processes against a real API server, with real Go pprof
//! services standing in for pods (no kubelet: a test creates Pods, then sets them Running with a
//! 127.0.0.0/8 IP through the status subresource, as a kubelet would).
//!
//! One test per scenario, each on its own [`Stage`] (namespaces, policy, operator, scrapers,
//! addresses), so that a failure hides no other scenario and each runs alone
//! (`cargo test -p kubeprof-e2e --test operator <name>`). A scenario that needs another's outcome
//! (editing a target needs a scraped target) builds it with the same helper. The scenarios:
//! 1. `target_profiles_arrive_with_labels_and_status`: a ProfilingTarget's CPU and memory
//!    profiles arrive with their labels; status MATCHED 1, ACTIVE 2, Ready;
//! 2. `annotated_pods_are_scraped_without_a_target` (Grafana keys, Pyroscope keys);
//! 3. `editing_a_target_takes_effect_without_restarting_the_scraper`;
//! 4. `deleting_a_pod_removes_its_jobs_and_its_nodes_objects`;
//! 5. `a_missing_port_is_reported_port_not_found`; `a_stopped_service_shows_failing_and_recovers`
//!    (within 60 s); `an_unreadable_target_is_reported_and_blocks_nothing`;
//!    `a_target_only_cel_refuses_is_reported_and_not_applied`;
//! 6. `scraping_goes_on_while_the_operator_is_down`, and a restarted operator carries on;
//! 7. `a_standby_replica_takes_over_from_a_dead_leader`: one of two replicas leads and writes;
//!    killing it hands over; SIGTERM releases the lease.
//! 8. `scaling_a_replica_set_keeps_the_profiled_pods_bounded_and_stable` (in `sampling`): a
//!    ReplicaSet's pods scaled from 5 to 50 under `maxPods: 3`.
//! 9. `the_scraper_may_read_only_referenced_secrets_and_write_only_health_reports` (in
//!    `access`): as the scraper's ServiceAccount, 403 on an unreferenced Secret and on any shard,
//!    200 on a referenced Secret and on its health report; the grant follows the reference.
//! 10. to 12. are in [`owners_and_scope`]: owner references, two containers with one port
//!     name, a namespace leaving its policy.

mod access;
mod owners_and_scope;
mod probes;
mod sampling;
mod stage;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::DynamicObject,
    discovery::ApiResource,
};
use kubeprof_crds::{
    ProfilingTarget, conditions,
    health::{health_object_name, jobs_object_name},
};
use kubeprof_e2e::{
    procs::{Proc, eventually},
    say,
};
use serde_json::json;

use crate::{
    probes::{condition, config_map_deleted, decompress, lease_holder, metric},
    stage::{Demo, Needs, Operator, Stage, Stored},
};

/// Go pprof services; other tests may run at the same time.
const GO: Needs = Needs {
    go: true,
    exclusive: false,
};
/// Only objects and the operator; other tests may run at the same time.
const NO_GO: Needs = Needs {
    go: false,
    exclusive: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_profiles_arrive_with_labels_and_status() -> anyhow::Result<()> {
    let name = "operator::target_profiles_arrive_with_labels_and_status";
    Stage::run(name, GO, async |s| {
        let web = web_target_scraped(s).await?;
        let (l, path) = &web.cpu;
        for (k, v) in [
            ("service_name", format!("{}/app", s.app())),
            ("namespace", s.app().to_string()),
            ("pod", "web-1".to_string()),
            ("container", "app".to_string()),
            ("node", s.node("node-a")),
            ("cluster", "e2e".to_string()),
        ] {
            assert_eq!(l.get(k), Some(&v), "label {k} of {l:?}");
        }
        assert!(
            !l.keys().any(|k| k.starts_with("__") && k != "__name__"),
            "{l:?}"
        );
        // The stored CPU profile is a real pprof of the Go service.
        let raw = std::fs::read(path)?;
        let text = String::from_utf8_lossy(&decompress(&raw)).into_owned();
        assert!(
            text.contains("main."),
            "the CPU profile has the Go service's frames"
        );
        let targets = s.targets();
        eventually(
            "status MATCHED 1, ACTIVE 2, Ready",
            Duration::from_secs(30),
            || async {
                let t = targets.get("web").await?;
                let st = t.status.clone().unwrap_or_default();
                ensure!(st.matched_pods == 1 && st.active_jobs == 2, "status {st:?}");
                ensure!(
                    condition(&t, conditions::READY) == Some(("True".into(), "Reconciled".into())),
                    "status {st:?}"
                );
                ensure!(
                    st.observed_generation == t.metadata.generation,
                    "observedGeneration {st:?}"
                );
                Ok(())
            },
        )
        .await?;
        say("e2e: 1. target profiles arrive with their labels; status MATCHED 1, ACTIVE 2, Ready");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pods_are_scraped_without_a_target() -> anyhow::Result<()> {
    let name = "operator::annotated_pods_are_scraped_without_a_target";
    Stage::run(name, GO, async |s| {
        // Grafana keys on node-a, Pyroscope keys on node-b; no ProfilingTarget.
        let anno = s.demo("anno-1")?;
        let pyro = s.demo("pyro-1")?;
        let (node_a, node_b) = (s.node("node-a"), s.node("node-b"));
        let _procs = [
            s.operator("op-1")?.proc,
            s.scraper(&node_a)?,
            s.scraper(&node_b)?,
        ];
        grafana_pod(s, "anno-1", &node_a, &anno).await?;
        pyroscope_pod(s, "pyro-1", &node_b, &pyro).await?;
        eventually(
            "profiles of the annotated pods",
            Duration::from_secs(60),
            || async {
                ensure!(
                    s.count("anno-1", "process_cpu") > 0,
                    "no CPU profile of anno-1"
                );
                ensure!(
                    s.count("anno-1", "goroutine") > 0,
                    "no goroutine profile of anno-1"
                );
                ensure!(
                    s.count("pyro-1", "process_cpu") > 0,
                    "no CPU profile of pyro-1"
                );
                Ok(())
            },
        )
        .await?;
        let labels = s
            .stored_profiles()
            .into_iter()
            .find(|(l, _)| l.get("pod").map(String::as_str) == Some("pyro-1"))
            .map(|(l, _)| l)
            .unwrap_or_default();
        assert_eq!(
            labels.get("service_name").map(String::as_str),
            Some("pyro-app")
        );
        assert_eq!(labels.get("node"), Some(&node_b));
        say("e2e: 2. annotated pods (grafana and pyroscope keys) are scraped without a target");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_target_takes_effect_without_restarting_the_scraper() -> anyhow::Result<()> {
    let name = "operator::editing_a_target_takes_effect_without_restarting_the_scraper";
    Stage::run(name, GO, async |s| {
        let web = web_target_scraped(s).await?;
        let scraper_pid = web.scraper.pid();
        let targets = s.targets();
        targets
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"endpoints": [{
                    "port": "pprof", "interval": "5s",
                    "profiles": {"cpu": {"enabled": true}, "memory": {"enabled": true},
                                  "goroutine": {"enabled": true}, "mutex": {"enabled": false}, "block": {"enabled": false}},
                }]}})),
            )
            .await?;
        eventually(
            "goroutine profiles of web-1 after the edit",
            Duration::from_secs(45),
            || async {
                ensure!(s.count("web-1", "goroutine") > 0, "none yet");
                Ok(())
            },
        )
        .await?;
        let mut scraper = web.scraper;
        assert!(scraper.running(), "the scraper is still running");
        assert_eq!(scraper_pid, scraper.pid(), "the scraper was not restarted");
        eventually(
            "ACTIVE 3 after the edit",
            Duration::from_secs(30),
            || async {
                let st = targets.get("web").await?.status.unwrap_or_default();
                ensure!(st.active_jobs == 3, "status {st:?}");
                Ok(())
            },
        )
        .await?;
        say("e2e: 3. editing the target's types took effect without restarting the scraper");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_removes_its_jobs_and_its_nodes_objects() -> anyhow::Result<()> {
    let name = "operator::deleting_a_pod_removes_its_jobs_and_its_nodes_objects";
    Stage::run(name, GO, async |s| {
        // The only pod of node-b, scraped.
        let pyro = s.demo("pyro-1")?;
        let node_b = s.node("node-b");
        let _procs = [s.operator("op-1")?.proc, s.scraper(&node_b)?];
        pyroscope_pod(s, "pyro-1", &node_b, &pyro).await?;
        let config_maps = s.config_maps();
        let (shard, health) = (
            jobs_object_name(Some(&node_b)),
            health_object_name(Some(&node_b)),
        );
        eventually(
            "pyro-1 scraped, node-b's health reported",
            Duration::from_secs(60),
            || async {
                ensure!(s.count("pyro-1", "process_cpu") > 0, "no CPU profile");
                ensure!(config_maps.get_opt(&health).await?.is_some(), "no {health}");
                Ok(())
            },
        )
        .await?;
        ensure!(
            config_maps.get_opt(&shard).await?.is_some(),
            "{shard} was published"
        );
        s.pods()
            .delete("pyro-1", &DeleteParams::default().grace_period(0))
            .await?;
        // Its scrape-health report goes too (the operator collects reports of nodes without jobs).
        for gone in [&shard, &health] {
            config_map_deleted(&config_maps, gone, "").await?;
        }
        let before = s.count("pyro-1", "process_cpu");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            s.count("pyro-1", "process_cpu"),
            before,
            "pyro-1 no longer scraped"
        );
        say("e2e: 4. deleting the pod removed its jobs, its node's object and health report");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_port_is_reported_port_not_found() -> anyhow::Result<()> {
    let name = "operator::a_missing_port_is_reported_port_not_found";
    Stage::run(name, NO_GO, async |s| {
        let _op = s.operator("op-1")?;
        // Nothing listens: PortNotFound is found before any scrape.
        s.create_running_pod(
            "web-1",
            &s.node("node-a"),
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        let targets = s.targets();
        let broken: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": "wrong-port"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "endpoints": [{"port": "nope"}]},
        }))?;
        targets.create(&PostParams::default(), &broken).await?;
        eventually(
            "wrong-port Degraded/PortNotFound",
            Duration::from_secs(30),
            || async {
                let t = targets.get("wrong-port").await?;
                ensure!(
                    condition(&t, conditions::DEGRADED)
                        == Some(("True".into(), conditions::REASON_PORT_NOT_FOUND.into())),
                    "status {:?}",
                    t.status
                );
                Ok(())
            },
        )
        .await?;
        // The degradation is announced with an Event on the object.
        let events: Api<Event> = Api::namespaced(s.client().clone(), s.app());
        eventually(
            "a PortNotFound event on wrong-port",
            Duration::from_secs(30),
            || async {
                let list = events.list(&Default::default()).await?;
                ensure!(
                    list.items.iter().any(|e| e.reason.as_deref()
                        == Some(conditions::REASON_PORT_NOT_FOUND)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("wrong-port")),
                    "events: {:?}",
                    list.items
                        .iter()
                        .map(|e| (
                            e.reason.clone(),
                            e.regarding.as_ref().and_then(|r| r.name.clone())
                        ))
                        .collect::<Vec<_>>()
                );
                Ok(())
            },
        )
        .await?;
        say("e2e: 5. a missing port is reported PortNotFound, in status and with an Event");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_shows_failing_and_recovers() -> anyhow::Result<()> {
    let name = "operator::a_stopped_service_shows_failing_and_recovers";
    // Exclusive: another test's operator would write this target's status without its failures.
    let needs = Needs {
        go: true,
        exclusive: true,
    };
    Stage::run(name, needs, async |s| {
        let mut web = web_target_scraped(s).await?;
        let targets = s.targets();
        web.demo.proc.kill();
        let stopped = std::time::Instant::now();
        eventually("web FAILING", Duration::from_secs(60), || async {
            let t = targets.get("web").await?;
            let st = t.status.clone().unwrap_or_default();
            ensure!(st.failing_jobs >= 1, "status {st:?}");
            ensure!(
                condition(&t, conditions::DEGRADED).map(|c| c.1)
                    == Some(conditions::REASON_SCRAPE_FAILING.into()),
                "status {st:?}"
            );
            Ok(())
        })
        .await?;
        say(&format!(
            "e2e: 5. FAILING shown {:.1} s after the service stopped",
            stopped.elapsed().as_secs_f64()
        ));
        let _again = s.demo_at("web-1b", &web.demo.ip, web.demo.port)?;
        eventually("web recovers", Duration::from_secs(60), || async {
            let t = targets.get("web").await?;
            let st = t.status.clone().unwrap_or_default();
            ensure!(st.failing_jobs == 0, "status {st:?}");
            ensure!(
                condition(&t, conditions::READY).map(|c| c.0) == Some("True".into()),
                "status {st:?}"
            );
            Ok(())
        })
        .await?;
        say("e2e: 5. the stopped service showed FAILING and recovered once started again");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_target_is_reported_and_blocks_nothing() -> anyhow::Result<()> {
    let name = "operator::an_unreadable_target_is_reported_and_blocks_nothing";
    Stage::run(name, NO_GO, async |s| {
        let _op = s.operator("op-1")?;
        s.create_running_pod(
            "web-1",
            &s.node("node-a"),
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        // An object the schema lets through but the operator cannot read (an interval too large
        // for any clock) is reported in its status, and blocks nothing else.
        let targets = s.targets();
        let unreadable: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": "unreadable"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "endpoints": [{"port": "pprof"}]},
        }))?;
        targets.create(&PostParams::default(), &unreadable).await?;
        let huge = Patch::Merge(
            json!({"spec": {"endpoints": [{"port": "pprof", "interval": "99999999999999999999999999h", "scrapeTimeout": "1s"}]}}),
        );
        // Untyped: this test's own typed client could not read the answer either.
        let raw: Api<DynamicObject> = Api::namespaced_with(
            s.client().clone(),
            s.app(),
            &ApiResource::erase::<ProfilingTarget>(&()),
        );
        let accepted = match raw
            .patch("unreadable", &PatchParams::default(), &huge)
            .await
        {
            Ok(_) => true,
            // A server with CEL refuses the value at admission, which is just as good.
            Err(kube::Error::Api(e)) if e.code == 422 => {
                say(&format!(
                    "e2e: 5. the server refused the unreadable interval itself: {}",
                    e.message
                ));
                false
            }
            Err(e) => return Err(e.into()),
        };
        // A target made after the unreadable one is reconciled all the same.
        targets.create(&PostParams::default(), &web_target()?).await?;
        if accepted {
            eventually(
                "unreadable reported InvalidSpec",
                Duration::from_secs(30),
                || async {
                    let o = raw.get("unreadable").await?;
                    let conds = o
                        .data
                        .pointer("/status/conditions")
                        .cloned()
                        .unwrap_or_default();
                    let degraded = conds
                        .as_array()
                        .and_then(|a| a.iter().find(|c| c["type"] == "Degraded"))
                        .cloned()
                        .unwrap_or_default();
                    ensure!(
                        degraded["reason"] == conditions::REASON_INVALID_SPEC,
                        "conditions {conds}"
                    );
                    ensure!(
                        degraded["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("too large"),
                        "conditions {conds}"
                    );
                    Ok(())
                },
            )
            .await?;
        }
        let t = targets.get_opt("web").await.ok().flatten();
        ensure!(t.is_some(), "web still readable");
        eventually(
            "web reconciled: MATCHED 1, ACTIVE 2",
            Duration::from_secs(30),
            || async {
                let st = targets.get("web").await?.status.unwrap_or_default();
                ensure!(st.matched_pods == 1 && st.active_jobs == 2, "status {st:?}");
                Ok(())
            },
        )
        .await?;
        if accepted {
            say(
                "e2e: 5. an unreadable object is reported InvalidSpec in its status; the others carry on",
            );
        }
        targets
            .delete("unreadable", &DeleteParams::default())
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_only_cel_refuses_is_reported_and_not_applied() -> anyhow::Result<()> {
    let name = "operator::a_target_only_cel_refuses_is_reported_and_not_applied";
    Stage::run(name, NO_GO, async |s| {
        let _op = s.operator("op-1")?;
        s.create_running_pod(
            "web-1",
            &s.node("node-a"),
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        // Port and portNumber together: only a CEL rule refuses it, so a server without CEL
        // stores it, and the operator refuses it as a CEL-enforcing server would.
        let targets = s.targets();
        let both: ProfilingTarget = serde_json::from_value(json!({
            "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
            "metadata": {"name": "both-ports"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "endpoints": [{"port": "pprof", "portNumber": 6060}]},
        }))?;
        match targets.create(&PostParams::default(), &both).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 422 => {
                say(&format!(
                    "e2e: 5. the server refused port and portNumber together itself: {}",
                    e.message
                ));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        eventually(
            "both-ports reported InvalidSpec, with no job",
            Duration::from_secs(30),
            || async {
                let t = targets.get("both-ports").await?;
                let st = t.status.clone().unwrap_or_default();
                let degraded = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == conditions::DEGRADED);
                ensure!(
                    degraded.is_some_and(|c| c.reason == conditions::REASON_INVALID_SPEC
                        && c.message
                            .contains("exactly one of port or portNumber must be set")),
                    "status {st:?}"
                );
                ensure!(st.active_jobs == 0, "status {st:?}");
                Ok(())
            },
        )
        .await?;
        say("e2e: 5. a target only a CEL rule refuses is reported InvalidSpec, with no job");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraping_goes_on_while_the_operator_is_down() -> anyhow::Result<()> {
    let name = "operator::scraping_goes_on_while_the_operator_is_down";
    Stage::run(name, GO, async |s| {
        let mut web = web_target_scraped(s).await?;
        web.operator.proc.kill();
        let down = std::time::Instant::now();
        let before = s.count("web-1", "process_cpu");
        eventually(
            "2 more CPU profiles of web-1 without the operator",
            Duration::from_secs(30),
            || async {
                let after = s.count("web-1", "process_cpu");
                ensure!(
                    after >= before + 2,
                    "scraping went on without the operator: {before} -> {after}"
                );
                Ok(())
            },
        )
        .await?;
        say(&format!(
            "e2e: 6. with the operator down, the scraper stored 2 more CPU profiles in {:.1} s",
            down.elapsed().as_secs_f64()
        ));
        // Restarted, it takes the lease once the dead one's expires, and acts.
        let restarted = s.operator("op-1b")?;
        let leases = s.leases();
        eventually("op-1b leads", Duration::from_secs(30), || async {
            let holder = lease_holder(&leases).await?;
            ensure!(holder == "op-1b", "holder {holder:?}");
            ensure!(
                metric(&restarted.listen, "kubeprof_operator_leader").await? == 1.0,
                "op-1b's leader gauge"
            );
            Ok(())
        })
        .await?;
        let node_c = s.node("node-c");
        s.create_running_pod(
            "late-1",
            &node_c,
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        let shard = jobs_object_name(Some(&node_c));
        let config_maps = s.config_maps();
        eventually("node-c's object", Duration::from_secs(30), || async {
            ensure!(config_maps.get_opt(&shard).await?.is_some(), "no {shard}");
            Ok(())
        })
        .await?;
        say("e2e: 6. the restarted operator took the lease and published a new pod's jobs");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_from_a_dead_leader() -> anyhow::Result<()> {
    let name = "operator::a_standby_replica_takes_over_from_a_dead_leader";
    Stage::run(name, NO_GO, async |s| {
        // A target, so that the leader has status to write.
        s.targets()
            .create(&PostParams::default(), &web_target()?)
            .await?;
        let mut replicas = vec![s.operator("op-1")?, s.operator("op-2")?];
        let leases = s.leases();
        let leader = eventually("a leader", Duration::from_secs(30), || async {
            let holder = lease_holder(&leases).await?;
            ensure!(holder == "op-1" || holder == "op-2", "holder {holder:?}");
            let (l1, l2) = (
                metric(&replicas[0].listen, "kubeprof_operator_leader").await?,
                metric(&replicas[1].listen, "kubeprof_operator_leader").await?,
            );
            ensure!(l1 + l2 == 1.0, "leader gauges {l1} and {l2}");
            Ok(holder)
        })
        .await?;
        let leader = replicas
            .iter()
            .position(|r| r.proc.name() == leader)
            .context("the leader's process")?;
        let mut leader = replicas.remove(leader);
        let standby = replicas.pop().context("the standby")?;
        let standby_name = standby.proc.name().to_owned();
        // Make the leader write: a new pod on node-c.
        let node_c = s.node("node-c");
        s.create_running_pod(
            "late-1",
            &node_c,
            (&s.ip(), 6060),
            json!({"app": "web"}),
            json!({}),
        )
        .await?;
        let shard = jobs_object_name(Some(&node_c));
        let config_maps = s.config_maps();
        eventually("node-c's object", Duration::from_secs(30), || async {
            ensure!(config_maps.get_opt(&shard).await?.is_some(), "no {shard}");
            Ok(())
        })
        .await?;
        assert_eq!(
            metric(&standby.listen, "kubeprof_operator_shard_writes_total").await?,
            0.0,
            "the standby wrote shards"
        );
        assert_eq!(
            metric(&standby.listen, "kubeprof_operator_status_writes_total").await?,
            0.0,
            "the standby wrote status"
        );
        ensure!(metric(&leader.listen, "kubeprof_operator_shard_writes_total").await? >= 1.0);
        let leader_name = leader.proc.name().to_owned();
        leader.proc.kill();
        let killed = std::time::Instant::now();
        eventually(
            "the standby takes over",
            Duration::from_secs(30),
            || async {
                let holder = lease_holder(&leases).await?;
                ensure!(holder == standby_name, "holder {holder:?}");
                Ok(())
            },
        )
        .await?;
        let took = killed.elapsed();
        // The new leader acts: deleting late-1 removes node-c's object.
        s.pods()
            .delete("late-1", &DeleteParams::default().grace_period(0))
            .await?;
        config_map_deleted(&config_maps, &shard, " by the new leader").await?;
        say(&format!(
            "e2e: 7. {leader_name} led, {standby_name} wrote nothing; killed, {standby_name} took over in {:.1} s (lease 6 s)",
            took.as_secs_f64()
        ));
        // SIGTERM drains cleanly: the leader exits by itself and releases the lease at once.
        let mut new_leader = standby.proc;
        let clean = new_leader.terminate(Duration::from_secs(10));
        ensure!(clean, "{standby_name} did not exit within 10 s of SIGTERM");
        let holder = lease_holder(&leases).await?;
        ensure!(
            holder.is_empty(),
            "lease still held by {holder:?} after a clean exit"
        );
        say(&format!(
            "e2e: 7. SIGTERM: {standby_name} exited cleanly and released the lease"
        ));
        Ok(())
    })
    .await
}

/// What scenario 1 builds and later scenarios start from: the Go service web-1 as the pod
/// web-1 on node-a, the target "web" selecting it for CPU and memory, an operator and node-a's
/// scraper; ready once both profile types of web-1 are stored.
struct WebTarget {
    demo: Demo,
    operator: Operator,
    scraper: Proc,
    /// The first stored CPU profile.
    cpu: Stored,
}

async fn web_target_scraped(s: &Stage) -> anyhow::Result<WebTarget> {
    let demo = s.demo("web-1")?;
    let node_a = s.node("node-a");
    s.create_running_pod(
        "web-1",
        &node_a,
        (&demo.ip, demo.port),
        json!({"app": "web"}),
        json!({}),
    )
    .await?;
    let operator = s.operator("op-1")?;
    let scraper = s.scraper(&node_a)?;
    s.targets()
        .create(&PostParams::default(), &web_target()?)
        .await?;
    let cpu = eventually(
        "CPU and memory profiles of web-1",
        Duration::from_secs(60),
        || async {
            match (
                s.find_profile("web-1", "process_cpu"),
                s.find_profile("web-1", "memory"),
            ) {
                (Some(cpu), Some(_)) => Ok(cpu),
                _ => bail!(
                    "have {} profiles, none yet for both types",
                    s.stored_profiles().len()
                ),
            }
        },
    )
    .await?;
    Ok(WebTarget {
        demo,
        operator,
        scraper,
        cpu,
    })
}

/// The target "web": CPU and memory of the port "pprof" of the pods labelled app=web.
fn web_target() -> anyhow::Result<ProfilingTarget> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubeprof.io/v1alpha1", "kind": "ProfilingTarget",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "endpoints": [{
                "port": "pprof",
                "profiles": {
                    "cpu": {"enabled": true},
                    "memory": {"enabled": true},
                    "goroutine": {"enabled": false},
                    "mutex": {"enabled": false},
                    "block": {"enabled": false},
                },
            }],
        },
    }))?)
}

/// A pod asking for CPU and goroutine profiles with Grafana's annotation keys.
async fn grafana_pod(s: &Stage, name: &str, node: &str, demo: &Demo) -> anyhow::Result<()> {
    s.create_running_pod(
        name, node, (&demo.ip, demo.port), json!({"app": "anno"}),
        json!({"profiles.grafana.com/cpu.scrape": "true", "profiles.grafana.com/cpu.port_name": "pprof",
               "profiles.grafana.com/goroutine.scrape": "true", "profiles.grafana.com/goroutine.port": demo.port.to_string()}),
    )
    .await
}

/// A pod asking to be profiled with the legacy Pyroscope keys, as the application "pyro-app".
async fn pyroscope_pod(s: &Stage, name: &str, node: &str, demo: &Demo) -> anyhow::Result<()> {
    s.create_running_pod(
        name,
        node,
        (&demo.ip, demo.port),
        json!({"app": "pyro"}),
        json!({"pyroscope.io/scrape": "true", "pyroscope.io/port": demo.port.to_string(),
               "pyroscope.io/application-name": "pyro-app"}),
    )
    .await
}
