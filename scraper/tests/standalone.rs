//! The `kubeprof-scraper` binary as a user runs it: a config file, profiles in a folder,
//! clean exit on SIGTERM, exit code 2 with the field named on a bad config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_kubeprof-scraper");

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("scraper.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn invalid_configs_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = "sinks:\n  - name: local\n    file: {directory: ./p}\n";
    for (body, field) in [
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    interval: 10s\n    scrapeTimeout: 10s\n{sinks}"), "targets[0].scrapeTimeout"),
        (format!("targets:\n  - name: a\n    addresses: [\"nohost\"]\n{sinks}"), "targets[0].addresses[0]"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    interval: 15sec\n{sinks}"), "targets[0].interval: invalid duration \"15sec\""),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    intervall: 15s\n{sinks}"), "unknown field `intervall`"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    sinks: [nope]\n{sinks}"), "targets[0].sinks[0]"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    relabelings:\n      - action: hashmod\n        targetLabel: x\n{sinks}"), "targets[0].relabelings"),
        ("targets: []\nsinks:\n  - name: x\n    file: {directory: a}\n    pyroscope: {url: \"http://p\"}\n".to_string(), "sinks[0]"),
        // `run` refused these sinks while check-config accepted them.
        ("targets: []\nsinks:\n  - name: x\n    pyroscope: {url: \"http://[::1:4040\"}\n".to_string(), "sinks[0]"),
        // Accepted, then every job panicked after its first scrape.
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    interval: 9223372036854775813s\n{sinks}"), "24h"),
        // Accepted by check-config on main.
        ("targets: []\nsinks:\n  - name: x\n    file: {directory: a, retentionByts: 5}\n".to_string(), "sinks[0].file.retentionByts"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    profiles: {{cpu: {{secs: 5}}}}\n{sinks}"), "targets[0].profiles.cpu.secs"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    scrapeTimeout: 0s\n{sinks}"), "targets[0].scrapeTimeout"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    interval: 1ms\n    scrapeTimeout: 0.5ms\n{sinks}"), "targets[0].interval"),
        (format!("targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n    profiles: {{cpu: {{seconds: 0}}}}\n{sinks}"), "targets[0].profiles.cpu.seconds"),
        (format!("scrape: {{maxProfileBytes: 0}}\n{sinks}"), "scrape.maxProfileBytes"),
        (format!("targets:\n  - name: !!binary aGVsbG8=\n    addresses: [\"127.0.0.1:1\"]\n{sinks}"), "tags"),
        (format!("targets: {}\n{sinks}", "[".repeat(100_000)), "nested more than 64"),
        // The eBPF section: bounded, selecting something, no unknown keys.
        (format!("ebpf: {{sampleRate: 0, processes: {{all: true}}}}\n{sinks}"), "ebpf.sampleRate"),
        (format!("ebpf: {{sampleRate: 5000, processes: {{all: true}}}}\n{sinks}"), "ebpf.sampleRate"),
        (format!("ebpf: {{period: 500ms, processes: {{all: true}}}}\n{sinks}"), "ebpf.period"),
        (format!("ebpf: {{period: 15sec, processes: {{all: true}}}}\n{sinks}"), "ebpf.period: invalid duration"),
        (format!("ebpf: {{processes: {{}}}}\n{sinks}"), "ebpf.processes: selects nothing"),
        (format!("ebpf: {{processes: {{all: true, pids: [1]}}}}\n{sinks}"), "ebpf.processes"),
        (format!("ebpf: {{processes: {{comm: [x]}}}}\n{sinks}"), "unknown field `comm`"),
        (format!("ebpf: {{processes: {{comms: [a-name-longer-than-15]}}}}\n{sinks}"), "ebpf.processes.comms[0]"),
        (format!("ebpf: {{processes: {{executables: [bin/app]}}}}\n{sinks}"), "ebpf.processes.executables[0]"),
        (format!("ebpf: {{processes: {{cgroups: [/a/../b]}}}}\n{sinks}"), "ebpf.processes.cgroups[0]"),
        (format!("ebpf: {{processes: {{pids: [0]}}}}\n{sinks}"), "ebpf.processes.pids[0]"),
        (format!("ebpf: {{processes: {{all: true}}, sinks: [nope]}}\n{sinks}"), "ebpf.sinks[0]"),
        (format!("ebpf: {{processes: {{all: true}}, relabelings: [{{action: hashmod, targetLabel: x}}]}}\n{sinks}"), "ebpf.relabelings"),
        (format!("ebpf: {{processes: {{all: true}}, relabelings: [{{sourceLabel: [a]}}]}}\n{sinks}"), "ebpf.relabelings[0].sourceLabel"),
        (format!("ebpf: {{processes: {{all: true}}, rate: 19}}\n{sinks}"), "unknown field `rate`"),
    ] {
        let path = write_config(dir.path(), &body);
        for args in [vec!["run", "--config"], vec!["check-config"]] {
            let out = Command::new(BIN).args(&args).arg(&path).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} on {body}: {stderr}");
            assert!(stderr.contains(field), "{field:?} not named in: {stderr}");
        }
    }
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

