//! Replica sampling: a bounded, stable set of each workload's pods is profiled.

use std::{collections::BTreeSet, time::Duration as StdDuration};

use kubeprof_crds::{Duration, Sampling};
use pretty_assertions::assert_eq;

use super::*;

const HOUR: u64 = 3_600;

/// Pod `name` of the workload `kind`/`owner` in "shop", labelled `app: web`, with its own IP.
fn replica(kind: &str, owner: &str, name: &str) -> PodInfo {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut pod = mk_pod(
        "shop",
        name,
        &[("app", "web")],
        &format!("node-{}", n % 7),
        &format!("10.{}.{}.{}", n / 62_500, n / 250 % 250, n % 250 + 1),
    );
    pod.owner = Some(Owner {
        kind: kind.into(),
        name: owner.into(),
    });
    pod
}
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `n` replicas of the Deployment `web`, named `web-<i>`.
fn deployment(n: usize) -> Vec<PodInfo> {
    (0..n)
        .map(|i| replica("Deployment", "web", &format!("web-{i}")))
        .collect()
}

fn max_pods(n: i32) -> Sampling {
    Sampling {
        max_pods: Some(n),
        ..Default::default()
    }
}

fn sampled_target(sampling: Option<Sampling>) -> TargetInput {
    let mut t = mk_target("shop", "web", "web", port("pprof"));
    t.spec.sampling = sampling;
    t
}

fn inputs(target: TargetInput, pods: Vec<PodInfo>) -> Inputs {
    Inputs {
        policies: vec![mk_policy("default", 0, |_| {})],
        targets: vec![target],
        pods,
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    }
}

/// Names of the pods with jobs.
fn profiled(c: &Compiled, inputs: &Inputs) -> BTreeSet<String> {
    let addresses: BTreeSet<&str> = jobs(c).iter().map(|j| j.address.as_str()).collect();
    inputs
        .pods
        .iter()
        .filter(|p| {
            p.ip.as_ref()
                .is_some_and(|ip| addresses.contains(format!("{ip}:6060").as_str()))
        })
        .map(|p| p.name.clone())
        .collect()
}

fn set(pods: &[&str]) -> BTreeSet<String> {
    pods.iter().map(|p| p.to_string()).collect()
}

#[test]
fn scaling_a_deployment_from_5_to_500_replicas_keeps_max_pods_profiled() {
    let mut pods = deployment(500);
    for n in [5, 50, 500] {
        let i = inputs(sampled_target(Some(max_pods(3))), pods[..n].to_vec());
        let c = compile(&i);
        assert_eq!(profiled(&c, &i).len(), 3, "{n} replicas");
        let f = facts(&c, "shop", "web");
        assert_eq!((f.matched_pods, f.sampled_pods), (n as i32, 3));
        assert_eq!(f.active_jobs, 15, "five types of three pods");
        assert_eq!(c.next_rotation, None, "no rotation asked for");
    }
    // Below the quota, every replica is profiled.
    pods.truncate(2);
    let i = inputs(sampled_target(Some(max_pods(3))), pods);
    assert_eq!(profiled(&compile(&i), &i), set(&["web-0", "web-1"]));
}

#[test]
fn pods_coming_and_going_change_the_choice_only_as_much_as_needed() {
    let pods = deployment(60);
    let chosen = |pods: &[PodInfo]| {
        let i = inputs(sampled_target(Some(max_pods(5))), pods.to_vec());
        profiled(&compile(&i), &i)
    };
    // Scaling up one replica at a time: each new replica replaces at most one chosen pod.
    let mut previous = chosen(&pods[..5]);
    let mut changes = 0;
    for n in 6..=pods.len() {
        let now = chosen(&pods[..n]);
        let entered: Vec<_> = now.difference(&previous).collect();
        assert!(entered.len() <= 1, "{n}: {entered:?} entered at once");
        if let Some(e) = entered.first() {
            assert_eq!(**e, format!("web-{}", n - 1), "only the new replica enters");
            changes += 1;
        }
        previous = now;
    }
    assert!(changes < 30, "{changes} of 55 scale-ups changed the choice");
    let all = previous;

    // Pods of other workloads, other namespaces or not selected change nothing.
    let mut crowded = pods.clone();
    crowded.extend((0..40).map(|i| replica("StatefulSet", "db", &format!("db-{i}"))));
    crowded.extend((0..40).map(|i| {
        let mut p = replica("Deployment", "web", &format!("elsewhere-{i}"));
        p.namespace = "other".into();
        p
    }));
    let chosen_web: BTreeSet<String> = chosen(&crowded)
        .into_iter()
        .filter(|p| p.starts_with("web-"))
        .collect();
    assert_eq!(chosen_web, all);

    // An unchosen replica going away changes nothing; a chosen one is replaced by one other.
    let without =
        |gone: &str| -> Vec<PodInfo> { pods.iter().filter(|p| p.name != gone).cloned().collect() };
    let unchosen = pods.iter().find(|p| !all.contains(&p.name)).unwrap();
    assert_eq!(chosen(&without(&unchosen.name)), all);
    let first = all.iter().next().unwrap();
    let after = chosen(&without(first));
    assert_eq!(after.len(), 5);
    assert_eq!(all.difference(&after).collect::<Vec<_>>(), [first]);
    // A stopped replica is no candidate either.
    let mut stopped = pods.clone();
    stopped
        .iter_mut()
        .find(|p| &p.name == first)
        .unwrap()
        .running = false;
    assert_eq!(chosen(&stopped), after);
}

