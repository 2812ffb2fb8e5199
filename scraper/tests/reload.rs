//! The standalone file is reloaded on change and on SIGHUP; a broken edit keeps the old jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use kubeprof_scraper::{Config, FileSource, JobSource, Metrics, OutcomeLabels, SecretsDir};
use tokio_util::sync::CancellationToken;

fn body(addr: &str, interval: &str) -> String {
    format!(
        "targets:\n  - name: demo\n    addresses: [\"{addr}\"]\n    interval: {interval}\n    scrapeTimeout: 1s\nsinks:\n  - name: local\n    file: {{directory: ./p}}\n"
    )
}

#[tokio::test]
async fn changes_apply_and_broken_edits_keep_the_previous_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraper.yaml");
    std::fs::write(&path, body("127.0.0.1:1", "15s")).unwrap();
    let initial = Config::load(&path.to_string_lossy()).unwrap().job_set();
    let metrics = Metrics::unregistered();
    let shutdown = CancellationToken::new();
    let source = FileSource::start(
        path.clone(),
        initial.clone(),
        Duration::from_millis(50),
        std::sync::Arc::new(SecretsDir(None)),
        metrics.clone(),
        shutdown.clone(),
    );
    let mut rx = source.subscribe();
    assert_eq!(*rx.borrow_and_update().as_ref(), initial);

    // A new interval: same job ids (the scheduler updates in place), new interval.
    std::fs::write(&path, body("127.0.0.1:1", "30s")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let changed = rx.borrow_and_update().clone();
    assert_eq!(changed.jobs.len(), initial.jobs.len());
    assert!(
        changed
            .jobs
            .iter()
            .zip(&initial.jobs)
            .all(|(a, b)| a.id == b.id)
    );
    assert!(changed.jobs.iter().all(|j| j.interval.to_string() == "30s"));

    // A broken edit: counted, and the jobs stay.
    std::fs::write(&path, "targets: [this is not a target\n").unwrap();
    let failures = || {
        metrics
            .reloads
            .get_or_create(&OutcomeLabels {
                outcome: "failure".into(),
            })
            .get()
    };
    for _ in 0..100 {
        if failures() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures(), 1);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(rx.borrow().jobs, changed.jobs);

    // SIGHUP re-reads even an unchanged (now fixed) file.
    std::fs::write(&path, body("127.0.0.1:2", "30s")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(
        rx.borrow_and_update()
            .jobs
            .iter()
            .all(|j| j.address == "127.0.0.1:2")
    );
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let successes = metrics
        .reloads
        .get_or_create(&OutcomeLabels {
            outcome: "success".into(),
        })
        .get();
    assert!(successes >= 3, "{successes}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_basic_credentials_come_from_files() {
    use std::sync::Arc;

    use kubeprof_scraper::{Fetcher, SecretsDir};
    let target = common::FakeTarget::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("password"), "pw").unwrap();
    let fetcher = Fetcher::new(Arc::new(SecretsDir(None)));
    for (auth, expected) in [
        (
            format!("    bearerTokenFile: {}/token", dir.path().display()),
            "Bearer t0ken",
        ),
        (
            format!(
                "    basicAuth: {{username: me, passwordFile: {}/password}}",
                dir.path().display()
            ),
            "Basic bWU6cHc=",
        ),
    ] {
        let config = Config::parse(&format!(
            "targets:\n  - name: demo\n    addresses: [\"{}\"]\n{auth}\nsinks:\n  - name: local\n    file: {{directory: ./p}}\n",
            target.addr
        ))
        .unwrap();
        let job = config
            .job_set()
            .jobs
            .into_iter()
            .find(|j| j.profile.name == "goroutine")
            .unwrap();
        fetcher.fetch(&job, 1 << 20).await.unwrap();
        assert_eq!(target.last_authorization().as_deref(), Some(expected));
    }
    // A missing credential file is an error naming the file, not a panic.
    let config = Config::parse(&format!(
        "targets:\n  - name: demo\n    addresses: [\"{}\"]\n    bearerTokenFile: /nonexistent/token\nsinks:\n  - name: local\n    file: {{directory: ./p}}\n",
        target.addr
    ))
    .unwrap();
    let job = config.job_set().jobs.into_iter().next().unwrap();
    let err = fetcher.fetch(&job, 1 << 20).await.unwrap_err();
    assert_eq!(err.reason().as_str(), "credential");
    assert!(err.to_string().contains("/nonexistent/token"), "{err}");
}

#[tokio::test]
async fn a_reload_with_an_unbuildable_sink_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraper.yaml");
    std::fs::write(&path, body("127.0.0.1:1", "15s")).unwrap();
    let initial = Config::load(&path.to_string_lossy()).unwrap().job_set();
    let metrics = Metrics::unregistered();
    let source = FileSource::start(
        path.clone(),
        initial.clone(),
        Duration::from_millis(50),
        std::sync::Arc::new(SecretsDir(None)),
        metrics.clone(),
        CancellationToken::new(),
    );
    let rx = source.subscribe();
    // The only sink renamed to one whose URL cannot be parsed: jobs would point at it.
    std::fs::write(
        &path,
        "targets:\n  - name: demo\n    addresses: [\"127.0.0.1:1\"]\n    scrapeTimeout: 1s\nsinks:\n  - name: remote\n    pyroscope: {url: \"http://[::1:4040\"}\n",
    )
    .unwrap();
    let count = |outcome: &str| {
        metrics
            .reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .get()
    };
    for _ in 0..250 {
        if count("failure") + count("success") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((count("success"), count("failure")), (0, 1));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(*rx.borrow(), std::sync::Arc::new(initial));
}
