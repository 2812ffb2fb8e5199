//! `/targets` and `/ui` over HTTP, as a browser or `curl` sees them: the live scrape loop's
//! health, no way out of the file sink's directory, every label and function name escaped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::SocketAddr, path::Path, sync::Arc};

use common::FakeTarget;
use kubeprof_pprof::{self as pprof, DecodeLimits};
use kubeprof_scraper::{
    Config, Fetcher, JobSet, Metrics, Outputs, Pipeline, RetryConfig, Scheduler, SecretsDir,
    telemetry::Telemetry,
    ui::{self, TargetsSnapshot, TargetsSource, UiState, live::LiveTargets},
};
use tokio_util::sync::CancellationToken;

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn get(addr: SocketAddr, path_and_query: &str, accept: &str) -> (u16, String) {
    // A raw request: reqwest would normalize `..` in the path before sending it.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path_and_query} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[derive(Debug)]
struct Fixed(TargetsSnapshot);

impl TargetsSource for Fixed {
    fn snapshot(&self) -> TargetsSnapshot {
        self.0.clone()
    }
}

fn file_sink_set(dir: &Path) -> Arc<JobSet> {
    let config = Config::parse(&format!(
        "targets: []\nsinks:\n  - name: local\n    file: {{directory: {}}}\n",
        dir.display()
    ))
    .unwrap();
    Arc::new(config.job_set())
}

/// A store with one CPU profile of `service` whose labels and function names are hostile.
fn hostile_store(root: &Path) -> u64 {
    let dir = root.join("shop/checkout/process_cpu");
    std::fs::create_dir_all(&dir).unwrap();
    let mut profile =
        pprof::decode(&common::fixture("cpu.pb.gz"), &DecodeLimits::default()).unwrap();
    for s in profile.string_table.iter_mut() {
        if s == "main.hotCPULeaf" {
            *s = "main.<img src=x onerror=alert(1)>".into();
        }
    }
    std::fs::write(dir.join("1000.pb.gz"), pprof::encode_gzip(&profile)).unwrap();
    std::fs::write(
        dir.join("1000.labels.json"),
        r#"{"service_name":"shop/checkout","team":"<script>alert(1)</script>"}"#,
    )
    .unwrap();
    1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_url_reads_outside_the_file_sinks_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("profiles");
    hostile_store(&root);
    std::fs::write(dir.path().join("secret.pb.gz"), b"TOP-SECRET").unwrap();
    std::fs::create_dir_all(dir.path().join("outside/cpu")).unwrap();
    std::fs::write(dir.path().join("outside/cpu/7.pb.gz"), b"TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("evil")).unwrap();
    let state = UiState::with_source(Arc::new(Fixed(TargetsSnapshot {
        jobs: file_sink_set(&root),
        ..Default::default()
    })));
    let addr = serve(ui::router(state)).await;

    let (status, body) = get(
        addr,
        "/ui/download?sink=local&service=shop/checkout&type=process_cpu&at=1000",
        "*/*",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    for url in [
        "/ui/download?sink=local&service=..&type=cpu&at=7",
        "/ui/download?sink=local&service=..%2Foutside&type=cpu&at=7",
        "/ui/download?sink=local&service=%2E%2E&type=outside%2Fcpu&at=7",
        "/ui/download?sink=local&service=shop/checkout&type=..%2F..%2F..&at=1000",
        "/ui/download?sink=local&service=%2Fetc&type=passwd&at=1",
        "/ui/download?sink=local&service=evil&type=cpu&at=7",
        "/ui/download?sink=..&service=outside&type=cpu&at=7",
        "/ui/download?sink=local&service=shop%5C..%5C..&type=cpu&at=7",
        "/ui/flame?sink=local&service=evil&type=cpu&at=7",
        "/ui/flame.svg?sink=local&service=..&type=cpu&from=0",
        "/ui/profiles?sink=local&service=evil&type=cpu",
        "/ui/diff?sink=local&service=..&type=cpu",
        "/ui/../secret.pb.gz",
        "/ui/download/../../secret.pb.gz",
        "/ui/assets/../../secret.pb.gz",
    ] {
        let (status, body) = get(addr, url, "*/*").await;
        assert!(matches!(status, 400 | 404), "{url}: HTTP {status}: {body}");
        assert!(!body.contains("TOP-SECRET"), "{url} leaked: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_function_names_are_escaped_on_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("profiles");
    let at = hostile_store(&root);
    let state = UiState::with_source(Arc::new(Fixed(TargetsSnapshot {
        jobs: file_sink_set(&root),
        ..Default::default()
    })));
    let addr = serve(ui::router(state)).await;
    let q = format!("sink=local&service=shop/checkout&type=process_cpu&at={at}");
    for url in [
        "/ui".to_string(),
        "/ui/profiles?sink=local&service=shop/checkout&type=process_cpu".into(),
        format!("/ui/flame?{q}"),
        format!("/ui/flame.svg?{q}"),
        format!(
            "/ui/diff?sink=local&service=shop/checkout&type=process_cpu&base_from={at}&base_to={at}&from={at}&to={at}"
        ),
        format!("/ui/diff.svg?sink=local&service=shop/checkout&type=process_cpu&from={at}&to={at}"),
    ] {
        let (status, body) = get(addr, &url, "text/html").await;
        assert_eq!(status, 200, "{url}: {body}");
        assert!(!body.contains("<script>alert"), "{url}: {body}");
        assert!(!body.contains("<img src=x"), "{url}: {body}");
    }
    let (_, page) = get(addr, &format!("/ui/flame?{q}"), "text/html").await;
    assert!(
        page.contains("team=<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>"),
        "{page}"
    );
    assert!(
        page.contains("main.&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    // A query value never breaks out of its attribute either.
    let (_, page) = get(
        addr,
        &format!("/ui/flame?{q}&s=%22%3E%3Cscript%3E"),
        "text/html",
    )
    .await;
    assert!(!page.contains("\"><script>"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_tell_a_healthy_and_a_failing_job_apart() {
    let target = FakeTarget::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "targets:\n  - name: healthy\n    addresses: [\"{}\"]\n    interval: 1s\n    scrapeTimeout: 500ms\n    profiles: {{cpu: {{enabled: false}}, memory: {{enabled: false}}, goroutine: {{enabled: true}}, mutex: {{enabled: false}}, block: {{enabled: false}}}}\n  - name: broken\n    addresses: [\"{closed}\"]\n    interval: 1s\n    scrapeTimeout: 500ms\n    labels: {{note: \"<i>x</i>\"}}\n    profiles: {{cpu: {{enabled: false}}, memory: {{enabled: false}}, goroutine: {{enabled: true}}, mutex: {{enabled: false}}, block: {{enabled: false}}}}\nsinks:\n  - name: local\n    file: {{directory: {}}}\n",
        target.addr,
        dir.path().display()
    ))
    .unwrap();
    let set = config.job_set();
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
        DecodeLimits::default(),
        8,
    ));
    let mut scheduler = Scheduler::new(pipeline.clone(), CancellationToken::new());
    scheduler.apply(set.jobs.clone());
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(set));
    let state = UiState::default();
    state.set_source(Arc::new(LiveTargets::new(
        pipeline.clone(),
        rx,
        metrics,
        "standalone, test".into(),
    )));
    // Through the telemetry port's hook, as the binary serves it.
    let telemetry = Telemetry::new(Default::default()).with_routes(ui::router(state));
    let addr = serve(telemetry.router()).await;

    let mut json = serde_json::Value::Null;
    for _ in 0..400 {
        let (_, body) = get(addr, "/targets", "application/json").await;
        json = serde_json::from_str(&body).unwrap();
        if json["summary"]["up"] == 1 && json["summary"]["failing"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let items = json["active"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{json:#}");
    let failing = &items[0];
    assert_eq!(failing["state"], "failing", "{json:#}");
    assert_eq!(failing["address"], closed.to_string());
    assert_eq!(failing["reason"], "connect");
    assert!(failing["lastError"].as_str().unwrap().contains("connect"));
    assert!(failing["nextScrape"].is_string());
    let up = &items[1];
    assert_eq!(up["state"], "up", "{json:#}");
    assert_eq!(up["address"], target.addr.to_string());
    assert!(up["lastScrape"].is_string() && up["lastDurationMs"].is_u64());
    assert_eq!(up["labelsAfter"]["service_name"], "healthy");
    assert_eq!(up["sinks"][0]["name"], "local");

    let (status, html) = get(addr, "/targets", "text/html").await;
    assert_eq!(status, 200);
    assert!(html.contains("class=\"target state-failing\""), "{html}");
    assert!(html.contains("class=\"target state-up\""), "{html}");
    assert!(html.contains("&lt;i&gt;x&lt;/i&gt;") && !html.contains("<i>x</i>"));
    // The telemetry endpoints are still there.
    assert_eq!(get(addr, "/healthz", "*/*").await.0, 200);
    scheduler.stop().await;
    drop(outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_merged_and_profiles_of_another_kind_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("profiles");
    let t = root.join("demo/process_cpu");
    std::fs::create_dir_all(&t).unwrap();
    for ms in [1000, 2000, 3000] {
        std::fs::write(t.join(format!("{ms}.pb.gz")), common::fixture("cpu.pb.gz")).unwrap();
    }
    // A heap profile has no `cpu` sample type; garbage does not decode.
    std::fs::write(t.join("500.pb.gz"), common::fixture("heap.pb.gz")).unwrap();
    std::fs::write(t.join("5000.pb.gz"), b"not a profile").unwrap();
    let state = UiState::with_source(Arc::new(Fixed(TargetsSnapshot {
        jobs: file_sink_set(&root),
        ..Default::default()
    })));
    let addr = serve(ui::router(state)).await;
    let self_of_hot = |page: &str| -> u64 {
        // The top functions table: `<td>self</td>...<a ...>main.hotCPULeaf</a>`.
        let row = page
            .split("<tr class=\"function\">")
            .find(|r| r.contains(">main.hotCPULeaf</a>"))
            .unwrap_or_else(|| panic!("{page}"));
        row.trim_start_matches("<td>")
            .split("</td>")
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (status, one) = get(
        addr,
        "/ui/flame?sink=local&service=demo&type=process_cpu&at=1000",
        "text/html",
    )
    .await;
    assert_eq!(status, 200, "{one}");
    let (status, merged) = get(
        addr,
        "/ui/flame?sink=local&service=demo&type=process_cpu&from=1000&to=3000",
        "text/html",
    )
    .await;
    assert_eq!(status, 200, "{merged}");
    assert!(merged.contains("3 profiles merged"), "{merged}");
    assert_eq!(self_of_hot(&merged), 3 * self_of_hot(&one));
    let (status, all) = get(
        addr,
        "/ui/flame?sink=local&service=demo&type=process_cpu&from=0",
        "text/html",
    )
    .await;
    assert_eq!(status, 200, "{all}");
    // The newest readable profile decides the sample type; the heap one is skipped.
    assert!(all.contains("3 profiles merged"), "{all}");
    assert!(
        all.contains("2 could not be read or lack this sample type"),
        "{all}"
    );
    assert_eq!(self_of_hot(&all), 3 * self_of_hot(&one));
}