#[test]
fn a_percentage_is_rounded_up_and_held_at_its_minimum() {
    let percent = Sampling {
        percent: Some(10),
        min_pods: Some(3),
        ..Default::default()
    };
    for (replicas, sampled) in [(2, 2), (10, 3), (31, 4), (100, 10), (500, 50)] {
        let i = inputs(sampled_target(Some(percent.clone())), deployment(replicas));
        let c = compile(&i);
        assert_eq!(profiled(&c, &i).len(), sampled, "{replicas} replicas");
        assert_eq!(facts(&c, "shop", "web").sampled_pods, sampled as i32);
    }
}

#[test]
fn every_workload_gets_its_own_quota() {
    let mut pods = deployment(100);
    // A rollout: the old and the new ReplicaSet of one Deployment share its quota.
    for (rs, hash) in [("api-5d8f7", "5d8f7"), ("api-66c4b", "66c4b")] {
        for i in 0..10 {
            let mut p = replica("ReplicaSet", rs, &format!("{rs}-{i}"));
            p.labels.insert(
                crate::compile::sampling::POD_TEMPLATE_HASH_LABEL.into(),
                hash.into(),
            );
            p.owner = Some(crate::compile::sampling::owner("ReplicaSet", rs, &p.labels));
            pods.push(p);
        }
    }
    pods.extend((0..3).map(|i| replica("StatefulSet", "db", &format!("db-{i}"))));
    pods.extend((0..8).map(|i| replica("DaemonSet", "agent", &format!("agent-{i}"))));
    pods.extend((0..4).map(|i| replica("Job", "migrate", &format!("migrate-{i}"))));
    let mut bare = replica("", "", "debug");
    bare.owner = None;
    pods.push(bare);
    let i = inputs(sampled_target(Some(max_pods(2))), pods);
    let c = compile(&i);
    let chosen = profiled(&c, &i);
    let count = |prefix: &str| chosen.iter().filter(|p| p.starts_with(prefix)).count();
    assert_eq!(
        [
            count("web-"),
            count("api-"),
            count("db-"),
            count("agent-"),
            count("migrate-"),
            count("debug"),
        ],
        [2, 2, 2, 2, 2, 1]
    );
    let f = facts(&c, "shop", "web");
    assert_eq!((f.matched_pods, f.sampled_pods), (136, 11));
}

#[test]
fn a_workload_label_groups_pods_across_controllers() {
    let mut pods = deployment(10);
    pods.extend((0..10).map(|i| replica("StatefulSet", "web-cache", &format!("cache-{i}"))));
    for p in &mut pods[..15] {
        p.labels
            .insert("app.kubernetes.io/part-of".into(), "shop".into());
    }
    let sampling = Sampling {
        workload_label: Some("app.kubernetes.io/part-of".into()),
        ..max_pods(2)
    };
    let i = inputs(sampled_target(Some(sampling)), pods);
    let c = compile(&i);
    // Two of the 15 labelled pods, and two of the 5 unlabelled ones (by their controller).
    let chosen = profiled(&c, &i);
    assert_eq!(chosen.len(), 4, "{chosen:?}");
    let unlabelled = ["cache-5", "cache-6", "cache-7", "cache-8", "cache-9"];
    assert_eq!(
        chosen
            .iter()
            .filter(|p| unlabelled.contains(&p.as_str()))
            .count(),
        2
    );
}

