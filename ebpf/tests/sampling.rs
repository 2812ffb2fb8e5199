//! The profiler against real processes: C programs built here with and without frame pointers,
//! a Go program, selection by tgid and by cgroup, and the profile read by `go tool pprof`.
//!
//! They need root with BPF allowed (as on CI); elsewhere each prints one `SKIPPED ...` line and
//! passes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use kubeprof_ebpf::{Collection, Profiler, ProfilerConfig, Selection};
use kubeprof_pprof::Profile;

/// A C program: `main -> caller_a -> caller_b -> hot_leaf`, spinning for argv[1] seconds.
// The frame-pointer C program both the sampler and the scraper tests profile.
const SPIN_C: &str = include_str!("fixtures/spin.c");

const SPIN_GO: &str = r#"
package main

import (
	"os"
	"strconv"
	"time"
)

var sink uint64

//go:noinline
func hotGo() {
	for i := uint64(0); i < 20000000; i++ {
		sink += i * i
	}
}

//go:noinline
func callerGo(d time.Duration) {
	for t0 := time.Now(); time.Since(t0) < d; {
		hotGo()
	}
}

func main() {
	secs := 2.0
	if len(os.Args) > 1 {
		secs, _ = strconv.ParseFloat(os.Args[1], 64)
	}
	callerGo(time.Duration(secs * float64(time.Second)))
}
"#;

/// A started profiler, or `None` (after printing `SKIPPED`) where BPF is not allowed.
fn profiler(test: &str) -> Option<Profiler> {
    match Profiler::start(ProfilerConfig::default()) {
        Ok(p) => Some(p),
        Err(e) if e.is_permission_denied() => {
            println!("SKIPPED {test}: BPF is not allowed here ({e})");
            None
        }
        Err(e) => panic!("the profiler did not start: {e}"),
    }
}

fn compile_c(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, SPIN_C).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed");
    out
}

fn spawn(exe: &Path, seconds: &str) -> Child {
    Command::new(exe).arg(seconds).spawn().unwrap()
}

/// Polls until `child` exits, so its last samples are in the next collection.
fn wait(profiler: &mut Profiler, child: &mut Child) {
    while child.try_wait().unwrap().is_none() {
        profiler.poll(Duration::from_millis(100));
    }
}

/// Each sample's stack as function names, innermost first (inlined functions included), with
/// its sample count.
fn stacks(p: &Profile) -> Vec<(Vec<String>, i64)> {
    let s = |i: i64| kubeprof_pprof::string(p, i).to_string();
    p.sample
        .iter()
        .map(|sample| {
            let names = sample
                .location_id
                .iter()
                .flat_map(|id| {
                    let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                    loc.line.iter().map(|line| {
                        let f = p
                            .function
                            .iter()
                            .find(|f| f.id == line.function_id)
                            .unwrap();
                        s(f.name)
                    })
                })
                .collect();
            (names, sample.value[0])
        })
        .collect()
}

fn profile_of(c: &Collection, pid: u32) -> Profile {
    let mut profiles = c.profiles(|p| (p.pid == pid).then_some(()));
    assert_eq!(
        profiles.len(),
        1,
        "no samples of pid {pid}; stats {:?}",
        c.stats
    );
    profiles.remove(0).profile
}

fn share(stacks: &[(Vec<String>, i64)], pred: impl Fn(&[String]) -> bool) -> (f64, i64) {
    let total: i64 = stacks.iter().map(|(_, n)| n).sum();
    let hit: i64 = stacks.iter().filter(|(s, _)| pred(s)).map(|(_, n)| n).sum();
    (hit as f64 / total.max(1) as f64, total)
}

