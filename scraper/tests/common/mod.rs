//! A fake Go service for the scraper's tests: serves the captured Go profiles over HTTP on
//! 127.0.0.1, records every request, and can misbehave on demand.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pprof-go")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How the fake service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Like Go's net/http/pprof.
    Normal,
    /// Accepts and never answers.
    Hang,
    /// Sends garbage.
    Garbage,
    /// Sends 10 MB slowly.
    SlowHuge,
    /// 500 Internal Server Error.
    Error,
    /// 500 Internal Server Error with an endless body.
    ErrorHuge,
    /// Answers a CPU profile at once, covering no time, whatever `seconds` asked.
    Instant,
    /// A gzip body whose trailer announces 60 MiB, as a gzip bomb's does.
    GzipBomb,
}

#[derive(Debug)]
pub struct Request {
    pub path: String,
    pub query: Option<String>,
    pub at: Instant,
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<Mutex<Vec<Request>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    scrapes: Arc<AtomicUsize>,
}

pub struct FakeTarget {
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeTarget {
    pub async fn start() -> Self {
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(Behaviour::Normal)),
            requests: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            scrapes: Arc::default(),
        };
        let app = Router::new()
            .route("/debug/pprof/{name}", get(handler))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared }
    }

    pub fn set(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = b;
    }

    pub fn requests(&self, path: &str) -> Vec<Instant> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.at)
            .collect()
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .last()
            .and_then(|r| r.authorization.clone())
    }

    pub fn last_query(&self, path: &str) -> Option<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.path == path)
            .and_then(|r| r.query.clone())
    }

    /// Most CPU profile requests that were open at once.
    pub fn max_concurrent_cpu(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

#[derive(serde::Deserialize)]
struct Params {
    seconds: Option<u64>,
}

async fn handler(
    State(s): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(params): Query<Params>,
    request: axum::extract::Request,
) -> Response {
    let path = format!("/debug/pprof/{name}");
    s.scrapes.fetch_add(1, Ordering::SeqCst);
    let n = s
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == path)
        .count();
    s.requests.lock().unwrap().push(Request {
        path: path.clone(),
        query: request.uri().query().map(str::to_owned),
        at: Instant::now(),
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let behaviour = *s.behaviour.lock().unwrap();
    match behaviour {
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK.into_response();
        }
        Behaviour::Garbage => {
            return (StatusCode::OK, "<html>not a profile</html>").into_response();
        }
        Behaviour::Error => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Behaviour::GzipBomb => {
            // What the scraper sees of a bomb before decompressing it: ~64 KB of gzip (here
            // padding in the header's extra field) announcing 60 MiB, within deflate's ~1000:1.
            let small = kubeprof_pprof::gzip(&[0x12, 0x00]);
            let mut body = small[..10].to_vec();
            body[3] |= 0x04;
            body.extend(65_000u16.to_le_bytes());
            body.extend(vec![0u8; 65_000]);
            body.extend(&small[10..small.len() - 4]);
            body.extend((60u32 << 20).to_le_bytes());
            return body.into_response();
        }
        Behaviour::ErrorHuge => {
            let stream = futures::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 << 10]))
            });
            let mut response = Response::new(Body::from_stream(stream));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return response;
        }
        Behaviour::SlowHuge => {
            let stream = futures::stream::unfold(0usize, |sent| async move {
                if sent >= 10 << 20 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 64 << 10])),
                    sent + (64 << 10),
                ))
            });
            return Response::new(Body::from_stream(stream));
        }
        Behaviour::Instant if name == "profile" => {
            let mut p = kubeprof_pprof::decode(&fixture("cpu.pb.gz"), &Default::default()).unwrap();
            p.duration_nanos = 0;
            return kubeprof_pprof::encode_gzip(&p).into_response();
        }
        Behaviour::Normal | Behaviour::Instant => {}
    }
    let body = match name.as_str() {
        "profile" => {
            // Go refuses a second concurrent CPU profile; count how many were open at once.
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(params.seconds.unwrap_or(30))).await;
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            fixture("cpu.pb.gz")
        }
        // Cumulative profiles alternate between the two captures, so deltas have content.
        "allocs" | "heap" => fixture(if n % 2 == 0 {
            "allocs.pb.gz"
        } else {
            "allocs-2.pb.gz"
        }),
        "mutex" => fixture(if n % 2 == 0 {
            "mutex.pb.gz"
        } else {
            "mutex-2.pb.gz"
        }),
        "block" => fixture(if n % 2 == 0 {
            "block.pb.gz"
        } else {
            "block-2.pb.gz"
        }),
        "goroutine" => fixture("goroutine.pb.gz"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([("content-type", "application/octet-stream")], body).into_response()
}

/// Waits (up to 5 s) until `check` holds; panics naming `what` otherwise.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Retries fast enough for tests.
pub fn fast_retry() -> kubeprof_scraper::RetryConfig {
    kubeprof_scraper::RetryConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}
