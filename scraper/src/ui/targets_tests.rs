use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use kubeprof_crds::health::ScrapeFailure;
use pretty_assertions::assert_eq;

use super::*;
use crate::config::Config;

/// Two targets: `web` (two addresses, CPU and memory) and `batch`, whose rule drops the
/// address 10.0.0.9.
fn job_set() -> Arc<JobSet> {
    let config = Config::parse(
        r#"
targets:
  - name: web
    addresses: ["10.0.0.1:6060", "10.0.0.2:6060"]
    labels: {team: "<b>payments</b>"}
    profiles: {cpu: {enabled: true}, memory: {enabled: true}, goroutine: {enabled: false}, mutex: {enabled: false}, block: {enabled: false}}
  - name: batch
    addresses: ["10.0.0.9:6060"]
    profiles: {cpu: {enabled: true}, memory: {enabled: false}, goroutine: {enabled: false}, mutex: {enabled: false}, block: {enabled: false}}
    relabelings:
      - {targetLabel: env, replacement: prod}
      - {sourceLabels: [__address__], regex: "10\\.0\\.0\\.9:.*", action: drop}
sinks:
  - name: local
    file: {directory: /tmp/p}
"#,
    )
    .unwrap();
    Arc::new(config.job_set())
}

fn id(set: &JobSet, address: &str, profile: &str) -> String {
    set.jobs
        .iter()
        .find(|j| j.address == address && j.profile.name == profile)
        .unwrap()
        .id
        .clone()
}

fn snapshot() -> TargetsSnapshot {
    let jobs = job_set();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut health = HashMap::new();
    health.insert(
        id(&jobs, "10.0.0.1:6060", "process_cpu"),
        TargetHealth {
            last_scrape: Some(t0),
            last_duration: Some(Duration::from_millis(15_020)),
            last_success: Some(t0),
            next_scrape: Some(t0 + Duration::from_secs(15)),
            ..Default::default()
        },
    );
    health.insert(
        id(&jobs, "10.0.0.2:6060", "process_cpu"),
        TargetHealth {
            last_scrape: Some(t0),
            last_duration: Some(Duration::from_millis(3)),
            last_error: Some("cannot connect: Connection refused".into()),
            last_reason: Some(ScrapeFailure::Connect),
            consecutive_failures: 4,
            ..Default::default()
        },
    );
    health.insert(
        id(&jobs, "10.0.0.1:6060", "memory"),
        TargetHealth {
            last_scrape: Some(t0),
            baseline: true,
            ..Default::default()
        },
    );
    TargetsSnapshot {
        mode: "standalone".into(),
        jobs,
        health,
        queues: [(
            "local".to_string(),
            SinkQueue {
                profiles: 3,
                bytes: 4096,
            },
        )]
        .into(),
    }
}

fn page(snapshot: &TargetsSnapshot, query: TargetsQuery) -> TargetsPage {
    build(snapshot, &Derived::compute(snapshot.jobs.clone()), &query)
}

