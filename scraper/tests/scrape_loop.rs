//! The scrape loop against a fake Go service: what arrives in the sinks, timing, faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Behaviour, FakeTarget};
use kubeprof_crds::job::ScrapeJob;
use kubeprof_pprof::DecodeLimits;
use kubeprof_scraper::{
    Config, Fetcher, Metrics, Outputs, Pipeline, RetryConfig, Scheduler, ScrapeLabels, SecretsDir,
    phase,
};
use tokio_util::sync::CancellationToken;

fn config(addr: &str, dir: &std::path::Path, extra: &str) -> Config {
    Config::parse(&format!(
        "targets:\n  - name: demo\n    addresses: [\"{addr}\"]\n    interval: 1s\n    scrapeTimeout: 500ms\n{extra}\nsinks:\n  - name: local\n    file: {{directory: {}}}\n",
        dir.display()
    ))
    .unwrap()
}

struct Harness {
    scheduler: Scheduler,
    pipeline: Arc<Pipeline>,
    outputs: Outputs,
    metrics: Metrics,
}

fn harness(config: &Config) -> Harness {
    let metrics = Metrics::unregistered();
    let secrets = Arc::new(SecretsDir(None));
    let outputs = Outputs::start(
        &config.sinks,
        secrets.clone(),
        RetryConfig::default(),
        &metrics,
    )
    .unwrap();
    let pipeline = Arc::new(Pipeline::new(
        Fetcher::new(secrets),
        outputs.handle(),
        metrics.clone(),
        DecodeLimits {
            max_decompressed_bytes: 1 << 20,
            ..Default::default()
        },
        64,
    ));
    let scheduler = Scheduler::new(pipeline.clone(), CancellationToken::new());
    Harness {
        scheduler,
        pipeline,
        outputs,
        metrics,
    }
}

