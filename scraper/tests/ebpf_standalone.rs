//! `kubeprof-scraper run` with an `ebpf:` section, as a user runs it: a C program built with
//! frame pointers is profiled by comm into the file sink, relabelled, readable by
//! `go tool pprof`; a process outside the selection contributes nothing; editing the file moves
//! the selection without a restart.
//!
//! They need root with BPF allowed (as on CI); elsewhere they print one `SKIPPED ...` line and
//! pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_kubeprof-scraper");

/// `main -> caller_a -> caller_b -> hot_leaf`, spinning for argv[1] seconds.
// The frame-pointer C program both the sampler and the scraper tests profile.
const SPIN_C: &str = include_str!("../../ebpf/tests/fixtures/spin.c");

/// Whether BPF may be used here; prints the SKIPPED line when not.
fn bpf_allowed(test: &str) -> bool {
    match kubeprof_ebpf::Profiler::start(kubeprof_ebpf::ProfilerConfig::default()) {
        Ok(_) => true,
        Err(e) if e.is_permission_denied() => {
            println!("SKIPPED {test}: BPF is not allowed here ({e})");
            false
        }
        Err(e) => panic!("the profiler did not start: {e}"),
    }
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join("spin.c");
    std::fs::write(&src, SPIN_C).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed");
    out
}

/// Kills the children when the test ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn config(profiles: &Path, comm: &str) -> String {
    format!(
        r#"targets: []
sinks:
  - name: local
    file: {{directory: "{}"}}
ebpf:
  sampleRate: 97
  period: 2s
  processes: {{comms: [{comm}]}}
  labels: {{env: test}}
  relabelings:
    - sourceLabels: [__meta_process_pid]
      targetLabel: pid
    - sourceLabels: [__meta_process_comm]
      targetLabel: service_name
      replacement: spin-$1
"#,
        profiles.display()
    )
}

/// The profiles stored for `service`, oldest first.
fn stored(profiles: &Path, service: &str) -> Vec<PathBuf> {
    let dir = profiles.join(service).join("process_cpu");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits (bounded, so a broken build fails instead of hanging) until `service` has `n` profiles.
fn wait_for(profiles: &Path, service: &str, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = stored(profiles, service);
        if files.len() >= n {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} profiles of {service} in {}",
            profiles.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn standalone_ebpf_profiles_the_selected_process_into_the_file_sink() {
    let test = "standalone_ebpf_profiles_the_selected_process_into_the_file_sink";
    if !bpf_allowed(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let selected_exe = compile(dir.path(), "kp_selected");
    let other_exe = compile(dir.path(), "kp_other");
    let mut children = Children(vec![]);
    for exe in [&selected_exe, &other_exe] {
        children
            .0
            .push(Command::new(exe).arg("60").spawn().unwrap());
    }
    let selected_pid = children.0[0].id();
    let path = dir.path().join("scraper.yaml");
    std::fs::write(&path, config(&profiles, "kp_selected")).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    children.0.push(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .args(["--listen", &listen.to_string(), "--ui", "false"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Two periods of the selected process, and nothing of the other.
    let files = wait_for(&profiles, "spin-kp_selected", 2);
    assert_eq!(
        stored(&profiles, "spin-kp_other"),
        Vec::<PathBuf>::new(),
        "a process outside the selection contributed"
    );
    let newest = files.last().unwrap();
    let labels: serde_json::Value = serde_json::from_slice(
        &std::fs::read(newest.with_extension("").with_extension("labels.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(labels["pid"], selected_pid.to_string());
    assert_eq!(labels["env"], "test");
    assert_eq!(labels["__name__"], "process_cpu");
    let keys: Vec<&String> = labels.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| !k.starts_with("__meta")),
        "internal labels left: {keys:?}"
    );

    match Command::new("go")
        .args(["tool", "pprof", "-symbolize=none", "-top"])
        .arg(newest)
        .output()
    {
        Err(_) => println!("SKIPPED go tool pprof part of {test}: no `go` on PATH"),
        Ok(out) => {
            let top = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for f in ["hot_leaf", "caller_b", "caller_a", "main"] {
                assert!(top.contains(f), "{f} missing from:\n{top}");
            }
            assert!(top.contains("Type: cpu"), "{top}");
        }
    }

    // The file now selects the other process: it is profiled without a restart.
    std::fs::write(&path, config(&profiles, "kp_other")).unwrap();
    wait_for(&profiles, "spin-kp_other", 1);
}
