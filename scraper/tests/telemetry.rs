//! The scraper's own endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kubeprof_pprof::{self as pprof, DecodeLimits};
use kubeprof_scraper::{Metrics, telemetry::Telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_readiness_and_self_profile() {
    kubeprof_scraper::install_default_provider();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.missed_scrapes.inc_by(3);
    let telemetry = Telemetry::new(registry);
    let shutdown = CancellationToken::new();
    let addr = telemetry
        .serve("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let get = |path: &str| reqwest::get(format!("http://{addr}{path}"));

    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(text.contains("kubeprof_missed_scrapes_total 3"), "{text}");
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    telemetry.set_ready(true);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    // Burn some CPU so the profile has samples, while two profiles are asked for at once.
    let busy = std::thread::spawn(|| {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(1500) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    });
    let (first, second) = tokio::join!(get("/debug/pprof/profile?seconds=1"), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        get("/debug/pprof/profile?seconds=1").await
    });
    busy.join().unwrap();
    let first = first.unwrap();
    assert_eq!(first.status(), 200);
    let body = first.bytes().await.unwrap();
    let profile = pprof::decode(&body, &DecodeLimits::default()).unwrap();
    pprof::validate(&profile).unwrap();
    assert!(
        !profile.sample.is_empty(),
        "the self-profile has no samples"
    );
    // A second concurrent request waits for the first to end, then gets its own profile (Go
    // refuses it; a scraper profiling continuously would then lock people out).
    let second = second.unwrap();
    assert_eq!(
        second.status(),
        200,
        "a second concurrent CPU profile waits its turn"
    );
    let body = second.bytes().await.unwrap();
    pprof::validate(&pprof::decode(&body, &DecodeLimits::default()).unwrap()).unwrap();
    assert_eq!(
        get("/debug/pprof/profile?seconds=999")
            .await
            .unwrap()
            .status(),
        400
    );
    shutdown.cancel();
}