#[test]
fn frame_pointer_stacks_show_the_call_chain_with_pid_and_comm_and_open_in_go_tool_pprof() {
    let Some(mut profiler) = profiler("frame_pointer_stacks_show_the_call_chain") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // -O0: GCC 12 leaves leaf functions frameless at -O1 and above even with
    // -mno-omit-leaf-frame-pointer, and a frameless leaf hides its caller.
    let exe = compile_c(
        dir.path(),
        "fpspin",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let mut child = spawn(&exe, "2");
    let pid = child.id();
    profiler
        .set_selection(&Selection {
            tgids: BTreeSet::from([pid]),
            ..Selection::default()
        })
        .unwrap();
    wait(&mut profiler, &mut child);
    let c = profiler.collect().unwrap();

    let facts = c.processes().find(|p| p.pid == pid).unwrap();
    assert_eq!(facts.comm, "fpspin");
    assert_eq!(facts.exe.as_deref(), exe.to_str());
    let labels = facts.meta_labels();
    assert_eq!(labels["__meta_process_pid"], pid.to_string());

    let profile = profile_of(&c, pid);
    let stacks = stacks(&profile);
    let (chain, total) = share(&stacks, |s| {
        s.len() >= 4 && s[..4] == ["hot_leaf", "caller_b", "caller_a", "main"]
    });
    assert!(total >= 10, "only {total} samples");
    assert!(
        chain >= 0.9,
        "{:.0}% of {total} samples show the chain: {stacks:?}",
        chain * 100.0
    );
    // Line numbers from DWARF, and the thread's name on each sample.
    assert!(
        profile
            .location
            .iter()
            .flat_map(|l| &l.line)
            .any(|l| l.line > 0)
    );
    let thread_name = profile
        .string_table
        .iter()
        .position(|s| s == "thread_name")
        .unwrap() as i64;
    assert!(profile.sample.iter().all(|s| {
        s.label
            .iter()
            .any(|l| l.key == thread_name && kubeprof_pprof::string(&profile, l.str) == "fpspin")
    }));
    assert!(c.stats.coverage() > 0.5, "{:?}", c.stats);

    // go tool pprof reads it.
    let file = dir.path().join("cpu.pb.gz");
    std::fs::write(&file, kubeprof_pprof::encode_gzip(&profile)).unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof", "-symbolize=none", "-top"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hot_leaf"), "{text}");
}

#[test]
fn without_frame_pointers_the_leaf_is_still_named_after_the_process_exits_and_its_binary_is_gone() {
    let Some(mut profiler) = profiler("without_frame_pointers_the_leaf_is_still_named") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c(dir.path(), "nofpspin", &["-O2", "-fomit-frame-pointer"]);
    let mut child = spawn(&exe, "1.5");
    let pid = child.id();
    profiler
        .set_selection(&Selection {
            tgids: BTreeSet::from([pid]),
            ..Selection::default()
        })
        .unwrap();
    wait(&mut profiler, &mut child);
    // Exited, and its executable deleted: only the file the profiler holds open is left.
    std::fs::remove_file(&exe).unwrap();
    let c = profiler.collect().unwrap();
    let stacks = stacks(&profile_of(&c, pid));
    let (leaf, total) = share(&stacks, |s| {
        s.first().map(String::as_str) == Some("hot_leaf")
    });
    assert!(total >= 10, "only {total} samples");
    assert!(
        leaf >= 0.9,
        "{:.0}% of {total} samples have the leaf: {stacks:?}",
        leaf * 100.0
    );
    // Forgotten once drained.
    assert_eq!(profiler.collect().unwrap().stats.processes, 0);
}