#[test]
fn rotation_chooses_again_each_period_and_covers_every_replica() {
    let rotating = Sampling {
        rotation_period: Some(Duration::from_secs(HOUR)),
        ..max_pods(5)
    };
    let pods = deployment(50);
    let at = |secs: u64| {
        let mut i = inputs(sampled_target(Some(rotating.clone())), pods.clone());
        i.now = StdDuration::from_secs(secs);
        let c = compile(&i);
        (profiled(&c, &i), c.next_rotation)
    };
    let start = 1_700_000_000 / HOUR * HOUR;
    let (first, next) = at(start + 60);
    assert_eq!(next, Some(StdDuration::from_secs(start + HOUR)));
    assert_eq!(at(start + HOUR - 1).0, first, "stable within a period");
    let (second, _) = at(start + HOUR);
    assert_eq!(second.len(), 5);
    assert_ne!(second, first, "the next period chooses again");

    let mut seen = BTreeSet::new();
    let mut periods = 0;
    while seen.len() < pods.len() {
        seen.extend(at(start + periods * HOUR).0);
        periods += 1;
        assert!(
            periods <= 100,
            "after 100 hours, {} pods never profiled",
            50 - seen.len()
        );
    }

    // A workload within its quota has nothing to rotate: no recompile is asked for.
    let mut few = inputs(sampled_target(Some(rotating.clone())), deployment(4));
    few.now = StdDuration::from_secs(start);
    assert_eq!(compile(&few).next_rotation, None);
}

#[test]
fn a_targets_sampling_replaces_the_policys_and_annotated_pods_follow_the_policy() {
    let policy = mk_policy("default", 0, |s| s.sampling = Some(max_pods(1)));
    let mut pods = deployment(10);
    pods.extend((0..10).map(|i| {
        let mut p = replica("Deployment", "worker", &format!("worker-{i}"));
        p.labels.clear();
        p.annotations = map(&[
            ("profiles.grafana.com/cpu.scrape", "true"),
            ("profiles.grafana.com/cpu.port_name", "pprof"),
        ]);
        p
    }));
    let with = |target: TargetInput| {
        let i = Inputs {
            policies: vec![policy.clone()],
            targets: vec![target],
            pods: pods.clone(),
            namespaces: vec![mk_ns("shop", &[])],
            ..Default::default()
        };
        let c = compile(&i);
        (profiled(&c, &i), c)
    };
    let (chosen, c) = with(sampled_target(None));
    assert_eq!(facts(&c, "shop", "web").sampled_pods, 1, "the policy's");
    assert_eq!(chosen.iter().filter(|p| p.starts_with("web-")).count(), 1);
    assert_eq!(
        chosen.iter().filter(|p| p.starts_with("worker-")).count(),
        1
    );
    let p = &c.policies["default"];
    assert_eq!((p.annotated_pods, p.sampled_pods, p.targets), (10, 1, 2));

    let every = Sampling {
        percent: Some(100),
        ..Default::default()
    };
    let (chosen, c) = with(sampled_target(Some(every)));
    assert_eq!(facts(&c, "shop", "web").sampled_pods, 10, "the target's");
    assert_eq!(chosen.iter().filter(|p| p.starts_with("web-")).count(), 10);
}

#[test]
fn sampling_a_cel_enforcing_server_would_refuse_is_reported_and_not_applied() {
    let cases = [
        (
            Sampling {
                percent: Some(10),
                ..max_pods(3)
            },
            "spec.sampling: exactly one of maxPods or percent must be set",
        ),
        (
            Sampling {
                rotation_period: Some(Duration::from_secs(30)),
                ..max_pods(3)
            },
            "spec.sampling: rotationPeriod must be at least 1m",
        ),
        (
            Sampling {
                min_pods: Some(2),
                ..max_pods(3)
            },
            "spec.sampling: minPods goes with percent (maxPods is already a count)",
        ),
    ];
    for (sampling, message) in cases {
        let c = compile(&inputs(sampled_target(Some(sampling)), deployment(5)));
        let f = facts(&c, "shop", "web");
        assert_eq!(
            f.problems
                .iter()
                .map(|p| format!("{}: {}", p.reason, p.message))
                .collect::<Vec<_>>(),
            [format!("InvalidSpec: {message}")]
        );
        assert_eq!(f.active_jobs, 0);
    }
}
