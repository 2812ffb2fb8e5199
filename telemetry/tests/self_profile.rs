//! `/debug/pprof/profile` where the root filesystem is read-only: the chart runs both binaries
//! with `readOnlyRootFilesystem`, and the profiler must still answer.
//!
//! The profiler picks its scratch directory once per process, so each scenario runs in a child
//! process (this test binary again, running one `#[ignore]`d test) with its own `TMPDIR`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::Path,
    process::Command,
};

use kubeprof_telemetry::Telemetry;
use pprof::protos::Message as _;
use tokio_util::sync::CancellationToken;

/// Runs `test` of this binary in a child with `TMPDIR=tmpdir`; its output on failure.
fn run_child(test: &str, tmpdir: &Path) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TMPDIR", tmpdir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} with TMPDIR={}:\n{stdout}\n{}",
        tmpdir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A GET over plain HTTP/1.1; (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the test reads bodies with a length only:\n{head}"
    );
    (status, response[split + 4..].to_vec())
}

/// Serves the endpoints, asks for a one-second CPU profile, and checks it is a pprof CPU profile.
fn serve_and_profile() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new(Default::default());
    let addr = runtime
        .block_on(telemetry.serve("127.0.0.1:0".parse().unwrap(), shutdown.clone()))
        .unwrap();
    let (status, body) = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut raw)
        .unwrap();
    let profile = pprof::protos::Profile::decode(&raw[..]).unwrap();
    let name = |i: i64| profile.string_table[i as usize].clone();
    let types: Vec<(String, String)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.ty), name(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("samples".to_string(), "count".to_string()),
            ("cpu".to_string(), "nanoseconds".to_string())
        ]
    );
    // A second profile after the first: the profiler re-creates its buffer when it stops.
    let (status, body) = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    shutdown.cancel();
}

#[test]
#[ignore = "run by the tests above in a child process with its own TMPDIR"]
fn child_serves_a_cpu_profile() {
    serve_and_profile();
}

#[test]
#[ignore = "run by cpu_profile_after_a_client_hung_up in a child process"]
fn child_profiles_after_a_client_hung_up() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new(Default::default());
    let addr = runtime
        .block_on(telemetry.serve("127.0.0.1:0".parse().unwrap(), shutdown.clone()))
        .unwrap();
    // A scraper whose timeout is shorter than the profile it asked for: it hangs up.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /debug/pprof/profile?seconds=30 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(stream);
    // The next scrape gets a profile, not "a CPU profile is already running" for ever. The
    // server notices the hang-up as soon as it reads the closed connection; ask until then.
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (status, body) = get(addr, "/debug/pprof/profile?seconds=1");
        if status == 200 {
            shutdown.cancel();
            return;
        }
        answers.push(format!(
            "{status} {}",
            String::from_utf8_lossy(&body).trim()
        ));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("no profile after a client hung up: {answers:?}");
}

#[test]
fn cpu_profile_after_a_client_hung_up() {
    let dir = tempfile::tempdir().unwrap();
    run_child("child_profiles_after_a_client_hung_up", dir.path());
}

#[test]
fn cpu_profile_works_when_tmpdir_does_not_exist() {
    // As in a pod with a read-only root and nothing mounted at /tmp: the profiler falls back to
    // /dev/shm, which every container runtime mounts writable.
    if tempfile::NamedTempFile::new_in("/dev/shm").is_err() {
        println!("SKIPPED: /dev/shm is not writable here, so there is nothing to fall back to");
        return;
    }
    run_child(
        "child_serves_a_cpu_profile",
        Path::new("/nonexistent/kubeprof-tmp"),
    );
}

#[test]
fn cpu_profile_works_when_tmpdir_is_not_a_directory() {
    if tempfile::NamedTempFile::new_in("/dev/shm").is_err() {
        println!("SKIPPED: /dev/shm is not writable here, so there is nothing to fall back to");
        return;
    }
    // A regular file: nothing can be created under it, not even by root (who ignores a
    // read-only mode bit, so chmod could not make this test meaningful when run as root).
    let file = tempfile::NamedTempFile::new().unwrap();
    run_child("child_serves_a_cpu_profile", file.path());
}

#[test]
fn cpu_profile_works_with_a_writable_tmpdir() {
    let dir = tempfile::tempdir().unwrap();
    run_child("child_serves_a_cpu_profile", dir.path());
}