#[test]
fn every_job_has_its_state_with_failing_ones_first() {
    let s = snapshot();
    let p = page(&s, TargetsQuery::default());
    assert_eq!(
        p.summary,
        [
            (JobState::Up, 1),
            (JobState::Failing, 1),
            (JobState::Baseline, 1),
            (JobState::Pending, 1)
        ]
        .into()
    );
    assert_eq!(p.active.total, 4);
    let first = &p.active.items[0];
    assert_eq!(first.address, "10.0.0.2:6060");
    assert_eq!(first.state, JobState::Failing);
    assert_eq!(first.reason.as_deref(), Some("connect"));
    assert_eq!(
        first.last_error.as_deref(),
        Some("cannot connect: Connection refused")
    );
    assert_eq!(first.consecutive_failures, 4);
    let up = p
        .active
        .items
        .iter()
        .find(|r| r.state == JobState::Up)
        .unwrap();
    assert_eq!(
        (up.address.as_str(), up.profile.as_str()),
        ("10.0.0.1:6060", "process_cpu")
    );
    assert_eq!(up.last_duration_ms, Some(15_020));
    assert_eq!(up.last_scrape.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert_eq!(up.next_scrape.as_deref(), Some("2023-11-14T22:13:35Z"));
    assert_eq!(up.reason, None);
    assert_eq!(
        up.sinks,
        vec![SinkRef {
            name: "local".into(),
            queue: Some(SinkQueue {
                profiles: 3,
                bytes: 4096
            })
        }]
    );
    // Before: discovery and internal labels; after: what the sinks get.
    assert_eq!(up.labels_before["__address__"], "10.0.0.1:6060");
    assert!(!up.labels_after.contains_key("__address__"));
    assert_eq!(up.labels_after["__name__"], "process_cpu");
    assert_eq!(up.labels_after["service_name"], "web");
    assert_eq!(up.labels_after["team"], "<b>payments</b>");
}

#[test]
fn dropped_targets_name_the_rule_that_dropped_them() {
    let s = snapshot();
    let p = page(&s, TargetsQuery::default());
    assert_eq!(p.dropped_total, 1);
    let d = &p.dropped.items[0];
    assert_eq!(d.address, "10.0.0.9:6060");
    assert_eq!(d.dropped_by.rule_index, Some(1));
    assert!(
        d.dropped_by.rule.contains("\"action\":\"drop\""),
        "{}",
        d.dropped_by.rule
    );
    assert!(
        d.dropped_by.rule.contains("10\\\\.0\\\\.0\\\\.9"),
        "{}",
        d.dropped_by.rule
    );
    // A dropped target is not an active job.
    assert!(!p.active.items.iter().any(|r| r.address == "10.0.0.9:6060"));
}

#[test]
fn filters_and_pages_bound_the_answer() {
    let s = snapshot();
    let failing = page(
        &s,
        TargetsQuery {
            state: Some(JobState::Failing),
            ..Default::default()
        },
    );
    assert_eq!(failing.active.total, 1);
    // The summary still counts everything.
    assert_eq!(failing.summary.values().sum::<usize>(), 4);

    let by_label = page(
        &s,
        TargetsQuery {
            q: Some("PAYMENTS".into()),
            ..Default::default()
        },
    );
    assert_eq!(by_label.active.total, 4);
    assert_eq!(by_label.dropped.total, 0);

    let p = page(
        &s,
        TargetsQuery {
            per_page: Some(3),
            page: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(
        (p.active.page, p.active.pages, p.active.items.len()),
        (2, 2, 1)
    );
    let p = page(
        &s,
        TargetsQuery {
            per_page: Some(1_000_000),
            page: Some(99),
            ..Default::default()
        },
    );
    assert_eq!((p.active.per_page, p.active.page), (MAX_PER_PAGE, 1));
}

#[test]
fn thousands_of_jobs_page_without_losing_any() {
    let base = job_set();
    let template = base.jobs[0].clone();
    let jobs = (0..5000)
        .map(|i| {
            let mut j = template.clone();
            j.id = format!("job-{i:05}");
            j.address = format!("10.1.{}.{}:6060", i / 250, i % 250);
            j
        })
        .collect();
    let s = TargetsSnapshot {
        jobs: Arc::new(JobSet {
            jobs,
            sinks: base.sinks.clone(),
            ebpf: None,
        }),
        ..Default::default()
    };
    let derived = Derived::compute(s.jobs.clone());
    let mut seen = std::collections::BTreeSet::new();
    for n in 1..=50 {
        let p = build(
            &s,
            &derived,
            &TargetsQuery {
                page: Some(n),
                ..Default::default()
            },
        );
        assert_eq!(p.active.items.len(), DEFAULT_PER_PAGE);
        seen.extend(p.active.items.into_iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), 5000);
}

#[test]
fn the_html_escapes_label_values() {
    let s = snapshot();
    let p = page(&s, TargetsQuery::default());
    let response = render(&p, &TargetsQuery::default(), SystemTime::now());
    let body =
        futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 24)).unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(!body.contains("<b>payments</b>"), "unescaped label value");
    assert!(body.contains("&lt;b&gt;payments&lt;/b&gt;"));
    assert!(body.contains("cannot connect: Connection refused"));
}