#[test]
fn processes_outside_the_selection_contribute_nothing() {
    let Some(mut profiler) = profiler("processes_outside_the_selection_contribute_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c(dir.path(), "selspin", &["-O1", "-fno-omit-frame-pointer"]);
    let mut selected = spawn(&exe, "1.5");
    let mut other = spawn(&exe, "1.5");
    profiler
        .set_selection(&Selection {
            tgids: BTreeSet::from([selected.id()]),
            ..Selection::default()
        })
        .unwrap();
    wait(&mut profiler, &mut selected);
    wait(&mut profiler, &mut other);
    let c = profiler.collect().unwrap();
    let pids: BTreeSet<u32> = c.processes().map(|p| p.pid).collect();
    assert_eq!(pids, BTreeSet::from([selected.id()]));
    assert!(
        c.profiles(|p| Some(p.pid))
            .iter()
            .all(|g| g.key == selected.id())
    );
}

#[test]
fn go_programs_are_symbolised_through_their_symbol_table() {
    let Some(mut profiler) = profiler("go_programs_are_symbolised_through_their_symbol_table")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.go"), SPIN_GO).unwrap();
    let exe = dir.path().join("gospin");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg("main.go")
        .current_dir(dir.path())
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = spawn(&exe, "2");
    let pid = child.id();
    profiler
        .set_selection(&Selection {
            tgids: BTreeSet::from([pid]),
            ..Selection::default()
        })
        .unwrap();
    wait(&mut profiler, &mut child);
    let c = profiler.collect().unwrap();
    let stacks = stacks(&profile_of(&c, pid));
    // Go keeps frame pointers, but not in frameless leaf functions such as hotGo: its caller is
    // skipped, the rest of the stack is there.
    let (named, total) = share(&stacks, |s| {
        s.first().map(String::as_str) == Some("main.hotGo") && s.iter().any(|f| f == "runtime.main")
    });
    assert!(total >= 10, "only {total} samples");
    assert!(
        named >= 0.8,
        "{:.0}% of {total} samples are named: {stacks:?}",
        named * 100.0
    );
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on a v2 node, `/sys/fs/cgroup/unified` on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

#[test]
fn selection_by_cgroup_id_samples_the_processes_of_that_cgroup() {
    let Some(mut profiler) = profiler("selection_by_cgroup_id") else {
        return;
    };
    let Some(root) = cgroup2_mount() else {
        println!("SKIPPED selection_by_cgroup_id: no cgroup2 mount");
        return;
    };
    let cg = root.join(format!("kubeprof-test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg) {
        println!(
            "SKIPPED selection_by_cgroup_id: cannot create {}: {e}",
            cg.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c(dir.path(), "cgspin", &["-O1", "-fno-omit-frame-pointer"]);
    let id = kubeprof_ebpf::cgroup_id(&cg).unwrap();
    profiler
        .set_selection(&Selection {
            cgroup_ids: BTreeSet::from([id]),
            ..Selection::default()
        })
        .unwrap();
    // The shell moves itself into the cgroup, then becomes the spinner.
    let mut inside = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} 1.5",
            cg.display(),
            exe.display()
        ))
        .spawn()
        .unwrap();
    let mut outside = spawn(&exe, "1.5");
    wait(&mut profiler, &mut inside);
    wait(&mut profiler, &mut outside);
    let c = profiler.collect().unwrap();
    let _ = std::fs::remove_dir(&cg);
    let pids: BTreeSet<u32> = c.processes().map(|p| p.pid).collect();
    assert_eq!(pids, BTreeSet::from([inside.id()]), "{:?}", c.stats);
    assert!(c.processes().all(|p| p.cgroup_id == id));
}

/// CPU seconds (utime + stime) of `pid` once it has exited but is not yet reaped.
fn cpu_seconds_at_exit(pid: u32, profiler: &mut Profiler) -> f64 {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        if fields[0] == "Z" {
            let ticks: u64 =
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            return ticks as f64 / 100.0; // USER_HZ
        }
        profiler.poll(Duration::from_millis(20));
    }
}

#[test]
fn draining_often_neither_loses_nor_counts_twice() {
    let Some(mut profiler) = profiler("draining_often_neither_loses_nor_counts_twice") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c(dir.path(), "drainspin", &["-O1", "-fno-omit-frame-pointer"]);
    let mut child = spawn(&exe, "2");
    let pid = child.id();
    profiler
        .set_selection(&Selection {
            tgids: BTreeSet::from([pid]),
            ..Selection::default()
        })
        .unwrap();
    // Many drains while it runs, each flipping the buffers under a sampling program.
    let mut samples = 0u64;
    let mut drains = 0;
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        profiler.poll(Duration::from_millis(50));
        samples += profiler.collect().unwrap().stats.samples;
        drains += 1;
    }
    let cpu = cpu_seconds_at_exit(pid, &mut profiler);
    samples += profiler.collect().unwrap().stats.samples;
    child.wait().unwrap();
    // The CPU clock fires 97 times per second of CPU the process uses: a lost buffer or one
    // drained twice would be far off.
    let expected = cpu * 97.0;
    assert!(drains > 5, "only {drains} drains");
    assert!(
        (samples as f64 - expected).abs() <= expected * 0.15 + 5.0,
        "{samples} samples over {drains} drains for {cpu:.2} CPU seconds (expected about {expected:.0})"
    );
}