#[test]
fn credential_files_that_cannot_be_used_are_named_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing-token");
    let a_dir = dir.path().join("a-directory");
    std::fs::create_dir(&a_dir).unwrap();
    let sinks = "sinks:\n  - name: local\n    file: {directory: ./p}\n";
    let target = "targets:\n  - name: a\n    addresses: [\"127.0.0.1:1\"]\n";
    for (auth, field, why) in [
        (
            format!("    bearerTokenFile: {}\n", missing.display()),
            "targets[0].bearerTokenFile",
            "does not exist",
        ),
        (
            format!("    bearerTokenFile: {}\n", empty.display()),
            "targets[0].bearerTokenFile",
            "is empty",
        ),
        (
            format!(
                "    basicAuth: {{username: u, passwordFile: {}}}\n",
                a_dir.display()
            ),
            "targets[0].basicAuth.passwordFile",
            "is not readable",
        ),
        (
            format!(
                "    scheme: https\n    tlsConfig: {{caFile: {}}}\n",
                missing.display()
            ),
            "targets[0].tlsConfig.caFile",
            "does not exist",
        ),
    ] {
        let path = write_config(dir.path(), &format!("{target}{auth}{sinks}"));
        // Both commands, from one check: `run` used to start and fail every scrape instead.
        for args in [vec!["run", "--config"], vec!["check-config"]] {
            let out = Command::new(BIN).args(&args).arg(&path).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {auth}: {stderr}");
            assert!(stderr.contains(field), "{field} not named in: {stderr}");
            assert!(stderr.contains(why), "{why:?} not said in: {stderr}");
        }
    }
}

#[test]
fn the_embedded_default_is_valid() {
    let config = kubeprof_scraper::Config::parse(kubeprof_scraper::EMBEDDED_DEFAULT).unwrap();
    let set = config.job_set();
    assert!(
        set.jobs
            .iter()
            .any(|j| j.address == "127.0.0.1:9464" && j.profile.name == "process_cpu")
    );
    assert!(set.jobs.iter().any(|j| j.address == "127.0.0.1:6060"));
}

#[test]
fn the_ebpf_example_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/standalone/ebpf.yaml"
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("eBPF at 97 Hz every 15s"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_profiles_and_stops_cleanly_on_sigterm() {
    let target = common::FakeTarget::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "targets:\n  - name: demo\n    addresses: [\"{}\"]\n    interval: 1s\n    scrapeTimeout: 500ms\n    profiles:\n      cpu: {{seconds: 1}}\nsinks:\n  - name: local\n    file: {{directory: {}}}\n",
            target.addr,
            profiles.display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .args(["--listen", &listen.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let cpu_dir = profiles.join("demo/process_cpu");
    while std::fs::read_dir(&cpu_dir).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "no CPU profile within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its own endpoints answer, and /metrics counts the scrapes.
    kubeprof_scraper::install_default_provider();
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kubeprof_scrapes_total{type=\"process_cpu\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("http://{listen}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // SIGTERM: a clean exit.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    for kind in ["process_cpu", "memory", "goroutine"] {
        assert!(
            profiles.join("demo").join(kind).is_dir(),
            "no {kind} folder"
        );
    }
}

#[test]
fn flamegraph_renders_a_stored_profile() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cpu.pb.gz");
    std::fs::write(&input, common::fixture("cpu.pb.gz")).unwrap();
    let out = Command::new(BIN)
        .arg("flamegraph")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(dir.path().join("cpu.svg")).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("main.hotCPULeaf"));

    let garbage = dir.path().join("garbage.pb.gz");
    std::fs::write(&garbage, b"not a profile").unwrap();
    let out = Command::new(BIN)
        .arg("flamegraph")
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pprof profile"));
}