fn scrapes(m: &Metrics, kind: &str, outcome: &str) -> u64 {
    m.scrapes
        .get_or_create(&ScrapeLabels {
            r#type: kind.into(),
            outcome: outcome.into(),
        })
        .get()
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().to_string_lossy().ends_with(".pb.gz") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_arrives_with_labels_and_deltas() {
    let target = FakeTarget::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &target.addr.to_string(),
        dir.path(),
        "    labels: {team: core}\n    profiles:\n      cpu: {seconds: 1}",
    );
    let mut h = harness(&cfg);
    h.scheduler.apply(cfg.job_set().jobs);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    h.scheduler.stop().await;
    h.outputs.shutdown(Duration::from_secs(5)).await;

    let found = files(dir.path());
    for kind in ["process_cpu", "memory", "goroutine", "mutex", "block"] {
        let of_kind: Vec<_> = found
            .iter()
            .filter(|p| p.parent().unwrap().ends_with(format!("demo/{kind}")))
            .collect();
        assert!(!of_kind.is_empty(), "no {kind} profile in {found:?}");
        let labels: serde_json::Value = serde_json::from_slice(
            &std::fs::read(of_kind[0].with_extension("").with_extension("labels.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(labels["__name__"], kind);
        assert_eq!(labels["service_name"], "demo");
        assert_eq!(labels["team"], "core");
        assert!(
            labels.get("__address__").is_none(),
            "internal labels leaked: {labels}"
        );
    }
    // mutex and block send nothing on the first scrape (no baseline), then deltas.
    assert!(scrapes(&h.metrics, "mutex", "baseline") >= 1);
    assert!(scrapes(&h.metrics, "mutex", "success") >= 1);
    // CPU: ?seconds= is sent, and scrapes never overlap.
    assert_eq!(
        target.last_query("/debug/pprof/profile").as_deref(),
        Some("seconds=1")
    );
    assert_eq!(target.max_concurrent_cpu(), 1);
    assert_eq!(h.metrics.missed_scrapes.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_timers_survive_job_changes() {
    let target = FakeTarget::start().await;
    let dir = tempfile::tempdir().unwrap();
    let only = |types: &str| {
        let mut profiles = String::from("    profiles:\n");
        for t in ["cpu", "memory", "goroutine", "mutex", "block"] {
            profiles.push_str(&format!("      {t}: {{enabled: {}}}\n", types.contains(t)));
        }
        config(&target.addr.to_string(), dir.path(), &profiles)
    };
    let mut h = harness(&only("goroutine"));
    let goroutine_job = only("goroutine").job_set().jobs;
    assert_eq!(goroutine_job.len(), 1);
    h.scheduler.apply(goroutine_job.clone());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Adding a job and changing nothing about the goroutine job keeps its phase.
    h.scheduler.apply(only("goroutine,block").job_set().jobs);
    assert_eq!(h.scheduler.len(), 2);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    h.scheduler.apply(only("block").job_set().jobs);
    assert_eq!(h.scheduler.len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.scheduler.stop().await;

    let times = target.requests("/debug/pprof/goroutine");
    assert!(times.len() >= 4, "{} goroutine scrapes", times.len());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            // A restarted timer shows as an extra scrape (a short gap) or a skipped one (~2 s);
            // the margin is for a loaded machine's late wake-ups.
            gap > Duration::from_millis(500) && gap < Duration::from_millis(1500),
            "goroutine timer was disturbed: gap {gap:?}"
        );
    }
    // Removed: no goroutine scrape in the last second.
    let last = *times.last().unwrap();
    assert!(last.elapsed() > Duration::from_millis(1000));
    assert!(!target.requests("/debug/pprof/block").is_empty());
}

#[test]
fn phase_is_stable_and_spread() {
    let interval = Duration::from_secs(15);
    let job_ids: Vec<String> = (0..1000).map(|i| format!("{i:016x}")).collect();
    assert_eq!(phase(&job_ids[0], interval), phase(&job_ids[0], interval));
    let mut buckets = [0; 15];
    for id in &job_ids {
        let p = phase(id, interval);
        assert!(p < interval);
        buckets[p.as_secs() as usize] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (30..=110).contains(&n)),
        "{buckets:?}"
    );
}

async fn one_scrape(
    behaviour: Behaviour,
    kind: &str,
    profiles: &str,
    wait: Duration,
) -> (Metrics, Arc<Pipeline>, ScrapeJob) {
    let target = FakeTarget::start().await;
    target.set(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&target.addr.to_string(), dir.path(), profiles);
    cfg.scrape.max_profile_bytes = 1 << 20;
    let mut h = harness(&cfg);
    let jobs = cfg.job_set().jobs;
    let job = jobs
        .iter()
        .find(|j| j.profile.name == kind)
        .unwrap()
        .clone();
    h.scheduler.apply(vec![job.clone()]);
    tokio::time::sleep(wait).await;
    h.scheduler.stop().await;
    (h.metrics, h.pipeline, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_counted_per_reason_and_reported_in_health() {
    let profiles = "    profiles:\n      cpu: {enabled: false}";
    let (m, p, job) = one_scrape(
        Behaviour::Hang,
        "goroutine",
        profiles,
        Duration::from_millis(1900),
    )
    .await;
    assert!(scrapes(&m, "goroutine", "timeout") >= 1);
    let health = p.health();
    assert!(health[&job.id].consecutive_failures >= 1);
    assert!(
        health[&job.id]
            .last_error
            .as_deref()
            .unwrap()
            .contains("no complete answer")
    );

    let (m, _, _) = one_scrape(
        Behaviour::Garbage,
        "goroutine",
        profiles,
        Duration::from_millis(1200),
    )
    .await;
    assert!(scrapes(&m, "goroutine", "decode_error") >= 1);
    // The fine reason reaches /metrics, not only the logs.
    let rejected = m
        .scrape_rejections
        .get_or_create(&kubeprof_scraper::TypeReasonLabels {
            r#type: "goroutine".into(),
            reason: "not_pprof".into(),
        })
        .get();
    assert!(rejected >= 1);

    let (m, _, _) = one_scrape(
        Behaviour::SlowHuge,
        "goroutine",
        profiles,
        Duration::from_millis(1900),
    )
    .await;
    assert!(
        scrapes(&m, "goroutine", "body_too_large") + scrapes(&m, "goroutine", "timeout") >= 1,
        "a slow 10 MB answer must end at the body limit or the deadline"
    );

    // A gzip bomb is refused by what its trailer announces, before it is decompressed: more
    // than half the decode budget can never be decoded within it.
    let (m, p, job) = one_scrape(
        Behaviour::GzipBomb,
        "goroutine",
        profiles,
        Duration::from_millis(1200),
    )
    .await;
    let too_large = m
        .scrape_rejections
        .get_or_create(&kubeprof_scraper::TypeReasonLabels {
            r#type: "goroutine".into(),
            reason: "too_large".into(),
        })
        .get();
    assert!(too_large >= 1);
    let error = p.health()[&job.id].last_error.clone().unwrap();
    assert!(error.contains("60 MiB (its gzip trailer says)"), "{error}");

    let (m, _, _) = one_scrape(
        Behaviour::Error,
        "goroutine",
        profiles,
        Duration::from_millis(1200),
    )
    .await;
    assert!(scrapes(&m, "goroutine", "http_error") >= 1);

    // An endless error page: only its start is read, so this is an HTTP error, not a timeout
    // (nor unbounded memory).
    let (m, _, _) = one_scrape(
        Behaviour::ErrorHuge,
        "goroutine",
        profiles,
        Duration::from_millis(1200),
    )
    .await;
    assert!(scrapes(&m, "goroutine", "http_error") >= 1);
    assert_eq!(scrapes(&m, "goroutine", "timeout"), 0);

    let (m, p, job) = one_scrape(
        Behaviour::Normal,
        "goroutine",
        profiles,
        Duration::from_millis(1200),
    )
    .await;
    assert!(scrapes(&m, "goroutine", "success") >= 1);
    assert!(p.health()[&job.id].last_success.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_answered_at_once_is_counted() {
    let (m, _, _) = one_scrape(
        Behaviour::Instant,
        "process_cpu",
        "    profiles:\n      cpu: {seconds: 1}",
        Duration::from_millis(1500),
    )
    .await;
    assert!(scrapes(&m, "process_cpu", "success") >= 1);
    let short = m
        .short_profiles
        .get_or_create(&kubeprof_scraper::TypeLabels {
            r#type: "process_cpu".into(),
        })
        .get();
    assert!(short >= 1, "a CPU profile covering 0 of 1 s went uncounted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_dropped_by_relabelling_is_not_scraped() {
    let target = FakeTarget::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &target.addr.to_string(),
        dir.path(),
        "    relabelings:\n      - sourceLabels: [__name__]\n        regex: goroutine\n        action: keep",
    );
    let mut h = harness(&cfg);
    h.scheduler.apply(cfg.job_set().jobs);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.scheduler.stop().await;
    assert!(!target.requests("/debug/pprof/goroutine").is_empty());
    assert!(target.requests("/debug/pprof/mutex").is_empty());
    assert!(target.requests("/debug/pprof/profile").is_empty());
}
